/* SPDX-License-Identifier: Apache-2.0 */
/*
 * avx2.c - AVX2 + FMA (+ F16C) versions of the CPU ops.
 *
 * matmul has three shapes of loop:
 *  - 1-3 tokens (decode): a "dot" tile of R weight rows x T tokens, reading W rows straight
 *    from the mmap once, 16 columns per step, one 8-lane accumulator per output. BF16 rows
 *    are widened exactly with a shift (even elements) and a mask (odd elements), so x is
 *    de-interleaved to match.
 *  - 4-64 tokens with BF16 weights (batched decode, MoE experts): the same dot tiles, 4 rows
 *    x 2 tokens, over x de-interleaved once per call; long rows in column chunks.
 *  - many tokens (prefill): W is packed 16 rows x KC columns at a time into an fp32 panel
 *    (k-major), and a 6-token x 16-row outer-product tile sweeps all tokens over it.
 * Within one path every output is summed in the same order whatever its position in a
 * tile, so a split of rows over threads never changes a result bit.
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/cpu/cpu-internal.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

/* Token count from which matmul packs W and runs the outer-product tile. */
#define GEMM_MIN_N 4
#define KC 256 /* columns per packed panel: 16 x 256 fp32 = 16 KiB, stays in L1 */
#define MT 6   /* tokens per outer-product tile: 12 accumulators */

INLINE float hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* Lanes [0, n) set, n in [0, 8]. */
INLINE __m256i tail_mask(int n)
{
	static const int32_t m[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };
	return _mm256_loadu_si256((const __m256i *)(m + 8 - n));
}

/* ---- exp ---------------------------------------------------------------------------------- */

/* expf to ~1-2 ulp over the whole float range: Cody-Waite reduction to |r| <= ln2/2, the
 * Cephes degree-6 polynomial, and 2^n applied as two factors so n = +-128..150 neither
 * overflows the exponent field early nor loses subnormal results. NaN stays NaN. */
INLINE __m256 exp256(__m256 x)
{
	x = _mm256_min_ps(_mm256_set1_ps(89.0f), x); /* min/max keep x when it is NaN */
	x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
	p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
	__m256i ni = _mm256_cvtps_epi32(n);
	__m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
	__m256i bias = _mm256_set1_epi32(127);
	__m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
	__m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
	return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* ---- matmul: few tokens ------------------------------------------------------------------------ */

INLINE size_t dt_size(enum kn_dtype dt)
{
	return dt == KN_DTYPE_F32 ? 4 : 2;
}

/* 16 weights starting at element `off` as two fp32 vectors (exact widening). For BF16 the
 * vectors hold the even and the odd elements; load_x16 arranges x the same way. */
INLINE void load_w16(const void *base, size_t off, enum kn_dtype dt, __m256 *w0, __m256 *w1)
{
	if (dt == KN_DTYPE_F32) {
		const float *p = (const float *)base + off;
		*w0 = _mm256_loadu_ps(p);
		*w1 = _mm256_loadu_ps(p + 8);
	} else if (dt == KN_DTYPE_F16) {
		const uint16_t *p = (const uint16_t *)base + off;
		*w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
		*w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)));
	} else {
		__m256i v = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + off));
		__asm__("" : "+x"(v)); /* one load feeding both halves, not two folded loads */
		*w0 = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
		*w1 = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
	}
}

INLINE void load_x16(const float *p, enum kn_dtype dt, __m256 *x0, __m256 *x1)
{
	__m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
	if (dt == KN_DTYPE_BF16) {
		__m256 lo = _mm256_permute2f128_ps(a, b, 0x20); /* x0..3 x8..11 */
		__m256 hi = _mm256_permute2f128_ps(a, b, 0x31); /* x4..7 x12..15 */
		*x0 = _mm256_shuffle_ps(lo, hi, 0x88);          /* even */
		*x1 = _mm256_shuffle_ps(lo, hi, 0xdd);          /* odd */
	} else {
		*x0 = a;
		*x1 = b;
	}
}

/* One 16-column step of R rows against T tokens whose activations are loaded (xv[2j],
 * xv[2j + 1]: token j's even and odd halves; zeros past the row's end). With fetch, the same
 * columns of the next R rows are prefetched into L2, a cache line each 64 bytes: rows of a few
 * KiB are pages of their own, where the hardware stream stops (as in avx512.c). rem < 16: the
 * weights go through a zero-padded copy, the same sums as a full step. */
