/* SPDX-License-Identifier: Apache-2.0 */
/*
 * block-reduce.cuh - sums and maxima over a block of up to 1024 threads (warp shuffles, then
 * one warp over the warps' results); every thread gets the result. `part` is __shared__
 * float[32] of the caller's, free again when this returns.
 */
#ifndef FERRY_KN_CUDA_BLOCK_REDUCE_CUH
#define FERRY_KN_CUDA_BLOCK_REDUCE_CUH

template <bool MAX>
static __device__ __forceinline__ float kn_block_reduce(float v, float *part)
{
	for (int o = 16; o > 0; o >>= 1) {
		float x = __shfl_xor_sync(0xffffffffu, v, o);
		v = MAX ? fmaxf(v, x) : v + x;
	}
	__syncthreads(); /* part may still be read by an earlier reduction */
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x >> 5] = v;
	__syncthreads();
	if (threadIdx.x < 32) {
		float id = MAX ? -INFINITY : 0.0f;
		v = threadIdx.x < ((blockDim.x + 31) >> 5) ? part[threadIdx.x] : id;
		for (int o = 16; o > 0; o >>= 1) {
			float x = __shfl_xor_sync(0xffffffffu, v, o);
			v = MAX ? fmaxf(v, x) : v + x;
		}
		if (threadIdx.x == 0)
			part[0] = v;
	}
	__syncthreads();
	return part[0];
}

#endif /* FERRY_KN_CUDA_BLOCK_REDUCE_CUH */
