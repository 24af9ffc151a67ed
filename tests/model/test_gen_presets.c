/* SPDX-License-Identifier: Apache-2.0 */
/* test_gen_presets.c - preset configs and their parameter counts (from the config, nothing
 * generated) against ARCHITECTURE §1, and model_config_write against the golden config.json
 * files byte for byte, and through model_config_parse. */
#include <inttypes.h>
#include <math.h>

#include "gen_test.h"

static bool within(double v, double want, double rel)
{
	return fabs(v - want) <= rel * want;
}

static void test_parse(void)
{
	static const char *const names[] = { "tiny", "2b", "16b", "145b" };
	enum model_preset p;

	for (int i = 0; i < 4; i++) {
		CHECK(model_preset_parse(names[i], &p) == 0 && (int)p == i);
		CHECK(strcmp(model_preset_name(p), names[i]) == 0);
	}
	CHECK(model_preset_parse("16B", &p) == -EINVAL);
	CHECK(model_preset_parse("", &p) == -EINVAL);
	CHECK(model_preset_parse(NULL, &p) == -EINVAL);
	CHECK(strcmp(model_preset_name((enum model_preset)99), "?") == 0);
}

static void test_counts(void)
{
	static const struct {
		enum model_preset p;
		double total;       /* ARCHITECTURE §1 */
		double coord_bytes; /* bf16, 0 = not in the table */
	} table[] = {
		{ MODEL_PRESET_2B, 2.0e9, 0 },
		{ MODEL_PRESET_16B, 16.4e9, 0 },
		{ MODEL_PRESET_145B, 144.6e9, 18.8e9 },
	};
	struct model_param_counts pc;
	struct model_config c;

	for (size_t i = 0; i < FR_ARRAY_SIZE(table); i++) {
		model_preset_config(table[i].p, &c);
		model_param_count(&c, &pc);
		printf("%-5s total %" PRId64 " (%.3fB), routed %" PRId64 ", coordinator %" PRId64
		       " (%.2f GB bf16), active %" PRId64 "\n", model_preset_name(table[i].p),
		       pc.total, pc.total / 1e9, pc.routed, pc.coordinator, pc.coordinator * 2 / 1e9,
		       pc.active);
		CHECK(within((double)pc.total, table[i].total, 0.02));
		CHECK(pc.total == pc.routed + pc.coordinator);
		if (table[i].coord_bytes)
			CHECK(within(pc.coordinator * 2.0, table[i].coord_bytes, 0.02));
	}

	/* deepseek-moe-16b-base, counted by hand from its config.json. */
	model_preset_config(MODEL_PRESET_16B, &c);
	model_param_count(&c, &pc);
	CHECK(pc.total == 16375728128);
	CHECK(c.vocab_size == 102400 && c.hidden_size == 2048 && c.intermediate_size == 10944 &&
	      c.moe_intermediate_size == 1408 && c.num_hidden_layers == 28 &&
	      c.num_attention_heads == 16 && c.num_key_value_heads == 16 &&
	      c.n_shared_experts == 2 && c.n_routed_experts == 64 && c.num_experts_per_tok == 6 &&
	      c.first_k_dense_replace == 1 && c.max_position_embeddings == 4096 &&
	      c.rms_norm_eps == 1e-6 && c.rope_theta == 10000.0 && !c.norm_topk_prob &&
	      c.scoring_func == KN_SCORING_SOFTMAX);

	/* 2b: expert width 0.25x of the dense FFN (the paper's fine-grained split). */
	model_preset_config(MODEL_PRESET_2B, &c);
	CHECK(c.intermediate_size == 4 * c.moe_intermediate_size);
	CHECK(c.num_hidden_layers == 9 && c.hidden_size == 1280 && c.num_attention_heads == 10 &&
	      c.n_shared_experts == 1 && c.n_routed_experts == 63 && c.num_experts_per_tok == 7);

	model_preset_config(MODEL_PRESET_145B, &c);
	CHECK(c.num_hidden_layers == 62 && c.hidden_size == 4096 && c.num_attention_heads == 32 &&
	      c.n_shared_experts == 4 && c.n_routed_experts == 128 && c.num_experts_per_tok == 12 &&
	      c.moe_intermediate_size == 1408 && c.first_k_dense_replace == 1 &&
	      c.vocab_size == 102400);
}