INLINE void fma_rows(__m256 *acc, const __m256 *xv, const struct kn_mat *w, int r, int k, int rem,
		     const int R, const int T, const enum kn_dtype dt, bool fetch)
{
	const size_t cols = (size_t)w->cols, es = dt_size(dt);
	_Alignas(32) unsigned char wt[64];
	__m256 w0, w1;

	if (fetch && (size_t)k * es % 64 == 0)
		UNROLL for (int i = 0; i < R; i++)
			_mm_prefetch((const char *)w->data + ((size_t)(r + R + i) * cols + k) * es,
				     _MM_HINT_T1);
	UNROLL for (int i = 0; i < R; i++) {
		if (rem == 16) {
			load_w16(w->data, (size_t)(r + i) * cols + k, dt, &w0, &w1);
		} else {
			memset(wt, 0, sizeof(wt));
			memcpy(wt, (const char *)w->data + ((size_t)(r + i) * cols + k) * es,
			       (size_t)rem * es);
			load_w16(wt, 0, dt, &w0, &w1);
		}
		UNROLL for (int j = 0; j < T; j++) {
			acc[i * T + j] = _mm256_fmadd_ps(w0, xv[2 * j], acc[i * T + j]);
			acc[i * T + j] = _mm256_fmadd_ps(w1, xv[2 * j + 1], acc[i * T + j]);
		}
	}
}

/* Token t's activations [k, k + rem) as load_w16's two halves, zeros past rem. */
INLINE void load_x16_rem(const float *x, int k, int rem, enum kn_dtype dt, __m256 *x0, __m256 *x1)
{
	float xt[16];
	if (rem == 16) {
		load_x16(x + k, dt, x0, x1);
		return;
	}
	memset(xt, 0, sizeof(xt));
	memcpy(xt, x + k, (size_t)rem * sizeof(float));
	load_x16(xt, dt, x0, x1);
}

/* y[t+j][r+i] for i < R, j < T (R * T <= 8), x as it lies. The first token group of a row
 * block prefetches the next R rows. Every output is the same chain of FMAs and one hsum,
 * whatever the tile or the path (few_tile's too). */
INLINE void dot_tile(float *y, const float *x, const struct kn_mat *w, int t, int r, const int R,
		     const int T, const enum kn_dtype dt)
{
	const int cols = w->cols;
	const bool fetch = t == 0 && r + 2 * R <= w->rows;
	__m256 acc[8], xv[4];
	int k = 0;

	UNROLL for (int i = 0; i < R * T; i++)
		acc[i] = _mm256_setzero_ps();
	for (; k + 16 <= cols; k += 16) {
		UNROLL for (int j = 0; j < T; j++)
			load_x16(x + (size_t)(t + j) * cols + k, dt, &xv[2 * j], &xv[2 * j + 1]);
		fma_rows(acc, xv, w, r, k, 16, R, T, dt, fetch);
	}
	if (k < cols) { /* the tail through zero-padded copies: the same sums as a whole step */
		UNROLL for (int j = 0; j < T; j++)
			load_x16_rem(x + (size_t)(t + j) * cols, k, cols - k, dt, &xv[2 * j],
				     &xv[2 * j + 1]);
		fma_rows(acc, xv, w, r, k, cols - k, R, T, dt, false);
	}
	UNROLL for (int i = 0; i < R; i++)
		UNROLL for (int j = 0; j < T; j++)
			y[(size_t)(t + j) * w->rows + r + i] = hsum(acc[i * T + j]);
}

INLINE void matmul_dot(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1,
		       const enum kn_dtype dt)
{
	int r = r0;
	if (n == 1) {
		for (; r + 8 <= r1; r += 8)
			dot_tile(y, x, w, 0, r, 8, 1, dt);
		for (; r < r1; r++)
			dot_tile(y, x, w, 0, r, 1, 1, dt);
		return;
	}
	for (; r + 4 <= r1; r += 4) {
		int t = 0;
		for (; t + 2 <= n; t += 2)
			dot_tile(y, x, w, t, r, 4, 2, dt);
		if (t < n)
			dot_tile(y, x, w, t, r, 4, 1, dt);
	}
	for (; r < r1; r++) {
		int t = 0;
		for (; t + 2 <= n; t += 2)
			dot_tile(y, x, w, t, r, 1, 2, dt);
		if (t < n)
			dot_tile(y, x, w, t, r, 1, 1, dt);
	}
}

