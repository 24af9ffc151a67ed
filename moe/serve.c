/* SPDX-License-Identifier: Apache-2.0 */
/*
 * serve.c - the worker's data path: dispatch frames in, grouped expert compute, combine
 * frames out (ARCHITECTURE §2, §4).
 *
 * One server per coordinator endpoint. Arrivals queue in a FIFO of at most ring.slots
 * entries (one per ring slot: the coordinator reuses a slot only after it has our answer)
 * and are answered strictly in order: decode in place, compute, encode into the combine
 * slot of the same micro-batch, put, release. A step that cannot go on now (the combine
 * slot's previous put not yet complete, no credit at the coordinator) leaves the entry at
 * the head and the loop sleeps in tp_wait() until an event or credit return wakes it.
 * Every scratch buffer is sized to the ring at create: nothing is allocated per frame.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "moe/moe.h"

/* Frames are read and written in place: vectors are little-endian on the wire. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the data path reads frame vectors in place and needs a little-endian host"
#endif

#define WK_COMP "wk"
#define WAIT_SLICE_MS 100   /* longest sleep between two looks at the stop flag */
#define N_EVENTS 32

/* ---- the server ------------------------------------------------------------------------ */

/* An arrival waiting for its answer. */
struct pending {
	uint32_t imm;
	uint64_t len;
	uint32_t slot;         /* ring slot: micro-batch % ring.slots */
	bool encoded;          /* the combine frame sits in its send slot, put not yet posted */
	size_t frame_len;      /* of the encoded combine frame */
	uint16_t layer;        /* MoE layer, for the stats */
	uint32_t n_pairs;
	uint64_t ns;
};

struct moe_server {
	struct moe_slots *slots;
	struct tp_context *ctx;
	struct tp_ep *ep;
	struct tp_mem *recv;   /* [ring.slots][dslot] dispatch frames, borrowed */
	struct tp_mem *send;   /* [ring.slots][cslot] combine frames, owned (host) or borrowed
	                        * (frames on the device) */
	bool dev_frames;       /* both rings in device memory (moe_server_opts.dev_send) */
	uint8_t *head;         /* dev_frames: a dispatch frame's head, copied to the host */
	uint8_t *chead;        /* dev_frames: a combine frame's head, before it goes up */
	size_t head_max, chead_max;
	struct fp_ring ring;
	size_t dslot, cslot;
	int n_layers;          /* MoE layers of the slot table */
	int n_slots;           /* slots per layer of the slot table */
	struct moe_slots *first;    /* the table given at create: the caller's */
	uint32_t epoch;             /* of w->slots */
	/* Under lock: a table staged for a coming epoch (ours), and whether one is staged. */
	struct moe_slots *staged;
	uint32_t staged_epoch;
	bool has_staged;
	char name[32];

	bool *send_busy;       /* [ring.slots] a put from this send slot is not complete */
	struct pending *fifo;  /* [ring.slots] arrivals not yet answered, oldest first */
	uint32_t fifo_head, fifo_n;

	/* Scratch for one frame, sized to the ring. */
	float *x;              /* [tokens][hidden] f32: bf16 vectors widened */
	float *out;            /* [tokens][hidden] f32 partials */
	uint16_t *out16;       /* [tokens][hidden] bf16 partials for a bf16 reply */
	uint32_t *rows;        /* [tokens] token rows, host order */
	int32_t *pair_off;     /* [tokens + 1] */
	int32_t *pair_slot;    /* [tokens * max_pairs] */
	float *pair_w;         /* [tokens * max_pairs] */

	int failed;            /* sticky -EBADMSG / -ECONNRESET once run() gave up */
	struct fr_error fail_msg;
	atomic_bool stop;

	pthread_mutex_t lock;  /* guards the counters below */
	uint64_t *st_tokens;   /* [n_layers] token-expert pairs computed */
	uint64_t *st_ns;       /* [n_layers] compute nanoseconds */
	uint64_t *tot_tokens;  /* [n_layers] the same, never reset (/metrics) */
	uint64_t *tot_ns;      /* [n_layers] */
	uint64_t st_frames;
	struct moe_server_totals tot; /* never reset (/metrics) */

	struct tp_event evs[N_EVENTS];
};

