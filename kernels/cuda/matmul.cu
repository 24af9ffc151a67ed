/* SPDX-License-Identifier: Apache-2.0 */
/*
 * matmul.cu - one dense bf16 product through cuBLAS (fp32 accumulation and output), the
 * layout of gemm.cu: column-major C (rows x n) = A^T B with A the weights as (cols x rows).
 * Reference: kn_matmul() on the same bf16 inputs.
 */
#include "kernels/cuda/cuda-internal.h"

extern "C" int kn_cuda_matmul_bf16(struct kn_cuda *c, float *y, const uint16_t *x,
				   const uint16_t *w, int n, int rows, int cols)
{
	const float one = 1.0f, zero = 0.0f;

	kn_cuda__enter(c);
	if (n < 0 || rows <= 0 || cols <= 0)
		return kn_cuda__invalid(c, "matmul: bad shape");
	if (!n)
		return 0;
	return kn_cuda__blas_status(c, cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols,
						    &one, w, CUDA_R_16BF, cols, x, CUDA_R_16BF,
						    cols, &zero, y, CUDA_R_32F, rows,
						    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
				    "cublasGemmEx");
}
