/* SPDX-License-Identifier: Apache-2.0 */
/*
 * convert.cu - f32 to bf16, round to nearest even. Reference: kn_f32_to_bf16().
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		dst[i] = kn_cuda__to_bf16(src[i]);
}

extern "C" int kn_cuda_f32_to_bf16(struct kn_cuda *c, uint16_t *dst, const float *src, size_t n)
{
	kn_cuda__enter(c);
	if (!n)
		return 0;
	f32_to_bf16_kernel<<<kn_cuda__blocks(n), 256, 0, c->stream>>>(dst, src, n);
	return kn_cuda__launched(c, "f32_to_bf16");
}