void moe_server_destroy(struct moe_server *w)
{
	if (!w)
		return;
	if (!w->dev_frames)
		tp_mem_free(w->send);
	free(w->head);
	free(w->chead);
	free(w->send_busy);
	free(w->fifo);
	free(w->x);
	free(w->out);
	free(w->out16);
	free(w->rows);
	free(w->pair_off);
	free(w->pair_slot);
	free(w->pair_w);
	free(w->st_tokens);
	free(w->st_ns);
	free(w->tot_tokens);
	free(w->tot_ns);
	if (w->slots != w->first)
		moe_slots_destroy(w->slots);
	if (w->has_staged)
		moe_slots_destroy(w->staged);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

int moe_server_create(struct moe_slots *slots, struct tp_context *ctx, struct tp_ep *ep,
		     struct tp_mem *recv, const struct moe_server_opts *o,
		     struct moe_server **ret, struct fr_error *err)
{
	const struct model_config *cfg = moe_slots_config(slots);
	const struct fp_ring *r = &o->ring;
	const char *name = o->name ? o->name : "worker";
	struct moe_server *w;
	size_t dslot = fp_ring_dispatch_slot(r), cslot = fp_ring_combine_slot(r);
	int rc;

	if (!dslot || !cslot)
		return fr_error_set(err, -EINVAL,
				    "%s: ring out of limits (slots %u, tokens %u, hidden %u, "
				    "max_pairs %u)", name, r->slots, r->tokens, r->hidden,
				    r->max_pairs);
	if ((int)r->hidden != cfg->hidden_size)
		return fr_error_set(err, -EINVAL, "%s: ring hidden %u, model hidden %d", name,
				    r->hidden, cfg->hidden_size);
	if (tp_mem_len(recv) < r->slots * dslot)
		return fr_error_set(err, -EINVAL,
				    "%s: receive region of %zu bytes, the ring needs %u x %zu",
				    name, tp_mem_len(recv), r->slots, dslot);
	if (tp_ep_remote_len(ep) < r->slots * cslot)
		return fr_error_set(err, -EINVAL,
				    "%s: the coordinator's region has %zu bytes, the ring needs "
				    "%u x %zu", name, tp_ep_remote_len(ep), r->slots, cslot);

	w = calloc(1, sizeof(*w));
	if (!w)
		return fr_error_set(err, -ENOMEM, "%s: out of memory", name);
	pthread_mutex_init(&w->lock, NULL);
	atomic_init(&w->stop, false);
	w->slots = slots;
	w->first = slots;
	w->epoch = o->epoch;
	w->ctx = ctx;
	w->ep = ep;
	w->recv = recv;
	w->ring = *r;
	w->dslot = dslot;
	w->cslot = cslot;
	w->n_layers = model_n_moe_layers(cfg);
	w->n_slots = moe_slots_count(slots);
	snprintf(w->name, sizeof(w->name), "%s", name);

	size_t vec = (size_t)r->tokens * r->hidden, pairs = (size_t)r->tokens * r->max_pairs;
	w->send_busy = calloc(r->slots, sizeof(*w->send_busy));
	w->fifo = calloc(r->slots, sizeof(*w->fifo));
	w->x = malloc(vec * sizeof(*w->x));
	w->out = malloc(vec * sizeof(*w->out));
	w->out16 = malloc(vec * sizeof(*w->out16));
	w->rows = malloc(r->tokens * sizeof(*w->rows));
	w->pair_off = malloc((r->tokens + (size_t)1) * sizeof(*w->pair_off));
	w->pair_slot = malloc(pairs * sizeof(*w->pair_slot));
	w->pair_w = malloc(pairs * sizeof(*w->pair_w));
	w->st_tokens = calloc((size_t)w->n_layers, sizeof(*w->st_tokens));
	w->st_ns = calloc((size_t)w->n_layers, sizeof(*w->st_ns));
	w->tot_tokens = calloc((size_t)w->n_layers, sizeof(*w->tot_tokens));
	w->tot_ns = calloc((size_t)w->n_layers, sizeof(*w->tot_ns));
	if (!w->send_busy || !w->fifo || !w->x || !w->out || !w->out16 || !w->rows ||
	    !w->pair_off || !w->pair_slot || !w->pair_w || !w->st_tokens || !w->st_ns ||
	    !w->tot_tokens || !w->tot_ns) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory for a ring of %u x %u tokens",
				  name, r->slots, r->tokens);
		goto fail;
	}
	if (o->dev_send) {
		const struct moe_device_ops *dops;
		void *dctx;
		struct fp_header hmax = { .dtype = FP_DTYPE_F32, .n_tokens = r->tokens,
					  .hidden = r->hidden,
					  .n_pairs = r->tokens * r->max_pairs };
		w->dev_frames = true;
		w->send = o->dev_send;
		if (!moe_slots_device(slots, &dops, &dctx) || !dops->compute_dev) {
			rc = fr_error_set(err, -EINVAL, "%s: frames in device memory need a slot "
					  "table on a device that computes from them", name);
			goto fail;
		}
		if (tp_mem_len(o->dev_send) < r->slots * cslot) {
			rc = fr_error_set(err, -EINVAL, "%s: device send ring of %zu bytes, the ring "
					  "needs %u x %zu", name, tp_mem_len(o->dev_send),
					  r->slots, cslot);
			goto fail;
		}
		w->chead_max = FP_HDR_SIZE + 4ull * r->tokens + 16;
		if (fp_dispatch_head_len(&hmax, &w->head_max) < 0 ||
		    !(w->head = malloc(w->head_max)) || !(w->chead = malloc(w->chead_max))) {
			rc = fr_error_set(err, -ENOMEM, "%s: out of memory", name);
			goto fail;
		}
	} else if ((rc = tp_mem_alloc(ctx, r->slots * cslot, &w->send)) < 0) {
		fr_error_set(err, rc, "%s: cannot allocate the %u x %zu byte send ring: %s", name,
			     r->slots, cslot, strerror(-rc));
		goto fail;
	}
	*ret = w;
	return 0;
