/* SPDX-License-Identifier: Apache-2.0 */
/*
 * remote.c - the MoE seam served by expert workers over the transport: the
 * coordinator's half of the data path (ARCHITECTURE §2, §4; serve.c is the other).
 *
 * dispatch() chooses a replica per (token, expert), groups the pairs by worker, encodes one
 * dispatch frame per worker into that worker's send slot of the micro-batch and puts it;
 * it waits only for back-pressure (a send slot whose previous put has not completed, no
 * credit). combine() then waits for the answers of exactly the workers it sent to and adds
 * them in worker order, so a run is reproducible whatever order frames arrive in.
 *
 * Several micro-batches may be out at once. Whatever op is polling records every event:
 * a combine frame of another micro-batch stays in its ring slot, noted and unreleased,
 * until that micro-batch's combine() reads it. Arrivals are released in the order they
 * came (tp_ep_release() hands back the oldest), so one consumed ahead of an older frame
 * waits in a small per-worker queue until the older one is consumed too.
 *
 * Workers may be spread over several transport contexts (one per local device): each
 * worker's send ring lives on its endpoint's context, and waiting sleeps on all of them.
 *
 * Failures of the ring itself (a worker's endpoint failed while it owed us a frame, a
 * malformed or unexpected frame, a timeout) are sticky: every later op returns the same
 * error, since frames still in flight could land in slots reused later. Errors found
 * before anything is sent (sizes, ids, a dead worker) leave the MoE usable.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "kernels/kernels.h"

/* Combine partials are added straight from the receive region. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the data path reads frame vectors in place and needs a little-endian host"
#endif

#define RM_COMP "co.remote"
#define RM_MAX_MB 255 /* the imm carries 8 bits of micro-batch */
#define N_EVENTS 64

/* One worker's share of one ring slot's micro-batch. */
struct rw_slot {
	uint32_t n_tok;        /* tokens sent; 0 = nothing sent */
	uint32_t *rows;        /* [ring.tokens] micro-batch row of each token sent */
	bool arrived;          /* its combine frame landed (and is unreleased) */
	uint64_t len;          /* bytes of that frame */
	bool send_busy;        /* the dispatch put from this send slot has not completed */
	bool sent;             /* this micro-batch's dispatch frame went out */
	uint64_t sent_ns;      /* when */
};

#define LAT_N 64 /* answers remembered per worker for its step deadline */

/* An arrival not yet released. */
struct rw_arrival {
	uint32_t slot;
	bool consumed;
};

struct rworker {
	struct tp_ep *ep;        /* borrowed */
	struct tp_mem *recv;     /* [ring.slots][cslot] combine frames, borrowed */
	struct tp_mem *send;     /* [ring.slots][dslot] dispatch frames, owned */
	int status;              /* 0, or the negative errno its endpoint failed with */
	bool gone_told;          /* moe_remote_check() reported its failure */
	struct rw_slot *slot;    /* [ring.slots] */
	struct rw_arrival *q;    /* [q_cap] unreleased arrivals, oldest first */
	uint32_t q_head, q_n;

	/* Dispatch build scratch (one micro-batch at a time). */
	int32_t last_tok;        /* last token that joined this worker's batch, -1 none */
	uint32_t n_pairs;
	uint16_t *counts;        /* [ring.tokens] pairs per token */
	uint16_t *pslot;         /* [ring.tokens * ring.max_pairs] local slot of each pair */
	float *pweight;          /* [ring.tokens * ring.max_pairs] */

	/* Its recent answers: dispatch put to combine arrival, whole and per token. */
	uint64_t lat[LAT_N], lat_tok[LAT_N];
	uint32_t n_lat;
};

/* A micro-batch in flight, per ring slot. */
struct rm_mb {
	bool active;
	int layer;               /* model layer */
	int moe_layer;
	int mb;
	int n_tok;
	uint64_t t0_ns;          /* when dispatch began, for on_combine */
};

struct moe_remote {
	const struct model_config *cfg;
	struct tp_context **ctxs; /* [n_ctxs] borrowed: one per device, workers spread over them */
	int n_ctxs;
	const struct co_placement *p;
	struct moe_remote_opts o;
	int n_workers;
	int hidden;
	size_t dslot, cslot;
	size_t esize;            /* bytes per wire element */
	uint32_t q_cap;

	struct rworker *w;       /* [n_workers] */
	struct rm_mb *mbs;       /* [ring.slots] */

	int64_t *worker_tokens;  /* [n_workers] tokens per worker, co_place_choose's */
	struct co_place_replica *rep; /* [ring.tokens * n_routed_experts] */
	void *vec;               /* [ring.tokens][hidden] wire dtype: one worker's vectors */
	float *row;              /* [hidden] a bf16 partial widened */

	char (*wname)[80];       /* [n_workers] "1 'node-b'" (index and name) for messages */
	int failed;              /* sticky run-time error, 0 none */
	struct fr_error msg;     /* text of the last run-time failure */
	struct tp_event evs[N_EVENTS];
};

#define WN(m, i) ((m)->wname[i])

static FR_PRINTF(4, 0) int vfail(struct moe_remote *m, bool sticky, int rc, const char *fmt,
				 va_list ap)
{
	vsnprintf(m->msg.msg, sizeof(m->msg.msg), fmt, ap);
	if (sticky && !m->failed)
		m->failed = rc;
	fr_warn(RM_COMP, "%s", m->msg.msg);
	return rc;
}

