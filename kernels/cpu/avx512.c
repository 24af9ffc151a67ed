/* SPDX-License-Identifier: Apache-2.0 */
/*
 * avx512.c - AVX-512 (F/BW/VL) versions of the CPU ops; the same design as avx2.c with
 * 16 lanes: a dot tile for few tokens (32 columns a step, BF16 split into even/odd halves by
 * shift and mask), a packed 32-row panel and 8-token outer-product tile for many tokens.
 * Tails use masked loads, which read as zeros past the end: the same sums as a full step.
 *
 * kn_ops_avx512bf16 is the same code under the name the selector prefers on CPUs with
 * AVX512_BF16, plus matmul_fast. Its exact matmul does NOT use _mm512_dpbf16_ps: that
 * instruction takes both operands as bf16, so x would be rounded to 8 mantissa bits (and it
 * flushes subnormals), which breaks the engine's 3e-5 match against fp32 references.
 * Widening bf16 weights with a shift is exact and costs one integer op per 16 weights; fp32
 * FMA accumulation then matches avx512 bit for bit. matmul_fast (KN_PRECISION_FAST) is the
 * dpbf16 version: x rounded to bf16 once per 32 columns (dot tile) or per packed panel (gemm
 * tile), weight pairs fed to the instruction as they lie in memory.
 */
#include <immintrin.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/cpu/cpu-internal.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

#define GEMM_MIN_N 4
#define KC 256 /* columns per packed panel: 32 x 256 fp32 = 32 KiB */
#define MT 8   /* tokens per outer-product tile: 16 accumulators */

INLINE __mmask16 mask16(int n) /* lanes [0, n), n in [0, 16] */
{
	return (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u);
}

/* ---- exp: see avx2.c --------------------------------------------------------------------- */

INLINE __m512 exp512(__m512 x)
{
	x = _mm512_min_ps(_mm512_set1_ps(89.0f), x); /* keeps x when it is NaN */
	x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
	p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
	__m512i ni = _mm512_cvtps_epi32(n);
	__m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
	__m512i bias = _mm512_set1_epi32(127);
	__m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
	__m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
	return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

/* ---- tile walks: one per kernel shape, each kernel supplies its tile ---------------------- */

/* Few tokens, decode-shaped: TILE(t, r, R, T) computes rows r..r+R-1 for tokens t..t+T-1.
 * One token: 8 rows a tile; more: 4 rows x 2 tokens; then what is left. */
#define DOT_WALK(TILE, n, r0, r1)                                                           \
	do {                                                                                \
		int r_ = (r0);                                                              \
		if ((n) == 1) {                                                             \
			for (; r_ + 8 <= (r1); r_ += 8)                                     \
				TILE(0, r_, 8, 1);                                          \
			for (; r_ < (r1); r_++)                                             \
				TILE(0, r_, 1, 1);                                          \
			break;                                                              \
		}                                                                           \
		for (; r_ + 4 <= (r1); r_ += 4) {                                           \
			int t_ = 0;                                                         \
			for (; t_ + 2 <= (n); t_ += 2)                                      \
				TILE(t_, r_, 4, 2);                                         \
			if (t_ < (n))                                                       \
				TILE(t_, r_, 4, 1);                                         \
		}                                                                           \
		for (; r_ < (r1); r_++) {                                                   \
			int t_ = 0;                                                         \
			for (; t_ + 2 <= (n); t_ += 2)                                      \
				TILE(t_, r_, 1, 2);                                         \
			if (t_ < (n))                                                       \
				TILE(t_, r_, 1, 1);                                         \
		}                                                                           \
	} while (0)

/* A few tokens whose activations were prepared once: 4 rows x 4 tokens tiles where they fit,
 * then 4 x 2, 4 x 1, and the rows left one at a time. Each row block goes over the columns in
 * chunks of kc (kc >= cols: whole rows), all its tiles per chunk: TILE(t, r, R, T, k0, g),
 * g numbering the block's tiles from 0 (at most FEW_TILES) for whatever they carry from one
 * chunk to the next. */
#define FEW_TILES (64 / 4 + 3) /* tiles of a row block, for up to 64 tokens */
#define FEW_WALK(TILE, n, r0, r1, cols, kc)                                                 \
	do {                                                                                \
		int r_ = (r0);                                                              \
		for (; r_ + 4 <= (r1); r_ += 4)                                             \
			for (int k0_ = 0; k0_ < (cols); k0_ += (kc)) {                      \
				int t_ = 0, g_ = 0;                                         \
				for (; t_ + 4 <= (n); t_ += 4, g_++)                        \
					TILE(t_, r_, 4, 4, k0_, g_);                        \
				for (; t_ + 2 <= (n); t_ += 2, g_++)                        \
					TILE(t_, r_, 4, 2, k0_, g_);                        \
				if (t_ < (n))                                               \
					TILE(t_, r_, 4, 1, k0_, g_);                        \
			}                                                                   \
		for (; r_ < (r1); r_++)                                                     \
			for (int k0_ = 0; k0_ < (cols); k0_ += (kc)) {                      \
				int t_ = 0, g_ = 0;                                         \
				for (; t_ + 4 <= (n); t_ += 4, g_++)                        \
					TILE(t_, r_, 1, 4, k0_, g_);                        \
				for (; t_ < (n); t_++, g_++)                                \
					TILE(t_, r_, 1, 1, k0_, g_);                        \
			}                                                                   \
	} while (0)

/* Many tokens against one packed panel: TILE(t, M) for MT tokens at a time, then the rest in
 * one tile of its size (each M a constant, so every tile is unrolled for it). */
#define GEMM_WALK(TILE, n)                                                                  \
	do {                                                                                \
		int t_ = 0;                                                                 \
		for (; t_ + MT <= (n); t_ += MT)                                            \
			TILE(t_, MT);                                                       \
		switch ((n) - t_) {                                                         \
		case 7: TILE(t_, 7); break;                                                 \
		case 6: TILE(t_, 6); break;                                                 \
		case 5: TILE(t_, 5); break;                                                 \
		case 4: TILE(t_, 4); break;                                                 \
		case 3: TILE(t_, 3); break;                                                 \
		case 2: TILE(t_, 2); break;                                                 \
		case 1: TILE(t_, 1); break;                                                 \
		}                                                                           \
	} while (0)

/* ---- matmul: few tokens -------------------------------------------------------------------- */

/* Weights [off, off + rem) (rem <= 32, zeros past it) as two fp32 vectors; BF16 as the even
 * and the odd elements, which load_x32 matches. */
INLINE void load_w32(const void *base, size_t off, int rem, enum kn_dtype dt, __m512 *w0,
		     __m512 *w1)
{
	__mmask16 m0 = mask16(rem), m1 = mask16(rem - 16 > 0 ? rem - 16 : 0);
	if (dt == KN_DTYPE_F32) {
		const float *p = (const float *)base + off;
		*w0 = _mm512_maskz_loadu_ps(m0, p);
		*w1 = _mm512_maskz_loadu_ps(m1, p + 16);
	} else if (dt == KN_DTYPE_F16) {
		const uint16_t *p = (const uint16_t *)base + off;
		*w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, p));
		*w1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, p + 16));
	} else {
		__mmask32 m = rem >= 32 ? 0xffffffffu : (1u << rem) - 1u;
		__m512i v = _mm512_maskz_loadu_epi16(m, (const uint16_t *)base + off);
		*w0 = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
		*w1 = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
	}
}

