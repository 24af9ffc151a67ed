/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.c - HF config.json for DeepSeekMoE: strict parsing with HF defaults, and writing it
 * the way transformers does.
 *
 * Every field is type and range checked; sizes are capped so that the products later code
 * forms (vocab x hidden, width x hidden, experts x layers) cannot overflow a size_t or,
 * where they end up in an int (a matrix's rows), an int. Unknown keys are ignored, as HF
 * does. Integer fields must be JSON integers: 2.0 is refused (HF would carry it as a float
 * and fail later, far from the cause).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "model/model.h"

/* Sane upper bounds (the largest public DeepSeek models are well below these). */
#define CFG_MAX_VOCAB (1 << 24)
#define CFG_MAX_HIDDEN (1 << 16)
#define CFG_MAX_WIDTH (1 << 20)
#define CFG_MAX_HEADS 1024
#define CFG_MAX_SHARED 64
#define CFG_MAX_POSITIONS (1 << 24)
#define CFG_MAX_BYTES (16u << 20)

struct cfg_ctx {
	const json_t *root;
	const char *label;
	struct fr_error *err;
};

/* Looks up key; absent and JSON null both read as "not given". */
static const json_t *cfg_get(const struct cfg_ctx *c, const char *key)
{
	const json_t *v = json_object_get(c->root, key);
	return v && !json_is_null(v) ? v : NULL;
}

static const char *cfg_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a non-integer number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "?";
}

static int cfg_missing(const struct cfg_ctx *c, const char *key)
{
	return fr_error_set(c->err, -EINVAL, "%s: required field %s is missing", c->label, key);
}

static int cfg_int_value(const struct cfg_ctx *c, const char *key, const json_t *v, long long min,
			 long long max, int *ret)
{
	long long x;

	if (json_is_real(v))
		return fr_error_set(c->err, -EINVAL, "%s: %s must be an integer, got %g", c->label,
				    key, json_real_value(v));
	if (!json_is_integer(v))
		return fr_error_set(c->err, -EINVAL, "%s: %s must be an integer, got %s", c->label,
				    key, cfg_type_name(v));
	x = json_integer_value(v);
	if (x < min || x > max)
		return fr_error_set(c->err, -EINVAL, "%s: %s (%lld) is out of range [%lld, %lld]",
				    c->label, key, x, min, max);
	*ret = (int)x;
	return 0;
}

/* An integer field; def < min marks it required. */
static int cfg_int(const struct cfg_ctx *c, const char *key, long long min, long long max,
		   long long def, int *ret)
{
	const json_t *v = cfg_get(c, key);

	if (!v) {
		if (def < min)
			return cfg_missing(c, key);
		*ret = (int)def;
		return 0;
	}
	return cfg_int_value(c, key, v, min, max, ret);
}

/* A number field (integer or real); finite, in [min, max]; min_open excludes min itself. */
static int cfg_num(const struct cfg_ctx *c, const char *key, double min, bool min_open, double max,
		   double def, double *ret)
{
	const json_t *v = cfg_get(c, key);
	double x;

	if (!v) {
		*ret = def;
		return 0;
	}
	if (!json_is_number(v))
		return fr_error_set(c->err, -EINVAL, "%s: %s must be a number, got %s", c->label,
				    key, cfg_type_name(v));
	x = json_number_value(v);
	if (!isfinite(x) || x < min || (min_open && x == min) || x > max)
		return fr_error_set(c->err, -EINVAL, "%s: %s (%g) is out of range %c%g, %g]",
				    c->label, key, x, min_open ? '(' : '[', min, max);
	*ret = x;
	return 0;
}

static int cfg_bool(const struct cfg_ctx *c, const char *key, bool def, bool *ret)
{
	const json_t *v = cfg_get(c, key);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return fr_error_set(c->err, -EINVAL, "%s: %s must be true or false, got %s",
				    c->label, key, cfg_type_name(v));
	*ret = json_is_true(v);
	return 0;
}

/* A string field; def NULL marks it required. */
static int cfg_str(const struct cfg_ctx *c, const char *key, const char *def, const char **ret)
{
	const json_t *v = cfg_get(c, key);

	if (!v) {
		if (!def)
			return cfg_missing(c, key);
		*ret = def;
		return 0;
	}
	if (!json_is_string(v))
		return fr_error_set(c->err, -EINVAL, "%s: %s must be a string, got %s", c->label,
				    key, cfg_type_name(v));
	*ret = json_string_value(v);
	return 0;
}

