/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dev_twin.c - kn_dev.h's ops on the CPU: "device" memory is host memory, each op the CPU
 * kernel the engine uses, so that the engine's device path (coordinator/engine_dev.c) runs
 * and is checked on any machine, with the same results as the CPU engine.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kn_dev.h"

struct twin {
	float *scratch; /* kn_attention_paged's, for max_ctx */
	size_t scratch_n;
	int max_ctx;
};

void *kn_dev_twin_create(int max_ctx)
{
	struct twin *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->max_ctx = max_ctx;
	t->scratch_n = kn_attention_scratch_size(max_ctx);
	t->scratch = malloc(t->scratch_n * sizeof(float));
	if (!t->scratch) {
		free(t);
		return NULL;
	}
	return t;
}

void kn_dev_twin_destroy(void *ctx)
{
	struct twin *t = ctx;
	if (t)
		free(t->scratch);
	free(t);
}

static int tw_alloc(void *ctx, size_t bytes, void **ret)
{
	(void)ctx;
	void *p = malloc(bytes ? bytes : 1);
	if (!p)
		return -ENOMEM;
	*ret = p;
	return 0;
}

static void tw_free(void *ctx, void *p)
{
	(void)ctx;
	free(p);
}

static int tw_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
	(void)ctx;
	memmove(dst, src, bytes);
	return 0;
}

/* The handle is a copy of the matrix's description: the weights stay where they are. */
static int tw_weight(void *ctx, const struct kn_mat *m, void **ret)
{
	(void)ctx;
	struct kn_mat *h = malloc(sizeof(*h));
	if (!h)
		return -ENOMEM;
	*h = *m;
	*ret = h;
	return 0;
}

static int tw_matmul(void *ctx, float *y, const float *x, const void *w, int n, bool exact)
{
	(void)ctx;
	if (exact)
		kn_matmul_exact(y, x, w, n);
	else
		kn_matmul(y, x, w, n);
	return 0;
}

static int tw_embed(void *ctx, float *out, const void *w, const int32_t *ids, int n)
{
	(void)ctx;
	const struct kn_mat *m = w;
	size_t row = (size_t)m->cols * kn_dtype_size(m->dtype);
	for (int t = 0; t < n; t++) {
		if (ids[t] < 0 || ids[t] >= m->rows)
			return -EINVAL;
		kn_to_f32(out + (size_t)t * m->cols, (const char *)m->data + ids[t] * row,
			  m->dtype, (size_t)m->cols);
	}
	return 0;
}

static int tw_rmsnorm(void *ctx, float *y, const float *x, const float *g, int n, int dim,
		      float eps)
{
	(void)ctx;
	kn_rmsnorm(y, x, g, n, dim, eps);
	return 0;
}

static int tw_rope(void *ctx, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
		   float theta)
{
	(void)ctx;
	kn_rope(x, n, n_heads, head_dim, pos, theta);
	return 0;
}

static int tw_kv_write(void *ctx, float *kp, float *vp, const float *k, const float *v,
		       const int32_t *table, int max_blocks, const int32_t *seq,
		       const int32_t *pos, int n, int block_size, int kv_dim)
{
	(void)ctx;
	for (int t = 0; t < n; t++) {
		int32_t blk = table[(size_t)seq[t] * max_blocks + pos[t] / block_size];
		size_t at = ((size_t)blk * block_size + pos[t] % block_size) * kv_dim;
		memcpy(kp + at, k + (size_t)t * kv_dim, (size_t)kv_dim * sizeof(float));
		memcpy(vp + at, v + (size_t)t * kv_dim, (size_t)kv_dim * sizeof(float));
	}
	return 0;
}

/* Row by row over its own sequence's blocks: the same bits as the engine's attention. */
static int tw_attention(void *ctx, float *out, const float *q, const float *kp, const float *vp,
			const int32_t *table, int max_blocks, const int32_t *seq, int block_size,
			int n, const int32_t *pos, int n_heads, int n_kv_heads, int head_dim,
			int max_ctx)
{
	struct twin *tw = ctx;
	size_t row = (size_t)n_heads * head_dim;
	if (max_ctx > tw->max_ctx)
		return -EINVAL;
	for (int t = 0; t < n; t++)
		kn_attention_paged(out + t * row, q + t * row, kp, vp,
				   table + (size_t)seq[t] * max_blocks, block_size, 1, &pos[t],
				   n_heads, n_kv_heads, head_dim, tw->scratch, tw->scratch_n);
	return 0;
}

static int tw_add(void *ctx, float *y, const float *x, size_t n)
{
	(void)ctx;
	for (size_t i = 0; i < n; i++)
		y[i] += x[i];
	return 0;
}

static int tw_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
	(void)ctx;
	if (n > (size_t)INT32_MAX)
		return -EINVAL;
	kn_swiglu(out, gate, up, (int)n);
	return 0;
}

const struct kn_dev_ops kn_dev_twin_ops = {
	.name = "twin",
	.alloc = tw_alloc,
	.free = tw_free,
	.upload = tw_copy,
	.download = tw_copy,
	.copy = tw_copy,
	.weight = tw_weight,
	.weight_free = tw_free,
	.matmul = tw_matmul,
	.embed = tw_embed,
	.rmsnorm = tw_rmsnorm,
	.rope = tw_rope,
	.kv_write = tw_kv_write,
	.attention = tw_attention,
	.add = tw_add,
	.swiglu = tw_swiglu,
};
