/* SPDX-License-Identifier: Apache-2.0 */
/*
 * local.c - the MoE seam served by in-process workers.
 *
 * The same dispatch -> per-worker grouped compute -> weighted combine the cluster does,
 * minus the transport: each token goes once to each worker holding any of its experts,
 * with its (slot, weight) pairs; each worker returns one partial sum per token it got.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "moe/moe.h"

/* One worker's share of one micro-batch. */
struct local_batch {
	int n_tok;
	int32_t *tok;        /* [cap_tok] engine row of each token sent */
	int32_t *pair_off;   /* [cap_tok + 1] */
	int32_t *slot;       /* [cap_pairs] */
	float *weight;       /* [cap_pairs] */
	float *x;            /* [cap_tok][hidden] */
	float *partial;      /* [cap_tok][hidden] */
};

/* State of one micro-batch between dispatch and combine. */
struct local_mb {
	int pending_layer;   /* layer dispatched and not yet combined, -1 none */
	size_t cap_tok, cap_pairs;
	struct local_batch *b; /* [n_workers] */
};

struct moe_local {
	const struct model_config *cfg;
	int n_workers;
	struct moe_slots **slots; /* [n_workers] */
	int32_t *owner;      /* [n_routed] worker of expert e (same in every layer) */
	int32_t *slot_of;    /* [n_routed] its slot there */
	struct local_mb mb[MOE_MAX_MICRO_BATCHES];
};

static void batch_free(struct local_batch *w)
{
	free(w->tok);
	free(w->pair_off);
	free(w->slot);
	free(w->weight);
	free(w->x);
	free(w->partial);
}

static int grow(struct moe_local *m, struct local_mb *mb, int n_tok, int k)
{
	size_t h = (size_t)m->cfg->hidden_size;
	size_t pairs = (size_t)n_tok * (size_t)k;

	if (!mb->b && !(mb->b = calloc((size_t)m->n_workers, sizeof(*mb->b))))
		return -ENOMEM;
	if ((size_t)n_tok <= mb->cap_tok && pairs <= mb->cap_pairs)
		return 0;
	for (int i = 0; i < m->n_workers; i++) {
		struct local_batch *w = &mb->b[i];
		void *p;
#define GROW(field, count)                                                                  \
	do {                                                                                \
		p = realloc(w->field, (count) * sizeof(*w->field));                          \
		if (!p)                                                                     \
			return -ENOMEM;                                                     \
		w->field = p;                                                               \
	} while (0)
		GROW(tok, (size_t)n_tok);
		GROW(pair_off, (size_t)n_tok + 1);
		GROW(slot, pairs);
		GROW(weight, pairs);
		GROW(x, (size_t)n_tok * h);
		GROW(partial, (size_t)n_tok * h);
#undef GROW
	}
	mb->cap_tok = (size_t)n_tok;
	mb->cap_pairs = pairs;
	return 0;
}

static int local_dispatch(void *ctx, int layer, int mbi, const float *x, int n_tok,
			  const int32_t *expert, const float *weight, int k)
{
	struct moe_local *m = ctx;
	size_t h = (size_t)m->cfg->hidden_size;
	int moe_layer = model_moe_index(m->cfg, layer);
	struct local_mb *mb;
	int rc;

	if (moe_layer < 0 || mbi < 0 || mbi >= MOE_MAX_MICRO_BATCHES)
		return -EINVAL;
	mb = &m->mb[mbi];
	if (mb->pending_layer >= 0)
		return -EINVAL;
	if ((rc = grow(m, mb, n_tok, k)) < 0)
		return rc;
	for (int i = 0; i < m->n_workers; i++) {
		mb->b[i].n_tok = 0;
		mb->b[i].pair_off[0] = 0;
	}
	for (int t = 0; t < n_tok; t++) {
		for (int j = 0; j < k; j++) {
			int e = expert[(size_t)t * k + j];
			if (e < 0 || e >= m->cfg->n_routed_experts)
				return -EINVAL;
			struct local_batch *w = &mb->b[m->owner[e]];
			/* First pair of this token for this worker: the token joins its batch. */
			if (w->n_tok == 0 || w->tok[w->n_tok - 1] != t) {
				w->tok[w->n_tok] = t;
				memcpy(w->x + (size_t)w->n_tok * h, x + (size_t)t * h, h * sizeof(float));
				w->n_tok++;
				w->pair_off[w->n_tok] = w->pair_off[w->n_tok - 1];
			}
			int32_t p = w->pair_off[w->n_tok]++;
			w->slot[p] = m->slot_of[e];
			w->weight[p] = weight[(size_t)t * k + j];
		}
	}
	for (int i = 0; i < m->n_workers; i++) {
		struct local_batch *w = &mb->b[i];
		if (w->n_tok == 0)
			continue;
		struct moe_batch b = {
			.n_tok = w->n_tok, .x = w->x, .pair_off = w->pair_off,
			.slot = w->slot, .weight = w->weight,
		};
		if ((rc = moe_compute(m->slots[i], moe_layer, &b, w->partial)) < 0)
			return rc;
	}
	mb->pending_layer = layer;
	return 0;
}

