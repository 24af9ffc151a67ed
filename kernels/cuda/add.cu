/* SPDX-License-Identifier: Apache-2.0 */
/*
 * add.cu - y[i] += x[i]: the residual connections around attention and the FFNs (the CPU
 * engine's axpy with a = 1).
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void add_kernel(float *y, const float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] += x[i];
}

extern "C" int kn_cuda_add(struct kn_cuda *c, float *y, const float *x, size_t n)
{
	kn_cuda__enter(c);
	if (!n)
		return 0;
	add_kernel<<<kn_cuda__blocks(n), 256, 0, c->stream>>>(y, x, n);
	return kn_cuda__launched(c, "add");
}
