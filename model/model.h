/* SPDX-License-Identifier: Apache-2.0 */
/*
 * model.h - HuggingFace DeepSeekMoE model directories: config.json, safetensors (single or
 * sharded, mmapped), weight binding with shape checks, the byte-level BPE tokenizer, and
 * the synthetic checkpoint generator.
 *
 * Every parser here takes untrusted input: it validates everything, returns 0 or a negative
 * errno, and on failure fills the caller's struct fr_error with a message that names the
 * file, the tensor or the field. Nothing here crashes, hangs or allocates without bound on
 * bad input (each parser has a fuzz target under tests/fuzz/).
 */
#ifndef FERRY_MODEL_H
#define FERRY_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "kernels/kernels.h"

/* ==== config.json ======================================================================== */

#define MODEL_MAX_LAYERS 1024
#define MODEL_MAX_EXPERTS 4096

struct model_config {
	char model_type[32];        /* "deepseek" (v1); "deepseek_v3"-style gating via fields */
	int vocab_size;
	int hidden_size;
	int intermediate_size;      /* dense FFN width */
	int moe_intermediate_size;  /* one routed expert's width */
	int num_hidden_layers;
	int num_attention_heads;
	int num_key_value_heads;    /* defaults to num_attention_heads */
	int head_dim;               /* derived: hidden_size / num_attention_heads */
	int n_routed_experts;       /* 0 = dense model */
	int n_shared_experts;       /* 0 = none */
	int num_experts_per_tok;    /* top-k */
	int first_k_dense_replace;  /* default 0 */
	int moe_layer_freq;         /* default 1 */
	int max_position_embeddings;/* default 2048 */
	double rms_norm_eps;        /* default 1e-6 */
	double rope_theta;          /* default 10000 */
	bool norm_topk_prob;        /* default false */
	bool attention_bias;        /* must be false (no bias tensors supported) */
	bool tie_word_embeddings;   /* default false */
	enum kn_scoring scoring_func;   /* "softmax" (default) or "sigmoid" */
	double routed_scaling_factor;   /* default 1.0 */
	bool has_expert_bias;       /* topk_method "noaux_tc": e_score_correction_bias tensors */
	int bos_token_id;           /* -1 when null/absent */
	int eos_token_id;           /* -1 when null/absent */
	enum kn_dtype torch_dtype;  /* default BF16 */
};

/* Parses config.json text (len bytes, need not be NUL-terminated) into *ret, applying HF
 * defaults and checking every field's type, range and consistency. Errors: -EINVAL (bad
 * JSON, missing/mistyped/inconsistent field; err names it), -ENOTSUP (a valid but
 * unsupported feature, e.g. rope_scaling, attention_bias, hidden_act other than silu). */
int model_config_parse(const char *json, size_t len, struct model_config *ret,
		       struct fr_error *err);
/* Reads DIR/config.json and parses it. Errors as above plus -errno from the file. */
int model_config_load(const char *dir, struct model_config *ret, struct fr_error *err);
/* Writes cfg as an HF config.json (full key set of deepseek-moe-16b-base) to path. */
int model_config_write(const struct model_config *cfg, const char *path, struct fr_error *err);
/* The text model_config_write() writes (without the final newline): heap, NUL-terminated,
 * caller frees; NULL when out of memory. */
char *model_config_to_json(const struct model_config *cfg);

/* HF rule: MoE iff n_routed_experts > 0, l >= first_k_dense_replace, l % moe_layer_freq == 0 */
bool model_layer_is_moe(const struct model_config *cfg, int layer);
/* Number of MoE layers and the index of layer l among them (-1 if dense). */
int model_n_moe_layers(const struct model_config *cfg);
int model_moe_index(const struct model_config *cfg, int layer);
/* The model layer of MoE layer moe_index (model_moe_index()'s inverse), or -1. */
int model_moe_layer(const struct model_config *cfg, int moe_index);

/* ==== safetensors ========================================================================= */

#define MODEL_MAX_DIMS 4

struct model_tensor {
	const char *name;           /* owned by the file */
	enum kn_dtype dtype;
	int ndim;
	int64_t shape[MODEL_MAX_DIMS];
	const void *data;           /* mmapped, little-endian, read-only */
	size_t nbytes;
	const char *path;           /* the file it lives in, for messages */
};

