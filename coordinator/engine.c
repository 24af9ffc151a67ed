/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine.c - the forward pass: embeddings, attention over a paged KV cache, routers, shared
 * experts and the lm_head here; routed experts through the MoE seam (struct moe).
 */
#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "coordinator/engine_dev.h"

struct co_engine {
	const struct model_weights *w;
	const struct model_config *c;
	struct moe moe;
	struct co_engine_opts o;
	int q_dim, kv_dim, max_k, ffn_w;

	/* Paged KV cache (vLLM): one pool of n_blocks blocks of block_size positions; a block id
	 * names the same rows in every layer. Sequence s holds seq_blocks[s] blocks, its
	 * position p in block block_table[s][p / block_size]. Free ids are a stack. */
	float *kc, *vc;          /* [layers][n_blocks][block_size][kv_dim] f32 */
	int n_blocks, block_size;
	int max_blocks;          /* per sequence: ceil(max_ctx / block_size) */
	int32_t *block_table;    /* [max_seqs][max_blocks] block ids */
	int32_t *seq_blocks;     /* [max_seqs] blocks held */
	int32_t *free_ids;       /* [n_blocks], the top n_free are free */
	int n_free;
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
	struct co_dev *dev;      /* the blocks on a device (engine_dev.h), or NULL */
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
	co_dev_destroy(e->dev);
	free(e->kc);
	free(e->vc);
	free(e->block_table);
	free(e->seq_blocks);
	free(e->free_ids);
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

int co_engine_create(const struct model_weights *w, struct moe moe,
		     const struct co_engine_opts *opts, struct co_engine **ret,
		     struct fr_error *err)
{
	const struct model_config *c = w->cfg;
	struct co_engine *e;
	size_t B, cache_n;
	int max_blocks, n_blocks;

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
	if (e->o.micro_batches > MOE_MAX_MICRO_BATCHES) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "micro_batches %d: at most %d", opts->micro_batches,
				    MOE_MAX_MICRO_BATCHES);
	}
	if (e->o.max_ctx > c->max_position_embeddings) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "max_ctx %d exceeds max_position_embeddings %d",
				    opts->max_ctx, c->max_position_embeddings);
	}
	e->block_size = opts && opts->block_size > 0 ? opts->block_size : CO_KV_BLOCK_SIZE;
	if (opts && (opts->block_size < 0 || opts->kv_blocks < 0)) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "block_size %d, kv_blocks %d: must not be negative",
				    opts->block_size, opts->kv_blocks);
	}
	max_blocks = (int)(((int64_t)e->o.max_ctx + e->block_size - 1) / e->block_size);
	n_blocks = opts && opts->kv_blocks > 0 ? opts->kv_blocks : 0;
	if (!n_blocks && __builtin_mul_overflow(e->o.max_seqs, max_blocks, &n_blocks)) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "KV pool of %d seqs x %d blocks is too large",
				    e->o.max_seqs, max_blocks);
	}
	e->max_blocks = max_blocks;
	e->n_blocks = n_blocks;
	e->o.kv_blocks = n_blocks;
	e->o.block_size = e->block_size;
	if (model_n_moe_layers(c) > 0 && !moe.ops) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "model has MoE layers but no MoE backend was given");
	}
	e->q_dim = c->num_attention_heads * c->head_dim;
	e->kv_dim = c->num_key_value_heads * c->head_dim;
	e->max_k = FR_MAX(c->n_routed_experts, 1);
	e->ffn_w = FR_MAX(c->intermediate_size, c->moe_intermediate_size * c->n_shared_experts);
	B = (size_t)e->o.max_batch;

	if (__builtin_mul_overflow((size_t)c->num_hidden_layers * (size_t)e->kv_dim,
				   (size_t)n_blocks * (size_t)e->block_size, &cache_n) ||
	    cache_n > SIZE_MAX / 2 / sizeof(float)) {
		co_engine_destroy(e);
		return fr_error_set(err, -EINVAL, "KV pool of %d blocks x %d positions is too large",
				    n_blocks, e->block_size);
	}
	/* malloc, not calloc: pages are touched as blocks are first used. */
	e->kc = alloc_floats(cache_n);
	e->vc = alloc_floats(cache_n);
	e->block_table = malloc((size_t)e->o.max_seqs * max_blocks * sizeof(*e->block_table));
	e->seq_blocks = calloc((size_t)e->o.max_seqs, sizeof(*e->seq_blocks));
	e->free_ids = malloc((size_t)n_blocks * sizeof(*e->free_ids));
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
	if (!e->kc || !e->vc || !e->block_table || !e->seq_blocks || !e->free_ids || !e->seq_len ||
	    !e->seq_next || !e->h || !e->xn || !e->tmp || !e->q || !e->att ||
	    !e->k || !e->v || !e->g || !e->u || !e->rl || !e->top_idx || !e->top_w ||
	    !e->gate_scratch || !e->attn_scratch || !e->rows) {
		co_engine_destroy(e);
		return fr_error_set(err, -ENOMEM,
				    "out of memory (KV cache of %zu MiB: %d blocks x %d positions)",
				    2 * cache_n * sizeof(float) >> 20, n_blocks, e->block_size);
	}
	/* Block 0 on top: a fresh engine hands out ids in increasing order. */
	for (int i = 0; i < n_blocks; i++)
		e->free_ids[i] = n_blocks - 1 - i;
	e->n_free = n_blocks;
	if (opts && opts->dev_ops) {
		struct co_dev_shape sh = { .max_batch = e->o.max_batch, .max_seqs = e->o.max_seqs,
					   .max_ctx = e->o.max_ctx, .max_blocks = max_blocks,
					   .n_blocks = n_blocks, .block_size = e->block_size };
		int rc = co_dev_create(w, opts->dev_ops, opts->dev_ctx, &sh, &e->dev, err);
		if (rc < 0) {
			co_engine_destroy(e);
			return rc;
		}
	}
	*ret = e;
	return 0;
}