/* bos/eos: null or absent -> -1; an integer in [0, vocab); a list (some HF configs give
 * several EOS ids) -> its first element. */
static int cfg_token_id(const struct cfg_ctx *c, const char *key, int vocab, int *ret)
{
	const json_t *v = cfg_get(c, key);

	if (!v) {
		*ret = -1;
		return 0;
	}
	if (json_is_array(v)) {
		if (json_array_size(v) == 0) {
			*ret = -1;
			return 0;
		}
		v = json_array_get(v, 0);
	}
	return cfg_int_value(c, key, v, 0, vocab - 1, ret);
}

static int cfg_parse_root(const struct cfg_ctx *c, struct model_config *cfg)
{
	struct fr_error *err = c->err;
	const char *label = c->label;
	const char *s;
	bool b;
	int rc;

	memset(cfg, 0, sizeof(*cfg));

	rc = cfg_str(c, "model_type", NULL, &s);
	if (rc < 0)
		return rc;
	if (strcmp(s, "deepseek") && strcmp(s, "deepseek_v2") && strcmp(s, "deepseek_v3"))
		return fr_error_set(err, -ENOTSUP,
				    "%s: model_type \"%.64s\" is not supported (\"deepseek\", "
				    "\"deepseek_v2\" or \"deepseek_v3\")", label, s);
	snprintf(cfg->model_type, sizeof(cfg->model_type), "%s", s);

	/* Multi-head latent attention (V2/V3) is a different attention block. */
	if (cfg_get(c, "kv_lora_rank") || cfg_get(c, "q_lora_rank"))
		return fr_error_set(err, -ENOTSUP,
				    "%s: kv_lora_rank/q_lora_rank: multi-head latent attention "
				    "is not supported", label);

	if ((rc = cfg_int(c, "vocab_size", 1, CFG_MAX_VOCAB, -1, &cfg->vocab_size)) < 0 ||
	    (rc = cfg_int(c, "hidden_size", 1, CFG_MAX_HIDDEN, -1, &cfg->hidden_size)) < 0 ||
	    (rc = cfg_int(c, "intermediate_size", 1, CFG_MAX_WIDTH, -1,
			  &cfg->intermediate_size)) < 0 ||
	    (rc = cfg_int(c, "num_hidden_layers", 1, MODEL_MAX_LAYERS, -1,
			  &cfg->num_hidden_layers)) < 0 ||
	    (rc = cfg_int(c, "num_attention_heads", 1, CFG_MAX_HEADS, -1,
			  &cfg->num_attention_heads)) < 0 ||
	    (rc = cfg_int(c, "num_key_value_heads", 1, CFG_MAX_HEADS, cfg->num_attention_heads,
			  &cfg->num_key_value_heads)) < 0)
		return rc;

	if (cfg->hidden_size % cfg->num_attention_heads)
		return fr_error_set(err, -EINVAL,
				    "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
				    label, cfg->hidden_size, cfg->num_attention_heads);
	if (cfg->num_key_value_heads > cfg->num_attention_heads ||
	    cfg->num_attention_heads % cfg->num_key_value_heads)
		return fr_error_set(err, -EINVAL,
				    "%s: num_attention_heads (%d) is not a multiple of "
				    "num_key_value_heads (%d)", label, cfg->num_attention_heads,
				    cfg->num_key_value_heads);
	cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
	if (cfg->head_dim % 2)
		return fr_error_set(err, -EINVAL,
				    "%s: head_dim = hidden_size / num_attention_heads = %d must be "
				    "even for RoPE", label, cfg->head_dim);
	if (cfg_get(c, "head_dim")) {
		int hd;
		if ((rc = cfg_int(c, "head_dim", 1, CFG_MAX_HIDDEN, 0, &hd)) < 0)
			return rc;
		if (hd != cfg->head_dim)
			return fr_error_set(err, -ENOTSUP,
					    "%s: head_dim (%d) differs from hidden_size / "
					    "num_attention_heads (%d): not supported",
					    label, hd, cfg->head_dim);
	}

	/* Experts: n_routed_experts null/absent = a dense model (HF v1 default None). */
	if ((rc = cfg_int(c, "n_routed_experts", 0, MODEL_MAX_EXPERTS, 0,
			  &cfg->n_routed_experts)) < 0)
		return rc;
	if (cfg->n_routed_experts > 0) {
		if ((rc = cfg_int(c, "num_experts_per_tok", 1, MODEL_MAX_EXPERTS, -1,
				  &cfg->num_experts_per_tok)) < 0 ||
		    (rc = cfg_int(c, "moe_intermediate_size", 1, CFG_MAX_WIDTH, -1,
				  &cfg->moe_intermediate_size)) < 0 ||
		    (rc = cfg_int(c, "n_shared_experts", 0, CFG_MAX_SHARED, 0,
				  &cfg->n_shared_experts)) < 0)
			return rc;
		if (cfg->num_experts_per_tok > cfg->n_routed_experts)
			return fr_error_set(err, -EINVAL,
					    "%s: num_experts_per_tok (%d) > n_routed_experts (%d)",
					    label, cfg->num_experts_per_tok,
					    cfg->n_routed_experts);
		if ((long long)cfg->moe_intermediate_size * cfg->n_shared_experts > CFG_MAX_WIDTH)
			return fr_error_set(err, -EINVAL,
					    "%s: n_shared_experts (%d) x moe_intermediate_size (%d) "
					    "is larger than %d", label, cfg->n_shared_experts,
					    cfg->moe_intermediate_size, CFG_MAX_WIDTH);
	} else {
		/* Still type-checked when given, but meaningless without routed experts. */
		int dummy;
		if ((rc = cfg_int(c, "num_experts_per_tok", 0, MODEL_MAX_EXPERTS, 0, &dummy)) < 0 ||
		    (rc = cfg_int(c, "moe_intermediate_size", 0, CFG_MAX_WIDTH, 0, &dummy)) < 0 ||
		    (rc = cfg_int(c, "n_shared_experts", 0, CFG_MAX_SHARED, 0, &dummy)) < 0)
			return rc;
	}
	if ((rc = cfg_int(c, "first_k_dense_replace", 0, cfg->num_hidden_layers, 0,
			  &cfg->first_k_dense_replace)) < 0 ||
	    (rc = cfg_int(c, "moe_layer_freq", 1, MODEL_MAX_LAYERS, 1, &cfg->moe_layer_freq)) < 0 ||
	    (rc = cfg_int(c, "max_position_embeddings", 1, CFG_MAX_POSITIONS, 2048,
			  &cfg->max_position_embeddings)) < 0)
		return rc;

	if ((rc = cfg_num(c, "rms_norm_eps", 0, true, 1, 1e-6, &cfg->rms_norm_eps)) < 0 ||
	    (rc = cfg_num(c, "rope_theta", 0, true, 1e12, 10000.0, &cfg->rope_theta)) < 0 ||
	    (rc = cfg_num(c, "routed_scaling_factor", 0, true, 1e6, 1.0,
			  &cfg->routed_scaling_factor)) < 0)
		return rc;

	if ((rc = cfg_bool(c, "norm_topk_prob", false, &cfg->norm_topk_prob)) < 0 ||
	    (rc = cfg_bool(c, "tie_word_embeddings", false, &cfg->tie_word_embeddings)) < 0 ||
	    (rc = cfg_bool(c, "attention_bias", false, &cfg->attention_bias)) < 0)
		return rc;
	if (cfg->attention_bias)
		return fr_error_set(err, -ENOTSUP, "%s: attention_bias true is not supported",
				    label);

	rc = cfg_str(c, "scoring_func", "softmax", &s);
	if (rc < 0)
		return rc;
	if (!strcmp(s, "softmax"))
		cfg->scoring_func = KN_SCORING_SOFTMAX;
	else if (!strcmp(s, "sigmoid"))
		cfg->scoring_func = KN_SCORING_SIGMOID;
	else
		return fr_error_set(err, -ENOTSUP,
				    "%s: scoring_func \"%.64s\" is not supported (\"softmax\" or "
				    "\"sigmoid\")", label, s);

	rc = cfg_str(c, "topk_method", "greedy", &s);
	if (rc < 0)
		return rc;
	if (!strcmp(s, "noaux_tc"))
		cfg->has_expert_bias = true;
	else if (strcmp(s, "greedy") && strcmp(s, "group_limited_greedy"))
		return fr_error_set(err, -ENOTSUP,
				    "%s: topk_method \"%.64s\" is not supported (\"greedy\", "
				    "\"group_limited_greedy\" or \"noaux_tc\")", label, s);
	{
		/* Group-limited routing with more than one group is not implemented. */
		int n_group, topk_group;
		if ((rc = cfg_int(c, "n_group", 1, MODEL_MAX_EXPERTS, 1, &n_group)) < 0 ||
		    (rc = cfg_int(c, "topk_group", 1, MODEL_MAX_EXPERTS, 1, &topk_group)) < 0)
			return rc;
		if (n_group > 1 && topk_group < n_group)
			return fr_error_set(err, -ENOTSUP,
					    "%s: n_group (%d) / topk_group (%d): group-limited "
					    "routing is not supported", label, n_group, topk_group);
	}

	rc = cfg_str(c, "hidden_act", "silu", &s);
	if (rc < 0)
		return rc;
	if (strcmp(s, "silu"))
		return fr_error_set(err, -ENOTSUP,
				    "%s: hidden_act \"%.64s\" is not supported (only \"silu\")",
				    label, s);
	if (cfg_get(c, "rope_scaling"))
		return fr_error_set(err, -ENOTSUP, "%s: rope_scaling is not supported (must be null)",
				    label);
	rc = cfg_bool(c, "mlp_bias", false, &b);
	if (rc < 0)
		return rc;
	if (b)
		return fr_error_set(err, -ENOTSUP, "%s: mlp_bias true is not supported", label);

	rc = cfg_str(c, "torch_dtype", "bfloat16", &s);
	if (rc < 0)
		return rc;
	if (!strcmp(s, "bfloat16"))
		cfg->torch_dtype = KN_DTYPE_BF16;
	else if (!strcmp(s, "float32"))
		cfg->torch_dtype = KN_DTYPE_F32;
	else if (!strcmp(s, "float16"))
		cfg->torch_dtype = KN_DTYPE_F16;
	else
		return fr_error_set(err, -ENOTSUP,
				    "%s: torch_dtype \"%.64s\" is not supported (\"bfloat16\", "
				    "\"float32\" or \"float16\")", label, s);

	if ((rc = cfg_token_id(c, "bos_token_id", cfg->vocab_size, &cfg->bos_token_id)) < 0 ||
	    (rc = cfg_token_id(c, "eos_token_id", cfg->vocab_size, &cfg->eos_token_id)) < 0)
		return rc;
	return 0;
}