/* golden tiny-a/-b's config.json, rebuilt from their README tables, written by us. */
static void test_write_golden(const char *tmpdir)
{
	const char *g = getenv("FERRY_GOLDEN");
	struct fr_error err = { { 0 } };
	char path[4096], gpath[4096];
	struct model_config c;

	if (!g || !g_exists(g)) {
		printf("skip golden config comparison: FERRY_GOLDEN not set or missing\n");
		return;
	}
	for (int which = 0; which < 2; which++) {
		memset(&c, 0, sizeof(c));
		snprintf(c.model_type, sizeof(c.model_type), "deepseek");
		c.vocab_size = which ? 768 : 512;
		c.hidden_size = which ? 96 : 128;
		c.intermediate_size = which ? 200 : 256;
		c.moe_intermediate_size = which ? 40 : 64;
		c.num_hidden_layers = 4;
		c.num_attention_heads = c.num_key_value_heads = which ? 3 : 4;
		c.head_dim = 32;
		c.n_routed_experts = which ? 24 : 16;
		c.n_shared_experts = which ? 1 : 2;
		c.num_experts_per_tok = which ? 3 : 4;
		c.first_k_dense_replace = 1;
		c.moe_layer_freq = 1;
		c.max_position_embeddings = 512;
		c.rms_norm_eps = 1e-6;
		c.rope_theta = 10000.0;
		c.routed_scaling_factor = 1.0;
		c.bos_token_id = 0;
		c.eos_token_id = 1;
		c.torch_dtype = which ? KN_DTYPE_BF16 : KN_DTYPE_F32;

		snprintf(path, sizeof(path), "%s/config-%d.json", tmpdir, which);
		snprintf(gpath, sizeof(gpath), "%s/%s/config.json", g, which ? "tiny-b" : "tiny-a");
		CHECK(model_config_write(&c, path, &err) == 0);
		size_t a_len, b_len;
		uint8_t *a = g_slurp(path, &a_len), *b = g_slurp(gpath, &b_len);
		CHECK(a_len == b_len && memcmp(a, b, a_len) == 0);
		if (a_len != b_len || memcmp(a, b, a_len))
			fprintf(stderr, "ours:\n%s\ngolden:\n%s\n", a, b);
		free(a);
		free(b);

		/* The golden count from the README. */
		if (!which) {
			struct model_param_counts pc;
			model_param_count(&c, &pc);
			CHECK(pc.total == 1825920);
		}
	}
}

/* Every preset (and a trimmed one) survives write -> parse unchanged. */
static bool config_equal(const struct model_config *a, const struct model_config *b)
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

static void test_roundtrip(const char *tmpdir)
{
	struct fr_error err = { { 0 } };
	struct model_config c, back;
	char path[4096];

	for (int p = 0; p < 4; p++) {
		model_preset_config((enum model_preset)p, &c);
		if (p == MODEL_PRESET_145B) {
			c.num_hidden_layers = 2;
			c.torch_dtype = KN_DTYPE_F32;
		}
		snprintf(path, sizeof(path), "%s/config.json", tmpdir);
		CHECK(model_config_write(&c, path, &err) == 0);
		memset(&back, 0, sizeof(back));
		int rc = model_config_load(tmpdir, &back, &err);
		if (rc < 0)
			fprintf(stderr, "preset %d: %s\n", p, err.msg);
		CHECK(rc == 0);
		CHECK(config_equal(&c, &back));
	}
	/* V3-style gating keys, other reals, a null eos. */
	model_preset_config(MODEL_PRESET_TINY, &c);
	c.scoring_func = KN_SCORING_SIGMOID;
	c.routed_scaling_factor = 2.5;
	c.has_expert_bias = true;
	c.norm_topk_prob = true;
	c.rms_norm_eps = 1e-5;
	c.rope_theta = 1e11;
	c.eos_token_id = -1;
	snprintf(path, sizeof(path), "%s/config.json", tmpdir);
	CHECK(model_config_write(&c, path, &err) == 0);
	CHECK(model_config_load(tmpdir, &back, &err) == 0);
	CHECK(config_equal(&c, &back));
	{
		size_t len;
		char *text = (char *)g_slurp(path, &len);
		CHECK(strstr(text, "\"rms_norm_eps\": 1e-05,\n"));
		CHECK(strstr(text, "\"rope_theta\": 100000000000.0,\n"));
		CHECK(strstr(text, "\"topk_method\": \"noaux_tc\""));
		CHECK(strstr(text, "\"eos_token_id\": null,"));
		free(text);
	}

	snprintf(path, sizeof(path), "%s/config.json.tmp", tmpdir);
	CHECK(!g_exists(path));
	snprintf(path, sizeof(path), "%s/no/such/dir/config.json", tmpdir);
	CHECK(model_config_write(&c, path, &err) == -ENOENT);
	CHECK(strstr(err.msg, "no/such/dir") != NULL);
}

int main(void)
{
	char tmpdir[4096];

	g_mkdtemp(tmpdir, sizeof(tmpdir), "presets");
	test_parse();
	test_counts();
	test_write_golden(tmpdir);
	test_roundtrip(tmpdir);
	g_rmtree(tmpdir);
	if (g_failures) {
		fprintf(stderr, "%d check(s) failed\n", g_failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
