/* SPDX-License-Identifier: Apache-2.0 */
/*
 * coordinator.h - the engine: embeddings, attention with a KV cache, routers, shared
 * experts, sampling; routed experts go through the MoE seam (moe/moe.h: in-process experts
 * or the cluster's remote ones).
 *
 * Batches are sets of (sequence, position, token) rows, so prefill of one prompt, decode
 * of many sequences and a mix of both are one call.
 */
#ifndef FERRY_COORDINATOR_H
#define FERRY_COORDINATOR_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kn_dev.h"
#include "model/model.h"
#include "moe/moe.h"

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
	                    * MOE_MAX_MICRO_BATCHES); a call of n < m rows uses n */
	int kv_blocks;     /* KV pool size in blocks (0: max_seqs * ceil(max_ctx / block_size),
	                    * every sequence can reach max_ctx at once) */
	int block_size;    /* positions per block (0: CO_KV_BLOCK_SIZE); results do not depend
	                    * on it */
	/* NULL: the CPU. Else the blocks run on this device (kernels/kn_dev.h: a GPU through
	 * the GPU module, or the CPU twin kn_dev_twin_ops) with ctx; the weights and the KV
	 * cache are copied there at creation. Borrowed: must outlive the engine. */
	const struct kn_dev_ops *dev_ops;
	void *dev_ctx;
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
int co_engine_create(const struct model_weights *w, struct moe moe,
		     const struct co_engine_opts *opts, struct co_engine **ret,
		     struct fr_error *err);
void co_engine_destroy(struct co_engine *e);

/* ---- co_engine_bench(): an engine's throughput on a served batch's work ---- */

struct co_bench_work {
	int batch;          /* sequences, decoding together */
	int prompt_len;     /* tokens of each prompt */
	int steps;          /* decode steps (tokens generated per sequence) */
	int max_batch;      /* rows per forward call, as the engine was created with */
	int vocab;          /* prompt and decode tokens are drawn from [0, vocab) */
	uint64_t seed;
};

struct co_bench_result {
	double tokens_per_s;  /* batch * steps / (prefill + decode time) */
	double step_ms_p50;   /* median decode step */
};

/* How the benchmark drives an engine: step = co_engine_forward() (or the server's
 * wrapper), reset = co_engine_reset_seq(). Both get arg. */
struct co_bench_ops {
	int (*step)(void *arg, int n, const int32_t *tok, const int32_t *seq, const int32_t *pos,
		    const bool *want, float *logits);
	void (*reset)(void *arg, int seq);
};

/* Times the work a served batch does, with perfect batching: sequences 0..batch-1 get random
 * prompts, prefilled together (whole sequences per call, max_batch rows at most), then decode
 * `steps` tokens together; one untimed round first. The engine needs max_seqs >= batch and
 * max_ctx > prompt_len + steps. The sequences are reset before and after. Errors: -EINVAL
 * (work), -ENOMEM, or the step's. */
int co_engine_bench(const struct co_bench_work *wk, const struct co_bench_ops *ops, void *arg,
		    struct co_bench_result *ret);

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
/* On a device: the host memory its copies go through every step (the tokens to dispatch
 * and the router's logits coming down, the experts' partials going up), for the caller to
 * pin (moe_gpu_module.pin). Fills up to max regions, returns how many there are (0 on the
 * CPU). */
#define CO_ENGINE_HOST_REGIONS 3
int co_engine_host_regions(const struct co_engine *e, struct moe_host_region *v, int max);
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

/* How a request samples (the one sampler parameter struct: the scheduler's requests and
 * ferryctl run). */
struct co_sample_params {
	float temperature;   /* 0 = greedy */
	float top_p;         /* (0, 1]; 1 = off */
	int top_k;           /* 0 = off */
	float rep_penalty;   /* 1 (or 0) = off */
	uint64_t seed;
};

/* Applies repetition penalty over history[n_hist] (CTRL: divide positive logits, multiply
 * negative ones), then temperature, top-k and top-p, and draws from rng. logits is modified
 * in place. scratch: co_sample_scratch_size(vocab) bytes. Returns the token id. */
int32_t co_sample_full(const struct co_sample_params *p, uint64_t *rng, float *logits,
		       int vocab, const int32_t *history, int n_hist, void *scratch);
size_t co_sample_scratch_size(int vocab);
/* log p(target) under logits (log-softmax), in double precision. */
double co_logprob(const float *logits, int vocab, int32_t target);
/* The greedy pick: the highest logit, ties to the lowest id. */
int32_t co_argmax(const float *logits, int vocab);

#endif
