/* SPDX-License-Identifier: Apache-2.0 */
/*
 * swiglu.cu - out[i] = silu(gate[i]) * up[i], in f32 or rounded to bf16 for the GEMM that
 * follows (the expert's down projection). Reference: kn_swiglu().
 */
#include "kernels/cuda/cuda-internal.h"

static __device__ __forceinline__ float swiglu1(float g, float u)
{
	return g / (1.0f + expf(-g)) * u;
}

static __global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		out[i] = swiglu1(gate[i], up[i]);
}

static __global__ void swiglu_bf16_kernel(uint16_t *out, const float *gate, const float *up,
					  size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		out[i] = kn_cuda__to_bf16(swiglu1(gate[i], up[i]));
}

extern "C" int kn_cuda_swiglu(struct kn_cuda *c, float *out, const float *gate, const float *up,
			      size_t n)
{
	kn_cuda__enter(c);
	if (!n)
		return 0;
	swiglu_kernel<<<kn_cuda__blocks(n), 256, 0, c->stream>>>(out, gate, up, n);
	return kn_cuda__launched(c, "swiglu");
}

extern "C" int kn_cuda_swiglu_bf16(struct kn_cuda *c, uint16_t *out, const float *gate,
				   const float *up, size_t n)
{
	kn_cuda__enter(c);
	if (!n)
		return 0;
	swiglu_bf16_kernel<<<kn_cuda__blocks(n), 256, 0, c->stream>>>(out, gate, up, n);
	return kn_cuda__launched(c, "swiglu_bf16");
}
