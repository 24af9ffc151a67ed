/* SPDX-License-Identifier: Apache-2.0 */
/*
 * admin.c - the Admin service (admin.proto), behind the operators' bearer token: GetLoad
 * (the device-level load per MoE layer and worker, balancedness), BenchEngine, Status (the
 * cluster at a glance), GetPlacement (where every expert lives, and its load) and
 * Rebalance (plan from the measured load, then the live move: workers stage the new
 * epoch's slots while serving, the routing table swaps between two steps).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/server-internal.h"
#include "rpc/admin.pb-c.h"

#define LOG_COMP "coordinator"

/* Every Admin call: the bearer token, when one is configured. */
static grpc_status_code admin_auth(struct co_server *s, struct rpc_call *call)
{
	char hdr[1024];

	if (!s->admin_token)
		return GRPC_STATUS_OK;
	if (rpc_call_metadata(call, "authorization", hdr, sizeof(hdr)) < 0 ||
	    rpc_auth_bearer_check(hdr, s->admin_token, s->o.admin_token_len) < 0) {
		fr_warn(LOG_COMP, "%s: refused: missing or wrong admin bearer token",
			rpc_call_method(call));
		return rpc_call_fail(call, GRPC_STATUS_UNAUTHENTICATED,
				     "admin calls need \"authorization: Bearer <token>\" with the "
				     "coordinator's admin token");
	}
	return GRPC_STATUS_OK;
}

static grpc_status_code on_get_load(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	const Ferry__V1__GetLoadRequest *r = (const Ferry__V1__GetLoadRequest *)req;
	Ferry__V1__GetLoadResponse resp = FERRY__V1__GET_LOAD_RESPONSE__INIT;
	struct co_server *s = arg;
	int n_moe = model_n_moe_layers(s->cfg), n_w = s->o.workers;
	Ferry__V1__LayerWorkerLoad *lw = NULL, **lwp = NULL;
	Ferry__V1__LayerBalance *lb = NULL, **lbp = NULL;
	uint64_t *tok = NULL, *ns = NULL;
	grpc_status_code st = GRPC_STATUS_OK;
	int *layers = NULL, n_layers;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (r->n_layers > (size_t)n_moe)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "%zu layers asked, the model has %d MoE layers", r->n_layers, n_moe);
	for (size_t i = 0; i < r->n_layers; i++)
		if (r->layers[i] >= (uint32_t)n_moe)
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "layer %u out of range: the model has %d MoE layers",
					     r->layers[i], n_moe);
	n_layers = r->n_layers ? (int)r->n_layers : n_moe;
	layers = malloc((size_t)FR_MAX(n_layers, 1) * sizeof(*layers));
	lw = calloc((size_t)FR_MAX(n_layers * n_w, 1), sizeof(*lw));
	lwp = calloc((size_t)FR_MAX(n_layers * n_w, 1), sizeof(*lwp));
	lb = calloc((size_t)FR_MAX(n_layers, 1), sizeof(*lb));
	lbp = calloc((size_t)FR_MAX(n_layers, 1), sizeof(*lbp));
	tok = calloc((size_t)n_w, sizeof(*tok));
	ns = calloc((size_t)n_w, sizeof(*ns));
	if (!layers || !lw || !lwp || !lb || !lbp || !tok || !ns) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	for (int i = 0; i < n_layers; i++)
		layers[i] = r->n_layers ? (int)r->layers[i] : i;

	co__engine_lock(s);
	if (!s->load || !s->place) {
		pthread_mutex_unlock(&s->engine_mu);
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "the cluster is not serving yet");
		goto out;
	}
	for (int i = 0; i < n_layers; i++) {
		uint64_t sum = 0;
		co_load_worker_tokens(s->load, layers[i], tok);
		co_load_worker_time(s->load, layers[i], ns);
		for (int w = 0; w < n_w; w++)
			sum += tok[w];
		for (int w = 0; w < n_w; w++) {
			Ferry__V1__LayerWorkerLoad *x = &lw[i * n_w + w];
			ferry__v1__layer_worker_load__init(x);
			x->layer = (uint32_t)layers[i];
			x->worker_index = (uint32_t)w;
			x->tokens = tok[w];
			x->fraction = sum ? (double)tok[w] / (double)sum : 0.0;
			x->busy_ns = ns[w];
			x->slots = (uint32_t)s->place->slots[w];
			lwp[i * n_w + w] = x;
		}
		ferry__v1__layer_balance__init(&lb[i]);
		lb[i].layer = (uint32_t)layers[i];
		co_load_balancedness(s->load, layers[i], CO_LOAD_TOKENS, &lb[i].balancedness);
		co_load_balancedness(s->load, layers[i], CO_LOAD_TIME, &lb[i].balancedness_time);
		lbp[i] = &lb[i];
	}
	resp.window_ns = 0;
	pthread_mutex_unlock(&s->engine_mu);
	pthread_mutex_lock(&s->mu);
	resp.epoch = s->epoch;
	/* names are written once, at join, and the array lives as long as the server */
	for (int i = 0; i < n_layers * n_w; i++)
		lw[i].worker_name = s->workers[lw[i].worker_index].name;
	pthread_mutex_unlock(&s->mu);
	resp.n_loads = (size_t)n_layers * n_w;
	resp.loads = lwp;
	resp.n_layers = (size_t)n_layers;
	resp.layers = lbp;
	rpc_call_send(call, &resp.base);
out:
	free(layers);
	free(lw);
	free(lwp);
	free(lb);
	free(lbp);
	free(tok);
	free(ns);
	return st;
}

/* Admin.BenchEngine drives the serving engine through co__engine_step() (a worker lost
 * mid-step costs a delay, as in serving). */
struct bench_ctx {
	struct co_server *s;
	char why[512];
};

static int bench_step(void *arg, int n, const int32_t *tok, const int32_t *seq,
		      const int32_t *pos, const bool *want, float *logits)
{
	struct bench_ctx *bc = arg;
	return co__engine_step(bc->s, n, tok, seq, pos, want, NULL, logits, bc->why,
			       sizeof(bc->why));
}

static void bench_reset(void *arg, int seq)
{
	struct bench_ctx *bc = arg;
	pthread_mutex_lock(&bc->s->engine_mu);
	co_engine_reset_seq(bc->s->engine, seq);
	pthread_mutex_unlock(&bc->s->engine_mu);
}

static grpc_status_code on_bench_engine(struct rpc_call *call, const ProtobufCMessage *req,
					void *arg)
{
	static const struct co_bench_ops ops = { bench_step, bench_reset };
	const Ferry__V1__BenchEngineRequest *r = (const Ferry__V1__BenchEngineRequest *)req;
	Ferry__V1__BenchEngineResponse resp = FERRY__V1__BENCH_ENGINE_RESPONSE__INIT;
	struct co_server *s = arg;
	int B = (int)r->batch, steps = r->steps ? (int)FR_MIN(r->steps, 4096u) : 16;
	int plen = r->prompt_len ? (int)FR_MIN(r->prompt_len, 65536u) : 16, V = s->cfg->vocab_size;
	struct bench_ctx bc = { .s = s };
	struct co_bench_result res = { 0 };
	grpc_status_code st;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (B < 1 || B > s->o.max_seqs)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "batch must be in [1, %d] (engine.max_seqs)", s->o.max_seqs);
	if (plen + steps + 2 > s->max_ctx || (int64_t)B * plen > 1 << 22)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "prompt_len %d + steps %d exceed the context of %d", plen, steps,
				     s->max_ctx);
	pthread_mutex_lock(&s->mu);
	bool ok = s->status == S_SERVING;
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "the cluster is not serving");
	if (co_sched_pause(s->sched, 60000) < 0) {
		co_sched_resume(s->sched);
		return rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE,
				     "requests kept running for 60 s: cannot measure");
	}
	struct co_bench_work wk = { .batch = B, .prompt_len = plen, .steps = steps,
				    .max_batch = s->o.max_batch, .vocab = V, .seed = r->seed };
	int rc = co_engine_bench(&wk, &ops, &bc, &res);
	co_sched_resume(s->sched);
	if (rc < 0)
		return rpc_call_fail(call, rc == -ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED :
				     GRPC_STATUS_UNAVAILABLE, "engine benchmark failed: %s",
				     rc == -ENOMEM ? "out of memory" : bc.why);
	resp.tokens_per_s = res.tokens_per_s;
	resp.step_ms_p50 = res.step_ms_p50;
	rpc_call_send(call, &resp.base);
	return GRPC_STATUS_OK;
}

