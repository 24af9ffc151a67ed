/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_inference.c - Tokenize, Detokenize and ModelInfo (coordinator/inference.c) on a bare
 * rpc server on 127.0.0.1 (ephemeral port), called with rpc_unary like any client:
 *   test_inference tokenize    ids == model_tokenizer_encode, add_bos, size limit
 *   test_inference detokenize  text, skip_special, U+FFFD repair, ids out of range
 *   test_inference notok       a model without tokenizer.json: FAILED_PRECONDITION
 *   test_inference modelinfo   config_json round-trips, shape, presets, placement
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/inference.h"
#include "coordinator/text.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"
#include "tests/test.h"

static uint64_t g_rng;

struct fixture {
	struct model_config cfg;
	struct model_tokenizer *tok;
	struct co_inference_info info;
	struct rpc_server *srv;
	struct rpc_channel *ch;
};

static void fake_placement(void *ctx, Ferry__V1__PlacementSummary *ret)
{
	int *calls = ctx;

	(*calls)++;
	ret->epoch = 7;
	ret->workers = 3;
	ret->n_worker_slots = 3;
	ret->worker_slots = malloc(3 * sizeof(uint32_t));
	for (int i = 0; i < 3; i++)
		ret->worker_slots[i] = (uint32_t)(10 + i);
	ret->replicas = 2;
	ret->min_balancedness = 0.75;
}

static int g_placement_calls;

static void fixture_up(struct fixture *f, bool with_tokenizer)
{
	struct fr_error err = { { 0 } };
	char path[4096], target[64];
	const char *src = getenv("FERRY_SRC");

	memset(f, 0, sizeof(*f));
	model_preset_config(MODEL_PRESET_TINY, &f->cfg);
	if (with_tokenizer) {
		snprintf(path, sizeof(path), "%s/tests/data/tokenizer/tokenizer.json",
			 src ? src : ".");
		if (model_tokenizer_load(path, &f->tok, &err) < 0) {
			fprintf(stderr, "FAIL: %s\n", err.msg);
			exit(1);
		}
		/* As `ferryctl model gen --tokenizer` makes it. */
		f->cfg.vocab_size = model_tokenizer_vocab_size(f->tok);
		f->cfg.bos_token_id = model_tokenizer_bos(f->tok);
		f->cfg.eos_token_id = model_tokenizer_eos(f->tok);
	}
	f->info = (struct co_inference_info){ .cfg = &f->cfg, .tok = f->tok, .max_ctx = 1024,
					      .placement = fake_placement,
					      .placement_ctx = &g_placement_calls };
	if (rpc_server_create("127.0.0.1:0", NULL, &f->srv, &err) < 0 ||
	    rpc_server_add_method(f->srv, RPC_M_TOKENIZE, RPC_METHOD_UNARY,
				  &ferry__v1__tokenize_request__descriptor, co_handle_tokenize,
				  &f->info, &err) < 0 ||
	    rpc_server_add_method(f->srv, RPC_M_DETOKENIZE, RPC_METHOD_UNARY,
				  &ferry__v1__detokenize_request__descriptor,
				  co_handle_detokenize, &f->info, &err) < 0 ||
	    rpc_server_add_method(f->srv, RPC_M_MODEL_INFO, RPC_METHOD_UNARY,
				  &ferry__v1__model_info_request__descriptor,
				  co_handle_model_info, &f->info, &err) < 0 ||
	    rpc_server_start(f->srv, &err) < 0) {
		fprintf(stderr, "FAIL: server: %s\n", err.msg);
		exit(1);
	}
	snprintf(target, sizeof(target), "127.0.0.1:%d", rpc_server_port(f->srv));
	if (rpc_channel_create(target, NULL, &f->ch, &err) < 0) {
		fprintf(stderr, "FAIL: channel: %s\n", err.msg);
		exit(1);
	}
}

static void fixture_down(struct fixture *f)
{
	rpc_channel_destroy(f->ch);
	rpc_server_destroy(f->srv);
	model_tokenizer_free(f->tok);
}

static int tokenize(struct fixture *f, const char *text, bool add_bos,
		    Ferry__V1__TokenizeResponse **ret, struct fr_error *err)
{
	Ferry__V1__TokenizeRequest req = FERRY__V1__TOKENIZE_REQUEST__INIT;

	req.text = (char *)text;
	req.add_bos = add_bos;
	return rpc_unary(f->ch, RPC_M_TOKENIZE, &req.base,
			 &ferry__v1__tokenize_response__descriptor, 30000,
			 (ProtobufCMessage **)ret, err);
}

