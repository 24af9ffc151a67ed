/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine.c - the forward pass: embeddings, attention over a KV cache, routers, shared
 * experts and the lm_head here; routed experts through the MoE seam (struct co_moe).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"

struct co_engine {
	const struct model_weights *w;
	const struct model_config *c;
	struct co_moe moe;
	struct co_engine_opts o;
	int q_dim, kv_dim, max_k, ffn_w;

	float *kc, *vc;          /* [layers][max_seqs][max_ctx][kv_dim] f32 */
	int32_t *seq_len;        /* [max_seqs] positions held in the cache */
	int32_t *seq_next;       /* [max_seqs] scratch: check_batch's running lengths */

	/* Scratch for max_batch rows. */
	float *h;                /* [B][hidden] residual stream */
	float *xn;               /* [B][hidden] normalized input of the current block */
	float *q, *k, *v, *att;  /* [B][q_dim|kv_dim] */
	float *tmp;              /* [B][hidden] */
	float *g, *u;            /* [B][ffn_w] */
	float *rl;               /* [B][n_routed] router logits */
	int32_t *top_idx;        /* [B][max_k] */
	float *top_w;            /* [B][max_k] */
	float *gate_scratch;     /* [2 * n_routed] */
	float *attn_scratch;
	size_t attn_scratch_n;
	int32_t *rows;           /* [B] rows wanting logits */

	uint64_t prof[CO_PROF__COUNT];
};

static const char *const prof_names[CO_PROF__COUNT] = {
	[CO_PROF_EMBED] = "embed", [CO_PROF_NORM] = "rmsnorm", [CO_PROF_QKV] = "qkv_proj",
	[CO_PROF_ROPE] = "rope", [CO_PROF_ATTN] = "attention", [CO_PROF_O] = "o_proj",
	[CO_PROF_DENSE] = "dense_ffn", [CO_PROF_ROUTER] = "router", [CO_PROF_SHARED] = "shared_experts",
	[CO_PROF_EXPERTS] = "routed_experts", [CO_PROF_LMHEAD] = "lm_head",
};

const char *co_prof_name(enum co_prof p)
{
	return p < CO_PROF__COUNT ? prof_names[p] : "?";
}

void co_engine_prof(const struct co_engine *e, uint64_t ret_ns[CO_PROF__COUNT])
{
	memcpy(ret_ns, e->prof, sizeof(e->prof));
}

void co_engine_prof_reset(struct co_engine *e)
{
	memset(e->prof, 0, sizeof(e->prof));
}

const struct model_config *co_engine_config(const struct co_engine *e)
{
	return e->c;
}

void co_engine_destroy(struct co_engine *e)
{
	if (!e)
		return;
	free(e->kc);
	free(e->vc);
	free(e->seq_len);
	free(e->seq_next);
	free(e->h);
	free(e->xn);
	free(e->q);
	free(e->k);
	free(e->v);
	free(e->att);
	free(e->tmp);
	free(e->g);
	free(e->u);
	free(e->rl);
	free(e->top_idx);
	free(e->top_w);
	free(e->gate_scratch);
	free(e->attn_scratch);
	free(e->rows);
	free(e);
}

static void *alloc_floats(size_t n)
{
	return malloc((n ? n : 1) * sizeof(float));
}

int co_engine_create(const struct model_weights *w, struct co_moe moe,
		     const struct co_engine_opts *opts, struct co_engine **ret,
		     struct fr_error *err)
{
	const struct model_config *c = w->cfg;
	struct co_engine *e;
	size_t B, cache_n;