/* ---- Status --------------------------------------------------------------------------------- */

static Ferry__V1__WorkerStatus__State worker_state(enum co_wstate st)
{
	switch (st) {
	case CO_WS_JOINING: return FERRY__V1__WORKER_STATUS__STATE__STATE_JOINING;
	case CO_WS_SERVING: return FERRY__V1__WORKER_STATUS__STATE__STATE_SERVING;
	case CO_WS_DRAINING: return FERRY__V1__WORKER_STATUS__STATE__STATE_DRAINING;
	case CO_WS_SUSPECT: return FERRY__V1__WORKER_STATUS__STATE__STATE_SUSPECT;
	case CO_WS_DEAD: return FERRY__V1__WORKER_STATUS__STATE__STATE_DEAD;
	case CO_WS__COUNT: break;
	}
	return FERRY__V1__WORKER_STATUS__STATE__STATE_UNSPECIFIED;
}

/* Bytes of one expert slot's weights (gate, up, down). */
static uint64_t slot_bytes(const struct model_config *c)
{
	return 3ull * (uint64_t)c->hidden_size * (uint64_t)c->moe_intermediate_size *
	       kn_dtype_size(c->torch_dtype);
}

static grpc_status_code on_status(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	Ferry__V1__StatusResponse resp = FERRY__V1__STATUS_RESPONSE__INIT;
	struct co_server *s = arg;
	Ferry__V1__WorkerStatus *ws = NULL, **wsp = NULL;
	grpc_status_code st;
	struct co_sched *sched;

	(void)req;
	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	pthread_mutex_lock(&s->mu);
	int n = s->n_joined;
	ws = calloc((size_t)FR_MAX(n, 1), sizeof(*ws));
	wsp = calloc((size_t)FR_MAX(n, 1), sizeof(*wsp));
	if (!ws || !wsp) {
		pthread_mutex_unlock(&s->mu);
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	uint64_t now = fr_now_ns(), per_slot = slot_bytes(s->cfg);
	for (int i = 0; i < n; i++) {
		const struct srv_worker *w = &s->workers[i];
		ferry__v1__worker_status__init(&ws[i]);
		ws[i].index = (uint32_t)i;
		ws[i].name = (char *)w->name;
		ws[i].address = (char *)w->addr;
		enum co_wstate wst = co__worker_state(s, i, now);
		bool quiet = wst == CO_WS_SUSPECT;
		ws[i].state = worker_state(wst);
		ws[i].detail = (char *)(w->state == W_FAILED ? w->fail :
					quiet ? "no heartbeat for three intervals" : "");
		ws[i].slots_per_layer = w->slot_capacity;
		int in_service = s->place && i < s->place->n_workers ? co_place_filled(s->place, i) : 0;
		ws[i].slots_in_service = (uint32_t)in_service;
		ws[i].memory_used_bytes = per_slot * (uint64_t)in_service;
		ws[i].memory_bytes = w->memory_bytes;
		ws[i].transport = (char *)tp_backend_name(s->o.tp.backend);
		ws[i].device = (char *)(s->o.tp.backend == TP_BACKEND_VERBS ?
					co__worker_device(s, i) : "");
		ws[i].heartbeat_age_s = (double)(now - w->last_heartbeat_ns) / 1e9;
		wsp[i] = &ws[i];
	}
	resp.version = (char *)FERRY_VERSION;
	resp.model = s->model_path;
	resp.moe_layers = (uint32_t)model_n_moe_layers(s->cfg);
	resp.routed_experts = (uint32_t)s->cfg->n_routed_experts;
	resp.status = (char *)co__status_name(s->status);
	resp.detail = s->status == S_SERVING && s->lost[0] ? s->lost : s->fail;
	resp.workers_configured = (uint32_t)s->o.workers;
	resp.n_workers = (size_t)n;
	resp.workers = wsp;
	resp.epoch = s->epoch;
	resp.uptime_s = (double)(now - s->t_start_ns) / 1e9;
	Ferry__V1__RebalanceSummary rs = FERRY__V1__REBALANCE_SUMMARY__INIT;
	if (s->last_rebalance.done) {
		rs.when_unix_s = s->last_rebalance.when_unix_s;
		rs.why = s->last_rebalance.why;
		rs.moves = s->last_rebalance.moves;
		rs.duration_s = s->last_rebalance.duration_s;
		rs.balancedness_before = s->last_rebalance.before;
		rs.balancedness_after = s->last_rebalance.after;
		resp.last_rebalance = &rs;
	}
	sched = s->status == S_SERVING ? s->sched : NULL;
	if (sched) {
		struct co_sched_stats ss;
		co_sched_stats(sched, &ss);
		resp.requests_running = (uint32_t)ss.running;
		resp.requests_queued = (uint32_t)ss.queued;
	}
	/* Strings point into s: send while holding mu (names and addresses are written once,
	 * at join, but fail[] may change). */
	rpc_call_send(call, &resp.base);
	pthread_mutex_unlock(&s->mu);
out:
	free(ws);
	free(wsp);
	return st;
}

/* ---- GetPlacement ------------------------------------------------------------------------- */

static grpc_status_code on_get_placement(struct rpc_call *call, const ProtobufCMessage *req,
					 void *arg)
{
	const Ferry__V1__GetPlacementRequest *r = (const Ferry__V1__GetPlacementRequest *)req;
	Ferry__V1__GetPlacementResponse resp = FERRY__V1__GET_PLACEMENT_RESPONSE__INIT;
	struct co_server *s = arg;
	int n_moe = model_n_moe_layers(s->cfg), n_e = s->cfg->n_routed_experts;
	Ferry__V1__LayerPlacement *lp = NULL, **lpp = NULL;
	uint32_t *slots = NULL, *reps = NULL;
	uint64_t *etok = NULL, *wtok = NULL, *wns = NULL;
	char **names = NULL;
	int32_t *se = NULL;
	grpc_status_code st;
	int n_layers, n_w = 0, total = 0;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	for (size_t i = 0; i < r->n_layers; i++)
		if (r->layers[i] >= (uint32_t)n_moe)
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "layer %u out of range: the model has %d MoE layers",
					     r->layers[i], n_moe);
	if (r->n_layers > (size_t)n_moe)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "%zu layers asked, the model has %d MoE layers", r->n_layers, n_moe);
	n_layers = r->n_layers ? (int)r->n_layers : n_moe;

	/* engine_mu: no step changes the table or the load while we copy them. */
	co__engine_lock(s);
	pthread_mutex_lock(&s->mu);
	const struct co_placement *p = s->place;
	if (!p) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "no placement yet: %d of "
				   "%d workers joined (%s)", s->n_joined, s->o.workers,
				   co__status_name(s->status));
		goto unlock;
	}
	n_w = p->n_workers;
	total = p->total_slots;
	lp = calloc((size_t)n_layers, sizeof(*lp));
	lpp = calloc((size_t)n_layers, sizeof(*lpp));
	slots = calloc((size_t)n_w, sizeof(*slots));
	names = calloc((size_t)n_w, sizeof(*names));
	se = calloc((size_t)n_layers * (size_t)FR_MAX(total, 1), sizeof(*se));
	reps = calloc((size_t)n_layers * (size_t)n_e, sizeof(*reps));
	etok = calloc((size_t)n_layers * (size_t)n_e, sizeof(*etok));
	wtok = calloc((size_t)n_layers * (size_t)n_w, sizeof(*wtok));
	wns = calloc((size_t)n_layers * (size_t)n_w, sizeof(*wns));
	if (!lp || !lpp || !slots || !names || !se || !reps || !etok || !wtok || !wns) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto unlock;
	}
	for (int w = 0; w < n_w; w++) {
		slots[w] = (uint32_t)p->slots[w];
		names[w] = s->workers[w].name;
	}
	for (int i = 0; i < n_layers; i++) {
		int l = r->n_layers ? (int)r->layers[i] : i;
		Ferry__V1__LayerPlacement *x = &lp[i];
		ferry__v1__layer_placement__init(x);
		x->layer = (uint32_t)l;
		x->slot_expert = se + (size_t)i * total;
		x->n_slot_expert = (size_t)total;
		memcpy(x->slot_expert, p->slot_expert + (size_t)l * total,
		       (size_t)total * sizeof(int32_t));
		x->replicas = reps + (size_t)i * n_e;
		x->n_replicas = (size_t)n_e;
		for (int j = 0; j < total; j++)
			if (x->slot_expert[j] >= 0 && x->slot_expert[j] < n_e)
				x->replicas[x->slot_expert[j]]++;
		x->expert_tokens = etok + (size_t)i * n_e;
		x->n_expert_tokens = (size_t)n_e;
		x->worker_tokens = wtok + (size_t)i * n_w;
		x->n_worker_tokens = (size_t)n_w;
		x->worker_busy_ns = wns + (size_t)i * n_w;
		x->n_worker_busy_ns = (size_t)n_w;
		x->balancedness = 1.0;
		x->balancedness_time = 1.0;
		if (s->load) {
			co_load_expert_tokens(s->load, l, x->expert_tokens);
			co_load_worker_tokens(s->load, l, x->worker_tokens);
			co_load_worker_time(s->load, l, x->worker_busy_ns);
			co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &x->balancedness);
			co_load_balancedness(s->load, l, CO_LOAD_TIME, &x->balancedness_time);
		}
		lpp[i] = x;
	}
	resp.epoch = s->epoch;
	resp.n_workers = (uint32_t)n_w;
	resp.n_slots = (size_t)n_w;
	resp.slots = slots;
	resp.n_worker_names = (size_t)n_w;
	resp.worker_names = names;
	resp.n_experts = (uint32_t)n_e;
	resp.n_layers = (size_t)n_layers;
	resp.layers = lpp;
	rpc_call_send(call, &resp.base);