static int cfg_parse_labelled(const char *json, size_t len, const char *label,
			      struct model_config *ret, struct fr_error *err)
{
	struct model_config cfg;
	json_error_t jerr;
	json_t *root;
	int rc;

	if (!json && len)
		return fr_error_set(err, -EINVAL, "%s: no input", label);
	root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s",
				    label, jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		rc = fr_error_set(err, -EINVAL, "%s: top level is %s, not an object", label,
				  cfg_type_name(root));
		goto out;
	}
	rc = cfg_parse_root(&(struct cfg_ctx){ .root = root, .label = label, .err = err }, &cfg);
	if (rc == 0)
		*ret = cfg;
out:
	json_decref(root);
	return rc;
}

int model_config_parse(const char *json, size_t len, struct model_config *ret,
		       struct fr_error *err)
{
	return cfg_parse_labelled(json, len, "config.json", ret, err);
}

int model_config_load(const char *dir, struct model_config *ret, struct fr_error *err)
{
	char path[4096];
	char *buf;
	size_t len;
	int rc;

	if (snprintf(path, sizeof(path), "%s/config.json", dir) >= (int)sizeof(path))
		return fr_error_set(err, -ENAMETOOLONG, "%s: path too long", dir);
	rc = fr_read_file(path, CFG_MAX_BYTES, &buf, &len, err);
	if (rc < 0)
		return rc;
	rc = cfg_parse_labelled(buf, len, path, ret, err);
	free(buf);
	return rc;
}