/* A few tokens (GEMM_MIN_N .. FEW_MAX_N) with BF16 weights: x split once per call into the
 * even/odd halves load_w16 produces (xp[n][ldx], per 16 columns 8 even then 8 odd values),
 * then 4 rows x 2 tokens tiles over the weights as they lie - the same sums in the same order
 * as matmul_dot, so a token's result does not depend on how many came with it. No packed
 * panel: at these sizes packing and transposing W costs as much as the products.
 * Activations past FEW_MAX_XP bytes (long rows, many tokens) no longer stay in the cache
 * while a row goes by: their rows go in chunks of FEW_KC columns, each chunk over a panel of
 * FEW_PANEL rows before the next, the tiles' accumulators kept between chunks (save) - the
 * chains of FMAs are cut, not changed, so the bits are the same. */
#define FEW_MAX_N 64
#define FEW_MAX_XP (256 * 1024) /* bytes of split activations on the stack, whole rows */
#define FEW_KC 512		 /* columns per chunk of long rows */
#define FEW_PANEL 64		 /* rows that go over one chunk before the next */
#define FEW_SLOTS ((FEW_PANEL / 4 + 3) * (FEW_MAX_N / 2)) /* tiles of a panel */
_Static_assert(FEW_KC % 16 == 0, "chunks cut the chains of FMAs between 16-column steps");

/* Tokens t..t+T-1's split activations at column k (a multiple of 16) into xv. */
INLINE void load_xp(__m256 *xv, const float *xp, size_t ldx, int t, int k, const int T)
{
	UNROLL for (int j = 0; j < T; j++) {
		xv[2 * j] = _mm256_load_ps(xp + (size_t)(t + j) * ldx + k);
		xv[2 * j + 1] = _mm256_load_ps(xp + (size_t)(t + j) * ldx + k + 8);
	}
}

/* Columns [k0, k0 + kc) of the tile's rows r.. against tokens t.. (xp as above, rows of ldx):
 * from zero at k0 = 0, else from save[]; at the rows' end into y, else into save[]. */
INLINE void few_tile(float *y, const float *xp, size_t ldx, const struct kn_mat *w, int t, int r,
		     int k0, int kc, const int R, const int T, __m256 *save)
{
	const bool fetch = t == 0 && r + 2 * R <= w->rows;
	const bool last = k0 + kc >= w->cols;
	__m256 acc[8], xv[4];
	int k = 0;

	UNROLL for (int i = 0; i < R * T; i++)
		acc[i] = k0 == 0 ? _mm256_setzero_ps() : save[i];
	/* whole steps with a constant rem, then the tail in a loop of its own (one loop with
	 * both made gcc spill accumulators: 0.6x) */
	for (; k + 16 <= kc; k += 16) {
		load_xp(xv, xp, ldx, t, k0 + k, T);
		fma_rows(acc, xv, w, r, k0 + k, 16, R, T, KN_DTYPE_BF16, fetch);
	}
	if (k < kc) { /* the rows' last columns; the split left zeros past them */
		load_xp(xv, xp, ldx, t, k0 + k, T);
		fma_rows(acc, xv, w, r, k0 + k, kc - k, R, T, KN_DTYPE_BF16, false);
	}
	if (last) {
		UNROLL for (int i = 0; i < R; i++)
			UNROLL for (int j = 0; j < T; j++)
				y[(size_t)(t + j) * w->rows + r + i] = hsum(acc[i * T + j]);
	} else {
		UNROLL for (int i = 0; i < R * T; i++)
			save[i] = acc[i];
	}
}

