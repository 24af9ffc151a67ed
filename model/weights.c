/* SPDX-License-Identifier: Apache-2.0 */
/* weights.c - binds the tensors a config implies, checking every shape up front. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/model.h"

/* Kernels read tensors in place as float / uint16_t arrays: their data must be aligned to
 * the element size. Every writer we know pads headers so it is; refuse files that are not. */
static int check_aligned(const struct model_tensor *t, struct fr_error *err)
{
	if ((uintptr_t)t->data % kn_dtype_size(t->dtype) != 0)
		return fr_error_set(err, -ENOTSUP,
				    "%s: tensor %s is not aligned to its %zu-byte elements in the file",
				    t->path, t->name, kn_dtype_size(t->dtype));
	return 0;
}

/* Finds name and checks it is a 2-D [rows][cols] matrix; fills *ret as a view. */
static int bind_mat(const struct model_ckpt *ck, const char *name, int rows, int cols,
		    struct kn_mat *ret, struct fr_error *err)
{
	const struct model_tensor *t = model_ckpt_find(ck, name);

	if (!t)
		return fr_error_set(err, -ENOENT, "%s: tensor %s is missing", model_ckpt_dir(ck),
				    name);
	if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
		char got[64] = "";
		for (int i = 0, n = 0; i < t->ndim && n < (int)sizeof(got); i++)
			n += snprintf(got + n, sizeof(got) - (size_t)n, "%s%lld", i ? ", " : "",
				      (long long)t->shape[i]);
		return fr_error_set(err, -EINVAL,
				    "%s: tensor %s has shape [%s], the config implies [%d, %d]",
				    t->path, name, got, rows, cols);
	}
	if (check_aligned(t, err) < 0)
		return -ENOTSUP;
	ret->data = t->data;
	ret->dtype = t->dtype;
	ret->rows = rows;
	ret->cols = cols;
	return 0;
}

/* A 1-D [n] vector widened to a freshly allocated f32 array. */
static int bind_vec(const struct model_ckpt *ck, const char *name, int n, float **ret,
		    struct fr_error *err)
{
	const struct model_tensor *t = model_ckpt_find(ck, name);
	float *v;

	if (!t)
		return fr_error_set(err, -ENOENT, "%s: tensor %s is missing", model_ckpt_dir(ck),
				    name);
	if (t->ndim != 1 || t->shape[0] != n)
		return fr_error_set(err, -EINVAL, "%s: tensor %s should be a vector of %d, has %d dims (first %lld)",
				    t->path, name, n, t->ndim, t->ndim ? (long long)t->shape[0] : 0LL);
	if (check_aligned(t, err) < 0)
		return -ENOTSUP;
	v = malloc((size_t)n * sizeof(*v));
	if (!v)
		return fr_error_set(err, -ENOMEM, "out of memory");
	kn_to_f32(v, t->data, t->dtype, (size_t)n);
	*ret = v;
	return 0;
}

static int bind_ffn(const struct model_ckpt *ck, const char *prefix, int hidden, int width,
		    struct model_ffn *ret, struct fr_error *err)
{
	char name[256];
	int rc;

	snprintf(name, sizeof(name), "%s.gate_proj.weight", prefix);
	if ((rc = bind_mat(ck, name, width, hidden, &ret->gate, err)) < 0)
		return rc;
	snprintf(name, sizeof(name), "%s.up_proj.weight", prefix);
	if ((rc = bind_mat(ck, name, width, hidden, &ret->up, err)) < 0)
		return rc;
	snprintf(name, sizeof(name), "%s.down_proj.weight", prefix);
	return bind_mat(ck, name, hidden, width, &ret->down, err);
}

int model_expert_bind(const struct model_ckpt *ck, int layer, int expert, struct model_ffn *ret,
		      struct fr_error *err)
{
	const struct model_config *c = model_ckpt_config(ck);
	char prefix[128];

