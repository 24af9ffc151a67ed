/* SPDX-License-Identifier: Apache-2.0 */
/* kernels.c - ISA selection, threading and the ops built from the per-ISA primitives. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/cpu/cpu-internal.h"

size_t kn_dtype_size(enum kn_dtype dt)
{
	return dt == KN_DTYPE_F32 ? 4 : 2;
}

const char *kn_dtype_name(enum kn_dtype dt)
{
	switch (dt) {
	case KN_DTYPE_F32:
		return "F32";
	case KN_DTYPE_BF16:
		return "BF16";
	case KN_DTYPE_F16:
		return "F16";
	}
	return "?";
}

float kn_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	union { uint32_t u; float f; } v;

	if (exp == 0) {
		/* zero or subnormal: man * 2^-24 exactly */
		float f = (float)man * 5.9604644775390625e-8f;
		return sign ? -f : f;
	}
	if (exp == 31)
		v.u = sign | 0x7f800000u | (man << 13);
	else
		v.u = sign | ((exp + 112u) << 23) | (man << 13);
	return v.f;
}

uint16_t kn_f32_to_f16(float f)
{
	union { float f; uint32_t u; } v = { .f = f };
	uint32_t sign = (v.u >> 16) & 0x8000u;
	uint32_t abs = v.u & 0x7fffffffu;

	if (abs > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u);
	if (abs >= 0x477ff000u) /* rounds to >= 65520: inf */
		return (uint16_t)(sign | 0x7c00u);
	if (abs < 0x38800000u) {
		/* subnormal half (or zero): round abs value to a multiple of 2^-24 */
		float a = fabsf(f) * 16777216.0f;
		return (uint16_t)(sign | (uint32_t)nearbyintf(a));
	}
	uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u); /* round to nearest even on bit 13 */
	return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

void kn_to_f32(float *dst, const void *src, enum kn_dtype dt, size_t n)
{
	const uint16_t *h = src;
	switch (dt) {
	case KN_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case KN_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kn_bf16_to_f32(h[i]);
		break;
	case KN_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = kn_f16_to_f32(h[i]);
		break;
	}
}

void kn_from_f32(void *dst, enum kn_dtype dt, const float *src, size_t n)
{
	uint16_t *h = dst;
	switch (dt) {
	case KN_DTYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	case KN_DTYPE_BF16:
		for (size_t i = 0; i < n; i++)
			h[i] = kn_f32_to_bf16(src[i]);
		break;
	case KN_DTYPE_F16:
		for (size_t i = 0; i < n; i++)
			h[i] = kn_f32_to_f16(src[i]);
		break;
	}
}

const char *kn_precision_name(enum kn_precision p)
{
	return p == KN_PRECISION_FAST ? "fast" : "exact";
}

_Static_assert(KN_PRECISION_EXACT == 0 && KN_PRECISION_FAST == 1 && KN_PRECISION_AUTO == 2,
	       "KN_PRECISION_CONF_NAMES follows the precision values");

enum kn_precision kn_precision_resolve(int configured, bool on_gpu)
{
	if (configured == KN_PRECISION_EXACT || configured == KN_PRECISION_FAST)
		return (enum kn_precision)configured;
	return on_gpu ? KN_PRECISION_FAST : KN_PRECISION_EXACT;
}

int kn_precision_parse(const char *s, enum kn_precision *ret)
{
	if (s && strcmp(s, "exact") == 0)
		*ret = KN_PRECISION_EXACT;
	else if (s && strcmp(s, "fast") == 0)
		*ret = KN_PRECISION_FAST;
	else
		return -EINVAL;
	return 0;
}

/* ---- selection ------------------------------------------------------------------------------- */

static const struct kn_ops *g_ops;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_threads;
static enum kn_precision g_precision;

static bool cpu_can_run(const char *name)
{
	__builtin_cpu_init();
	if (strcmp(name, "scalar") == 0)
		return true;
	if (strcmp(name, "avx2") == 0)
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	if (strcmp(name, "avx512") == 0)
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl");
	if (strcmp(name, "avx512bf16") == 0)
		return cpu_can_run("avx512")
#if defined(__clang__) || __GNUC__ >= 11
		       && __builtin_cpu_supports("avx512bf16")
#else
		       && false
#endif
			;
	return false;
}

