/* SPDX-License-Identifier: Apache-2.0 */
/* slots.c - expert slots and grouped expert compute (one matmul per slot per batch). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"

struct slot {
	int expert;               /* logical expert id, -1 = empty */
	struct model_ffn ffn;     /* borrowed views */
	void *dev;                /* device tables: the device's copy; else NULL */
};

struct moe_slots {
	const struct model_config *cfg;
	int n_layers;             /* MoE layers */
	int n_slots;              /* per layer */
	struct slot *slots;       /* [n_layers][n_slots] */
	uint64_t *last_ns;        /* [n_layers] */

	/* Scratch, grown to the largest batch seen. */
	size_t cap_pairs, cap_rows;
	int32_t *cnt;             /* [n_slots + 1] */
	int *job;                 /* [n_slots] the slots with tokens, largest first */
	int32_t *order_tok;       /* [pairs] token of each pair, grouped by slot */
	float *order_w;           /* [pairs] */
	float *xs, *g, *u, *d;    /* [rows][hidden or width] */

	/* device tables (moe_slots_use_device), borrowed */
	const struct moe_device_ops *dev_ops;
	void *dev_ctx;
	void **dev_list;          /* [n_slots] scratch for compute */
};

int moe_slots_create(const struct model_config *cfg, int n_slots, struct moe_slots **ret)
{
	struct moe_slots *s;
	int n_layers = model_n_moe_layers(cfg);

	if (n_slots <= 0 || n_layers <= 0)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = cfg;
	s->n_layers = n_layers;
	s->n_slots = n_slots;
	s->slots = calloc((size_t)n_layers * (size_t)n_slots, sizeof(*s->slots));
	s->last_ns = calloc((size_t)n_layers, sizeof(*s->last_ns));
	s->cnt = calloc((size_t)n_slots + 1, sizeof(*s->cnt));
	s->job = calloc((size_t)n_slots, sizeof(*s->job));
	if (!s->slots || !s->last_ns || !s->cnt || !s->job) {
		moe_slots_destroy(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < (size_t)n_layers * (size_t)n_slots; i++)
		s->slots[i].expert = -1;
	*ret = s;
	return 0;
}

void moe_slots_destroy(struct moe_slots *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->dev_ops && s->slots && i < (size_t)s->n_layers * s->n_slots; i++)
		if (s->slots[i].dev)
			s->dev_ops->unload(s->dev_ctx, s->slots[i].dev);
	free(s->dev_list);
	free(s->slots);
	free(s->last_ns);
	free(s->cnt);
	free(s->job);
	free(s->order_tok);
	free(s->order_w);
	free(s->xs);
	free(s->g);
	free(s->u);
	free(s->d);
	free(s);
}

int moe_slots_count(const struct moe_slots *s)
{
	return s->n_slots;
}

const struct model_config *moe_slots_config(const struct moe_slots *s)
{
	return s->cfg;
}

static struct slot *slot_at(const struct moe_slots *s, int moe_layer, int slot)
{
	if (moe_layer < 0 || moe_layer >= s->n_layers || slot < 0 || slot >= s->n_slots)
		return NULL;
	return &s->slots[(size_t)moe_layer * s->n_slots + slot];
}

int moe_slots_use_device(struct moe_slots *s, const struct moe_device_ops *ops, void *ctx)
{
	if (!ops || !ops->load || !ops->unload || !ops->compute ||
	    !ops->to_host != !ops->compute_dev || !ops->to_dev != !ops->compute_dev)
		return -EINVAL;
	for (size_t i = 0; i < (size_t)s->n_layers * s->n_slots; i++)
		if (s->slots[i].expert >= 0)
			return -EBUSY;
	if (!s->dev_list && !(s->dev_list = calloc((size_t)s->n_slots, sizeof(*s->dev_list))))
		return -ENOMEM;
	s->dev_ops = ops;
	s->dev_ctx = ctx;
	return 0;
}

