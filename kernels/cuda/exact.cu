/* SPDX-License-Identifier: Apache-2.0 */
/*
 * exact.cu - products in the exact precision: f32 activations times bf16 weights widened
 * exactly, fp32 FMAs on the CUDA cores (no tensor cores, no rounding of the activations),
 * which is what kn_matmul() computes in KN_PRECISION_EXACT, up to the order of the sums.
 * With [worker] or [engine] precision = exact the GPU path runs on these, for checking it
 * against the golden references at 1e-4; the routers always do (a top-k must not flip on
 * a rounding). Several times slower than the tensor cores at large batches.
 *
 * One warp per weight row and tile of TOK tokens: the lanes stride over the columns, each
 * widened weight feeds the TOK tokens' running sums, then a warp reduction per token.
 */
#include "kernels/cuda/cuda-internal.h"

#define TOK 8   /* tokens per warp */
#define WARPS 8 /* weight rows per block */

template <typename W>
static __global__ void matmul_f32_kernel(float *y, const float *x, const W *w, int n, int rows,
					 int cols)
{
	int r = (int)blockIdx.x * WARPS + (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
	int t0 = (int)blockIdx.y * TOK, nt = min(TOK, n - t0);
	float acc[TOK];

	if (r >= rows) /* the whole warp: r is the warp's */
		return;
	const W *wr = w + (size_t)r * cols;
	const float *xt = x + (size_t)t0 * cols;
#pragma unroll
	for (int j = 0; j < TOK; j++)
		acc[j] = 0.0f;
	for (int k = lane; k < cols; k += 32) {
		float wv = kn_cuda__widen(wr[k]);
#pragma unroll
		for (int j = 0; j < TOK; j++)
			if (j < nt)
				acc[j] = fmaf(xt[(size_t)j * cols + k], wv, acc[j]);
	}
#pragma unroll
	for (int j = 0; j < TOK; j++) {
		float v = acc[j];
		for (int o = 16; o > 0; o >>= 1)
			v += __shfl_xor_sync(0xffffffffu, v, o);
		if (lane == 0 && j < nt)
			y[(size_t)(t0 + j) * rows + r] = v;
	}
}

static int launch(struct kn_cuda *c, float *y, const float *x, const void *w,
		  enum kn_dtype wdt, int n, int rows, int cols)
{
	dim3 grid((unsigned)((rows + WARPS - 1) / WARPS), (unsigned)((n + TOK - 1) / TOK));
	if (grid.y > 65535)
		return kn_cuda__invalid(c, "matmul_f32: more than 524280 tokens");
	if (wdt == KN_DTYPE_BF16)
		matmul_f32_kernel<<<grid, 32 * WARPS, 0, c->stream>>>(
			y, x, (const uint16_t *)w, n, rows, cols);
	else
		matmul_f32_kernel<<<grid, 32 * WARPS, 0, c->stream>>>(y, x, (const float *)w, n,
								       rows, cols);
	return kn_cuda__launched(c, "matmul_f32");
}

extern "C" int kn_cuda_matmul_f32(struct kn_cuda *c, float *y, const float *x, const void *w,
				  enum kn_dtype wdt, int n, int rows, int cols)
{
	kn_cuda__enter(c);
	if (n < 0 || rows <= 0 || cols <= 0 || (wdt != KN_DTYPE_BF16 && wdt != KN_DTYPE_F32))
		return kn_cuda__invalid(c, "matmul_f32: bad shape or weight dtype");
	return n ? launch(c, y, x, w, wdt, n, rows, cols) : 0;
}

extern "C" int kn_cuda_gemm_f32(struct kn_cuda *c, enum kn_dtype wdt, int n, const int *m,
				int rows, int cols, const void *const *w, const float *const *x,
				float *const *y)
{
	int rc = 0;

	kn_cuda__enter(c);
	if (n < 0 || rows <= 0 || cols <= 0 || (wdt != KN_DTYPE_BF16 && wdt != KN_DTYPE_F32))
		return kn_cuda__invalid(c, "gemm_f32: bad shape or weight dtype");
	for (int e = 0; e < n; e++)
		if (m[e] < 0)
			return kn_cuda__invalid(c, "gemm_f32: negative token count");
	for (int e = 0; e < n && rc == 0; e++)
		if (m[e])
			rc = launch(c, y[e], x[e], w[e], wdt, m[e], rows, cols);
	return rc;
}
