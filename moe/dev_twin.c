/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dev_twin.c - moe_device_ops on the CPU (moe.h): the worker's device path without a
 * device. A loaded expert's "device copy" is its views of the checkpoint (which stays
 * mapped, as for a CPU table); compute sets the experts of the call into the slots of a
 * scratch table of the CPU's own and runs moe_compute() there, so the results are the CPU
 * table's, bit for bit. What runs for real: moe_slots_use_device(), every load and unload
 * through the ops (live rebalance included), the compute call's plumbing; and frames in
 * "device memory" (host memory only ever reached through to_host, to_dev and compute_dev),
 * as a worker's rings are on a GPU with GPUDirect RDMA.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"

struct twin {
	const struct model_config *cfg;
	pthread_mutex_t lock; /* a staged table may compute while the serving one finishes */
	struct moe_slots *scratch; /* grown to the largest slot count seen */
	int n_slots;
	float *x, *out; /* compute_dev: the tokens widened, the partials in f32 */
	size_t cap;     /* floats in each */
};

struct twin_expert {
	struct model_ffn ffn;
};

int moe_dev_twin_create(const struct model_config *cfg, void **ret)
{
	struct twin *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->cfg = cfg;
	pthread_mutex_init(&t->lock, NULL);
	*ret = t;
	return 0;
}

void moe_dev_twin_destroy(void *ctx)
{
	struct twin *t = ctx;
	if (!t)
		return;
	moe_slots_destroy(t->scratch);
	pthread_mutex_destroy(&t->lock);
	free(t->x);
	free(t->out);
	free(t);
}

static int twin_load(void *ctx, const struct model_ffn *ffn, void **ret_dev)
{
	struct twin_expert *e = malloc(sizeof(*e));
	(void)ctx;
	if (!e)
		return -ENOMEM;
	e->ffn = *ffn;
	*ret_dev = e;
	return 0;
}

static void twin_unload(void *ctx, void *dev)
{
	(void)ctx;
	free(dev);
}

static int twin_compute(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
			const struct moe_batch *b, bool exact, float *out)
{
	struct twin *t = ctx;
	int rc = 0;

	(void)exact; /* moe_compute() computes in kn_precision(), which exact reflects */
	if (hidden != t->cfg->hidden_size || inter != t->cfg->moe_intermediate_size)
		return -EINVAL;
	pthread_mutex_lock(&t->lock);
	if (n_slots > t->n_slots) {
		moe_slots_destroy(t->scratch);
		t->scratch = NULL;
		t->n_slots = 0;
		if ((rc = moe_slots_create(t->cfg, n_slots, &t->scratch)) < 0)
			goto out;
		t->n_slots = n_slots;
	}
	for (int i = 0; i < n_slots && rc == 0; i++)
		if (dev[i])
			rc = moe_slot_set(t->scratch, 0, i, i, &((const struct twin_expert *)dev[i])->ffn);
	if (rc == 0)
		rc = moe_compute(t->scratch, 0, b, out);
out:
	pthread_mutex_unlock(&t->lock);
	return rc;
}

static int twin_to_host(void *ctx, void *host, const void *dev, size_t bytes)
{
	(void)ctx;
	memcpy(host, dev, bytes);
	return 0;
}

static int twin_to_dev(void *ctx, void *dev, const void *host, size_t bytes)
{
	(void)ctx;
	memcpy(dev, host, bytes);
	return 0;
}

/* As a GPU does it: the tokens widened from the wire's dtype on the device, the layer, the
 * partials narrowed into the frame. One frame at a time (the server's thread). */
static int twin_compute_dev(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
			    const struct moe_batch *b, enum kn_dtype x_dt, bool exact, void *out,
			    enum kn_dtype out_dt)
{
	struct twin *t = ctx;
	size_t n = (size_t)b->n_tok * hidden;
	float *p;
	int rc;

	if (n > t->cap) {
		if (!(p = realloc(t->x, n * sizeof(*p))))
			return -ENOMEM;
		t->x = p;
		if (!(p = realloc(t->out, n * sizeof(*p))))
			return -ENOMEM;
		t->out = p;
		t->cap = n;
	}
	kn_to_f32(t->x, b->x, x_dt, n);
	struct moe_batch fb = *b;
	fb.x = t->x;
	if ((rc = twin_compute(ctx, dev, n_slots, hidden, inter, &fb, exact, t->out)) < 0)
		return rc;
	kn_from_f32(out, out_dt, t->out, n);
	return 0;
}

const struct moe_device_ops moe_dev_twin_ops = {
	.name = "twin",
	.load = twin_load,
	.unload = twin_unload,
	.compute = twin_compute,
	.to_host = twin_to_host,
	.to_dev = twin_to_dev,
	.compute_dev = twin_compute_dev,
};
