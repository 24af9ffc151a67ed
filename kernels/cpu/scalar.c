/* SPDX-License-Identifier: Apache-2.0 */
/* scalar.c - the reference implementation of every CPU op. Plain C, sequential sums,
 * fp32 accumulation: what the SIMD tables are tested against. */
#include <math.h>

#include "kernels/cpu/cpu-internal.h"

static inline float weight_at(const struct kn_mat *w, size_t i)
{
	switch (w->dtype) {
	case KN_DTYPE_BF16:
		return kn_bf16_to_f32(((const uint16_t *)w->data)[i]);
	case KN_DTYPE_F16:
		return kn_f16_to_f32(((const uint16_t *)w->data)[i]);
	case KN_DTYPE_F32:
	default:
		return ((const float *)w->data)[i];
	}
}

void kn_scalar_matmul(float *y, const float *x, const struct kn_mat *w, int n, int r0, int r1)
{
	for (int t = 0; t < n; t++) {
		const float *xt = x + (size_t)t * w->cols;
		for (int r = r0; r < r1; r++) {
			size_t base = (size_t)r * w->cols;
			float acc = 0.0f;
			for (int c = 0; c < w->cols; c++)
				acc += weight_at(w, base + c) * xt[c];
			y[(size_t)t * w->rows + r] = acc;
		}
	}
}

/* KN_PRECISION_FAST's reference: x rounded to bf16 (nearest-even; denormals read as zero, as
 * vdpbf16ps does), products of two bf16 exact in fp32, sequential fp32 sums. */
void kn_scalar_matmul_fast(float *y, const float *x, const struct kn_mat *w, int n, int r0,
			   int r1)
{
	for (int t = 0; t < n; t++) {
		const float *xt = x + (size_t)t * w->cols;
		for (int r = r0; r < r1; r++) {
			size_t base = (size_t)r * w->cols;
			float acc = 0.0f;
			for (int c = 0; c < w->cols; c++) {
				float xv = fpclassify(xt[c]) == FP_SUBNORMAL ? 0.0f : xt[c];
				float wv = weight_at(w, base + c);
				if (fpclassify(wv) == FP_SUBNORMAL)
					wv = 0.0f;
				acc += wv * kn_bf16_to_f32(kn_f32_to_bf16(xv));
			}
			y[(size_t)t * w->rows + r] = acc;
		}
	}
}

/* The rounding kn_scalar_matmul_fast does, once, for kn_scalar_matmul_fast_xb. */
static void scalar_round_bf16(uint16_t *xb, const float *x, int n, int cols)
{
	size_t ld = KN_XB_LD(cols);
	for (int t = 0; t < n; t++) {
		const float *xt = x + (size_t)t * cols;
		uint16_t *bt = xb + (size_t)t * ld;
		for (int c = 0; c < cols; c++)
			bt[c] = kn_f32_to_bf16(fpclassify(xt[c]) == FP_SUBNORMAL ? 0.0f : xt[c]);
		for (size_t c = (size_t)cols; c < ld; c++)
			bt[c] = 0;
	}
}

static void scalar_matmul_fast_xb(float *y, const uint16_t *xb, const struct kn_mat *w, int n,
				  int r0, int r1)
{
	size_t ld = KN_XB_LD(w->cols);
	for (int t = 0; t < n; t++) {
		const uint16_t *bt = xb + (size_t)t * ld;
		for (int r = r0; r < r1; r++) {
			size_t base = (size_t)r * w->cols;
			float acc = 0.0f;
			for (int c = 0; c < w->cols; c++) {
				float wv = weight_at(w, base + c);
				if (fpclassify(wv) == FP_SUBNORMAL)
					wv = 0.0f;
				acc += wv * kn_bf16_to_f32(bt[c]);
			}
			y[(size_t)t * w->rows + r] = acc;
		}
	}
}

void kn_scalar_rmsnorm(float *y, const float *x, const float *g, int dim, float eps)
{
	float ss = 0.0f;
	for (int i = 0; i < dim; i++)
		ss += x[i] * x[i];
	float inv = 1.0f / sqrtf(ss / (float)dim + eps);
	for (int i = 0; i < dim; i++)
		y[i] = x[i] * inv * g[i];
}

void kn_scalar_swiglu(float *out, const float *gate, const float *up, int n)
{
	for (int i = 0; i < n; i++) {
		float g = gate[i];
		out[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

void kn_scalar_axpy(float *y, float a, const float *x, int n)
{
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

float kn_scalar_dot(const float *x, const float *y, int n)
{
	float acc = 0.0f;
	for (int i = 0; i < n; i++)
		acc += x[i] * y[i];
	return acc;
}

void kn_scalar_softmax(float *x, int n)
{
	float max = x[0], sum = 0.0f;
	for (int i = 1; i < n; i++)
		if (x[i] > max)
			max = x[i];
	for (int i = 0; i < n; i++) {
		x[i] = expf(x[i] - max);
		sum += x[i];
	}
	float inv = 1.0f / sum;
	for (int i = 0; i < n; i++)
		x[i] *= inv;
}

void kn_scalar_attend(float *out, const float *q, const float *k, const float *v,
		      const int32_t *blocks, int block_size, int n_ctx, int head_dim, size_t stride,
		      float scale, float *scratch)
{
	size_t bstride = (size_t)block_size * stride;

	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *kb = k + (size_t)blocks[b] * bstride;
		float *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			sb[i] = kn_scalar_dot(q, kb + (size_t)i * stride, head_dim) * scale;
	}
	kn_scalar_softmax(scratch, n_ctx);
	for (int d = 0; d < head_dim; d++)
		out[d] = 0.0f;
	for (int b = 0, j = 0; j < n_ctx; b++, j += block_size) {
		const float *vb = v + (size_t)blocks[b] * bstride, *sb = scratch + j;
		for (int i = 0, m = n_ctx - j < block_size ? n_ctx - j : block_size; i < m; i++)
			kn_scalar_axpy(out, sb[i], vb + (size_t)i * stride, head_dim);
	}
}

int kn_scalar_argmax(const float *x, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

const struct kn_ops kn_ops_scalar = {
	.name = "scalar",
	.matmul = kn_scalar_matmul,
	.matmul_fast = kn_scalar_matmul_fast,
	.matmul_fast_xb = scalar_matmul_fast_xb,
	.round_bf16 = scalar_round_bf16,
	.rmsnorm = kn_scalar_rmsnorm,
	.swiglu = kn_scalar_swiglu,
	.axpy = kn_scalar_axpy,
	.dot = kn_scalar_dot,
	.softmax = kn_scalar_softmax,
	.argmax = kn_scalar_argmax,
	.attend = kn_scalar_attend,
};