struct model_st_file;

/* mmaps one .safetensors file and validates its header: 8-byte length within the file,
 * JSON object, every entry's dtype (F32/BF16/F16; others -> -ENOTSUP), shape, data_offsets
 * inside the data section, dtype x shape == byte length, no overlapping ranges, unique
 * names. The data is never read here. *ret owned by the caller (model_st_close). */
int model_st_open(const char *path, struct model_st_file **ret, struct fr_error *err);
void model_st_close(struct model_st_file *f);
size_t model_st_count(const struct model_st_file *f);
const struct model_tensor *model_st_tensor(const struct model_st_file *f, size_t i);
const struct model_tensor *model_st_find(const struct model_st_file *f, const char *name);

/* The same header validation over an in-memory image of a whole file (for fuzzing and
 * tests). On success *ret is a file that borrows buf (must outlive it). */
int model_st_open_buffer(const void *buf, size_t len, const char *label,
			 struct model_st_file **ret, struct fr_error *err);

/* ==== checkpoint directories ============================================================ */

struct model_ckpt;

/* Opens an HF model directory: config.json, then model.safetensors.index.json (sharded:
 * every shard it names is opened, every tensor must be in the shard the index says) or a
 * single model.safetensors. *ret owned by the caller (model_ckpt_close). */
int model_ckpt_open(const char *dir, struct model_ckpt **ret, struct fr_error *err);
void model_ckpt_close(struct model_ckpt *ck);
const struct model_config *model_ckpt_config(const struct model_ckpt *ck);
const char *model_ckpt_dir(const struct model_ckpt *ck);
/* NULL if absent. */
const struct model_tensor *model_ckpt_find(const struct model_ckpt *ck, const char *name);

/* Parses a model.safetensors.index.json text into a name -> shard-file map; exposed for
 * fuzzing. Calls cb(name, file, ctx) per entry; a negative return from cb stops and is
 * returned. Errors: -EINVAL with err naming the problem. */
int model_index_parse(const char *json, size_t len,
		      int (*cb)(const char *name, const char *file, void *ctx), void *ctx,
		      struct fr_error *err);

/* ==== weights ============================================================================= */

/* A SwiGLU MLP: down(silu(gate(x)) * up(x)). gate/up [width][hidden], down [hidden][width]. */
struct model_ffn {
	struct kn_mat gate, up, down;
};

struct model_layer {
	float *attn_norm;           /* [hidden] f32, owned (widened from the checkpoint) */
	float *ffn_norm;            /* [hidden] f32, owned */
	struct kn_mat q, k, v, o;   /* q [heads*hd][hidden], k/v [kv_heads*hd][hidden], o [hidden][heads*hd] */
	bool moe;
	struct model_ffn dense;     /* dense layers only */
	struct kn_mat router;       /* MoE: [n_routed][hidden] */
	float *router_bias;         /* MoE with has_expert_bias: [n_routed] f32, owned; else NULL */
	bool has_shared;
	struct model_ffn shared;    /* MoE with n_shared_experts > 0: width moe_inter * n_shared */
	struct model_ffn *experts;  /* MoE: [n_routed], owned array; data NULL unless bound */
};

struct model_weights {
	const struct model_config *cfg; /* borrowed from the checkpoint */
	struct kn_mat embed;        /* [vocab][hidden] */
	struct kn_mat lm_head;      /* [vocab][hidden] (the embedding when tied) */
	float *final_norm;          /* [hidden] f32, owned */
	struct model_layer *layers; /* [num_hidden_layers], owned */
};

enum model_bind_flags {
	MODEL_BIND_ALL = 0,
	MODEL_BIND_NO_ROUTED = 1 << 0, /* coordinator side: skip routed experts */
};

/* Looks up and shape/dtype-checks every tensor the config implies (routed experts unless
 * MODEL_BIND_NO_ROUTED), so a wrong checkpoint fails here and not mid-request. Weights point
 * into the checkpoint's mmaps: ck must outlive *ret. Errors: -ENOENT (tensor missing),
 * -EINVAL (wrong shape or dtype), err names the tensor and file. */
int model_weights_bind(const struct model_ckpt *ck, unsigned flags, struct model_weights **ret,
		       struct fr_error *err);