unlock:
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
	free(lp);
	free(lpp);
	free(slots);
	free(names);
	free(se);
	free(reps);
	free(etok);
	free(wtok);
	free(wns);
	return st;
}

/* ---- Rebalance -------------------------------------------------------------------------------- */

#define REBALANCE_LOAD_TIMEOUT_MS 120000 /* when the server's options leave it 0 */
#define REBALANCE_TOLERANCE 0.003

/* The plan of one rebalance, for its progress messages. */
struct rb_plan {
	int n_layers, n_workers;
	Ferry__V1__LayerPlan *lp, **lpp;     /* [n_layers] */
	Ferry__V1__WorkerPlan *wp, **wpp;    /* [n_workers] */
	struct co_place_stats *before, *after;
	uint32_t moves, slots_total;
	uint64_t bytes;
	double mean_before, mean_after;
	double step_ms_median_before, step_ms_max_during; /* set before DONE */
	uint32_t steps_during;
	uint32_t waves, wave;                             /* wave: 1-based, 0 outside one */
};

static void rb_plan_fini(struct rb_plan *pl)
{
	free(pl->lp);
	free(pl->lpp);
	free(pl->wp);
	free(pl->wpp);
	free(pl->before);
	free(pl->after);
}

/* Fills pl from prev -> next under load; names are s's (valid while s lives). */
static int rb_plan_make(struct co_server *s, const struct co_placement *prev,
			const struct co_placement *next, const double *load, struct rb_plan *pl)
{
	int L = next->n_layers, W = next->n_workers, T = next->total_slots;
	uint64_t per_slot = 3ull * (uint64_t)s->cfg->hidden_size *
			    (uint64_t)s->cfg->moe_intermediate_size * kn_dtype_size(s->cfg->torch_dtype);

	memset(pl, 0, sizeof(*pl));
	pl->n_layers = L;
	pl->n_workers = W;
	pl->lp = calloc((size_t)L, sizeof(*pl->lp));
	pl->lpp = calloc((size_t)L, sizeof(*pl->lpp));
	pl->wp = calloc((size_t)W, sizeof(*pl->wp));
	pl->wpp = calloc((size_t)W, sizeof(*pl->wpp));
	pl->before = calloc((size_t)L, sizeof(*pl->before));
	pl->after = calloc((size_t)L, sizeof(*pl->after));
	if (!pl->lp || !pl->lpp || !pl->wp || !pl->wpp || !pl->before || !pl->after)
		return -ENOMEM;
	co_place_evaluate(prev, load, pl->before);
	co_place_evaluate(next, load, pl->after);
	for (int w = 0; w < W; w++) {
		ferry__v1__worker_plan__init(&pl->wp[w]);
		pl->wp[w].index = (uint32_t)w;
		pl->wp[w].name = s->workers[w].name;
		pl->wpp[w] = &pl->wp[w];
	}
	for (int l = 0; l < L; l++) {
		Ferry__V1__LayerPlan *x = &pl->lp[l];
		ferry__v1__layer_plan__init(x);
		x->layer = (uint32_t)l;
		x->balancedness_before = pl->before[l].balancedness;
		x->balancedness_after = pl->after[l].balancedness;
		for (int j = 0; j < T; j++) {
			int32_t e = next->slot_expert[(size_t)l * T + j];
			if (prev->slot_expert[(size_t)l * T + j] == e || e == CO_PLACE_EMPTY)
				continue;
			x->moves++;
			pl->wp[next->slot_worker[j]].slots_to_load++;
			pl->wp[next->slot_worker[j]].bytes_to_load += per_slot;
		}
		pl->moves += x->moves;
		pl->mean_before += x->balancedness_before / L;
		pl->mean_after += x->balancedness_after / L;
		pl->lpp[l] = x;
	}
	pl->slots_total = (uint32_t)((size_t)L * T);
	pl->bytes = per_slot * pl->moves;
	return 0;
}