/* A run-time failure found before anything was sent: the ring is as it was. */
static FR_PRINTF(3, 4) int soft(struct moe_remote *m, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rc = vfail(m, false, rc, fmt, ap);
	va_end(ap);
	return rc;
}

/* A failure of the ring itself: every later op returns rc. */
static FR_PRINTF(3, 4) int hard(struct moe_remote *m, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rc = vfail(m, true, rc, fmt, ap);
	va_end(ap);
	return rc;
}

static int worker_of(const struct moe_remote *m, const struct tp_ep *ep)
{
	for (int i = 0; i < m->n_workers; i++)
		if (m->w[i].ep == ep)
			return i;
	return -1;
}

static int on_arrival(struct moe_remote *m, int wi, const struct tp_event *ev)
{
	struct rworker *w = &m->w[wi];
	struct fp_imm_fields f = fp_imm_decode(ev->imm);
	uint32_t layer = f.layer, mb = f.mb, kind = f.kind;
	uint32_t slot = mb % m->o.ring.slots;
	struct rm_mb *s = &m->mbs[slot];
	struct rw_slot *ws = &w->slot[slot];

	if (w->status < 0)
		return 0; /* fenced or gone: whatever it still sends is dropped */
	if (kind != FP_KIND_COMBINE || !s->active || (uint32_t)s->mb != mb ||
	    (uint32_t)s->moe_layer != layer || !ws->n_tok || ws->arrived)
		return hard(m, -EBADMSG,
			    "worker %s: unexpected frame (imm 0x%08x: MoE layer %u mb %u kind %u)",
			    WN(m, wi), ev->imm, layer, mb, kind);
	if (ev->len > m->cslot)
		return hard(m, -EBADMSG,
			    "worker %s: MoE layer %u mb %u: %llu byte frame, a ring slot has %zu",
			    WN(m, wi), layer, mb, (unsigned long long)ev->len, m->cslot);
	if (w->q_n == m->q_cap)
		return hard(m, -ENOBUFS,
			    "worker %s: %u frames unreleased behind an older one; combine "
			    "micro-batches in the order they were dispatched", WN(m, wi), w->q_n);
	w->q[(w->q_head + w->q_n++) % m->q_cap] = (struct rw_arrival){ .slot = slot };
	ws->arrived = true;
	ws->len = ev->len;
	uint64_t lat = fr_now_ns() - ws->sent_ns;
	w->lat[w->n_lat % LAT_N] = lat;
	w->lat_tok[w->n_lat % LAT_N] = lat / FR_MAX(ws->n_tok, 1u);
	w->n_lat++;
	return 0;
}

/* Marks slot's arrival consumed and hands back every consumed one at the queue head. */
static int consume(struct moe_remote *m, int wi, uint32_t slot)
{
	struct rworker *w = &m->w[wi];
	uint32_t n = 0;

	for (uint32_t i = 0; i < w->q_n; i++) {
		struct rw_arrival *a = &w->q[(w->q_head + i) % m->q_cap];
		if (a->slot == slot && !a->consumed) {
			a->consumed = true;
			break;
		}
	}
	while (w->q_n > 0 && w->q[w->q_head].consumed) {
		w->q_head = (w->q_head + 1) % m->q_cap;
		w->q_n--;
		n++;
	}
	int rc = n ? tp_ep_release(w->ep, n) : 0;
	if (rc < 0)
		return hard(m, -EPROTO, "worker %s: release of %u frames: %s", WN(m, wi), n,
			    strerror(-rc));
	return 0;
}

static int record(struct moe_remote *m, int n)
{
	for (int i = 0; i < n; i++) {
		const struct tp_event *ev = &m->evs[i];
		int wi = worker_of(m, ev->ep), rc;
		if (wi < 0)
			continue; /* another user's endpoint on a shared context */
		struct rworker *w = &m->w[wi];
		switch (ev->type) {
		case TP_EV_SEND_DONE:
			if (ev->cookie < m->o.ring.slots)
				w->slot[ev->cookie].send_busy = false;
			if (ev->status < 0 && !w->status)
				w->status = ev->status;
			break;
		case TP_EV_ARRIVAL:
			if ((rc = on_arrival(m, wi, ev)) < 0)
				return rc;
			break;
		case TP_EV_EP_ERROR:
			/* Fatal only to an op that needs this worker. */
			w->status = ev->status ? ev->status : -ECONNRESET;
			fr_warn(RM_COMP, "worker %s: endpoint failed: %s", WN(m, wi),
				strerror(-w->status));
			break;
		}
	}
	return 0;
}

/* Makes progress for up to timeout_ms (0: without sleeping) and records every event. Every
 * context is polled (a whole event array each): a worker's completions and credits move
 * only while its own context is polled. */
static int pump(struct moe_remote *m, int timeout_ms)
{
	int n, rc;

	if (timeout_ms > 0) {
		n = tp_wait_many(m->ctxs, m->n_ctxs, m->evs, N_EVENTS, timeout_ms);
		if (n < 0)
			return hard(m, n, "transport: %s", strerror(-n));
		return record(m, n);
	}
	for (int c = 0; c < m->n_ctxs; c++) {
		n = tp_poll(m->ctxs[c], m->evs, N_EVENTS);
		if (n < 0)
			return hard(m, n, "transport: %s", strerror(-n));
		if ((rc = record(m, n)) < 0)
			return rc;
	}
	return 0;
}

