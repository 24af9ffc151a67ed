/* SPDX-License-Identifier: Apache-2.0 */
/*
 * argmax.cu - greedy sampling on the device: the index of each row's largest value (the
 * first of equal maxima, as kn_argmax() gives for rows without NaN), so that a decode step
 * copies back n indices instead of n rows of logits. One block per row.
 */
#include "kernels/cuda/block-reduce.cuh"
#include "kernels/cuda/cuda-internal.h"

static __global__ void argmax_kernel(int32_t *out, const float *x, int dim)
{
	__shared__ float pv[32];
	__shared__ int pi[32];
	const float *r = x + (size_t)blockIdx.x * dim;
	float bv = -INFINITY;
	int bi = -1;

	/* each thread's best in index order: strictly larger wins, so the first stays */
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
		if (bi < 0 || r[j] > bv) {
			bv = r[j];
			bi = j;
		}
	kn_block_argmax(bv, bi, pv, pi, &bv, &bi);
	if (threadIdx.x == 0)
		out[blockIdx.x] = bi;
}

extern "C" int kn_cuda_argmax(struct kn_cuda *c, int32_t *out, const float *x, int n, int dim)
{
	kn_cuda__enter(c);
	if (n < 0 || dim <= 0)
		return kn_cuda__invalid(c, "argmax: bad shape");
	if (!n)
		return 0;
	argmax_kernel<<<n, 256, 0, c->stream>>>(out, x, dim);
	return kn_cuda__launched(c, "argmax");
}