INLINE void load_x32(const float *p, int rem, enum kn_dtype dt, __m512 *x0, __m512 *x1)
{
	__m512 a = _mm512_maskz_loadu_ps(mask16(rem), p);
	__m512 b = _mm512_maskz_loadu_ps(mask16(rem - 16 > 0 ? rem - 16 : 0), p + 16);
	if (dt == KN_DTYPE_BF16) {
		const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24,
						     26, 28, 30);
		const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25,
						     27, 29, 31);
		*x0 = _mm512_permutex2var_ps(a, ie, b);
		*x1 = _mm512_permutex2var_ps(a, io, b);
	} else {
		*x0 = a;
		*x1 = b;
	}
}

/* y[t+j][r+i] = the lane sum of acc[i * T + j] for i < R, j < T (R * T <= 16). One
 * transposing tree for all sixteen instead of a reduction each: lane sums pair elements 0+2 and
 * 1+3 of each 128-bit lane, add those, then lanes 0+1 and 2+3, then the two halves - the same
 * order for every accumulator whatever the tile's shape, so a row's result does not depend
 * on the tile it was computed in. */
INLINE void reduce_tile(float *y, size_t ldy, int t, int r, const __m512 *acc, const int R,
			const int T)
{
	__m512 v[16], u[8], s[4], h[2];

	UNROLL for (int q = 0; q < 16; q++) /* v[4j + i]: token j's rows in one 128-bit lane */
		v[q] = q / 4 < T && q % 4 < R ? acc[(q % 4) * T + q / 4] : _mm512_setzero_ps();
	if (R > 4) { /* one token, up to 16 rows: v[i] */
		UNROLL for (int q = 0; q < 16; q++)
			v[q] = q < R ? acc[q] : _mm512_setzero_ps();
	}
	UNROLL for (int q = 0; q < 8; q++)
		u[q] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * q], v[2 * q + 1]),
				     _mm512_unpackhi_ps(v[2 * q], v[2 * q + 1]));
	UNROLL for (int q = 0; q < 4; q++)
		s[q] = _mm512_add_ps(
			_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[2 * q]),
							    _mm512_castps_pd(u[2 * q + 1]))),
			_mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[2 * q]),
							    _mm512_castps_pd(u[2 * q + 1]))));
	UNROLL for (int q = 0; q < 2; q++)
		h[q] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * q], s[2 * q + 1], 0x88),
				     _mm512_shuffle_f32x4(s[2 * q], s[2 * q + 1], 0xdd));
	__m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(h[0], h[1], 0x88),
				 _mm512_shuffle_f32x4(h[0], h[1], 0xdd));
	if (R > 4) {
		_mm512_mask_storeu_ps(y + (size_t)t * ldy + r, mask16(R), z);
		return;
	}
	if (R == 4) {
		_mm_storeu_ps(y + (size_t)t * ldy + r, _mm512_castps512_ps128(z));
		if (T > 1)
			_mm_storeu_ps(y + (size_t)(t + 1) * ldy + r, _mm512_extractf32x4_ps(z, 1));
		if (T > 2)
			_mm_storeu_ps(y + (size_t)(t + 2) * ldy + r, _mm512_extractf32x4_ps(z, 2));
		if (T > 3)
			_mm_storeu_ps(y + (size_t)(t + 3) * ldy + r, _mm512_extractf32x4_ps(z, 3));
		return;
	}
	_Alignas(64) float o[16];
	_mm512_store_ps(o, z);
	UNROLL for (int j = 0; j < T; j++)
		UNROLL for (int i = 0; i < R; i++)
			y[(size_t)(t + j) * ldy + r + i] = o[4 * j + i];
}

