/* SPDX-License-Identifier: Apache-2.0 */
/*
 * openai.h - the OpenAI-compatible HTTP API ([http] listen): POST /v1/completions and
 * GET /v1/models over libmicrohttpd, mapped onto the same scheduler and the same Generate
 * path as gRPC (co_generate_run()), with OpenAI-style JSON errors and server-sent events
 * for stream=true. Bearer-token auth when [http] api_key_file is set.
 *
 * The request parser is separate (co_openai_parse_completion()) so that the fuzzer runs it
 * on arbitrary bytes.
 */
#ifndef FERRY_COORDINATOR_OPENAI_H
#define FERRY_COORDINATOR_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "coordinator/serving.h"
#include "rpc/inference.pb-c.h"

/* A POST /v1/completions body, parsed. gen is what co_generate_run() takes (the strings
 * and arrays it points to are owned here); the rest is how to answer. */
struct co_openai_completion {
	Ferry__V1__GenerateRequest gen;
	char *model;             /* as the client named it (NULL: not given) */
	bool stream;
	bool include_usage;      /* stream_options.include_usage */
};

/* Bodies larger than this are refused (413) before parsing. */
#define CO_OPENAI_MAX_BODY (4u << 20)

/*
 * Parses a completions request. Supported: model, prompt (a string, an array of token ids,
 * or an array of one of those), max_tokens (default 16), temperature (default 1, 0 =
 * greedy), top_p, seed, stop (a string or up to 16 strings), stream, stream_options
 * {include_usage}, n = 1, echo = false, logprobs = null/0, best_of = 1, presence_penalty
 * and frequency_penalty = 0, logit_bias empty, suffix null, user (ignored); and vLLM's
 * extensions top_k, repetition_penalty, ignore_eos. Anything else, or a value of the wrong
 * type, is refused: -EINVAL with err naming the field (ret_param[CO_OPENAI_PARAM_MAX]
 * receives its name for the error's "param", "" when none). On success *ret is filled
 * (co_openai_completion_fini()).
 */
#define CO_OPENAI_PARAM_MAX 64
int co_openai_parse_completion(const char *body, size_t len, struct co_openai_completion *ret,
			       char *ret_param, struct fr_error *err);
void co_openai_completion_fini(struct co_openai_completion *c);

struct co_openai_opts {
	const char *listen;        /* "host:port" (port 0: any), or "unix:/path" */
	const char *model_id;      /* what /v1/models lists and "model" must name */
	const uint8_t *api_key;    /* NULL: no auth */
	size_t api_key_len;
};

struct co_openai;

/* Serves on o->listen; sv must outlive it. Errors: -EINVAL (address), -errno from
 * binding, err naming the address. */
int co_openai_start(const struct co_openai_opts *o, struct co_serving *sv,
		    struct co_openai **ret, struct fr_error *err);
int co_openai_port(const struct co_openai *h);
/* Stops accepting and waits for the requests in progress. Accepts NULL. */
void co_openai_stop(struct co_openai *h);

#endif /* FERRY_COORDINATOR_OPENAI_H */