void co_engine_reset_seq(struct co_engine *e, int seq)
{
	if (seq < 0 || seq >= e->o.max_seqs)
		return;
	/* Last block pushed first, so the sequence's first block is the next one handed out. */
	const int32_t *bt = e->block_table + (size_t)seq * e->max_blocks;
	for (int b = e->seq_blocks[seq] - 1; b >= 0; b--)
		e->free_ids[e->n_free++] = bt[b];
	e->seq_blocks[seq] = 0;
	e->seq_len[seq] = 0;
}

int co_engine_block_size(const struct co_engine *e)
{
	return e->block_size;
}

int co_engine_kv_blocks(const struct co_engine *e)
{
	return e->n_blocks;
}

int co_engine_free_blocks(const struct co_engine *e)
{
	return e->n_free;
}

int co_engine_host_regions(const struct co_engine *e, struct moe_host_region *v, int max)
{
	size_t B = (size_t)e->o.max_batch, hs = (size_t)e->c->hidden_size * sizeof(float);
	const struct moe_host_region all[CO_ENGINE_HOST_REGIONS] = {
		{ e->xn, B * hs, "tokens to dispatch" },
		{ e->tmp, B * hs, "experts' partials" },
		{ e->rl, B * e->max_k * sizeof(float), "router logits" },
	};
	if (!e->dev)
		return 0;
	for (int i = 0; i < max && i < CO_ENGINE_HOST_REGIONS; i++)
		v[i] = all[i];
	return CO_ENGINE_HOST_REGIONS;
}

static int blocks_for(const struct co_engine *e, int len)
{
	return (int)(((int64_t)len + e->block_size - 1) / e->block_size);
}

int co_engine_blocks_needed(const struct co_engine *e, int seq, int new_len)
{
	if (seq < 0 || seq >= e->o.max_seqs || new_len < 0 || new_len > e->o.max_ctx)
		return -EINVAL;
	return FR_MAX(blocks_for(e, new_len) - e->seq_blocks[seq], 0);
}

/* Gives every sequence the blocks for e->seq_next[s] positions (set by check_batch), all or
 * nothing. */
static int reserve_blocks(struct co_engine *e)
{
	int need = 0;

	for (int s = 0; s < e->o.max_seqs; s++)
		need += FR_MAX(blocks_for(e, e->seq_next[s]) - e->seq_blocks[s], 0);
	if (need > e->n_free)
		return -ENOSPC;
	for (int s = 0; need && s < e->o.max_seqs; s++) {
		int32_t *bt = e->block_table + (size_t)s * e->max_blocks;
		for (int b = e->seq_blocks[s], nb = blocks_for(e, e->seq_next[s]); b < nb; b++, need--)
			bt[b] = e->free_ids[--e->n_free];
		e->seq_blocks[s] = FR_MAX(e->seq_blocks[s], blocks_for(e, e->seq_next[s]));
	}
	return 0;
}