/* One 32-column step of R rows against T tokens whose activations are loaded (xv[2j],
 * xv[2j + 1]: token j's even and odd halves): rem columns, 32 but at the tail. With fetch,
 * the same columns of the next R rows are prefetched into L2. */
INLINE void fma_rows(__m512 *acc, const __m512 *xv, const struct kn_mat *w, int r, int k, int rem,
		     const int R, const int T, const enum kn_dtype dt, bool fetch)
{
	const int cols = w->cols;
	__m512 w0, w1;

	if (fetch)
		UNROLL for (int i = 0; i < R; i++)
			_mm_prefetch((const char *)w->data + ((size_t)(r + R + i) * cols + k) * 2,
				     _MM_HINT_T1);
	UNROLL for (int i = 0; i < R; i++) {
		load_w32(w->data, (size_t)(r + i) * cols + k, rem, dt, &w0, &w1);
		UNROLL for (int j = 0; j < T; j++) {
			acc[i * T + j] = _mm512_fmadd_ps(w0, xv[2 * j], acc[i * T + j]);
			acc[i * T + j] = _mm512_fmadd_ps(w1, xv[2 * j + 1], acc[i * T + j]);
		}
	}
}

/* One 32-column step of dot_tile. */
INLINE void dot_step(__m512 *acc, const float *x, const struct kn_mat *w, int t, int r, int k,
		     int rem, const int R, const int T, const enum kn_dtype dt, bool fetch)
{
	__m512 xv[8];

	UNROLL for (int j = 0; j < T; j++)
		load_x32(x + (size_t)(t + j) * w->cols + k, rem, dt, &xv[2 * j], &xv[2 * j + 1]);
	fma_rows(acc, xv, w, r, k, rem, R, T, dt, fetch);
}

/* y[t+j][r+i] for i < R, j < T (R * T <= 16). The first token group of a row block
 * prefetches the next R rows into L2 as it goes, as fdot_tile_xb does: each row is its own
 * 4 KiB page, where the hardware stream stops (bench/matvec, 400 MiB, one token: 0.67-0.84
 * of a streaming read without, 0.81-0.98 with; bench/e2e batch 32: routed experts -20%). */
INLINE void dot_tile(float *y, const float *x, const struct kn_mat *w, int t, int r, const int R,
		     const int T, const enum kn_dtype dt)
{
	const int cols = w->cols;
	const bool fetch = t == 0 && dt == KN_DTYPE_BF16 && r + 2 * R <= w->rows;
	__m512 acc[16];
	int k = 0;

	UNROLL for (int i = 0; i < R * T; i++)
		acc[i] = _mm512_setzero_ps();
	/* whole steps with constant masks (they fold away), then the tail: the same sums */
	for (; k + 32 <= cols; k += 32)
		dot_step(acc, x, w, t, r, k, 32, R, T, dt, fetch);
	if (k < cols)
		dot_step(acc, x, w, t, r, k, cols - k, R, T, dt, false);
	reduce_tile(y, (size_t)w->rows, t, r, acc, R, T);
}

INLINE void matmul_dot(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1,
		       const enum kn_dtype dt)
{
#define TILE(t, r, R, T) dot_tile(y, x, w, t, r, R, T, dt)
	DOT_WALK(TILE, n, r0, r1);
#undef TILE
}

/* A few tokens (GEMM_MIN_N .. FEW_MAX_N) with BF16 weights: x permuted once per call into
 * the even/odd halves load_w32 produces (xp[n][cols], per 32 columns 16 even then 16 odd
 * values), then 4 rows x 4 tokens tiles over the weights as they lie, the same sums in the
 * same order as dot_tile - so a token's result does not depend on how many came with it.
 * No packed panel: at these sizes packing costs as much as the products. */
#define FEW_MAX_N 32
#define FEW_MAX_XP (256 * 1024) /* bytes of permuted activations on the stack */

INLINE void dot_step_xp(__m512 *acc, const float *xp, size_t ldx, const struct kn_mat *w, int t,
			int r, int k, int rem, const int R, const int T, bool fetch)
{
	__m512 xv[8];

	UNROLL for (int j = 0; j < T; j++) {
		xv[2 * j] = _mm512_load_ps(xp + (size_t)(t + j) * ldx + k);
		xv[2 * j + 1] = _mm512_load_ps(xp + (size_t)(t + j) * ldx + k + 16);
	}
	fma_rows(acc, xv, w, r, k, rem, R, T, KN_DTYPE_BF16, fetch);
}

