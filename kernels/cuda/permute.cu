/* SPDX-License-Identifier: Apache-2.0 */
/*
 * permute.cu - gathers each expert's tokens into contiguous rows (and rounds them to bf16 for
 * the grouped GEMM, or keeps them f32 for the exact products): dst[row[p]] = src[tok[p]]. One
 * block per pair; the CPU worker's equivalent is the memcpy of moe_compute() (moe/slots.c).
 */
#include "kernels/cuda/cuda-internal.h"

template <typename T>
static __global__ void permute_kernel(T *dst, const float *src, const int32_t *tok,
				      const int32_t *row, int dim)
{
	const float *s = src + (size_t)tok[blockIdx.x] * dim;
	T *d = dst + (size_t)row[blockIdx.x] * dim;

	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		if constexpr (sizeof(T) == sizeof(float))
			d[i] = s[i];
		else
			d[i] = kn_cuda__to_bf16(s[i]);
	}
}

template <typename T>
static int permute(struct kn_cuda *c, T *dst, const float *src, const int32_t *tok,
		   const int32_t *row, int n_pairs, int dim)
{
	kn_cuda__enter(c);
	if (n_pairs < 0 || dim <= 0)
		return kn_cuda__invalid(c, "permute: n_pairs < 0 or dim <= 0");
	if (!n_pairs)
		return 0;
	permute_kernel<T><<<n_pairs, 256, 0, c->stream>>>(dst, src, tok, row, dim);
	return kn_cuda__launched(c, "permute");
}

extern "C" int kn_cuda_permute(struct kn_cuda *c, uint16_t *dst, const float *src,
			       const int32_t *tok, const int32_t *row, int n_pairs, int dim)
{
	return permute(c, dst, src, tok, row, n_pairs, dim);
}

extern "C" int kn_cuda_permute_f32(struct kn_cuda *c, float *dst, const float *src,
				   const int32_t *tok, const int32_t *row, int n_pairs, int dim)
{
	return permute(c, dst, src, tok, row, n_pairs, dim);
}
