/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_config.c - model_config_parse on arbitrary bytes, then the layer helpers on any
 * config it accepts (their invariants must hold for every accepted config). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct model_config cfg;
	struct fr_error err = { { 0 } };
	int n, k = 0;

	if (model_config_parse((const char *)data, size, &cfg, &err) < 0) {
		if (!err.msg[0])
			abort(); /* every refusal says why */
		return 0;
	}
	if (cfg.hidden_size <= 0 || cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size ||
	    cfg.head_dim % 2 || cfg.num_attention_heads % cfg.num_key_value_heads ||
	    cfg.num_experts_per_tok > cfg.n_routed_experts ||
	    cfg.num_hidden_layers > MODEL_MAX_LAYERS || cfg.n_routed_experts > MODEL_MAX_EXPERTS ||
	    memchr(cfg.model_type, 0, sizeof(cfg.model_type)) == NULL)
		abort();
	n = model_n_moe_layers(&cfg);
	for (int l = -1; l <= cfg.num_hidden_layers; l++) {
		int idx = model_moe_index(&cfg, l);
		if ((idx >= 0) != model_layer_is_moe(&cfg, l) || (idx >= 0 && idx != k++))
			abort();
	}
	if (k != n)
		abort();
	return 0;
}
