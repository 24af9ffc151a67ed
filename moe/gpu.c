/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu.c - libferry-gpu.so: moe_device_ops over kernels/cuda. An expert's three matrices as
 * one bf16 block in device memory, loaded on the copy stream; the layer (kn_cuda_moe) on the
 * compute stream, the tokens copied up and the result down around it, from and to host
 * memory the worker pins (gpu_pin) where the driver allows.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/kn_cuda.h"
#include "moe/gpu.h"

struct moe_gpu {
	struct kn_cuda *compute, *copy;
	char desc[300];
	/* compute's buffers, grown to the largest batch seen (one table serves at a time, but
	 * a staged table may compute while the old one finishes: hence the lock) */
	pthread_mutex_t lock;
	float *dx, *dout;            /* [cap][hidden] f32, device */
	size_t cap_bytes;
	struct kn_cuda_expert *ex;   /* [cap_ex] */
	int cap_ex;
};

static void gpu_close(struct moe_gpu *g);

static int gpu_open(int device, struct moe_gpu **ret, struct fr_error *err)
{
	struct moe_gpu *g = calloc(1, sizeof(*g));
	char why[200] = "", d[256] = "";
	int rc, n = 0;

	if (!g)
		return fr_error_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&g->lock, NULL);
	if ((rc = kn_cuda_device_count(&n, why, sizeof(why))) < 0) {
		fr_error_set(err, rc, "cuda:%d: no CUDA device: %s", device, why);
		goto fail;
	}
	if (device < 0 || device >= n) {
		rc = fr_error_set(err, -ENODEV, "cuda:%d: the driver sees %d device%s (cuda:0%s)",
				  device, n, n == 1 ? "" : "s", n > 1 ? " and up" : "");
		goto fail;
	}
	if ((rc = kn_cuda_create(device, &g->compute)) < 0 ||
	    (rc = kn_cuda_create(device, &g->copy)) < 0) {
		fr_error_set(err, rc, "cuda:%d: cannot open the device", device);
		goto fail;
	}
	if (kn_cuda_describe(g->compute, d, sizeof(d)) < 0)
		snprintf(d, sizeof(d), "?");
	snprintf(g->desc, sizeof(g->desc), "cuda:%d (%s)", device, d);
	*ret = g;
	return 0;
fail:
	gpu_close(g);
	return rc;
}

static void gpu_close(struct moe_gpu *g)
{
	if (!g)
		return;
	if (g->compute) {
		kn_cuda_free(g->compute, g->dx);
		kn_cuda_free(g->compute, g->dout);
	}
	kn_cuda_destroy(g->compute);
	kn_cuda_destroy(g->copy);
	pthread_mutex_destroy(&g->lock);
	free(g->ex);
	free(g);
}

static const char *gpu_describe(const struct moe_gpu *g)
{
	return g->desc;
}

static int gpu_load(void *ctx, const struct model_ffn *ffn, void **ret_dev)
{
	struct moe_gpu *g = ctx;
	const struct kn_mat *m[3] = { &ffn->gate, &ffn->up, &ffn->down };
	size_t per = (size_t)ffn->gate.rows * ffn->gate.cols, at = 0;
	uint16_t *dev = NULL;
	int rc;

	if ((rc = kn_cuda_alloc(g->copy, 3 * per * sizeof(uint16_t), (void **)&dev)) < 0)
		return rc;
	for (int i = 0; i < 3 && rc == 0; i++, at += per) {
		if (m[i]->dtype == KN_DTYPE_BF16) {
			rc = kn_cuda_upload(g->copy, dev + at, m[i]->data, per * sizeof(uint16_t));
			continue;
		}
		/* another dtype: row by row through f32 to bf16 (round to nearest even) */
		size_t cols = (size_t)m[i]->cols, esz = kn_dtype_size(m[i]->dtype);
		float *f = malloc(cols * sizeof(*f));
		uint16_t *b = malloc(cols * sizeof(*b));
		if (!f || !b)
			rc = -ENOMEM;
		for (int r = 0; r < m[i]->rows && rc == 0; r++) {
			kn_to_f32(f, (const char *)m[i]->data + (size_t)r * cols * esz, m[i]->dtype,
				  cols);
			kn_from_f32(b, KN_DTYPE_BF16, f, cols);
			/* a pageable source is staged before the call returns: b may be reused */
			rc = kn_cuda_upload(g->copy, dev + at + (size_t)r * cols, b, cols * sizeof(*b));
		}
		free(f);
		free(b);
	}
	if (rc == 0)
		rc = kn_cuda_sync(g->copy); /* loaded before any table can serve it */
	if (rc < 0) {
		fprintf(stderr, "moe gpu: loading an expert: %s\n", kn_cuda_error(g->copy));
		kn_cuda_free(g->copy, dev);
		return rc == -ENOMEM ? rc : -EIO;
	}
	*ret_dev = dev;
	return 0;
}