INLINE void dot_tile_xp(float *y, const float *xp, const struct kn_mat *w, int t, int r,
			const int R, const int T)
{
	const int cols = w->cols;
	const size_t ldx = (size_t)FR_DIV_ROUND_UP(cols, 32) * 32;
	const bool fetch = t == 0 && r + 2 * R <= w->rows; /* as dot_tile */
	__m512 acc[16];
	int k = 0;

	UNROLL for (int i = 0; i < R * T; i++)
		acc[i] = _mm512_setzero_ps();
	for (; k + 32 <= cols; k += 32) /* as dot_tile */
		dot_step_xp(acc, xp, ldx, w, t, r, k, 32, R, T, fetch);
	if (k < cols)
		dot_step_xp(acc, xp, ldx, w, t, r, k, cols - k, R, T, false);
	reduce_tile(y, (size_t)w->rows, t, r, acc, R, T);
}

static void matmul_few_bf16(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			    int r1, float *xp)
{
	const int cols = w->cols;
	const size_t ldx = (size_t)FR_DIV_ROUND_UP(cols, 32) * 32;

	for (int t = 0; t < n; t++)
		for (int k = 0; k < cols; k += 32) {
			__m512 a, b;
			load_x32(x + (size_t)t * cols + k, FR_MIN(32, cols - k), KN_DTYPE_BF16, &a,
				 &b);
			_mm512_store_ps(xp + (size_t)t * ldx + k, a);
			_mm512_store_ps(xp + (size_t)t * ldx + k + 16, b);
		}
#define TILE(t, r, R, T, k0, g) dot_tile_xp(y, xp, w, t, r, R, T)
	FEW_WALK(TILE, n, r0, r1, w->cols, w->cols);
#undef TILE
}

/* ---- matmul: many tokens ------------------------------------------------------------------ */

