/* SPDX-License-Identifier: Apache-2.0 */
/*
 * serve_harness.h - an in-process coordinator front end for tests and fuzzers: the real
 * scheduler, the real Generate/Score handlers (coordinator/serving.c) and a real gRPC
 * server on 127.0.0.1, over a fake engine whose logits are a known function of
 * (token, position), so every streamed row and token can be checked exactly.
 *
 * The fake model: row[v] = sh_logit(tok, pos, v); its argmax is (tok + 1) % vocab, so a
 * greedy request's tokens are prompt_last + 1, + 2, ... (mod vocab). No EOS.
 */
#ifndef FERRY_TESTS_SERVE_HARNESS_H
#define FERRY_TESTS_SERVE_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coordinator/serving.h"
#include "rpc/rpc.h"

struct sh_opts {
	int vocab;               /* default 512 */
	int max_ctx;             /* default 512 */
	int max_batch;           /* default 256 */
	int prefill_chunk;       /* default max_batch / 2 */
	int max_seqs;            /* default 16 */
	int queue_max;           /* default 256 */
	size_t stream_buffer;    /* scheduler's; 0: its default */
	size_t logits_msg_bytes; /* serving's; 0: its default */
	int64_t stall_ms;        /* serving's; 0: never */
	int step_delay_us;       /* sleep in every forward pass */
};

struct sh {
	struct sh_opts o;
	struct model_config cfg;
	struct co_sched *sched;
	struct co_serving sv;
	struct rpc_server *srv;
	struct rpc_channel *ch;
	char addr[64];
};

/* Starts everything; 0 or -errno (err says why). */
int sh_create(const struct sh_opts *o, struct sh **ret, struct fr_error *err);
void sh_destroy(struct sh *h);

/* The fake model's logit of token v after seeing tok at position pos. */
float sh_logit(int32_t tok, int32_t pos, int v);

/* What one Generate stream brought back. */
struct sh_result {
	int status;              /* 0 (OK) or rpc_stream_next()'s negative errno */
	char errmsg[512];
	int32_t *tokens;         /* [n_tokens] */
	int n_tokens;
	float *rows;             /* [n_rows][vocab] when return_logits */
	int n_rows;
	int messages;
	int finish_reason;
	uint32_t prompt_tokens;  /* from the first message */
};

/* How the client reads. */
struct sh_read {
	int delay_us;            /* sleep before every rpc_stream_next() */
	int cancel_after;        /* > 0: cancel after this many messages */
	int64_t timeout_ms;      /* call deadline (0: none) */
};

/* One Generate call on h's channel (any thread). req is only read. Returns 0 when the
 * call ran (res->status says how it ended), -ENOMEM. Free res with sh_result_fini(). */
int sh_generate(struct sh *h, const Ferry__V1__GenerateRequest *req, const struct sh_read *rd,
		struct sh_result *res);
void sh_result_fini(struct sh_result *res);

/* Checks a finished OK greedy result of prompt[n_prompt] against the fake model: tokens,
 * and with return_logits every row's every value. Returns 0, or -1 with why in err. */
int sh_check(const struct sh *h, const int32_t *prompt, int n_prompt, bool return_logits,
	     const struct sh_result *res, struct fr_error *err);

#endif
