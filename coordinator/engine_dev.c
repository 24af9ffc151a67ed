/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine_dev.c - the engine's blocks on a device (engine_dev.h), as sequences of
 * kernels/kn_dev.h ops on device buffers. Each block is the CPU engine's (engine.c) in the
 * same order of operations; where the CPU engine splits work over a thread team, the device
 * takes the whole block.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/engine_dev.h"

#define LOGIT_ROWS 64 /* rows of logits per lm_head product */

int co_device_open(int device, int max_ctx, struct co_device *ret, struct fr_error *err)
{
	struct co_device d = { .ops = NULL };
	int rc;

	snprintf(d.where, sizeof(d.where), "the CPU");
	if (device == KN_DEV_TWIN) {
		if (!(d.twin = kn_dev_twin_create(max_ctx)))
			return fr_error_set(err, -ENOMEM, "the CPU twin of a device: out of memory");
		d.ops = &kn_dev_twin_ops;
		d.ctx = d.twin;
		snprintf(d.where, sizeof(d.where), "the CPU twin of a device");
	} else if (device >= 0) {
		if ((rc = moe_gpu_module_load(&d.gpu_mod, err)) < 0 ||
		    (rc = d.gpu_mod->open(device, &d.gpu, err)) < 0)
			return rc;
		d.ops = d.gpu_mod->engine_ops;
		d.ctx = d.gpu;
		snprintf(d.where, sizeof(d.where), "%s", d.gpu_mod->describe(d.gpu));
	}
	*ret = d;
	return 0;
}

void co_device_close(struct co_device *d)
{
	if (d->gpu)
		d->gpu_mod->close(d->gpu);
	kn_dev_twin_destroy(d->twin);
	d->gpu = NULL;
	d->twin = NULL;
	d->ops = NULL;
	d->ctx = NULL;
}

struct dev_ffn {
	void *gate, *up, *down;
	int width;
};

struct dev_layer {
	float *attn_norm, *ffn_norm;
	void *q, *k, *v, *o, *router;
	bool moe, has_shared;
	struct dev_ffn dense, shared;
};

struct co_dev {
	const struct kn_dev_ops *ops;
	void *ctx;
	const struct model_config *c;
	struct co_dev_shape s;
	int hs, q_dim, kv_dim, ffn_w;
	void *embed, *lm_head;
	float *final_norm;
	struct dev_layer *L;
	/* [max_batch] rows each */
	float *h, *xn, *q, *k, *v, *att, *tmp, *g, *u, *rl;
	float *lg;            /* [LOGIT_ROWS][vocab] */
	float *kc, *vc;       /* [layers][n_blocks][block_size][kv_dim] */
	int32_t *tok, *seq, *pos, *table;
	size_t pool;          /* floats per layer of a pool */
	bool exact;           /* [engine] precision = exact: every product f32 (the routers' always) */
};

static int dalloc(struct co_dev *d, size_t bytes, void *ret)
{
	return d->ops->alloc(d->ctx, bytes, (void **)ret);
}

static int dvec(struct co_dev *d, const float *host, size_t n, float **ret)
{
	int rc = dalloc(d, n * sizeof(float), ret);
	if (rc == 0 && (rc = d->ops->upload(d->ctx, *ret, host, n * sizeof(float))) < 0) {
		d->ops->free(d->ctx, *ret);
		*ret = NULL;
	}
	return rc;
}

static int dffn(struct co_dev *d, const struct model_ffn *f, struct dev_ffn *ret)
{
	int rc;
	ret->width = f->gate.rows;
	if ((rc = d->ops->weight(d->ctx, &f->gate, &ret->gate)) < 0 ||
	    (rc = d->ops->weight(d->ctx, &f->up, &ret->up)) < 0 ||
	    (rc = d->ops->weight(d->ctx, &f->down, &ret->down)) < 0)
		return rc;
	return 0;
}

static void wfree(struct co_dev *d, void *w)
{
	if (w && d->ops->weight_free)
		d->ops->weight_free(d->ctx, w);
}

static void ffn_free(struct co_dev *d, struct dev_ffn *f)
{
	wfree(d, f->gate);
	wfree(d, f->up);
	wfree(d, f->down);
}

