/* SPDX-License-Identifier: Apache-2.0 */
/*
 * moe_local.c - the MoE seam served by in-process workers.
 *
 * The same dispatch -> per-worker grouped compute -> weighted combine the cluster does,
 * minus the transport: each token goes once to each worker holding any of its experts,
 * with its (slot, weight) pairs; each worker returns one partial sum per token it got.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "worker/worker.h"

struct local_worker {
	struct wk_slots *slots;
	/* The batch this worker got for the current layer. */
	int n_tok;
	int32_t *tok;        /* [max_tok] engine row of each token sent */
	int32_t *pair_off;   /* [max_tok + 1] */
	int32_t *slot;       /* [max_tok * k] */
	float *weight;       /* [max_tok * k] */
	float *x;            /* [max_tok][hidden] */
	float *partial;      /* [max_tok][hidden] */
};

struct moe_local {
	const struct model_config *cfg;
	int n_workers;
	struct local_worker *w;
	int32_t *owner;      /* [n_routed] worker of expert e (same in every layer) */
	int32_t *slot_of;    /* [n_routed] its slot there */
	size_t cap_tok, cap_pairs;
	int pending_layer;   /* layer dispatched and not yet combined, -1 none */
};

static int grow(struct moe_local *m, int n_tok, int k)
{
	size_t h = (size_t)m->cfg->hidden_size;
	size_t pairs = (size_t)n_tok * (size_t)k;

	if ((size_t)n_tok <= m->cap_tok && pairs <= m->cap_pairs)
		return 0;
	for (int i = 0; i < m->n_workers; i++) {
		struct local_worker *w = &m->w[i];
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
	m->cap_tok = (size_t)n_tok;
	m->cap_pairs = pairs;
	return 0;
}

static int local_dispatch(void *ctx, int layer, int mb, const float *x, int n_tok,
			  const int32_t *expert, const float *weight, int k)
{
	struct moe_local *m = ctx;
	size_t h = (size_t)m->cfg->hidden_size;
	int moe_layer = model_moe_index(m->cfg, layer);
	int rc;

	if (moe_layer < 0 || m->pending_layer >= 0)
		return -EINVAL;
	if ((rc = grow(m, n_tok, k)) < 0)
		return rc;
	for (int i = 0; i < m->n_workers; i++) {
		m->w[i].n_tok = 0;
		m->w[i].pair_off[0] = 0;
	}
	for (int t = 0; t < n_tok; t++) {
		for (int j = 0; j < k; j++) {
			int e = expert[(size_t)t * k + j];
			if (e < 0 || e >= m->cfg->n_routed_experts)
				return -EINVAL;
			struct local_worker *w = &m->w[m->owner[e]];
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
		struct local_worker *w = &m->w[i];
		if (w->n_tok == 0)
			continue;
		struct wk_batch b = {
			.n_tok = w->n_tok, .x = w->x, .pair_off = w->pair_off,
			.slot = w->slot, .weight = w->weight,
		};
		if ((rc = wk_compute(w->slots, moe_layer, &b, w->partial)) < 0)
			return rc;
	}
	m->pending_layer = layer;
	return 0;
}

static int local_combine(void *ctx, int layer, int mb, float *out)
{
	struct moe_local *m = ctx;
	const struct kn_ops *ops = kn_ops();
	int h = m->cfg->hidden_size;

	if (m->pending_layer != layer)
		return -EINVAL;
	m->pending_layer = -1;
	for (int i = 0; i < m->n_workers; i++) {
		struct local_worker *w = &m->w[i];
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
	for (int i = 0; m->w && i < m->n_workers; i++) {
		struct local_worker *w = &m->w[i];
		wk_slots_destroy(w->slots);
		free(w->tok);
		free(w->pair_off);
		free(w->slot);
		free(w->weight);
		free(w->x);
		free(w->partial);
	}
	free(m->w);
	free(m->owner);
	free(m->slot_of);
	free(m);
}

static const struct co_moe_ops local_ops = {
	.name = "local",
	.dispatch = local_dispatch,
	.combine = local_combine,
	.destroy = local_destroy,
};

int co_moe_local_create(const struct model_ckpt *ck, int n_workers, struct co_moe *ret,
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
	m->pending_layer = -1;
	m->w = calloc((size_t)n_workers, sizeof(*m->w));
	m->owner = calloc((size_t)c->n_routed_experts, sizeof(*m->owner));
	m->slot_of = calloc((size_t)c->n_routed_experts, sizeof(*m->slot_of));
	if (!m->w || !m->owner || !m->slot_of) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	int per = FR_DIV_ROUND_UP(c->n_routed_experts, n_workers);
	for (int i = 0; i < n_workers; i++)
		if ((rc = wk_slots_create(c, per, &m->w[i].slots)) < 0) {
			fr_error_set(err, rc, "cannot create %d slots", per);
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
			if ((rc = wk_slot_set(m->w[m->owner[e]].slots, ml, m->slot_of[e], e, &ffn)) < 0) {
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

void co_moe_destroy(struct co_moe *moe)
{
	if (moe && moe->ops && moe->ops->destroy)
		moe->ops->destroy(moe->ctx);
	if (moe) {
		moe->ops = NULL;
		moe->ctx = NULL;
	}
}
