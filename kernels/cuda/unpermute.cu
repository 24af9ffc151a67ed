/* SPDX-License-Identifier: Apache-2.0 */
/*
 * unpermute.cu - each token's weighted sum of its experts' outputs, in its pairs' order (no
 * atomics, so the result does not depend on scheduling): out[t] = sum_p weight[p] *
 * part[row[p]]. One block per token. The CPU worker's equivalent is the axpy loop of
 * moe_compute().
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void unpermute_kernel(float *out, const float *part, const int32_t *pair_off,
					const int32_t *row, const float *weight, int dim)
{
	int a = pair_off[blockIdx.x], b = pair_off[blockIdx.x + 1];
	float *o = out + (size_t)blockIdx.x * dim;

	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		float acc = 0;
		for (int p = a; p < b; p++)
			acc += weight[p] * part[(size_t)row[p] * dim + i];
		o[i] = acc;
	}
}

extern "C" int kn_cuda_unpermute(struct kn_cuda *c, float *out, const float *part,
				 const int32_t *pair_off, const int32_t *row, const float *weight,
				 int n_tok, int dim)
{
	kn_cuda__enter(c);
	if (n_tok < 0 || dim <= 0)
		return kn_cuda__invalid(c, "unpermute: n_tok < 0 or dim <= 0");
	if (!n_tok)
		return 0;
	unpermute_kernel<<<n_tok, 256, 0, c->stream>>>(out, part, pair_off, row, weight, dim);
	return kn_cuda__launched(c, "unpermute");
}
