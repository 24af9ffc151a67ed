/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kernels.h - compute kernels, one API over CPU ISAs (and later CUDA).
 *
 * Conventions
 *  - Activations are fp32, row-major. Weights are a struct kn_mat: [rows][cols] row-major in
 *    F32, BF16 or F16, rows = output features (the PyTorch Linear layout, so HF tensors are
 *    used in place, straight from the mmap). Accumulation is always fp32.
 *  - Every op has a scalar reference (kn_ops_get("scalar")); the SIMD tables are tested
 *    against it. kn_init() picks the best table the CPU supports (AVX-512 with BF16 where
 *    present, else AVX2+FMA, else scalar); FERRY_ISA=scalar|avx2|avx512 overrides it.
 *  - The top-level kn_* functions use the selected table and spread work over the kernel
 *    thread count (kn_set_threads; OpenMP underneath), one parallel region per call. The
 *    kn_team_* functions do the same work from inside a caller's region, so that a block of
 *    kernels (the engine's attention, an FFN) wakes the threads once.
 *  - Nothing here allocates on a hot path, logs, or fails on valid shapes: shapes are the
 *    caller's invariant (assert-checked in debug builds).
 */
#ifndef FERRY_KERNELS_H
#define FERRY_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kn_dtype {
	KN_DTYPE_F32 = 0,
	KN_DTYPE_BF16,
	KN_DTYPE_F16,
};

/* Bytes per element; name as in safetensors ("F32", "BF16", "F16"). */
size_t kn_dtype_size(enum kn_dtype dt);
const char *kn_dtype_name(enum kn_dtype dt);

/* A weight matrix viewed in place. data is not owned. */
struct kn_mat {
	const void *data;     /* [rows][cols] dtype, row-major */
	enum kn_dtype dtype;
	int rows;             /* output features */
	int cols;             /* input features */
};

/* ---- scalar conversions (exact widening; round-to-nearest-even narrowing) ---------------- */

static inline float kn_bf16_to_f32(uint16_t h)
{
	union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
	return v.f;
}