void co_dev_destroy(struct co_dev *d)
{
	if (!d)
		return;
	for (int l = 0; d->L && l < d->c->num_hidden_layers; l++) {
		struct dev_layer *L = &d->L[l];
		d->ops->free(d->ctx, L->attn_norm);
		d->ops->free(d->ctx, L->ffn_norm);
		wfree(d, L->q);
		wfree(d, L->k);
		wfree(d, L->v);
		wfree(d, L->o);
		wfree(d, L->router);
		ffn_free(d, &L->dense);
		ffn_free(d, &L->shared);
	}
	free(d->L);
	wfree(d, d->embed);
	wfree(d, d->lm_head);
	float *bufs[] = { d->final_norm, d->h, d->xn, d->q, d->k, d->v, d->att, d->tmp, d->g,
			  d->u, d->rl, d->lg, d->kc, d->vc };
	for (size_t i = 0; i < FR_ARRAY_SIZE(bufs); i++)
		d->ops->free(d->ctx, bufs[i]);
	int32_t *ibufs[] = { d->tok, d->seq, d->pos, d->table };
	for (size_t i = 0; i < FR_ARRAY_SIZE(ibufs); i++)
		d->ops->free(d->ctx, ibufs[i]);
	free(d);
}

int co_dev_create(const struct model_weights *w, const struct kn_dev_ops *ops, void *ctx,
		  const struct co_dev_shape *shape, struct co_dev **ret, struct fr_error *err)
{
	const struct model_config *c = w->cfg;
	struct co_dev *d = calloc(1, sizeof(*d));
	int rc = -ENOMEM;

	if (!d)
		return fr_error_set(err, -ENOMEM, "out of memory");
	d->ops = ops;
	d->ctx = ctx;
	d->c = c;
	d->s = *shape;
	d->exact = kn_precision() == KN_PRECISION_EXACT;
	d->hs = c->hidden_size;
	d->q_dim = c->num_attention_heads * c->head_dim;
	d->kv_dim = c->num_key_value_heads * c->head_dim;
	d->ffn_w = FR_MAX(c->intermediate_size, c->moe_intermediate_size * c->n_shared_experts);
	d->L = calloc((size_t)c->num_hidden_layers, sizeof(*d->L));
	if (!d->L)
		goto fail;

	/* the weights */
	if ((rc = ops->weight(ctx, &w->embed, &d->embed)) < 0 ||
	    (rc = ops->weight(ctx, &w->lm_head, &d->lm_head)) < 0 ||
	    (rc = dvec(d, w->final_norm, (size_t)d->hs, &d->final_norm)) < 0)
		goto fail;
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const struct model_layer *M = &w->layers[l];
		struct dev_layer *L = &d->L[l];
		L->moe = M->moe;
		L->has_shared = M->moe && M->has_shared;
		if ((rc = dvec(d, M->attn_norm, (size_t)d->hs, &L->attn_norm)) < 0 ||
		    (rc = dvec(d, M->ffn_norm, (size_t)d->hs, &L->ffn_norm)) < 0 ||
		    (rc = ops->weight(ctx, &M->q, &L->q)) < 0 ||
		    (rc = ops->weight(ctx, &M->k, &L->k)) < 0 ||
		    (rc = ops->weight(ctx, &M->v, &L->v)) < 0 ||
		    (rc = ops->weight(ctx, &M->o, &L->o)) < 0 ||
		    (!M->moe && (rc = dffn(d, &M->dense, &L->dense)) < 0) ||
		    (M->moe && (rc = ops->weight(ctx, &M->router, &L->router)) < 0) ||
		    (L->has_shared && (rc = dffn(d, &M->shared, &L->shared)) < 0))
			goto fail;
	}

	/* the rows' buffers and the KV pools */
	size_t B = (size_t)shape->max_batch, f = sizeof(float);
	d->pool = (size_t)shape->n_blocks * shape->block_size * d->kv_dim;
	if ((rc = dalloc(d, B * d->hs * f, &d->h)) < 0 ||
	    (rc = dalloc(d, B * d->hs * f, &d->xn)) < 0 ||
	    (rc = dalloc(d, B * d->hs * f, &d->tmp)) < 0 ||
	    (rc = dalloc(d, B * d->q_dim * f, &d->q)) < 0 ||
	    (rc = dalloc(d, B * d->q_dim * f, &d->att)) < 0 ||
	    (rc = dalloc(d, B * d->kv_dim * f, &d->k)) < 0 ||
	    (rc = dalloc(d, B * d->kv_dim * f, &d->v)) < 0 ||
	    (rc = dalloc(d, B * d->ffn_w * f, &d->g)) < 0 ||
	    (rc = dalloc(d, B * d->ffn_w * f, &d->u)) < 0 ||
	    (rc = dalloc(d, B * FR_MAX(c->n_routed_experts, 1) * f, &d->rl)) < 0 ||
	    (rc = dalloc(d, (size_t)LOGIT_ROWS * c->vocab_size * f, &d->lg)) < 0 ||
	    (rc = dalloc(d, B * sizeof(int32_t), &d->tok)) < 0 ||
	    (rc = dalloc(d, B * sizeof(int32_t), &d->seq)) < 0 ||
	    (rc = dalloc(d, B * sizeof(int32_t), &d->pos)) < 0 ||
	    (rc = dalloc(d, (size_t)shape->max_seqs * shape->max_blocks * sizeof(int32_t),
			 &d->table)) < 0 ||
	    (rc = dalloc(d, (size_t)c->num_hidden_layers * d->pool * f, &d->kc)) < 0 ||
	    (rc = dalloc(d, (size_t)c->num_hidden_layers * d->pool * f, &d->vc)) < 0)
		goto fail;
	*ret = d;
	return 0;
