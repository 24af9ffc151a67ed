/* SPDX-License-Identifier: Apache-2.0 */
/*
 * block-reduce.cuh - sums and maxima over a block of up to 1024 threads (warp shuffles, then
 * one warp over the warps' results); every thread gets the result. `part` is __shared__
 * float[32] of the caller's, free again when this returns. Also the arg-max of a block
 * (value, then the lower index), for the router's top-k and greedy sampling.
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

/* Within a warp: the better of each lane's (value, index) and its partners'; larger value,
 * then lower index; an index < 0 (nothing left) never wins. */
static __device__ __forceinline__ void kn_warp_argmax(float *v, int *i)
{
	for (int o = 16; o > 0; o >>= 1) {
		float ov = __shfl_xor_sync(0xffffffffu, *v, o);
		int oi = __shfl_xor_sync(0xffffffffu, *i, o);
		if (oi >= 0 && (*i < 0 || ov > *v || (ov == *v && oi < *i))) {
			*v = ov;
			*i = oi;
		}
	}
}

/* The best (value, index) of a block: the warps' winners, then the winner among them. */
static __device__ void kn_block_argmax(float v, int i, float *pv, int *pi, float *ret_v,
				       int *ret_i)
{
	kn_warp_argmax(&v, &i);
	__syncthreads();
	if ((threadIdx.x & 31) == 0) {
		pv[threadIdx.x >> 5] = v;
		pi[threadIdx.x >> 5] = i;
	}
	__syncthreads();
	if (threadIdx.x < 32) {
		bool in = threadIdx.x < ((blockDim.x + 31) >> 5);
		v = in ? pv[threadIdx.x] : -INFINITY;
		i = in ? pi[threadIdx.x] : -1;
		kn_warp_argmax(&v, &i);
		if (threadIdx.x == 0) {
			pv[0] = v;
			pi[0] = i;
		}
	}
	__syncthreads();
	*ret_v = pv[0];
	*ret_i = pi[0];
}

#endif /* FERRY_KN_CUDA_BLOCK_REDUCE_CUH */
