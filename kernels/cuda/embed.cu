/* SPDX-License-Identifier: Apache-2.0 */
/*
 * embed.cu - out[t] = table[ids[t]] widened to f32 (the token embedding), from a bf16 table
 * or an f32 one. Ids out of range give a row of NaN rather than a read past the table (the
 * caller validates ids; this only keeps a bad one from touching other memory).
 */
#include "kernels/cuda/cuda-internal.h"

template <typename T>
static __global__ void embed_kernel(float *out, const T *table, const int32_t *ids, int vocab,
				    int dim)
{
	int id = ids[blockIdx.x];
	float *o = out + (size_t)blockIdx.x * dim;

	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		o[i] = id >= 0 && id < vocab ? kn_cuda__widen(table[(size_t)id * dim + i])
					     : __int_as_float(0x7fc00000);
}

extern "C" int kn_cuda_embed(struct kn_cuda *c, float *out, const void *table, enum kn_dtype dt,
			     int vocab, int dim, const int32_t *ids, int n)
{
	kn_cuda__enter(c);
	if (n < 0 || vocab <= 0 || dim <= 0 || (dt != KN_DTYPE_BF16 && dt != KN_DTYPE_F32))
		return kn_cuda__invalid(c, "embed: bad shape or table dtype");
	if (!n)
		return 0;
	if (dt == KN_DTYPE_BF16)
		embed_kernel<<<n, 256, 0, c->stream>>>(out, (const uint16_t *)table, ids, vocab,
						       dim);
	else
		embed_kernel<<<n, 256, 0, c->stream>>>(out, (const float *)table, ids, vocab, dim);
	return kn_cuda__launched(c, "embed");
}