fail:
	co_dev_destroy(d);
	return fr_error_set(err, rc, "engine on the %s device: %s the weights and %zu MiB of KV "
			    "cache: %s", ops->name, rc == -ENOMEM ? "no room for" : "cannot set up",
			    2 * (size_t)c->num_hidden_layers * shape->n_blocks * shape->block_size *
				    c->num_key_value_heads * c->head_dim * sizeof(float) >> 20,
			    strerror(-rc));
}

int co_dev_begin(struct co_dev *d, int n, const int32_t *tokens, const int32_t *seq,
		 const int32_t *pos, const int32_t *block_table)
{
	const struct kn_dev_ops *o = d->ops;
	size_t rows = (size_t)n * sizeof(int32_t);
	int rc;

	if (n < 0 || n > d->s.max_batch)
		return -EINVAL;
	if ((rc = o->upload(d->ctx, d->tok, tokens, rows)) < 0 ||
	    (rc = o->upload(d->ctx, d->seq, seq, rows)) < 0 ||
	    (rc = o->upload(d->ctx, d->pos, pos, rows)) < 0 ||
	    (rc = o->upload(d->ctx, d->table, block_table,
			    (size_t)d->s.max_seqs * d->s.max_blocks * sizeof(int32_t))) < 0)
		return rc;
	return o->embed(d->ctx, d->h, d->embed, d->tok, n);
}

int co_dev_attention(struct co_dev *d, int l, int r0, int n)
{
	const struct kn_dev_ops *o = d->ops;
	const struct model_config *c = d->c;
	const struct dev_layer *L = &d->L[l];
	size_t r = (size_t)r0;
	float *h = d->h + r * d->hs, *xn = d->xn + r * d->hs, *tmp = d->tmp + r * d->hs;
	float *q = d->q + r * d->q_dim, *att = d->att + r * d->q_dim;
	float *k = d->k + r * d->kv_dim, *v = d->v + r * d->kv_dim;
	float *kp = d->kc + (size_t)l * d->pool, *vp = d->vc + (size_t)l * d->pool;
	const int32_t *seq = d->seq + r, *pos = d->pos + r;
	float theta = (float)c->rope_theta;
	int rc;

	if ((rc = o->rmsnorm(d->ctx, xn, h, L->attn_norm, n, d->hs, (float)c->rms_norm_eps)) < 0 ||
	    (rc = o->matmul(d->ctx, q, xn, L->q, n, d->exact)) < 0 ||
	    (rc = o->matmul(d->ctx, k, xn, L->k, n, d->exact)) < 0 ||
	    (rc = o->matmul(d->ctx, v, xn, L->v, n, d->exact)) < 0 ||
	    (rc = o->rope(d->ctx, q, n, c->num_attention_heads, c->head_dim, pos, theta)) < 0 ||
	    (rc = o->rope(d->ctx, k, n, c->num_key_value_heads, c->head_dim, pos, theta)) < 0 ||
	    (rc = o->kv_write(d->ctx, kp, vp, k, v, d->table, d->s.max_blocks, seq, pos, n,
			      d->s.block_size, d->kv_dim)) < 0 ||
	    (rc = o->attention(d->ctx, att, q, kp, vp, d->table, d->s.max_blocks, seq,
			       d->s.block_size, n, pos, c->num_attention_heads,
			       c->num_key_value_heads, c->head_dim, d->s.max_ctx)) < 0 ||
	    (rc = o->matmul(d->ctx, tmp, att, L->o, n, d->exact)) < 0)
		return rc;
	return o->add(d->ctx, h, tmp, (size_t)n * d->hs);
}