static int rb_send(struct rpc_call *call, const struct rb_plan *pl, uint64_t epoch,
		   Ferry__V1__RebalanceProgress__Phase phase, uint64_t t0, const char *detail)
{
	Ferry__V1__RebalanceProgress m = FERRY__V1__REBALANCE_PROGRESS__INIT;

	m.phase = phase;
	m.epoch = epoch;
	if (phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED ||
	    phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_DONE) {
		m.n_layers = (size_t)pl->n_layers;
		m.layers = pl->lpp;
	}
	m.n_workers = (size_t)pl->n_workers;
	m.workers = pl->wpp;
	m.moves = pl->moves;
	m.slots_total = pl->slots_total;
	m.bytes_to_move = pl->bytes;
	m.balancedness_before = pl->mean_before;
	m.balancedness_after = pl->mean_after;
	m.duration_s = (double)(fr_now_ns() - t0) / 1e9;
	m.detail = (char *)(detail ? detail : "");
	m.step_ms_median_before = pl->step_ms_median_before;
	m.step_ms_max_during = pl->step_ms_max_during;
	m.steps_during = pl->steps_during;
	m.waves = pl->waves;
	m.wave = pl->wave;
	/* The rebalance goes on whether or not the client still listens. */
	return rpc_call_send(call, &m.base);
}

/* Gives layers of next whose gain is below min_gain their layout in prev. */
static int rb_min_gain(struct co_placement **next, const struct co_placement *prev,
		       const double *load, double min_gain, struct fr_error *err)
{
	const struct co_placement *p = *next;
	int L = p->n_layers, T = p->total_slots, kept = 0, rc;
	struct co_place_stats *a = calloc((size_t)L, sizeof(*a)), *b = calloc((size_t)L, sizeof(*b));
	int32_t *table = malloc((size_t)L * T * sizeof(*table));
	struct co_placement *q = NULL;

	if (!a || !b || !table) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	co_place_evaluate(prev, load, b);
	co_place_evaluate(p, load, a);
	memcpy(table, p->slot_expert, (size_t)L * T * sizeof(*table));
	for (int l = 0; l < L; l++)
		if (a[l].balancedness - b[l].balancedness < min_gain) {
			memcpy(table + (size_t)l * T, prev->slot_expert + (size_t)l * T,
			       (size_t)T * sizeof(*table));
			kept++;
		}
	rc = 0;
	if (kept && (rc = co_place_from_table(L, p->n_experts, p->n_workers, p->slots, table, &q,
					      err)) == 0) {
		co_place_destroy(*next);
		*next = q;
	}
out:
	free(a);
	free(b);
	free(table);
	return rc;
}

/* Calls the progress callback if there is one. */
static void rb_progress(const struct co_rebalance_opts *o, const struct rb_plan *pl,
			uint64_t epoch, Ferry__V1__RebalanceProgress__Phase phase, uint64_t t0,
			const char *detail)
{
	if (o->progress)
		o->progress(o->ctx, pl, epoch, (int)phase, t0, detail);
}

/* A placement solved over used[w] slots of each worker (red), laid out over every worker's
 * slots[w]: worker w's first used[w] slots hold red's experts, the rest are out of service
 * (a drained worker uses none; SetRedundancy leaves some spare). */
static int rb_expand(const struct co_placement *red, const int32_t *slots, const int32_t *used,
		     struct co_placement **ret, struct fr_error *err)
{
	int L = red->n_layers, W = red->n_workers, T = 0, rc, n = 0;
	struct co_placement *p = NULL;

	for (int w = 0; w < W; w++)
		T += slots[w];
	int32_t *table = malloc((size_t)L * T * sizeof(*table));
	int32_t *layer = malloc((size_t)L * T * sizeof(*layer) + 1);
	int32_t *slot = malloc((size_t)L * T * sizeof(*slot) + 1);
	if (!table || !layer || !slot) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (int l = 0; l < L; l++) {
		int g = 0;
		for (int w = 0; w < W; w++)
			for (int j = 0; j < slots[w]; j++, g++)
				/* Unused slots hold expert 0 for a moment: taken out of service
				 * below, they only keep the table well-formed. */
				table[(size_t)l * T + g] = j >= used[w] ? 0 :
					red->slot_expert[(size_t)l * red->total_slots +
							 red->slot_base[w] + j];
	}
	if ((rc = co_place_from_table(L, red->n_experts, W, slots, table, &p, err)) < 0)
		goto out;
	for (int w = 0; w < W; w++) {
		n = 0;
		for (int l = 0; l < L; l++)
			for (int j = used[w]; j < slots[w]; j++) {
				layer[n] = l;
				slot[n++] = j;
			}
		if (n && (rc = co_place_unload(p, w, n, layer, slot, err)) < 0)
			goto out;
	}
	*ret = p;
	p = NULL;
	rc = 0;
out:
	co_place_destroy(p);
	free(table);
	free(layer);
	free(slot);
	return rc;
}

/* p over used[w] slots per worker: each worker's first used[w] slots, which must all be in
 * service (-ESTALE otherwise: p does not have that shape). */
static int rb_reduce(const struct co_placement *p, const int32_t *used,
		     struct co_placement **ret, struct fr_error *err)
{
	int L = p->n_layers, T = p->total_slots, U = 0;

	for (int w = 0; w < p->n_workers; w++) {
		if (used[w] > p->slots[w])
			return -ESTALE;
		U += used[w];
	}
	int32_t *t = malloc((size_t)L * (size_t)FR_MAX(U, 1) * sizeof(*t));
	if (!t)
		return fr_error_set(err, -ENOMEM, "out of memory");
	int rc = 0;
	for (int l = 0; l < L && rc == 0; l++) {
		int g = 0;
		for (int w = 0; w < p->n_workers && rc == 0; w++)
			for (int j = 0; j < used[w]; j++) {
				int32_t e = p->slot_expert[(size_t)l * T + p->slot_base[w] + j];
				if (e == CO_PLACE_EMPTY) {
					rc = -ESTALE;
					break;
				}
				t[(size_t)l * U + g++] = e;
			}
	}
	if (rc == 0)
		rc = co_place_from_table(L, p->n_experts, p->n_workers, used, t, ret, err);
	free(t);
	return rc;
}

/* A starting layout over used[w] slots per worker for the migration-aware solve when the
 * slots in use change shape (drain, undrain, another redundancy). Each worker keeps the
 * experts of its first used[w] slots in p. A slot p had out of service (or did not have)
 * starts with an expert no slot holds any more (one that was only on a drained worker),
 * else with the hottest expert of its layer the worker does not hold. Experts still
 * without a slot then take the slot of the replica with the least load per replica. The
 * solver moves only what buys balance from there, so a drain or an undrain loads about
 * the slots it must and little else.
 * -ESTALE where no such start exists (the solve then runs from scratch). */
static int rb_warm(const struct co_placement *p, const int32_t *used, const double *load,
		   struct co_placement **ret, struct fr_error *err)
{
	int L = p->n_layers, E = p->n_experts, T = p->total_slots, W = p->n_workers, U = 0;
	int rc = 0;

