/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kvcache.cu - the new rows' keys and values into the paged cache, what the CPU engine's
 * attention block does before attending: row t of sequence seq[t] at position pos[t] goes to
 * row pos[t] % block_size of block table[seq[t] * max_blocks + pos[t] / block_size] of the
 * pools kp, vp [n_blocks][block_size][kv_dim]. One block of threads per row.
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void kv_write_kernel(float *kp, float *vp, const float *k, const float *v,
				       const int32_t *table, int max_blocks, const int32_t *seq,
				       const int32_t *pos, int block_size, int kv_dim)
{
	int t = blockIdx.x, p = pos[t];
	int32_t blk = table[(size_t)seq[t] * max_blocks + p / block_size];
	size_t dst = ((size_t)blk * block_size + p % block_size) * kv_dim;
	const float *kr = k + (size_t)t * kv_dim, *vr = v + (size_t)t * kv_dim;

	for (int d = threadIdx.x; d < kv_dim; d += blockDim.x) {
		kp[dst + d] = kr[d];
		vp[dst + d] = vr[d];
	}
}

extern "C" int kn_cuda_kv_write(struct kn_cuda *c, float *kp, float *vp, const float *k,
				const float *v, const int32_t *table, int max_blocks,
				const int32_t *seq, const int32_t *pos, int n, int block_size,
				int kv_dim)
{
	kn_cuda__enter(c);
	if (n < 0 || max_blocks <= 0 || block_size <= 0 || kv_dim <= 0)
		return kn_cuda__invalid(c, "kv_write: bad shape");
	if (!n)
		return 0;
	kv_write_kernel<<<n, 128, 0, c->stream>>>(kp, vp, k, v, table, max_blocks, seq, pos,
						  block_size, kv_dim);
	return kn_cuda__launched(c, "kv_write");
}
