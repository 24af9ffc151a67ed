/* SPDX-License-Identifier: Apache-2.0 */
/*
 * datapath.c - the cluster data path in one process: the coordinator's transport contexts
 * (one, or two as with two local devices, workers spread over them) and one thread per
 * worker, each with its own transport context, connected over a real backend; the workers
 * serve with moe_server_run(), the coordinator uses co_moe_remote.
 *
 *   test_datapath --backend shm|tcp --case golden|interleave|death|timeout|badframe
 *                 [--frames device]
 *
 * --frames device: the workers' slot tables on the device ops' CPU twin (moe_dev_twin_ops)
 * and both of their rings in its "device memory" (moe_server_opts.dev_send): the server
 * reads each frame's head through to_host, computes from the vectors where they landed
 * and writes the combine frame's head with to_dev, as a GPU worker with GPUDirect RDMA.
 *
 *   golden      the engine over 1-3 workers, with and without replicas, 1 and 2
 *               micro-batches: f32 wire within 1e-5 of the single-process engine and 3e-5
 *               of the references, greedy tokens identical; bf16 wire keeps every argmax
 *               whose reference top-2 gap is clear. Worker counters match the
 *               coordinator's load accounting. Two layouts use two coordinator contexts.
 *   interleave  the seam driven directly with micro-batches out at once, combined in and
 *               out of dispatch order and across layers, against moe_local one at a time
 *               (three workers over two coordinator contexts).
 *   death       a worker that closes its endpoint holding a frame: combine returns
 *               -ECONNRESET naming it, well within the timeout, and stays failed (the
 *               dying worker and the serving one on different coordinator contexts)
 *               until moe_remote_recover() abandons the micro-batch: then the dead
 *               worker is named and a dispatch needing it is refused before sending.
 *   timeout     a worker that never answers: fenced after the timeout (-ECONNRESET
 *               naming worker, layer and mb); recovery takes it out like a dead one.
 *   badframe    malformed dispatch frames make moe_server_run() return -EBADMSG.
 *
 * The golden sets come from $FERRY_GOLDEN. Inputs of the interleave case are random from a
 * printed seed (FERRY_TEST_SEED to repeat).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "kernels/kernels.h"
#include "tests/test.h"

/* The slot-map epoch of every table and frame here (workers refuse frames of another). */
#define EPOCH 7
#define MAX_W 4
#define TOL_LOCAL 1e-5f
#define TOL_GOLDEN 3e-5f
#define BF16_GAP 0.05f  /* a reference top-2 gap this wide survives bf16 activations */

static enum tp_backend g_backend;
static uint64_t g_seed;