	e = calloc(1, sizeof(*e));
	if (!e)
		return fr_error_set(err, -ENOMEM, "out of memory");
	e->w = w;
	e->c = c;
	e->moe = moe;
	e->o.max_seqs = opts && opts->max_seqs > 0 ? opts->max_seqs : 1;
	e->o.max_ctx = opts && opts->max_ctx > 0 ? opts->max_ctx : c->max_position_embeddings;
	e->o.max_batch = opts && opts->max_batch > 0 ? opts->max_batch : 512;
	if (e->o.max_ctx > c->max_position_embeddings) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "max_ctx %d exceeds max_position_embeddings %d",
				    opts->max_ctx, c->max_position_embeddings);
	}
	if (model_n_moe_layers(c) > 0 && !moe.ops) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "model has MoE layers but no MoE backend was given");
	}
	e->q_dim = c->num_attention_heads * c->head_dim;
	e->kv_dim = c->num_key_value_heads * c->head_dim;
	e->max_k = FR_MAX(c->n_routed_experts, 1);
	e->ffn_w = FR_MAX(c->intermediate_size, c->moe_intermediate_size * c->n_shared_experts);
	B = (size_t)e->o.max_batch;

	cache_n = (size_t)c->num_hidden_layers * e->o.max_seqs * e->o.max_ctx * e->kv_dim;
	e->kc = alloc_floats(cache_n);
	e->vc = alloc_floats(cache_n);
	e->seq_len = calloc((size_t)e->o.max_seqs, sizeof(*e->seq_len));
	e->seq_next = calloc((size_t)e->o.max_seqs, sizeof(*e->seq_next));
	e->h = alloc_floats(B * c->hidden_size);
	e->xn = alloc_floats(B * c->hidden_size);
	e->tmp = alloc_floats(B * c->hidden_size);
	e->q = alloc_floats(B * e->q_dim);
	e->att = alloc_floats(B * e->q_dim);
	e->k = alloc_floats(B * e->kv_dim);
	e->v = alloc_floats(B * e->kv_dim);
	e->g = alloc_floats(B * e->ffn_w);
	e->u = alloc_floats(B * e->ffn_w);
	e->rl = alloc_floats(B * e->max_k);
	e->top_idx = malloc(B * e->max_k * sizeof(int32_t));
	e->top_w = alloc_floats(B * e->max_k);
	e->gate_scratch = alloc_floats(2 * (size_t)e->max_k);
	e->attn_scratch_n = kn_attention_scratch_size(e->o.max_ctx);
	e->attn_scratch = alloc_floats(e->attn_scratch_n);
	e->rows = malloc(B * sizeof(int32_t));
	if (!e->kc || !e->vc || !e->seq_len || !e->seq_next || !e->h || !e->xn || !e->tmp || !e->q || !e->att ||
	    !e->k || !e->v || !e->g || !e->u || !e->rl || !e->top_idx || !e->top_w ||
	    !e->gate_scratch || !e->attn_scratch || !e->rows) {
		co_engine_destroy(e);
		return fr_error_set(err, -ENOMEM,
				    "out of memory (KV cache of %zu MiB for %d seqs x %d positions)",
				    2 * cache_n * sizeof(float) >> 20, opts ? opts->max_seqs : 1,
				    opts ? opts->max_ctx : 0);
	}
	*ret = e;
	return 0;
}

void co_engine_reset_seq(struct co_engine *e, int seq)
{
	if (seq >= 0 && seq < e->o.max_seqs)
		e->seq_len[seq] = 0;
}

#define PROF_BEGIN() uint64_t __t0 = fr_now_ns()
#define PROF_END(cat)                                                                       \
	do {                                                                                \
		uint64_t __t1 = fr_now_ns();                                                \
		e->prof[cat] += __t1 - __t0;                                                \
		__t0 = __t1;                                                                \
	} while (0)

static float *cache_row(const struct co_engine *e, float *base, int layer, int seq, int pos)
{
	size_t idx = (((size_t)layer * e->o.max_seqs + seq) * e->o.max_ctx + pos) * e->kv_dim;
	return base + idx;
}

/* y[n][hidden] = FFN(x) for a SwiGLU MLP, using e->g, e->u as scratch. */
static void ffn(struct co_engine *e, const struct model_ffn *f, const float *x, float *y, int n)
{
	kn_matmul(e->g, x, &f->gate, n);
	kn_matmul(e->u, x, &f->up, n);
	kn_swiglu(e->g, e->g, e->u, n * f->gate.rows);
	kn_matmul(y, e->g, &f->down, n);
}