static int remaining_ms(uint64_t deadline)
{
	uint64_t now = fr_now_ns();
	if (now >= deadline)
		return 0;
	return (int)FR_MIN((deadline - now + 999999u) / 1000000u, (uint64_t)INT32_MAX);
}

static int dead_worker(struct moe_remote *m, int wi, const char *doing, int layer, int mb)
{
	return hard(m, -ECONNRESET, "worker %s: endpoint failed (%s) %s layer %d mb %d",
		    WN(m, wi), strerror(-m->w[wi].status), doing, layer, mb);
}

/* Encodes worker wi's share of micro-batch s and puts it, waiting out back-pressure. */
static int send_one(struct moe_remote *m, int wi, const struct rm_mb *s, uint32_t slot,
		    const float *x, uint64_t deadline)
{
	struct rworker *w = &m->w[wi];
	struct rw_slot *ws = &w->slot[slot];
	size_t h = (size_t)m->hidden;
	int rc;

	while (ws->send_busy) {
		if (w->status < 0)
			return dead_worker(m, wi, "sending", s->layer, s->mb);
		int t = remaining_ms(deadline);
		if (t == 0)
			return hard(m, -ETIMEDOUT,
				    "worker %s: layer %d mb %d: its send slot was not free "
				    "within %d ms", WN(m, wi), s->layer, s->mb, m->o.timeout_ms);
		if ((rc = pump(m, t)) < 0)
			return rc;
	}
	for (uint32_t r = 0; r < ws->n_tok; r++) {
		const float *src = x + (size_t)ws->rows[r] * h;
		if (m->o.wire == FP_DTYPE_BF16)
			kn_from_f32((uint16_t *)m->vec + r * h, KN_DTYPE_BF16, src, h);
		else
			memcpy((float *)m->vec + r * h, src, h * sizeof(float));
	}
	struct fp_dispatch d = {
		.h = { .dtype = m->o.wire, .layer = (uint16_t)s->moe_layer,
		       .micro_batch = (uint16_t)s->mb, .step_epoch = m->o.epoch,
		       .n_tokens = ws->n_tok, .hidden = (uint32_t)h, .n_pairs = w->n_pairs },
		.token_rows = ws->rows,
		.pair_counts = w->counts,
		.slots = w->pslot,
		.weights = w->pweight,
		.vectors = m->vec,
	};
	size_t off = (size_t)slot * m->dslot, len;
	uint8_t *dst = (uint8_t *)tp_mem_ptr(w->send) + off;
	/* Cannot fail: counts and weights were checked while building, sizes by the ring. */
	if ((rc = fp_dispatch_encode(&d, dst, m->dslot, &len)) < 0)
		return hard(m, rc, "worker %s: layer %d mb %d: cannot encode: %s", WN(m, wi),
			    s->layer, s->mb, strerror(-rc));
	uint32_t imm = fp_imm((uint32_t)s->moe_layer, (uint32_t)s->mb, FP_KIND_DISPATCH);
	for (;;) {
		rc = tp_put_imm(w->ep, w->send, off, off, len, imm, TP_PUT_SIGNAL, slot);
		if (rc != -EAGAIN)
			break;
		int t = remaining_ms(deadline);
		if (t == 0)
			return hard(m, -ETIMEDOUT,
				    "worker %s: layer %d mb %d: no credit to send within %d ms",
				    WN(m, wi), s->layer, s->mb, m->o.timeout_ms);
		if ((rc = pump(m, t)) < 0)
			return rc;
	}
	if (rc < 0 && tp_ep_status(w->ep) < 0) {
		w->status = tp_ep_status(w->ep);
		return dead_worker(m, wi, "sending", s->layer, s->mb);
	}
	if (rc < 0)
		return hard(m, rc, "worker %s: layer %d mb %d: put: %s", WN(m, wi), s->layer, s->mb,
			    strerror(-rc));
	ws->send_busy = true;
	ws->sent = true;
	ws->sent_ns = fr_now_ns();
	return 0;
}

/* The step deadline of worker wi's answer to ring slot `slot` (see moe_remote_opts);
 * UINT64_MAX when it has none yet. */
static uint64_t suspect_at(const struct moe_remote *m, int wi, uint32_t slot)
{
	const struct rworker *w = &m->w[wi];
	uint64_t mx = 0, mt = 0;

	if (m->o.suspect_ms <= 0 || w->n_lat < 4)
		return UINT64_MAX;
	for (uint32_t i = 0; i < FR_MIN(w->n_lat, (uint32_t)LAT_N); i++) {
		mx = FR_MAX(mx, w->lat[i]);
		mt = FR_MAX(mt, w->lat_tok[i]);
	}
	uint64_t d = FR_MAX((uint64_t)m->o.suspect_ms * 1000000u,
			    FR_MAX(10 * mx, 10 * mt * w->slot[slot].n_tok));
	return w->slot[slot].sent_ns + d;
}

/* Whether every expert worker wi serves has a replica on another worker still answering:
 * only then is it worth fencing wi at its step deadline (otherwise the step waits for it
 * until timeout_ms). */
static bool answering(const void *ctx, int wi)
{
	return ((const struct moe_remote *)ctx)->w[wi].status == 0;
}

static bool covered(const struct moe_remote *m, int wi)
{
	return co_place_covered_elsewhere(m->p, wi, answering, m);
}