/* h += FFN(xn) for rows [r0, r0 + n). */
static int ffn(struct co_dev *d, const struct dev_ffn *f, int r0, int n)
{
	const struct kn_dev_ops *o = d->ops;
	size_t r = (size_t)r0, nw = (size_t)n * f->width;
	float *h = d->h + r * d->hs, *xn = d->xn + r * d->hs, *tmp = d->tmp + r * d->hs;
	float *g = d->g + r * d->ffn_w, *u = d->u + r * d->ffn_w;
	int rc;

	if ((rc = o->matmul(d->ctx, g, xn, f->gate, n, d->exact)) < 0 ||
	    (rc = o->matmul(d->ctx, u, xn, f->up, n, d->exact)) < 0 ||
	    (rc = o->swiglu(d->ctx, g, g, u, nw)) < 0 ||
	    (rc = o->matmul(d->ctx, tmp, g, f->down, n, d->exact)) < 0)
		return rc;
	return o->add(d->ctx, h, tmp, (size_t)n * d->hs);
}

int co_dev_ffn_start(struct co_dev *d, int l, int r0, int n, float *host_xn, float *host_rl)
{
	const struct kn_dev_ops *o = d->ops;
	const struct dev_layer *L = &d->L[l];
	size_t r = (size_t)r0;
	float *h = d->h + r * d->hs, *xn = d->xn + r * d->hs;
	int ne = d->c->n_routed_experts, rc;

	if ((rc = o->rmsnorm(d->ctx, xn, h, L->ffn_norm, n, d->hs,
			     (float)d->c->rms_norm_eps)) < 0)
		return rc;
	if (!L->moe)
		return ffn(d, &L->dense, r0, n);
	float *rl = d->rl + r * ne;
	if ((rc = o->matmul(d->ctx, rl, xn, L->router, n, true)) < 0 ||
	    (rc = o->download(d->ctx, host_rl, rl, (size_t)n * ne * sizeof(float))) < 0)
		return rc;
	return o->download(d->ctx, host_xn, xn, (size_t)n * d->hs * sizeof(float));
}

int co_dev_shared(struct co_dev *d, int l, int r0, int n)
{
	return d->L[l].has_shared ? ffn(d, &d->L[l].shared, r0, n) : 0;
}

int co_dev_add_rows(struct co_dev *d, int r0, int n, const float *host_part)
{
	const struct kn_dev_ops *o = d->ops;
	size_t r = (size_t)r0, bytes = (size_t)n * d->hs * sizeof(float);
	float *h = d->h + r * d->hs, *tmp = d->tmp + r * d->hs;
	int rc;

	if ((rc = o->upload(d->ctx, tmp, host_part, bytes)) < 0)
		return rc;
	return o->add(d->ctx, h, tmp, (size_t)n * d->hs);
}

int co_dev_logits(struct co_dev *d, const int32_t *rows, int n_rows, float *logits)
{
	const struct kn_dev_ops *o = d->ops;
	size_t row = (size_t)d->hs * sizeof(float), vocab = (size_t)d->c->vocab_size;
	int rc;

	for (int j0 = 0; j0 < n_rows; j0 += LOGIT_ROWS) {
		int m = FR_MIN(LOGIT_ROWS, n_rows - j0);
		for (int j = 0; j < m; j++)
			if ((rc = o->copy(d->ctx, d->tmp + (size_t)j * d->hs,
					  d->h + (size_t)rows[j0 + j] * d->hs, row)) < 0)
				return rc;
		if ((rc = o->rmsnorm(d->ctx, d->xn, d->tmp, d->final_norm, m, d->hs,
				     (float)d->c->rms_norm_eps)) < 0 ||
		    (rc = o->matmul(d->ctx, d->lg, d->xn, d->lm_head, m, d->exact)) < 0)
			return rc;
		for (int j = 0; j < m; j++)
			if ((rc = o->download(d->ctx, logits + rows[j0 + j] * vocab,
					      d->lg + (size_t)j * vocab,
					      vocab * sizeof(float))) < 0)
				return rc;
	}
	return 0;
}