static int detokenize(struct fixture *f, const int32_t *ids, size_t n, bool skip,
		      Ferry__V1__DetokenizeResponse **ret, struct fr_error *err)
{
	Ferry__V1__DetokenizeRequest req = FERRY__V1__DETOKENIZE_REQUEST__INIT;

	req.tokens = (int32_t *)ids;
	req.n_tokens = n;
	req.skip_special_tokens = skip;
	return rpc_unary(f->ch, RPC_M_DETOKENIZE, &req.base,
			 &ferry__v1__detokenize_response__descriptor, 30000,
			 (ProtobufCMessage **)ret, err);
}

static void free_msg(void *m)
{
	if (m)
		protobuf_c_message_free_unpacked(m, NULL);
}

static int run_tokenize(void)
{
	static const char *texts[] = {
		"", "Hello, world!", "DeepSeekMoE routes tokens to fine-grained experts.",
		"\xE4\xB8\xAD\xE6\x96\x87 and emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D",
		"  leading spaces\n\ttabs\r\n", "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81"
		"sentence\xEF\xBD\x9C>literal special",
	};
	struct fixture f;
	struct fr_error err = { { 0 } };
	Ferry__V1__TokenizeResponse *r = NULL;

	fixture_up(&f, true);
	for (size_t i = 0; i < FR_ARRAY_SIZE(texts); i++) {
		for (int bos = 0; bos < 2; bos++) {
			int32_t *ids;
			size_t n;
			CHECK(model_tokenizer_encode(f.tok, texts[i], strlen(texts[i]), false, &ids,
						     &n) == 0);
			r = NULL;
			CHECK(tokenize(&f, texts[i], bos, &r, &err) == 0);
			if (!r) {
				fprintf(stderr, "  %s\n", err.msg);
				free(ids);
				continue;
			}
			CHECK(r->n_tokens == n + (size_t)bos);
			if (bos)
				CHECK(r->n_tokens >= 1 && r->tokens[0] == model_tokenizer_bos(f.tok));
			CHECK(r->n_tokens == n + (size_t)bos &&
			      (n == 0 || !memcmp(r->tokens + bos, ids, n * sizeof(*ids))));
			free(ids);
			free_msg(r);
		}
	}
	/* Over the limit: INVALID_ARGUMENT naming the limit; at the limit: fine. */
	{
		char *big = malloc(CO_TEXT_MAX_BYTES + 2);
		for (size_t i = 0; i <= CO_TEXT_MAX_BYTES; i++)
			big[i] = (char)('a' + (fr_splitmix64(&g_rng) % 26));
		big[CO_TEXT_MAX_BYTES + 1] = '\0';
		r = NULL;
		t_expect_err("tokenize 1 MiB + 1", tokenize(&f, big, false, &r, &err), -EINVAL,
			     &err, "INVALID_ARGUMENT: text is 1048577 bytes",
			     "over the 1048576-byte limit");
		CHECK(r == NULL);
		big[CO_TEXT_MAX_BYTES / 8] = '\0';
		CHECK(tokenize(&f, big, false, &r, &err) == 0 && r && r->n_tokens > 1000);
		free_msg(r);
		free(big);
	}
	/* co_text_to_ids directly: the same checks for Generate and Score. */
	{
		int32_t *ids;
		size_t n;
		CHECK(co_text_to_ids(&f.info, "abc", 3, true, &ids, &n, &err) == 0 && n >= 2 &&
		      ids[0] == model_tokenizer_bos(f.tok));
		free(ids);
		t_expect_err("check_ids", co_check_ids("prompt_tokens", (int32_t[]){ 1, 5, -2 }, 3,
						       10, &err),
			     -EINVAL, &err, "prompt_tokens[2] = -2 is out of range [0, 10)", NULL);
		CHECK(co_check_ids("x", (int32_t[]){ 0, 9 }, 2, 10, &err) == 0);
	}
	fixture_down(&f);
	return t_failures != 0;
}