/* save: NULL for whole rows at once, else FEW_SLOTS x 8 vectors. */
static void matmul_few_bf16(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			    int r1, float *xp, __m256 *save)
{
	const int cols = w->cols;
	const size_t ldx = (size_t)FR_DIV_ROUND_UP(cols, 16) * 16;
	const int kc = save ? FEW_KC : cols, panel = save ? FEW_PANEL : r1 - r0;

	for (int t = 0; t < n; t++)
		for (int k = 0; k < cols; k += 16) {
			__m256 a, b;
			load_x16_rem(x + (size_t)t * cols, k, FR_MIN(16, cols - k), KN_DTYPE_BF16, &a,
				     &b);
			_mm256_store_ps(xp + (size_t)t * ldx + k, a);
			_mm256_store_ps(xp + (size_t)t * ldx + k + 8, b);
		}
#define FEW(t, r, R, T) few_tile(y, xp, ldx, w, t, r, k0, kk, R, T, save ? save + 8 * g++ : NULL)
	for (int p = r0; p < r1; p += panel) {
		const int pe = FR_MIN(p + panel, r1);
		for (int k0 = 0; k0 < cols; k0 += kc) {
			const int kk = FR_MIN(kc, cols - k0);
			int r = p, g = 0;
			for (; r + 4 <= pe; r += 4) {
				int t = 0;
				for (; t + 2 <= n; t += 2)
					FEW(t, r, 4, 2);
				if (t < n)
					FEW(t, r, 4, 1);
			}
			for (; r < pe; r++) {
				int t = 0;
				for (; t + 2 <= n; t += 2)
					FEW(t, r, 1, 2);
				if (t < n)
					FEW(t, r, 1, 1);
			}
		}
	}
#undef FEW
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

/* wp[k][16] = W[r + i][k0 + k] as fp32 for i < nr, 0 for the rows past nr. */
INLINE void pack_panel(float *wp, const struct kn_mat *w, int r, int nr, int k0, int kc,
		       const enum kn_dtype dt)
{
	const size_t cols = (size_t)w->cols;
	int k = 0;
	for (; k + 8 <= kc; k += 8) {
		for (int h = 0; h < 2; h++) {
			__m256 m[8];
			for (int i = 0; i < 8; i++) {
				int row = h * 8 + i;
				m[i] = row < nr ? load_w8(w->data, (size_t)(r + row) * cols + k0 + k, dt)
						: _mm256_setzero_ps();
			}
			transpose8(m);
			for (int c = 0; c < 8; c++)
				_mm256_store_ps(wp + (size_t)(k + c) * 16 + h * 8, m[c]);
		}
	}
	for (; k < kc; k++) {
		for (int i = 0; i < 16; i++) {
			float v = 0.0f;
			if (i < nr) {
				size_t o = (size_t)(r + i) * cols + k0 + k;
				const uint16_t *h = w->data;
				v = dt == KN_DTYPE_F32	 ? ((const float *)w->data)[o]
				    : dt == KN_DTYPE_F16 ? kn_f16_to_f32(h[o])
							 : kn_bf16_to_f32(h[o]);
			}
			wp[(size_t)k * 16 + i] = v;
		}
	}
}

/* y[j][0..nr) (+)= sum_k x[j][k] * wp[k][0..nr) for j < M tokens; sequential in k. */
INLINE void gemm_tile(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int kc,
		      int nr, bool first, const int M)
{
	__m256 acc[2 * MT];
	__m256i m0 = tail_mask(FR_MIN(nr, 8)), m1 = tail_mask(FR_MAX(nr - 8, 0));

	UNROLL for (int j = 0; j < M; j++) {
		if (first) {
			acc[2 * j] = _mm256_setzero_ps();
			acc[2 * j + 1] = _mm256_setzero_ps();
		} else if (nr == 16) {
			acc[2 * j] = _mm256_loadu_ps(y + j * ldy);
			acc[2 * j + 1] = _mm256_loadu_ps(y + j * ldy + 8);
		} else {
			acc[2 * j] = _mm256_maskload_ps(y + j * ldy, m0);
			acc[2 * j + 1] = _mm256_maskload_ps(y + j * ldy + 8, m1);
		}
	}
	for (int k = 0; k < kc; k++) {
		__m256 w0 = _mm256_load_ps(wp + (size_t)k * 16);
		__m256 w1 = _mm256_load_ps(wp + (size_t)k * 16 + 8);
		UNROLL for (int j = 0; j < M; j++) {
			__m256 b = _mm256_broadcast_ss(x + j * ldx + k);
			acc[2 * j] = _mm256_fmadd_ps(b, w0, acc[2 * j]);
			acc[2 * j + 1] = _mm256_fmadd_ps(b, w1, acc[2 * j + 1]);
		}
	}
	UNROLL for (int j = 0; j < M; j++) {
		if (nr == 16) {
			_mm256_storeu_ps(y + j * ldy, acc[2 * j]);
			_mm256_storeu_ps(y + j * ldy + 8, acc[2 * j + 1]);
		} else {
			_mm256_maskstore_ps(y + j * ldy, m0, acc[2 * j]);
			_mm256_maskstore_ps(y + j * ldy + 8, m1, acc[2 * j + 1]);
		}
	}
}

static void gemm_tiles(float *y, size_t ldy, const float *x, size_t ldx, const float *wp, int kc,
		       int nr, bool first, int n)
{
	int t = 0;
	for (; t + MT <= n; t += MT)
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, MT);
	switch (n - t) {
	case 5:
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, 5);
		break;
	case 4:
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, 4);
		break;
	case 3:
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, 3);
		break;
	case 2:
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, 2);
		break;
	case 1:
		gemm_tile(y + t * ldy, ldy, x + t * ldx, ldx, wp, kc, nr, first, 1);
		break;
	}
}