static void gpu_unload(void *ctx, void *dev)
{
	struct moe_gpu *g = ctx;
	kn_cuda_free(g->copy, dev);
}

static int gpu_compute(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
		       const struct moe_batch *b, float *out)
{
	struct moe_gpu *g = ctx;
	size_t bytes = (size_t)b->n_tok * hidden * sizeof(float), per = (size_t)hidden * inter;
	int rc = 0;

	pthread_mutex_lock(&g->lock);
	if (n_slots > g->cap_ex) {
		struct kn_cuda_expert *ex = realloc(g->ex, sizeof(*ex) * (size_t)n_slots);
		if (!ex) {
			rc = -ENOMEM;
			goto out;
		}
		g->ex = ex;
		g->cap_ex = n_slots;
	}
	for (int i = 0; i < n_slots; i++) {
		const uint16_t *d = dev[i];
		g->ex[i] = d ? (struct kn_cuda_expert){ d, d + per, d + 2 * per }
			     : (struct kn_cuda_expert){ NULL, NULL, NULL };
	}
	if (bytes > g->cap_bytes) {
		kn_cuda_free(g->compute, g->dx);
		kn_cuda_free(g->compute, g->dout);
		g->dx = g->dout = NULL;
		g->cap_bytes = 0;
		if ((rc = kn_cuda_alloc(g->compute, bytes, (void **)&g->dx)) < 0 ||
		    (rc = kn_cuda_alloc(g->compute, bytes, (void **)&g->dout)) < 0)
			goto out;
		g->cap_bytes = bytes;
	}
	struct kn_cuda_moe_batch kb = { b->n_tok, g->dx, b->pair_off, b->slot, b->weight };
	if ((rc = kn_cuda_upload(g->compute, g->dx, b->x, bytes)) < 0 ||
	    (rc = kn_cuda_moe(g->compute, KN_CUDA_GEMM_GROUPED, g->ex, n_slots, hidden, inter, &kb,
			      g->dout)) < 0 ||
	    (rc = kn_cuda_download(g->compute, out, g->dout, bytes)) < 0)
		fprintf(stderr, "moe gpu: %s\n", kn_cuda_error(g->compute));
out:
	pthread_mutex_unlock(&g->lock);
	return rc == 0 || rc == -ENOMEM || rc == -EINVAL ? rc : -EIO;
}

static int gpu_pin(struct moe_gpu *g, void *p, size_t bytes, struct fr_error *err)
{
	int rc = kn_cuda_host_register(g->compute, p, bytes);
	if (rc < 0)
		return fr_error_set(err, rc, "%s", kn_cuda_error(g->compute));
	return 0;
}

static void gpu_unpin(struct moe_gpu *g, void *p)
{
	if (kn_cuda_host_unregister(g->compute, p) < 0)
		fprintf(stderr, "moe gpu: %s\n", kn_cuda_error(g->compute));
}

static const struct moe_device_ops gpu_ops = {
	.name = "cuda",
	.load = gpu_load,
	.unload = gpu_unload,
	.compute = gpu_compute,
};

__attribute__((visibility("default"))) const struct moe_gpu_module *ferry_gpu_module(void)
{
	static const struct moe_gpu_module m = {
		.abi = MOE_GPU_ABI,
		.open = gpu_open,
		.close = gpu_close,
		.describe = gpu_describe,
		.ops = &gpu_ops,
		.pin = gpu_pin,
		.unpin = gpu_unpin,
	};
	return &m;
}