/* Best first. */
static const struct kn_ops *const all_ops[] = {
#ifdef KN_HAVE_AVX512
	&kn_ops_avx512bf16,
	&kn_ops_avx512,
#endif
#ifdef KN_HAVE_AVX2
	&kn_ops_avx2,
#endif
	&kn_ops_scalar,
};

const struct kn_ops *kn_ops_get(const char *name)
{
	for (size_t i = 0; i < FR_ARRAY_SIZE(all_ops); i++)
		if (strcmp(all_ops[i]->name, name) == 0)
			return cpu_can_run(name) ? all_ops[i] : NULL;
	return NULL;
}

const char *const *kn_ops_available(void)
{
	static const char *names[FR_ARRAY_SIZE(all_ops) + 1];
	size_t n = 0;
	for (size_t i = 0; i < FR_ARRAY_SIZE(all_ops); i++)
		if (cpu_can_run(all_ops[i]->name))
			names[n++] = all_ops[i]->name;
	names[n] = NULL;
	return names;
}

static void init_once(void)
{
	const char *want = getenv("FERRY_ISA");
	const char *env_threads = getenv("FERRY_THREADS");
	const char *env_prec = getenv("FERRY_PRECISION");
	int64_t t;

	if (want && *want) {
		g_ops = kn_ops_get(want);
		if (!g_ops)
			fr_warn("kn", "FERRY_ISA=%s is not available on this CPU; choosing automatically",
				want);
	}
	for (size_t i = 0; !g_ops && i < FR_ARRAY_SIZE(all_ops); i++)
		if (cpu_can_run(all_ops[i]->name))
			g_ops = all_ops[i];
	if (env_threads && fr_parse_i64(env_threads, 1, 1024, &t) == 0)
		g_threads = (int)t;
	else
		g_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (g_threads < 1)
		g_threads = 1;
	if (env_prec && *env_prec && kn_precision_parse(env_prec, &g_precision) < 0)
		fr_warn("kn", "FERRY_PRECISION=%s: not exact or fast; computing exactly", env_prec);
	fr_dbg("kn", "isa=%s threads=%d precision=%s", g_ops->name, g_threads,
	       kn_precision_name(g_precision));
}

void kn_init(void)
{
	pthread_once(&g_once, init_once);
}

const struct kn_ops *kn_ops(void)
{
	kn_init();
	return g_ops;
}

void kn_set_threads(int n)
{
	kn_init();
	g_threads = n < 1 ? 1 : n;
}

int kn_threads(void)
{
	kn_init();
	return g_threads;
}

void kn_set_precision(enum kn_precision p)
{
	kn_init();
	g_precision = p;
}

enum kn_precision kn_precision(void)
{
	kn_init();
	return g_precision;
}

bool kn_fast_active(void)
{
	kn_init();
	return g_precision == KN_PRECISION_FAST && g_ops->matmul_fast;
}

/* ---- threaded entry points ----------------------------------------------------------------- */

#define KN_XB_SHARED_MIN (64 * 1024) /* bytes of rounded activations worth sharing */

static _Atomic uint64_t g_regions;

void kn_team_opened(int nth)
{
	if (nth > 1)
		atomic_fetch_add_explicit(&g_regions, 1, memory_order_relaxed);
}

uint64_t kn_regions(void)
{
	return atomic_load_explicit(&g_regions, memory_order_relaxed);
}

static _Atomic size_t g_min_work = 32768;

void kn_set_min_parallel_work(size_t work)
{
	atomic_store_explicit(&g_min_work, work, memory_order_relaxed);
}

int kn_team_threads(size_t work)
{
	kn_init();
	return work < atomic_load_explicit(&g_min_work, memory_order_relaxed) || omp_in_parallel()
		       ? 1
		       : g_threads;
}

void kn_team_share(int n, int *i0, int *i1)
{
	int tid = omp_get_thread_num(), nt = omp_get_num_threads();
	*i0 = (int)((long)n * tid / nt), *i1 = (int)((long)n * (tid + 1) / nt);
}

