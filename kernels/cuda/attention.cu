/* SPDX-License-Identifier: Apache-2.0 */
/*
 * attention.cu - causal attention over a paged KV cache (vLLM's PagedAttention layout), what
 * kn_attention_paged() does: token t of one sequence, head h attends to positions
 * [0, pos[t]], position p in row p % block_size of block blocks[p / block_size] of
 * kp, vp [n_blocks][block_size][n_kv_heads][head_dim]; grouped-query heads share a KV head.
 * One block per (token, head): scores into a device scratch row, softmax, then the weighted
 * sum of V over head_dim. Decode (n = 1) and prefill (n > 1) alike; kn_cuda_attention_rows
 * takes rows of several sequences, each with its own row of a block table (what the CPU's
 * kn_team_attention does for the engine's batch).
 */
#include <errno.h>

#include "kernels/cuda/block-reduce.cuh"
#include "kernels/cuda/cuda-internal.h"

/* Token t's blocks: table + seq[t] * max_blocks (several sequences), or table itself when
 * seq is NULL (one sequence). */
static __global__ void attend_kernel(float *out, const float *q, const float *kp, const float *vp,
				     const int32_t *table, int max_blocks, const int32_t *seq,
				     int block_size, const int32_t *pos, int n_heads,
				     int n_kv_heads, int head_dim, float scale, float *scratch,
				     int max_ctx)
{
	extern __shared__ float qs[]; /* [head_dim] */
	__shared__ float part[32];
	int t = blockIdx.x / n_heads, h = blockIdx.x % n_heads, kvh = h / (n_heads / n_kv_heads);
	const int32_t *blocks = table + (seq ? (size_t)seq[t] * max_blocks : 0);
	int n_ctx = pos[t] + 1;
	size_t stride = (size_t)n_kv_heads * head_dim, bstride = (size_t)block_size * stride;
	float *s = scratch + (size_t)blockIdx.x * max_ctx, m = -INFINITY, sum = 0;
	const float *qt = q + ((size_t)t * n_heads + h) * head_dim;

	for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
		qs[d] = qt[d];
	__syncthreads();
	for (int j = threadIdx.x; j < n_ctx; j += blockDim.x) {
		const float *kr = kp + (size_t)blocks[j / block_size] * bstride +
				  (size_t)(j % block_size) * stride + (size_t)kvh * head_dim;
		float dot = 0;
		for (int d = 0; d < head_dim; d++)
			dot += qs[d] * kr[d];
		s[j] = dot * scale;
		m = fmaxf(m, s[j]);
	}
	m = kn_block_reduce<true>(m, part);
	for (int j = threadIdx.x; j < n_ctx; j += blockDim.x) {
		s[j] = expf(s[j] - m);
		sum += s[j];
	}
	float inv = 1.0f / kn_block_reduce<false>(sum, part); /* also orders s[] for all */
	float *o = out + ((size_t)t * n_heads + h) * head_dim;
	for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
		float acc = 0;
		for (int j = 0; j < n_ctx; j++)
			acc += s[j] * inv *
			       vp[(size_t)blocks[j / block_size] * bstride +
				  (size_t)(j % block_size) * stride + (size_t)kvh * head_dim + d];
		o[d] = acc;
	}
}

static int attention(struct kn_cuda *c, float *out, const float *q, const float *kp,
		     const float *vp, const int32_t *table, int max_blocks, const int32_t *seq,
		     int block_size, int n, const int32_t *pos, int n_heads, int n_kv_heads,
		     int head_dim, int max_ctx)
{
	kn_cuda__enter(c);
	if (n < 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0 ||
	    head_dim > 1024 || block_size <= 0 || max_ctx <= 0 || (seq && max_blocks <= 0))
		return kn_cuda__invalid(c, "attention: bad shape");
	if (!n)
		return 0;
	int rc = kn_cuda__reserve(c, &c->attn, (size_t)n * n_heads * max_ctx * sizeof(float),
				  "cudaMalloc (attention)");
	if (rc < 0)
		return rc;
	attend_kernel<<<n * n_heads, 128, (size_t)head_dim * sizeof(float), c->stream>>>(
		out, q, kp, vp, table, max_blocks, seq, block_size, pos, n_heads, n_kv_heads,
		head_dim, 1.0f / sqrtf((float)head_dim), (float *)c->attn.p, max_ctx);
	return kn_cuda__launched(c, "attention");
}

extern "C" int kn_cuda_attention_paged(struct kn_cuda *c, float *out, const float *q,
				       const float *kp, const float *vp, const int32_t *blocks,
				       int block_size, int n, const int32_t *pos, int n_heads,
				       int n_kv_heads, int head_dim, int max_ctx)
{
	return attention(c, out, q, kp, vp, blocks, 0, NULL, block_size, n, pos, n_heads,
			 n_kv_heads, head_dim, max_ctx);
}

extern "C" int kn_cuda_attention_rows(struct kn_cuda *c, float *out, const float *q,
				      const float *kp, const float *vp, const int32_t *table,
				      int max_blocks, const int32_t *seq, int block_size, int n,
				      const int32_t *pos, int n_heads, int n_kv_heads, int head_dim,
				      int max_ctx)
{
	if (!seq)
		return kn_cuda__invalid(c, "attention_rows: no sequence ids");
	return attention(c, out, q, kp, vp, table, max_blocks, seq, block_size, n, pos, n_heads,
			 n_kv_heads, head_dim, max_ctx);
}