int moe_slot_set(struct moe_slots *s, int moe_layer, int slot, int expert,
		const struct model_ffn *ffn)
{
	struct slot *sl = slot_at(s, moe_layer, slot);
	int h = s->cfg->hidden_size, w = s->cfg->moe_intermediate_size;

	if (!sl || expert < 0 || expert >= s->cfg->n_routed_experts)
		return -EINVAL;
	if (ffn->gate.rows != w || ffn->gate.cols != h || ffn->up.rows != w ||
	    ffn->up.cols != h || ffn->down.rows != h || ffn->down.cols != w)
		return -EINVAL;
	if (s->dev_ops) {
		void *dev = NULL;
		int rc = s->dev_ops->load(s->dev_ctx, ffn, &dev);
		if (rc < 0)
			return rc;
		if (sl->dev)
			s->dev_ops->unload(s->dev_ctx, sl->dev);
		sl->dev = dev;
	}
	sl->expert = expert;
	sl->ffn = *ffn;
	return 0;
}

int moe_slot_expert(const struct moe_slots *s, int moe_layer, int slot)
{
	const struct slot *sl = slot_at(s, moe_layer, slot);
	return sl ? sl->expert : -1;
}

static int grow(struct moe_slots *s, size_t pairs)
{
	size_t h = (size_t)s->cfg->hidden_size, w = (size_t)s->cfg->moe_intermediate_size;

	if (pairs > s->cap_pairs) {
		int32_t *t = realloc(s->order_tok, pairs * sizeof(*t));
		if (!t)
			return -ENOMEM;
		s->order_tok = t;
		float *f = realloc(s->order_w, pairs * sizeof(*f));
		if (!f)
			return -ENOMEM;
		s->order_w = f;
		s->cap_pairs = pairs;
	}
	/* One slot's rows never exceed the token count, itself <= pairs. */
	if (pairs > s->cap_rows) {
		float *xs = realloc(s->xs, pairs * h * sizeof(float));
		if (!xs)
			return -ENOMEM;
		s->xs = xs;
		float *d = realloc(s->d, pairs * h * sizeof(float));
		if (!d)
			return -ENOMEM;
		s->d = d;
		float *g = realloc(s->g, pairs * w * sizeof(float));
		if (!g)
			return -ENOMEM;
		s->g = g;
		float *u = realloc(s->u, pairs * w * sizeof(float));
		if (!u)
			return -ENOMEM;
		s->u = u;
		s->cap_rows = pairs;
	}
	return 0;
}

/* Slots by rows, descending (ties: lower slot first); cnt: the slots' ends. */
static int job_cmp(const void *a, const void *b, void *arg)
{
	const int32_t *cnt = arg;
	int x = *(const int *)a, y = *(const int *)b;
	int32_t rx = cnt[x] - (x ? cnt[x - 1] : 0), ry = cnt[y] - (y ? cnt[y - 1] : 0);
	return rx != ry ? (rx < ry) - (rx > ry) : (x > y) - (x < y);
}

/* Slot sl_i's expert on its rows: pairs [cnt[sl_i - 1], cnt[sl_i]) of the scratch, gathered
 * from x, through gate, up, SwiGLU and down into d. */
static void slot_ffn(struct moe_slots *s, int moe_layer, int sl_i, const float *x)
{
	size_t h = (size_t)s->cfg->hidden_size, w = (size_t)s->cfg->moe_intermediate_size;
	int32_t start = sl_i ? s->cnt[sl_i - 1] : 0;
	int rows = s->cnt[sl_i] - start;
	const struct slot *sl = slot_at(s, moe_layer, sl_i);
	float *xs = s->xs + start * h, *g = s->g + start * w, *u = s->u + start * w;

	for (int r = 0; r < rows; r++)
		memcpy(xs + r * h, x + (size_t)s->order_tok[start + r] * h, h * sizeof(float));
	kn_matmul(g, xs, &sl->ffn.gate, rows);
	kn_matmul(u, xs, &sl->ffn.up, rows);
	kn_swiglu(g, g, u, rows * (int)w);
	kn_matmul(s->d + start * h, g, &sl->ffn.down, rows);
}

