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

#define KN_CUDA_TUNE_BUCKETS 32 /* bit lengths of a token count */

/* Device memory kept from call to call and grown on demand (kn_cuda__reserve). */
struct kn_cuda_buf {
	void *p;
	size_t bytes;
};

struct kn_cuda {
	int device;
	cudaStream_t stream;
	cublasHandle_t blas;
	char err[256];
	cudaEvent_t ev[2];     /* kn_cuda_mark / kn_cuda_elapsed_ms */
	/* scratch kept from call to call (device unless said) */
	struct kn_cuda_buf scratch; /* kn_cuda_moe(): one block, see moe.cu */
	struct kn_cuda_buf ptrs;    /* pointer arrays for the batched GEMMs */
	struct kn_cuda_buf attn;    /* kn_cuda_attention_paged() scores [n][n_heads][max_ctx] */
	int32_t *host_idx;          /* host staging of kn_cuda_moe()'s index arrays */
	size_t host_idx_n;
	/* KN_CUDA_GEMM_AUTO (moe.cu): per bit length of the busiest expert's token count, the
	 * best time of each method so far, how often each was timed, and the pick (-1: none) */
	struct {
		float best[2];
		int tried[2];
		int pick;
	} tune[KN_CUDA_TUNE_BUCKETS];
	cudaEvent_t tune_ev[2];
};

/* Converts a CUDA status once: 0, or a negative errno with the message kept in c->err; a
 * failure is also taken back from the runtime's last error, so that the next launch check
 * does not report it again. */
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

/* At least `need` bytes in b, kept for later calls: a larger block replaces the old one once
 * the stream is done with it (work queued before may still read it). */
int kn_cuda__reserve(struct kn_cuda *c, struct kn_cuda_buf *b, size_t need, const char *what);

/* Records `end` on c's stream, waits for it, and gives the time since `start` (recorded
 * earlier on the same stream). */
int kn_cuda__elapsed(struct kn_cuda *c, cudaEvent_t start, cudaEvent_t end, float *ret_ms);

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

/* A weight or activation as f32: bf16 widened exactly (kn_bf16_to_f32()), f32 as it is. */
static __device__ __forceinline__ float kn_cuda__widen(uint16_t bf16)
{
	return __uint_as_float((uint32_t)bf16 << 16);
}

static __device__ __forceinline__ float kn_cuda__widen(float f)
{
	return f;
}

#endif /* FERRY_KN_CUDA_INTERNAL_H */