INLINE __m256 load_w8(const void *base, size_t off, enum kn_dtype dt)
{
	if (dt == KN_DTYPE_F32)
		return _mm256_loadu_ps((const float *)base + off);
	__m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + off));
	if (dt == KN_DTYPE_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE void transpose8(__m256 m[8])
{
	__m256 t[8], s[8];
	for (int i = 0; i < 4; i++) {
		t[2 * i] = _mm256_unpacklo_ps(m[2 * i], m[2 * i + 1]);
		t[2 * i + 1] = _mm256_unpackhi_ps(m[2 * i], m[2 * i + 1]);
	}
	for (int i = 0; i < 2; i++) {
		s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
		s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
		s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
		s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
	}
	for (int i = 0; i < 4; i++) {
		m[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
		m[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
	}
}

/* wp[k][32] = W[r + i][k0 + k] as fp32 for i < nr, 0 for the rows past nr. */
INLINE void pack_panel(float *wp, const struct kn_mat *w, int r, int nr, int k0, int kc,
		       const enum kn_dtype dt)
{
	const size_t cols = (size_t)w->cols;
	int k = 0;
	for (; k + 8 <= kc; k += 8) {
		for (int h = 0; h < 4; h++) {
			__m256 m[8];
			for (int i = 0; i < 8; i++) {
				int row = h * 8 + i;
				m[i] = row < nr ? load_w8(w->data, (size_t)(r + row) * cols + k0 + k, dt)
						: _mm256_setzero_ps();
			}
			transpose8(m);
			for (int c = 0; c < 8; c++)
				_mm256_store_ps(wp + (size_t)(k + c) * 32 + h * 8, m[c]);
		}
	}
	for (; k < kc; k++) {
		for (int i = 0; i < 32; i++) {
			float v = 0.0f;
			if (i < nr) {
				size_t o = (size_t)(r + i) * cols + k0 + k;
				const uint16_t *h = w->data;
				v = dt == KN_DTYPE_F32	 ? ((const float *)w->data)[o]
				    : dt == KN_DTYPE_F16 ? kn_f16_to_f32(h[o])
							 : kn_bf16_to_f32(h[o]);
			}
			wp[(size_t)k * 32 + i] = v;
		}
	}
}

/* y[j][0..nr) (+)= sum_k x[j][k] * wp[k][0..nr) for j < M tokens; sequential in k. */
INLINE void gemm_tile(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int kc,
		      int nr, bool first, const int M)
{
	__m512 acc[2 * MT];
	__mmask16 m0 = mask16(FR_MIN(nr, 16)), m1 = mask16(FR_MAX(nr - 16, 0));

	UNROLL for (int j = 0; j < M; j++) {
		if (first) {
			acc[2 * j] = _mm512_setzero_ps();
			acc[2 * j + 1] = _mm512_setzero_ps();
		} else {
			acc[2 * j] = _mm512_maskz_loadu_ps(m0, y + j * ldy);
			acc[2 * j + 1] = _mm512_maskz_loadu_ps(m1, y + j * ldy + 16);
		}
	}
	for (int k = 0; k < kc; k++) {
		__m512 w0 = _mm512_load_ps(wp + (size_t)k * 32);
		__m512 w1 = _mm512_load_ps(wp + (size_t)k * 32 + 16);
		UNROLL for (int j = 0; j < M; j++) {
			__m512 b = _mm512_set1_ps(x[j * ldx + k]);
			acc[2 * j] = _mm512_fmadd_ps(b, w0, acc[2 * j]);
			acc[2 * j + 1] = _mm512_fmadd_ps(b, w1, acc[2 * j + 1]);
		}
	}
	UNROLL for (int j = 0; j < M; j++) {
		_mm512_mask_storeu_ps(y + j * ldy, m0, acc[2 * j]);
		_mm512_mask_storeu_ps(y + j * ldy + 16, m1, acc[2 * j + 1]);
	}
}

static void gemm_tiles(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int kc,
		       int nr, bool first, int n)
{
#define TILE(t, M) gemm_tile(y + (t) * ldy, ldy, x + (t) * ldx, ldx, wp, kc, nr, first, M)
	GEMM_WALK(TILE, n);
#undef TILE
}

INLINE void matmul_gemm(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1,
			const enum kn_dtype dt)
{
	_Alignas(64) float wp[KC * 32];
	for (int r = r0; r < r1; r += 32) {
		int nr = FR_MIN(32, r1 - r);
		for (int k0 = 0; k0 < w->cols; k0 += KC) {
			int kc = FR_MIN(KC, w->cols - k0);
			pack_panel(wp, w, r, nr, k0, kc, dt);
			gemm_tiles(y + r, (size_t)w->rows, x + k0, (size_t)w->cols, wp, kc, nr, k0 == 0,
				   n);
		}
	}
}

static void matmul_f32(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
{
	if (n >= GEMM_MIN_N)
		matmul_gemm(y, x, w, n, r0, r1, KN_DTYPE_F32);
	else
		matmul_dot(y, x, w, n, r0, r1, KN_DTYPE_F32);
}

static void matmul_bf16(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
{
	size_t xp_bytes = (size_t)n * FR_DIV_ROUND_UP(w->cols, 32) * 32 * sizeof(float);
	if (n >= GEMM_MIN_N && n <= FEW_MAX_N && xp_bytes <= FEW_MAX_XP) {
		_Alignas(64) float xp[FEW_MAX_XP / sizeof(float)];
		matmul_few_bf16(y, x, w, n, r0, r1, xp);
		return;
	}
	if (n >= GEMM_MIN_N)
		matmul_gemm(y, x, w, n, r0, r1, KN_DTYPE_BF16);
	else
		matmul_dot(y, x, w, n, r0, r1, KN_DTYPE_BF16);
}

static void matmul_f16(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
{
	if (n >= GEMM_MIN_N)
		matmul_gemm(y, x, w, n, r0, r1, KN_DTYPE_F16);
	else
		matmul_dot(y, x, w, n, r0, r1, KN_DTYPE_F16);
}

static void avx512_matmul(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
{
	switch (w->dtype) {
	case KN_DTYPE_F32:
		matmul_f32(y, x, w, n, r0, r1);
		break;
	case KN_DTYPE_BF16:
		matmul_bf16(y, x, w, n, r0, r1);
		break;
	case KN_DTYPE_F16:
		matmul_f16(y, x, w, n, r0, r1);
		break;
	}
}

/* ---- matmul_fast: bf16 dot products (KN_PRECISION_FAST, BF16 weights) ------------------------ */

#define KCF 512 /* columns per packed bf16 panel: 32 rows x 256 pairs x 4 bytes = 32 KiB */

/* x[0, rem) (rem <= 32, zeros past it) rounded to 32 bf16 in memory order. */
INLINE __m512bh load_xbf(const float *p, int rem)
{
	__m512 a = _mm512_maskz_loadu_ps(mask16(rem), p);
	__m512 b = _mm512_maskz_loadu_ps(mask16(rem - 16 > 0 ? rem - 16 : 0), p + 16);
	return _mm512_cvtne2ps_pbh(b, a);
}

INLINE __m512bh load_wbf(const uint16_t *p, int rem)
{
	__mmask32 m = rem >= 32 ? 0xffffffffu : (1u << rem) - 1u;
	return (__m512bh)_mm512_maskz_loadu_epi16(m, p);
}

/* Tiles over activations already rounded: xb[t][ld] bf16 (ld = KN_XB_LD(cols), zeros past
 * cols, so x loads need no mask). y[t+j][r+i] for i < R, j < T (R * T <= 16, T <= 4): 16
 * accumulators at most, summed by reduce_tile. The tiles of a row block prefetch the next
 * R rows of weights into L2 (a row of 2048 BF16 is one 4 KiB page, where the hardware stream
 * stops): with groups 1 the first token group all of them, with groups G the 4-token group
 * t/4 every G-th 32 columns from the (t/4 mod G)-th, so G groups share the traffic evenly
 * rather than the first one asking for it all at once (bench/e2e batch 32: lm_head -3%);
 * groups 0: none. */
INLINE void fdot_tile_xb(float *y, const uint16_t *xb, size_t ld, const struct kn_mat *w, int t,
			 int r, const int R, const int T, const int groups, int k0, int k1,
			 __m512 *save)
{
	const int cols = w->cols, kend = FR_MIN(k1, cols);
	const uint16_t *wd = w->data;
	const bool fetch = groups > 0 && (groups > 1 || t == 0) && r + 2 * R <= w->rows;
	const int mine = groups > 1 ? (t / 4) % groups : 0;
	int step = groups > 1 ? k0 / 32 % groups : 0;
	__m512 acc[16];

	UNROLL for (int i = 0; i < R * T; i++)
		acc[i] = k0 > 0 ? save[i] : _mm512_setzero_ps();
	/* whole steps unmasked, then the tail: the same products in the same order */
	int k = k0;
	for (; k + 32 <= kend; k += 32) {
		__m512bh xv[4];
		UNROLL for (int j = 0; j < T; j++)
			xv[j] = (__m512bh)_mm512_loadu_si512(xb + (size_t)(t + j) * ld + k);
		if (fetch && step == mine)
			UNROLL for (int i = 0; i < R; i++)
				_mm_prefetch((const char *)(wd + (size_t)(r + R + i) * cols + k),
					     _MM_HINT_T1);
		if (++step == groups)
			step = 0;
		UNROLL for (int i = 0; i < R; i++) {
			__m512bh wv = (__m512bh)_mm512_loadu_si512(wd + (size_t)(r + i) * cols + k);
			UNROLL for (int j = 0; j < T; j++)
				acc[i * T + j] = _mm512_dpbf16_ps(acc[i * T + j], wv, xv[j]);
		}
	}
	if (k < kend) {
		__m512bh xv[4];
		UNROLL for (int j = 0; j < T; j++)
			xv[j] = (__m512bh)_mm512_loadu_si512(xb + (size_t)(t + j) * ld + k);
		UNROLL for (int i = 0; i < R; i++) {
			__m512bh wv = load_wbf(wd + (size_t)(r + i) * cols + k, cols - k);
			UNROLL for (int j = 0; j < T; j++)
				acc[i * T + j] = _mm512_dpbf16_ps(acc[i * T + j], wv, xv[j]);
		}
	}
	if (kend < cols) { /* a chunk of columns: the sums go on in the next */
		UNROLL for (int i = 0; i < R * T; i++)
			save[i] = acc[i];
		return;
	}
	reduce_tile(y, (size_t)w->rows, t, r, acc, R, T);
}

/* wp[p][32] = the bf16 pair (W[r + i][k0 + 2p], W[r + i][k0 + 2p + 1]) for i < nr, as one
 * 32-bit lane (lower half the even column); zeros past nr rows and past kc columns. */
INLINE void pack_panel_pairs(uint32_t *wp, const struct kn_mat *w, int r, int nr, int k0, int kc)
{
	const size_t cols = (size_t)w->cols;
	const uint16_t *d = w->data;
	int np = (kc + 1) / 2, p = 0;

	for (; 2 * (p + 8) <= kc; p += 8) {
		for (int h = 0; h < 4; h++) {
			__m256 m[8];
			for (int i = 0; i < 8; i++) {
				int row = h * 8 + i;
				m[i] = row < nr ? _mm256_castsi256_ps(_mm256_loadu_si256(
							  (const __m256i *)(d + (size_t)(r + row) * cols +
									    k0 + 2 * p)))
						: _mm256_setzero_ps();
			}
			transpose8(m);
			for (int c = 0; c < 8; c++)
				_mm256_store_ps((float *)(wp + (size_t)(p + c) * 32 + h * 8), m[c]);
		}
	}
	for (; p < np; p++) {
		for (int i = 0; i < 32; i++) {
			uint32_t lo = 0, hi = 0;
			if (i < nr) {
				const uint16_t *row = d + (size_t)(r + i) * cols + k0;
				lo = row[2 * p];
				hi = 2 * p + 1 < kc ? row[2 * p + 1] : 0;
			}
			wp[(size_t)p * 32 + i] = lo | hi << 16;
		}
	}
}

/* y[j][0..nr) (+)= xb[j][0..kc) . panel, j < M tokens; each bf16 pair of x broadcast as
 * it lies (a row's zero padding completes an odd last pair). */
INLINE void fgemm_tile(float *y, size_t ldy, const uint16_t *xb, size_t ldx, const uint32_t *wp,
		       int kc, int nr, bool first, const int M)
{
	__m512 acc[2 * MT];
	__mmask16 m0 = mask16(FR_MIN(nr, 16)), m1 = mask16(FR_MAX(nr - 16, 0));
	int np = (kc + 1) / 2;

	UNROLL for (int j = 0; j < M; j++) {
		if (first) {
			acc[2 * j] = _mm512_setzero_ps();
			acc[2 * j + 1] = _mm512_setzero_ps();
		} else {
			acc[2 * j] = _mm512_maskz_loadu_ps(m0, y + j * ldy);
			acc[2 * j + 1] = _mm512_maskz_loadu_ps(m1, y + j * ldy + 16);
		}
	}
	for (int p = 0; p < np; p++) {
		__m512bh w0 = (__m512bh)_mm512_load_si512(wp + (size_t)p * 32);
		__m512bh w1 = (__m512bh)_mm512_load_si512(wp + (size_t)p * 32 + 16);
		UNROLL for (int j = 0; j < M; j++) {
			__m512bh b = (__m512bh)_mm512_broadcastd_epi32(
				_mm_loadu_si32(xb + j * ldx + 2 * (size_t)p));
			acc[2 * j] = _mm512_dpbf16_ps(acc[2 * j], w0, b);
			acc[2 * j + 1] = _mm512_dpbf16_ps(acc[2 * j + 1], w1, b);
		}
	}
	UNROLL for (int j = 0; j < M; j++) {
		_mm512_mask_storeu_ps(y + j * ldy, m0, acc[2 * j]);
		_mm512_mask_storeu_ps(y + j * ldy + 16, m1, acc[2 * j + 1]);
	}
}

static void fgemm_tiles(float *y, size_t ldy, const uint16_t *xb, size_t ldx, const uint32_t *wp,
			int kc, int nr, bool first, int n)
{
#define TILE(t, M) fgemm_tile(y + (t) * ldy, ldy, xb + (t) * ldx, ldx, wp, kc, nr, first, M)
	GEMM_WALK(TILE, n);
#undef TILE
}

/* A few tokens (up to FDOT_MAX_N): 8-row tiles for one token, 4 rows x 4 tokens for more,
 * the weights as they lie; more tokens: packed panels of bf16 pairs. */
#define FDOT_MAX_N 64

/* Columns per chunk of the few-token tiles where rows are longer than FKC_MIN: a 4-row tile
 * then keeps its 8 KiB of weights in L1 while the token groups pass (whole rows of 10944
 * bf16 are 85 KiB a tile, out of L1 before the next group comes; bench/gemm 32x10944x2048,
 * 2 threads: 0.61-0.69 of the bf16 peak whole, 0.74-0.79 in chunks). The accumulators wait
 * in `save` between chunks: the same sums in the same order. Rows up to FKC_MIN (a 4-row
 * tile within L1) run whole, as measured best. */
#define FKC 1024
#define FKC_MIN 4096

static void avx512_matmul_fast_xb(float *y, const uint16_t *xb, const struct kn_mat *w, int n,
				  int r0, int r1)
{
	const size_t ld = KN_XB_LD(w->cols);
	_Alignas(64) uint32_t wp[KCF / 2 * 32];

	if (n < GEMM_MIN_N) {
#define TILE(t, r, R, T) fdot_tile_xb(y, xb, ld, w, t, r, R, T, 1, 0, INT_MAX, NULL)
		DOT_WALK(TILE, n, r0, r1);
#undef TILE
		return;
	}
	if (n <= FDOT_MAX_N) {
		const int groups = FR_DIV_ROUND_UP(n, 4), kc = w->cols > FKC_MIN ? FKC : w->cols;
		_Alignas(64) __m512 save[FEW_TILES * 16];
#define TILE(t, r, R, T, k0, g)                                                             \
	fdot_tile_xb(y, xb, ld, w, t, r, R, T, groups, k0, (k0) + kc, save + 16 * (g))
		FEW_WALK(TILE, n, r0, r1, w->cols, kc);
#undef TILE
		return;
	}
	for (int r = r0; r < r1; r += 32) {
		int nr = FR_MIN(32, r1 - r);
		for (int k0 = 0; k0 < w->cols; k0 += KCF) {
			int kc = FR_MIN(KCF, w->cols - k0);
			pack_panel_pairs(wp, w, r, nr, k0, kc);
			fgemm_tiles(y + r, (size_t)w->rows, xb + k0, ld, wp, kc, nr, k0 == 0, n);
		}
	}
}

/* xb[t][KN_XB_LD(cols)] = x[t][cols] rounded to bf16 (nearest even, as vcvtne2ps2bf16 does),
 * zeros past cols. */
static void avx512_round_bf16(uint16_t *xb, const float *x, int n, int cols)
{
	const size_t ld = KN_XB_LD(cols);

	for (int t = 0; t < n; t++)
		for (int k = 0; k < (int)ld; k += 32)
			_mm512_storeu_si512(xb + (size_t)t * ld + k,
					    (__m512i)load_xbf(x + (size_t)t * cols + k,
							      FR_MIN(32, cols - k)));
}

#define FAST_STACK_XB (64 * 1024) /* bytes of bf16 activations rounded on the stack */

/* The op on fp32 activations: rounded here, per call. kn_matmul rounds once, before the
 * threads split the rows, and calls avx512_matmul_fast_xb. */
static void avx512_matmul_fast(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			       int r1)
{
	size_t bytes = (size_t)n * KN_XB_LD(w->cols) * sizeof(uint16_t);
	_Alignas(64) uint16_t stack[FAST_STACK_XB / sizeof(uint16_t)];
	uint16_t *xb = NULL;

	if (w->dtype == KN_DTYPE_BF16)
		xb = bytes <= sizeof(stack) ? stack
					    : aligned_alloc(64, FR_DIV_ROUND_UP(bytes, 64) * 64);
	if (!xb) { /* not BF16, or no memory: exactly, which needs none */
		avx512_matmul(y, x, w, n, r0, r1);
		return;
	}
	avx512_round_bf16(xb, x, n, w->cols);
	avx512_matmul_fast_xb(y, xb, w, n, r0, r1);
	if (xb != stack)
		free(xb);
}

/* ---- vector ops ---------------------------------------------------------------------------- */

static float avx512_dot(const float *x, const float *y, int n)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
		a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
	}
	for (; i < n; i += 16) {
		__mmask16 m = mask16(n - i);
		a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a0);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static void avx512_axpy(float *y, float a, const float *x, int n)
{
	__m512 va = _mm512_set1_ps(a);
	for (int i = 0; i < n; i += 16) {
		__mmask16 m = mask16(n - i);
		__m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i),
					   _mm512_maskz_loadu_ps(m, y + i));
		_mm512_mask_storeu_ps(y + i, m, v);
	}
}

static void avx512_rmsnorm(float *y, const float *x, const float *g, int dim, float eps)
{
	__m512 vi = _mm512_set1_ps(1.0f / sqrtf(avx512_dot(x, x, dim) / (float)dim + eps));
	for (int i = 0; i < dim; i += 16) {
		__mmask16 m = mask16(dim - i);
		__m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vi);
		_mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, g + i)));
	}
}

