/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda-internal.h - what the .cu files of kernels/cuda share: the context, the one place
 * CUDA and cuBLAS statuses become negative errnos, and a launch check.
 */
#ifndef FERRY_KN_CUDA_INTERNAL_H
#define FERRY_KN_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/kn_cuda.h"

struct kn_cuda {
	int device;
	cudaStream_t stream;
	cublasHandle_t blas;
	char err[256];
	cudaEvent_t ev[2];     /* kn_cuda_mark / kn_cuda_elapsed_ms */
	/* kn_cuda_moe() scratch, grown on demand (device unless said) */
	void *scratch;         /* one block, see moe.cu */
	size_t scratch_bytes;
	void *ptrs;            /* pointer arrays for the batched GEMMs */
	size_t ptrs_bytes;
	int32_t *host_idx;     /* host staging of the index arrays */
	size_t host_idx_n;
	void *attn;            /* kn_cuda_attention_paged() scores [n][n_heads][max_ctx] f32 */
	size_t attn_bytes;
};

/* Converts a CUDA status once: 0, or a negative errno with the message kept in c->err. */
int kn_cuda__status(struct kn_cuda *c, cudaError_t st, const char *what);
int kn_cuda__blas_status(struct kn_cuda *c, cublasStatus_t st, const char *what);
/* After a launch: the launch error, if any. */
static inline int kn_cuda__launched(struct kn_cuda *c, const char *what)
{
	return kn_cuda__status(c, cudaGetLastError(), what);
}
/* Makes c's device the calling thread's current one (the runtime keeps one per thread):
 * every entry point that touches the device starts with it. */
static inline void kn_cuda__enter(struct kn_cuda *c)
{
	cudaSetDevice(c->device);
}

/* Sets c->err and returns -EINVAL. */
int kn_cuda__invalid(struct kn_cuda *c, const char *what);

/* Blocks of 256 threads covering n items, capped so that a grid-stride loop does the rest. */
static inline unsigned kn_cuda__blocks(size_t n)
{
	size_t b = (n + 255) / 256;
	return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

static __device__ __forceinline__ uint16_t kn_cuda__to_bf16(float f)
{
	/* round to nearest even: the same bits as kn_f32_to_bf16() for every non-NaN */
	__nv_bfloat16 h = __float2bfloat16_rn(f);
	return *reinterpret_cast<uint16_t *>(&h);
}

#endif /* FERRY_KN_CUDA_INTERNAL_H */
