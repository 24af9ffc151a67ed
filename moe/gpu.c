/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu.c - libferry-gpu.so: moe_device_ops over kernels/cuda. An expert's three matrices as
 * one block in device memory (bf16, or f32 for a checkpoint's f32 or f16 weights: those
 * compute exactly, as on the CPU), loaded on the copy stream; the layer (kn_cuda_moe) on the
 * compute stream, the tokens copied up and the result down around it, from and to host
 * memory the worker pins (gpu_pin) where the driver allows.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

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
	/* the coordinator's engine (dev_*): activations rounded to bf16 for its products */
	uint16_t *xb;
	size_t xb_cap;
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
		kn_cuda_free(g->compute, g->xb);
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

/* The dtype a matrix is held in on the device: bf16 as it is; f32 and f16 as f32, so that
 * the exact precision stays exact for them (their products are the exact ones). */
static enum kn_dtype dev_dtype(const struct kn_mat *m)
{
	return m->dtype == KN_DTYPE_BF16 ? KN_DTYPE_BF16 : KN_DTYPE_F32;
}

/* Matrix m into dev (room for rows x cols of dev_dtype(m)) on stream c: as it is, or f16
 * row by row widened to f32. Queued: sync before using it. */
static int upload_mat(struct kn_cuda *c, void *dev, const struct kn_mat *m)
{
	size_t cols = (size_t)m->cols;
	int rc = 0;

	if (m->dtype == dev_dtype(m))
		return kn_cuda_upload(c, dev, m->data,
				      (size_t)m->rows * cols * kn_dtype_size(m->dtype));
	float *f = malloc(cols * sizeof(*f));
	if (!f)
		return -ENOMEM;
	for (int r = 0; r < m->rows && rc == 0; r++) {
		kn_to_f32(f, (const char *)m->data + (size_t)r * cols * kn_dtype_size(m->dtype),
			  m->dtype, cols);
		/* a pageable source is staged before the call returns: f may be reused */
		rc = kn_cuda_upload(c, (float *)dev + (size_t)r * cols, f, cols * sizeof(*f));
	}
	free(f);
	return rc;
}

/* A loaded expert: its three matrices, one device block. */
struct gpu_expert {
	char *d;
	enum kn_dtype dtype;
	size_t per; /* bytes of each matrix */
};

static int gpu_load(void *ctx, const struct model_ffn *ffn, void **ret_dev)
{
	struct moe_gpu *g = ctx;
	const struct kn_mat *m[3] = { &ffn->gate, &ffn->up, &ffn->down };
	struct gpu_expert *ex = calloc(1, sizeof(*ex));
	int rc;

	if (!ex)
		return -ENOMEM;
	ex->dtype = dev_dtype(&ffn->gate);
	ex->per = (size_t)ffn->gate.rows * ffn->gate.cols * kn_dtype_size(ex->dtype);
	for (int i = 1; i < 3; i++)
		if (dev_dtype(m[i]) != ex->dtype) {
			free(ex);
			return -EINVAL;
		}
	if ((rc = kn_cuda_alloc(g->copy, 3 * ex->per, (void **)&ex->d)) < 0) {
		free(ex);
		return rc;
	}
	for (int i = 0; i < 3 && rc == 0; i++)
		rc = upload_mat(g->copy, ex->d + i * ex->per, m[i]);
	if (rc == 0)
		rc = kn_cuda_sync(g->copy); /* loaded before any table can serve it */
	if (rc < 0) {
		fprintf(stderr, "moe gpu: loading an expert: %s\n", kn_cuda_error(g->copy));
		kn_cuda_free(g->copy, ex->d);
		free(ex);
		return rc == -ENOMEM ? rc : -EIO;
	}
	*ret_dev = ex;
	return 0;
}

static void gpu_unload(void *ctx, void *dev)
{
	struct moe_gpu *g = ctx;
	struct gpu_expert *ex = dev;
	if (ex)
		kn_cuda_free(g->copy, ex->d);
	free(ex);
}

/* Under g->lock: g->ex from the slots' device handles, and g->dx, g->dout with room for
 * bytes each. */