	for (int w = 0; w < W; w++) {
		if (used[w] > E)
			return -ESTALE;
		U += used[w];
	}
	if (U < E)
		return -ESTALE;
	int32_t *t = malloc((size_t)L * (size_t)U * sizeof(*t));
	int32_t *order = malloc((size_t)E * sizeof(*order));
	int32_t *count = malloc((size_t)E * sizeof(*count));
	int32_t *base = malloc((size_t)(W + 1) * sizeof(*base));
	bool *held = malloc((size_t)W * E * sizeof(*held));
	if (!t || !order || !count || !base || !held) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	base[0] = 0;
	for (int w = 0; w < W; w++)
		base[w + 1] = base[w] + used[w];
	for (int l = 0; l < L && rc == 0; l++) {
		const double *ld = load + (size_t)l * E;
		int32_t *row = t + (size_t)l * U;
		/* experts of this layer, hottest first (insertion sort: E is small) */
		for (int e = 0; e < E; e++) {
			int k = e;
			for (; k > 0 && ld[order[k - 1]] < ld[e]; k--)
				order[k] = order[k - 1];
			order[k] = e;
		}
		memset(held, 0, (size_t)W * E * sizeof(*held));
		memset(count, 0, (size_t)E * sizeof(*count));
		for (int g = 0; g < U; g++)
			row[g] = CO_PLACE_EMPTY;
		for (int w = 0; w < W; w++) {
			const int32_t *se = p->slot_expert + (size_t)l * T + p->slot_base[w];
			for (int j = 0, k = 0; j < FR_MIN(used[w], p->slots[w]); j++)
				if (se[j] != CO_PLACE_EMPTY && !held[(size_t)w * E + se[j]]) {
					held[(size_t)w * E + se[j]] = true;
					count[se[j]]++;
					row[base[w] + k++] = se[j];
				}
		}
		/* free slots: experts without a slot first, then the hottest ones */
		for (int w = 0; w < W; w++)
			for (int g = base[w]; g < base[w + 1]; g++) {
				if (row[g] != CO_PLACE_EMPTY)
					continue;
				int pick = -1;
				for (int i = 0; i < E && pick < 0; i++)
					if (!count[order[i]] && !held[(size_t)w * E + order[i]])
						pick = order[i];
				for (int i = 0; i < E && pick < 0; i++)
					if (!held[(size_t)w * E + order[i]])
						pick = order[i];
				/* used[w] <= E: a free expert remains */
				held[(size_t)w * E + pick] = true;
				count[pick]++;
				row[g] = pick;
			}
		/* experts still without a slot take the least loaded replica's */
		for (int i = 0; i < E && rc == 0; i++) {
			int m = order[i], best = -1;
			if (count[m])
				continue;
			for (int w = 0; w < W; w++) {
				if (held[(size_t)w * E + m])
					continue;
				for (int g = base[w]; g < base[w + 1]; g++)
					if (count[row[g]] > 1 &&
					    (best < 0 || ld[row[g]] * count[row[best]] <
							 ld[row[best]] * count[row[g]]))
						best = g;
			}
			if (best < 0) {
				rc = -ESTALE;
				break;
			}
			int w = 0;
			while (best >= base[w + 1])
				w++;
			held[(size_t)w * E + row[best]] = false;
			count[row[best]]--;
			row[best] = m;
			held[(size_t)w * E + m] = true;
			count[m]++;
		}
	}
	if (rc == 0)
		rc = co_place_from_table(L, E, W, used, t, ret, err);
out:
	free(t);
	free(order);
	free(count);
	free(base);
	free(held);
	return rc;
}

/* Slots of each worker in service in p (the first ones: the tail may be out of service). */
static void rb_used(const struct co_placement *p, int32_t *used)
{
	for (int w = 0; w < p->n_workers; w++) {
		used[w] = 0;
		while (used[w] < p->slots[w] &&
		       p->slot_expert[p->slot_base[w] + used[w]] != CO_PLACE_EMPTY)
			used[w]++;
	}
}

/* A copy of p, slots out of service included. */
static int rb_copy(const struct co_placement *p, struct co_placement **ret, struct fr_error *err)
{
	int32_t used[MAX_WORKERS];
	struct co_placement *red = NULL;
	int rc;

	if (p->n_workers > MAX_WORKERS)
		return fr_error_set(err, -EINVAL, "too many workers");
	rb_used(p, used);
	if ((rc = rb_reduce(p, used, &red, err)) == -ESTALE)
		return fr_error_set(err, -EINVAL, "slots out of service are not at the end of "
				    "their worker's slots");
	if (rc == 0)
		rc = rb_expand(red, p->slots, used, ret, err);
	co_place_destroy(red);
	return rc;
}

static void drained_set(struct co_server *s, int w, bool drained)
{
	pthread_mutex_lock(&s->mu);
	s->workers[w].drained = drained;
	pthread_mutex_unlock(&s->mu);
}

/* One epoch of a rebalance: every worker fetches its slots of *next at its next heartbeat,
 * loads them while it serves, stages them and acknowledges; then the routing table swaps
 * between two steps and *next (taken) is in force. Errors (err says why; the placement in
 * force serves on): -ECONNABORTED. */
static int rb_move(struct co_server *s, const struct co_rebalance_opts *o, struct rb_plan *pl,
		   struct co_placement **next, uint64_t epoch, uint64_t t0, struct fr_error *err)
{
	struct co_placement *old = NULL;
	struct timespec dl;
	char fail[256] = "";
	int acked = -1, rc;
	int64_t load_ms = s->o.rebalance_load_timeout_ms > 0 ? s->o.rebalance_load_timeout_ms :
			  REBALANCE_LOAD_TIMEOUT_MS;

	fr_deadline_ms(&dl, load_ms);
	pthread_mutex_lock(&s->mu);
	s->pending = *next;
	s->pending_epoch = epoch;
	s->last_epoch = epoch;
	bool *gone = calloc((size_t)s->n_joined + 1, sizeof(*gone));
	int live = 0;
	if (!gone) {
		s->pending = NULL;
		pthread_mutex_unlock(&s->mu);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	/* Workers dead before this epoch (out of service, no slots in it) owe no ack. */
	for (int w = 0; w < s->n_joined; w++)
		live += !(gone[w] = s->workers[w].state == W_FAILED &&
				    co_place_filled(*next, w) == 0);
	for (;;) {
		int n = 0;
		for (int w = 0; w < s->n_joined; w++) {
			bool ok = s->workers[w].acked_epoch >= epoch;
			if (gone[w])
				continue;
			pl->wp[w].loaded = ok;
			n += ok;
			if (s->workers[w].state != W_LOADED && !fail[0])
				snprintf(fail, sizeof(fail), "worker %d '%s' left while loading (%s)",
					 w, s->workers[w].name, s->workers[w].fail);
		}
		if (s->status != S_SERVING && !fail[0])
			snprintf(fail, sizeof(fail), "the cluster is %s",
				 co__status_name(s->status));
		if (fail[0] || n == live)
			break;
		if (n != acked) {
			acked = n;
			pthread_mutex_unlock(&s->mu);
			rb_progress(o, pl, epoch, FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_LOADING,
				    t0, "");
			pthread_mutex_lock(&s->mu);
			continue;
		}
		if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
			/* name those that did not (the first few) */
			int k = 0, late = 0;
			for (int w = 0; w < s->n_joined; w++)
				if (!gone[w] && s->workers[w].acked_epoch < epoch && late++ < 4 &&
				    k < (int)sizeof(fail))
					k += snprintf(fail + k, sizeof(fail) - (size_t)k,
						      "%sworker %d '%s'", late > 1 ? ", " : "",
						      w, s->workers[w].name);
			if (k < (int)sizeof(fail))
				snprintf(fail + k, sizeof(fail) - (size_t)k,
					 "%s did not load %s slots within %.3g s (placement."
					 "rebalance_load_timeout)", late > 4 ? " and others" : "",
					 late > 1 ? "their" : "its", (double)load_ms / 1e3);
			break;
		}
	}
	free(gone);
	if (fail[0]) {
		s->pending = NULL;
		uint64_t in_force = s->epoch;
		pthread_mutex_unlock(&s->mu);
		fr_warn(LOG_COMP, "rebalance to epoch %llu abandoned, epoch %llu serves on: %s",
			(unsigned long long)epoch, (unsigned long long)in_force, fail);
		return fr_error_set(err, -ECONNABORTED, "rebalance abandoned, the old placement "
				    "serves on: %s", fail);
	}
	pthread_mutex_unlock(&s->mu);
	rb_progress(o, pl, epoch, FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_LOADING, t0, "");