fail:
	moe_server_destroy(w);
	return rc;
}

int moe_server_host_regions(const struct moe_server *w, struct moe_host_region *v, int max)
{
	if (w->dev_frames)
		return 0;
	size_t vec = (size_t)w->ring.tokens * w->ring.hidden * sizeof(float);
	const struct moe_host_region all[MOE_SERVER_HOST_REGIONS] = {
		{ tp_mem_ptr(w->recv), tp_mem_len(w->recv), "receive ring" },
		{ w->x, vec, "activations" },
		{ w->out, vec, "partials" },
	};
	for (int i = 0; i < max && i < MOE_SERVER_HOST_REGIONS; i++)
		v[i] = all[i];
	return MOE_SERVER_HOST_REGIONS;
}

int moe_server_stage(struct moe_server *w, struct moe_slots *next, uint32_t epoch)
{
	struct moe_slots *drop = NULL;

	if (moe_slots_count(next) != w->n_slots)
		return -EINVAL;
	pthread_mutex_lock(&w->lock);
	if (w->has_staged)
		drop = w->staged;
	w->staged = next;
	w->staged_epoch = epoch;
	w->has_staged = true;
	pthread_mutex_unlock(&w->lock);
	moe_slots_destroy(drop);
	return 0;
}

uint32_t moe_server_epoch(struct moe_server *w)
{
	pthread_mutex_lock(&w->lock);
	uint32_t e = w->epoch;
	pthread_mutex_unlock(&w->lock);
	return e;
}

void moe_server_stop(struct moe_server *w)
{
	atomic_store(&w->stop, true);
}

void moe_server_totals(struct moe_server *w, struct moe_server_totals *ret,
		       uint64_t *ret_tokens, uint64_t *ret_ns)
{
	size_t n = (size_t)w->n_layers;

	pthread_mutex_lock(&w->lock);
	*ret = w->tot;
	if (ret_tokens)
		memcpy(ret_tokens, w->tot_tokens, n * sizeof(*ret_tokens));
	if (ret_ns)
		memcpy(ret_ns, w->tot_ns, n * sizeof(*ret_ns));
	pthread_mutex_unlock(&w->lock);
}