static int local_combine(void *ctx, int layer, int mbi, float *out)
{
	struct moe_local *m = ctx;
	const struct kn_ops *ops = kn_ops();
	int h = m->cfg->hidden_size;
	struct local_mb *mb;

	if (mbi < 0 || mbi >= MOE_MAX_MICRO_BATCHES || m->mb[mbi].pending_layer != layer)
		return -EINVAL;
	mb = &m->mb[mbi];
	mb->pending_layer = -1;
	for (int i = 0; i < m->n_workers; i++) {
		struct local_batch *w = &mb->b[i];
		for (int r = 0; r < w->n_tok; r++)
			ops->axpy(out + (size_t)w->tok[r] * h, 1.0f, w->partial + (size_t)r * h, h);
	}
	return 0;
}

static void local_destroy(void *ctx)
{
	struct moe_local *m = ctx;
	if (!m)
		return;
	for (int i = 0; m->slots && i < m->n_workers; i++)
		moe_slots_destroy(m->slots[i]);
	for (int j = 0; j < MOE_MAX_MICRO_BATCHES; j++) {
		for (int i = 0; m->mb[j].b && i < m->n_workers; i++)
			batch_free(&m->mb[j].b[i]);
		free(m->mb[j].b);
	}
	free(m->slots);
	free(m->owner);
	free(m->slot_of);
	free(m);
}

static const struct moe_ops local_ops = {
	.name = "local",
	.dispatch = local_dispatch,
	.combine = local_combine,
	.destroy = local_destroy,
};

int moe_local_create(const struct model_ckpt *ck, int n_workers, struct moe *ret,
			struct fr_error *err)
{
	return moe_local_create_on(ck, n_workers, NULL, NULL, ret, err);
}

int moe_local_create_on(const struct model_ckpt *ck, int n_workers,
			const struct moe_device_ops *dev_ops, void *dev_ctx, struct moe *ret,
			struct fr_error *err)
{
	const struct model_config *c = model_ckpt_config(ck);
	struct moe_local *m;
	int rc;

	if (c->n_routed_experts <= 0 || model_n_moe_layers(c) == 0)
		return fr_error_set(err, -EINVAL, "model has no MoE layers");
	if (n_workers < 1 || n_workers > c->n_routed_experts)
		return fr_error_set(err, -EINVAL, "%d in-process workers for %d experts", n_workers,
				    c->n_routed_experts);
	m = calloc(1, sizeof(*m));
	if (!m)
		return fr_error_set(err, -ENOMEM, "out of memory");
	m->cfg = c;
	m->n_workers = n_workers;
	for (int j = 0; j < MOE_MAX_MICRO_BATCHES; j++)
		m->mb[j].pending_layer = -1;
	m->slots = calloc((size_t)n_workers, sizeof(*m->slots));
	m->owner = calloc((size_t)c->n_routed_experts, sizeof(*m->owner));
	m->slot_of = calloc((size_t)c->n_routed_experts, sizeof(*m->slot_of));
	if (!m->slots || !m->owner || !m->slot_of) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	int per = FR_DIV_ROUND_UP(c->n_routed_experts, n_workers);
	for (int i = 0; i < n_workers; i++)
		if ((rc = moe_slots_create(c, per, &m->slots[i])) < 0 ||
		    (dev_ops && (rc = moe_slots_use_device(m->slots[i], dev_ops, dev_ctx)) < 0)) {
			fr_error_set(err, rc, "cannot create %d slots%s", per,
				     dev_ops ? " on the device" : "");
			goto fail;
		}
	for (int l = 0; l < c->num_hidden_layers; l++) {
		int ml = model_moe_index(c, l);
		if (ml < 0)
			continue;
		for (int e = 0; e < c->n_routed_experts; e++) {
			struct model_ffn ffn;
			m->owner[e] = e % n_workers;
			m->slot_of[e] = e / n_workers;
			if ((rc = model_expert_bind(ck, l, e, &ffn, err)) < 0)
				goto fail;
			if ((rc = moe_slot_set(m->slots[m->owner[e]], ml, m->slot_of[e], e, &ffn)) < 0) {
				fr_error_set(err, rc, "layer %d expert %d: cannot fill its slot", l, e);
				goto fail;
			}
		}
	}
	ret->ops = &local_ops;
	ret->ctx = m;
	return 0;
fail:
	local_destroy(m);
	return rc;
}

void moe_destroy(struct moe *moe)
{
	if (moe && moe->ops && moe->ops->destroy)
		moe->ops->destroy(moe->ctx);
	if (moe) {
		moe->ops = NULL;
		moe->ctx = NULL;
	}
}