static int compute_prepare(struct moe_gpu *g, void *const *dev, int n_slots, size_t bytes)
{
	int rc;

	if (n_slots > g->cap_ex) {
		struct kn_cuda_expert *ex = realloc(g->ex, sizeof(*ex) * (size_t)n_slots);
		if (!ex)
			return -ENOMEM;
		g->ex = ex;
		g->cap_ex = n_slots;
	}
	for (int i = 0; i < n_slots; i++) {
		const struct gpu_expert *e = dev[i];
		g->ex[i] = e ? (struct kn_cuda_expert){ e->d, e->d + e->per, e->d + 2 * e->per,
							e->dtype }
			     : (struct kn_cuda_expert){ NULL, NULL, NULL, KN_DTYPE_BF16 };
	}
	if (bytes > g->cap_bytes) {
		kn_cuda_free(g->compute, g->dx);
		kn_cuda_free(g->compute, g->dout);
		g->dx = g->dout = NULL;
		g->cap_bytes = 0;
		if ((rc = kn_cuda_alloc(g->compute, bytes, (void **)&g->dx)) < 0 ||
		    (rc = kn_cuda_alloc(g->compute, bytes, (void **)&g->dout)) < 0)
			return rc;
		g->cap_bytes = bytes;
	}
	return 0;
}

/* An op's status on the compute stream: a CUDA failure is logged once here, with its
 * message (who: "moe gpu", "engine gpu"), and becomes -EIO. */
static int cuda_rc(struct moe_gpu *g, const char *who, int rc)
{
	if (rc >= 0 || rc == -ENOMEM || rc == -EINVAL)
		return rc;
	fprintf(stderr, "%s: %s\n", who, kn_cuda_error(g->compute));
	return -EIO;
}

static int compute_rc(struct moe_gpu *g, int rc)
{
	return cuda_rc(g, "moe gpu", rc);
}

static int gpu_compute(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
		       const struct moe_batch *b, bool exact, float *out)
{
	struct moe_gpu *g = ctx;
	size_t bytes = (size_t)b->n_tok * hidden * sizeof(float);
	int rc;

	pthread_mutex_lock(&g->lock);
	rc = compute_prepare(g, dev, n_slots, bytes);
	struct kn_cuda_moe_batch kb = { b->n_tok, g->dx, b->pair_off, b->slot, b->weight };
	if (rc == 0)
		rc = kn_cuda_upload(g->compute, g->dx, b->x, bytes);
	if (rc == 0)
		rc = kn_cuda_moe(g->compute, KN_CUDA_GEMM_AUTO,
				 exact ? KN_PRECISION_EXACT : KN_PRECISION_FAST, g->ex, n_slots,
				 hidden, inter, &kb, g->dout);
	if (rc == 0)
		rc = kn_cuda_download(g->compute, out, g->dout, bytes);
	pthread_mutex_unlock(&g->lock);
	return compute_rc(g, rc);
}

/* Frames in device memory (GPUDirect RDMA): the head of a frame down, a head up. */
static int gpu_to_host(void *ctx, void *host, const void *dev, size_t bytes)
{
	struct moe_gpu *g = ctx;
	return compute_rc(g, kn_cuda_download(g->compute, host, dev, bytes));
}

static int gpu_to_dev(void *ctx, void *dev, const void *host, size_t bytes)
{
	struct moe_gpu *g = ctx;
	int rc = kn_cuda_upload(g->compute, dev, host, bytes);
	return compute_rc(g, rc < 0 ? rc : kn_cuda_sync(g->compute)); /* a put reads it next */
}

/* The layer from the tokens where the NIC wrote them into the partials where it sends them
 * from: no copy through the host. */
static int gpu_compute_dev(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
			   const struct moe_batch *b, enum kn_dtype x_dt, bool exact, void *out,
			   enum kn_dtype out_dt)
{
	struct moe_gpu *g = ctx;
	size_t n = (size_t)b->n_tok * hidden;
	int rc;