#define PROF_BEGIN() uint64_t __t0 = fr_now_ns()
#define PROF_END(cat)                                                                       \
	do {                                                                                \
		uint64_t __t1 = fr_now_ns();                                                \
		e->prof[cat] += __t1 - __t0;                                                \
		__t0 = __t1;                                                                \
	} while (0)

/* Layer l's part of a pool: [n_blocks][block_size][kv_dim]. */
static float *layer_pool(const struct co_engine *e, float *base, int l)
{
	return base + (size_t)l * e->n_blocks * e->block_size * e->kv_dim;
}

static const int32_t *seq_table(const struct co_engine *e, int seq)
{
	return e->block_table + (size_t)seq * e->max_blocks;
}

static float *cache_row(const struct co_engine *e, float *pool, int seq, int pos)
{
	int32_t blk = seq_table(e, seq)[pos / e->block_size];
	return pool + ((size_t)blk * e->block_size + pos % e->block_size) * e->kv_dim;
}

/* A micro-batch: rows [r0, r0 + n) of the current chunk, and where it stands. */
struct mb_state {
	int r0, n;
	const int32_t *seq, *pos; /* of row r0 */
	int layer;                /* next layer to run; num_hidden_layers when done */
	bool pending;             /* routed experts of `layer` dispatched, not yet combined */
};

/* out[i][c] += add[i][c] for n rows of w->rows floats, c in this thread's rows of w (as
 * kn_team_matmul computed add): no other thread's output is read, so no barrier. */
static void add_own_cols(float *out, const float *add, int n, const struct kn_mat *w)
{
	const struct kn_ops *ops = kn_ops();
	int c0, c1;
	kn_team_rows(w, &c0, &c1);
	for (int i = 0; c0 < c1 && i < n; i++)
		ops->axpy(out + (size_t)i * w->rows + c0, 1.0f, add + (size_t)i * w->rows + c0,
			  c1 - c0);
}

/* Threads for a block whose largest product is rows x cols over n tokens. */
static int block_threads(int n, int rows, int cols)
{
	return kn_team_threads((size_t)n * (size_t)rows * (size_t)cols);
}

/* h[n][hidden] += FFN(x) for a SwiGLU MLP, with g/u ([n][ffn_w]) and y ([n][hidden]) as
 * scratch; called by every thread of a team. Each thread adds the columns of y it
 * computed: one barrier in all (kn_team_swiglu_ffn's). */
static void team_ffn(const struct model_ffn *f, const float *x, float *h, int n, float *g,
		     float *u, float *y)
{
	kn_team_swiglu_ffn(y, x, &f->gate, &f->up, &f->down, n, g, u, kn_precision());
	add_own_cols(h, y, n, &f->down);
}

/* h += FFN(x) in one parallel region. */
static void ffn(const struct model_ffn *f, const float *x, float *h, int n, float *g, float *u,
		float *y)
{
	int nth = block_threads(n, f->gate.rows, f->gate.cols);

	kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
	team_ffn(f, x, h, n, g, u, y);
}