/* Worker wi stopped answering in time: nothing goes to it any more and its late frames are
 * dropped; the step fails as if its endpoint had. */
static int fence(struct moe_remote *m, int wi, const struct rm_mb *s, uint64_t waited_ns)
{
	m->w[wi].status = -ETIMEDOUT;
	return hard(m, -ECONNRESET, "worker %s: no combine frame for layer %d mb %d within "
		    "%.0f ms (%s): fenced", WN(m, wi), s->layer, s->mb, (double)waited_ns / 1e6,
		    waited_ns >= (uint64_t)m->o.timeout_ms * 1000000u ? "the expert timeout" :
		    "its step deadline, 10x its recent answers");
}

static int remote_dispatch(void *ctx, int layer, int mb, const float *x, int n_tok,
			   const int32_t *expert, const float *weight, int k)
{
	struct moe_remote *m = ctx;
	const struct fp_ring *ring = &m->o.ring;
	int moe_layer = model_moe_index(m->cfg, layer), rc;
	uint64_t t0 = fr_now_ns();

	if (m->failed)
		return m->failed;
	if (moe_layer < 0)
		return soft(m, -EINVAL, "layer %d is not a MoE layer", layer);
	if (mb < 0 || mb > RM_MAX_MB)
		return soft(m, -EINVAL, "micro-batch %d out of range 0..%d", mb, RM_MAX_MB);
	uint32_t slot = (uint32_t)mb % ring->slots;
	struct rm_mb *s = &m->mbs[slot];
	if (s->active)
		return soft(m, -EINVAL,
			    "layer %d mb %d: ring slot %u still holds layer %d mb %d", layer, mb,
			    slot, s->layer, s->mb);
	if (n_tok < 0 || k < 1 || k > m->cfg->n_routed_experts)
		return soft(m, -EINVAL, "layer %d mb %d: %d tokens, top-%d", layer, mb,
			    n_tok, k);
	if ((uint32_t)n_tok > ring->tokens)
		return soft(m, -E2BIG, "layer %d mb %d: %d tokens, the ring holds %u",
			    layer, mb, n_tok, ring->tokens);
	/* Reap completions first: send slots and credits come back through events. */
	if ((rc = pump(m, 0)) < 0)
		return rc;

	size_t n_pairs = (size_t)n_tok * (size_t)k;
	memset(m->worker_tokens, 0, (size_t)m->n_workers * sizeof(*m->worker_tokens));
	if ((rc = co_place_choose(m->p, moe_layer, n_tok, k, expert, m->worker_tokens, m->rep)) < 0)
		return soft(m, rc, "layer %d mb %d: replica choice failed (expert id out "
			    "of range?)", layer, mb);

	/* Group pairs by worker; a token joins a worker's batch at its first pair there. */
	for (int i = 0; i < m->n_workers; i++) {
		m->w[i].last_tok = -1;
		m->w[i].n_pairs = 0;
		m->w[i].slot[slot].n_tok = 0;
		m->w[i].slot[slot].sent = false;
	}
	for (int t = 0; t < n_tok; t++) {
		for (int j = 0; j < k; j++) {
			size_t i = (size_t)t * k + j;
			const struct co_place_replica *r = &m->rep[i];
			struct rworker *w = &m->w[r->worker];
			struct rw_slot *ws = &w->slot[slot];
			if (!isfinite(weight[i]))
				return soft(m, -EINVAL,
					    "layer %d mb %d: token %d weight %d is not finite",
					    layer, mb, t, j);
			if (w->last_tok != t) {
				w->last_tok = t;
				ws->rows[ws->n_tok] = (uint32_t)t;
				w->counts[ws->n_tok++] = 0;
			}
			if (w->counts[ws->n_tok - 1] == ring->max_pairs)
				return soft(m, -E2BIG,
					    "layer %d mb %d: token %d has over %u experts on "
					    "worker %s (ring max_pairs)", layer, mb, t,
					    ring->max_pairs, WN(m, r->worker));
			w->counts[ws->n_tok - 1]++;
			w->pslot[w->n_pairs] = (uint16_t)r->slot;
			w->pweight[w->n_pairs++] = weight[i];
		}
	}
	for (int i = 0; i < m->n_workers; i++)
		if (m->w[i].slot[slot].n_tok && m->w[i].status < 0)
			return soft(m, -ECONNRESET,
				    "worker %s: endpoint failed (%s), layer %d mb %d needs it",
				    WN(m, i), strerror(-m->w[i].status), layer, mb);
	if (m->o.load &&
	    (rc = co_load_record(m->o.load, moe_layer, (int)n_pairs, expert, m->rep)) < 0)
		return soft(m, rc, "layer %d mb %d: load accounting refused the batch", layer,
			    mb);

	/* Active before the first put: its answers may arrive while later puts wait. */
	*s = (struct rm_mb){ .active = true, .layer = layer, .moe_layer = moe_layer, .mb = mb,
			     .t0_ns = t0,
			     .n_tok = n_tok };
	uint64_t deadline = fr_now_ns() + (uint64_t)m->o.timeout_ms * 1000000u;
	for (int i = 0; i < m->n_workers; i++) {
		if (!m->w[i].slot[slot].n_tok)
			continue;
		if ((rc = send_one(m, i, s, slot, x, deadline)) < 0)
			return rc;
	}
	/* One more turn so tcp writes what did not fit the socket before the engine computes
	 * the shared experts. */
	return pump(m, 0);
}

