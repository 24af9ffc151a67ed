/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gate.cu - the router's choice for each token, what kn_gate() does: scores (softmax over the
 * experts, or sigmoid), a selection score (plus the bias, if any), skip the mask_top best,
 * keep the next k (ties to the lower id), weights renormalised and scaled as asked. One
 * block per token; scores and selection scores in shared memory.
 */
#include "kernels/cuda/block-reduce.cuh"
#include "kernels/cuda/cuda-internal.h"

static __global__ void gate_kernel(const float *logits, int ne, int softmax, int k, int mask_top,
				   int norm, float scaling, const float *bias, int32_t *ret_idx,
				   float *ret_w)
{
	extern __shared__ float sh[]; /* score[ne] | sel[ne] */
	__shared__ float part[32], pv[32];
	__shared__ int pi[32];
	float *score = sh, *sel = sh + ne;
	const float *lg = logits + (size_t)blockIdx.x * ne;

	if (softmax) {
		float m = -INFINITY, s = 0;
		for (int e = threadIdx.x; e < ne; e += blockDim.x)
			m = fmaxf(m, lg[e]);
		m = kn_block_reduce<true>(m, part);
		for (int e = threadIdx.x; e < ne; e += blockDim.x) {
			score[e] = expf(lg[e] - m);
			s += score[e];
		}
		float inv = 1.0f / kn_block_reduce<false>(s, part);
		for (int e = threadIdx.x; e < ne; e += blockDim.x)
			score[e] *= inv;
	} else {
		for (int e = threadIdx.x; e < ne; e += blockDim.x)
			score[e] = 1.0f / (1.0f + expf(-lg[e]));
	}
	for (int e = threadIdx.x; e < ne; e += blockDim.x)
		sel[e] = bias ? score[e] + bias[e] : score[e];
	__syncthreads();
	float sum = 0;
	for (int r = 0; r < mask_top + k; r++) {
		float bv = -INFINITY;
		int bi = -1;
		for (int e = threadIdx.x; e < ne; e += blockDim.x)
			if (sel[e] != -INFINITY && (bi < 0 || sel[e] > bv)) {
				bv = sel[e];
				bi = e;
			}
		kn_block_argmax(bv, bi, pv, pi, &bv, &bi);
		if (threadIdx.x == 0) {
			if (bi >= 0)
				sel[bi] = -INFINITY;
			if (r >= mask_top) {
				ret_idx[(size_t)blockIdx.x * k + r - mask_top] = bi;
				ret_w[(size_t)blockIdx.x * k + r - mask_top] = bi >= 0 ? score[bi] : 0;
				sum += bi >= 0 ? score[bi] : 0;
			}
		}
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		float mul = scaling;
		if (norm)
			mul /= sum + 1e-20f;
		if (mul != 1.0f)
			for (int i = 0; i < k; i++)
				ret_w[(size_t)blockIdx.x * k + i] *= mul;
	}
}

extern "C" int kn_cuda_gate(struct kn_cuda *c, const float *logits, int n,
			    const struct kn_gate_opts *o, const float *bias, int32_t *ret_idx,
			    float *ret_w)
{
	int ne = o->n_experts;

	kn_cuda__enter(c);
	if (n < 0 || ne <= 0 || o->k <= 0 || o->mask_top < 0 || o->mask_top + o->k > ne)
		return kn_cuda__invalid(c, "gate: k + mask_top must be in [1, n_experts]");
	if ((size_t)ne * 2 * sizeof(float) > 48 * 1024)
		return kn_cuda__invalid(c, "gate: more than 6144 experts");
	if (!n)
		return 0;
	gate_kernel<<<n, 256, (size_t)ne * 2 * sizeof(float), c->stream>>>(
		logits, ne, o->scoring == KN_SCORING_SOFTMAX, o->k, o->mask_top, o->norm_topk_prob,
		o->routed_scaling, bias, ret_idx, ret_w);
	return kn_cuda__launched(c, "gate");
}