	if (layer < 0 || layer >= c->num_hidden_layers || !model_layer_is_moe(c, layer) ||
	    expert < 0 || expert >= c->n_routed_experts)
		return fr_error_set(err, -EINVAL, "no routed expert %d in layer %d", expert, layer);
	snprintf(prefix, sizeof(prefix), "model.layers.%d.mlp.experts.%d", layer, expert);
	return bind_ffn(ck, prefix, c->hidden_size, c->moe_intermediate_size, ret, err);
}

/* Brings one matrix's pages into this process: the kernel reads ahead (MADV_WILLNEED), then
 * one load per page maps each of them, so the first step that multiplies by it takes no
 * page fault. */
static size_t mat_prefault(const struct kn_mat *m, size_t page)
{
	size_t bytes = (size_t)m->rows * (size_t)m->cols * kn_dtype_size(m->dtype);
	uintptr_t lo = (uintptr_t)m->data & ~(uintptr_t)(page - 1);
	const volatile uint8_t *p = m->data;
	uint8_t sink = 0;

	if (!bytes)
		return 0;
	(void)madvise((void *)lo, (uintptr_t)m->data + bytes - lo, MADV_WILLNEED);
	for (size_t off = 0; off < bytes; off += page)
		sink ^= p[off];
	sink ^= p[bytes - 1];
	(void)sink;
	return bytes;
}

size_t model_ffn_prefault(const struct model_ffn *f)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t page = pg > 0 ? (size_t)pg : 4096;

	return mat_prefault(&f->gate, page) + mat_prefault(&f->up, page) +
	       mat_prefault(&f->down, page);
}

static uint64_t mat_fingerprint(uint64_t h, const struct kn_mat *m)
{
	size_t bytes = (size_t)m->rows * (size_t)m->cols * kn_dtype_size(m->dtype);
	size_t edge = FR_MIN(bytes, (size_t)MODEL_FP_EDGE);
	uint64_t head[3] = { (uint64_t)m->rows, (uint64_t)m->cols, (uint64_t)m->dtype };

	h ^= fr_fnv1a64(head, sizeof(head));
	h = h * 0x100000001b3ull ^ fr_fnv1a64(m->data, edge);
	h = h * 0x100000001b3ull ^ fr_fnv1a64((const char *)m->data + bytes - edge, edge);
	return h;
}

int model_expert_fingerprints(const struct model_ckpt *ck, uint64_t **ret, size_t *ret_n,
			      struct fr_error *err)
{
	const struct model_config *c = model_ckpt_config(ck);
	int n_moe = model_n_moe_layers(c), E = c->n_routed_experts, rc;
	uint64_t *fp = calloc((size_t)FR_MAX(n_moe * E, 1), sizeof(*fp));

	if (!fp)
		return fr_error_set(err, -ENOMEM, "out of memory");
	for (int l = 0; l < c->num_hidden_layers; l++) {
		int ml = model_moe_index(c, l);
		if (ml < 0)
			continue;
		for (int e = 0; e < E; e++) {
			struct model_ffn f;
			if ((rc = model_expert_bind(ck, l, e, &f, err)) < 0) {
				free(fp);
				return rc;
			}
			uint64_t h = 0xcbf29ce484222325ull;
			h = mat_fingerprint(h, &f.gate);
			h = mat_fingerprint(h, &f.up);
			fp[(size_t)ml * E + e] = mat_fingerprint(h, &f.down);
		}
	}
	*ret = fp;
	*ret_n = (size_t)n_moe * E;
	return 0;
}

