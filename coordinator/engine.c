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
	e->o.micro_batches = opts && opts->micro_batches > 0 ? opts->micro_batches : 1;
	if (e->o.micro_batches > CO_MAX_MICRO_BATCHES) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "micro_batches %d: at most %d", opts->micro_batches,
				    CO_MAX_MICRO_BATCHES);
	}
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

/* A micro-batch: rows [r0, r0 + n) of the current chunk, and where it stands. */
struct mb_state {
	int r0, n;
	const int32_t *seq, *pos; /* of row r0 */
	int layer;                /* next layer to run; num_hidden_layers when done */
	bool pending;             /* routed experts of `layer` dispatched, not yet combined */
};

/* y[n][hidden] = FFN(x) for a SwiGLU MLP, with g/u ([n][ffn_w]) as scratch. */
static void ffn(const struct model_ffn *f, const float *x, float *y, int n, float *g, float *u)
{
	kn_matmul(g, x, &f->gate, n);
	kn_matmul(u, x, &f->up, n);
	kn_swiglu(g, g, u, n * f->gate.rows);
	kn_matmul(y, g, &f->down, n);
}

/* out[i] += add[i] for n rows of hidden floats. */
static void add_rows(float *out, const float *add, int n, int hs)
{
	const struct kn_ops *ops = kn_ops();
	for (int i = 0; i < n; i++)
		ops->axpy(out + (size_t)i * hs, 1.0f, add + (size_t)i * hs, hs);
}

static void attention_block(struct co_engine *e, int l, const struct mb_state *mb)
{
	const struct model_config *c = e->c;
	const struct model_layer *L = &e->w->layers[l];
	int hs = c->hidden_size, n = mb->n;
	size_t r0 = (size_t)mb->r0;
	float *h = e->h + r0 * hs, *xn = e->xn + r0 * hs, *tmp = e->tmp + r0 * hs;
	float *q = e->q + r0 * e->q_dim, *att = e->att + r0 * e->q_dim;
	float *k = e->k + r0 * e->kv_dim, *v = e->v + r0 * e->kv_dim;
	const int32_t *seq = mb->seq, *pos = mb->pos;
	PROF_BEGIN();

	kn_rmsnorm(xn, h, L->attn_norm, n, hs, (float)c->rms_norm_eps);
	PROF_END(CO_PROF_NORM);
	kn_matmul(q, xn, &L->q, n);
	kn_matmul(k, xn, &L->k, n);
	kn_matmul(v, xn, &L->v, n);
	PROF_END(CO_PROF_QKV);
	kn_rope(q, n, c->num_attention_heads, c->head_dim, pos, (float)c->rope_theta);
	kn_rope(k, n, c->num_key_value_heads, c->head_dim, pos, (float)c->rope_theta);
	PROF_END(CO_PROF_ROPE);
	for (int i = 0; i < n; i++) {
		memcpy(cache_row(e, e->kc, l, seq[i], pos[i]), k + (size_t)i * e->kv_dim,
		       (size_t)e->kv_dim * sizeof(float));
		memcpy(cache_row(e, e->vc, l, seq[i], pos[i]), v + (size_t)i * e->kv_dim,
		       (size_t)e->kv_dim * sizeof(float));
	}
	/* Runs of consecutive rows of one sequence attend over that sequence's cache (which
	 * holds the rows of earlier micro-batches: they ran this layer first). */
	for (int i = 0; i < n;) {
		int j = i + 1;
		while (j < n && seq[j] == seq[i])
			j++;
		kn_attention(att + (size_t)i * e->q_dim, q + (size_t)i * e->q_dim,
			     cache_row(e, e->kc, l, seq[i], 0), cache_row(e, e->vc, l, seq[i], 0),
			     j - i, pos + i, c->num_attention_heads, c->num_key_value_heads,
			     c->head_dim, e->attn_scratch, e->attn_scratch_n);
		i = j;
	}
	PROF_END(CO_PROF_ATTN);
	kn_matmul(tmp, att, &L->o, n);
	add_rows(h, tmp, n, hs);
	PROF_END(CO_PROF_O);
}

/* First half of a layer's FFN: the dense FFN outright, or router + dispatch of the
 * routed experts (mb->pending is then set and ffn_finish() completes the layer). */