/* ---- writing -------------------------------------------------------------------------- */

static const char *dtype_torch_name(enum kn_dtype dt)
{
	switch (dt) {
	case KN_DTYPE_F32:
		return "float32";
	case KN_DTYPE_F16:
		return "float16";
	case KN_DTYPE_BF16:
	default:
		return "bfloat16";
	}
}

/* Shortest %.Ng (N in 15..17) that reads back exactly: Python's repr for the usual values
 * (1e-06, 10000.0, 0.001) and still exact for any double. */
static int real_precision(const double *v, size_t n)
{
	for (int p = 15; p < 17; p++) {
		bool ok = true;
		for (size_t i = 0; i < n && ok; i++) {
			char buf[40];
			snprintf(buf, sizeof(buf), "%.*g", p, v[i]);
			ok = strtod(buf, NULL) == v[i];
		}
		if (ok)
			return p;
	}
	return 17;
}

/* jansson writes exponents as "1e-6" / "1e16"; Python (which wrote every HF config) as
 * "1e-06" / "1e+16". Rewrites the exponents of numbers (not inside strings). Returns a new
 * heap string or NULL. */
static char *py_exponents(const char *text)
{
	size_t len = strlen(text);
	char *out = malloc(2 * len + 1), *o = out;
	bool in_str = false;

	if (!out)
		return NULL;
	for (const char *p = text; *p; p++) {
		*o++ = *p;
		if (in_str) {
			if (*p == '\\' && p[1])
				*o++ = *++p;
			else if (*p == '"')
				in_str = false;
			continue;
		}
		if (*p == '"') {
			in_str = true;
		} else if ((*p == 'e' || *p == 'E') && p > text && p[-1] >= '0' && p[-1] <= '9') {
			if (p[1] == '-' || p[1] == '+')
				*o++ = *++p;
			else
				*o++ = '+';
			if (p[1] >= '0' && p[1] <= '9' && !(p[2] >= '0' && p[2] <= '9'))
				*o++ = '0';
		}
	}
	*o = 0;
	return out;
}

