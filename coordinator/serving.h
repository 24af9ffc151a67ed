/* SPDX-License-Identifier: Apache-2.0 */
/*
 * serving.h - ferry.v1.Inference's Generate and Score over the scheduler: request
 * validation (shared with the fuzz target), tokenization of text prompts, streaming of
 * tokens, text deltas and logits, cancellation and deadlines.
 */
#ifndef FERRY_COORDINATOR_SERVING_H
#define FERRY_COORDINATOR_SERVING_H

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include <stdatomic.h>

#include "coordinator/inference.h"
#include "metrics/prom.h"
#include "coordinator/scheduler.h"
#include "model/model.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

#define CO_MAX_STOP_STRINGS 16
#define CO_MAX_STOP_LEN 256
#define CO_MAX_STOP_IDS 64
/* Logits bytes per GenerateResponse: well under RPC_MAX_MESSAGE_BYTES. */
#define CO_LOGITS_MSG_BYTES (8u << 20)

/* What Generate and Score add to /metrics (coordinator/metrics.c). Histograms in seconds:
 * time to first token, each token's gap to the one before as the handler sends it,
 * end-to-end latency and time queued, of finished Generate requests. */
struct co_serve_metrics {
	struct fr_histo ttft, itl, e2e, queue;
	_Atomic uint64_t prompt_tokens;     /* prompts admitted (Generate and Score) */
	_Atomic uint64_t gen_tokens;        /* tokens sent to clients */
	_Atomic uint64_t finished[CO_FINISH_ERROR + 1]; /* Generate requests, by enum co_finish */
};

/* 0, or -ENOMEM / -EINVAL from the histograms. */
int co_serve_metrics_init(struct co_serve_metrics *m);
void co_serve_metrics_fini(struct co_serve_metrics *m);

struct co_serving {
	const struct model_config *cfg;
	const struct model_tokenizer *tok;  /* NULL: the model has no tokenizer.json */
	int max_ctx;                        /* positions a request may use */
	int default_max_tokens;             /* max_tokens 0 means min(this, room left) */
	struct co_sched *sched;
	size_t logits_msg_bytes;            /* logits bytes per GenerateResponse at most
					     * (0: CO_LOGITS_MSG_BYTES; tests make it small) */
	int64_t stall_ms;                   /* a stream whose client reads nothing this long is
					     * cancelled ([server] stall_timeout; <= 0: never) */
	/* NULL while serving, else why not ("draining"); for UNAVAILABLE. */
	const char *(*unavailable)(void *ctx, char *buf, size_t cap);
	void *ctx;
	struct co_serve_metrics *metrics;   /* NULL: not counted */
};

/*
 * Checks a GenerateRequest and turns it into a scheduler spec. Text prompts are tokenized
 * (*ret_ids is then a heap array the caller frees; else NULL and spec->prompt points into
 * r). Returns 0, -EINVAL (a field out of range; err names it), -ENOTSUP (text without a
 * tokenizer: "model has no tokenizer.json, send token ids"), -ENOMEM. Never touches the
 * scheduler: the fuzz target runs it on random messages.
 */
int co_generate_validate(const struct co_serving *sv, const Ferry__V1__GenerateRequest *r,
			 struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err);
/* The same for ScoreRequest. */
int co_score_validate(const struct co_serving *sv, const Ferry__V1__ScoreRequest *r,
		      struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err);

/* Where co_generate_run() sends its responses: the gRPC call, or the HTTP API's stream. */
struct co_gen_sink {
	/* Sends one response. 0, or a negative errno (-ENOBUFS: the client read nothing for
	 * [server] stall_timeout, the request is cancelled with RESOURCE_EXHAUSTED). */
	int (*send)(void *ctx, const Ferry__V1__GenerateResponse *m);
	/* The client went away (or its deadline passed). */
	bool (*cancelled)(void *ctx);
	/* Milliseconds to its deadline (<= 0: passed), INT64_MAX without one. */
	int64_t (*remaining_ms)(void *ctx);
	void *ctx;
};

/* Generate, whatever carries it: validates r, runs it on the scheduler and streams what it
 * produces to sink (logits rows, tokens and text, then finish_reason, usage and timing).
 * Returns GRPC_STATUS_OK or the status the request ends with, err saying why when there is
 * more to say than the status (an invalid field, the server stopping...). */
grpc_status_code co_generate_run(struct co_serving *sv, const Ferry__V1__GenerateRequest *r,
				 const struct co_gen_sink *sink, struct fr_error *err);

/* rpc handlers; arg is a struct co_serving *. */
grpc_status_code co_handle_generate(struct rpc_call *call, const ProtobufCMessage *req,
				    void *arg);
grpc_status_code co_handle_score(struct rpc_call *call, const ProtobufCMessage *req, void *arg);

/* Registers Generate and Score on srv with sv as their argument (sv must outlive srv).
 * Errors: rpc_server_add_method()'s. */
int co_serving_register(struct co_serving *sv, struct rpc_server *srv, struct fr_error *err);

#endif /* FERRY_COORDINATOR_SERVING_H */
