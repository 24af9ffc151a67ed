/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rope.cu - rotary position embedding in place, HF rotate_half layout: within each head, dim
 * j pairs with j + hd/2 at angle pos * theta^(-2j/hd), the angle in double as kn_rope() takes
 * it. x: [n][n_heads][head_dim]; one block per token, threads over (head, j).
 */
#include "kernels/cuda/cuda-internal.h"

static __global__ void rope_kernel(float *x, int n_heads, int head_dim, const int32_t *pos,
				   double theta)
{
	int half = head_dim / 2;
	float *xt = x + (size_t)blockIdx.x * n_heads * head_dim;
	double p = (double)pos[blockIdx.x];

	for (int i = threadIdx.x; i < n_heads * half; i += blockDim.x) {
		int h = i / half, j = i % half;
		double a = p * pow(theta, -2.0 * j / head_dim);
		float cs = (float)cos(a), sn = (float)sin(a);
		float *v = xt + (size_t)h * head_dim;
		float x0 = v[j], x1 = v[j + half];
		v[j] = x0 * cs - x1 * sn;
		v[j + half] = x1 * cs + x0 * sn;
	}
}

extern "C" int kn_cuda_rope(struct kn_cuda *c, float *x, int n, int n_heads, int head_dim,
			    const int32_t *pos, float theta)
{
	kn_cuda__enter(c);
	if (n < 0 || n_heads <= 0 || head_dim <= 0 || head_dim % 2)
		return kn_cuda__invalid(c, "rope: bad shape (head_dim must be even)");
	if (!n)
		return 0;
	rope_kernel<<<n, 256, 0, c->stream>>>(x, n_heads, head_dim, pos, (double)theta);
	return kn_cuda__launched(c, "rope");
}