/* Checks worker wi's combine frame of micro-batch s and adds it into out. */
static int add_one(struct moe_remote *m, int wi, const struct rm_mb *s, uint32_t slot,
		   float *out)
{
	const struct kn_ops *ops = kn_ops();
	struct rworker *w = &m->w[wi];
	struct rw_slot *ws = &w->slot[slot];
	const uint8_t *buf = (const uint8_t *)tp_mem_ptr(w->recv) + (size_t)slot * m->cslot;
	struct fr_error ferr = { { 0 } };
	struct fp_combine_view v;
	size_t h = (size_t)m->hidden;

	if (fp_combine_decode(buf, (size_t)ws->len, &v, &ferr) < 0)
		return hard(m, -EBADMSG, "worker %s: layer %d mb %d: %s", WN(m, wi), s->layer,
			    s->mb, ferr.msg);
	if (v.frame_len != ws->len || v.h.layer != s->moe_layer || v.h.micro_batch != s->mb ||
	    v.h.step_epoch != m->o.epoch || v.h.hidden != h || v.h.dtype != m->o.wire ||
	    v.h.n_tokens != ws->n_tok)
		return hard(m, -EBADMSG,
			    "worker %s: layer %d mb %d: combine frame of (layer %u, mb %u, "
			    "epoch %u, hidden %u, dtype %d, %u tokens) does not answer the "
			    "dispatch", WN(m, wi), s->layer, s->mb, v.h.layer, v.h.micro_batch,
			    v.h.step_epoch, v.h.hidden, (int)v.h.dtype, v.h.n_tokens);
	for (uint32_t r = 0; r < ws->n_tok; r++)
		if (fp_le32(v.token_rows + 4ull * r) != ws->rows[r])
			return hard(m, -EBADMSG,
				    "worker %s: layer %d mb %d: token %u is row %u, sent %u",
				    WN(m, wi), s->layer, s->mb, r, fp_le32(v.token_rows + 4ull * r),
				    ws->rows[r]);
	for (uint32_t r = 0; r < ws->n_tok; r++) {
		const float *src;
		if (m->o.wire == FP_DTYPE_BF16) {
			kn_to_f32(m->row, v.partials + r * h * 2, KN_DTYPE_BF16, h);
			src = m->row;
		} else {
			src = (const float *)(const void *)(v.partials + r * h * 4);
		}
		ops->axpy(out + (size_t)ws->rows[r] * h, 1.0f, src, (int)h);
	}
	return consume(m, wi, slot);
}

static int remote_combine(void *ctx, int layer, int mb, float *out)
{
	struct moe_remote *m = ctx;
	int rc;

	if (m->failed)
		return m->failed;
	if (mb < 0 || mb > RM_MAX_MB)
		return soft(m, -EINVAL, "micro-batch %d out of range 0..%d", mb, RM_MAX_MB);
	uint32_t slot = (uint32_t)mb % m->o.ring.slots;
	struct rm_mb *s = &m->mbs[slot];
	if (!s->active || s->mb != mb || s->layer != layer)
		return soft(m, -EINVAL, "combine of layer %d mb %d, which was not dispatched",
			    layer, mb);

	uint64_t deadline = fr_now_ns() + (uint64_t)m->o.timeout_ms * 1000000u;
	/* Worker order, not arrival order: the same sums in the same order on every run. */
	for (int i = 0; i < m->n_workers; i++) {
		struct rw_slot *ws = &m->w[i].slot[slot];
		if (!ws->n_tok)
			continue;
		/* its step deadline, worked out only when there is a wait */
		uint64_t sus = ws->arrived ? UINT64_MAX : suspect_at(m, i, slot);
		while (!ws->arrived) {
			if (m->w[i].status < 0)
				return dead_worker(m, i, "while it owed", layer, mb);
			uint64_t now = fr_now_ns();
			bool timed_out = now >= deadline;
			if (timed_out || now >= sus) {
				/* what arrived while this thread was not running counts */
				if ((rc = pump(m, 0)) < 0)
					return rc;
				if (ws->arrived)
					break;
				if (timed_out || covered(m, i))
					return fence(m, i, s, now - ws->sent_ns);
				sus = UINT64_MAX; /* the others cannot stand in: wait on */
				continue;
			}
			if ((rc = pump(m, remaining_ms(FR_MIN(deadline, sus)))) < 0)
				return rc;
		}
		if ((rc = add_one(m, i, s, slot, out)) < 0)
			return rc;
		ws->arrived = false;
		ws->sent = false;
		ws->n_tok = 0;
	}
	s->active = false;
	if (m->o.on_combine)
		m->o.on_combine(m->o.on_combine_ctx, s->moe_layer, fr_now_ns() - s->t0_ns);
	return 0;
}

/* Waits (bounded) for the completions of puts still reading the send rings: tcp sends
 * from them in place. */
static void drain_sends(struct moe_remote *m)
{
	uint64_t deadline = fr_now_ns() + (uint64_t)m->o.timeout_ms * 1000000u;

	for (;;) {
		bool busy = false;
		for (int i = 0; i < m->n_workers && !busy; i++)
			for (uint32_t s = 0; m->w[i].slot && m->w[i].status == 0 &&
					     s < m->o.ring.slots; s++)
				busy |= m->w[i].slot[s].send_busy;
		int t = remaining_ms(deadline);
		if (!busy || t == 0 || pump(m, t) < 0)
			return;
	}
}

