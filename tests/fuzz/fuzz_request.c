/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_request.c - the ferry.v1.Inference requests as the coordinator receives them, from
 * untrusted bytes. Every input is unpacked as GenerateRequest, ScoreRequest,
 * TokenizeRequest, DetokenizeRequest and ModelInfoRequest in turn; each message that
 * unpacks must
 *   1. pass protobuf_c_message_check() and re-pack into bytes that unpack again and pack
 *      to the very same bytes (a stable round trip: what the server would echo or log);
 *   2. (Generate, Score; built with the serving library) go through the server's own
 *      validation, co_generate_validate() / co_score_validate() from coordinator/serving.h,
 *      against the tiny preset's shape twice: without a tokenizer (max_ctx 2048) and with
 *      tests/data/tokenizer/tokenizer.json (max_ctx 64). A refusal must name its reason
 *      and leave no ids behind; an accepted request must satisfy the scheduler's contract:
 *      ids in [0, vocab), 1 <= prompt <= max_ctx, prompt + max_new <= max_ctx, finite
 *      sampling parameters in range, k + r routed experts within the model's.
 *
 * THE HOOK: the validators are linked when meson found the serving library (co_server_dep:
 * gRPC and libsystemd); tests/rpc/meson.build then defines FERRY_FUZZ_SERVING. Their
 * expected signatures are the ones in coordinator/serving.h:
 *   int co_generate_validate(const struct co_serving *sv, const Ferry__V1__GenerateRequest *r,
 *                            struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err);
 *   int co_score_validate(const struct co_serving *sv, const Ferry__V1__ScoreRequest *r,
 *                         struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err);
 * returning 0, -EINVAL, -ENOTSUP (text without a tokenizer) or -ENOMEM, never touching
 * sv->sched. Without them only step 1 runs.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/inference.pb-c.h"

#ifdef FERRY_FUZZ_SERVING
#include "coordinator/serving.h"
#include "model/model.h"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const requests[] = {
	&ferry__v1__generate_request__descriptor,
	&ferry__v1__score_request__descriptor,
	&ferry__v1__tokenize_request__descriptor,
	&ferry__v1__detokenize_request__descriptor,
	&ferry__v1__model_info_request__descriptor,
};

/* pack(m) unpacks again, and packs to the same bytes. Unknown fields are carried through
 * as they came, with one exception that keeps them out of the strict check: protobuf-c
 * accepts a non-minimal varint tag of field number 0 ("80 00") as an unknown field, packs
 * it back minimal ("00"), and then refuses that. */
static void round_trip(const ProtobufCMessage *m)
{
	size_t n1 = protobuf_c_message_get_packed_size(m);
	uint8_t *b1 = malloc(n1 ? n1 : 1);
	if (!b1)
		return;
	assert(protobuf_c_message_pack(m, b1) == n1);
	ProtobufCMessage *m2 = protobuf_c_message_unpack(m->descriptor, NULL, n1, b1);
	if (m->n_unknown_fields && !m2) {
		free(b1);
		return;
	}
	assert(m2);
	assert(protobuf_c_message_check(m2));
	size_t n2 = protobuf_c_message_get_packed_size(m2);
	assert(n2 == n1);
	uint8_t *b2 = malloc(n2 ? n2 : 1);
	if (b2) {
		assert(protobuf_c_message_pack(m2, b2) == n2);
		assert(memcmp(b1, b2, n1) == 0);
		free(b2);
	}
	protobuf_c_message_free_unpacked(m2, NULL);
	free(b1);
}

#ifdef FERRY_FUZZ_SERVING

struct serving_case {
	struct model_config cfg;
	struct co_serving sv;
};

static struct serving_case cases[2];
static int n_cases;

static void setup(void)
{
	static struct model_tokenizer *tok;
	char path[4096];
	const char *src = getenv("FERRY_SRC");
	struct fr_error err = { { 0 } };

	/* Without a tokenizer: text is refused, ids are checked against the tiny vocab. */
	model_preset_config(MODEL_PRESET_TINY, &cases[0].cfg);
	cases[0].sv = (struct co_serving){ .cfg = &cases[0].cfg, .tok = NULL,
					   .max_ctx = cases[0].cfg.max_position_embeddings,
					   .default_max_tokens = 256 };
	n_cases = 1;
	/* With the test tokenizer and a small context: text prompts are tokenized. */
	snprintf(path, sizeof(path), "%s/tests/data/tokenizer/tokenizer.json", src ? src : ".");
	if (model_tokenizer_load(path, &tok, &err) == 0) {
		model_preset_config(MODEL_PRESET_TINY, &cases[1].cfg);
		cases[1].cfg.vocab_size = model_tokenizer_vocab_size(tok);
		cases[1].sv = (struct co_serving){ .cfg = &cases[1].cfg, .tok = tok, .max_ctx = 64,
						   .default_max_tokens = 16 };
		n_cases = 2;
	} else {
		fprintf(stderr, "fuzz_request: %s: no tokenizer case (%s)\n", path, err.msg);
	}
}