/* Binds one routed expert (layer, e) into *ret (a worker loading only its slots). */
int model_expert_bind(const struct model_ckpt *ck, int layer, int expert, struct model_ffn *ret,
		      struct fr_error *err);
/* Reads an expert's weights into memory now (they are views into the mapped checkpoint):
 * a worker loading a slot calls it before the slot serves, so the first step that uses the
 * slot runs at full speed. Returns the bytes touched. */
size_t model_ffn_prefault(const struct model_ffn *f);
void model_weights_free(struct model_weights *w);

/* Bytes of each end of a tensor an expert fingerprint reads. */
#define MODEL_FP_EDGE 64
/*
 * A fingerprint of every routed expert, so that two processes can tell whether they hold
 * the same checkpoint without reading it whole: for (MoE layer l, expert e), FNV-1a over the
 * shape, dtype and the first and last MODEL_FP_EDGE bytes of its gate, up and down tensors
 * (pages touched: two per tensor). *ret is [n_moe_layers][n_routed_experts], heap, the
 * caller frees it. Errors: model_expert_bind()'s (err names the tensor), -ENOMEM.
 */
int model_expert_fingerprints(const struct model_ckpt *ck, uint64_t **ret, size_t *ret_n,
			      struct fr_error *err);

/* ==== tokenizer (byte-level BPE from HF tokenizer.json) ==================================== */

struct model_tokenizer;

/* Loads tokenizer.json text: model BPE (vocab + merges), pre_tokenizer (Sequence of Split
 * regexes with PCRE2 + ByteLevel), added/special tokens, ByteLevel decoder. Errors: -EINVAL
 * (malformed; err names the field), -ENOTSUP (a valid but unsupported component). */
int model_tokenizer_parse(const char *json, size_t len, struct model_tokenizer **ret,
			  struct fr_error *err);
int model_tokenizer_load(const char *path, struct model_tokenizer **ret, struct fr_error *err);
void model_tokenizer_free(struct model_tokenizer *tk);

/* Encodes len bytes of text (invalid UTF-8 handled deterministically, never an error).
 * add_special: prepend BOS as the post-processor would. *ret_ids heap, caller frees. */
int model_tokenizer_encode(const struct model_tokenizer *tk, const char *text, size_t len,
			   bool add_special, int32_t **ret_ids, size_t *ret_n);
/* Decodes ids to bytes (skip_special drops special tokens). *ret_text heap, NUL-terminated.
 * Errors: -EINVAL for an id out of range. */
int model_tokenizer_decode(const struct model_tokenizer *tk, const int32_t *ids, size_t n,
			   bool skip_special, char **ret_text, size_t *ret_len);
int model_tokenizer_vocab_size(const struct model_tokenizer *tk);
int model_tokenizer_bos(const struct model_tokenizer *tk); /* -1 if none */
int model_tokenizer_eos(const struct model_tokenizer *tk); /* -1 if none */

/* ==== synthetic checkpoints ================================================================= */

enum model_preset {
	MODEL_PRESET_TINY = 0,
	MODEL_PRESET_2B,
	MODEL_PRESET_16B,
	MODEL_PRESET_145B,
	MODEL_PRESET__COUNT,
};

/* "tiny", "2b", "16b", "145b" -> preset; -EINVAL otherwise. */
int model_preset_parse(const char *name, enum model_preset *ret);
/* The preset's name ("tiny", ...); "?" for an unknown value. */
const char *model_preset_name(enum model_preset p);
/* Fills the HF config of a preset (ARCHITECTURE §1 table; the widths the table leaves open
 * are chosen and documented in model/presets.c). torch_dtype is BF16. */
void model_preset_config(enum model_preset p, struct model_config *ret);
/* The name of the preset whose shape cfg has, as model_gen() can write it: every field of
 * the preset's config but those the generator's options change (vocab_size and the BOS/EOS
 * ids with a tokenizer, torch_dtype, fewer layers with first_k_dense_replace capped by
 * them). NULL when none matches. */
const char *model_gen_preset_match(const struct model_config *cfg);

/* Parameter counts implied by a config (no checkpoint needed). */
struct model_param_counts {
	int64_t total;
	int64_t routed;             /* routed experts: the expert workers' share */
	int64_t coordinator;        /* the rest: embeddings, attention, norms, routers, shared
	                             * experts, dense FFNs, lm_head */
	int64_t active;             /* used per token: coordinator + k routed experts per layer */
};
void model_param_count(const struct model_config *cfg, struct model_param_counts *ret);