	/* The swap, between two steps: engine_mu keeps every forward pass out. */
	co__engine_lock(s);
	pthread_mutex_lock(&s->mu);
	rc = moe_remote_set_placement(&s->moe, *next, (uint32_t)epoch);
	if (rc == 0) {
		old = s->place;
		s->place = *next;
		s->epoch = epoch;
		*next = NULL;
		co_load_reset(s->load);
	}
	s->pending = NULL;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
	co_place_destroy(old);
	if (rc < 0)
		return fr_error_set(err, -ECONNABORTED, "rebalance abandoned at the swap: %s",
				    rc == -EBUSY ? "a micro-batch was outstanding" : strerror(-rc));
	return 0;
}

int co__rebalance(struct co_server *s, const struct co_rebalance_opts *o, struct fr_error *err)
{
	bool drained[MAX_WORKERS] = { false };
	int32_t used[MAX_WORKERS], prev_used[MAX_WORKERS];
	int redundancy = -1;
	int n_moe = model_n_moe_layers(s->cfg), n_e = s->cfg->n_routed_experts;
	struct co_placement *prev = NULL, *next = NULL, **waves = NULL;
	int n_waves = 0;
	struct rb_plan pl = { 0 };
	double *load = NULL;
	uint64_t t0 = fr_now_ns(), epoch = 0;
	const char *why = o->why && o->why[0] ? o->why : "manual";
	int rc, min_distinct = o->min_distinct ? o->min_distinct : s->o.min_distinct;

	if (!isfinite(o->min_gain) || o->min_gain < 0 || o->min_gain > 1)
		return fr_error_set(err, -EINVAL, "min_gain %g is not in [0, 1]", o->min_gain);
	if (min_distinct > s->o.workers)
		return fr_error_set(err, -EINVAL, "min_distinct %d exceeds the %d workers",
				    min_distinct, s->o.workers);
	load = calloc((size_t)n_moe * n_e, sizeof(*load));
	if (!load)
		return fr_error_set(err, -ENOMEM, "out of memory");

	/* A snapshot of the placement in force and of the load, then plan without locks. */
	co__engine_lock(s);
	pthread_mutex_lock(&s->mu);
	rc = 0;
	if (s->status != S_SERVING || !s->place || !s->load) {
		rc = fr_error_set(err, -ESTALE, "the cluster is not serving (%s)",
				  co__status_name(s->status));
	} else if (s->rebalancing) {
		rc = fr_error_set(err, -ESTALE, "a rebalance to epoch %llu is running; wait for it "
				  "to finish", (unsigned long long)s->pending_epoch);
	} else {
		for (int w = 0; w < s->n_joined && rc == 0; w++) {
			const struct srv_worker *x = &s->workers[w];
			/* A dead worker whose slots left service is planned like a drained one:
			 * no slots, nothing to load. */
			if (x->state == W_FAILED && w != o->undrain &&
			    (co_place_filled(s->place, w) == 0 || o->heal)) {
				drained[w] = true;
				continue;
			}
			if (x->state != W_LOADED)
				rc = fr_error_set(err, -ESTALE, "worker %d '%s' is not serving (%s): a "
						  "rebalance needs every worker", w, x->name,
						  x->state == W_FAILED ? x->fail : "joining or leaving");
			drained[w] = (x->drained && w != o->undrain) || w == o->drain;
		}
		redundancy = o->redundancy >= -1 ? o->redundancy : s->redundancy;
		if (rc == 0 && o->drain >= s->n_joined)
			rc = fr_error_set(err, -EINVAL, "no worker %d", o->drain);
		if (rc == 0 && o->undrain >= 0 && !s->workers[o->undrain].drained)
			rc = fr_error_set(err, -EINVAL, "worker %d '%s' is not drained", o->undrain,
					  s->workers[o->undrain].name);
	}
	if (rc == 0) {
		if (o->profile)
			memcpy(load, o->profile, (size_t)n_moe * n_e * sizeof(*load));
		else
			co_load_profile_get(s->load, load);
		rc = rb_copy(s->place, &prev, err);
		if (rc == 0)
			s->rebalancing = true;
	}
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
	if (rc < 0)
		goto out;

	double total = 0;
	for (int i = 0; i < n_moe * n_e; i++)
		total += load[i];
	if (total <= 0 && (o->drain >= 0 || o->undrain >= 0 || o->to || o->heal ||
			   o->redundancy >= -1)) {
		for (int i = 0; i < n_moe * n_e; i++)
			load[i] = 1.0; /* nothing measured yet: place for a uniform load */
	} else if (total <= 0) {
		rc = fr_error_set(err, -ESTALE, "no load in the window yet: serve some requests "
				  "first, or give a profile");
		goto done;
	}
	/* Slots in use per worker: none on a drained one; with a redundancy r, the experts plus
	 * r spares per layer, spread over the others in proportion to their slots. */
	int W = prev->n_workers, cap = 0, target;
	for (int w = 0; w < W; w++)
		cap += (used[w] = drained[w] ? 0 : prev->slots[w]);
	target = redundancy >= 0 ? FR_MIN(cap, n_e + redundancy) : cap;
	if (target < cap && cap > 0) {
		int given = 0;
		for (int w = 0; w < W; w++)
			given += (used[w] = (int32_t)((int64_t)used[w] * target / cap));
		for (int w = 0; given < target; w = (w + 1) % W)
			if (!drained[w] && used[w] < prev->slots[w]) {
				used[w]++;
				given++;
			}
	}
	bool reshaped = false;
	rb_used(prev, prev_used);
	for (int w = 0; w < W; w++)
		reshaped |= used[w] != prev->slots[w] || prev_used[w] != prev->slots[w];
	struct co_place_problem pb = { .n_layers = n_moe, .n_experts = n_e, .n_workers = W,
				       .slots = used, .load = load };
	/* Migration-aware: start from the placement in force and move an expert only where it
	 * buys balance (a layer within 0.3% of its lower bound is left alone). */
	struct co_place_opts po = { .min_distinct = min_distinct,
				    .migrate_tolerance = REBALANCE_TOLERANCE };
	/* With drained workers (or spare slots) the solve runs over the slots in use, then is
	 * laid out over every worker's slots (rb_expand). */
	bool changes_drain = o->drain >= 0 || o->undrain >= 0 || o->to || o->heal;
	if (o->to) {
		const struct co_placement *t = o->to;
		if (t->n_layers != n_moe || t->n_experts != n_e) {
			rc = fr_error_set(err, -EINVAL, "the placement has %d MoE layers of %d "
					  "experts, the model %d of %d", t->n_layers, t->n_experts,
					  n_moe, n_e);
			goto done;
		}
		if (t->n_workers != prev->n_workers) {
			rc = fr_error_set(err, -EINVAL, "the placement names %d workers, the cluster "
					  "has %d", t->n_workers, prev->n_workers);
			goto done;
		}
		for (int w = 0; w < t->n_workers; w++)
			if (t->slots[w] != prev->slots[w]) {
				rc = fr_error_set(err, -EINVAL, "worker %d '%s': the placement gives "
						  "it %d slots per layer, it has %d", w,
						  s->workers[w].name, t->slots[w], prev->slots[w]);
				goto done;
			}
		if ((rc = co_place_check(t, min_distinct, err)) < 0 ||
		    (rc = rb_copy(t, &next, err)) < 0)
			goto done;
		for (int w = 0; w < t->n_workers; w++)
			drained[w] = co_place_filled(t, w) == 0;
	} else if (reshaped) {
		/* Over the slots in use, migration-aware from the layout in force: its slots
		 * still in use keep their experts, new ones start with hot experts (rb_warm);
		 * from scratch only where that start cannot be built. */
		struct co_placement *red = NULL, *rprev = NULL;
		if (rb_warm(prev, used, load, &rprev, NULL) < 0)
			rprev = NULL;
		rc = co_place_solve(&pb, &po, rprev, &red, err);
		if (rc == 0)
			rc = rb_expand(red, prev->slots, used, &next, err);
		co_place_destroy(red);
		co_place_destroy(rprev);
		if (rc < 0) {
			if (o->drain >= 0)
				fr_error_prefix(err, rc, "cannot drain worker %d '%s'", o->drain,
						s->workers[o->drain].name);
			else
				fr_error_prefix(err, rc, "plan");
			goto done;
		}
	} else if ((rc = co_place_solve(&pb, &po, prev, &next, err)) < 0 ||
		   (o->min_gain > 0 && (rc = rb_min_gain(&next, prev, load, o->min_gain,
							   err)) < 0)) {
		fr_error_prefix(err, rc, "plan");
		goto done;
	}
	if (o->max_moves > 0 && !changes_drain && !reshaped &&
	    (rc = (int)co_place_cap_moves(next, prev, load, min_distinct, o->max_moves)) < 0) {
		fr_error_set(err, rc, "plan: cannot cap the moves");
		goto done;
	}
	if (rb_plan_make(s, prev, next, load, &pl) < 0) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto done;
	}
	/* Workers with little staging room take the move in waves, each a placement that
	 * serves, swapped in as an epoch of its own. */
	int32_t room[MAX_WORKERS];
	bool limited = false;
	uint64_t epoch0;
	pthread_mutex_lock(&s->mu);
	epoch0 = FR_MAX(s->last_epoch, s->epoch) + 1;
	for (int w = 0; w < prev->n_workers; w++)
		limited |= (room[w] = s->workers[w].staging_room) >= 0;
	pthread_mutex_unlock(&s->mu);
	long changed = co_place_moves(prev, next);
	if (changed > 0 && limited) {
		if ((rc = co_place_waves(prev, next, room, min_distinct, &waves, &n_waves,
					 err)) < 0) {
			fr_error_prefix(err, rc, "plan");
			goto done;
		}
	} else if (changed > 0) {
		if (!(waves = calloc(1, sizeof(*waves)))) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			goto done;
		}
		waves[0] = next;
		next = NULL;
		n_waves = 1;
	}
	pl.waves = (uint32_t)n_waves;
	epoch = epoch0 + (uint64_t)(n_waves ? n_waves - 1 : 0);
	char detail[96] = "";
	if (n_waves > 1)
		snprintf(detail, sizeof(detail), "in %d waves (the workers' staging room)",
			 n_waves);
	fr_info(LOG_COMP, "rebalance (%s): %u of %u slots to move (%.1f MiB)%s%s, balancedness "
		"%.3f -> %.3f%s", why, pl.moves, pl.slots_total, (double)pl.bytes / (1 << 20),
		detail[0] ? " " : "", detail, pl.mean_before, pl.mean_after,
		o->dry_run ? " (dry run)" : "");
	char dry[128];
	snprintf(dry, sizeof(dry), "dry run: nothing moves%s%s", detail[0] ? "; it would go " : "",
		 detail);
	rb_progress(o, &pl, epoch, FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED, t0,
		    o->dry_run ? dry : changed ? detail : "nothing to move");
	if (o->dry_run || changed == 0) {
		rc = 0;
		goto done;
	}

	for (int wv = 0; wv < n_waves; wv++) {
		uint64_t ep = epoch0 + (uint64_t)wv;
		char where[64] = "";
		pl.wave = (uint32_t)wv + 1;
		if (n_waves > 1)
			snprintf(where, sizeof(where), " (wave %d of %d)", wv + 1, n_waves);
		if ((rc = rb_move(s, o, &pl, &waves[wv], ep, t0, err)) < 0) {
			if (wv > 0)
				fr_error_prefix(err, rc, "after %d of %d waves, epoch %llu in force",
						wv, n_waves, (unsigned long long)(ep - 1));
			goto done;
		}
		for (int w = 0; w < prev->n_workers && wv == n_waves - 1; w++)
			drained_set(s, w, drained[w]);
		if (n_waves > 1)
			fr_info(LOG_COMP, "rebalance (%s): epoch %llu in force%s, %.2f s since the "
				"plan", why, (unsigned long long)ep, where,
				(double)(fr_now_ns() - t0) / 1e9);
		rb_progress(o, &pl, ep, FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_SWAPPED, t0,
			    where[0] ? where + 1 : "");
	}
	pl.wave = 0;
	pthread_mutex_lock(&s->mu);
	if (o->redundancy >= -1)
		s->redundancy = o->redundancy;
	struct co_rebalance_record *lr = &s->last_rebalance;
	lr->done = true;
	lr->when_unix_s = (double)rpc_auth_now_ms() / 1e3;
	lr->duration_s = (double)(fr_now_ns() - t0) / 1e9;
	lr->before = pl.mean_before;
	lr->after = pl.mean_after;
	lr->moves = pl.moves;
	snprintf(lr->why, sizeof(lr->why), "%s", why);
	s->rb_history[s->rb_next] = *lr;
	s->rb_next = (s->rb_next + 1) % CO_RB_HISTORY;
	pthread_mutex_unlock(&s->mu);
	fr_info(LOG_COMP, "rebalance (%s): epoch %llu in force, %u slots moved in %.2f s, "
		"balancedness %.3f -> %.3f (predicted)", why, (unsigned long long)epoch, pl.moves,
		(double)(fr_now_ns() - t0) / 1e9, pl.mean_before, pl.mean_after);
	/* What the move cost serving: the longest step while it ran against the median step
	 * of the minute before. */
	uint64_t med = 0, mx = 0, unused = 0, now = fr_now_ns();
	if (s->sched) {
		co_sched_step_times(s->sched, t0 > 60000000000ull ? t0 - 60000000000ull : 0, t0,
				    &med, &unused);
		int n = co_sched_step_times(s->sched, t0, now + 1, &unused, &mx);
		pl.steps_during = n > 0 ? (uint32_t)n : 0;
	}
	pl.step_ms_median_before = (double)med / 1e6;
	pl.step_ms_max_during = (double)mx / 1e6;
	if (pl.steps_during)
		fr_info(LOG_COMP, "rebalance (%s): %u steps ran while it moved, the longest "
			"%.2f ms (median of the minute before %.2f ms)", why, pl.steps_during,
			pl.step_ms_max_during, pl.step_ms_median_before);
	else
		fr_info(LOG_COMP, "rebalance (%s): no step ran while it moved", why);
	rb_progress(o, &pl, epoch, FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_DONE, t0, "");
	atomic_fetch_add(&s->metrics.rebalances[CO_RB_COMPLETED], 1);
	atomic_fetch_add(&s->metrics.bytes_moved, pl.bytes);
	rc = 0;
	goto finished;
