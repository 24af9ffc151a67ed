/* SPDX-License-Identifier: Apache-2.0 */
/* test_config.c - config.json parsing: the golden configs, HF defaults, the MoE layer
 * helpers and a table of bad configs that must each be refused naming the field. */
#include <jansson.h>
#include <math.h>

#include "model_test.h"

/* A valid MoE config (tiny-a's shape) that the bad cases patch. */
static const char base_cfg[] =
	"{\"model_type\": \"deepseek\", \"vocab_size\": 512, \"hidden_size\": 128,"
	" \"intermediate_size\": 256, \"moe_intermediate_size\": 64, \"num_hidden_layers\": 4,"
	" \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"n_routed_experts\": 16,"
	" \"n_shared_experts\": 2, \"num_experts_per_tok\": 4, \"first_k_dense_replace\": 1,"
	" \"moe_layer_freq\": 1, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0,"
	" \"hidden_act\": \"silu\", \"rope_scaling\": null, \"attention_bias\": false,"
	" \"bos_token_id\": 0, \"eos_token_id\": 1, \"torch_dtype\": \"float32\","
	" \"some_unknown_key\": {\"nested\": [1, 2, 3]}}";

static int parse_patched(const char *patch, struct model_config *cfg, struct fr_error *err)
{
	json_t *base = json_loads(base_cfg, 0, NULL), *p = json_loads(patch, 0, NULL);
	char *text;
	int rc;

	if (!base || !p) {
		fprintf(stderr, "bad test patch %s\n", patch);
		exit(1);
	}
	json_object_update(base, p);
	text = json_dumps(base, 0);
	rc = model_config_parse(text, strlen(text), cfg, err);
	free(text);
	json_decref(base);
	json_decref(p);
	return rc;
}

static void test_golden(void)
{
	struct model_config c;
	struct fr_error err = { { 0 } };
	char buf[4096];
	const char *dir;

	dir = t_golden("tiny-a", buf, sizeof(buf));
	if (!dir) {
		printf("skip golden tiny-a: FERRY_GOLDEN not set or missing\n");
	} else {
		int rc = model_config_load(dir, &c, &err);
		if (rc < 0)
			fprintf(stderr, "tiny-a: %s\n", err.msg);
		CHECK(rc == 0);
		CHECK(!strcmp(c.model_type, "deepseek"));
		CHECK(c.vocab_size == 512 && c.hidden_size == 128 && c.intermediate_size == 256);
		CHECK(c.moe_intermediate_size == 64 && c.num_hidden_layers == 4);
		CHECK(c.num_attention_heads == 4 && c.num_key_value_heads == 4 && c.head_dim == 32);
		CHECK(c.n_routed_experts == 16 && c.n_shared_experts == 2);
		CHECK(c.num_experts_per_tok == 4 && c.first_k_dense_replace == 1);
		CHECK(c.moe_layer_freq == 1 && c.max_position_embeddings == 512);
		CHECK(c.rms_norm_eps == 1e-6 && c.rope_theta == 10000.0);
		CHECK(!c.norm_topk_prob && !c.attention_bias && !c.tie_word_embeddings);
		CHECK(c.scoring_func == KN_SCORING_SOFTMAX && c.routed_scaling_factor == 1.0);
		CHECK(!c.has_expert_bias && c.bos_token_id == 0 && c.eos_token_id == 1);
		CHECK(c.torch_dtype == KN_DTYPE_F32);
		CHECK(model_n_moe_layers(&c) == 3);
		CHECK(!model_layer_is_moe(&c, 0) && model_layer_is_moe(&c, 1) &&
		      model_layer_is_moe(&c, 3));
		CHECK(model_moe_index(&c, 0) == -1 && model_moe_index(&c, 1) == 0 &&
		      model_moe_index(&c, 3) == 2);
	}

	dir = t_golden("tiny-b", buf, sizeof(buf));
	if (!dir) {
		printf("skip golden tiny-b: FERRY_GOLDEN not set or missing\n");
	} else {
		int rc = model_config_load(dir, &c, &err);
		if (rc < 0)
			fprintf(stderr, "tiny-b: %s\n", err.msg);
		CHECK(rc == 0);
		CHECK(c.vocab_size == 768 && c.hidden_size == 96 && c.intermediate_size == 200);
		CHECK(c.moe_intermediate_size == 40 && c.num_hidden_layers == 4);
		CHECK(c.num_attention_heads == 3 && c.num_key_value_heads == 3 && c.head_dim == 32);
		CHECK(c.n_routed_experts == 24 && c.n_shared_experts == 1);
		CHECK(c.num_experts_per_tok == 3 && c.first_k_dense_replace == 1);
		CHECK(c.max_position_embeddings == 512 && c.torch_dtype == KN_DTYPE_BF16);
		CHECK(c.scoring_func == KN_SCORING_SOFTMAX && !c.norm_topk_prob);
		CHECK(model_n_moe_layers(&c) == 3);
	}

	CHECK(model_config_load("/nonexistent-ferry-dir", &c, &err) == -ENOENT);
	CHECK(strstr(err.msg, "config.json") != NULL);
}