static void attention_block(struct co_engine *e, int l, int n, const int32_t *seq,
			    const int32_t *pos)
{
	const struct model_config *c = e->c;
	const struct model_layer *L = &e->w->layers[l];
	const struct kn_ops *ops = kn_ops();
	int hs = c->hidden_size;
	PROF_BEGIN();

	kn_rmsnorm(e->xn, e->h, L->attn_norm, n, hs, (float)c->rms_norm_eps);
	PROF_END(CO_PROF_NORM);
	kn_matmul(e->q, e->xn, &L->q, n);
	kn_matmul(e->k, e->xn, &L->k, n);
	kn_matmul(e->v, e->xn, &L->v, n);
	PROF_END(CO_PROF_QKV);
	kn_rope(e->q, n, c->num_attention_heads, c->head_dim, pos, (float)c->rope_theta);
	kn_rope(e->k, n, c->num_key_value_heads, c->head_dim, pos, (float)c->rope_theta);
	PROF_END(CO_PROF_ROPE);
	for (int i = 0; i < n; i++) {
		memcpy(cache_row(e, e->kc, l, seq[i], pos[i]), e->k + (size_t)i * e->kv_dim,
		       (size_t)e->kv_dim * sizeof(float));
		memcpy(cache_row(e, e->vc, l, seq[i], pos[i]), e->v + (size_t)i * e->kv_dim,
		       (size_t)e->kv_dim * sizeof(float));
	}
	/* Runs of consecutive rows of one sequence attend over that sequence's cache. */
	for (int i = 0; i < n;) {
		int j = i + 1;
		while (j < n && seq[j] == seq[i])
			j++;
		kn_attention(e->att + (size_t)i * e->q_dim, e->q + (size_t)i * e->q_dim,
			     cache_row(e, e->kc, l, seq[i], 0), cache_row(e, e->vc, l, seq[i], 0),
			     j - i, pos + i, c->num_attention_heads, c->num_key_value_heads,
			     c->head_dim, e->attn_scratch, e->attn_scratch_n);
		i = j;
	}
	PROF_END(CO_PROF_ATTN);
	kn_matmul(e->tmp, e->att, &L->o, n);
	for (int i = 0; i < n; i++)
		ops->axpy(e->h + (size_t)i * hs, 1.0f, e->tmp + (size_t)i * hs, hs);
	PROF_END(CO_PROF_O);
}

static int ffn_block(struct co_engine *e, int l, int n, const struct co_route_knobs *kb)
{
	const struct model_config *c = e->c;
	const struct model_layer *L = &e->w->layers[l];
	const struct kn_ops *ops = kn_ops();
	int hs = c->hidden_size, rc;
	PROF_BEGIN();

	kn_rmsnorm(e->xn, e->h, L->ffn_norm, n, hs, (float)c->rms_norm_eps);
	PROF_END(CO_PROF_NORM);
	if (!L->moe) {
		ffn(e, &L->dense, e->xn, e->tmp, n);
		for (int i = 0; i < n; i++)
			ops->axpy(e->h + (size_t)i * hs, 1.0f, e->tmp + (size_t)i * hs, hs);
		PROF_END(CO_PROF_DENSE);
		return 0;
	}

	struct kn_gate_opts go = {
		.scoring = c->scoring_func,
		.n_experts = c->n_routed_experts,
		.k = kb && kb->top_k > 0 ? kb->top_k : c->num_experts_per_tok,
		.mask_top = kb ? kb->mask_top : 0,
		.norm_topk_prob = c->norm_topk_prob,
		.routed_scaling = (float)c->routed_scaling_factor,
		.bias = L->router_bias,
	};
	kn_matmul(e->rl, e->xn, &L->router, n);
	for (int i = 0; i < n; i++)
		kn_gate(e->rl + (size_t)i * c->n_routed_experts, &go, e->top_idx + (size_t)i * go.k,
			e->top_w + (size_t)i * go.k, e->gate_scratch);
	PROF_END(CO_PROF_ROUTER);
	rc = e->moe.ops->dispatch(e->moe.ctx, l, 0, e->xn, n, e->top_idx, e->top_w, go.k);
	if (rc < 0)
		return rc;
	PROF_END(CO_PROF_EXPERTS);
	/* Shared experts run while the routed ones are out (on the cluster, truly in parallel). */
	if (L->has_shared && !(kb && kb->no_shared)) {
		ffn(e, &L->shared, e->xn, e->tmp, n);
		for (int i = 0; i < n; i++)
			ops->axpy(e->h + (size_t)i * hs, 1.0f, e->tmp + (size_t)i * hs, hs);
	}
	PROF_END(CO_PROF_SHARED);
	rc = e->moe.ops->combine(e->moe.ctx, l, 0, e->h);
	PROF_END(CO_PROF_EXPERTS);
	return rc;
}