#define MODEL_GEN_MAX_SKEW 100

struct model_gen_opts {
	enum model_preset preset;
	int layers;                 /* 0 = the preset's count; else 1..preset count (trims, keeps
	                             * first_k_dense_replace: 2 = one dense + one MoE layer) */
	enum kn_dtype dtype;        /* F32 or BF16 (BF16 = round-to-nearest-even of the F32 values) */
	uint64_t seed;
	int shards;                 /* 1 = model.safetensors; N > 1 = index + N shards (<= 256) */
	int threads;                /* generator threads; 0 or 1 = one. Values never depend on it.
	                             * More help only on idle cores: on a busy host, threads that
	                             * wait for each other at every block cost more than they win */
	/* Optional: called after each written block with bytes written so far and the total of
	 * all safetensors files; may be NULL. */
	void (*progress)(uint64_t done, uint64_t total, void *ctx);
	void *progress_ctx;
	/* Optional tokenizer.json (NULL: none): copied into dir (with the tokenizer_config.json
	 * beside it, if any); vocab_size becomes its vocabulary size and bos/eos_token_id its
	 * BOS/EOS (null when it has none), so every id it emits is one the model knows. */
	const char *tokenizer;
	/* Steerable routing load (0 = off, the files of every earlier version): >= 0, finite.
	 * Every MoE layer's router favours a per-layer popularity order of its experts, one
	 * order for prompts of tokens in [0, vocab/2) and another for [vocab/2, vocab):
	 * expert of rank r gets a logit bias of about S ln(1/r) on the router's noise scale,
	 * so a token's first choice is rank r with probability ~ r^-S (model_gen_skew_load()).
	 * Order A is a per-layer shuffle (from the seed), order B is A rotated by n/2: the hot
	 * half of either order is the cold half of the other.
	 * How: the embeddings of each vocabulary half share a direction (A on even, B on odd
	 * coordinates, random signs) and gate row e has a component along A of S times its
	 * centred log-popularity in order A (and along B for order B), with its random part
	 * made orthogonal to both. Written to ferry-gen.json beside config.json. At most
	 * MODEL_GEN_MAX_SKEW (beyond ~3 every token of a half already picks the same experts). */
	double skew;
};

/* Writes a deterministic synthetic checkpoint (config.json + safetensors [+ index]
 * [+ tokenizer.json]) into dir (created if needed), streaming tensor by tensor: memory use
 * is bounded by one row block (and the tokenizer, when one is given), not the model size.
 * Same opts -> byte-identical files. Each value depends only on (seed, tensor name, element
 * index), so sharding and dtype never change values. Every file is written under a
 * temporary name and renamed when complete; config.json comes last. Errors: -EINVAL (bad
 * opts; err says which), -ENOTSUP (a tokenizer this library cannot load), -errno from the
 * file system (err names the file). Built apart from the rest of this folder, in the
 * ferry-model-gen library: link model_gen_dep to call it (the daemons do not). */
int model_gen(const struct model_gen_opts *o, const char *dir, struct fr_error *err);

/* The generator's record of a skewed checkpoint: DIR/ferry-gen.json, written by model_gen()
 * when opts.skew > 0 (and removed when it is 0). */
#define MODEL_GEN_MANIFEST "ferry-gen.json"

struct model_gen_skew_info {
	double skew;                /* 0 = none (no manifest) */
	int vocab_split;            /* tokens below it favour order A, the others order B */
};

/* Reads DIR/ferry-gen.json into *ret ({0} when the file does not exist). Errors: -EINVAL
 * (malformed: err names the file and key), -errno from the file. */
int model_gen_skew_read(const char *dir, struct model_gen_skew_info *ret, struct fr_error *err);

/* The routed load the skew targets: expected max/mean tokens per expert when each token
 * picks k of n experts by Plackett-Luce sampling with weights r^-skew (rank r = 1..n), i.e.
 * router logits biased by skew ln(1/r) plus Gumbel noise. Deterministic (a fixed-seed Monte
 * Carlo estimate, about 1% accurate); 1 for skew 0; n/k at most. */
double model_gen_skew_load(double skew, int n, int k);

#endif /* FERRY_MODEL_H */