static void avx512_swiglu(float *out, const float *gate, const float *up, int n)
{
	for (int i = 0; i < n; i += 16) {
		__mmask16 m = mask16(n - i);
		__m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
		__m512 v = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
		_mm512_mask_storeu_ps(out + i, m, v);
	}
}

/* Per lane, the first element greater than x[0] and each later greater one (strict, so a NaN
 * never wins and ties keep the first); then the largest lane value's lowest index. */
static int avx512_argmax(const float *x, int n)
{
	if (isnan(x[0]))
		return 0;
	__m512 m = _mm512_set1_ps(x[0]);
	__m512i best = _mm512_setzero_si512(), idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9,
								       8, 7, 6, 5, 4, 3, 2, 1, 0);
	const __m512i step = _mm512_set1_epi32(16);

	for (int i = 0; i < n; i += 16) {
		/* past the end the lanes load m itself, which is never greater */
		__m512 v = _mm512_mask_loadu_ps(m, mask16(n - i), x + i);
		__mmask16 gt = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ);
		m = _mm512_mask_mov_ps(m, gt, v);
		best = _mm512_mask_mov_epi32(best, gt, idx);
		idx = _mm512_add_epi32(idx, step);
	}
	__mmask16 top = _mm512_cmp_ps_mask(m, _mm512_set1_ps(_mm512_reduce_max_ps(m)), _CMP_EQ_OQ);
	return _mm512_mask_reduce_min_epi32(top, best);
}

