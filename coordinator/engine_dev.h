/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine_dev.h - the engine's blocks on a device (kernels/kn_dev.h): embeddings, attention
 * over a paged KV cache in device memory, the dense and shared FFNs, the router's logits
 * and the lm_head, with the residual stream held on the device. engine.c calls these in
 * place of its CPU blocks when it was created with a device; the micro-batch ping-pong, the
 * KV block bookkeeping, the router's top-k and the MoE seam stay on the host: the tokens
 * to dispatch come down once per micro-batch and MoE layer, the partials go up once.
 * Rows are the engine's: [r0, r0 + n) of the current forward chunk.
 */
#ifndef FERRY_COORDINATOR_ENGINE_DEV_H
#define FERRY_COORDINATOR_ENGINE_DEV_H

#include "common/common.h"
#include "kernels/kn_dev.h"
#include "model/model.h"
#include "moe/gpu.h"

/* A device for the engine, opened ([engine] device, ferryctl run --device, ...): ops and ctx
 * go into co_engine_opts; close it after the engine. */
struct co_device {
	const struct kn_dev_ops *ops;         /* NULL: the CPU */
	void *ctx;
	const struct moe_gpu_module *gpu_mod; /* cuda:N: the GPU module ... */
	struct moe_gpu *gpu;                  /* ... and its device; else NULL */
	void *twin;                           /* twin: the CPU twin's context; else NULL */
	char where[320]; /* "the CPU", "the CPU twin of a device", or the GPU described */
};

/* Opens device (KN_DEV_NONE: nothing to open, KN_DEV_TWIN, or cuda:N) for contexts of up to
 * max_ctx positions. Errors: -ENOMEM, and the module's (moe_gpu_module_load(), open():
 * -ENOENT, -EPROTO, -ENODEV when the driver sees no such device); err says which. */
int co_device_open(int device, int max_ctx, struct co_device *ret, struct fr_error *err);
void co_device_close(struct co_device *d); /* zeroed or closed already is fine */

struct co_dev;

struct co_dev_shape {
	int max_batch, max_seqs, max_ctx, max_blocks, n_blocks, block_size;
};

/* Copies every weight the coordinator computes with (not the routed experts) to the
 * device and allocates the KV pools and the rows' buffers there. The products are exact
 * (f32 activations, kn_dev_ops.matmul's exact) when kn_precision() is, else in the
 * device's fast arithmetic; the routers' are always exact. Errors: -ENOMEM (err
 * says what did not fit), what the ops return. */
int co_dev_create(const struct model_weights *w, const struct kn_dev_ops *ops, void *ctx,
		  const struct co_dev_shape *shape, struct co_dev **ret, struct fr_error *err);
void co_dev_destroy(struct co_dev *d);

/* A forward chunk's rows: token ids, sequences, positions (host, n rows) and the block
 * table (host, [max_seqs][max_blocks]) go up; the residual stream h becomes the tokens'
 * embeddings. */
int co_dev_begin(struct co_dev *d, int n, const int32_t *tokens, const int32_t *seq,
		 const int32_t *pos, const int32_t *block_table);
/* h += attention(rmsnorm(h)) for rows [r0, r0 + n), their keys and values into layer l's
 * cache first. */
int co_dev_attention(struct co_dev *d, int l, int r0, int n);
/* xn = rmsnorm(h) with layer l's FFN norm; then h += the dense FFN (dense layers), or,
 * for a MoE layer, the router's logits [n][n_routed] and xn [n][hidden] come down into
 * host_rl and host_xn (for the top-k and the dispatch on the host). */
int co_dev_ffn_start(struct co_dev *d, int l, int r0, int n, float *host_xn, float *host_rl);
/* h += the shared experts of xn (MoE layer l, if it has them): queued before the engine
 * waits for the routed experts, so that on a GPU the two overlap. */
int co_dev_shared(struct co_dev *d, int l, int r0, int n);
/* h += host_part [n][hidden] (the routed experts' combined partials). */
int co_dev_add_rows(struct co_dev *d, int r0, int n, const float *host_part);
/* The logits of rows[j], j < n_rows, into logits + rows[j] * vocab (host): the final norm
 * and the lm_head on the device, only those rows. */
int co_dev_logits(struct co_dev *d, const int32_t *rows, int n_rows, float *logits);

#endif /* FERRY_COORDINATOR_ENGINE_DEV_H */