/* slot_ffn called by every thread of a team, each product split over it (kn_team_*): the
 * same bits. Each thread gathers a share of the rows and applies SwiGLU to the columns it
 * computed; two barriers a slot. Slots write disjoint ranges, so the next slot need not
 * wait for this one's down projection. */
static void slot_ffn_team(struct moe_slots *s, int moe_layer, int sl_i, const float *x)
{
	size_t h = (size_t)s->cfg->hidden_size, w = (size_t)s->cfg->moe_intermediate_size;
	int32_t start = sl_i ? s->cnt[sl_i - 1] : 0;
	int rows = s->cnt[sl_i] - start, r0, r1;
	const struct slot *sl = slot_at(s, moe_layer, sl_i);
	float *xs = s->xs + start * h;

	kn_team_share(rows, &r0, &r1);
	for (int r = r0; r < r1; r++)
		memcpy(xs + r * h, x + (size_t)s->order_tok[start + r] * h, h * sizeof(float));
#pragma omp barrier
	kn_team_swiglu_ffn(s->d + start * h, xs, &sl->ffn.gate, &sl->ffn.up, &sl->ffn.down, rows,
			   s->g + start * w, s->u + start * w, kn_precision());
}

/* A batch moe_compute() can take: the layer in range, pair offsets that do not decrease,
 * every pair's slot in range and filled. */
static int batch_check(const struct moe_slots *s, int moe_layer, const struct moe_batch *b)
{
	if (moe_layer < 0 || moe_layer >= s->n_layers || b->n_tok < 0 || b->pair_off[0] != 0)
		return -EINVAL;
	for (int t = 0; t < b->n_tok; t++)
		if (b->pair_off[t + 1] < b->pair_off[t])
			return -EINVAL;
	for (size_t i = 0; i < (size_t)b->pair_off[b->n_tok]; i++) {
		const struct slot *sl = slot_at(s, moe_layer, b->slot[i]);
		if (!sl || sl->expert < 0)
			return -EINVAL;
	}
	return 0;
}

/* A device table's handles of layer moe_layer's slots (NULL: empty), in s->dev_list. */
static void *const *dev_handles(struct moe_slots *s, int moe_layer)
{
	for (int i = 0; i < s->n_slots; i++)
		s->dev_list[i] = slot_at(s, moe_layer, i)->dev;
	return s->dev_list;
}

bool moe_slots_device(const struct moe_slots *s, const struct moe_device_ops **ops, void **ctx)
{
	*ops = s->dev_ops;
	*ctx = s->dev_ctx;
	return s->dev_ops != NULL;
}

int moe_compute_dev(struct moe_slots *s, int moe_layer, const struct moe_batch *b,
		    enum kn_dtype x_dt, void *out, enum kn_dtype out_dt)
{
	uint64_t t0 = fr_now_ns();
	int rc = batch_check(s, moe_layer, b);

	if (rc < 0)
		return rc;
	if ((x_dt != KN_DTYPE_F32 && x_dt != KN_DTYPE_BF16) ||
	    (out_dt != KN_DTYPE_F32 && out_dt != KN_DTYPE_BF16))
		return -EINVAL;
	if (!s->dev_ops || !s->dev_ops->compute_dev)
		return -EOPNOTSUPP;
	if (b->n_tok &&
	    (rc = s->dev_ops->compute_dev(s->dev_ctx, dev_handles(s, moe_layer), s->n_slots,
					  s->cfg->hidden_size, s->cfg->moe_intermediate_size, b,
					  x_dt, kn_precision() == KN_PRECISION_EXACT, out,
					  out_dt)) < 0)
		return rc;
	s->last_ns[moe_layer] = fr_now_ns() - t0;
	return 0;
}