static int attention_block(struct co_engine *e, int l, const struct mb_state *mb)
{
	const struct model_config *c = e->c;
	const struct model_layer *L = &e->w->layers[l];
	int hs = c->hidden_size, n = mb->n;
	size_t r0 = (size_t)mb->r0;
	float *h = e->h + r0 * hs, *xn = e->xn + r0 * hs, *tmp = e->tmp + r0 * hs;
	float *q = e->q + r0 * e->q_dim, *att = e->att + r0 * e->q_dim;
	float *k = e->k + r0 * e->kv_dim, *v = e->v + r0 * e->kv_dim;
	const int32_t *seq = mb->seq, *pos = mb->pos;
	float *kp = layer_pool(e, e->kc, l), *vp = layer_pool(e, e->vc, l);
	PROF_BEGIN();

	if (e->dev) {
		int rc = co_dev_attention(e->dev, l, mb->r0, n);
		PROF_END(CO_PROF_ATTN);
		return rc;
	}
	enum kn_precision prec = kn_precision();
	int nth = block_threads(n, FR_MAX(e->q_dim, hs), FR_MAX(e->q_dim, hs));

	kn_rmsnorm(xn, h, L->attn_norm, n, hs, (float)c->rms_norm_eps);
	PROF_END(CO_PROF_NORM);
	/* One region for the block; thread 0 keeps the profile at the barriers. */
	kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
	{
		int i0, i1;
		kn_team_matmul(q, xn, &L->q, n, prec);
		kn_team_matmul(k, xn, &L->k, n, prec);
		kn_team_matmul(v, xn, &L->v, n, prec);
#pragma omp barrier
		if (omp_get_thread_num() == 0)
			PROF_END(CO_PROF_QKV);
		kn_team_share(n, &i0, &i1);
		kn_rope(q + (size_t)i0 * e->q_dim, i1 - i0, c->num_attention_heads, c->head_dim,
			pos + i0, (float)c->rope_theta);
		kn_rope(k + (size_t)i0 * e->kv_dim, i1 - i0, c->num_key_value_heads, c->head_dim,
			pos + i0, (float)c->rope_theta);
		for (int i = i0; i < i1; i++) {
			memcpy(cache_row(e, kp, seq[i], pos[i]), k + (size_t)i * e->kv_dim,
			       (size_t)e->kv_dim * sizeof(float));
			memcpy(cache_row(e, vp, seq[i], pos[i]), v + (size_t)i * e->kv_dim,
			       (size_t)e->kv_dim * sizeof(float));
		}
#pragma omp barrier
		if (omp_get_thread_num() == 0)
			PROF_END(CO_PROF_ROPE);
		/* Each row attends over its sequence's cache, which holds the rows of earlier
		 * micro-batches (they ran this layer first) and of this one (written above). */
		kn_team_attention(att, q, kp, vp, e->block_table, (size_t)e->max_blocks, seq,
				  e->block_size, n, pos, c->num_attention_heads,
				  c->num_key_value_heads, c->head_dim, e->attn_scratch,
				  e->attn_scratch_n);
		if (omp_get_thread_num() == 0)
			PROF_END(CO_PROF_ATTN);
		kn_team_matmul(tmp, att, &L->o, n, prec);
		add_own_cols(h, tmp, n, &L->o);
	}
	PROF_END(CO_PROF_O);
	return 0;
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

	if (e->dev) {
		/* the norm and the dense FFN or the router's logits; xn comes down for dispatch */
		rc = co_dev_ffn_start(e->dev, l, mb->r0, n, xn, e->rl + r0 * e->max_k);
		PROF_END(L->moe ? CO_PROF_ROUTER : CO_PROF_DENSE);
		if (rc < 0 || !L->moe)
			return rc;
	} else {
		kn_rmsnorm(xn, h, L->ffn_norm, n, hs, (float)c->rms_norm_eps);
		PROF_END(CO_PROF_NORM);
		if (!L->moe) {
			ffn(&L->dense, xn, h, n, e->g + r0 * e->ffn_w, e->u + r0 * e->ffn_w, tmp);
			PROF_END(CO_PROF_DENSE);
			return 0;
		}
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
	if (!e->dev)
		kn_matmul_exact(rl, xn, &L->router, n); /* top-k must not flip on rounding */
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

	if (e->dev) {
		/* shared experts queued on the device while the routed ones come back into tmp */
		rc = kb && kb->no_shared ? 0 : co_dev_shared(e->dev, l, mb->r0, n);
		PROF_END(CO_PROF_SHARED);
		memset(tmp, 0, (size_t)n * hs * sizeof(float));
		int rc2 = e->moe.ops->combine(e->moe.ctx, l, mbi, tmp);
		if (rc == 0 && (rc = rc2) == 0)
			rc = co_dev_add_rows(e->dev, mb->r0, n, tmp);
		PROF_END(CO_PROF_EXPERTS);
		mb->pending = false;
		return rc;
	}
	if (L->has_shared && !(kb && kb->no_shared))
		ffn(&L->shared, xn, h, n, e->g + r0 * e->ffn_w, e->u + r0 * e->ffn_w, tmp);
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
		if ((rc = attention_block(e, mb->layer, mb)) < 0 ||
		    (rc = ffn_start(e, mb->layer, mb, mbi, kb)) < 0)
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
 * Micro-batch ping-pong (MegaScale-Infer): after the leading dense layers (run once for
 * all rows), the rows are split into m contiguous micro-batches. Each one runs
 * attention and its router up to the next MoE layer and
 * dispatches; then, in order, each pending micro-batch computes its shared experts,
 * combines, and runs on to its next dispatch - so the attention of one overlaps the routed
 * experts of the others on the workers. Micro-batch j reaches every layer after j-1 did,
 * so the KV cache rows a later micro-batch attends to (earlier positions of its sequences,
 * which sit in earlier rows) are always written first.
 */
static int run_layers(struct co_engine *e, int n, const int32_t *seq, const int32_t *pos,
		      const struct co_route_knobs *kb)
{
	struct mb_state mbs[MOE_MAX_MICRO_BATCHES] = { { 0 } };
	int m = FR_MIN(e->o.micro_batches, n), rc, busy, first = 0;

	/* Dense layers before the first MoE layer have nothing to overlap with: run them once
	 * over the whole batch, so their weights are streamed once, not once per
	 * micro-batch. */
	if (m > 1) {
		struct mb_state all = { .r0 = 0, .n = n, .seq = seq, .pos = pos };
		while (first < e->c->num_hidden_layers && !e->w->layers[first].moe) {
			if ((rc = attention_block(e, first, &all)) < 0 ||
			    (rc = ffn_start(e, first, &all, 0, kb)) < 0)
				return rc;
			first++;
		}
	}
	for (int j = 0; j < m; j++) {
		int r0 = (int)((int64_t)n * j / m), r1 = (int)((int64_t)n * (j + 1) / m);
		mbs[j] = (struct mb_state){ .r0 = r0, .n = r1 - r0, .seq = seq + r0, .pos = pos + r0,
					    .layer = first };
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

	PROF_BEGIN();
	if (e->dev) {
		if ((rc = co_dev_begin(e->dev, n, tokens, seq, pos, e->block_table)) < 0)
			return rc;
	} else {
		for (int i = 0; i < n; i++)
			kn_to_f32(e->h + (size_t)i * hs,
				  (const char *)e->w->embed.data +
					  (size_t)tokens[i] * hs * kn_dtype_size(e->w->embed.dtype),
				  e->w->embed.dtype, (size_t)hs);
	}
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
		if (!e->dev)
			memcpy(e->tmp + (size_t)n_rows * hs, e->h + (size_t)i * hs,
			       (size_t)hs * sizeof(float));
		e->rows[n_rows++] = i;
	}
	if (n_rows && e->dev) {
		if ((rc = co_dev_logits(e->dev, e->rows, n_rows, logits)) < 0)
			return rc;
	} else if (n_rows) {
		kn_rmsnorm(e->xn, e->tmp, e->w->final_norm, n_rows, hs, (float)c->rms_norm_eps);
		/* Contiguous rows land in place. Otherwise the vocabulary goes in chunks through h
		 * (no longer needed; max_batch x hidden floats): every wanted row of a chunk at
		 * once, then scattered, so lm_head is read once whatever the rows. */
		bool contiguous = e->rows[n_rows - 1] - e->rows[0] == n_rows - 1;
		if (contiguous) {
			kn_matmul(logits + (size_t)e->rows[0] * c->vocab_size, e->xn, &e->w->lm_head,
				  n_rows);
		} else {
			const struct kn_mat *lm = &e->w->lm_head;
			size_t esz = kn_dtype_size(lm->dtype);
			int chunk = (int)FR_MIN((size_t)lm->rows, (size_t)e->o.max_batch * hs / n_rows);
			int nth = block_threads(n_rows, lm->rows, lm->cols);
			enum kn_precision prec = kn_precision();
			chunk = chunk >= 16 ? chunk / 16 * 16 : chunk;
			/* One region; each thread scatters the columns it computed, and the
			 * next chunk waits until every thread has read h. */
			kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
			for (int v0 = 0; v0 < lm->rows; v0 += chunk) {
				struct kn_mat part = *lm;
				int c0, c1;
				part.rows = FR_MIN(chunk, lm->rows - v0);
				part.data = (const char *)lm->data + (size_t)v0 * lm->cols * esz;
				kn_team_matmul(e->h, e->xn, &part, n_rows, prec);
				kn_team_rows(&part, &c0, &c1);
				for (int r = 0; c0 < c1 && r < n_rows; r++)
					memcpy(logits + (size_t)e->rows[r] * c->vocab_size + v0 + c0,
					       e->h + (size_t)r * part.rows + c0,
					       sizeof(float) * (size_t)(c1 - c0));
#pragma omp barrier
			}
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

	/* The whole call is checked and its blocks reserved before any row runs. */
	if ((rc = check_batch(e, n, tokens, seq, pos, knobs)) < 0 || (rc = reserve_blocks(e)) < 0)
		return rc;
	for (int off = 0; off < n; off += e->o.max_batch) {
		int m = FR_MIN(e->o.max_batch, n - off);
		rc = forward_chunk(e, m, tokens + off, seq + off, pos + off,
				   want_logits ? want_logits + off : NULL, knobs,
				   logits + (size_t)off * e->c->vocab_size);
		if (rc < 0)
			return rc;
	}
	return 0;
}