static void avx512_softmax(float *x, int n)
{
	__m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
	for (int i = 0; i < n; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, mask16(n - i), x + i));
	__m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
	for (int i = 0; i < n; i += 16) {
		__mmask16 m = mask16(n - i);
		__m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
		e = _mm512_maskz_mov_ps(m, e);
		_mm512_mask_storeu_ps(x + i, m, e);
		vsum = _mm512_add_ps(vsum, e);
	}
	__m512 vi = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
	for (int i = 0; i < n; i += 16) {
		__mmask16 m = mask16(n - i);
		_mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vi));
	}
}

static void avx512_attend(float *out, const float *q, const float *k, const float *v,
		       const int32_t *blocks, int block_size, int n_ctx, int head_dim,
		       size_t stride, float scale, float *scratch)
{
	size_t bstride = (size_t)block_size * stride;

	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *kb = k + (size_t)blocks[b] * bstride;
		float *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			sb[i] = avx512_dot(q, kb + (size_t)i * stride, head_dim) * scale;
	}
	avx512_softmax(scratch, n_ctx);
	memset(out, 0, (size_t)head_dim * sizeof(float));
	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *vb = v + (size_t)blocks[b] * bstride, *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			avx512_axpy(out, sb[i], vb + (size_t)i * stride, head_dim);
	}
}

const struct kn_ops kn_ops_avx512 = {
	.name = "avx512",
	.matmul = avx512_matmul,
	.rmsnorm = avx512_rmsnorm,
	.swiglu = avx512_swiglu,
	.axpy = avx512_axpy,
	.dot = avx512_dot,
	.softmax = avx512_softmax,
	.argmax = avx512_argmax,
	.attend = avx512_attend,
};

/* Same numerics as kn_ops_avx512; see the comment at the top. */
const struct kn_ops kn_ops_avx512bf16 = {
	.name = "avx512bf16",
	.matmul = avx512_matmul,
	.matmul_fast = avx512_matmul_fast,
	.matmul_fast_xb = avx512_matmul_fast_xb,
	.round_bf16 = avx512_round_bf16,
	.rmsnorm = avx512_rmsnorm,
	.swiglu = avx512_swiglu,
	.axpy = avx512_axpy,
	.dot = avx512_dot,
	.softmax = avx512_softmax,
	.argmax = avx512_argmax,
	.attend = avx512_attend,
};