	pthread_mutex_lock(&g->lock);
	struct kn_cuda_moe_batch kb = { b->n_tok, (const float *)b->x, b->pair_off, b->slot,
					b->weight };
	float *y = out_dt == KN_DTYPE_F32 ? out : NULL;
	/* the NIC's writes visible to the kernels (where the platform needs a flush) */
	rc = kn_cuda_flush_rdma_writes(g->compute);
	if (rc == -EOPNOTSUPP)
		rc = 0;
	if (rc == 0)
		rc = compute_prepare(g, dev, n_slots, n * sizeof(float));
	if (rc == 0 && x_dt == KN_DTYPE_BF16) {
		rc = kn_cuda_bf16_to_f32(g->compute, g->dx, (const uint16_t *)(const void *)b->x, n);
		kb.x = g->dx;
	}
	if (rc == 0)
		rc = kn_cuda_moe(g->compute, KN_CUDA_GEMM_AUTO,
				 exact ? KN_PRECISION_EXACT : KN_PRECISION_FAST, g->ex, n_slots,
				 hidden, inter, &kb, y ? y : g->dout);
	if (rc == 0 && !y)
		rc = kn_cuda_f32_to_bf16(g->compute, out, g->dout, n);
	if (rc == 0)
		rc = kn_cuda_sync(g->compute); /* the put reads the partials next */
	pthread_mutex_unlock(&g->lock);
	return compute_rc(g, rc);
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

static int gpu_dmabuf_alloc(struct moe_gpu *g, size_t bytes, void **ret_dev, int *ret_fd,
			    struct fr_error *err)
{
	void *d = NULL;
	int rc;

	if (!bytes || bytes % (2u << 20))
		return fr_error_set(err, -EINVAL, "dma-buf: %zu bytes, not a multiple of 2 MiB",
				    bytes);
	if ((rc = kn_cuda_alloc(g->compute, bytes, &d)) < 0)
		return fr_error_set(err, rc, "%s", kn_cuda_error(g->compute));
	if ((rc = kn_cuda_dmabuf_export(g->compute, d, bytes, ret_fd)) < 0) {
		fr_error_set(err, rc, "%s", kn_cuda_error(g->compute));
		kn_cuda_free(g->compute, d);
		return rc;
	}
	*ret_dev = d;
	return 0;
}

static void gpu_dmabuf_free(struct moe_gpu *g, void *dev, int fd)
{
	if (fd >= 0)
		close(fd);
	kn_cuda_free(g->compute, dev);
}

/* ---- the coordinator's engine on the GPU (kernels/kn_dev.h), on the compute stream ---- */

struct dev_mat {
	void *d; /* [rows][cols] of dtype (dev_dtype) */
	enum kn_dtype dtype;
	int rows, cols;
};

static int dev_rc(struct moe_gpu *g, int rc)
{
	return cuda_rc(g, "engine gpu", rc);
}

static int dev_alloc(void *ctx, size_t bytes, void **ret)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_alloc(g->compute, bytes, ret));
}

static void dev_free(void *ctx, void *p)
{
	struct moe_gpu *g = ctx;
	kn_cuda_free(g->compute, p);
}

static int dev_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_upload(g->compute, dst, src, bytes));
}

static int dev_download(void *ctx, void *dst, const void *src, size_t bytes)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_download(g->compute, dst, src, bytes));
}

static int dev_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_copy(g->compute, dst, src, bytes));
}

static int dev_weight(void *ctx, const struct kn_mat *m, void **ret)
{
	struct moe_gpu *g = ctx;
	struct dev_mat *w = calloc(1, sizeof(*w));
	int rc;

	if (!w)
		return -ENOMEM;
	w->rows = m->rows;
	w->cols = m->cols;
	w->dtype = dev_dtype(m);
	if ((rc = kn_cuda_alloc(g->compute, (size_t)m->rows * m->cols * kn_dtype_size(w->dtype),
				&w->d)) < 0 ||
	    (rc = upload_mat(g->compute, w->d, m)) < 0 || (rc = kn_cuda_sync(g->compute)) < 0) {
		kn_cuda_free(g->compute, w->d);
		free(w);
		return dev_rc(g, rc);
	}
	*ret = w;
	return 0;
}

static void dev_weight_free(void *ctx, void *p)
{
	struct moe_gpu *g = ctx;
	struct dev_mat *w = p;
	if (w)
		kn_cuda_free(g->compute, w->d);
	free(w);
}