INLINE void matmul_gemm(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1,
			const enum kn_dtype dt)
{
	_Alignas(64) float wp[KC * 16];
	for (int r = r0; r < r1; r += 16) {
		int nr = FR_MIN(16, r1 - r);
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
	size_t xp_bytes = (size_t)n * FR_DIV_ROUND_UP(w->cols, 16) * 16 * sizeof(float);
	if (n >= GEMM_MIN_N && n <= FEW_MAX_N && xp_bytes <= FEW_MAX_XP) {
		_Alignas(64) float xp[FEW_MAX_XP / sizeof(float)];
		matmul_few_bf16(y, x, w, n, r0, r1, xp, NULL);
		return;
	}
	if (n >= GEMM_MIN_N && n <= FEW_MAX_N) { /* long rows: chunks, on the heap */
		float *xp = aligned_alloc(64, FR_DIV_ROUND_UP(xp_bytes, 64) * 64);
		__m256 *save = aligned_alloc(64, FEW_SLOTS * 8 * sizeof(__m256));
		if (xp && save)
			matmul_few_bf16(y, x, w, n, r0, r1, xp, save);
		free(xp), free(save);
		if (xp && save)
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

static void avx2_matmul(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
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

/* ---- vector ops ---------------------------------------------------------------------------- */

static float avx2_dot(const float *x, const float *y, int n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) {
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
		a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
	}
	for (; i < n; i += 8) {
		__m256i m = tail_mask(FR_MIN(n - i, 8));
		a0 = _mm256_fmadd_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m), a0);
	}
	return hsum(_mm256_add_ps(a0, a1));
}

static void avx2_axpy(float *y, float a, const float *x, int n)
{
	__m256 va = _mm256_set1_ps(a);
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	if (i < n) {
		__m256i m = tail_mask(n - i);
		__m256 v = _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
		_mm256_maskstore_ps(y + i, m, v);
	}
}

static void avx2_rmsnorm(float *y, const float *x, const float *g, int dim, float eps)
{
	float inv = 1.0f / sqrtf(avx2_dot(x, x, dim) / (float)dim + eps);
	__m256 vi = _mm256_set1_ps(inv);
	int i = 0;
	for (; i + 8 <= dim; i += 8) {
		__m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vi);
		_mm256_storeu_ps(y + i, _mm256_mul_ps(v, _mm256_loadu_ps(g + i)));
	}
	if (i < dim) {
		__m256i m = tail_mask(dim - i);
		__m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + i, m), vi);
		_mm256_maskstore_ps(y + i, m, _mm256_mul_ps(v, _mm256_maskload_ps(g + i, m)));
	}
}