static int bind_layer(const struct model_ckpt *ck, int l, unsigned flags, struct model_layer *L,
		      struct fr_error *err)
{
	const struct model_config *c = model_ckpt_config(ck);
	int hd = c->head_dim, h = c->hidden_size;
	char name[256];
	int rc;

#define LNAME(fmt) (snprintf(name, sizeof(name), "model.layers.%d." fmt, l), name)
	if ((rc = bind_vec(ck, LNAME("input_layernorm.weight"), h, &L->attn_norm, err)) < 0 ||
	    (rc = bind_vec(ck, LNAME("post_attention_layernorm.weight"), h, &L->ffn_norm, err)) < 0 ||
	    (rc = bind_mat(ck, LNAME("self_attn.q_proj.weight"), c->num_attention_heads * hd, h, &L->q, err)) < 0 ||
	    (rc = bind_mat(ck, LNAME("self_attn.k_proj.weight"), c->num_key_value_heads * hd, h, &L->k, err)) < 0 ||
	    (rc = bind_mat(ck, LNAME("self_attn.v_proj.weight"), c->num_key_value_heads * hd, h, &L->v, err)) < 0 ||
	    (rc = bind_mat(ck, LNAME("self_attn.o_proj.weight"), h, c->num_attention_heads * hd, &L->o, err)) < 0)
		return rc;

	L->moe = model_layer_is_moe(c, l);
	if (!L->moe) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp", l);
		return bind_ffn(ck, name, h, c->intermediate_size, &L->dense, err);
	}
	if ((rc = bind_mat(ck, LNAME("mlp.gate.weight"), c->n_routed_experts, h, &L->router, err)) < 0)
		return rc;
	if (c->has_expert_bias &&
	    (rc = bind_vec(ck, LNAME("mlp.gate.e_score_correction_bias"), c->n_routed_experts,
			   &L->router_bias, err)) < 0)
		return rc;
#undef LNAME
	L->has_shared = c->n_shared_experts > 0;
	if (L->has_shared) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp.shared_experts", l);
		if ((rc = bind_ffn(ck, name, h, c->moe_intermediate_size * c->n_shared_experts,
				   &L->shared, err)) < 0)
			return rc;
	}
	L->experts = calloc((size_t)c->n_routed_experts, sizeof(*L->experts));
	if (!L->experts)
		return fr_error_set(err, -ENOMEM, "out of memory");
	if (flags & MODEL_BIND_NO_ROUTED)
		return 0;
	for (int e = 0; e < c->n_routed_experts; e++)
		if ((rc = model_expert_bind(ck, l, e, &L->experts[e], err)) < 0)
			return rc;
	return 0;
}

int model_weights_bind(const struct model_ckpt *ck, unsigned flags, struct model_weights **ret,
		       struct fr_error *err)
{
	const struct model_config *c = model_ckpt_config(ck);
	struct model_weights *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return fr_error_set(err, -ENOMEM, "out of memory");
	w->cfg = c;
	w->layers = calloc((size_t)c->num_hidden_layers, sizeof(*w->layers));
	if (!w->layers) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if ((rc = bind_mat(ck, "model.embed_tokens.weight", c->vocab_size, c->hidden_size,
			   &w->embed, err)) < 0)
		goto fail;
	if (c->tie_word_embeddings && !model_ckpt_find(ck, "lm_head.weight"))
		w->lm_head = w->embed;
	else if ((rc = bind_mat(ck, "lm_head.weight", c->vocab_size, c->hidden_size, &w->lm_head,
				err)) < 0)
		goto fail;
	if ((rc = bind_vec(ck, "model.norm.weight", c->hidden_size, &w->final_norm, err)) < 0)
		goto fail;
	for (int l = 0; l < c->num_hidden_layers; l++)
		if ((rc = bind_layer(ck, l, flags, &w->layers[l], err)) < 0)
			goto fail;
	*ret = w;
	return 0;
fail:
	model_weights_free(w);
	return rc;
}

void model_weights_free(struct model_weights *w)
{
	if (!w)
		return;
	if (w->layers) {
		for (int l = 0; l < w->cfg->num_hidden_layers; l++) {
			free(w->layers[l].attn_norm);
			free(w->layers[l].ffn_norm);
			free(w->layers[l].router_bias);
			free(w->layers[l].experts);
		}
		free(w->layers);
	}
	free(w->final_norm);
	free(w);
}