/* A worker's buffers: its per-slot rows, arrival queue and dispatch build scratch (its
 * send ring is the caller's: tp_mem_alloc() on its endpoint's context). Errors: -ENOMEM;
 * rworker_fini() frees what was made either way. */
static int rworker_init(struct moe_remote *m, struct rworker *w, struct tp_ep *ep,
			struct tp_mem *recv)
{
	const struct fp_ring *ring = &m->o.ring;
	size_t tok = ring->tokens, pairs = tok * ring->max_pairs;

	memset(w, 0, sizeof(*w));
	w->ep = ep;
	w->recv = recv;
	w->slot = calloc(ring->slots, sizeof(*w->slot));
	w->q = calloc(m->q_cap, sizeof(*w->q));
	w->counts = malloc(tok * sizeof(*w->counts));
	w->pslot = malloc(pairs * sizeof(*w->pslot));
	w->pweight = malloc(pairs * sizeof(*w->pweight));
	if (!w->slot || !w->q || !w->counts || !w->pslot || !w->pweight)
		return -ENOMEM;
	for (uint32_t s = 0; s < ring->slots; s++)
		if (!(w->slot[s].rows = malloc(tok * sizeof(*w->slot[s].rows))))
			return -ENOMEM;
	return 0;
}

static void rworker_fini(const struct moe_remote *m, struct rworker *w)
{
	for (uint32_t s = 0; w->slot && s < m->o.ring.slots; s++)
		free(w->slot[s].rows);
	free(w->slot);
	free(w->q);
	free(w->counts);
	free(w->pslot);
	free(w->pweight);
	tp_mem_free(w->send);
	memset(w, 0, sizeof(*w));
}

/* Whether a micro-batch is out (the ops' callers may change workers only between steps). */
static bool any_active(const struct moe_remote *m)
{
	for (uint32_t i = 0; i < m->o.ring.slots; i++)
		if (m->mbs[i].active)
			return true;
	return false;
}

int moe_remote_set_placement(struct moe *moe, const struct co_placement *p, uint32_t epoch)
{
	struct moe_remote *m = moe->ctx;

	if (m->failed)
		return m->failed;
	/* the same workers with the same slots, or (moe_remote_add_worker) one more */
	if (p->n_layers != m->p->n_layers || p->n_experts != m->p->n_experts ||
	    p->n_workers != m->n_workers || p->n_workers < m->p->n_workers ||
	    memcmp(p->slots, m->p->slots, (size_t)m->p->n_workers * sizeof(*p->slots)) != 0)
		return -EINVAL;
	if (any_active(m))
		return -EBUSY;
	m->p = p;
	m->o.epoch = epoch;
	return 0;
}

int moe_remote_recover(struct moe *moe, int timeout_ms)
{
	struct moe_remote *m = moe->ctx;
	bool dead = false;
	int rc;

	if (m->failed && m->failed != -ECONNRESET)
		return m->failed;
	for (int i = 0; i < m->n_workers; i++) {
		struct rworker *w = &m->w[i];
		if (w->status == 0 && tp_ep_status(w->ep) < 0)
			w->status = tp_ep_status(w->ep);
		dead |= w->status < 0;
	}
	if (!dead)
		return m->failed ? m->failed : -ENOENT;
	m->failed = 0;
	uint64_t deadline = fr_now_ns() + (uint64_t)timeout_ms * 1000000u;
	for (uint32_t slot = 0; slot < m->o.ring.slots; slot++) {
		struct rm_mb *s = &m->mbs[slot];
		if (!s->active)
			continue;
		for (int i = 0; i < m->n_workers; i++) {
			struct rw_slot *ws = &m->w[i].slot[slot];
			if (!ws->n_tok)
				continue;
			while (ws->sent && !ws->arrived && m->w[i].status == 0) {
				int t = remaining_ms(deadline);
				if (t == 0)
					return hard(m, -ETIMEDOUT,
						    "worker %s: no combine frame for layer %d mb %d "
						    "within %d ms (abandoning the step)", WN(m, i),
						    s->layer, s->mb, timeout_ms);
				if ((rc = pump(m, t)) < 0)
					return rc;
			}
			if (ws->arrived && m->w[i].status == 0 && (rc = consume(m, i, slot)) < 0)
				return rc;
			ws->arrived = false;
			ws->sent = false;
			ws->n_tok = 0;
		}
		s->active = false;
	}
	m->msg.msg[0] = '\0';
	return 0;
}

static int ctx_index(struct tp_context *const *ctxs, int n_ctxs, const struct tp_ep *ep);

int moe_remote_replace_worker(struct moe *moe, int i, struct tp_ep *ep, struct tp_mem *recv)
{
	struct moe_remote *m = moe->ctx;

	if (i < 0 || i >= m->n_workers || !ep || !recv ||
	    ctx_index(m->ctxs, m->n_ctxs, ep) != ctx_index(m->ctxs, m->n_ctxs, m->w[i].ep))
		return -EINVAL;
	if (any_active(m))
		return -EBUSY;
	struct rworker *w = &m->w[i];
	w->ep = ep;
	w->recv = recv;
	w->status = 0;
	w->gone_told = false;
	w->q_head = w->q_n = 0;
	w->n_lat = 0;
	for (uint32_t s = 0; s < m->o.ring.slots; s++)
		w->slot[s] = (struct rw_slot){ .rows = w->slot[s].rows };
	return 0;
}

