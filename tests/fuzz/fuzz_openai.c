/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_openai.c - POST /v1/completions bodies from untrusted bytes through
 * co_openai_parse_completion() (coordinator/openai.h): never crashes or leaks; a refusal
 * names its reason (and leaves nothing allocated); an accepted body gives exactly one
 * prompt (text without NUL, or >= 1 token ids >= 0), max_tokens >= 1, temperature in
 * [0, 2], top_p in [0, 1], at most 16 non-empty stop strings, text asked for, and
 * stream_options only with stream.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "coordinator/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct co_openai_completion c;
	struct fr_error err = { { 0 } };
	char param[CO_OPENAI_PARAM_MAX];
	int rc;

	rc = co_openai_parse_completion((const char *)data, size, &c, param, &err);
	if (rc < 0) {
		assert(rc == -EINVAL || rc == -ENOMEM);
		assert(err.msg[0] != '\0');
		assert(strlen(param) < CO_OPENAI_PARAM_MAX);
		return 0;
	}
	const Ferry__V1__GenerateRequest *g = &c.gen;
	bool text = g->prompt && g->prompt[0];
	assert(text != (g->n_prompt_tokens > 0));
	for (size_t i = 0; i < g->n_prompt_tokens; i++)
		assert(g->prompt_tokens[i] >= 0);
	assert(g->max_tokens >= 1);
	assert(isfinite(g->temperature) && g->temperature >= 0 && g->temperature <= 2);
	assert(isfinite(g->top_p) && g->top_p >= 0 && g->top_p <= 1);
	assert(g->n_stop <= CO_MAX_STOP_STRINGS);
	for (size_t i = 0; i < g->n_stop; i++)
		assert(g->stop[i] && g->stop[i][0] && strlen(g->stop[i]) <= CO_MAX_STOP_LEN);
	assert(g->return_text);
	assert(!c.include_usage || c.stream);
	co_openai_completion_fini(&c);
	return 0;
}