/* y = x . W^T: exact (or f32 weights), with x f32 on the CUDA cores (exact.cu); else with x
 * rounded to bf16 on the tensor cores, fp32 sums. */
static int dev_matmul(void *ctx, float *y, const float *x, const void *p, int n, bool exact)
{
	struct moe_gpu *g = ctx;
	const struct dev_mat *w = p;
	size_t need = (size_t)n * w->cols * sizeof(uint16_t);
	int rc;

	if (exact || w->dtype != KN_DTYPE_BF16)
		return dev_rc(g, kn_cuda_matmul_f32(g->compute, y, x, w->d, w->dtype, n, w->rows,
						    w->cols));
	if (need > g->xb_cap) {
		if ((rc = kn_cuda_sync(g->compute)) < 0)
			return dev_rc(g, rc);
		kn_cuda_free(g->compute, g->xb);
		g->xb = NULL;
		g->xb_cap = 0;
		if ((rc = kn_cuda_alloc(g->compute, need, (void **)&g->xb)) < 0)
			return dev_rc(g, rc);
		g->xb_cap = need;
	}
	if ((rc = kn_cuda_f32_to_bf16(g->compute, g->xb, x, (size_t)n * w->cols)) < 0)
		return dev_rc(g, rc);
	return dev_rc(g, kn_cuda_matmul_bf16(g->compute, y, g->xb, w->d, n, w->rows, w->cols));
}

static int dev_embed(void *ctx, float *out, const void *p, const int32_t *ids, int n)
{
	struct moe_gpu *g = ctx;
	const struct dev_mat *w = p;
	return dev_rc(g, kn_cuda_embed(g->compute, out, w->d, w->dtype, w->rows, w->cols, ids, n));
}

static int dev_rmsnorm(void *ctx, float *y, const float *x, const float *gw, int n, int dim,
		       float eps)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_rmsnorm(g->compute, y, x, gw, n, dim, eps));
}

static int dev_rope(void *ctx, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
		    float theta)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_rope(g->compute, x, n, n_heads, head_dim, pos, theta));
}

static int dev_kv_write(void *ctx, float *kp, float *vp, const float *k, const float *v,
			const int32_t *table, int max_blocks, const int32_t *seq,
			const int32_t *pos, int n, int block_size, int kv_dim)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_kv_write(g->compute, kp, vp, k, v, table, max_blocks, seq, pos,
					  n, block_size, kv_dim));
}

static int dev_attention(void *ctx, float *out, const float *q, const float *kp,
			 const float *vp, const int32_t *table, int max_blocks,
			 const int32_t *seq, int block_size, int n, const int32_t *pos,
			 int n_heads, int n_kv_heads, int head_dim, int max_ctx)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_attention_rows(g->compute, out, q, kp, vp, table, max_blocks,
						seq, block_size, n, pos, n_heads, n_kv_heads,
						head_dim, max_ctx));
}

static int dev_add(void *ctx, float *y, const float *x, size_t n)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_add(g->compute, y, x, n));
}

static int dev_swiglu(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
	struct moe_gpu *g = ctx;
	return dev_rc(g, kn_cuda_swiglu(g->compute, out, gate, up, n));
}

static const struct kn_dev_ops dev_ops = {
	.name = "cuda",
	.alloc = dev_alloc,
	.free = dev_free,
	.upload = dev_upload,
	.download = dev_download,
	.copy = dev_copy,
	.weight = dev_weight,
	.weight_free = dev_weight_free,
	.matmul = dev_matmul,
	.embed = dev_embed,
	.rmsnorm = dev_rmsnorm,
	.rope = dev_rope,
	.kv_write = dev_kv_write,
	.attention = dev_attention,
	.add = dev_add,
	.swiglu = dev_swiglu,
};

static const struct moe_device_ops gpu_ops = {
	.name = "cuda",
	.load = gpu_load,
	.unload = gpu_unload,
	.compute = gpu_compute,
	.to_host = gpu_to_host,
	.to_dev = gpu_to_dev,
	.compute_dev = gpu_compute_dev,
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
		.dmabuf_alloc = gpu_dmabuf_alloc,
		.dmabuf_free = gpu_dmabuf_free,
		.engine_ops = &dev_ops,
	};
	return &m;
}
