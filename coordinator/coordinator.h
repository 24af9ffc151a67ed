/* SPDX-License-Identifier: Apache-2.0 */
/*
 * coordinator.h - the engine: embeddings, attention with a KV cache, routers, shared
 * experts, sampling; routed experts go through the MoE seam (struct co_moe_ops), which is
 * in-process workers here and the cluster later.
 *
 * Batches are sets of (sequence, position, token) rows, so prefill of one prompt, decode
 * of many sequences and a mix of both are one call.
 */
#ifndef FERRY_COORDINATOR_H
#define FERRY_COORDINATOR_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "placement/placement.h"
#include "transport/transport.h"
#include "worker/worker.h"

/* Most micro-batches a forward pass is split into (and that the seam must track). */
#define CO_MAX_MICRO_BATCHES 8

/* ==== the MoE seam ========================================================================== */

/* Routed-expert work for one MoE layer of one micro-batch. The engine calls dispatch() with
 * the normalized hidden states and every token's top-k (expert, weight), computes the shared
 * experts, then calls combine(), which must ADD sum_j w_j * Expert_j(x[t]) into out[t].
 * Each op returns 0 or a negative errno (the forward pass fails with it). */
struct co_moe_ops {
	const char *name;
	int (*dispatch)(void *ctx, int layer, int mb, const float *x /* [n][hidden] */, int n_tok,
			const int32_t *expert /* [n][k] */, const float *weight /* [n][k] */, int k);
	int (*combine)(void *ctx, int layer, int mb, float *out /* [n][hidden], += */);
	void (*destroy)(void *ctx);
};

struct co_moe {
	const struct co_moe_ops *ops;
	void *ctx;
};

/* In-process experts: n_workers slot tables, expert e of every layer on worker e % n_workers
 * (a worker per table, computed one after the other). Binds the routed experts from ck,
 * which must outlive it. Errors: -EINVAL, -ENOMEM, -ENOENT (missing tensor, err names it). */
int co_moe_local_create(const struct model_ckpt *ck, int n_workers, struct co_moe *ret,
			struct fr_error *err);
void co_moe_destroy(struct co_moe *moe);

/* Remote experts: the cluster's data path (ARCHITECTURE §2, §4). Worker w is reached
 * through eps[w] (connected; its receive region recv[w] holds ring.slots combine slots,
 * see worker.h) and holds the slots placement p gives it. Per layer and micro-batch,
 * dispatch() picks for every (token, expert) the replica on the worker with the least load
 * in this micro-batch (co_place_choose), sends each token ONCE to each worker holding any
 * of its experts, as one dispatch frame per worker with the token's (slot, weight) pairs,
 * and returns without waiting; combine() waits for the combine frames of exactly the
 * workers it sent to and adds their partials. Up to ring.slots micro-batches may be
 * outstanding; the frame of micro-batch mb uses ring slot mb % ring.slots.
 *
 * The workers' endpoints may live on several transport contexts (one per local device, so
 * that no single NIC carries every worker): eps[i] and recv[i] are on one of ctxs[0..n_ctxs),
 * worker i's send ring is allocated on that same context, and the ops poll every context
 * and sleep on all of them at once (tp_wait_many()).
 *
 * Everything (ctxs, eps, recv, p, load) is borrowed and used only from the thread calling
 * the ops. */
struct co_remote_opts {
	struct wk_ring ring;          /* the geometry every worker announced (same for all) */
	enum fp_dtype wire;           /* FP_DTYPE_BF16 (default when 0) or FP_DTYPE_F32 */
	int timeout_ms;               /* combine() waits at most this long (default 30000) */
	struct co_load *load;         /* NULL, or where tokens per expert/slot are counted */
	uint32_t epoch;               /* written into every frame's step_epoch */
	const char *const *names;     /* NULL, or [n_workers] worker names for messages */
};

/* Errors: -EINVAL (shapes: placement vs config vs ring; n_ctxs outside 1..TP_WAIT_MANY_MAX,
 * an endpoint on none of ctxs; err says which), -ENOMEM, tp_mem_alloc()'s.
 * At run time the ops return -ETIMEDOUT (a worker did not answer: err names it and the
 * layer/micro-batch), -ECONNRESET (a worker's endpoint failed), -EBADMSG (a malformed or
 * unexpected combine frame), -E2BIG (a micro-batch larger than ring.tokens, or a token
 * with more than ring.max_pairs experts on one worker), -EINVAL (misuse: a dense layer, mb
 * outside 0..255, a ring slot still busy, a combine without its dispatch), -ENOBUFS (one
 * micro-batch left uncombined while 4 x ring.slots later frames queued behind it).
 * co_moe_remote_error() has the text. Errors found before anything is sent leave the ring
 * usable; the others (timeout, a failed endpoint that owed a frame, a bad frame) are
 * sticky: frames in flight could land in reused slots, so every later op returns the same
 * error and the caller rebuilds the MoE over fresh endpoints. The destroy op waits up to
 * timeout_ms for puts still reading its send buffers (tcp sends from them in place). */
int co_moe_remote_create(const struct model_config *cfg, struct tp_context *const *ctxs,
			 int n_ctxs, int n_workers, struct tp_ep *const *eps,
			 struct tp_mem *const *recv, const struct co_placement *p,
			 const struct co_remote_opts *o, struct co_moe *ret, struct fr_error *err);