done:
	if (!o->dry_run)
		atomic_fetch_add(&s->metrics.rebalances[rc < 0 ? CO_RB_FAILED : CO_RB_UNCHANGED], 1);
finished:
	pthread_mutex_lock(&s->mu);
	s->rebalancing = false;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
out:
	for (int i = 0; i < n_waves; i++)
		co_place_destroy(waves[i]);
	free(waves);
	co_place_destroy(next);
	co_place_destroy(prev);
	rb_plan_fini(&pl);
	free(load);
	return rc;
}

static void rb_send_cb(void *ctx, const struct rb_plan *pl, uint64_t epoch, int phase,
		       uint64_t t0, const char *detail)
{
	rb_send(ctx, pl, epoch, (Ferry__V1__RebalanceProgress__Phase)phase, t0, detail);
}

static grpc_status_code on_rebalance(struct rpc_call *call, const ProtobufCMessage *req,
				     void *arg)
{
	const Ferry__V1__RebalanceRequest *r = (const Ferry__V1__RebalanceRequest *)req;
	struct co_server *s = arg;
	struct co_load_profile pr = { 0 };
	struct fr_error err = { { 0 } };
	grpc_status_code st;
	char why[128];
	int rc;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (r->why && strlen(r->why) > 100)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "why: at most 100 bytes");
	if (r->min_distinct > 16384)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "min_distinct %u out of "
				     "range", r->min_distinct);
	snprintf(why, sizeof(why), "%s", r->why && r->why[0] ? r->why : "manual");
	if (r->profile_json && r->profile_json[0] &&
	    co_load_profile_parse(r->profile_json, strlen(r->profile_json),
				  model_n_moe_layers(s->cfg), s->cfg->n_routed_experts, &pr,
				  &err) < 0)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "profile_json: %s",
				     err.msg);
	struct co_placement *to = NULL;
	if (r->placement_json && r->placement_json[0] &&
	    co_place_file_parse(r->placement_json, strlen(r->placement_json),
				s->cfg->n_routed_experts, &to, &err) < 0) {
		co_load_profile_fini(&pr);
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "placement_json: %s",
				     err.msg);
	}
	struct co_rebalance_opts o = {
		.dry_run = r->dry_run, .max_moves = r->max_moves, .min_gain = r->min_gain,
		.min_distinct = (int)r->min_distinct, .profile = pr.load, .why = why,
		.progress = rb_send_cb, .ctx = call, .drain = -1, .undrain = -1, .to = to,
		.redundancy = -2,
	};
	rc = co__rebalance(s, &o, &err);
	co_load_profile_fini(&pr);
	co_place_destroy(to);
	if (rc < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "%s", err.msg);
	return GRPC_STATUS_OK;
}