int moe_compute(struct moe_slots *s, int moe_layer, const struct moe_batch *b, float *out)
{
	const struct kn_ops *ops = kn_ops();
	int h = s->cfg->hidden_size, w = s->cfg->moe_intermediate_size;
	size_t n_pairs;
	uint64_t t0 = fr_now_ns();
	int rc;

	if ((rc = batch_check(s, moe_layer, b)) < 0)
		return rc;
	n_pairs = (size_t)b->pair_off[b->n_tok];
	if (s->dev_ops) {
		if (b->n_tok &&
		    (rc = s->dev_ops->compute(s->dev_ctx, dev_handles(s, moe_layer), s->n_slots,
					      h, w, b, kn_precision() == KN_PRECISION_EXACT,
					      out)) < 0)
			return rc;
		s->last_ns[moe_layer] = fr_now_ns() - t0;
		return 0;
	}
	if ((rc = grow(s, n_pairs ? n_pairs : 1)) < 0)
		return rc;

	/* Counting sort of pairs by slot; within a slot, tokens stay in order. */
	memset(s->cnt, 0, ((size_t)s->n_slots + 1) * sizeof(*s->cnt));
	for (size_t i = 0; i < n_pairs; i++)
		s->cnt[b->slot[i] + 1]++;
	for (int i = 0; i < s->n_slots; i++)
		s->cnt[i + 1] += s->cnt[i];
	for (int t = 0; t < b->n_tok; t++) {
		for (int32_t p = b->pair_off[t]; p < b->pair_off[t + 1]; p++) {
			int32_t at = s->cnt[b->slot[p]]++;
			s->order_tok[at] = t;
			s->order_w[at] = b->weight[p];
		}
	}
	/* cnt[i] now holds the end of slot i: the slots with tokens, as jobs, largest first. */
	int n_jobs = 0;
	for (int sl_i = 0, start = 0; sl_i < s->n_slots; start = s->cnt[sl_i++])
		if (s->cnt[sl_i] > start)
			s->job[n_jobs++] = sl_i;
	qsort_r(s->job, (size_t)n_jobs, sizeof(*s->job), job_cmp, s->cnt);
	/* One parallel region for the layer (no fork, join or wake-up per product, which in a
	 * local cluster's passive threads costs a sleeping thread's wake-up every time). As
	 * many slots as threads or more: a thread computes whole experts. Fewer: each
	 * product split over the team. Every slot's rows have their own range of the scratch
	 * (pair order), and each row's result does not depend on the thread count, so both
	 * give the same bits. */
	int nth = kn_team_threads(n_pairs * (size_t)h * (size_t)w);
	if (nth > 1 && n_jobs >= nth) {
		kn_team_opened(nth);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
		for (int j = 0; j < n_jobs; j++)
			slot_ffn(s, moe_layer, s->job[j], b->x);
	} else if (nth > 1) {
		kn_team_opened(nth);
#pragma omp parallel num_threads(nth)
		for (int j = 0; j < n_jobs; j++)
			slot_ffn_team(s, moe_layer, s->job[j], b->x);
	} else {
		for (int j = 0; j < n_jobs; j++)
			slot_ffn(s, moe_layer, s->job[j], b->x);
	}
	/* the combine in slot order, as it always was */
	memset(out, 0, (size_t)b->n_tok * (size_t)h * sizeof(float));
	for (size_t p = 0; p < n_pairs; p++)
		ops->axpy(out + (size_t)s->order_tok[p] * h, s->order_w[p], s->d + p * h, h);
	s->last_ns[moe_layer] = fr_now_ns() - t0;
	return 0;
}

void moe_last_stats(const struct moe_slots *s, int moe_layer, uint64_t *ret_ns)
{
	if (ret_ns && moe_layer >= 0 && moe_layer < s->n_layers)
		*ret_ns = s->last_ns[moe_layer];
}