/* Each thread's rows: chunks of 16, so each thread streams a contiguous slab of W. */
void kn_team_rows(const struct kn_mat *w, int *r0, int *r1)
{
	int b0, b1;
	kn_team_share(FR_DIV_ROUND_UP(w->rows, 16), &b0, &b1);
	*r0 = b0 * 16, *r1 = FR_MIN(b1 * 16, w->rows);
}

/* KN_PRECISION_FAST in a team where the table takes rounded activations: the threads round
 * a share of the tokens each, once, into a buffer one of them allocates, then split the
 * rows. False (for every thread) when the buffer cannot be had. */
static bool team_matmul_xb(const struct kn_ops *ops, float *y, const float *x,
			   const struct kn_mat *w, int n)
{
	size_t ld = KN_XB_LD(w->cols), bytes = (size_t)n * ld * sizeof(uint16_t);
	uint16_t *xb;
	int t0, t1, r0, r1;

#pragma omp single copyprivate(xb)
	xb = aligned_alloc(64, FR_DIV_ROUND_UP(bytes, 64) * 64);
	if (!xb)
		return false;
	kn_team_share(n, &t0, &t1);
	if (t0 < t1)
		ops->round_bf16(xb + (size_t)t0 * ld, x + (size_t)t0 * w->cols, t1 - t0, w->cols);
#pragma omp barrier
	kn_team_rows(w, &r0, &r1);
	if (r0 < r1)
		ops->matmul_fast_xb(y, xb, w, n, r0, r1);
#pragma omp barrier
#pragma omp single nowait
	free(xb);
	return true;
}

/* Whether a product in prec runs the table's fast path. */
static bool use_fast(const struct kn_ops *ops, const struct kn_mat *w, enum kn_precision prec)
{
	return prec == KN_PRECISION_FAST && w->dtype == KN_DTYPE_BF16 && ops->matmul_fast;
}

void kn_team_matmul(float *y, const float *x, const struct kn_mat *w, int n,
		    enum kn_precision prec)
{
	const struct kn_ops *ops = kn_ops();
	bool fast = use_fast(ops, w, prec);
	int r0, r1;

	/* Few tokens: each thread rounds them itself (matmul_fast), which costs less than a
	 * shared buffer and two barriers. */
	if (fast && omp_get_num_threads() > 1 && ops->matmul_fast_xb &&
	    (size_t)n * KN_XB_LD(w->cols) * 2 > KN_XB_SHARED_MIN && team_matmul_xb(ops, y, x, w, n))
		return;
	kn_team_rows(w, &r0, &r1);
	if (r0 < r1)
		(fast ? ops->matmul_fast : ops->matmul)(y, x, w, n, r0, r1);
}

static void matmul_run(float *y, const float *x, const struct kn_mat *w, int n,
		       enum kn_precision prec)
{
	int nth = kn_team_threads((size_t)w->rows * (size_t)w->cols * (size_t)n);

	/* Fewer than 32 rows (a router) stay on this thread too, unless every product is to
	 * be threaded (no minimum work). Inside another region (nested), this thread alone:
	 * a kn_team_matmul() there would split the rows by the caller's team. */
	if (w->rows < 32 && atomic_load_explicit(&g_min_work, memory_order_relaxed) > 0)
		nth = 1;
	if (nth == 1) {
		const struct kn_ops *ops = kn_ops();
		(use_fast(ops, w, prec) ? ops->matmul_fast : ops->matmul)(y, x, w, n, 0, w->rows);
		return;
	}
	kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
	kn_team_matmul(y, x, w, n, prec);
}

void kn_team_swiglu_ffn(float *y, const float *x, const struct kn_mat *gate,
			const struct kn_mat *up, const struct kn_mat *down, int n, float *g, float *u,
			enum kn_precision prec)
{
	size_t w = (size_t)gate->rows;
	int c0, c1;

