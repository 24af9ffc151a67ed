/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scheduler.h - continuous batching over the engine (vLLM-style iteration-level scheduling).
 *
 * One scheduler thread owns the forward passes. Every step it builds one batch from the
 * running requests: one decode row per request that is generating, then prompt chunks of
 * requests still in prefill (at most prefill_chunk rows each) until max_batch rows - so a
 * long prompt never stalls the decoding of others. Requests join the running set between
 * steps and leave it the moment they finish, are cancelled or pass their deadline; their
 * KV-cache blocks are freed then.
 *
 * Admission: a request is admitted when a sequence slot is free and the KV pool can hold
 * its whole context (prompt + max_new, reserved up front, so a running request never
 * runs out of blocks mid-generation). Otherwise it waits in a bounded queue ordered by
 * priority (higher first), first come first served within a priority; a waiting request's
 * priority grows by one per aging_ms waited, so none starves. A full queue refuses at
 * submit (-EAGAIN: RESOURCE_EXHAUSTED for clients). Admission never bypasses the head of
 * the queue, so a large request is not overtaken forever by small ones.
 *
 * Results: the request's owner (a gRPC handler thread) reads what the scheduler produced
 * with co_req_next(); tokens are sampled by the scheduler with the request's own sampler,
 * so a request's tokens depend only on its prompt, parameters and seed, not on what it was
 * batched with (up to float summation order in the kernels).
 */
#ifndef FERRY_COORDINATOR_SCHEDULER_H
#define FERRY_COORDINATOR_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "coordinator/coordinator.h"

/* The engine as the scheduler sees it; called from the scheduler thread only, ctx is the
 * caller's (the server wraps the engine lock and load accounting). */
struct co_sched_engine {
	/* One forward pass (co_engine_forward()'s contract); err says why on failure. */
	int (*forward)(void *ctx, int n, const int32_t *tokens, const int32_t *seq,
		       const int32_t *pos, const bool *want, const struct co_route_knobs *knobs,
		       float *logits, struct fr_error *err);
	/* Frees a sequence's KV blocks (co_engine_reset_seq()). */
	void (*release)(void *ctx, int seq);
	void *ctx;
};

struct co_sched_opts {
	int max_seqs;        /* sequence slots of the engine (running requests at most) */
	int max_batch;       /* rows per step (decode rows + prompt chunks) */
	int prefill_chunk;   /* prompt rows per request per step (default max_batch / 2) */
	int max_ctx;         /* positions per sequence */
	int kv_blocks;       /* KV pool size in blocks */
	int block_size;      /* positions per block */
	int queue_max;       /* waiting requests at most (default 256) */
	int aging_ms;        /* priority aging (default 1000) */
	int vocab;
	int eos;             /* end-of-sequence id (-1: none) */
	/* Bytes of return_logits rows a request may hold that its owner has not taken with
	 * co_req_next() (0: CO_SCHED_STREAM_BUFFER_DEFAULT). A request whose rows reach it is
	 * not scheduled (its KV blocks stay reserved) until the owner takes them; a prompt
	 * chunk is cut to what fits. At least one row always fits. */
	size_t stream_buffer;
};

#define CO_SCHED_STREAM_BUFFER_DEFAULT ((size_t)4 << 20)

enum co_finish {
	CO_FINISH_NONE = 0,
	CO_FINISH_LENGTH,    /* max_new reached */
	CO_FINISH_STOP,      /* EOS or a stop id */
	CO_FINISH_CONTEXT,   /* max_ctx reached */
	CO_FINISH_CANCELLED, /* co_req_cancel() */
	CO_FINISH_ERROR,     /* the forward pass failed (see co_req_out.err) */
};

enum co_req_kind {
	CO_REQ_GENERATE = 0,
	CO_REQ_SCORE,        /* prompt only: log p(prompt[i + 1] | prompt[..i]) */
};

struct co_req_spec {
	enum co_req_kind kind;
	const int32_t *prompt;     /* copied */
	int n_prompt;
	int max_new;               /* GENERATE: >= 1 */
	bool ignore_eos;
	const int32_t *stop_ids;   /* copied */
	int n_stop_ids;
	struct co_sample_params sample;
	struct co_route_knobs knobs;
	int priority;              /* 0..9 */
	bool return_logits;        /* GENERATE: keep every prompt row and each step's row */
};

