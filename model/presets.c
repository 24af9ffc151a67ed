/* SPDX-License-Identifier: Apache-2.0 */
/*
 * presets.c - the presets of the synthetic checkpoints and the parameter counts a config
 * implies (ModelInfo in the coordinator, `ferryctl model info`, and model_gen()).
 *
 * Presets (ARCHITECTURE §1). Widths the table leaves open, and why:
 *   tiny  golden tiny-a's shape (hidden 128, 4 heads, 4 layers, 2 shared + 16 routed, top-4,
 *         expert 64, dense 256) with vocab 1024: 1,956,992 parameters.
 *   2b    the DeepSeekMoE paper's validation model: 9 layers, hidden 1280, 10 heads, 1 + 63
 *         experts, top-7, 8K vocab (the paper's tokenizer for this size). Expert width 968 =
 *         0.25 x a dense FFN of 3872 (layer 0 is that dense FFN, as in the HF family):
 *         1,998,657,280 parameters (2.0B).
 *   16b   deepseek-moe-16b-base's config.json verbatim: 16,375,728,128 parameters (16.4B).
 *   145b  the paper's 145B: 62 layers, hidden 4096, 32 heads, 4 + 128 experts of 1408, top-12,
 *         vocab 102400. Layer 0's dense FFN width 12288 (3 x hidden) puts the coordinator side
 *         (all but routed experts) at 9.40B parameters = 18.8 GB in bf16; the total is then
 *         144,494,809,088 (144.5B; the table's 144.6B needs a dense width of ~20900, which
 *         would push the coordinator side to 19.0 GB).
 */
#include <errno.h>
#include <string.h>

#include "model/model.h"

/* ---- presets ---------------------------------------------------------------------------- */

static const char *const preset_names[] = {
	[MODEL_PRESET_TINY] = "tiny",
	[MODEL_PRESET_2B] = "2b",
	[MODEL_PRESET_16B] = "16b",
	[MODEL_PRESET_145B] = "145b",
};

int model_preset_parse(const char *name, enum model_preset *ret)
{
	if (!name)
		return -EINVAL;
	for (size_t i = 0; i < FR_ARRAY_SIZE(preset_names); i++)
		if (strcmp(name, preset_names[i]) == 0) {
			*ret = (enum model_preset)i;
			return 0;
		}
	return -EINVAL;
}

const char *model_preset_name(enum model_preset p)
{
	if ((unsigned)p >= FR_ARRAY_SIZE(preset_names))
		return "?";
	return preset_names[p];
}

void model_preset_config(enum model_preset p, struct model_config *ret)
{
	struct model_config c = {
		.model_type = "deepseek",
		.first_k_dense_replace = 1,
		.moe_layer_freq = 1,
		.max_position_embeddings = 4096,
		.rms_norm_eps = 1e-6,
		.rope_theta = 10000.0,
		.norm_topk_prob = false,
		.scoring_func = KN_SCORING_SOFTMAX,
		.routed_scaling_factor = 1.0,
		.bos_token_id = 100000,
		.eos_token_id = 100001,
		.torch_dtype = KN_DTYPE_BF16,
	};

	switch (p) {
	case MODEL_PRESET_TINY:
	default:
		c.vocab_size = 1024;
		c.hidden_size = 128;
		c.intermediate_size = 256;
		c.moe_intermediate_size = 64;
		c.num_hidden_layers = 4;
		c.num_attention_heads = 4;
		c.n_shared_experts = 2;
		c.n_routed_experts = 16;
		c.num_experts_per_tok = 4;
		c.max_position_embeddings = 2048;
		c.bos_token_id = 0;
		c.eos_token_id = 1;
		break;
	case MODEL_PRESET_2B:
		c.vocab_size = 8192;
		c.hidden_size = 1280;
		c.intermediate_size = 3872;
		c.moe_intermediate_size = 968;
		c.num_hidden_layers = 9;
		c.num_attention_heads = 10;
		c.n_shared_experts = 1;
		c.n_routed_experts = 63;
		c.num_experts_per_tok = 7;
		c.max_position_embeddings = 2048;
		c.bos_token_id = 0;
		c.eos_token_id = 1;
		break;
	case MODEL_PRESET_16B:
		c.vocab_size = 102400;
		c.hidden_size = 2048;
		c.intermediate_size = 10944;
		c.moe_intermediate_size = 1408;
		c.num_hidden_layers = 28;
		c.num_attention_heads = 16;
		c.n_shared_experts = 2;
		c.n_routed_experts = 64;
		c.num_experts_per_tok = 6;
		break;
	case MODEL_PRESET_145B:
		c.vocab_size = 102400;
		c.hidden_size = 4096;
		c.intermediate_size = 12288;
		c.moe_intermediate_size = 1408;
		c.num_hidden_layers = 62;
		c.num_attention_heads = 32;
		c.n_shared_experts = 4;
		c.n_routed_experts = 128;
		c.num_experts_per_tok = 12;
		break;
	}
	c.num_key_value_heads = c.num_attention_heads;
	c.head_dim = c.hidden_size / c.num_attention_heads;
	*ret = c;
}