static json_t *token_id_json(int id)
{
	return id < 0 ? json_null() : json_integer(id);
}

char *model_config_to_json(const struct model_config *cfg)
{
	const double reals[] = { cfg->rms_norm_eps, cfg->rope_theta, cfg->routed_scaling_factor,
				 0.0, 0.001, 0.02 };
	json_t *root = NULL, *arch = NULL;
	char *text = NULL, *fixed;

	root = json_object();
	arch = json_array();
	if (!root || !arch || json_array_append_new(arch, json_string("DeepseekForCausalLM"))) {
		json_decref(arch);
		goto out;
	}
	/* The key set of deepseek-moe-16b-base's config.json, plus the V3-style gating keys
	 * only when they differ from v1's defaults. */
	if (json_object_set_new(root, "architectures", arch) ||
	    json_object_set_new(root, "attention_bias", json_boolean(cfg->attention_bias)) ||
	    json_object_set_new(root, "attention_dropout", json_real(0.0)) ||
	    json_object_set_new(root, "aux_loss_alpha", json_real(0.001)) ||
	    json_object_set_new(root, "bos_token_id", token_id_json(cfg->bos_token_id)) ||
	    json_object_set_new(root, "eos_token_id", token_id_json(cfg->eos_token_id)) ||
	    json_object_set_new(root, "first_k_dense_replace",
				json_integer(cfg->first_k_dense_replace)) ||
	    json_object_set_new(root, "hidden_act", json_string("silu")) ||
	    json_object_set_new(root, "hidden_size", json_integer(cfg->hidden_size)) ||
	    json_object_set_new(root, "initializer_range", json_real(0.02)) ||
	    json_object_set_new(root, "intermediate_size", json_integer(cfg->intermediate_size)) ||
	    json_object_set_new(root, "max_position_embeddings",
				json_integer(cfg->max_position_embeddings)) ||
	    json_object_set_new(root, "model_type",
				json_string(cfg->model_type[0] ? cfg->model_type : "deepseek")) ||
	    json_object_set_new(root, "moe_intermediate_size",
				json_integer(cfg->moe_intermediate_size)) ||
	    json_object_set_new(root, "moe_layer_freq", json_integer(cfg->moe_layer_freq)) ||
	    json_object_set_new(root, "n_routed_experts", json_integer(cfg->n_routed_experts)) ||
	    json_object_set_new(root, "n_shared_experts", json_integer(cfg->n_shared_experts)) ||
	    json_object_set_new(root, "norm_topk_prob", json_boolean(cfg->norm_topk_prob)) ||
	    json_object_set_new(root, "num_attention_heads",
				json_integer(cfg->num_attention_heads)) ||
	    json_object_set_new(root, "num_experts_per_tok",
				json_integer(cfg->num_experts_per_tok)) ||
	    json_object_set_new(root, "num_hidden_layers", json_integer(cfg->num_hidden_layers)) ||
	    json_object_set_new(root, "num_key_value_heads",
				json_integer(cfg->num_key_value_heads)) ||
	    json_object_set_new(root, "pretraining_tp", json_integer(1)) ||
	    json_object_set_new(root, "rms_norm_eps", json_real(cfg->rms_norm_eps)) ||
	    json_object_set_new(root, "rope_scaling", json_null()) ||
	    json_object_set_new(root, "rope_theta", json_real(cfg->rope_theta)) ||
	    json_object_set_new(root, "scoring_func",
				json_string(cfg->scoring_func == KN_SCORING_SIGMOID ? "sigmoid"
										    : "softmax")) ||
	    json_object_set_new(root, "seq_aux", json_true()) ||
	    json_object_set_new(root, "tie_word_embeddings",
				json_boolean(cfg->tie_word_embeddings)) ||
	    json_object_set_new(root, "torch_dtype",
				json_string(dtype_torch_name(cfg->torch_dtype))) ||
	    json_object_set_new(root, "transformers_version", json_string("4.36.0")) ||
	    json_object_set_new(root, "use_cache", json_true()) ||
	    json_object_set_new(root, "vocab_size", json_integer(cfg->vocab_size)))
		goto out;
	if (cfg->routed_scaling_factor != 1.0 &&
	    json_object_set_new(root, "routed_scaling_factor",
				json_real(cfg->routed_scaling_factor)))
		goto out;
	if (cfg->has_expert_bias &&
	    json_object_set_new(root, "topk_method", json_string("noaux_tc")))
		goto out;

	/* As transformers writes it: json.dumps(indent=2, sort_keys=True) + "\n". */
	text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS |
					JSON_REAL_PRECISION(real_precision(reals,
									   FR_ARRAY_SIZE(reals))));
	if (!text)
		goto out;
	fixed = py_exponents(text);
	free(text);
	text = fixed;