static void check_refusal(int rc, const int32_t *ids, const struct fr_error *err)
{
	assert(rc == -EINVAL || rc == -ENOTSUP || rc == -ENOMEM);
	assert(ids == NULL);
	assert(err->msg[0] != '\0');
}

static void check_common(const struct co_serving *sv, const struct co_req_spec *s)
{
	const struct model_config *c = sv->cfg;

	assert(s->n_prompt >= 1 && s->n_prompt <= sv->max_ctx);
	assert(s->prompt != NULL);
	for (int i = 0; i < s->n_prompt; i++)
		assert(s->prompt[i] >= 0 && s->prompt[i] < c->vocab_size);
	int k = s->knobs.top_k ? s->knobs.top_k : c->num_experts_per_tok;
	assert(s->knobs.top_k >= 0 && s->knobs.mask_top >= 0);
	assert(k + s->knobs.mask_top <= c->n_routed_experts);
}

static void validate_generate(const Ferry__V1__GenerateRequest *r)
{
	for (int i = 0; i < n_cases; i++) {
		const struct co_serving *sv = &cases[i].sv;
		struct fr_error err = { { 0 } };
		struct co_req_spec s;
		int32_t *ids = (int32_t *)1; /* must be reset by the validator */
		int rc = co_generate_validate(sv, r, &s, &ids, &err);
		if (rc < 0) {
			check_refusal(rc, ids, &err);
			continue;
		}
		assert(rc == 0);
		assert(s.kind == CO_REQ_GENERATE);
		check_common(sv, &s);
		assert(s.max_new >= 1 && s.n_prompt + s.max_new <= sv->max_ctx);
		assert(isfinite(s.sample.temperature) && s.sample.temperature >= 0);
		assert(isfinite(s.sample.top_p) && s.sample.top_p > 0 && s.sample.top_p <= 1);
		assert(s.sample.top_k >= 0 && s.sample.top_k <= sv->cfg->vocab_size);
		assert(isfinite(s.sample.rep_penalty) && s.sample.rep_penalty >= 0 &&
		       s.sample.rep_penalty <= 10);
		assert(s.priority >= 0 && s.priority <= 9);
		assert(s.n_stop_ids >= 0 && (s.n_stop_ids == 0 || s.stop_ids));
		for (int j = 0; j < s.n_stop_ids; j++)
			assert(s.stop_ids[j] >= 0 && s.stop_ids[j] < sv->cfg->vocab_size);
		/* Text prompts come back tokenized in ids; token prompts point into r. */
		assert(!ids || s.prompt == ids);
		free(ids);
	}
}

static void validate_score(const Ferry__V1__ScoreRequest *r)
{
	for (int i = 0; i < n_cases; i++) {
		const struct co_serving *sv = &cases[i].sv;
		struct fr_error err = { { 0 } };
		struct co_req_spec s;
		int32_t *ids = (int32_t *)1;
		int rc = co_score_validate(sv, r, &s, &ids, &err);
		if (rc < 0) {
			check_refusal(rc, ids, &err);
			continue;
		}
		assert(rc == 0);
		assert(s.kind == CO_REQ_SCORE);
		check_common(sv, &s);
		assert(s.n_prompt >= 2);
		assert(!ids || s.prompt == ids);
		free(ids);
	}
}
#endif /* FERRY_FUZZ_SERVING */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy, so reads past the end are caught by ASan. */
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf)
		return 0;
	memcpy(buf, data, size);
#ifdef FERRY_FUZZ_SERVING
	if (!n_cases)
		setup();
#endif
	for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
		ProtobufCMessage *m = protobuf_c_message_unpack(requests[i], NULL, size, buf);
		if (!m)
			continue;
		assert(protobuf_c_message_check(m));
		round_trip(m);
#ifdef FERRY_FUZZ_SERVING
		if (requests[i] == &ferry__v1__generate_request__descriptor)
			validate_generate((const Ferry__V1__GenerateRequest *)m);
		else if (requests[i] == &ferry__v1__score_request__descriptor)
			validate_score((const Ferry__V1__ScoreRequest *)m);
#endif
		protobuf_c_message_free_unpacked(m, NULL);
	}
	free(buf);
	return 0;
}