static void test_defaults(void)
{
	static const char min[] =
		"{\"model_type\": \"deepseek\", \"vocab_size\": 100, \"hidden_size\": 64,"
		" \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
		" \"bos_token_id\": null}";
	struct model_config c;
	struct fr_error err = { { 0 } };
	int rc;

	memset(&c, 0x5a, sizeof(c));
	rc = model_config_parse(min, sizeof(min) - 1, &c, &err);
	if (rc < 0)
		fprintf(stderr, "defaults: %s\n", err.msg);
	CHECK(rc == 0);
	CHECK(c.num_key_value_heads == 4 && c.head_dim == 16);
	CHECK(c.n_routed_experts == 0 && c.n_shared_experts == 0 && c.num_experts_per_tok == 0);
	CHECK(c.first_k_dense_replace == 0 && c.moe_layer_freq == 1);
	CHECK(c.max_position_embeddings == 2048);
	CHECK(c.rms_norm_eps == 1e-6 && c.rope_theta == 10000.0);
	CHECK(!c.norm_topk_prob && !c.tie_word_embeddings && !c.attention_bias);
	CHECK(c.scoring_func == KN_SCORING_SOFTMAX && c.routed_scaling_factor == 1.0);
	CHECK(!c.has_expert_bias && c.bos_token_id == -1 && c.eos_token_id == -1);
	CHECK(c.torch_dtype == KN_DTYPE_BF16);
	CHECK(model_n_moe_layers(&c) == 0 && !model_layer_is_moe(&c, 0));
	CHECK(model_moe_index(&c, 1) == -1);

	/* Not NUL-terminated: only len bytes may be read. */
	{
		char *copy = malloc(sizeof(min) - 1);
		memcpy(copy, min, sizeof(min) - 1);
		CHECK(model_config_parse(copy, sizeof(min) - 1, &c, &err) == 0);
		free(copy);
	}

	/* V3-style gating on the v1 architecture. */
	rc = parse_patched("{\"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\","
			   " \"routed_scaling_factor\": 2.5, \"norm_topk_prob\": true,"
			   " \"eos_token_id\": [7, 8], \"tie_word_embeddings\": true,"
			   " \"model_type\": \"deepseek_v3\", \"n_group\": 1, \"topk_group\": 1,"
			   " \"num_key_value_heads\": 2, \"torch_dtype\": \"float16\"}",
			   &c, &err);
	if (rc < 0)
		fprintf(stderr, "v3: %s\n", err.msg);
	CHECK(rc == 0);
	CHECK(c.scoring_func == KN_SCORING_SIGMOID && c.has_expert_bias);
	CHECK(c.routed_scaling_factor == 2.5 && c.norm_topk_prob && c.tie_word_embeddings);
	CHECK(c.eos_token_id == 7 && c.num_key_value_heads == 2 && c.torch_dtype == KN_DTYPE_F16);
	CHECK(!strcmp(c.model_type, "deepseek_v3"));

	/* MoE every other layer from layer 1: layers 2 and 4 of 6. */
	rc = parse_patched("{\"num_hidden_layers\": 6, \"moe_layer_freq\": 2}", &c, &err);
	CHECK(rc == 0);
	CHECK(model_n_moe_layers(&c) == 2);
	CHECK(model_moe_index(&c, 2) == 0 && model_moe_index(&c, 4) == 1);
	CHECK(model_moe_layer(&c, 0) == 2 && model_moe_layer(&c, 1) == 4);
	CHECK(model_moe_layer(&c, -1) == -1 && model_moe_layer(&c, 9) == -1);
	CHECK(model_moe_index(&c, 3) == -1 && model_moe_index(&c, 1) == -1);
	CHECK(model_moe_index(&c, -1) == -1 && model_moe_index(&c, 6) == -1);
	CHECK(!model_layer_is_moe(&c, 0) && !model_layer_is_moe(&c, 5));
}