struct co_sched;
struct co_req;

/* eng is copied (its ctx borrowed). Errors: -EINVAL, -ENOMEM, -errno from pthread_create. */
int co_sched_create(const struct co_sched_opts *o, const struct co_sched_engine *eng,
		    struct co_sched **ret, struct fr_error *err);
/* Cancels everything (running and queued requests finish with CO_FINISH_CANCELLED or an
 * error), joins the thread and frees the scheduler. Requests still held by their owners
 * stay valid until co_req_put(). Accepts NULL. */
void co_sched_destroy(struct co_sched *s);

/* Queues a request. On success *ret holds a reference the caller drops with co_req_put().
 * Errors (err names the problem): -EINVAL (empty prompt, ids out of range, max_new < 1,
 * bad sampling parameters, prompt + max_new beyond max_ctx, more KV blocks than the pool),
 * -EAGAIN (queue full), -ESHUTDOWN (scheduler stopping), -ENOMEM. */
int co_sched_submit(struct co_sched *s, const struct co_req_spec *spec, struct co_req **ret,
		    struct fr_error *err);

struct co_req_out {
	/* Tokens produced since the previous call (GENERATE); valid until the next call. */
	const int32_t *tokens;
	int n_tokens;
	int offset;                /* index of tokens[0] among the generated tokens */
	/* return_logits rows since the previous call ([n_rows][vocab] f32; prompt rows
	 * first). Owned by the caller from here on: free() it (NULL when n_rows is 0). The
	 * scheduler keeps writing new rows into a buffer of its own, so the caller may send
	 * these for as long as it likes. */
	float *logits;
	int n_rows;
	/* Set once the request is over. */
	enum co_finish finish;
	int err;                   /* CO_FINISH_ERROR: negative errno */
	const char *errmsg;        /* CO_FINISH_ERROR: text */
	/* SCORE, when finished: logprobs[n_prompt - 1]. */
	const float *logprobs;
	int n_logprobs;
	/* Timing, nanoseconds (valid when finished; first_token/queue when known). */
	uint64_t queue_ns, first_token_ns, total_ns, inter_token_ns_sum;
	int n_prompt;
};

/* Waits up to timeout_ms (-1: forever) for new output. Returns 1 when *out has news
 * (tokens, rows, or the finish), 0 on timeout. Taking rows frees room in the request's
 * stream buffer (a request held back by a full one is scheduled again). */
int co_req_next(struct co_req *r, int timeout_ms, struct co_req_out *out);
/* Asks the scheduler to stop the request: queued ones leave at once, running ones at the
 * next step boundary; its KV blocks are freed then. Thread-safe, idempotent. */
void co_req_cancel(struct co_req *r);
/* Drops the caller's reference (cancels the request if still running). */
void co_req_put(struct co_req *r);

/* Pauses admission and waits until no request runs (queued ones keep waiting; new ones
 * queue); co_sched_resume() undoes it. Pauses nest. For exclusive use of the engine
 * (benchmarks). Returns 0, or -ETIMEDOUT after timeout_ms (still paused: resume). */
int co_sched_pause(struct co_sched *s, int timeout_ms);
void co_sched_resume(struct co_sched *s);

/* Counters for Health/metrics and tests. */
struct co_sched_stats {
	int running, queued;
	int free_blocks;           /* KV blocks not reserved by running requests */
	int throttled;             /* running requests held back by a full stream buffer */
	int total_blocks;          /* the pool */
	uint64_t steps, rows, finished, refused;
};
void co_sched_stats(struct co_sched *s, struct co_sched_stats *ret);
/* Median and longest duration of the steps (their forward passes) that ended in
 * [from_ns, to_ns) (fr_now_ns() clock), among the last 8192. Returns how many there were
 * (both results 0 for none), or -ENOMEM. */
int co_sched_step_times(struct co_sched *s, uint64_t from_ns, uint64_t to_ns,
			uint64_t *ret_median_ns, uint64_t *ret_max_ns);

#endif /* FERRY_COORDINATOR_SCHEDULER_H */