int moe_remote_add_worker(struct moe *moe, struct tp_ep *ep, struct tp_mem *recv,
			  const char *name, struct co_load *load)
{
	struct moe_remote *m = moe->ctx;
	const struct fp_ring *ring = &m->o.ring;
	int i = m->n_workers, rc;

	if (!ep || !recv || ctx_index(m->ctxs, m->n_ctxs, ep) < 0 ||
	    tp_mem_len(recv) < ring->slots * m->cslot ||
	    tp_ep_remote_len(ep) < ring->slots * m->dslot)
		return -EINVAL;
	if (any_active(m))
		return -EBUSY;
	struct rworker *nw = realloc(m->w, sizeof(*nw) * (size_t)(i + 1));
	if (!nw)
		return -ENOMEM;
	m->w = nw;
	char (*nn)[80] = realloc(m->wname, sizeof(*nn) * (size_t)(i + 1));
	if (!nn)
		return -ENOMEM;
	m->wname = nn;
	int64_t *wt = realloc(m->worker_tokens, sizeof(*wt) * (size_t)(i + 1));
	if (!wt)
		return -ENOMEM;
	m->worker_tokens = wt;
	struct rworker *w = &m->w[i];
	if ((rc = rworker_init(m, w, ep, recv)) < 0 ||
	    (rc = tp_mem_alloc(tp_ep_context(ep), ring->slots * m->dslot, &w->send)) < 0) {
		rworker_fini(m, w);
		return rc;
	}
	snprintf(m->wname[i], sizeof(m->wname[i]), "%d '%.64s'", i, name ? name : "?");
	m->n_workers = i + 1;
	m->o.load = load;
	return i;
}

void moe_remote_fence(struct moe *moe, int i)
{
	struct moe_remote *m = moe->ctx;

	if (i >= 0 && i < m->n_workers && m->w[i].status == 0)
		m->w[i].status = -ETIMEDOUT;
}

int moe_remote_worker_status(const struct moe *moe, int i)
{
	const struct moe_remote *m = moe->ctx;

	if (i < 0 || i >= m->n_workers)
		return -EINVAL;
	if (m->w[i].status == 0 && tp_ep_status(m->w[i].ep) < 0)
		return tp_ep_status(m->w[i].ep);
	return m->w[i].status;
}

int moe_remote_check(struct moe *moe, int timeout_ms, int *dead, int max)
{
	struct moe_remote *m = moe->ctx;
	int n = 0, rc;

	if (m->failed)
		return m->failed;
	if ((rc = pump(m, timeout_ms)) < 0)
		return rc;
	for (int i = 0; i < m->n_workers && n < max; i++) {
		struct rworker *w = &m->w[i];
		if (w->status == 0 && tp_ep_status(w->ep) < 0)
			w->status = tp_ep_status(w->ep);
		if (w->status < 0 && !w->gone_told) {
			w->gone_told = true;
			dead[n++] = i;
		}
	}
	return n;
}

static void remote_destroy(void *ctx)
{
	struct moe_remote *m = ctx;
	if (!m)
		return;
	if (m->w && m->mbs)
		drain_sends(m);
	for (int i = 0; m->w && i < m->n_workers; i++)
		rworker_fini(m, &m->w[i]);
	free(m->w);
	free(m->ctxs);
	free(m->mbs);
	free(m->wname);
	free(m->worker_tokens);
	free(m->rep);
	free(m->vec);
	free(m->row);
	free(m);
}

static const struct moe_ops remote_ops = {
	.name = "remote",
	.dispatch = remote_dispatch,
	.combine = remote_combine,
	.destroy = remote_destroy,
};

/* Index of ep's context in ctxs, -1 if it is not there. */
static int ctx_index(struct tp_context *const *ctxs, int n_ctxs, const struct tp_ep *ep)
{
	for (int c = 0; c < n_ctxs; c++)
		if (tp_ep_context(ep) == ctxs[c])
			return c;
	return -1;
}

