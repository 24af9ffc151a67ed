/* SPDX-License-Identifier: Apache-2.0 */
/* cpu-internal.h - private to kernels/: the per-ISA op tables. */
#ifndef FERRY_KERNELS_CPU_INTERNAL_H
#define FERRY_KERNELS_CPU_INTERNAL_H

#include "kernels/kernels.h"

extern const struct kn_ops kn_ops_scalar;
#ifdef KN_HAVE_AVX2
extern const struct kn_ops kn_ops_avx2;
#endif
#ifdef KN_HAVE_AVX512
extern const struct kn_ops kn_ops_avx512;
extern const struct kn_ops kn_ops_avx512bf16;
#endif

/* Scalar pieces the SIMD tables reuse for tails or ops they do not specialise. */
void kn_scalar_matmul(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1);
void kn_scalar_matmul_fast(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			   int r1);
void kn_scalar_rmsnorm(float *y, const float *x, const float *g, int dim, float eps);
void kn_scalar_swiglu(float *out, const float *gate, const float *up, int n);
void kn_scalar_axpy(float *y, float a, const float *x, int n);
float kn_scalar_dot(const float *x, const float *y, int n);
void kn_scalar_softmax(float *x, int n);
int kn_scalar_argmax(const float *x, int n);
void kn_scalar_attend(float *out, const float *q, const float *k, const float *v,
		      const int32_t *blocks, int block_size, int n_ctx, int head_dim, size_t stride,
		      float scale, float *scratch);

#endif