static inline uint16_t kn_f32_to_bf16(float f)
{
	union { float f; uint32_t u; } v = { .f = f };
	if ((v.u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
		return (uint16_t)((v.u >> 16) | 0x40);
	v.u += 0x7fffu + ((v.u >> 16) & 1u);
	return (uint16_t)(v.u >> 16);
}

float kn_f16_to_f32(uint16_t h);
uint16_t kn_f32_to_f16(float f);

/* dst[n] fp32 <- src[n] of dtype dt; and the reverse. */
void kn_to_f32(float *dst, const void *src, enum kn_dtype dt, size_t n);
void kn_from_f32(void *dst, enum kn_dtype dt, const float *src, size_t n);

/* ---- gating ------------------------------------------------------------------------------------ */

enum kn_scoring {
	KN_SCORING_SOFTMAX = 0, /* DeepSeekMoE v1/v2: softmax over all routed experts */
	KN_SCORING_SIGMOID,     /* DeepSeek-V3: sigmoid scores, normalized over the chosen k */
};

struct kn_gate_opts {
	enum kn_scoring scoring;
	int n_experts;
	int k;                   /* experts chosen per token, 1..n_experts - mask_top */
	int mask_top;            /* analysis knob: drop the r highest-scoring experts first */
	bool norm_topk_prob;     /* renormalize the chosen weights to sum to 1 */
	float routed_scaling;    /* multiply the final weights (1.0 = none) */
	const float *bias;       /* [n_experts] or NULL: added to scores for *selection* only */
};

/* ---- precision ------------------------------------------------------------------------------ */

/*
 * KN_PRECISION_EXACT: bf16/f16 weights are widened exactly and every product is an fp32 FMA,
 * so results match an fp32 reference to rounding (the golden sets' 3e-5 bar).
 * KN_PRECISION_FAST: for BF16 weights, activations are rounded to bf16 (nearest-even) and the
 * products are summed in fp32 by the CPU's bf16 dot-product instruction (AVX512_BF16
 * vdpbf16ps, 32 multiply-adds per instruction, twice the fp32 FMA rate); denormal inputs read
 * as zero. F32 and F16 weights, and CPUs without a bf16 dot product, compute exactly.
 */
enum kn_precision {
	KN_PRECISION_EXACT = 0,
	KN_PRECISION_FAST,
};

/* "exact" / "fast"; parse returns -EINVAL for anything else. */
const char *kn_precision_name(enum kn_precision p);
int kn_precision_parse(const char *s, enum kn_precision *ret);

/* The default of [engine] and [worker] precision, "auto": exact on the CPU, fast on a GPU
 * (bf16 on the tensor cores; exact there is f32 on the CUDA cores, for checking). A
 * configuration value, never kn_set_precision()'s: kn_precision_resolve() turns a
 * configured KN_PRECISION_EXACT, _FAST or _AUTO into the precision to compute in. */
#define KN_PRECISION_AUTO 2
enum kn_precision kn_precision_resolve(int configured, bool on_gpu);
/* The names of those values, by value: a CONF_ENUM's enum_names for a precision key. */
#define KN_PRECISION_CONF_NAMES { "exact", "fast", "auto", NULL }

/* ---- the op table ----------------------------------------------------------------------------- */

/* Row stride of bf16 activations for kn_ops.matmul_fast_xb: cols rounded up to 32. */
#define KN_XB_LD(cols) (((size_t)(cols) + 31) / 32 * 32)

struct kn_ops {
	const char *name; /* "scalar", "avx2", "avx512", "avx512bf16" */

	/* y[n][w->rows] = x[n][w->cols] . W^T, rows in [r0, r1) only (threads split rows). */
	void (*matmul)(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1);
	/* The same in KN_PRECISION_FAST, BF16 weights only; NULL where the table has no fast
	 * path (kn_matmul then computes exactly). The scalar table's is the reference: x rounded
	 * to bf16, then sequential fp32 sums. */
	void (*matmul_fast)(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			    int r1);
	/* matmul_fast on activations already rounded by round_bf16, so that threads splitting
	 * the rows round them once: xb[n][KN_XB_LD(w->cols)]. Both NULL where the table has
	 * none (kn_matmul then calls matmul_fast). Same results as matmul_fast, bit for bit. */
	void (*matmul_fast_xb)(float *y, const uint16_t *xb, const struct kn_mat *w, int n, int r0,
			       int r1);
	/* xb[t][KN_XB_LD(cols)] = x[t][cols] rounded to bf16 (nearest even), zeros past cols. */
	void (*round_bf16)(uint16_t *xb, const float *x, int n, int cols);
	/* y[i] = x[i] / sqrt(mean(x^2) + eps) * g[i], one row of dim. */
	void (*rmsnorm)(float *y, const float *x, const float *g, int dim, float eps);
	/* out[i] = silu(gate[i]) * up[i] */
	void (*swiglu)(float *out, const float *gate, const float *up, int n);
	/* y[i] += a * x[i] */
	void (*axpy)(float *y, float a, const float *x, int n);
	/* sum x[i]*y[i] */
	float (*dot)(const float *x, const float *y, int n);
	/* In place, numerically stable. */
	void (*softmax)(float *x, int n);
	/* The index the loop `b = 0; for i: if (x[i] > x[b]) b = i` returns (n >= 1): the first
	 * largest value; a NaN never wins, and a NaN x[0] gives 0. NULL: that loop. */
	int (*argmax)(const float *x, int n);
	/* One query head over n_ctx cached positions: out[hd] = softmax(q.K^T * scale) V.
	 * The cache is paged: position j is row j % block_size of block blocks[j / block_size]
	 * of k and v, whose rows are `stride` floats apart (a block is block_size rows). A
	 * contiguous cache is one block: blocks = {0}, block_size >= n_ctx. Positions are
	 * visited in order, so the result does not depend on block_size.
	 * scratch: [n_ctx] floats. */
	void (*attend)(float *out, const float *q, const float *k, const float *v,
		       const int32_t *blocks, int block_size, int n_ctx, int head_dim, size_t stride,
		       float scale, float *scratch);
	/* attend for nq <= KN_ATTEND_MAX_Q queries of one head over the same cache: query i
	 * at q + i * qstride (out likewise) over n_ctx[i] positions, n_ctx ascending. Each
	 * query's bits are attend's; the keys and values are read once for all of them (a
	 * prefill's consecutive rows). scratch: nq * n_ctx[nq - 1] floats. NULL where the
	 * table has none (kn_* then calls attend per query). */
	void (*attend_multi)(float *out, const float *q, size_t qstride, int nq, const float *k,
			     const float *v, const int32_t *blocks, int block_size,
			     const int *n_ctx, int head_dim, size_t stride, float scale,
			     float *scratch);
};

#define KN_ATTEND_MAX_Q 8

/* Selects the table (idempotent, thread-safe). Honors $FERRY_ISA. */
void kn_init(void);
/* The active table; kn_init() is called if needed. */
const struct kn_ops *kn_ops(void);
/* A named table if this CPU can run it, else NULL ("scalar" always exists). */
const struct kn_ops *kn_ops_get(const char *name);
/* Names of all tables this CPU can run, NULL-terminated. */
const char *const *kn_ops_available(void);

/* Kernel threads used by the kn_* entry points below (default: all online CPUs). */
void kn_set_threads(int n);
int kn_threads(void);

/* The precision kn_matmul() computes in (default KN_PRECISION_EXACT; $FERRY_PRECISION sets
 * the initial value). Set it before the first matmul, not while one runs. */
void kn_set_precision(enum kn_precision p);
enum kn_precision kn_precision(void);
/* Whether kn_matmul() of BF16 weights really runs the fast path (table has one, and the
 * precision is fast): what a log line should report. */
bool kn_fast_active(void);

/* ---- entry points (active table, threaded) ------------------------------------------------------ */

/* y[n][w->rows] = x[n][w->cols] . W^T, in kn_precision(). */
void kn_matmul(float *y, const float *x, const struct kn_mat *w, int n);
/* The same, always in KN_PRECISION_EXACT: for products whose small differences change
 * decisions (the MoE router's top-k). */
void kn_matmul_exact(float *y, const float *x, const struct kn_mat *w, int n);
/* Row-wise RMSNorm of x[n][dim] into y (may alias). */
void kn_rmsnorm(float *y, const float *x, const float *g, int n, int dim, float eps);
/* In-place RoPE, HF rotate_half layout: within each head dim j pairs with j + hd/2,
 * angle = pos * theta^(-2j/hd). x: [n][n_heads][head_dim], pos[n]. */
void kn_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, float theta);
void kn_swiglu(float *out, const float *gate, const float *up, int n);
/* kn_ops.argmax, n >= 1. */
int kn_argmax(const float *x, int n);

/* Causal attention for n new tokens of ONE sequence whose keys/values already sit in the
 * cache (including the new ones): token i attends to cache rows [0, pos[i]].
 * q: [n][n_heads][hd]; kc, vc: [ctx][n_kv_heads][hd]; out: [n][n_heads][hd].
 * scratch: kn_attention_scratch_size(max_ctx) floats (threads x KN_ATTEND_MAX_Q x max_ctx). */
void kn_attention(float *out, const float *q, const float *kc, const float *vc, int n,
		  const int32_t *pos, int n_heads, int n_kv_heads, int head_dim, float *scratch,
		  size_t scratch_floats);
/* kn_attention over a paged cache (vLLM's PagedAttention layout): position p of the sequence
 * sits in row p % block_size of block blocks[p / block_size] of the pools
 * kp, vp: [n_blocks][block_size][n_kv_heads][hd]; blocks must cover positions [0, max pos].
 * Bit-identical to kn_attention over the same rows laid out contiguously. */
void kn_attention_paged(float *out, const float *q, const float *kp, const float *vp,
			const int32_t *blocks, int block_size, int n, const int32_t *pos,
			int n_heads, int n_kv_heads, int head_dim, float *scratch,
			size_t scratch_floats);
size_t kn_attention_scratch_size(int max_ctx);

/* ---- team entry points: a block of kernels in one parallel region ----------------------------
 * A caller that runs several kernels in a row (a layer's attention, an FFN) opens ONE OpenMP
 * parallel region of kn_team_threads() threads for the block and calls these from every
 * thread of it with the same arguments. Each does this thread's share and returns without
 * waiting for the others, except where it says so; the caller puts `#pragma omp barrier`
 * between steps that read what other threads wrote. So a block wakes the kernel threads
 * once, not once per product. Results are bit-identical to the kn_* entry points above,
 * whatever the team size. Called outside a parallel region, they do all the work. Never
 * call them from inside a region where the threads do different things (a parallel loop
 * over experts): use the kn_* entry points there, which then run on the calling thread. */

/* Threads for a block whose largest product is `work` multiply-adds: kn_threads(), or 1
 * where waking the others would cost more than it saves (or inside another region). */
int kn_team_threads(size_t work);
/* Products (and blocks) of fewer multiply-adds run on one thread: default 32768. Tests set
 * 0, so that every block runs on the whole team. */
void kn_set_min_parallel_work(size_t work);
/* Counts a parallel region of nth threads about to open (nth > 1), for kn_regions(). */
void kn_team_opened(int nth);
/* Parallel regions of more than one thread the kn_* entry points and team callers have
 * opened in this process: how tests and benchmarks see wake-ups per step. */
uint64_t kn_regions(void);
/* This thread's share [*i0, *i1) of n items: contiguous, in thread order. */
void kn_team_share(int n, int *i0, int *i1);
/* The rows of W this thread computes in kn_team_matmul() (16-row blocks), so that it can
 * go on with its own output columns without a barrier. */
void kn_team_rows(const struct kn_mat *w, int *r0, int *r1);
/* kn_matmul's product in precision prec, this thread's rows (kn_team_rows) for all n
 * tokens. In fast mode with many tokens the team rounds the activations once, together,
 * which waits for the whole team twice. */
void kn_team_matmul(float *y, const float *x, const struct kn_mat *w, int n,
		    enum kn_precision prec);
/* y[n][down->rows] = down . (silu(gate . x) * (up . x)), a SwiGLU MLP, with g/u
 * ([n][gate->rows]) as scratch: each thread applies SwiGLU to the columns of g it computed,
 * so one barrier in all; y's columns are this thread's rows of down (kn_team_rows), and it
 * returns without waiting for the others. */
void kn_team_swiglu_ffn(float *y, const float *x, const struct kn_mat *gate,
			const struct kn_mat *up, const struct kn_mat *down, int n, float *g, float *u,
			enum kn_precision prec);
/* kn_attention_paged for n rows of several sequences: row i belongs to sequence seq[i],
 * whose block table is tables + seq[i] * table_stride (seq NULL: all rows use tables).
 * Heads and rows are shared out dynamically; returns when the whole team is done (an
 * OpenMP worksharing loop). scratch as for kn_attention. */
void kn_team_attention(float *out, const float *q, const float *kp, const float *vp,
		       const int32_t *tables, size_t table_stride, const int32_t *seq,
		       int block_size, int n, const int32_t *pos, int n_heads, int n_kv_heads,
		       int head_dim, float *scratch, size_t scratch_floats);

/* Routing for one token: scores from router logits, pick k, weights.
 * ret_idx[k] expert ids (descending selection score), ret_w[k] weights.
 * scratch: 2 * n_experts floats. */
void kn_gate(const float *logits, const struct kn_gate_opts *o, int32_t *ret_idx, float *ret_w,
	     float *scratch);

#endif /* FERRY_KERNELS_H */