INLINE __m256 silu_mul(__m256 g, __m256 u)
{
	__m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
	return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

static void avx2_swiglu(float *out, const float *gate, const float *up, int n)
{
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, silu_mul(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
	if (i < n) {
		__m256i m = tail_mask(n - i);
		__m256 v = silu_mul(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m));
		_mm256_maskstore_ps(out + i, m, v);
	}
}

static void avx2_softmax(float *x, int n)
{
	__m256 vmax = _mm256_set1_ps(-INFINITY), vsum = _mm256_setzero_ps();
	int i = 0;
	for (; i + 8 <= n; i += 8)
		vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
	if (i < n) {
		__m256i m = tail_mask(n - i);
		__m256 v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(x + i, m),
					    _mm256_castsi256_ps(m));
		vmax = _mm256_max_ps(vmax, v);
	}
	__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
	m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
	m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
	__m256 mx = _mm256_set1_ps(_mm_cvtss_f32(m4));

	for (i = 0; i + 8 <= n; i += 8) {
		__m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
		_mm256_storeu_ps(x + i, e);
		vsum = _mm256_add_ps(vsum, e);
	}
	if (i < n) {
		__m256i m = tail_mask(n - i);
		__m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), mx));
		e = _mm256_and_ps(e, _mm256_castsi256_ps(m));
		_mm256_maskstore_ps(x + i, m, e);
		vsum = _mm256_add_ps(vsum, e);
	}
	__m256 vi = _mm256_set1_ps(1.0f / hsum(vsum));
	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
	if (i < n) {
		__m256i m = tail_mask(n - i);
		_mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), vi));
	}
}

/* The first index of the largest value, as kn_scalar_argmax: each lane keeps the first index
 * of its own largest (strictly greater replaces, NaN never does), then the smallest index
 * among the lanes that hold the overall largest. x[0] NaN: 0, as the scalar loop. */
static int avx2_argmax(const float *x, int n)
{
	if (isnan(x[0]))
		return 0;
	__m256 m = _mm256_set1_ps(x[0]);
	__m256i best = _mm256_setzero_si256(), idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	const __m256i step = _mm256_set1_epi32(8);
	int i = 0;

	for (; i < n; i += 8) {
		__m256 v;
		if (i + 8 <= n) {
			v = _mm256_loadu_ps(x + i);
		} else { /* past the end the lanes hold m itself, which is never greater */
			__m256i tm = tail_mask(n - i);
			v = _mm256_blendv_ps(m, _mm256_maskload_ps(x + i, tm), _mm256_castsi256_ps(tm));
		}
		__m256 gt = _mm256_cmp_ps(v, m, _CMP_GT_OQ);
		m = _mm256_blendv_ps(m, v, gt);
		best = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(best),
							    _mm256_castsi256_ps(idx), gt));
		idx = _mm256_add_epi32(idx, step);
	}
	_Alignas(32) float mv[8];
	_Alignas(32) int32_t bv[8];
	_mm256_store_ps(mv, m);
	_mm256_store_si256((__m256i *)bv, best);
	float top = mv[0];
	for (int l = 1; l < 8; l++)
		top = mv[l] > top ? mv[l] : top;
	int ret = n;
	for (int l = 0; l < 8; l++)
		if (mv[l] == top && bv[l] < ret)
			ret = bv[l];
	return ret;
}

static void avx2_attend(float *out, const float *q, const float *k, const float *v,
		       const int32_t *blocks, int block_size, int n_ctx, int head_dim,
		       size_t stride, float scale, float *scratch)
{
	size_t bstride = (size_t)block_size * stride;

	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *kb = k + (size_t)blocks[b] * bstride;
		float *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			sb[i] = avx2_dot(q, kb + (size_t)i * stride, head_dim) * scale;
	}
	avx2_softmax(scratch, n_ctx);
	memset(out, 0, (size_t)head_dim * sizeof(float));
	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *vb = v + (size_t)blocks[b] * bstride, *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			avx2_axpy(out, sb[i], vb + (size_t)i * stride, head_dim);
	}
}

/* s[i] = avx2_dot(q + i * qstride, kr, n) * scale for i < nq (<= KN_ATTEND_MAX_Q): the same
 * accumulators and order per query, kr loaded once for all of them. */