#define CHECK_RC(expr)                                                                      \
	do {                                                                                \
		int rc_ = (expr);                                                           \
		if (rc_ < 0) {                                                              \
			fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,        \
				strerror(-rc_));                                            \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* ---- a cluster in one process ------------------------------------------------------------ */

enum wmode {
	W_SERVE,  /* moe_server_run() until stopped */
	W_DIE,    /* takes one arrival, then closes its endpoint */
	W_MUTE,   /* takes arrivals and never answers */
};

struct cluster;

struct wth {
	struct cluster *c;
	int idx;
	enum wmode mode;
	struct tp_context *ctx;
	struct tp_mem *recv;      /* [ring.slots] dispatch slots */
	struct tp_ep *ep;
	struct moe_slots *slots;   /* owned */
	struct tp_mem *dev_send;  /* --frames device: the combine ring, owned */
	_Atomic(struct moe_server *) srv;
	atomic_bool stop;
	atomic_bool done;         /* the thread is about to return */
	uint8_t blob[TP_ADDR_MAX], peer[TP_ADDR_MAX];
	size_t blob_len, peer_len;
	pthread_t th;
	int rc;                   /* of connect, then of the serving loop */
	struct fr_error err;
};

struct cluster {
	int n;
	struct fp_ring ring;
	int n_ctx;
	struct tp_context *ctx[2];  /* the coordinator's: worker i on ctx[i % n_ctx] */
	struct tp_mem *recv[MAX_W]; /* [ring.slots] combine slots each */
	struct tp_ep *eps[MAX_W];
	struct wth w[MAX_W];
};

static bool g_devframes; /* --frames device */
#define MAX_TWINS 64
static void *g_twins[MAX_TWINS]; /* the device twins of every table made, freed at exit */
static int g_n_twins;

static struct tp_config tp_cfg(void)
{
	return (struct tp_config){
		.backend = g_backend,
		.send_depth = 16,
		.recv_depth = 16,
		.peer_timeout_ms = 2000,
		.connect_timeout_ms = 20000,
	};
}

/* The regions a GPU worker pins: the receive ring as it is, then two distinct buffers of a
 * ring's worth of f32 vectors; max below the count fills only max. */
static bool host_regions_ok(const struct moe_server *srv, struct tp_mem *recv,
			    const struct fp_ring *ring)
{
	struct moe_host_region v[MOE_SERVER_HOST_REGIONS + 1], one = { 0 };
	size_t vec = (size_t)ring->tokens * ring->hidden * sizeof(float);
	memset(v, 0, sizeof(v));
	if (g_devframes) /* nothing to pin: only frame heads cross */
		return moe_server_host_regions(srv, v, MOE_SERVER_HOST_REGIONS + 1) == 0;
	if (moe_server_host_regions(srv, v, MOE_SERVER_HOST_REGIONS + 1) != MOE_SERVER_HOST_REGIONS ||
	    moe_server_host_regions(srv, &one, 1) != MOE_SERVER_HOST_REGIONS)
		return false;
	if (one.p != v[0].p || v[MOE_SERVER_HOST_REGIONS].p)
		return false;
	if (v[0].p != tp_mem_ptr(recv) || v[0].bytes != tp_mem_len(recv) ||
	    strcmp(v[0].what, "receive ring"))
		return false;
	for (int i = 1; i < MOE_SERVER_HOST_REGIONS; i++) {
		const char *a = v[i].p, *b = i == 1 ? v[2].p : v[1].p;
		if (!a || v[i].bytes != vec || !v[i].what || !v[i].what[0] ||
		    (a < b + vec && b < a + vec)) /* distinct, not overlapping */
			return false;
	}
	return true;
}

static void worker_loop(struct wth *t)
{
	struct tp_event ev[8];

	if ((t->rc = tp_ep_connect(t->ep, t->peer, t->peer_len)) < 0) {
		fr_error_set(&t->err, t->rc, "w%d: connect: %s", t->idx, strerror(-t->rc));
		return;
	}
	if (t->mode == W_SERVE) {
		struct moe_server *srv;
		char name[16];
		snprintf(name, sizeof(name), "w%d", t->idx);
		struct moe_server_opts o = { .ring = t->c->ring, .name = name, .epoch = EPOCH };
		if (g_devframes) {
			size_t bytes = fp_ring_combine_slot(&t->c->ring) * t->c->ring.slots;
			if ((t->rc = tp_mem_alloc(t->ctx, bytes, &t->dev_send)) < 0)
				return;
			o.dev_send = t->dev_send;
		}
		t->rc = moe_server_create(t->slots, t->ctx, t->ep, t->recv, &o, &srv, &t->err);
		if (t->rc < 0)
			return;
		if (!host_regions_ok(srv, t->recv, &t->c->ring)) {
			t->rc = fr_error_set(&t->err, -EPROTO, "w%d: moe_server_host_regions() "
					     "does not name the ring and the two vector buffers",
					     t->idx);
			moe_server_destroy(srv);
			return;
		}
		/* Publish, then look at the flag: stop() from the main thread cannot be lost. */
		atomic_store(&t->srv, srv);
		if (atomic_load(&t->stop))
			moe_server_stop(srv);
		t->rc = moe_server_run(srv, -1, &t->err);
		/* A server that refused a frame refuses everything after it. */
		if (t->rc == -EBADMSG) {
			struct fr_error again = { { 0 } };
			int rc = moe_server_run(srv, 0, &again);
			if (rc != -EBADMSG || strcmp(again.msg, t->err.msg))
				t->rc = -EPROTO;
		}
		return;
	}
	while (!atomic_load(&t->stop)) {
		int n = tp_wait(t->ctx, ev, 8, 50);
		if (n < 0) {
			t->rc = n;
			return;
		}
		for (int i = 0; i < n; i++) {
			if (ev[i].type == TP_EV_ARRIVAL && t->mode == W_DIE) {
				tp_ep_destroy(t->ep);
				t->ep = NULL;
				return;
			}
		}
	}
}

static void *worker_main(void *arg)
{
	struct wth *t = arg;
	worker_loop(t);
	atomic_store(&t->done, true);
	return NULL;
}

/* slots[w] is handed over (NULL for workers that do not serve). */
static void cluster_open(struct cluster *c, int n, int n_ctx, const struct fp_ring *ring,
			 struct moe_slots **slots, const enum wmode *modes)
{
	struct tp_config cfg = tp_cfg();
	size_t dslot = fp_ring_dispatch_slot(ring), cslot = fp_ring_combine_slot(ring);

	memset(c, 0, sizeof(*c));
	c->n = n;
	c->ring = *ring;
	c->n_ctx = n_ctx;
	CHECK(dslot > 0 && cslot > 0 && n_ctx >= 1 && n_ctx <= 2);
	for (int d = 0; d < n_ctx; d++)
		CHECK_RC(tp_context_create(&cfg, &c->ctx[d]));
	for (int i = 0; i < n; i++) {
		struct wth *t = &c->w[i];
		t->c = c;
		t->idx = i;
		t->mode = modes ? modes[i] : W_SERVE;
		t->slots = slots ? slots[i] : NULL;
		atomic_init(&t->srv, NULL);
		atomic_init(&t->stop, false);
		atomic_init(&t->done, false);
		struct tp_context *ctx = c->ctx[i % n_ctx];
		CHECK_RC(tp_mem_alloc(ctx, ring->slots * cslot, &c->recv[i]));
		CHECK_RC(tp_ep_create(ctx, c->recv[i], NULL, &c->eps[i]));
		CHECK_RC(tp_context_create(&cfg, &t->ctx));
		CHECK_RC(tp_mem_alloc(t->ctx, ring->slots * dslot, &t->recv));
		CHECK_RC(tp_ep_create(t->ctx, t->recv, t, &t->ep));
		CHECK_RC(tp_ep_address(t->ep, t->blob, sizeof(t->blob), &t->blob_len));
		CHECK_RC(tp_ep_address(c->eps[i], t->peer, sizeof(t->peer), &t->peer_len));
	}
	/* tp_ep_connect() blocks until both sides meet: workers connect in their threads. */
	for (int i = 0; i < n; i++)
		if (pthread_create(&c->w[i].th, NULL, worker_main, &c->w[i]) != 0) {
			fprintf(stderr, "pthread_create failed\n");
			exit(1);
		}
	for (int i = 0; i < n; i++)
		CHECK_RC(tp_ep_connect(c->eps[i], c->w[i].blob, c->w[i].blob_len));
}

static void worker_stop(struct wth *t)
{
	atomic_store(&t->stop, true);
	struct moe_server *srv = atomic_load(&t->srv);
	if (srv)
		moe_server_stop(srv);
}

/* Stops and joins the workers (their rc is then final) and frees everything. The remote
 * MoE over this cluster must be destroyed first. */
static void cluster_close(struct cluster *c)
{
	for (int i = 0; i < c->n; i++)
		worker_stop(&c->w[i]);
	for (int i = 0; i < c->n; i++)
		pthread_join(c->w[i].th, NULL);
	for (int i = 0; i < c->n; i++) {
		struct wth *t = &c->w[i];
		moe_server_destroy(atomic_load(&t->srv));
		tp_mem_free(t->dev_send);
		tp_ep_destroy(t->ep);
		tp_mem_free(t->recv);
		tp_context_destroy(t->ctx);
		moe_slots_destroy(t->slots);
		tp_ep_destroy(c->eps[i]);
		tp_mem_free(c->recv[i]);
	}
	for (int d = 0; d < c->n_ctx; d++)
		tp_context_destroy(c->ctx[d]);
}

/* A worker's slot table as the placement says, weights bound from the checkpoint. */
static struct moe_slots *load_slots(const struct model_ckpt *ck, const struct co_placement *p,
				   int w)
{
	const struct model_config *cfg = model_ckpt_config(ck);
	struct fr_error err = { { 0 } };
	struct moe_slots *s;

	CHECK_RC(moe_slots_create(cfg, p->slots[w], &s));
	if (g_devframes) {
		CHECK(g_n_twins < MAX_TWINS);
		CHECK_RC(moe_dev_twin_create(cfg, &g_twins[g_n_twins]));
		CHECK_RC(moe_slots_use_device(s, &moe_dev_twin_ops, g_twins[g_n_twins++]));
	}
	for (int l = 0; l < cfg->num_hidden_layers; l++) {
		int ml = model_moe_index(cfg, l);
		if (ml < 0)
			continue;
		for (int i = 0; i < p->slots[w]; i++) {
			int e = co_place_expert_at(p, ml, w, i);
			struct model_ffn ffn;
			if (model_expert_bind(ck, l, e, &ffn, &err) < 0) {
				fprintf(stderr, "%s\n", err.msg);
				exit(1);
			}
			CHECK_RC(moe_slot_set(s, ml, i, e, &ffn));
		}
	}
	return s;
}

static struct co_placement *uniform_placement(const struct model_config *cfg, int n,
					      const int *slots)
{
	struct fr_error err = { { 0 } };
	struct co_placement *p;
	struct co_place_problem pb = {
		.n_layers = model_n_moe_layers(cfg),
		.n_experts = cfg->n_routed_experts,
		.n_workers = n,
		.slots = slots,
	};
	if (co_place_solve(&pb, NULL, NULL, &p, &err) < 0) {
		fprintf(stderr, "placement: %s\n", err.msg);
		exit(1);
	}
	return p;
}

/* ---- golden ------------------------------------------------------------------------------- */

struct golden_seq {
	int32_t *ids;
	size_t n;
	float *ref; /* [n][vocab] */
};

struct golden {
	char dir[4096];
	struct model_ckpt *ck;
	struct model_weights *w;
	const struct model_config *cfg;
	int n_seqs;
	struct golden_seq seq[8];
	int32_t *prompt, *gen; /* greedy */
	size_t n_prompt, n_gen;
	float *gen_ref;        /* [n_gen][vocab] */
	float *local[8];       /* single-process engine logits of each sequence */
};

static void *read_file(const char *path, size_t *len)
{
	struct fr_error err = { { 0 } };
	char *buf;
	if (fr_read_file(path, 64u << 20, &buf, len, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		exit(1);
	}
	return buf;
}

static void read_ids(const char *path, int vocab, int32_t **ret, size_t *n)
{
	struct fr_error err = { { 0 } };
	size_t len;
	char *txt = read_file(path, &len);
	if (fr_parse_ids(txt, vocab, ret, n, &err) < 0) {
		fprintf(stderr, "%s: %s\n", path, err.msg);
		exit(1);
	}
	free(txt);
}

static float *read_f32(const char *path, size_t floats)
{
	size_t len;
	float *f = read_file(path, &len);
	if (len != floats * sizeof(float)) {
		fprintf(stderr, "%s: %zu bytes, expected %zu\n", path, len, floats * 4);
		exit(1);
	}
	return f;
}

static int run_seq(struct co_engine *e, const struct golden_seq *s, float *logits)
{
	int32_t *seq = calloc(s->n, sizeof(*seq)), *pos = malloc(s->n * sizeof(*pos));
	for (size_t i = 0; i < s->n; i++)
		pos[i] = (int32_t)i;
	co_engine_reset_seq(e, 0);
	int rc = co_engine_forward(e, (int)s->n, s->ids, seq, pos, NULL, NULL, logits);
	free(seq);
	free(pos);
	return rc;
}

static void golden_open(struct golden *g, const char *set)
{
	struct fr_error err = { { 0 } };
	char path[4200];
	const char *root = getenv("FERRY_GOLDEN");

	memset(g, 0, sizeof(*g));
	if (!root) {
		fprintf(stderr, "FERRY_GOLDEN is not set\n");
		exit(1);
	}
	snprintf(g->dir, sizeof(g->dir), "%s/%s", root, set);
	if (model_ckpt_open(g->dir, &g->ck, &err) < 0 ||
	    model_weights_bind(g->ck, MODEL_BIND_NO_ROUTED, &g->w, &err) < 0) {
		fprintf(stderr, "%s: %s\n", g->dir, err.msg);
		exit(1);
	}
	g->cfg = model_ckpt_config(g->ck);
	int vocab = g->cfg->vocab_size;
	for (int k = 0; k < 8; k++) {
		snprintf(path, sizeof(path), "%s/ref_tokens_%d.txt", g->dir, k);
		if (access(path, R_OK) != 0)
			break;
		struct golden_seq *s = &g->seq[g->n_seqs++];
		read_ids(path, vocab, &s->ids, &s->n);
		snprintf(path, sizeof(path), "%s/ref_logits_%d.f32", g->dir, k);
		s->ref = read_f32(path, s->n * vocab);
	}
	snprintf(path, sizeof(path), "%s/ref_greedy_prompt.txt", g->dir);
	read_ids(path, vocab, &g->prompt, &g->n_prompt);
	snprintf(path, sizeof(path), "%s/ref_greedy_tokens.txt", g->dir);
	read_ids(path, vocab, &g->gen, &g->n_gen);
	snprintf(path, sizeof(path), "%s/ref_greedy_logits.f32", g->dir);
	g->gen_ref = read_f32(path, g->n_gen * vocab);

	/* The single-process engine: what the cluster must reproduce. */
	struct moe moe;
	struct co_engine *e;
	struct co_engine_opts eo = { .max_seqs = 1, .max_ctx = 256, .max_batch = 64 };
	if (moe_local_create(g->ck, 1, &moe, &err) < 0 ||
	    co_engine_create(g->w, moe, &eo, &e, &err) < 0) {
		fprintf(stderr, "%s: %s\n", g->dir, err.msg);
		exit(1);
	}
	for (int k = 0; k < g->n_seqs; k++) {
		g->local[k] = calloc(g->seq[k].n * vocab, sizeof(float));
		CHECK_RC(run_seq(e, &g->seq[k], g->local[k]));
	}
	co_engine_destroy(e);
	moe_destroy(&moe);
}

static void golden_close(struct golden *g)
{
	for (int k = 0; k < g->n_seqs; k++) {
		free(g->seq[k].ids);
		free(g->seq[k].ref);
		free(g->local[k]);
	}
	free(g->prompt);
	free(g->gen);
	free(g->gen_ref);
	model_weights_free(g->w);
	model_ckpt_close(g->ck);
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
	float worst = 0.0f;
	for (size_t i = 0; i < n; i++) {
		float d = fabsf(a[i] - b[i]);
		if (!(d <= worst))
			worst = isnan(d) ? INFINITY : d;
	}
	return worst;
}

/* Top-2 gap of a logits row. */
static float top2_gap(const float *x, int n)
{
	float a = -INFINITY, b = -INFINITY;
	for (int i = 0; i < n; i++) {
		if (x[i] > a) {
			b = a;
			a = x[i];
		} else if (x[i] > b) {
			b = x[i];
		}
	}
	return a - b;
}

struct layout {
	const char *name;
	int n;
	int slots[MAX_W];
	int micro_batches;
	int n_ctx;       /* coordinator contexts (0: 1) */
};

/* One layout and wire dtype over one golden set. */
static void golden_run(struct golden *g, const struct layout *lo, enum fp_dtype wire)
{
	const struct model_config *cfg = g->cfg;
	int vocab = cfg->vocab_size, n_moe = model_n_moe_layers(cfg);
	struct fr_error err = { { 0 } };
	struct co_placement *p = uniform_placement(cfg, lo->n, lo->slots);
	struct moe_slots *slots[MAX_W];
	struct cluster c;
	struct co_load *load;
	struct moe moe = { 0 };
	struct co_engine *e = NULL;
	int m = lo->micro_batches;
	struct fp_ring ring = {
		.slots = (uint32_t)m, .tokens = 64, .hidden = (uint32_t)cfg->hidden_size,
		.max_pairs = (uint32_t)cfg->num_experts_per_tok,
	};
	int n_ctx = lo->n_ctx ? lo->n_ctx : 1;
	char what[256];
	snprintf(what, sizeof(what), "%s %s %s m=%d%s %s", strrchr(g->dir, '/') + 1,
		 tp_backend_name(g_backend), lo->name, m, n_ctx > 1 ? " 2ctx" : "",
		 wire == FP_DTYPE_F32 ? "f32" : "bf16");

	for (int i = 0; i < lo->n; i++)
		slots[i] = load_slots(g->ck, p, i);
	cluster_open(&c, lo->n, n_ctx, &ring, slots, NULL);
	CHECK_RC(co_load_create(n_moe, cfg->n_routed_experts, lo->n, lo->slots, 1, &load, &err));
	struct moe_remote_opts ro = { .ring = ring, .wire = wire, .timeout_ms = 20000,
				     .load = load, .epoch = EPOCH };
	struct co_engine_opts eo = { .max_seqs = 1, .max_ctx = 256, .max_batch = 64,
				     .micro_batches = m };
	if (moe_remote_create(cfg, c.ctx, c.n_ctx, lo->n, c.eps, c.recv, p, &ro, &moe,
				 &err) < 0 ||
	    co_engine_create(g->w, moe, &eo, &e, &err) < 0) {
		fprintf(stderr, "FAIL %s: %s\n", what, err.msg);
		t_failures++;
		goto out;
	}

	float worst_local = 0.0f, worst_ref = 0.0f;
	int clear = 0, flips = 0;
	for (int k = 0; k < g->n_seqs; k++) {
		const struct golden_seq *s = &g->seq[k];
		size_t nf = s->n * vocab;
		float *got = calloc(nf, sizeof(float));
		int rc = run_seq(e, s, got);
		if (rc < 0) {
			fprintf(stderr, "FAIL %s seq %d: forward: %s (%s)\n", what, k,
				strerror(-rc), moe_remote_error(&moe));
			t_failures++;
			free(got);
			goto out;
		}
		if (wire == FP_DTYPE_F32) {
			worst_local = FR_MAX(worst_local, max_abs_diff(got, g->local[k], nf));
			worst_ref = FR_MAX(worst_ref, max_abs_diff(got, s->ref, nf));
		}
		for (size_t r = 0; r < s->n; r++) {
			const float *ref = s->ref + r * vocab, *row = got + r * vocab;
			bool must = wire == FP_DTYPE_F32 || top2_gap(ref, vocab) > BF16_GAP;
			clear += must;
			if (must && co_argmax(row, vocab) != co_argmax(ref, vocab)) {
				fprintf(stderr, "%s seq %d row %zu: argmax %d, ref %d\n", what, k,
					r, co_argmax(row, vocab), co_argmax(ref, vocab));
				flips++;
			}
		}
		if (wire == FP_DTYPE_BF16)
			worst_ref = FR_MAX(worst_ref, max_abs_diff(got, s->ref, nf));
		free(got);
	}
	CHECK(flips == 0);

	/* Greedy decoding through the cache: prefill, then one token per call. */
	if (wire == FP_DTYPE_F32) {
		size_t np = g->n_prompt, ng = g->n_gen;
		float *got = calloc((np + ng) * vocab, sizeof(float));
		int32_t toks[512], seq[512] = { 0 }, pos[512];
		for (size_t i = 0; i < np + ng; i++)
			pos[i] = (int32_t)i;
		memcpy(toks, g->prompt, np * sizeof(*toks));
		co_engine_reset_seq(e, 0);
		int rc = co_engine_forward(e, (int)np, toks, seq, pos, NULL, NULL, got);
		for (size_t s = 0; rc == 0 && s < ng; s++) {
			float *row = got + (np - 1 + s) * vocab;
			toks[np + s] = co_argmax(row, vocab);
			if (toks[np + s] != g->gen[s]) {
				fprintf(stderr, "FAIL %s greedy step %zu: %d, ref %d\n", what, s,
					toks[np + s], g->gen[s]);
				t_failures++;
				break;
			}
			if (s + 1 < ng)
				rc = co_engine_forward(e, 1, toks + np + s, seq, pos + np + s, NULL,
						       NULL, row + vocab);
		}
		CHECK(rc == 0);
		worst_ref = FR_MAX(worst_ref, max_abs_diff(got + (np - 1) * vocab, g->gen_ref,
							   ng * vocab));
		free(got);
		if (!(worst_local <= TOL_LOCAL) || !(worst_ref <= TOL_GOLDEN)) {
			fprintf(stderr, "FAIL %s: max diff %.3g to local (bar %.0e), %.3g to "
				"refs (bar %.0e)\n", what, worst_local, TOL_LOCAL, worst_ref,
				TOL_GOLDEN);
			t_failures++;
		}
	}

	/* Every token-expert pair the coordinator counted was computed by some worker. */
	co_engine_destroy(e);
	e = NULL;
	uint64_t counted = 0, computed = 0, frames = 0;
	uint64_t *per = calloc((size_t)FR_MAX(n_moe, lo->n), sizeof(*per));
	CHECK_RC(co_load_worker_tokens(load, -1, per));
	for (int i = 0; i < lo->n; i++)
		counted += per[i];
	for (int i = 0; i < lo->n; i++) {
		struct moe_server *srv = atomic_load(&c.w[i].srv);
		uint64_t f = 0;
		CHECK(srv != NULL);
		if (!srv)
			continue;
		moe_server_take_stats(srv, per, NULL, &f);
		for (int l = 0; l < n_moe; l++)
			computed += per[l];
		frames += f;
		moe_server_take_stats(srv, per, NULL, &f);
		CHECK(f == 0); /* taking resets */
	}
	free(per);
	CHECK(counted > 0 && counted == computed && frames > 0);
	if (wire == FP_DTYPE_F32)
		printf("%-40s diff to local %.2g, to refs %.2g, %llu pairs in %llu frames\n", what,
		       worst_local, worst_ref, (unsigned long long)computed,
		       (unsigned long long)frames);
	else
		printf("%-40s diff to refs %.2g, %d/%d clear argmax kept, %llu pairs in %llu "
		       "frames\n", what, worst_ref, clear - flips, clear,
		       (unsigned long long)computed, (unsigned long long)frames);
out:
	co_engine_destroy(e);
	moe_destroy(&moe);
	cluster_close(&c);
	for (int i = 0; i < lo->n; i++) {
		CHECK(c.w[i].rc == 0);
		if (c.w[i].rc)
			fprintf(stderr, "%s: worker %d: %s\n", what, i, c.w[i].err.msg);
	}
	co_load_destroy(load);
	co_place_destroy(p);
}

static void case_golden(void)
{
	static const char *const sets[] = { "tiny-a", "tiny-b" };
	for (size_t si = 0; si < FR_ARRAY_SIZE(sets); si++) {
		struct golden g;
		golden_open(&g, sets[si]);
		int E = g.cfg->n_routed_experts;
		const struct layout layouts[] = {
			{ "1 worker", 1, { E }, 1 },
			{ "2 workers", 2, { E / 2, E - E / 2 }, 1 },
			{ "3 workers", 3, { E / 3, E / 3, E - 2 * (E / 3) }, 1 },
			{ "3 workers, replicas", 3, { E / 2, E / 2, E / 2 }, 1 },
			{ "2 workers, replicas", 2, { E - 2, E / 2 + 3 }, 2, 2 },
			{ "3 workers", 3, { E / 3, E / 3, E - 2 * (E / 3) }, 2 },
			{ "3 workers", 3, { E / 3, E / 3, E - 2 * (E / 3) }, 2, 2 },
		};
		for (size_t i = 0; i < FR_ARRAY_SIZE(layouts); i++)
			golden_run(&g, &layouts[i], FP_DTYPE_F32);
		golden_run(&g, &layouts[3], FP_DTYPE_BF16);
		golden_run(&g, &layouts[4], FP_DTYPE_BF16);
		golden_close(&g);
	}
}

/* ---- the seam, driven directly --------------------------------------------------------- */

struct mb_input {
	int layer, n;
	float *x, *w, *base, *want;
	int32_t *ex;
};

/* Random routing: k distinct experts per token, positive weights. */
static void mb_input_make(struct mb_input *in, const struct model_config *cfg, int layer, int n,
			  int k, uint64_t *rng)
{
	int h = cfg->hidden_size, E = cfg->n_routed_experts;
	in->layer = layer;
	in->n = n;
	in->x = malloc((size_t)n * h * sizeof(float));
	in->base = malloc((size_t)n * h * sizeof(float));
	in->want = malloc((size_t)n * h * sizeof(float));
	in->w = malloc((size_t)n * k * sizeof(float));
	in->ex = malloc((size_t)n * k * sizeof(int32_t));
	for (size_t i = 0; i < (size_t)n * h; i++) {
		in->x[i] = (float)(fr_rand_unit(rng) * 2 - 1);
		in->base[i] = (float)(fr_rand_unit(rng) - 0.5);
	}
	for (int t = 0; t < n; t++)
		for (int j = 0; j < k; j++) {
			int e;
			bool dup;
			do {
				e = (int)(fr_splitmix64(rng) % (uint64_t)E);
				dup = false;
				for (int q = 0; q < j; q++)
					dup |= in->ex[t * k + q] == e;
			} while (dup);
			in->ex[t * k + j] = e;
			in->w[t * k + j] = (float)(0.05 + fr_rand_unit(rng));
		}
}

static void mb_input_free(struct mb_input *in)
{
	free(in->x);
	free(in->base);
	free(in->want);
	free(in->w);
	free(in->ex);
}

static int seam_dispatch(struct moe *m, const struct mb_input *in, int mb, int k)
{
	return m->ops->dispatch(m->ctx, in->layer, mb, in->x, in->n, in->ex, in->w, k);
}

static void case_interleave(void)
{
	struct golden g;
	struct fr_error err = { { 0 } };
	uint64_t rng = g_seed;

	golden_open(&g, "tiny-a");
	const struct model_config *cfg = g.cfg;
	int h = cfg->hidden_size, k = cfg->num_experts_per_tok, E = cfg->n_routed_experts;
	int L[3], nl = 0;
	for (int l = 0; l < cfg->num_hidden_layers && nl < 3; l++)
		if (model_moe_index(cfg, l) >= 0)
			L[nl++] = l;
	CHECK(nl == 3);

	/* Reference: one micro-batch at a time through the in-process workers. */
	struct mb_input in[3][3]; /* [layer][mb] */
	struct moe local;
	CHECK_RC(moe_local_create(g.ck, 2, &local, &err));
	for (int l = 0; l < 3; l++)
		for (int b = 0; b < 3; b++) {
			struct mb_input *p = &in[l][b];
			mb_input_make(p, cfg, L[l], 1 + (int)(fr_splitmix64(&rng) % 40), k, &rng);
			memcpy(p->want, p->base, (size_t)p->n * h * sizeof(float));
			CHECK_RC(seam_dispatch(&local, p, 0, k));
			CHECK_RC(local.ops->combine(local.ctx, p->layer, 0, p->want));
		}
	moe_destroy(&local);

	int slots[3] = { E / 2 + 2, E / 2 + 2, E / 2 };
	struct co_placement *p = uniform_placement(cfg, 3, slots);
	struct moe_slots *ws[3];
	for (int i = 0; i < 3; i++)
		ws[i] = load_slots(g.ck, p, i);
	struct fp_ring ring = { .slots = 3, .tokens = 40, .hidden = (uint32_t)h,
				.max_pairs = (uint32_t)k };
	struct cluster c;
	cluster_open(&c, 3, 2, &ring, ws, NULL);
	struct moe moe;
	struct moe_remote_opts ro = { .ring = ring, .wire = FP_DTYPE_F32, .timeout_ms = 20000,
				     .epoch = EPOCH };
	CHECK_RC(moe_remote_create(cfg, c.ctx, 2, 3, c.eps, c.recv, p, &ro, &moe, &err));

	float *out[3][3];
	for (int l = 0; l < 3; l++)
		for (int b = 0; b < 3; b++) {
			out[l][b] = malloc((size_t)in[l][b].n * h * sizeof(float));
			memcpy(out[l][b], in[l][b].base, (size_t)in[l][b].n * h * sizeof(float));
		}
#define D(l, b) CHECK_RC(seam_dispatch(&moe, &in[l][b], b, k))
#define C(l, b) CHECK_RC(moe.ops->combine(moe.ctx, in[l][b].layer, b, out[l][b]))
	/* Ping-pong as the engine does it, then out of order: newest first, and one
	 * micro-batch running a layer ahead of another. */
	D(0, 0); D(0, 1); C(0, 0); D(1, 0); C(0, 1); D(1, 1);
	C(1, 1); C(1, 0);
	D(2, 0); D(2, 1); D(2, 2); C(2, 2); C(2, 0); C(2, 1);
	D(0, 2); C(0, 2); D(1, 2); C(1, 2);
#undef D
#undef C
	for (int l = 0; l < 3; l++)
		for (int b = 0; b < 3; b++) {
			float d = max_abs_diff(out[l][b], in[l][b].want, (size_t)in[l][b].n * h);
			if (!(d <= TOL_LOCAL)) {
				fprintf(stderr, "FAIL layer %d mb %d: max diff %.3g to local\n",
					L[l], b, d);
				t_failures++;
			}
		}

	/* Misuse is refused without harming the ring. */
	int rc;
	CHECK_RC(seam_dispatch(&moe, &in[0][0], 0, k));
	rc = seam_dispatch(&moe, &in[0][1], 3, k); /* ring slot 0 is taken */
	CHECK(rc == -EINVAL && strstr(moe_remote_error(&moe), "ring slot 0"));
	rc = moe.ops->combine(moe.ctx, in[0][1].layer, 1, out[0][1]);
	CHECK(rc == -EINVAL);
	rc = moe.ops->dispatch(moe.ctx, 0, 1, in[0][1].x, 1, in[0][1].ex, in[0][1].w, k);
	CHECK(rc == -EINVAL); /* layer 0 is dense */
	rc = moe.ops->dispatch(moe.ctx, L[0], 1, in[0][1].x, 41, in[0][1].ex, in[0][1].w, k);
	CHECK(rc == -E2BIG);
	memcpy(out[0][0], in[0][0].base, (size_t)in[0][0].n * h * sizeof(float));
	CHECK_RC(moe.ops->combine(moe.ctx, in[0][0].layer, 0, out[0][0]));
	CHECK(max_abs_diff(out[0][0], in[0][0].want, (size_t)in[0][0].n * h) <= TOL_LOCAL);
	/* An empty micro-batch sends nothing and combines at once. */
	CHECK_RC(moe.ops->dispatch(moe.ctx, L[1], 1, NULL, 0, NULL, NULL, k));
	CHECK_RC(moe.ops->combine(moe.ctx, L[1], 1, NULL));
	printf("interleave %s: 9 micro-batch layers out at once over 3 workers match moe_local\n",
	       tp_backend_name(g_backend));

	moe_destroy(&moe);
	cluster_close(&c);
	for (int i = 0; i < 3; i++)
		CHECK(c.w[i].rc == 0);
	for (int l = 0; l < 3; l++)
		for (int b = 0; b < 3; b++) {
			mb_input_free(&in[l][b]);
			free(out[l][b]);
		}
	co_place_destroy(p);
	golden_close(&g);
}

/* Worker 1 misbehaves (mode); worker 0 serves. Returns combine's rc and elapsed ms. */
static int faulty_combine(enum wmode mode, int timeout_ms, char *msg, size_t cap,
			  uint64_t *ret_ms, int *ret_again, int *ret_recover, int *ret_dead,
			  int *ret_after)
{
	struct golden g;
	struct fr_error err = { { 0 } };
	uint64_t rng = g_seed ^ 0x5eed;

	golden_open(&g, "tiny-a");
	const struct model_config *cfg = g.cfg;
	int E = cfg->n_routed_experts, k = cfg->num_experts_per_tok, l1 = 1;
	int slots[2] = { E / 2, E - E / 2 };
	struct co_placement *p = uniform_placement(cfg, 2, slots);
	struct moe_slots *ws[2] = { load_slots(g.ck, p, 0), NULL };
	enum wmode modes[2] = { W_SERVE, mode };
	struct fp_ring ring = { .slots = 2, .tokens = 32, .hidden = (uint32_t)cfg->hidden_size,
				.max_pairs = (uint32_t)k };
	struct cluster c;
	/* A dying worker on a context of its own: the other context keeps serving. */
	int n_ctx = mode == W_DIE ? 2 : 1;
	cluster_open(&c, 2, n_ctx, &ring, ws, modes);
	struct moe moe;
	struct moe_remote_opts ro = { .ring = ring, .wire = FP_DTYPE_BF16,
				     .timeout_ms = timeout_ms, .epoch = EPOCH };
	CHECK_RC(moe_remote_create(cfg, c.ctx, n_ctx, 2, c.eps, c.recv, p, &ro, &moe, &err));

	/* 32 tokens x 4 experts over two workers: both get some. */
	struct mb_input in;
	mb_input_make(&in, cfg, l1, 32, k, &rng);
	CHECK_RC(seam_dispatch(&moe, &in, 1, k));
	uint64_t t0 = fr_now_ns();
	int rc = moe.ops->combine(moe.ctx, l1, 1, in.base);
	*ret_ms = (fr_now_ns() - t0) / 1000000;
	snprintf(msg, cap, "%s", moe_remote_error(&moe));
	/* Sticky: the ring is not trusted any more. */
	*ret_again = seam_dispatch(&moe, &in, 0, k);
	/* Recovery abandons what was in flight when a worker died (the live one's frame is
	 * released unread); the ring is usable again: a dispatch that needs the dead worker
	 * is refused before sending (not sticky), and the check names it. */
	int dead[4];
	*ret_recover = moe_remote_recover(&moe, timeout_ms);
	*ret_dead = -1;
	if (*ret_recover == 0 && moe_remote_check(&moe, 0, dead, 4) == 1)
		*ret_dead = dead[0];
	*ret_after = *ret_recover == 0 ? seam_dispatch(&moe, &in, 0, k) : 0;
	if (*ret_after == -ECONNRESET)
		CHECK(moe_remote_recover(&moe, timeout_ms) == 0); /* nothing in flight */

	moe_destroy(&moe);
	cluster_close(&c);
	CHECK(c.w[0].rc == 0 || c.w[0].rc == -ECONNRESET);
	mb_input_free(&in);
	co_place_destroy(p);
	golden_close(&g);
	return rc;
}

static void case_death(void)
{
	char msg[512];
	uint64_t ms;
	int again, recover, dead, after;
	int rc = faulty_combine(W_DIE, 10000, msg, sizeof(msg), &ms, &again, &recover, &dead,
				&after);
	struct fr_error e = { { 0 } };
	snprintf(e.msg, sizeof(e.msg), "%s", msg);
	t_expect_err("worker death", rc, -ECONNRESET, &e, "w1", "layer 1 mb 1");
	CHECK(again == -ECONNRESET);
	printf("death detected in %llu ms (timeout 10000)\n", (unsigned long long)ms);
	CHECK(ms < 5000);
	CHECK(recover == 0 && dead == 1 && after == -ECONNRESET);
	printf("recovered: worker %d named dead, a dispatch that needs it refused before "
	       "sending (%d)\n", dead, after);
}

static void case_timeout(void)
{
	char msg[512];
	uint64_t ms;
	int again, recover, dead, after;
	int rc = faulty_combine(W_MUTE, 300, msg, sizeof(msg), &ms, &again, &recover, &dead,
				&after);
	struct fr_error e = { { 0 } };
	snprintf(e.msg, sizeof(e.msg), "%s", msg);
	t_expect_err("mute worker", rc, -ECONNRESET, &e, "w1", "layer 1 mb 1");
	CHECK(strstr(e.msg, "fenced") != NULL);
	CHECK(again == -ECONNRESET);
	CHECK(ms >= 290 && ms < 5000);
	/* fenced like a dead one: the step can run again without it */
	CHECK(recover == 0 && dead == 1 && after == -ECONNRESET);
}

/* ---- malformed frames ------------------------------------------------------------------- */

enum bad {
	BAD_MAGIC,
	BAD_SLOT,      /* a slot the worker does not have */
	BAD_IMM,       /* header and imm disagree */
	BAD_TOKENS,    /* more tokens than the ring holds */
	BAD_KIND,      /* a combine frame sent to a worker */
};

static void bad_frame(enum bad what, const char *name, const char *needle)
{
	struct golden g;
	golden_open(&g, "tiny-a");
	const struct model_config *cfg = g.cfg;
	int E = cfg->n_routed_experts, h = cfg->hidden_size;
	struct co_placement *p = uniform_placement(cfg, 1, (int[]){ E });
	struct moe_slots *ws[1] = { load_slots(g.ck, p, 0) };
	struct fp_ring ring = { .slots = 2, .tokens = 8, .hidden = (uint32_t)h, .max_pairs = 4 };
	size_t dslot = fp_ring_dispatch_slot(&ring);
	struct cluster c;
	cluster_open(&c, 1, 1, &ring, ws, NULL);

	struct tp_mem *src;
	CHECK_RC(tp_mem_alloc(c.ctx[0], dslot, &src));
	uint8_t *buf = tp_mem_ptr(src);
	uint32_t n = what == BAD_TOKENS ? 9 : 2;
	uint32_t rows[16] = { 0, 1 };
	uint16_t counts[16] = { 1, 1 }, pslots[16] = { 0, 1 };
	float weights[16] = { 0.5f, 0.25f }, *vec = calloc((size_t)n * h, sizeof(float));
	for (uint32_t i = 0; i < n; i++)
		counts[i] = 1;
	if (what == BAD_SLOT)
		pslots[1] = (uint16_t)E;
	struct fp_dispatch d = {
		.h = { .dtype = FP_DTYPE_F32, .layer = 1, .micro_batch = 1, .n_tokens = n,
		       .hidden = (uint32_t)h, .n_pairs = n },
		.token_rows = rows, .pair_counts = counts, .slots = pslots, .weights = weights,
		.vectors = vec,
	};
	size_t len;
	CHECK_RC(fp_dispatch_encode(&d, buf, dslot, &len));
	if (what == BAD_MAGIC)
		buf[0] ^= 0xff;
	uint32_t imm = fp_imm(1, 1, what == BAD_KIND ? FP_KIND_COMBINE : FP_KIND_DISPATCH);
	if (what == BAD_IMM)
		imm = fp_imm(2, 1, FP_KIND_DISPATCH);
	CHECK_RC(tp_put_imm(c.eps[0], src, 0, dslot, len, imm, TP_PUT_SIGNAL, 0));
	/* Keep the coordinator's side turning until the worker gives up on its own. */
	struct tp_event ev[4];
	uint64_t end = fr_now_ns() + 10000000000ull;
	bool sent = false;
	while ((!sent || !atomic_load(&c.w[0].done)) && fr_now_ns() < end) {
		int got = tp_wait(c.ctx[0], ev, 4, 20);
		CHECK(got >= 0);
		for (int i = 0; i < got; i++)
			sent |= ev[i].type == TP_EV_SEND_DONE;
	}
	CHECK(sent && atomic_load(&c.w[0].done));
	tp_mem_free(src);
	cluster_close(&c);
	t_expect_err(name, c.w[0].rc, -EBADMSG, &c.w[0].err, needle, "w0");
	free(vec);
	co_place_destroy(p);
	golden_close(&g);
}

static void case_badframe(void)
{
	bad_frame(BAD_MAGIC, "bad magic", "magic");
	bad_frame(BAD_SLOT, "slot out of range", "slot");
	bad_frame(BAD_IMM, "imm mismatch", "imm");
	bad_frame(BAD_TOKENS, "too many tokens", "tokens");
	bad_frame(BAD_KIND, "combine sent to a worker", "not dispatch");
}

int main(int argc, char **argv)
{
	const char *backend = "shm", *which = NULL;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--backend") && i + 1 < argc)
			backend = argv[++i];
		else if (!strcmp(argv[i], "--case") && i + 1 < argc)
			which = argv[++i];
		else if (!strcmp(argv[i], "--frames") && i + 1 < argc && !strcmp(argv[i + 1], "device"))
			g_devframes = ++i > 0;
		else {
			fprintf(stderr, "usage: %s --backend shm|tcp --case NAME [--frames device]\n",
				argv[0]);
			return 2;
		}
	}
	if (tp_backend_parse(backend, &g_backend) < 0 || g_backend == TP_BACKEND_VERBS) {
		fprintf(stderr, "backend %s: shm or tcp\n", backend);
		return 2;
	}
	g_seed = t_seed();
	static const struct {
		const char *name;
		void (*fn)(void);
	} cases[] = {
		{ "golden", case_golden },     { "interleave", case_interleave },
		{ "death", case_death },       { "timeout", case_timeout },
		{ "badframe", case_badframe },
	};
	int ran = 0;
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++)
		if (!which || !strcmp(which, cases[i].name)) {
			cases[i].fn();
			ran++;
		}
	if (!ran) {
		fprintf(stderr, "unknown case %s\n", which);
		return 2;
	}
	for (int i = 0; i < g_n_twins; i++)
		moe_dev_twin_destroy(g_twins[i]);
	printf("%s%s: %d failure(s)\n", backend, g_devframes ? ", frames in device memory" : "",
	       t_failures);
	return t_failures ? 1 : 0;
}
