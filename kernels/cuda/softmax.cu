/* SPDX-License-Identifier: Apache-2.0 */
/*
 * softmax.cu - in place over each row of x[n][dim], max-subtracted, fp32: one block per row.
 * Reference: the kn_ops softmax (kn_scalar_softmax).
 */
#include "kernels/cuda/block-reduce.cuh"
#include "kernels/cuda/cuda-internal.h"

static __global__ void softmax_kernel(float *x, int dim)
{
	__shared__ float part[32];
	float *r = x + (size_t)blockIdx.x * dim, m = -INFINITY, s = 0;

	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		m = fmaxf(m, r[i]);
	m = kn_block_reduce<true>(m, part);
	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		float e = expf(r[i] - m);
		r[i] = e;
		s += e;
	}
	float inv = 1.0f / kn_block_reduce<false>(s, part);
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		r[i] *= inv;
}

extern "C" int kn_cuda_softmax(struct kn_cuda *c, float *x, int n, int dim)
{
	kn_cuda__enter(c);
	if (n < 0 || dim <= 0)
		return kn_cuda__invalid(c, "softmax: n < 0 or dim <= 0");
	if (!n)
		return 0;
	softmax_kernel<<<n, 256, 0, c->stream>>>(x, dim);
	return kn_cuda__launched(c, "softmax");
}