INLINE void dot_multi(float *s, size_t sstride, const float *q, size_t qstride, int nq,
		      const float *kr, int n, float scale)
{
	__m256 a0[KN_ATTEND_MAX_Q], a1[KN_ATTEND_MAX_Q];
	int i = 0;

	for (int r = 0; r < nq; r++)
		a0[r] = a1[r] = _mm256_setzero_ps();
	for (; i + 16 <= n; i += 16) {
		__m256 k0 = _mm256_loadu_ps(kr + i), k1 = _mm256_loadu_ps(kr + i + 8);
		for (int r = 0; r < nq; r++) {
			const float *qr = q + (size_t)r * qstride;
			a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), k0, a0[r]);
			a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i + 8), k1, a1[r]);
		}
	}
	for (; i < n; i += 8) {
		__m256i m = tail_mask(FR_MIN(n - i, 8));
		__m256 k0 = _mm256_maskload_ps(kr + i, m);
		for (int r = 0; r < nq; r++)
			a0[r] = _mm256_fmadd_ps(_mm256_maskload_ps(q + (size_t)r * qstride + i, m), k0,
						a0[r]);
	}
	for (int r = 0; r < nq; r++)
		s[(size_t)r * sstride] = hsum(_mm256_add_ps(a0[r], a1[r])) * scale;
}

/* avx2_attend for several queries: scores of each key for every query that sees it, one
 * softmax per query, then the weighted values 16 lanes at a time for all queries, in
 * position order per lane (avx2_axpy's order: the same bits). */
static void avx2_attend_multi(float *out, const float *q, size_t qstride, int nq,
			      const float *k, const float *v, const int32_t *blocks,
			      int block_size, const int *n_ctx, int head_dim, size_t stride,
			      float scale, float *scratch)
{
	size_t bstride = (size_t)block_size * stride, ls = (size_t)n_ctx[nq - 1];
	int last = n_ctx[nq - 1];

	/* Query r sees positions [0, n_ctx[r]); the queries from `first` on see position j. */
	for (int b = 0, j0 = 0, first = 0; j0 < last; b++, j0 += block_size) {
		const float *kb = k + (size_t)blocks[b] * bstride;
		for (int i = 0, m = FR_MIN(block_size, last - j0); i < m; i++) {
			while (n_ctx[first] <= j0 + i)
				first++;
			dot_multi(scratch + (size_t)first * ls + j0 + i, ls,
				  q + (size_t)first * qstride, qstride, nq - first,
				  kb + (size_t)i * stride, head_dim, scale);
		}
	}
	for (int r = 0; r < nq; r++)
		avx2_softmax(scratch + (size_t)r * ls, n_ctx[r]);
	for (int c = 0; c < head_dim; c += 16) {
		__m256i m0 = tail_mask(FR_MIN(head_dim - c, 8));
		__m256i m1 = tail_mask(FR_MAX(FR_MIN(head_dim - c - 8, 8), 0));
		__m256 acc0[KN_ATTEND_MAX_Q], acc1[KN_ATTEND_MAX_Q];
		for (int r = 0; r < nq; r++)
			acc0[r] = acc1[r] = _mm256_setzero_ps();
		for (int b = 0, j0 = 0, first = 0; j0 < last; b++, j0 += block_size) {
			const float *vb = v + (size_t)blocks[b] * bstride + c;
			for (int i = 0, m = FR_MIN(block_size, last - j0); i < m; i++) {
				const float *vr = vb + (size_t)i * stride;
				__m256 v0 = _mm256_maskload_ps(vr, m0), v1 = _mm256_maskload_ps(vr + 8, m1);
				while (n_ctx[first] <= j0 + i)
					first++;
				for (int r = first; r < nq; r++) {
					__m256 p = _mm256_set1_ps(scratch[(size_t)r * ls + j0 + i]);
					acc0[r] = _mm256_fmadd_ps(p, v0, acc0[r]);
					acc1[r] = _mm256_fmadd_ps(p, v1, acc1[r]);
				}
			}
		}
		for (int r = 0; r < nq; r++) {
			_mm256_maskstore_ps(out + (size_t)r * qstride + c, m0, acc0[r]);
			_mm256_maskstore_ps(out + (size_t)r * qstride + c + 8, m1, acc1[r]);
		}
	}
}

const struct kn_ops kn_ops_avx2 = {
	.name = "avx2",
	.matmul = avx2_matmul,
	.rmsnorm = avx2_rmsnorm,
	.swiglu = avx2_swiglu,
	.axpy = avx2_axpy,
	.dot = avx2_dot,
	.softmax = avx2_softmax,
	.argmax = avx2_argmax,
	.attend = avx2_attend,
	.attend_multi = avx2_attend_multi,
};