const char *model_gen_preset_match(const struct model_config *cfg)
{
	for (int p = 0; p < MODEL_PRESET__COUNT; p++) {
		struct model_config c;

		model_preset_config((enum model_preset)p, &c);
		if (cfg->num_hidden_layers < 1 || cfg->num_hidden_layers > c.num_hidden_layers)
			continue;
		/* What model_gen() changes: layers (keeping first_k_dense_replace within them),
		 * dtype, and vocab / BOS / EOS from a tokenizer. */
		c.num_hidden_layers = cfg->num_hidden_layers;
		c.first_k_dense_replace = FR_MIN(c.first_k_dense_replace, c.num_hidden_layers);
		if (strcmp(cfg->model_type, c.model_type) ||
		    cfg->hidden_size != c.hidden_size ||
		    cfg->intermediate_size != c.intermediate_size ||
		    cfg->moe_intermediate_size != c.moe_intermediate_size ||
		    cfg->num_attention_heads != c.num_attention_heads ||
		    cfg->num_key_value_heads != c.num_key_value_heads ||
		    cfg->head_dim != c.head_dim ||
		    cfg->n_routed_experts != c.n_routed_experts ||
		    cfg->n_shared_experts != c.n_shared_experts ||
		    cfg->num_experts_per_tok != c.num_experts_per_tok ||
		    cfg->first_k_dense_replace != c.first_k_dense_replace ||
		    cfg->moe_layer_freq != c.moe_layer_freq ||
		    cfg->max_position_embeddings != c.max_position_embeddings ||
		    cfg->rms_norm_eps != c.rms_norm_eps || cfg->rope_theta != c.rope_theta ||
		    cfg->norm_topk_prob != c.norm_topk_prob ||
		    cfg->attention_bias != c.attention_bias ||
		    cfg->tie_word_embeddings != c.tie_word_embeddings ||
		    cfg->scoring_func != c.scoring_func ||
		    cfg->routed_scaling_factor != c.routed_scaling_factor ||
		    cfg->has_expert_bias != c.has_expert_bias)
			continue;
		return preset_names[p];
	}
	return NULL;
}

/* ---- parameter counts ------------------------------------------------------------------- */

void model_param_count(const struct model_config *cfg, struct model_param_counts *ret)
{
	const int64_t h = cfg->hidden_size;
	const int64_t hd = cfg->head_dim ? cfg->head_dim : h / FR_MAX(cfg->num_attention_heads, 1);
	const int64_t q = (int64_t)cfg->num_attention_heads * hd;
	const int64_t kv = (int64_t)cfg->num_key_value_heads * hd;
	const int64_t m = cfg->moe_intermediate_size;
	struct model_param_counts c = { 0 };

	c.coordinator = (int64_t)cfg->vocab_size * h * (cfg->tie_word_embeddings ? 1 : 2) + h;
	for (int l = 0; l < cfg->num_hidden_layers; l++) {
		c.coordinator += 2 * h + q * h + 2 * kv * h + h * q;
		if (model_layer_is_moe(cfg, l)) {
			int64_t expert = 3 * h * m;
			c.coordinator += (int64_t)cfg->n_routed_experts * h;
			if (cfg->has_expert_bias)
				c.coordinator += cfg->n_routed_experts;
			c.coordinator += cfg->n_shared_experts * expert;
			c.routed += cfg->n_routed_experts * expert;
			c.active += cfg->num_experts_per_tok * expert;
		} else {
			c.coordinator += 3 * h * cfg->intermediate_size;
		}
	}
	c.total = c.coordinator + c.routed;
	c.active += c.coordinator;
	*ret = c;
}