/* Drain or undrain one worker (by name, or by index when no name matches). */
static grpc_status_code drain_call(struct rpc_call *call, const ProtobufCMessage *req, void *arg,
				   bool drain)
{
	const Ferry__V1__DrainRequest *r = (const Ferry__V1__DrainRequest *)req;
	struct co_server *s = arg;
	struct fr_error err = { { 0 } };
	grpc_status_code st;
	char why[160];
	int64_t idx;
	int w = -1;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	const char *name = r->worker ? r->worker : "";
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n_joined && w < 0; i++)
		if (!strcmp(s->workers[i].name, name))
			w = i;
	if (w < 0 && s->n_joined > 0 && fr_parse_i64(name, 0, s->n_joined - 1, &idx) == 0)
		w = (int)idx;
	bool was = w >= 0 && s->workers[w].drained;
	pthread_mutex_unlock(&s->mu);
	if (w < 0)
		return rpc_call_fail(call, GRPC_STATUS_NOT_FOUND, "no worker named '%.64s'", name);
	if (drain && was)
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "worker %d '%s' is "
				     "drained already", w, s->workers[w].name);
	snprintf(why, sizeof(why), "%s worker %d '%s'", drain ? "drain" : "undrain", w,
		 s->workers[w].name);
	struct co_rebalance_opts o = { .dry_run = r->dry_run, .why = why, .progress = rb_send_cb,
				       .ctx = call, .drain = drain ? w : -1,
				       .undrain = drain ? -1 : w, .redundancy = -2 };
	int rc = co__rebalance(s, &o, &err);
	if (rc < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "%s", err.msg);
	return GRPC_STATUS_OK;
}

static grpc_status_code on_drain(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	return drain_call(call, req, arg, true);
}

static grpc_status_code on_undrain(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	return drain_call(call, req, arg, false);
}

static grpc_status_code on_set_redundancy(struct rpc_call *call, const ProtobufCMessage *req,
					  void *arg)
{
	const Ferry__V1__SetRedundancyRequest *r = (const Ferry__V1__SetRedundancyRequest *)req;
	struct co_server *s = arg;
	struct fr_error err = { { 0 } };
	grpc_status_code st;
	char why[64];

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (r->spare_slots < -1)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "spare_slots %d: -1 (all) "
				     "or a count >= 0", r->spare_slots);
	if (r->spare_slots >= 0)
		snprintf(why, sizeof(why), "redundancy: %d spare slots per layer", r->spare_slots);
	else
		snprintf(why, sizeof(why), "redundancy: every slot");
	struct co_rebalance_opts o = { .dry_run = r->dry_run, .why = why, .progress = rb_send_cb,
				       .ctx = call, .drain = -1, .undrain = -1,
				       .redundancy = r->spare_slots };
	int rc = co__rebalance(s, &o, &err);
	if (rc < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "%s", err.msg);
	return GRPC_STATUS_OK;
}

int co__admin_register(struct co_server *s, struct rpc_server *srv, struct fr_error *err)
{
	int rc;

	if ((rc = rpc_server_add_method(srv, RPC_M_GET_LOAD, RPC_METHOD_UNARY,
					&ferry__v1__get_load_request__descriptor, on_get_load, s,
					err)) < 0)
		return rc;
	if ((rc = rpc_server_add_method(srv, RPC_M_BENCH_ENGINE, RPC_METHOD_UNARY,
					&ferry__v1__bench_engine_request__descriptor, on_bench_engine,
					s, err)) < 0 ||
	    (rc = rpc_server_add_method(srv, RPC_M_STATUS, RPC_METHOD_UNARY,
					&ferry__v1__status_request__descriptor, on_status, s,
					err)) < 0)
		return rc;
	if ((rc = rpc_server_add_method(srv, RPC_M_GET_PLACEMENT, RPC_METHOD_UNARY,
					&ferry__v1__get_placement_request__descriptor,
					on_get_placement, s, err)) < 0)
		return rc;
	if ((rc = rpc_server_add_method(srv, RPC_M_REBALANCE, RPC_METHOD_SERVER_STREAMING,
					&ferry__v1__rebalance_request__descriptor, on_rebalance, s,
					err)) < 0 ||
	    (rc = rpc_server_add_method(srv, RPC_M_DRAIN, RPC_METHOD_SERVER_STREAMING,
					&ferry__v1__drain_request__descriptor, on_drain, s,
					err)) < 0)
		return rc;
	if ((rc = rpc_server_add_method(srv, RPC_M_UNDRAIN, RPC_METHOD_SERVER_STREAMING,
					&ferry__v1__drain_request__descriptor, on_undrain, s,
					err)) < 0)
		return rc;
	return rpc_server_add_method(srv, RPC_M_SET_REDUNDANCY, RPC_METHOD_SERVER_STREAMING,
				     &ferry__v1__set_redundancy_request__descriptor,
				     on_set_redundancy, s, err);
}