static int check_batch(struct co_engine *e, int n, const int32_t *tokens, const int32_t *seq,
		       const int32_t *pos, const struct co_route_knobs *kb)
{
	const struct model_config *c = e->c;

	if (n <= 0)
		return -EINVAL;
	if (kb) {
		int k = kb->top_k > 0 ? kb->top_k : c->num_experts_per_tok;
		if (kb->top_k < 0 || kb->mask_top < 0 || k + kb->mask_top > c->n_routed_experts)
			return -EINVAL;
	}
	for (int i = 0; i < n; i++) {
		if (tokens[i] < 0 || tokens[i] >= c->vocab_size || seq[i] < 0 ||
		    seq[i] >= e->o.max_seqs || pos[i] < 0 || pos[i] >= e->o.max_ctx)
			return -EINVAL;
	}
	/* Each sequence's rows must continue its cache (or an earlier row) without gaps. */
	memcpy(e->seq_next, e->seq_len, (size_t)e->o.max_seqs * sizeof(*e->seq_next));
	for (int i = 0; i < n; i++) {
		if (pos[i] > e->seq_next[seq[i]])
			return -EINVAL;
		e->seq_next[seq[i]] = FR_MAX(e->seq_next[seq[i]], pos[i] + 1);
	}
	return 0;
}

static int forward_chunk(struct co_engine *e, int n, const int32_t *tokens, const int32_t *seq,
			 const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
			 float *logits)
{
	const struct model_config *c = e->c;
	int hs = c->hidden_size, rc, n_rows = 0;

	if ((rc = check_batch(e, n, tokens, seq, pos, kb)) < 0)
		return rc;
	PROF_BEGIN();
	for (int i = 0; i < n; i++)
		kn_to_f32(e->h + (size_t)i * hs,
			  (const char *)e->w->embed.data +
				  (size_t)tokens[i] * hs * kn_dtype_size(e->w->embed.dtype),
			  e->w->embed.dtype, (size_t)hs);
	PROF_END(CO_PROF_EMBED);

	for (int l = 0; l < c->num_hidden_layers; l++) {
		attention_block(e, l, n, seq, pos);
		if ((rc = ffn_block(e, l, n, kb)) < 0)
			return rc;
	}
	/* Rows of a sequence come in position order: its last row sets the cache length. */
	for (int i = 0; i < n; i++)
		e->seq_len[seq[i]] = pos[i] + 1;

	__t0 = fr_now_ns();
	for (int i = 0; i < n; i++) {
		if (want && !want[i])
			continue;
		memcpy(e->tmp + (size_t)n_rows * hs, e->h + (size_t)i * hs, (size_t)hs * sizeof(float));
		e->rows[n_rows++] = i;
	}
	if (n_rows) {
		kn_rmsnorm(e->xn, e->tmp, e->w->final_norm, n_rows, hs, (float)c->rms_norm_eps);
		/* Contiguous rows land in place; otherwise stage through h (no longer needed). */
		bool contiguous = e->rows[n_rows - 1] - e->rows[0] == n_rows - 1;
		float *dst = contiguous ? logits + (size_t)e->rows[0] * c->vocab_size : NULL;
		if (contiguous) {
			kn_matmul(dst, e->xn, &e->w->lm_head, n_rows);
		} else {
			for (int r = 0; r < n_rows; r++)
				kn_matmul(logits + (size_t)e->rows[r] * c->vocab_size,
					  e->xn + (size_t)r * hs, &e->w->lm_head, 1);
		}
	}
	PROF_END(CO_PROF_LMHEAD);
	return 0;
}

int co_engine_forward(struct co_engine *e, int n, const int32_t *tokens, const int32_t *seq,
		      const int32_t *pos, const bool *want_logits, const struct co_route_knobs *knobs,
		      float *logits)
{
	int rc;

	for (int off = 0; off < n; off += e->o.max_batch) {
		int m = FR_MIN(e->o.max_batch, n - off);
		rc = forward_chunk(e, m, tokens + off, seq + off, pos + off,
				   want_logits ? want_logits + off : NULL, knobs,
				   logits + (size_t)off * e->c->vocab_size);
		if (rc < 0)
			return rc;
	}
	return n > 0 ? 0 : -EINVAL;
}