static int ffn_start(struct co_engine *e, int l, struct mb_state *mb, int mbi,
		     const struct co_route_knobs *kb)
{
	const struct model_config *c = e->c;
	const struct model_layer *L = &e->w->layers[l];
	int hs = c->hidden_size, n = mb->n, rc;
	size_t r0 = (size_t)mb->r0;
	float *h = e->h + r0 * hs, *xn = e->xn + r0 * hs, *tmp = e->tmp + r0 * hs;
	PROF_BEGIN();

	kn_rmsnorm(xn, h, L->ffn_norm, n, hs, (float)c->rms_norm_eps);
	PROF_END(CO_PROF_NORM);
	if (!L->moe) {
		ffn(&L->dense, xn, tmp, n, e->g + r0 * e->ffn_w, e->u + r0 * e->ffn_w);
		add_rows(h, tmp, n, hs);
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
	float *rl = e->rl + r0 * e->max_k, *top_w = e->top_w + r0 * e->max_k;
	int32_t *top_idx = e->top_idx + r0 * e->max_k;
	kn_matmul(rl, xn, &L->router, n);
	for (int i = 0; i < n; i++)
		kn_gate(rl + (size_t)i * c->n_routed_experts, &go, top_idx + (size_t)i * go.k,
			top_w + (size_t)i * go.k, e->gate_scratch);
	PROF_END(CO_PROF_ROUTER);
	rc = e->moe.ops->dispatch(e->moe.ctx, l, mbi, xn, n, top_idx, top_w, go.k);
	PROF_END(CO_PROF_EXPERTS);
	if (rc < 0)
		return rc;
	mb->pending = true;
	return 0;
}

/* Second half of a MoE layer: shared experts (computed while the routed ones are out),
 * then the routed partials. */
static int ffn_finish(struct co_engine *e, int l, struct mb_state *mb, int mbi,
		      const struct co_route_knobs *kb)
{
	const struct model_layer *L = &e->w->layers[l];
	int hs = e->c->hidden_size, n = mb->n, rc;
	size_t r0 = (size_t)mb->r0;
	float *h = e->h + r0 * hs, *xn = e->xn + r0 * hs, *tmp = e->tmp + r0 * hs;
	PROF_BEGIN();

	if (L->has_shared && !(kb && kb->no_shared)) {
		ffn(&L->shared, xn, tmp, n, e->g + r0 * e->ffn_w, e->u + r0 * e->ffn_w);
		add_rows(h, tmp, n, hs);
	}
	PROF_END(CO_PROF_SHARED);
	rc = e->moe.ops->combine(e->moe.ctx, l, mbi, h);
	PROF_END(CO_PROF_EXPERTS);
	mb->pending = false;
	return rc;
}

/* Runs a micro-batch's layers until it has dispatched routed experts or is done. */
static int mb_advance(struct co_engine *e, struct mb_state *mb, int mbi,
		      const struct co_route_knobs *kb)
{
	int rc;

	while (mb->layer < e->c->num_hidden_layers) {
		attention_block(e, mb->layer, mb);
		if ((rc = ffn_start(e, mb->layer, mb, mbi, kb)) < 0)
			return rc;
		if (mb->pending)
			return 0;
		mb->layer++;
	}
	return 0;
}

/* After a failure, collects what is still out so the seam is clean for the next call. */
static int fail_pending(struct co_engine *e, struct mb_state *mbs, int m, int rc)
{
	for (int j = 0; j < m; j++)
		if (mbs[j].pending) {
			(void)e->moe.ops->combine(e->moe.ctx, mbs[j].layer, j, e->tmp);
			mbs[j].pending = false;
		}
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

/*
 * Micro-batch ping-pong (MegaScale-Infer): the rows are split into m contiguous
 * micro-batches. Each one runs attention and its router up to the next MoE layer and
 * dispatches; then, in order, each pending micro-batch computes its shared experts,
 * combines, and runs on to its next dispatch - so the attention of one overlaps the routed
 * experts of the others on the workers. Micro-batch j reaches every layer after j-1 did,
 * so the KV cache rows a later micro-batch attends to (earlier positions of its sequences,
 * which sit in earlier rows) are always written first.
 */
static int run_layers(struct co_engine *e, int n, const int32_t *seq, const int32_t *pos,
		      const struct co_route_knobs *kb)
{
	struct mb_state mbs[CO_MAX_MICRO_BATCHES] = { { 0 } };
	int m = FR_MIN(e->o.micro_batches, n), rc, busy;

	for (int j = 0; j < m; j++) {
		int r0 = (int)((int64_t)n * j / m), r1 = (int)((int64_t)n * (j + 1) / m);
		mbs[j] = (struct mb_state){ .r0 = r0, .n = r1 - r0, .seq = seq + r0, .pos = pos + r0 };
		if ((rc = mb_advance(e, &mbs[j], j, kb)) < 0)
			return fail_pending(e, mbs, m, rc);
	}
	do {
		busy = 0;
		for (int j = 0; j < m; j++) {
			if (!mbs[j].pending)
				continue;
			if ((rc = ffn_finish(e, mbs[j].layer, &mbs[j], j, kb)) < 0)
				return fail_pending(e, mbs, m, rc);
			mbs[j].layer++;
			if ((rc = mb_advance(e, &mbs[j], j, kb)) < 0)
				return fail_pending(e, mbs, m, rc);
			busy |= mbs[j].pending;
		}
	} while (busy);
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

	if ((rc = run_layers(e, n, seq, pos, kb)) < 0)
		return rc;
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
