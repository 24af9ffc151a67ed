/* SPDX-License-Identifier: Apache-2.0 */
/* openai_req.c - POST /v1/completions bodies into GenerateRequests (openai.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "coordinator/openai.h"

#define BAD(field, ...)                                                                     \
	do {                                                                                \
		snprintf(ret_param, CO_OPENAI_PARAM_MAX, "%s", (field));                    \
		rc = fr_error_set(err, -EINVAL, __VA_ARGS__);                               \
		goto fail;                                                                  \
	} while (0)

void co_openai_completion_fini(struct co_openai_completion *c)
{
	Ferry__V1__GenerateRequest *g = &c->gen;

	free(g->prompt_tokens);
	if (g->prompt != protobuf_c_empty_string)
		free(g->prompt);
	for (size_t i = 0; i < g->n_stop; i++)
		free(g->stop[i]);
	free(g->stop);
	free(c->model);
	memset(c, 0, sizeof(*c));
	ferry__v1__generate_request__init(&c->gen);
}

/* A JSON number that is an integer in [lo, hi]. */
static bool int_in(const json_t *v, long long lo, long long hi, long long *ret)
{
	double d;

	if (json_is_integer(v)) {
		*ret = json_integer_value(v);
	} else if (json_is_real(v)) {
		d = json_real_value(v);
		if (!(d == floor(d)) || d < -9e18 || d > 9e18)
			return false;
		*ret = (long long)d;
	} else {
		return false;
	}
	return *ret >= lo && *ret <= hi;
}

static bool num(const json_t *v, double *ret)
{
	if (!json_is_number(v))
		return false;
	*ret = json_number_value(v);
	return isfinite(*ret);
}

static int tokens_of(const json_t *a, int32_t **ret, size_t *n, struct fr_error *err)
{
	size_t i, len = json_array_size(a);
	json_t *v;

	if (len == 0)
		return fr_error_set(err, -EINVAL, "prompt: an empty array of token ids");
	*ret = malloc(sizeof(**ret) * len);
	if (!*ret)
		return fr_error_set(err, -ENOMEM, "out of memory");
	json_array_foreach(a, i, v) {
		long long t;
		if (!int_in(v, 0, INT32_MAX, &t)) {
			free(*ret);
			*ret = NULL;
			return fr_error_set(err, -EINVAL, "prompt[%zu]: token ids are integers >= 0",
					    i);
		}
		(*ret)[i] = (int32_t)t;
	}
	*n = len;
	return 0;
}

