/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kn_dev.h - the operations of a forward pass on a device with memory of its own, over
 * opaque device pointers: what the coordinator's engine runs with [engine] device = cuda:N
 * (coordinator/engine_dev.c). Two implementations:
 *   - CUDA, in the GPU module libferry-gpu.so (moe/gpu.c, over kernels/cuda);
 *   - the CPU twin (kn_dev_twin_ops, dev_twin.c): "device" memory is host memory and each
 *     op is the CPU kernel the engine itself uses, so the engine's device path runs, and
 *     is tested against the golden references, on any machine ([engine] device = twin).
 * Conventions: every op returns 0 or a negative errno (-ENOMEM, -EINVAL, -EIO); ops may be
 * queued, in order, on one stream: download() waits for everything queued before it.
 * Pointers are device memory unless said "host". Activations are f32.
 */
#ifndef FERRY_KN_DEV_H
#define FERRY_KN_DEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

struct kn_dev_ops {
	const char *name;
	int (*alloc)(void *ctx, size_t bytes, void **ret);
	void (*free)(void *ctx, void *p); /* NULL is fine */
	int (*upload)(void *ctx, void *dst, const void *host_src, size_t bytes);
	int (*download)(void *ctx, void *host_dst, const void *src, size_t bytes);
	int (*copy)(void *ctx, void *dst, const void *src, size_t bytes);
	/* A weight matrix (host, borrowed until weight_free) into device memory: *ret names it.
	 * On a GPU it is held as bf16 (bf16 weights) or f32 (f32 and f16 ones, whose products
	 * are then always exact). */
	int (*weight)(void *ctx, const struct kn_mat *m, void **ret);
	void (*weight_free)(void *ctx, void *w); /* NULL is fine */
	/* y[n][rows] = x[n][cols] . W^T. exact: f32 activations and fp32 products (a GPU's
	 * CUDA cores, the CPU's exact kernels): the routers' logits, whose top-k must not
	 * flip on a rounding, and every product with [engine] precision = exact. Else the
	 * device's fast arithmetic: on a GPU bf16 activations on the tensor cores with fp32
	 * sums, on the CPU twin kn_matmul() in kn_precision(). */
	int (*matmul)(void *ctx, float *y, const float *x, const void *w, int n, bool exact);
	/* out[t] = row ids[t] of the embedding matrix w, widened to f32 */
	int (*embed)(void *ctx, float *out, const void *w, const int32_t *ids, int n);
	int (*rmsnorm)(void *ctx, float *y, const float *x, const float *g, int n, int dim,
		       float eps);
	int (*rope)(void *ctx, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
		    float theta);
	/* kn_cuda_kv_write / kn_cuda_attention_rows (kn_cuda.h): the paged cache of one layer */
	int (*kv_write)(void *ctx, float *kp, float *vp, const float *k, const float *v,
			const int32_t *table, int max_blocks, const int32_t *seq,
			const int32_t *pos, int n, int block_size, int kv_dim);
	int (*attention)(void *ctx, float *out, const float *q, const float *kp, const float *vp,
			 const int32_t *table, int max_blocks, const int32_t *seq, int block_size,
			 int n, const int32_t *pos, int n_heads, int n_kv_heads, int head_dim,
			 int max_ctx);
	int (*add)(void *ctx, float *y, const float *x, size_t n); /* y += x */
	int (*swiglu)(void *ctx, float *out, const float *gate, const float *up, size_t n);
};

/* Device numbers where a device is chosen ([engine] device): N >= 0 is cuda:N. */
#define KN_DEV_NONE (-1) /* the CPU, no device */
#define KN_DEV_TWIN (-2) /* the CPU twin of a device */

/* The CPU twin: ctx from kn_dev_twin_create(max_ctx) (attention scratch for contexts up
 * to max_ctx), NULL when out of memory. */
extern const struct kn_dev_ops kn_dev_twin_ops;
void *kn_dev_twin_create(int max_ctx);
void kn_dev_twin_destroy(void *ctx);

#endif /* FERRY_KN_DEV_H */