static int run_detokenize(void)
{
	struct fixture f;
	struct fr_error err = { { 0 } };
	Ferry__V1__DetokenizeResponse *r = NULL;
	int vocab;

	fixture_up(&f, true);
	vocab = model_tokenizer_vocab_size(f.tok);
	/* Round trip of text. */
	{
		const char *text = "Mixture-of-Experts \xE2\x9C\x93 \xE4\xB8\xAD\xE6\x96\x87";
		int32_t *ids, *with;
		size_t n;
		CHECK(model_tokenizer_encode(f.tok, text, strlen(text), false, &ids, &n) == 0);
		CHECK(detokenize(&f, ids, n, false, &r, &err) == 0 && r && !strcmp(r->text, text));
		free_msg(r);
		/* BOS + text + EOS: kept, or skipped with skip_special_tokens. */
		with = malloc((n + 2) * sizeof(*with));
		with[0] = model_tokenizer_bos(f.tok);
		memcpy(with + 1, ids, n * sizeof(*ids));
		with[n + 1] = model_tokenizer_eos(f.tok);
		r = NULL;
		CHECK(detokenize(&f, with, n + 2, true, &r, &err) == 0 && r &&
		      !strcmp(r->text, text));
		free_msg(r);
		r = NULL;
		CHECK(detokenize(&f, with, n + 2, false, &r, &err) == 0 && r &&
		      strlen(r->text) > strlen(text) && strstr(r->text, text));
		free_msg(r);
		free(with);
		free(ids);
	}
	/* Ids that split a character: invalid UTF-8 comes back as U+FFFD (valid UTF-8), and
	 * so does the NUL byte (id 191 here), which a protobuf-c string cannot carry. */
	for (int k = 0; k < 50; k++) {
		int32_t ids[6];
		char *raw, *want;
		size_t rl, wl;
		for (int i = 0; i < 6; i++)
			ids[i] = (int32_t)(fr_splitmix64(&g_rng) % 256); /* byte-ish region */
		CHECK(model_tokenizer_decode(f.tok, ids, 6, false, &raw, &rl) == 0);
		CHECK(co_utf8_proto(raw, rl, &want, &wl) == 0);
		r = NULL;
		CHECK(detokenize(&f, ids, 6, false, &r, &err) == 0 && r &&
		      strlen(r->text) == wl && !memcmp(r->text, want, wl) &&
		      co_utf8_valid(r->text, wl));
		free_msg(r);
		free(raw);
		free(want);
	}
	{
		int32_t nul[3] = { 33310, 191, 33310 };
		r = NULL;
		CHECK(detokenize(&f, nul, 3, false, &r, &err) == 0 && r &&
		      !strcmp(r->text, "hello\xEF\xBF\xBDhello"));
		free_msg(r);
	}
	/* Out of range: INVALID_ARGUMENT naming index and value. */
	{
		int32_t bad[3] = { 1, 2, vocab };
		char want[96];
		snprintf(want, sizeof(want), "tokens[2] = %d is out of range [0, %d)", vocab, vocab);
		r = NULL;
		t_expect_err("detokenize out of range", detokenize(&f, bad, 3, false, &r, &err),
			     -EINVAL, &err, "INVALID_ARGUMENT", want);
		bad[0] = -7;
		t_expect_err("detokenize negative", detokenize(&f, bad, 3, false, &r, &err),
			     -EINVAL, &err, "tokens[0] = -7 is out of range", NULL);
		CHECK(r == NULL);
	}
	/* Empty: empty text. */
	r = NULL;
	CHECK(detokenize(&f, NULL, 0, false, &r, &err) == 0 && r && r->text[0] == '\0');
	free_msg(r);
	fixture_down(&f);
	return t_failures != 0;
}

static int run_notok(void)
{
	struct fixture f;
	struct fr_error err = { { 0 } };
	Ferry__V1__TokenizeResponse *t = NULL;
	Ferry__V1__DetokenizeResponse *d = NULL;
	int32_t ids[2] = { 1, 2 };
	int32_t *out;
	size_t n;

	fixture_up(&f, false);
	t_expect_err("tokenize without tokenizer", tokenize(&f, "hello", false, &t, &err), -ESTALE,
		     &err, "FAILED_PRECONDITION: model has no tokenizer.json, send token ids",
		     NULL);
	t_expect_err("detokenize without tokenizer", detokenize(&f, ids, 2, false, &d, &err),
		     -ESTALE, &err, "FAILED_PRECONDITION: model has no tokenizer.json", NULL);
	CHECK(t == NULL && d == NULL);
	t_expect_err("co_text_to_ids", co_text_to_ids(&f.info, "x", 1, false, &out, &n, &err),
		     -ESTALE, &err, CO_ERR_NO_TOKENIZER, NULL);
	CHECK(rpc_status_from_errno(-ESTALE) == GRPC_STATUS_FAILED_PRECONDITION);
	fixture_down(&f);
	return t_failures != 0;
}

static Ferry__V1__ModelInfoResponse *model_info(struct fixture *f)
{
	Ferry__V1__ModelInfoRequest req = FERRY__V1__MODEL_INFO_REQUEST__INIT;
	Ferry__V1__ModelInfoResponse *r = NULL;
	struct fr_error err = { { 0 } };

	if (rpc_unary(f->ch, RPC_M_MODEL_INFO, &req.base,
		      &ferry__v1__model_info_response__descriptor, 30000, (ProtobufCMessage **)&r,
		      &err) < 0) {
		fprintf(stderr, "FAIL: ModelInfo: %s\n", err.msg);
		t_failures++;
		return NULL;
	}
	return r;
}