int co_openai_parse_completion(const char *body, size_t len, struct co_openai_completion *ret,
			       char *ret_param, struct fr_error *err)
{
	static const char *const known[] = {
		"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
		"stream_options", "n", "echo", "logprobs", "best_of", "presence_penalty",
		"frequency_penalty", "logit_bias", "suffix", "user", "top_k", "repetition_penalty",
		"ignore_eos",
	};
	struct co_openai_completion c = { 0 };
	Ferry__V1__GenerateRequest *g = &c.gen;
	json_error_t je;
	json_t *root, *v;
	const char *key;
	long long ll;
	double d;
	int rc;

	ret_param[0] = '\0';
	ferry__v1__generate_request__init(g);
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return fr_error_set(err, -EINVAL, "the body is not JSON: %s (line %d, column %d)",
				    je.text, je.line, je.column);
	if (!json_is_object(root)) {
		json_decref(root);
		return fr_error_set(err, -EINVAL, "the body must be a JSON object");
	}
	json_object_foreach(root, key, v) {
		bool ok = false;
		for (size_t i = 0; i < FR_ARRAY_SIZE(known) && !ok; i++)
			ok = strcmp(key, known[i]) == 0;
		if (!ok)
			BAD(key, "unrecognized request argument supplied: %.64s", key);
	}

	if ((v = json_object_get(root, "model")) && !json_is_null(v)) {
		if (!json_is_string(v))
			BAD("model", "model must be a string");
		if (!(c.model = strdup(json_string_value(v))))
			goto enomem;
	}

	/* prompt: "text", [ids], ["text"] or [[ids]] (one prompt per request) */
	v = json_object_get(root, "prompt");
	if (json_is_array(v) && json_array_size(v) == 1 &&
	    (json_is_string(json_array_get(v, 0)) || json_is_array(json_array_get(v, 0))))
		v = json_array_get(v, 0);
	if (json_is_string(v)) {
		if (json_string_length(v) == 0)
			BAD("prompt", "prompt is empty");
		if (strlen(json_string_value(v)) != json_string_length(v))
			BAD("prompt", "prompt contains a NUL character");
		if (!(g->prompt = strdup(json_string_value(v))))
			goto enomem;
	} else if (json_is_array(v)) {
		json_t *first = json_array_get(v, 0);
		if (json_is_string(first) || json_is_array(first))
			BAD("prompt", "only one prompt per request (got %zu)", json_array_size(v));
		if ((rc = tokens_of(v, &g->prompt_tokens, &g->n_prompt_tokens, err)) < 0) {
			snprintf(ret_param, CO_OPENAI_PARAM_MAX, "prompt");
			goto fail;
		}
	} else {
		BAD("prompt", "prompt is required: a string or an array of token ids");
	}

	g->max_tokens = 16; /* OpenAI's default */
	if ((v = json_object_get(root, "max_tokens")) && !json_is_null(v)) {
		if (!int_in(v, 1, UINT32_MAX, &ll))
			BAD("max_tokens", "max_tokens must be an integer >= 1");
		g->max_tokens = (uint32_t)ll;
	}
	g->temperature = 1.0f; /* OpenAI's default */
	if ((v = json_object_get(root, "temperature")) && !json_is_null(v)) {
		if (!num(v, &d) || d < 0 || d > 2)
			BAD("temperature", "temperature must be a number in [0, 2]");
		g->temperature = (float)d;
	}
	if ((v = json_object_get(root, "top_p")) && !json_is_null(v)) {
		if (!num(v, &d) || d <= 0 || d > 1)
			BAD("top_p", "top_p must be a number in (0, 1]");
		g->top_p = (float)d;
	}
	if ((v = json_object_get(root, "seed")) && !json_is_null(v)) {
		if (!int_in(v, LLONG_MIN, LLONG_MAX, &ll))
			BAD("seed", "seed must be an integer");
		g->seed = (uint64_t)ll;
	}
	if ((v = json_object_get(root, "top_k")) && !json_is_null(v)) {
		if (!int_in(v, -1, UINT32_MAX, &ll))
			BAD("top_k", "top_k must be an integer >= -1 (-1 or 0: no limit)");
		g->top_k = ll < 0 ? 0 : (uint32_t)ll;
	}
	if ((v = json_object_get(root, "repetition_penalty")) && !json_is_null(v)) {
		if (!num(v, &d) || d <= 0 || d > 10)
			BAD("repetition_penalty", "repetition_penalty must be a number in (0, 10]");
		g->repetition_penalty = (float)d;
	}
	if ((v = json_object_get(root, "ignore_eos")) && !json_is_null(v)) {
		if (!json_is_boolean(v))
			BAD("ignore_eos", "ignore_eos must be true or false");
		g->ignore_eos = json_is_true(v);
	}

	if ((v = json_object_get(root, "stop")) && !json_is_null(v)) {
		size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : 0;
		if (!json_is_string(v) && !json_is_array(v))
			BAD("stop", "stop must be a string or an array of strings");
		if (n > CO_MAX_STOP_STRINGS)
			BAD("stop", "stop: at most %d strings (got %zu)", CO_MAX_STOP_STRINGS, n);
		if (n && !(g->stop = calloc(n, sizeof(*g->stop))))
			goto enomem;
		for (size_t i = 0; i < n; i++) {
			json_t *s = json_is_string(v) ? v : json_array_get(v, i);
			if (!json_is_string(s) || json_string_length(s) == 0 ||
			    json_string_length(s) > CO_MAX_STOP_LEN ||
			    strlen(json_string_value(s)) != json_string_length(s))
				BAD("stop", "stop[%zu] must be a string of 1 to %d bytes without NUL",
				    i, CO_MAX_STOP_LEN);
			if (!(g->stop[i] = strdup(json_string_value(s))))
				goto enomem;
			g->n_stop = i + 1;
		}
	}

	if ((v = json_object_get(root, "stream")) && !json_is_null(v)) {
		if (!json_is_boolean(v))
			BAD("stream", "stream must be true or false");
		c.stream = json_is_true(v);
	}
	if ((v = json_object_get(root, "stream_options")) && !json_is_null(v)) {
		json_t *u = json_object_get(v, "include_usage");
		if (!json_is_object(v) || json_object_size(v) != (u ? 1u : 0u) ||
		    (u && !json_is_boolean(u)))
			BAD("stream_options", "stream_options may only hold include_usage: a boolean");
		if (!c.stream)
			BAD("stream_options", "stream_options is only allowed with stream: true");
		c.include_usage = json_is_true(u);
	}

	/* What this server does one way only: refused unless it asks for that way. */
	if ((v = json_object_get(root, "n")) && !json_is_null(v) && !(int_in(v, 1, 1, &ll)))
		BAD("n", "n: only 1 completion per request is supported");
	if ((v = json_object_get(root, "best_of")) && !json_is_null(v) && !(int_in(v, 1, 1, &ll)))
		BAD("best_of", "best_of: only 1 is supported");
	if ((v = json_object_get(root, "echo")) && !json_is_null(v) && !json_is_false(v))
		BAD("echo", "echo is not supported");
	if ((v = json_object_get(root, "logprobs")) && !json_is_null(v) &&
	    !(int_in(v, 0, 0, &ll)))
		BAD("logprobs", "logprobs is not supported (Ferry's Score method gives them)");
	if ((v = json_object_get(root, "suffix")) && !json_is_null(v))
		BAD("suffix", "suffix is not supported");
	if ((v = json_object_get(root, "logit_bias")) && !json_is_null(v) &&
	    !(json_is_object(v) && json_object_size(v) == 0))
		BAD("logit_bias", "logit_bias is not supported");
	for (int i = 0; i < 2; i++) {
		const char *k = i ? "frequency_penalty" : "presence_penalty";
		if ((v = json_object_get(root, k)) && !json_is_null(v) &&
		    !(num(v, &d) && d == 0))
			BAD(k, "%s is not supported (repetition_penalty is)", k);
	}
	if ((v = json_object_get(root, "user")) && !json_is_null(v) && !json_is_string(v))
		BAD("user", "user must be a string");

	g->return_text = true;
	json_decref(root);
	*ret = c;
	return 0;
enomem:
	rc = fr_error_set(err, -ENOMEM, "out of memory");
fail:
	json_decref(root);
	co_openai_completion_fini(&c);
	return rc;
}