/* Text of the last run-time failure of a remote MoE ("" if none). */
const char *co_moe_remote_error(const struct co_moe *moe);
/* Between steps (same thread rules as the ops): makes transport progress for up to
 * timeout_ms and writes into dead[] (at most max) the workers whose endpoint failed since
 * the last call, each reported once. Returns their number, or the MoE's sticky error. */
int co_moe_remote_check(struct co_moe *moe, int timeout_ms, int *dead, int max);

/* ==== the engine ============================================================================ */

struct co_engine;

/* Positions per KV cache block unless co_engine_opts.block_size says otherwise. */
#define CO_KV_BLOCK_SIZE 16

/* The KV cache is paged (vLLM): one pool of kv_blocks blocks of block_size positions (every
 * layer's keys and values for them), handed to sequences as they grow and taken back by
 * co_engine_reset_seq(). */
struct co_engine_opts {
	int max_seqs;      /* sequence ids 0..max_seqs-1 (default 1) */
	int max_ctx;       /* positions per sequence, at most (default: max_position_embeddings) */
	int max_batch;     /* rows per forward call (default 512) */
	int micro_batches; /* m: ping-pong micro-batches per forward call (default 1, at most
	                    * CO_MAX_MICRO_BATCHES); a call of n < m rows uses n */
	int kv_blocks;     /* KV pool size in blocks (0: max_seqs * ceil(max_ctx / block_size),
	                    * every sequence can reach max_ctx at once) */
	int block_size;    /* positions per block (0: CO_KV_BLOCK_SIZE); results do not depend
	                    * on it */
};

/* Per-request routing knobs (DeepSeekMoE paper analyses). Zero-initialized = the model's. */
struct co_route_knobs {
	int top_k;          /* 0 = config's num_experts_per_tok */
	int mask_top;       /* drop the r highest-scoring experts before picking top-k */
	bool no_shared;     /* skip the shared experts */
};

/* w and moe are borrowed and must outlive the engine. Allocates the KV pool
 * (kv_blocks * block_size * layers * 2 * kv_heads * head_dim floats) up front; its pages are
 * touched as blocks are first used. Errors: -EINVAL (opts, err says which), -ENOMEM (err says
 * how much was asked). */
int co_engine_create(const struct model_weights *w, struct co_moe moe,
		     const struct co_engine_opts *opts, struct co_engine **ret,
		     struct fr_error *err);
void co_engine_destroy(struct co_engine *e);

/* One forward pass over n rows. Row i is token tokens[i] of sequence seq[i] at position
 * pos[i]; rows of one sequence must be in increasing position order and its cache must
 * already hold positions [0, pos). Logits of row i go to logits[i] when want_logits is NULL
 * or want_logits[i]; logits is [n][vocab] (rows not wanted are left untouched).
 * knobs may be NULL. Before any row runs, every sequence gets the KV blocks its new length
 * needs, all or nothing. Errors: -EINVAL (ids, positions or sizes out of range), -ENOSPC
 * (too few free blocks; nothing was touched: retry once sequences are reset - or never, if
 * the call needs more than co_engine_kv_blocks()), errors from the MoE seam (the blocks
 * already given stay with their sequences until reset). */
int co_engine_forward(struct co_engine *e, int n, const int32_t *tokens, const int32_t *seq,
		      const int32_t *pos, const bool *want_logits, const struct co_route_knobs *knobs,
		      float *logits);

/* Forgets a sequence's cache and returns its blocks to the pool at once (the id can be
 * reused from position 0). Ids out of range are ignored. */
void co_engine_reset_seq(struct co_engine *e, int seq);

/* For a scheduler's admission control: positions per block, the pool size, blocks free now,
 * and how many more blocks sequence seq needs to hold new_len positions (0 if it has them;
 * -EINVAL for a seq or new_len out of range, new_len > max_ctx included). A forward call
 * fails with -ENOSPC iff the sum over its sequences of blocks_needed(seq, highest
 * position of seq in the call + 1) exceeds free_blocks. */
int co_engine_block_size(const struct co_engine *e);
int co_engine_kv_blocks(const struct co_engine *e);
int co_engine_free_blocks(const struct co_engine *e);
int co_engine_blocks_needed(const struct co_engine *e, int seq, int new_len);

const struct model_config *co_engine_config(const struct co_engine *e);

/* Per-kernel time accounting of forward passes (for benchmarks). */
enum co_prof {
	CO_PROF_EMBED, CO_PROF_NORM, CO_PROF_QKV, CO_PROF_ROPE, CO_PROF_ATTN, CO_PROF_O,
	CO_PROF_DENSE, CO_PROF_ROUTER, CO_PROF_SHARED, CO_PROF_EXPERTS, CO_PROF_LMHEAD,
	CO_PROF__COUNT,
};
const char *co_prof_name(enum co_prof p);
/* Nanoseconds per category since creation or the last reset. */
void co_engine_prof(const struct co_engine *e, uint64_t ret_ns[CO_PROF__COUNT]);
void co_engine_prof_reset(struct co_engine *e);

/* ==== sampling =============================================================================== */

struct co_sampler {
	float temperature;  /* 0 = greedy (argmax, ties to the lowest id) */
	float top_p;        /* (0, 1], 1 = off */
	uint64_t rng;       /* splitmix64 state, seeded by the caller */
};

/* Picks a token from logits[vocab]. scratch: 2 * vocab floats-worth (vocab floats +
 * vocab int32). */
int32_t co_sample(struct co_sampler *s, const float *logits, int vocab, void *scratch);
int32_t co_argmax(const float *logits, int vocab);

#endif
