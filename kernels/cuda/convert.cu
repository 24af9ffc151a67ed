/* SPDX-License-Identifier: Apache-2.0 */
/*
 * convert.cu - f32 to bf16, round to nearest even (reference: kn_f32_to_bf16()), and back
 * (exact); and the flush that makes a NIC's writes into device memory visible to kernels.
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

static __global__ void bf16_to_f32_kernel(float *dst, const uint16_t *src, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		dst[i] = kn_cuda__widen(src[i]);
}

extern "C" int kn_cuda_bf16_to_f32(struct kn_cuda *c, float *dst, const uint16_t *src, size_t n)
{
	kn_cuda__enter(c);
	if (!n)
		return 0;
	bf16_to_f32_kernel<<<kn_cuda__blocks(n), 256, 0, c->stream>>>(dst, src, n);
	return kn_cuda__launched(c, "bf16_to_f32");
}

extern "C" int kn_cuda_flush_rdma_writes(struct kn_cuda *c)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaDeviceFlushGPUDirectRDMAWrites(
					  cudaFlushGPUDirectRDMAWritesTargetCurrentDevice,
					  cudaFlushGPUDirectRDMAWritesToOwner),
			       "cudaDeviceFlushGPUDirectRDMAWrites");
}