out:
	json_decref(root);
	return text;
}

int model_config_write(const struct model_config *cfg, const char *path, struct fr_error *err)
{
	char tmp[4096];
	char *text = NULL;
	FILE *f = NULL;
	int rc;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return fr_error_set(err, -ENAMETOOLONG, "%s: path too long", path);
	text = model_config_to_json(cfg);
	if (!text)
		return fr_error_set(err, -ENOMEM, "%s: out of memory building config.json", path);

	f = fopen(tmp, "we");
	if (!f) {
		rc = fr_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (fputs(text, f) < 0 || fputc('\n', f) < 0) {
		rc = fr_error_set(err, -errno, "%s: write: %s", tmp, strerror(errno));
		goto out_unlink;
	}
	if (fclose(f) != 0) {
		f = NULL;
		rc = fr_error_set(err, -errno, "%s: close: %s", tmp, strerror(errno));
		goto out_unlink;
	}
	f = NULL;
	if (rename(tmp, path) < 0) {
		rc = fr_error_set(err, -errno, "%s: rename to %s: %s", tmp, path, strerror(errno));
		goto out_unlink;
	}
	rc = 0;
	goto out;

out_unlink:
	if (f)
		fclose(f);
	f = NULL;
	unlink(tmp);
out:
	free(text);
	return rc;
}

/* ---- layers --------------------------------------------------------------------------- */

bool model_layer_is_moe(const struct model_config *cfg, int layer)
{
	return cfg->n_routed_experts > 0 && layer >= 0 && layer < cfg->num_hidden_layers &&
	       layer >= cfg->first_k_dense_replace && cfg->moe_layer_freq > 0 &&
	       layer % cfg->moe_layer_freq == 0;
}

int model_n_moe_layers(const struct model_config *cfg)
{
	int n = 0;
	for (int l = 0; l < cfg->num_hidden_layers; l++)
		n += model_layer_is_moe(cfg, l);
	return n;
}

int model_moe_layer(const struct model_config *cfg, int moe_index)
{
	for (int l = 0, n = 0; moe_index >= 0 && l < cfg->num_hidden_layers; l++)
		if (model_layer_is_moe(cfg, l) && n++ == moe_index)
			return l;
	return -1;
}

int model_moe_index(const struct model_config *cfg, int layer)
{
	int n = 0;
	if (!model_layer_is_moe(cfg, layer))
		return -1;
	for (int l = 0; l < layer; l++)
		n += model_layer_is_moe(cfg, l);
	return n;
}