static bool cfg_equal(const struct model_config *a, const struct model_config *b)
{
	return !strcmp(a->model_type, b->model_type) && a->vocab_size == b->vocab_size &&
	       a->hidden_size == b->hidden_size && a->intermediate_size == b->intermediate_size &&
	       a->moe_intermediate_size == b->moe_intermediate_size &&
	       a->num_hidden_layers == b->num_hidden_layers &&
	       a->num_attention_heads == b->num_attention_heads &&
	       a->num_key_value_heads == b->num_key_value_heads && a->head_dim == b->head_dim &&
	       a->n_routed_experts == b->n_routed_experts &&
	       a->n_shared_experts == b->n_shared_experts &&
	       a->num_experts_per_tok == b->num_experts_per_tok &&
	       a->first_k_dense_replace == b->first_k_dense_replace &&
	       a->moe_layer_freq == b->moe_layer_freq &&
	       a->max_position_embeddings == b->max_position_embeddings &&
	       a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
	       a->norm_topk_prob == b->norm_topk_prob && a->attention_bias == b->attention_bias &&
	       a->tie_word_embeddings == b->tie_word_embeddings &&
	       a->scoring_func == b->scoring_func &&
	       a->routed_scaling_factor == b->routed_scaling_factor &&
	       a->has_expert_bias == b->has_expert_bias && a->bos_token_id == b->bos_token_id &&
	       a->eos_token_id == b->eos_token_id && a->torch_dtype == b->torch_dtype;
}

static int run_modelinfo(void)
{
	struct fixture f;
	struct fr_error err = { { 0 } };
	Ferry__V1__ModelInfoResponse *r;
	struct model_config back;

	fixture_up(&f, true);
	r = model_info(&f);
	if (!r)
		return 1;
	printf("config_json: %zu bytes, preset '%s', max_context %u\n", strlen(r->config_json),
	       r->preset, r->max_context);
	CHECK(model_config_parse(r->config_json, strlen(r->config_json), &back, &err) == 0);
	CHECK(cfg_equal(&back, &f.cfg));
	CHECK(!strcmp(r->model_type, "deepseek"));
	CHECK(r->vocab_size == (uint32_t)f.cfg.vocab_size && r->vocab_size > 100000);
	CHECK(r->hidden_size == 128 && r->num_hidden_layers == 4 && r->moe_layers == 3);
	CHECK(r->n_routed_experts == 16 && r->num_experts_per_tok == 4 &&
	      r->n_shared_experts == 2);
	CHECK(r->max_context == 1024);                /* min(server's, config's 2048) */
	CHECK(r->has_tokenizer);
	CHECK(!strcmp(r->preset, "tiny"));            /* vocab from a tokenizer still matches */
	CHECK(r->n_presets == 4 && !strcmp(r->presets[0], "tiny") &&
	      !strcmp(r->presets[3], "145b"));
	CHECK(r->placement && r->placement->epoch == 7 && r->placement->workers == 3 &&
	      r->placement->n_worker_slots == 3 && r->placement->worker_slots[2] == 12 &&
	      r->placement->replicas == 2 && r->placement->min_balancedness == 0.75);
	CHECK(g_placement_calls == 1);
	free_msg(r);

	/* The matcher: every preset matches itself, trimmed layers too; changed shapes don't. */
	for (int p = 0; p < MODEL_PRESET__COUNT; p++) {
		struct model_config c;
		model_preset_config((enum model_preset)p, &c);
		CHECK(model_gen_preset_match(&c) &&
		      !strcmp(model_gen_preset_match(&c), model_preset_name((enum model_preset)p)));
		c.num_hidden_layers = 1;
		c.first_k_dense_replace = 1;
		c.torch_dtype = KN_DTYPE_F32;
		CHECK(model_gen_preset_match(&c) &&
		      !strcmp(model_gen_preset_match(&c), model_preset_name((enum model_preset)p)));
		c.hidden_size += 2;
		CHECK(model_gen_preset_match(&c) == NULL);
	}
	/* A server context below nothing: the config's; no tokenizer, no placement, no preset. */
	f.info.max_ctx = 0;
	f.info.tok = NULL;
	f.info.placement = NULL;
	f.cfg.num_experts_per_tok = 3;
	r = model_info(&f);
	if (r) {
		CHECK(r->max_context == 2048 && !r->has_tokenizer && !r->placement);
		CHECK(r->preset && r->preset[0] == '\0');
		CHECK(r->num_experts_per_tok == 3);
		free_msg(r);
	}
	fixture_down(&f);
	return t_failures != 0;
}

int main(int argc, char **argv)
{
	g_rng = t_seed();
	if (argc == 2 && !strcmp(argv[1], "tokenize"))
		return run_tokenize();
	if (argc == 2 && !strcmp(argv[1], "detokenize"))
		return run_detokenize();
	if (argc == 2 && !strcmp(argv[1], "notok"))
		return run_notok();
	if (argc == 2 && !strcmp(argv[1], "modelinfo"))
		return run_modelinfo();
	fprintf(stderr, "usage: test_inference tokenize|detokenize|notok|modelinfo\n");
	return 2;
}