static const struct bad {
	const char *patch; /* merged into base_cfg; null deletes a key */
	int rc;
	const char *n1, *n2;
} bad[] = {
	{ "{\"hidden_size\": null}", -EINVAL, "hidden_size", "missing" },
	{ "{\"vocab_size\": null}", -EINVAL, "vocab_size", "missing" },
	{ "{\"model_type\": null}", -EINVAL, "model_type", "missing" },
	{ "{\"model_type\": \"llama\"}", -ENOTSUP, "model_type", "llama" },
	{ "{\"model_type\": 7}", -EINVAL, "model_type", "string" },
	{ "{\"hidden_size\": \"128\"}", -EINVAL, "hidden_size", "integer" },
	{ "{\"hidden_size\": 128.0}", -EINVAL, "hidden_size", "integer" },
	{ "{\"hidden_size\": 2.5}", -EINVAL, "hidden_size", "integer" },
	{ "{\"hidden_size\": 0}", -EINVAL, "hidden_size", "range" },
	{ "{\"hidden_size\": -128}", -EINVAL, "hidden_size", "range" },
	{ "{\"hidden_size\": 100, \"num_attention_heads\": 3}", -EINVAL,
	  "hidden_size (100) is not a multiple of num_attention_heads (3)", NULL },
	{ "{\"hidden_size\": 12}", -EINVAL, "head_dim", "even" },
	{ "{\"num_key_value_heads\": 3}", -EINVAL, "num_key_value_heads (3)", NULL },
	{ "{\"num_key_value_heads\": 8}", -EINVAL, "num_key_value_heads (8)", NULL },
	{ "{\"num_key_value_heads\": 0}", -EINVAL, "num_key_value_heads", "range" },
	{ "{\"num_attention_heads\": true}", -EINVAL, "num_attention_heads", "integer" },
	{ "{\"vocab_size\": 1000000000}", -EINVAL, "vocab_size", "range" },
	{ "{\"intermediate_size\": 1000000000}", -EINVAL, "intermediate_size", "range" },
	{ "{\"num_hidden_layers\": 5000}", -EINVAL, "num_hidden_layers", "range" },
	{ "{\"num_hidden_layers\": 0}", -EINVAL, "num_hidden_layers", "range" },
	{ "{\"n_routed_experts\": 5000}", -EINVAL, "n_routed_experts", "range" },
	{ "{\"n_routed_experts\": -1}", -EINVAL, "n_routed_experts", "range" },
	{ "{\"num_experts_per_tok\": 17}", -EINVAL,
	  "num_experts_per_tok (17) > n_routed_experts (16)", NULL },
	{ "{\"num_experts_per_tok\": 0}", -EINVAL, "num_experts_per_tok", "range" },
	{ "{\"num_experts_per_tok\": null}", -EINVAL, "num_experts_per_tok", "missing" },
	{ "{\"moe_intermediate_size\": null}", -EINVAL, "moe_intermediate_size", "missing" },
	{ "{\"n_shared_experts\": -1}", -EINVAL, "n_shared_experts", "range" },
	{ "{\"n_shared_experts\": 64, \"moe_intermediate_size\": 1000000}", -EINVAL,
	  "n_shared_experts", "moe_intermediate_size" },
	{ "{\"first_k_dense_replace\": 5}", -EINVAL, "first_k_dense_replace", "range" },
	{ "{\"moe_layer_freq\": 0}", -EINVAL, "moe_layer_freq", "range" },
	{ "{\"max_position_embeddings\": 0}", -EINVAL, "max_position_embeddings", "range" },
	{ "{\"rms_norm_eps\": 0}", -EINVAL, "rms_norm_eps", "range" },
	{ "{\"rms_norm_eps\": -1e-6}", -EINVAL, "rms_norm_eps", "range" },
	{ "{\"rms_norm_eps\": \"1e-6\"}", -EINVAL, "rms_norm_eps", "number" },
	{ "{\"rope_theta\": -10000}", -EINVAL, "rope_theta", "range" },
	{ "{\"routed_scaling_factor\": 0}", -EINVAL, "routed_scaling_factor", "range" },
	{ "{\"norm_topk_prob\": 1}", -EINVAL, "norm_topk_prob", "true or false" },
	{ "{\"tie_word_embeddings\": \"false\"}", -EINVAL, "tie_word_embeddings", NULL },
	{ "{\"scoring_func\": \"relu\"}", -ENOTSUP, "scoring_func", "relu" },
	{ "{\"scoring_func\": 3}", -EINVAL, "scoring_func", "string" },
	{ "{\"topk_method\": \"weird\"}", -ENOTSUP, "topk_method", NULL },
	{ "{\"n_group\": 8, \"topk_group\": 4}", -ENOTSUP, "n_group", NULL },
	{ "{\"hidden_act\": \"gelu\"}", -ENOTSUP, "hidden_act", "gelu" },
	{ "{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", -ENOTSUP,
	  "rope_scaling", NULL },
	{ "{\"attention_bias\": true}", -ENOTSUP, "attention_bias", NULL },
	{ "{\"mlp_bias\": true}", -ENOTSUP, "mlp_bias", NULL },
	{ "{\"torch_dtype\": \"int8\"}", -ENOTSUP, "torch_dtype", "int8" },
	{ "{\"bos_token_id\": 512}", -EINVAL, "bos_token_id", "range" },
	{ "{\"eos_token_id\": \"1\"}", -EINVAL, "eos_token_id", "integer" },
	{ "{\"eos_token_id\": [\"1\"]}", -EINVAL, "eos_token_id", "integer" },
	{ "{\"kv_lora_rank\": 512}", -ENOTSUP, "kv_lora_rank", NULL },
	{ "{\"head_dim\": 64}", -ENOTSUP, "head_dim", NULL },
};