int moe_remote_create(const struct model_config *cfg, struct tp_context *const *ctxs,
			 int n_ctxs, int n_workers, struct tp_ep *const *eps,
			 struct tp_mem *const *recv, const struct co_placement *p,
			 const struct moe_remote_opts *o, struct moe *ret, struct fr_error *err)
{
	const struct fp_ring *ring = &o->ring;
	size_t dslot = fp_ring_dispatch_slot(ring), cslot = fp_ring_combine_slot(ring);
	int n_moe = model_n_moe_layers(cfg);
	enum fp_dtype wire = o->wire ? o->wire : FP_DTYPE_BF16;
	struct moe_remote *m;
	int rc;

	if (n_moe <= 0 || cfg->n_routed_experts <= 0)
		return fr_error_set(err, -EINVAL, "model has no MoE layers");
	if (n_workers < 1 || !eps || !recv)
		return fr_error_set(err, -EINVAL, "%d workers", n_workers);
	if (n_ctxs < 1 || n_ctxs > TP_WAIT_MANY_MAX || !ctxs)
		return fr_error_set(err, -EINVAL, "%d transport contexts (1..%d)", n_ctxs,
				    TP_WAIT_MANY_MAX);
	if (p->n_layers != n_moe || p->n_experts != cfg->n_routed_experts ||
	    p->n_workers != n_workers)
		return fr_error_set(err, -EINVAL,
				    "placement of %d layers x %d experts on %d workers, model has "
				    "%d MoE layers x %d experts and there are %d workers",
				    p->n_layers, p->n_experts, p->n_workers, n_moe,
				    cfg->n_routed_experts, n_workers);
	for (int i = 0; i < n_workers; i++)
		if (p->slots[i] > UINT16_MAX + 1)
			return fr_error_set(err, -EINVAL, "worker w%d: %d slots per layer, frames "
					    "address %d", i, p->slots[i], UINT16_MAX + 1);
	if (!dslot || !cslot)
		return fr_error_set(err, -EINVAL,
				    "ring out of limits (slots %u, tokens %u, hidden %u, "
				    "max_pairs %u)", ring->slots, ring->tokens, ring->hidden,
				    ring->max_pairs);
	if ((int)ring->hidden != cfg->hidden_size)
		return fr_error_set(err, -EINVAL, "ring hidden %u, model hidden %d", ring->hidden,
				    cfg->hidden_size);
	if (wire != FP_DTYPE_BF16 && wire != FP_DTYPE_F32)
		return fr_error_set(err, -EINVAL, "wire dtype %d", (int)wire);
	if (o->timeout_ms < 0)
		return fr_error_set(err, -EINVAL, "timeout %d ms", o->timeout_ms);
	for (int i = 0; i < n_workers; i++) {
		if (!eps[i] || !recv[i])
			return fr_error_set(err, -EINVAL, "worker w%d: no endpoint", i);
		if (ctx_index(ctxs, n_ctxs, eps[i]) < 0)
			return fr_error_set(err, -EINVAL, "worker w%d: its endpoint is on none of "
					    "the %d transport contexts", i, n_ctxs);
		if (tp_mem_len(recv[i]) < ring->slots * cslot)
			return fr_error_set(err, -EINVAL,
					    "worker w%d: receive region of %zu bytes, the ring "
					    "needs %u x %zu", i, tp_mem_len(recv[i]), ring->slots,
					    cslot);
		if (tp_ep_remote_len(eps[i]) < ring->slots * dslot)
			return fr_error_set(err, -EINVAL,
					    "worker w%d: its region has %zu bytes, the ring needs "
					    "%u x %zu", i, tp_ep_remote_len(eps[i]), ring->slots,
					    dslot);
	}

	m = calloc(1, sizeof(*m));
	if (!m)
		return fr_error_set(err, -ENOMEM, "out of memory");
	m->cfg = cfg;
	m->n_ctxs = n_ctxs;
	m->p = p;
	m->o = *o;
	m->o.wire = wire;
	m->o.timeout_ms = o->timeout_ms ? o->timeout_ms : 30000;
	m->n_workers = n_workers;
	m->hidden = cfg->hidden_size;
	m->dslot = dslot;
	m->cslot = cslot;
	m->esize = fp_dtype_size(wire);
	/* Unreleased frames: one per active slot, plus consumed ones stuck behind an older
	 * frame when micro-batches are combined out of dispatch order. */
	m->q_cap = 4 * ring->slots;

	size_t tok = ring->tokens, h = (size_t)m->hidden;
	m->w = calloc((size_t)n_workers, sizeof(*m->w));
	m->wname = calloc((size_t)n_workers, sizeof(*m->wname));
	m->mbs = calloc(ring->slots, sizeof(*m->mbs));
	m->worker_tokens = calloc((size_t)n_workers, sizeof(*m->worker_tokens));
	m->rep = malloc(tok * (size_t)cfg->n_routed_experts * sizeof(*m->rep));
	m->vec = malloc(tok * h * m->esize);
	m->row = malloc(h * sizeof(*m->row));
	m->ctxs = calloc((size_t)n_ctxs, sizeof(*m->ctxs));
	if (!m->w || !m->wname || !m->mbs || !m->worker_tokens || !m->rep || !m->vec || !m->row ||
	    !m->ctxs)
		goto nomem;
	memcpy(m->ctxs, ctxs, (size_t)n_ctxs * sizeof(*m->ctxs));
	for (int i = 0; i < n_workers; i++) {
		if (o->names && o->names[i])
			snprintf(m->wname[i], sizeof(m->wname[i]), "%d '%.64s'", i, o->names[i]);
		else
			snprintf(m->wname[i], sizeof(m->wname[i]), "w%d", i);
	}
	m->o.names = NULL; /* borrowed for this call only */
	for (int i = 0; i < n_workers; i++) {
		struct rworker *w = &m->w[i];
		if (rworker_init(m, w, eps[i], recv[i]) < 0)
			goto nomem;
		/* Puts go out from memory of the endpoint's own context (its device). */
		if ((rc = tp_mem_alloc(tp_ep_context(w->ep), ring->slots * dslot, &w->send)) < 0) {
			fr_error_set(err, rc,
				     "worker w%d: cannot allocate its %u x %zu byte send ring: %s",
				     i, ring->slots, dslot, strerror(-rc));
			goto fail;
		}
	}
	ret->ops = &remote_ops;
	ret->ctx = m;
	return 0;
nomem:
	rc = fr_error_set(err, -ENOMEM, "out of memory for %d workers x %u slots x %u tokens",
			  n_workers, ring->slots, ring->tokens);
fail:
	remote_destroy(m);
	return rc;
}

const char *moe_remote_error(const struct moe *moe)
{
	if (!moe || moe->ops != &remote_ops)
		return "";
	return ((const struct moe_remote *)moe->ctx)->msg.msg;
}