	kn_team_matmul(g, x, gate, n, prec);
	kn_team_matmul(u, x, up, n, prec);
	kn_team_rows(gate, &c0, &c1);
	for (int i = 0; c0 < c1 && i < n; i++)
		kn_swiglu(g + i * w + c0, g + i * w + c0, u + i * w + c0, c1 - c0);
#pragma omp barrier
	kn_team_matmul(y, g, down, n, prec);
}

void kn_matmul(float *y, const float *x, const struct kn_mat *w, int n)
{
	matmul_run(y, x, w, n, kn_precision());
}

void kn_matmul_exact(float *y, const float *x, const struct kn_mat *w, int n)
{
	matmul_run(y, x, w, n, KN_PRECISION_EXACT);
}

void kn_rmsnorm(float *y, const float *x, const float *g, int n, int dim, float eps)
{
	const struct kn_ops *ops = kn_ops();
	for (int t = 0; t < n; t++)
		ops->rmsnorm(y + (size_t)t * dim, x + (size_t)t * dim, g, dim, eps);
}

static double rope_freq(float theta, int j, int head_dim)
{
	return pow((double)theta, -2.0 * j / head_dim);
}

void kn_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, float theta)
{
	int half = head_dim / 2;
	double inv[256]; /* the frequencies, once per call, where head_dim <= 512 */
	bool table = half <= (int)FR_ARRAY_SIZE(inv);
	for (int j = 0; table && j < half; j++)
		inv[j] = rope_freq(theta, j, head_dim);
	for (int t = 0; t < n; t++) {
		for (int j = 0; j < half; j++) {
			/* Angles in double: the fp64 cross-check and llama.cpp agree to ~1e-6 this way. */
			double f = table ? inv[j] : rope_freq(theta, j, head_dim);
			double a = (double)pos[t] * f;
			float c = (float)cos(a), s = (float)sin(a);
			for (int h = 0; h < n_heads; h++) {
				float *v = x + ((size_t)t * n_heads + h) * head_dim;
				float x0 = v[j], x1 = v[j + half];
				v[j] = x0 * c - x1 * s;
				v[j + half] = x1 * c + x0 * s;
			}
		}
	}
}

void kn_swiglu(float *out, const float *gate, const float *up, int n)
{
	kn_ops()->swiglu(out, gate, up, n);
}

int kn_argmax(const float *x, int n)
{
	const struct kn_ops *ops = kn_ops();
	return ops->argmax ? ops->argmax(x, n) : kn_scalar_argmax(x, n);
}

size_t kn_attention_scratch_size(int max_ctx)
{
	kn_init();
	return (size_t)g_threads * KN_ATTEND_MAX_Q * (size_t)max_ctx;
}

void kn_team_attention(float *out, const float *q, const float *kp, const float *vp,
		       const int32_t *tables, size_t table_stride, const int32_t *seq,
		       int block_size, int n, const int32_t *pos, int n_heads, int n_kv_heads,
		       int head_dim, float *scratch, size_t scratch_floats)
{
	const struct kn_ops *ops = kn_ops();
	int group = n_heads / n_kv_heads;
	size_t stride = (size_t)n_kv_heads * head_dim, row = (size_t)n_heads * head_dim;
	float scale = 1.0f / sqrtf((float)head_dim);
	int groups = FR_DIV_ROUND_UP(n, KN_ATTEND_MAX_Q);
	size_t per = scratch_floats / (size_t)omp_get_num_threads();
	assert(n_heads % n_kv_heads == 0 && block_size > 0);

	/* A job: one head of up to KN_ATTEND_MAX_Q consecutive rows. Rows of one sequence in
	 * ascending positions (a prefill) go to attend_multi together, which reads their
	 * keys and values once; any other row alone. Every row's bits are attend's. */
#pragma omp for schedule(dynamic, 1)
	for (int job = 0; job < groups * n_heads; job++) {
		int g = job / n_heads, h = job % n_heads, kvh = h / group;
		int t1 = FR_MIN(n, (g + 1) * KN_ATTEND_MAX_Q);
		float *sc = scratch + per * (size_t)omp_get_thread_num();
		const float *kh = kp + (size_t)kvh * head_dim, *vh = vp + (size_t)kvh * head_dim;

		for (int t = g * KN_ATTEND_MAX_Q, u; t < t1; t = u) {
			const int32_t *blocks = tables + (seq ? (size_t)seq[t] * table_stride : 0);
			int n_ctx[KN_ATTEND_MAX_Q];
			n_ctx[0] = pos[t] + 1;
			for (u = t + 1; u < t1 && (!seq || seq[u] == seq[t]) && pos[u] >= pos[u - 1]; u++)
				n_ctx[u - t] = pos[u] + 1;
			assert((size_t)(u - t) * (size_t)n_ctx[u - t - 1] <= per);
			if (u - t > 1 && ops->attend_multi) {
				ops->attend_multi(out + t * row + (size_t)h * head_dim,
						  q + t * row + (size_t)h * head_dim, row, u - t, kh, vh,
						  blocks, block_size, n_ctx, head_dim, stride, scale, sc);
				continue;
			}
			for (int i = t; i < u; i++)
				ops->attend(out + i * row + (size_t)h * head_dim,
					    q + i * row + (size_t)h * head_dim, kh, vh, blocks,
					    block_size, n_ctx[i - t], head_dim, stride, scale, sc);
		}
	}
}