void moe_server_take_stats(struct moe_server *w, uint64_t *ret_tokens, uint64_t *ret_ns,
			  uint64_t *ret_frames)
{
	size_t n = (size_t)w->n_layers;

	pthread_mutex_lock(&w->lock);
	if (ret_tokens)
		memcpy(ret_tokens, w->st_tokens, n * sizeof(*ret_tokens));
	if (ret_ns)
		memcpy(ret_ns, w->st_ns, n * sizeof(*ret_ns));
	if (ret_frames)
		*ret_frames = w->st_frames;
	memset(w->st_tokens, 0, n * sizeof(*w->st_tokens));
	memset(w->st_ns, 0, n * sizeof(*w->st_ns));
	w->st_frames = 0;
	pthread_mutex_unlock(&w->lock);
}

/* Records a failure that ends the service; later run() calls return it again. */
static FR_PRINTF(4, 5) int fail(struct moe_server *w, struct fr_error *err, int rc,
				const char *fmt, ...)
{
	char what[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	w->failed = rc;
	fr_error_set(&w->fail_msg, rc, "%s: %s", w->name, what);
	fr_warn(WK_COMP, "%s", w->fail_msg.msg);
	if (err)
		*err = w->fail_msg;
	return rc;
}

#define BAD(...) fail(w, err, -EBADMSG, __VA_ARGS__)

/* Queues an arrival. The checks here need only the imm: where the frame sits. */
static int on_arrival(struct moe_server *w, const struct tp_event *ev, struct fr_error *err)
{
	struct fp_imm_fields f = fp_imm_decode(ev->imm);
	uint32_t layer = f.layer, mb = f.mb, kind = f.kind;
	uint32_t slot = mb % w->ring.slots;

	if (kind != FP_KIND_DISPATCH)
		return BAD("arrival imm 0x%08x: kind %u is not dispatch", ev->imm, kind);
	if (ev->len > w->dslot)
		return BAD("layer %u mb %u: %llu bytes, a ring slot has %zu", layer, mb,
			   (unsigned long long)ev->len, w->dslot);
	/* A slot still queued means the coordinator overwrote a frame not yet answered. */
	for (uint32_t i = 0; i < w->fifo_n; i++)
		if (w->fifo[(w->fifo_head + i) % w->ring.slots].slot == slot)
			return BAD("layer %u mb %u: ring slot %u reused before it was answered",
				   layer, mb, slot);
	/* Cannot overflow: ring.slots entries, each a distinct slot. */
	w->fifo[(w->fifo_head + w->fifo_n++) % w->ring.slots] =
		(struct pending){ .imm = ev->imm, .len = ev->len, .slot = slot };
	return 0;
}

/* Frames in device memory: the head of the dispatch frame at dev (len bytes) into w->head,
 * its header first, then the rest up to the vectors, so that fp_dispatch_decode() can read
 * it there (it never reads the vectors). */
static int fetch_head(struct moe_server *w, const uint8_t *dev, size_t len, uint32_t layer,
		      uint32_t mb, struct fr_error *err)
{
	const struct moe_device_ops *ops;
	struct fr_error ferr = { { 0 } };
	struct fp_header h;
	size_t head;
	void *ctx;
	int rc;

	moe_slots_device(w->slots, &ops, &ctx);
	if ((rc = ops->to_host(ctx, w->head, dev, FR_MIN(len, (size_t)FP_HDR_SIZE))) < 0)
		return fail(w, err, rc, "layer %u mb %u: copying the frame's header from the "
			    "device: %s", layer, mb, strerror(-rc));
	if (fp_header_decode(w->head, len, &h, &ferr) < 0)
		return BAD("layer %u mb %u: %s", layer, mb, ferr.msg);
	if (h.kind != FP_KIND_DISPATCH || fp_dispatch_head_len(&h, &head) < 0 ||
	    head > w->head_max || head > len)
		return BAD("layer %u mb %u: a dispatch frame of %u tokens and %u pairs does not fit "
			   "the put (%zu bytes) or the ring", layer, mb, h.n_tokens, h.n_pairs, len);
	if ((rc = ops->to_host(ctx, w->head + FP_HDR_SIZE, dev + FP_HDR_SIZE,
			       head - FP_HDR_SIZE)) < 0)
		return fail(w, err, rc, "layer %u mb %u: copying the frame's head from the "
			    "device: %s", layer, mb, strerror(-rc));
	return 0;
}

/* Frames in device memory: h's answer computed from the vectors where they landed (at
 * dev_x) into the partials of the combine frame in the send slot, its head written there
 * too; the frame's length into p. */
static int answer_dev(struct moe_server *w, struct pending *p, const struct fp_header *h,
		      const struct moe_batch *b, const uint8_t *dev_x, struct fr_error *err)
{
	uint8_t *dst = (uint8_t *)tp_mem_ptr(w->send) + (size_t)p->slot * w->cslot;
	enum kn_dtype dt = h->dtype == FP_DTYPE_BF16 ? KN_DTYPE_BF16 : KN_DTYPE_F32;
	const struct moe_device_ops *ops;
	size_t head;
	void *ctx;
	int rc;

	struct fp_combine c = {
		.h = { .dtype = h->dtype, .layer = h->layer, .micro_batch = h->micro_batch,
		       .step_epoch = h->step_epoch, .n_tokens = h->n_tokens, .hidden = h->hidden },
		.token_rows = w->rows,
	};
	rc = fp_combine_encode_head(&c, w->chead, w->chead_max, &head, &p->frame_len);
	if (rc == 0 && p->frame_len > w->cslot)
		rc = -ENOBUFS;
	if (rc < 0)
		return fail(w, err, rc, "layer %u mb %u: cannot encode the combine frame: %s",
			    h->layer, h->micro_batch, strerror(-rc));
	struct moe_batch db = *b;
	db.x = (const float *)(const void *)dev_x; /* device memory, dtype dt */
	if ((rc = moe_compute_dev(w->slots, h->layer, &db, dt, dst + head, dt)) < 0)
		return fail(w, err, rc, "layer %u mb %u: compute: %s", h->layer, h->micro_batch,
			    strerror(-rc));
	moe_slots_device(w->slots, &ops, &ctx);
	if ((rc = ops->to_dev(ctx, dst, w->chead, head)) < 0)
		return fail(w, err, rc, "layer %u mb %u: writing the combine head to the device: "
			    "%s", h->layer, h->micro_batch, strerror(-rc));
	return 0;
}

/* Decodes, computes and encodes the answer of p into its send slot. */
static int answer(struct moe_server *w, struct pending *p, struct fr_error *err)
{
	const uint8_t *buf = (const uint8_t *)tp_mem_ptr(w->recv) + (size_t)p->slot * w->dslot;
	const uint8_t *dev_frame = buf; /* dev_frames: where the frame is; buf its head's copy */
	struct fp_imm_fields f = fp_imm_decode(p->imm);
	uint32_t layer = f.layer, mb = f.mb;
	const struct fp_ring *r = &w->ring;
	struct fr_error ferr = { { 0 } };
	struct fp_dispatch_view v;
	int rc;

	if (w->dev_frames) {
		if ((rc = fetch_head(w, dev_frame, (size_t)p->len, layer, mb, err)) < 0)
			return rc;
		buf = w->head;
	}
	if (fp_dispatch_decode(buf, (size_t)p->len, (uint32_t)w->n_slots, &v, &ferr) < 0)
		return BAD("layer %u mb %u: %s", layer, mb, ferr.msg);
	const struct fp_header *h = &v.h;
	if (h->layer != layer || (h->micro_batch & 0xffu) != mb ||
	    h->micro_batch % r->slots != p->slot)
		return BAD("frame (layer %u, mb %u) does not match imm (%u, %u)", h->layer,
			   h->micro_batch, layer, mb);
	if (v.frame_len != p->len)
		return BAD("layer %u mb %u: frame of %zu bytes in a put of %llu", layer, mb,
			   v.frame_len, (unsigned long long)p->len);
	if ((int)h->layer >= w->n_layers)
		return BAD("layer %u: the model has %d MoE layers", layer, w->n_layers);
	if (h->hidden != r->hidden)
		return BAD("layer %u mb %u: hidden %u, ring %u", layer, mb, h->hidden, r->hidden);
	if (h->n_tokens > r->tokens || h->n_pairs > (uint64_t)r->tokens * r->max_pairs)
		return BAD("layer %u mb %u: %u tokens / %u pairs, the ring holds %u / %llu", layer,
			   mb, h->n_tokens, h->n_pairs, r->tokens,
			   (unsigned long long)r->tokens * r->max_pairs);

	/* The first frame of a staged epoch: the coordinator routes by its table now. */
	if (h->step_epoch != w->epoch) {
		pthread_mutex_lock(&w->lock);
		if (w->has_staged && w->staged_epoch == h->step_epoch) {
			struct moe_slots *old = w->slots;
			w->slots = w->staged;
			w->epoch = w->staged_epoch;
			w->has_staged = false;
			w->staged = NULL;
			pthread_mutex_unlock(&w->lock);
			fr_info(WK_COMP, "%s: epoch %u in force: new slot table, the old one freed",
				w->name, w->epoch);
			if (old != w->first)
				moe_slots_destroy(old);
		} else {
			pthread_mutex_unlock(&w->lock);
			return BAD("layer %u mb %u: a frame of epoch %u, we serve epoch %u%s", layer,
				   mb, h->step_epoch, w->epoch, w->has_staged ? " (another one staged)" :
				   "");
		}
	}

	uint32_t n = h->n_tokens, q = 0;
	w->pair_off[0] = 0;
	for (uint32_t t = 0; t < n; t++) {
		w->rows[t] = fp_le32(v.token_rows + 4ull * t);
		uint32_t c = fp_le16(v.pair_counts + 2ull * t);
		for (uint32_t j = 0; j < c; j++, q++) {
			const uint8_t *pp = v.pairs + (size_t)FP_PAIR_SIZE * q;
			w->pair_slot[q] = fp_le16(pp);
			w->pair_w[q] = fp_lef32(pp + 4);
			/* The coordinator's routing table disagrees with what we hold. */
			if (moe_slot_expert(w->slots, h->layer, w->pair_slot[q]) < 0)
				return BAD("layer %u mb %u: pair %u names empty slot %d", layer, mb,
					   q, w->pair_slot[q]);
		}
		w->pair_off[t + 1] = (int32_t)q;
	}

	if (w->dev_frames) {
		struct moe_batch db = { .n_tok = (int)n, .pair_off = w->pair_off,
					.slot = w->pair_slot, .weight = w->pair_w };
		if ((rc = answer_dev(w, p, h, &db, dev_frame + (v.vectors - buf), err)) < 0)
			return rc;
		moe_last_stats(w->slots, h->layer, &p->ns);
		p->layer = h->layer;
		p->n_pairs = h->n_pairs;
		p->encoded = true;
		return 0;
	}
	const float *x;
	size_t nv = (size_t)n * r->hidden;
	if (h->dtype == FP_DTYPE_BF16) {
		kn_to_f32(w->x, v.vectors, KN_DTYPE_BF16, nv);
		x = w->x;
	} else {
		x = (const float *)(const void *)v.vectors; /* 16-byte aligned, LE host */
	}
	struct moe_batch b = {
		.n_tok = (int)n, .x = x, .pair_off = w->pair_off, .slot = w->pair_slot,
		.weight = w->pair_w,
	};
	if ((rc = moe_compute(w->slots, h->layer, &b, w->out)) < 0)
		return fail(w, err, rc, "layer %u mb %u: compute: %s", layer, mb, strerror(-rc));
	moe_last_stats(w->slots, h->layer, &p->ns);

	const void *partials = w->out;
	if (h->dtype == FP_DTYPE_BF16) {
		kn_from_f32(w->out16, KN_DTYPE_BF16, w->out, nv);
		partials = w->out16;
	}
	struct fp_combine c = {
		.h = { .dtype = h->dtype, .layer = h->layer, .micro_batch = h->micro_batch,
		       .step_epoch = h->step_epoch, .n_tokens = n, .hidden = h->hidden },
		.token_rows = w->rows,
		.partials = partials,
	};
	uint8_t *dst = (uint8_t *)tp_mem_ptr(w->send) + (size_t)p->slot * w->cslot;
	if ((rc = fp_combine_encode(&c, dst, w->cslot, &p->frame_len)) < 0)
		return fail(w, err, rc, "layer %u mb %u: cannot encode the combine frame: %s",
			    layer, mb, strerror(-rc));
	p->layer = h->layer;
	p->n_pairs = h->n_pairs;
	p->encoded = true;
	return 0;
}

/* Answers queued arrivals in order until the queue is empty or the head must wait. */
static int drain(struct moe_server *w, struct fr_error *err)
{
	while (w->fifo_n > 0) {
		struct pending *p = &w->fifo[w->fifo_head];
		uint32_t mb = fp_imm_decode(p->imm).mb;
		size_t off = (size_t)p->slot * w->cslot;
		int rc;

		if (!p->encoded) {
			if (w->send_busy[p->slot])
				return 0; /* its previous answer is still being sent */
			if ((rc = answer(w, p, err)) < 0)
				return rc;
			/* Counted once the answer exists, before it is put: whoever reads the
			 * stats after the coordinator got the combine sees these pairs (a put
			 * that must wait is retried without counting again). */
			pthread_mutex_lock(&w->lock);
			w->st_tokens[p->layer] += p->n_pairs;
			w->st_ns[p->layer] += p->ns;
			w->st_frames++;
			w->tot_tokens[p->layer] += p->n_pairs;
			w->tot_ns[p->layer] += p->ns;
			w->tot.frames++;
			w->tot.bytes_in += p->len;
			w->tot.bytes_out += p->frame_len;
			pthread_mutex_unlock(&w->lock);
		}
		rc = tp_put_imm(w->ep, w->send, off, off, p->frame_len,
				fp_imm(p->layer, mb, FP_KIND_COMBINE), TP_PUT_SIGNAL, p->slot);
		if (rc == -EAGAIN)
			return 0; /* the coordinator has not released enough combines yet */
		if (rc < 0 && tp_ep_status(w->ep) < 0)
			return fail(w, err, -ECONNRESET, "coordinator endpoint failed: %s",
				    strerror(-tp_ep_status(w->ep)));
		if (rc < 0)
			return fail(w, err, rc, "layer %u mb %u: put of the combine frame: %s",
				    p->layer, mb, strerror(-rc));
		w->send_busy[p->slot] = true;
		/* answer() is done with the dispatch frame: its slot may be rewritten. */
		if ((rc = tp_ep_release(w->ep, 1)) < 0)
			return fail(w, err, -EPROTO, "release: %s", strerror(-rc));
		w->fifo_head = (w->fifo_head + 1) % w->ring.slots;
		w->fifo_n--;
	}
	return 0;
}

static int on_events(struct moe_server *w, int n, struct fr_error *err)
{
	for (int i = 0; i < n; i++) {
		const struct tp_event *ev = &w->evs[i];
		int rc;

		/* The context serves this endpoint only; anything else is not ours to judge. */
		if (ev->ep != w->ep)
			continue;
		switch (ev->type) {
		case TP_EV_SEND_DONE:
			if (ev->status < 0)
				return fail(w, err, -ECONNRESET, "combine put failed: %s",
					    strerror(-ev->status));
			if (ev->cookie < w->ring.slots)
				w->send_busy[ev->cookie] = false;
			break;
		case TP_EV_ARRIVAL:
			if ((rc = on_arrival(w, ev, err)) < 0)
				return rc;
			break;
		case TP_EV_EP_ERROR:
			return fail(w, err, -ECONNRESET, "coordinator endpoint failed: %s",
				    strerror(ev->status ? -ev->status : ECONNRESET));
		}
	}
	return 0;
}

int moe_server_run(struct moe_server *w, int timeout_ms, struct fr_error *err)
{
	uint64_t deadline = fr_now_ns() + (uint64_t)FR_MAX(timeout_ms, 0) * 1000000u;
	int rc;

	if (w->failed) {
		if (err)
			*err = w->fail_msg;
		return w->failed;
	}
	for (;;) {
		if ((rc = drain(w, err)) < 0)
			return rc;
		if (atomic_load(&w->stop))
			return 0;
		/* Bounded sleeps: stop() is seen within WAIT_SLICE_MS without a wake-up fd. */
		int slice = WAIT_SLICE_MS;
		if (timeout_ms >= 0) {
			uint64_t now = fr_now_ns();
			uint64_t left = now < deadline ? (deadline - now) / 1000000u : 0;
			if (left == 0 && timeout_ms > 0)
				return 0;
			slice = (int)FR_MIN(left, (uint64_t)WAIT_SLICE_MS);
		}
		int n = tp_wait(w->ctx, w->evs, N_EVENTS, slice);
		if (n < 0)
			return fail(w, err, n, "tp_wait: %s", strerror(-n));
		if ((rc = on_events(w, n, err)) < 0)
			return rc;
		if (timeout_ms == 0)
			return drain(w, err); /* one look, no sleeping */
	}
}