static void test_bad(void)
{
	static const struct {
		const char *text;
		const char *n1;
	} raw[] = {
		{ "", "invalid JSON" },
		{ "not json", "invalid JSON" },
		{ "[1, 2]", "not an object" },
		{ "\"deepseek\"", "invalid JSON" },
		{ "{\"model_type\": \"deepseek\", \"model_type\": \"deepseek\"}", "duplicate" },
		{ "{\"model_type\": \"deepseek\", \"vocab_size\": 512", "invalid JSON" },
		{ "{\"vocab_size\": 99999999999999999999999}", "invalid JSON" },
	};
	struct model_config c;
	struct fr_error err;

	for (size_t i = 0; i < FR_ARRAY_SIZE(bad); i++) {
		int rc;
		memset(&c, 0x5a, sizeof(c));
		fr_error_clear(&err);
		rc = parse_patched(bad[i].patch, &c, &err);
		t_expect_err(bad[i].patch, rc, bad[i].rc, &err, bad[i].n1, bad[i].n2);
		CHECK(strncmp(err.msg, "config.json: ", 13) == 0);
	}
	for (size_t i = 0; i < FR_ARRAY_SIZE(raw); i++) {
		int rc;
		fr_error_clear(&err);
		rc = model_config_parse(raw[i].text, strlen(raw[i].text), &c, &err);
		t_expect_err(raw[i].text, rc, -EINVAL, &err, raw[i].n1, "config.json");
	}
	/* A valid base must parse (the table is only meaningful if it does). */
	fr_error_clear(&err);
	CHECK(parse_patched("{}", &c, &err) == 0);
}

int main(void)
{
	test_golden();
	test_defaults();
	test_bad();
	if (t_failures) {
		fprintf(stderr, "%d check(s) failed\n", t_failures);
		return 1;
	}
	printf("all config tests passed\n");
	return 0;
}