void kn_attention_paged(float *out, const float *q, const float *kp, const float *vp,
			const int32_t *blocks, int block_size, int n, const int32_t *pos,
			int n_heads, int n_kv_heads, int head_dim, float *scratch,
			size_t scratch_floats)
{
	int nth = n * n_heads < 2 || omp_in_parallel() ? 1 : kn_threads();

	/* Outside any region the loop runs on this thread. Inside one, a region of its own
	 * (of one thread) keeps the loop from binding to the caller's team. */
	if (!omp_in_parallel() && nth == 1) {
		kn_team_attention(out, q, kp, vp, blocks, 0, NULL, block_size, n, pos, n_heads,
				  n_kv_heads, head_dim, scratch, scratch_floats);
		return;
	}
	kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
	kn_team_attention(out, q, kp, vp, blocks, 0, NULL, block_size, n, pos, n_heads,
			  n_kv_heads, head_dim, scratch, scratch_floats);
}

void kn_attention(float *out, const float *q, const float *kc, const float *vc, int n,
		  const int32_t *pos, int n_heads, int n_kv_heads, int head_dim, float *scratch,
		  size_t scratch_floats)
{
	static const int32_t one_block = 0;

	/* One block as large as any context. */
	kn_attention_paged(out, q, kc, vc, &one_block, INT_MAX, n, pos, n_heads, n_kv_heads,
			   head_dim, scratch, scratch_floats);
}

void kn_gate(const float *logits, const struct kn_gate_opts *o, int32_t *ret_idx, float *ret_w,
	     float *scratch)
{
	int ne = o->n_experts;
	float *score = scratch, *sel = scratch + ne;

	for (int e = 0; e < ne; e++)
		score[e] = logits[e];
	if (o->scoring == KN_SCORING_SOFTMAX)
		kn_scalar_softmax(score, ne);
	else
		for (int e = 0; e < ne; e++)
			score[e] = 1.0f / (1.0f + expf(-score[e]));
	for (int e = 0; e < ne; e++)
		sel[e] = o->bias ? score[e] + o->bias[e] : score[e];

	/* Partial selection: skip the mask_top best, keep the next k. Ties go to the lower id. */
	float sum = 0.0f;
	for (int i = 0; i < o->mask_top + o->k; i++) {
		int best = -1;
		for (int e = 0; e < ne; e++)
			if (sel[e] != -INFINITY && (best < 0 || sel[e] > sel[best]))
				best = e;
		sel[best] = -INFINITY;
		if (i < o->mask_top)
			continue;
		ret_idx[i - o->mask_top] = best;
		ret_w[i - o->mask_top] = score[best];
		sum += score[best];
	}
	float mul = o->routed_scaling;
	if (o->norm_topk_prob)
		mul /= sum + 1e-20f;
	if (mul != 1.0f)
		for (int i = 0; i < o->k; i++)
			ret_w[i] *= mul;
}
