/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rmsnorm.cu - y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * g: one block of 256 threads per row,
 * the sum of squares reduced in fp32 through warp shuffles. Reference: kn_rmsnorm().
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void rmsnorm_kernel(float *y, const float *x, const float *g, int dim,
				      float eps)
{
	__shared__ float part[32];
	const float *xr = x + (size_t)blockIdx.x * dim;
	float *yr = y + (size_t)blockIdx.x * dim;
	float ss = 0;

	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		ss += xr[i] * xr[i];
	for (int o = 16; o > 0; o >>= 1)
		ss += __shfl_xor_sync(0xffffffffu, ss, o);
	if ((threadIdx.x & 31) == 0)
		part[threadIdx.x >> 5] = ss;
	__syncthreads();
	if (threadIdx.x < 32) {
		ss = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : 0.0f;
		for (int o = 16; o > 0; o >>= 1)
			ss += __shfl_xor_sync(0xffffffffu, ss, o);
		if (threadIdx.x == 0)
			part[0] = ss;
	}
	__syncthreads();
	float inv = rsqrtf(part[0] / (float)dim + eps);
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		yr[i] = xr[i] * inv * g[i];
}

extern "C" int kn_cuda_rmsnorm(struct kn_cuda *c, float *y, const float *x, const float *g,
			       int n, int dim, float eps)
{
	kn_cuda__enter(c);
	if (n < 0 || dim <= 0)
		return kn_cuda__invalid(c, "rmsnorm: n < 0 or dim <= 0");
	if (n == 0)
		return 0;
	rmsnorm_kernel<<<n, 256, 0, c->stream>>>(y, x, g, dim, eps);
	return kn_cuda__launched(c, "rmsnorm");
}
