/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemm.cu - the experts' products through cuBLAS, bf16 inputs, fp32 accumulation and output:
 * one problem per expert (cublasGemmGroupedBatchedEx, each expert its own token count) or
 * every expert padded to the largest count (cublasGemmBatchedEx). bench/gpu measures both
 * per shape. Reference: kn_matmul() on the same bf16 weights.
 *
 * Row-major y[m][rows] = x[m][cols] . W^T is, column-major, C (rows x m, ld rows) = op(A) B
 * with A the weights read as (cols x rows, ld cols) and op = transpose, B = x as (cols x m,
 * ld cols).
 */
#include <errno.h>
#include <stdlib.h>

#include "kernels/cuda/cuda-internal.h"

extern "C" const char *kn_cuda_gemm_name(enum kn_cuda_gemm g)
{
	return g == KN_CUDA_GEMM_GROUPED ? "grouped"
	       : g == KN_CUDA_GEMM_PADDED ? "padded"
	       : g == KN_CUDA_GEMM_AUTO	  ? "auto"
					  : "?";
}

extern "C" int kn_cuda_gemm_bf16(struct kn_cuda *c, enum kn_cuda_gemm how, int n, const int *m,
				 int rows, int cols, const uint16_t *const *w,
				 const uint16_t *const *x, float *const *y)
{
	int g = 0, mmax = 0, rc;
	const void **hp;
	float one = 1.0f, zero = 0.0f;

	kn_cuda__enter(c);
	if (n < 0 || rows <= 0 || cols <= 0 ||
	    (how != KN_CUDA_GEMM_GROUPED && how != KN_CUDA_GEMM_PADDED))
		return kn_cuda__invalid(c, "gemm: bad shape or method");
	for (int e = 0; e < n; e++) {
		if (m[e] < 0)
			return kn_cuda__invalid(c, "gemm: negative token count");
		g += m[e] > 0;
		mmax = m[e] > mmax ? m[e] : mmax;
	}
	if (!g)
		return 0;
	/* room for g pointers in each of three device arrays (A, B, C) */
	if ((rc = kn_cuda__reserve(c, &c->ptrs, 3 * (size_t)g * sizeof(void *),
				   "cudaMalloc (GEMM pointers)")) < 0)
		return rc;
	/* host: the three pointer arrays, then (grouped) the per-group parameters */
	size_t per = 3 * sizeof(void *) + 7 * sizeof(int) + 2 * sizeof(float) +
		     2 * sizeof(cublasOperation_t);
	hp = (const void **)malloc((size_t)g * per);
	if (!hp)
		return -ENOMEM;
	const void **ha = hp, **hb = hp + g, **hc = hp + 2 * g;
	int *mi = (int *)(hp + 3 * g), *ni = mi + g, *ki = ni + g, *lda = ki + g, *ldb = lda + g,
	    *ldc = ldb + g, *gs = ldc + g;
	float *al = (float *)(gs + g), *be = al + g;
	cublasOperation_t *ta = (cublasOperation_t *)(be + g), *tb = ta + g;
	for (int e = 0, i = 0; e < n; e++) {
		if (!m[e])
			continue;
		ha[i] = w[e];
		hb[i] = x[e];
		hc[i] = y[e];
		mi[i] = rows;
		ni[i] = how == KN_CUDA_GEMM_PADDED ? mmax : m[e];
		ki[i] = cols;
		lda[i] = cols;
		ldb[i] = cols;
		ldc[i] = rows;
		gs[i] = 1;
		al[i] = one;
		be[i] = zero;
		ta[i] = CUBLAS_OP_T;
		tb[i] = CUBLAS_OP_N;
		i++;
	}
	void **dp = (void **)c->ptrs.p;
	rc = kn_cuda__status(c, cudaMemcpyAsync(dp, hp, 3 * (size_t)g * sizeof(void *),
						cudaMemcpyHostToDevice, c->stream),
			     "gemm: pointer upload");
	if (rc == 0 && how == KN_CUDA_GEMM_GROUPED)
		rc = kn_cuda__blas_status(
			c, cublasGemmGroupedBatchedEx(c->blas, ta, tb, mi, ni, ki, al,
						      (const void *const *)dp, CUDA_R_16BF, lda,
						      (const void *const *)(dp + g), CUDA_R_16BF,
						      ldb, be, dp + 2 * g, CUDA_R_32F, ldc, g, gs,
						      CUBLAS_COMPUTE_32F),
			"cublasGemmGroupedBatchedEx");
	else if (rc == 0)
		rc = kn_cuda__blas_status(
			c, cublasGemmBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, mmax, cols,
					       &one, (const void *const *)dp, CUDA_R_16BF, cols,
					       (const void *const *)(dp + g), CUDA_R_16BF, cols,
					       &zero, dp + 2 * g, CUDA_R_32F, rows, g,
					       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
			"cublasGemmBatchedEx");
	/* the pageable upload was staged before cudaMemcpyAsync returned: hp may go */
	free(hp);
	return rc;
}
