/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server.c - ferry-coordinator's life cycle (see server.h): create (listeners, transport),
 * start (cluster formation in cluster.c, then the engine over remote experts and the
 * scheduler over it), wait (watching for workers that die between steps), stop, destroy;
 * the Health method; the engine glue the scheduler and ModelInfo use. The files of the
 * daemon library are listed in server-internal.h.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/server-internal.h"
#include "rpc/inference.pb-c.h"

#define LOG_COMP "coordinator"

/* ---- state -------------------------------------------------------------------------------- */

const char *co__status_name(enum srv_status st)
{
	static const char *const n[] = { "starting", "serving", "draining", "failed" };
	return n[st];
}

/* Whether every expert worker i serves has a copy on another serving worker: only then is
 * a silent worker fenced (otherwise steps wait for it, up to expert_timeout). Under mu. */
static bool serving_worker(const void *ctx, int i)
{
	return ((const struct co_server *)ctx)->workers[i].state == W_LOADED;
}

static bool covered_locked(const struct co_server *s, int i)
{
	return co_place_covered_elsewhere(s->place, i, serving_worker, s);
}

int co__lost_locked(struct co_server *s)
{
	const struct co_placement *p = s->place;
	int n = 0, first_l = -1, first_e = -1, who = -1;

	for (int l = 0; p && l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++) {
			int k, ok = 0;
			const struct co_place_replica *r = co_place_replicas(p, l, e, &k);
			for (int j = 0; j < k && !ok; j++)
				ok = s->workers[r[j].worker].state == W_LOADED;
			if (ok)
				continue;
			if (!n++) {
				first_l = l;
				first_e = e;
				who = k ? r[0].worker : -1;
			}
		}
	if (!n) {
		if (s->lost[0])
			fr_info(LOG_COMP, "every expert has a serving copy again: serving");
		s->lost[0] = '\0';
		return 0;
	}
	int layer = model_moe_layer(s->cfg, first_l);
	snprintf(s->lost, sizeof(s->lost), "%d experts lost (the first model.layers.%d.mlp."
		 "experts.%d): their only copies were on worker %d '%s' (%s) and the other "
		 "workers have no room for them; they serve again when it rejoins", n, layer,
		 first_e, who, who >= 0 ? s->workers[who].name : "?",
		 who >= 0 && s->workers[who].fail[0] ? s->workers[who].fail : "not serving");
	return n;
}

void co__fail_cluster_locked(struct co_server *s, const char *why)
{
	if (s->status == S_FAILED)
		return;
	fr_err(LOG_COMP, "cluster failed: %s", why);
	snprintf(s->fail, sizeof(s->fail), "%s", why);
	s->status = S_FAILED;
	pthread_cond_broadcast(&s->cv);
}

/* ---- Health and the engine glue ----------------------------------------------------------- */

static grpc_status_code on_health(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	Ferry__V1__HealthResponse resp = FERRY__V1__HEALTH_RESPONSE__INIT;
	struct co_server *s = arg;

	pthread_mutex_lock(&s->mu);
	switch (s->status) {
	case S_SERVING:
		resp.status = s->lost[0] ? FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_NOT_SERVING :
					   FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
		break;
	case S_DRAINING:
		resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_DRAINING;
		break;
	default:
		resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_NOT_SERVING;
	}
	resp.version = (char *)FERRY_VERSION;
	resp.workers = (uint32_t)s->n_joined;
	resp.workers_configured = (uint32_t)s->o.workers;
	for (int i = 0; i < s->n_joined; i++)
		resp.workers_serving += s->workers[i].state == W_LOADED && !s->workers[i].drained;
	resp.epoch = s->epoch;
	struct co_sched *sched = s->status == S_SERVING ? s->sched : NULL;
	pthread_mutex_unlock(&s->mu);
	if (sched) {
		struct co_sched_stats st;
		co_sched_stats(sched, &st);
		resp.running = (uint32_t)st.running;
		resp.queued = (uint32_t)st.queued;
		resp.kv_blocks_free = (uint32_t)st.free_blocks;
		resp.kv_blocks_total = (uint32_t)st.total_blocks;
	}
	rpc_call_send(call, &resp.base);
	return GRPC_STATUS_OK;
}

/* One forward pass under the engine lock, with its step's load accounting. */
static int take_out_locked(struct co_server *s, int i);

/* A step failed: if it was because workers died, abandons what was in flight, takes them
 * out of the routing table and returns 0 so that the step runs again; 1 when some expert
 * had its only copy on them (they are marked dead: heal_step() must move those experts to
 * the others first); otherwise < 0. Under engine_mu. */
static int survive_step(struct co_server *s, const char *why)
{
	int dead[64], n, rc = 0;

	if (moe_remote_recover(&s->moe, (int)s->o.expert_timeout_ms) < 0)
		return -1;
	if ((n = moe_remote_check(&s->moe, 0, dead, (int)FR_ARRAY_SIZE(dead))) <= 0) {
		/* reported before (between steps) but still in the routing table */
		pthread_mutex_lock(&s->mu);
		for (int i = 0; i < s->n_joined && n < (int)FR_ARRAY_SIZE(dead); i++)
			if (s->workers[i].state == W_FAILED && co_place_filled(s->place, i) > 0 &&
			    moe_remote_worker_status(&s->moe, i) < 0)
				dead[n++] = i;
		pthread_mutex_unlock(&s->mu);
		if (n == 0)
			return -1;
	}
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < n; i++)
		if (take_out_locked(s, dead[i]) < 0)
			rc = 1;
	pthread_mutex_unlock(&s->mu);
	if (rc == 0)
		fr_warn(LOG_COMP, "a step failed (%s): it runs again on the other workers", why);
	return rc;
}

/* Dead workers held the only copy of some experts: a rebalance over the others (spare
 * slots first, then the slots of replicas) loads them while the step waits. Without
 * engine_mu. Returns 0 when the placement in force no longer needs a dead worker. */
static int heal_step(struct co_server *s, const char *why)
{
	struct fr_error err = { { 0 } };
	char reason[160];
	uint64_t t0 = fr_now_ns();
	int rc;

	snprintf(reason, sizeof(reason), "heal: %.140s", why);
	/* the distinct-worker guarantee as far as the survivors allow */
	int alive = 0;
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n_joined; i++)
		alive += s->workers[i].state == W_LOADED;
	pthread_mutex_unlock(&s->mu);
	struct co_rebalance_opts o = { .why = reason, .drain = -1, .undrain = -1,
				       .redundancy = -2, .heal = true,
				       .min_distinct = FR_MAX(1, FR_MIN(s->o.min_distinct, alive)) };
	fr_warn(LOG_COMP, "a step failed (%s) and some experts had no other copy: moving them "
		"to the other workers; requests wait", why);
	for (;;) {
		rc = co__rebalance(s, &o, &err);
		if (rc != -ESTALE || fr_now_ns() - t0 > 60000000000ull)
			break;
		pthread_mutex_lock(&s->mu);
		bool busy = s->rebalancing && s->status == S_SERVING;
		pthread_mutex_unlock(&s->mu);
		if (!busy)
			break;
		usleep(50000); /* another rebalance is finishing (it will not get the dead ack) */
	}
	if (rc < 0)
		fr_err(LOG_COMP, "cannot move the lost experts to the other workers: %s", err.msg);
	else
		fr_info(LOG_COMP, "healed in %.2f s: the experts of the dead workers are served by "
			"the others", (double)(fr_now_ns() - t0) / 1e9);
	return rc;
}

void co__fold_stats(struct co_server *s)
{
	int n_moe = model_n_moe_layers(s->cfg);

	if (!atomic_load(&s->stats_staged))
		return;
	pthread_mutex_lock(&s->mu);
	atomic_store(&s->stats_staged, false);
	for (int i = 0; i < s->n_joined; i++) {
		struct srv_worker *w = &s->workers[i];
		if (!w->stats_due)
			continue;
		for (int l = 0; l < n_moe; l++) {
			if (s->load && w->stats_ns[l])
				co_load_record_time(s->load, i, l, w->stats_ns[l]);
			w->stats_ns[l] = 0;
		}
		w->stats_due = false;
	}
	pthread_mutex_unlock(&s->mu);
}

void co__engine_lock(struct co_server *s)
{
	atomic_fetch_add_explicit(&s->engine_waiting, 1, memory_order_relaxed);
	pthread_mutex_lock(&s->engine_mu);
	atomic_fetch_sub_explicit(&s->engine_waiting, 1, memory_order_relaxed);
}

/* engine_mu for a step: co__engine_lock() callers first, for up to ~20 ms (a step that
 * waited longer would only move the unfairness onto the requests). */
static void engine_lock_step(struct co_server *s)
{
	for (int i = 0; i < 200 && atomic_load_explicit(&s->engine_waiting, memory_order_relaxed);
	     i++)
		nanosleep(&(struct timespec){ .tv_nsec = 100 * 1000 }, NULL);
	pthread_mutex_lock(&s->engine_mu);
}

int co__engine_step(struct co_server *s, int n, const int32_t *tok, const int32_t *seq,
		       const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
		       float *logits, char *why, size_t why_cap)
{
	bool lost = false;
	int rc;

	uint64_t t0 = fr_now_ns();

	engine_lock_step(s);
	/* A worker that dies mid-step costs a delay, not the step: the step runs again
	 * without it (the same rows at the same positions: the KV cache rows it rewrites
	 * get the same values). */
	for (int attempt = 0;; attempt++) {
		rc = co_engine_forward(s->engine, n, tok, seq, pos, want, kb, logits);
		if (rc < 0)
			snprintf(why, why_cap, "%s", moe_remote_error(&s->moe)[0] ?
				 moe_remote_error(&s->moe) : strerror(-rc));
		if (rc >= 0 || rc == -EINVAL || attempt == 8)
			break;
		int sv = survive_step(s, why);
		if (sv < 0)
			break;
		if (sv == 1) {
			pthread_mutex_unlock(&s->engine_mu);
			int hr = heal_step(s, why);
			pthread_mutex_lock(&s->engine_mu);
			atomic_fetch_add(&s->metrics.failovers[hr < 0 ? CO_FO_LOST : CO_FO_HEALED], 1);
			if (hr < 0) {
				lost = true;
				break;
			}
		} else {
			atomic_fetch_add(&s->metrics.failovers[CO_FO_REROUTED], 1);
		}
	}
	co__fold_stats(s);
	co_load_next_step(s->load);
	pthread_mutex_unlock(&s->engine_mu);
	if (rc >= 0)
		fr_histo_observe(&s->metrics.step, (double)(fr_now_ns() - t0) / 1e9);
	if (rc < 0 && rc != -EINVAL) {
		pthread_mutex_lock(&s->mu);
		/* Experts lost (not the cluster): this step's requests fail naming them, new
		 * ones are refused, and serving resumes when their worker rejoins. */
		if (lost && co__lost_locked(s) > 0) {
			fr_err(LOG_COMP, "%s", s->lost);
			snprintf(why, why_cap, "%s", s->lost);
			rc = -ESHUTDOWN;
		} else {
			co__fail_cluster_locked(s, why);
		}
		pthread_mutex_unlock(&s->mu);
	}
	return rc;
}

/* The scheduler's view of the engine: a forward pass under the engine lock. */
static int sched_forward(void *ctx, int n, const int32_t *tok, const int32_t *seq,
			 const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
			 float *logits, struct fr_error *err)
{
	char why[512];
	int rc = co__engine_step(ctx, n, tok, seq, pos, want, kb, logits, why, sizeof(why));
	if (rc < 0)
		fr_error_set(err, rc, "%s", why);
	return rc;
}

static void sched_release(void *ctx, int seq)
{
	struct co_server *s = ctx;
	pthread_mutex_lock(&s->engine_mu);
	co_engine_reset_seq(s->engine, seq);
	pthread_mutex_unlock(&s->engine_mu);
}

/* ModelInfo's placement summary. */
static void placement_summary(void *ctx, Ferry__V1__PlacementSummary *ret)
{
	struct co_server *s = ctx;

	pthread_mutex_lock(&s->mu);
	ret->epoch = s->epoch;
	ret->workers = (uint32_t)s->n_joined;
	if (s->place) {
		const struct co_placement *p = s->place;
		ret->worker_slots = calloc((size_t)p->n_workers, sizeof(*ret->worker_slots));
		if (ret->worker_slots) {
			ret->n_worker_slots = (size_t)p->n_workers;
			for (int w = 0; w < p->n_workers; w++)
				ret->worker_slots[w] = (uint32_t)p->slots[w];
		}
		ret->replicas = (uint32_t)(p->total_slots - p->n_experts);
	}
	pthread_mutex_unlock(&s->mu);
	co__engine_lock(s);
	ret->min_balancedness = 1.0;
	for (int l = 0; s->load && l < model_n_moe_layers(s->cfg); l++) {
		double b;
		if (co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &b) == 0)
			ret->min_balancedness = FR_MIN(ret->min_balancedness, b);
	}
	pthread_mutex_unlock(&s->engine_mu);
}

/* NULL while serving, else why not (Generate/Score answer UNAVAILABLE with it). */
static const char *serving_unavailable(void *ctx, char *buf, size_t cap)
{
	struct co_server *s = ctx;
	const char *why = NULL;

	pthread_mutex_lock(&s->mu);
	if (s->status != S_SERVING) {
		snprintf(buf, cap, "%s%s%s", co__status_name(s->status), s->fail[0] ? ": " : "", s->fail);
		why = buf;
	} else if (s->lost[0]) {
		snprintf(buf, cap, "%s", s->lost);
		why = buf;
	}
	pthread_mutex_unlock(&s->mu);
	return why;
}

/* ---- life cycle --------------------------------------------------------------------------- */

/* Every service registers its own methods. With a cluster listener of its own, Internal
 * is served there only (with its own credentials); Health on both, for probes. */
static int add_methods(struct co_server *s, struct fr_error *err)
{
	struct rpc_server *internal = s->rpc_cluster ? s->rpc_cluster : s->rpc;
	int rc;

	if ((rc = co__registry_register(s, internal, err)) < 0 ||
	    (rc = co__admin_register(s, s->rpc, err)) < 0 ||
	    (rc = co_serving_register(&s->serving, s->rpc, err)) < 0 ||
	    (rc = co_inference_register(&s->info, s->rpc, err)) < 0)
		return rc;
	for (int i = 0; i < (s->rpc_cluster ? 2 : 1); i++)
		if ((rc = rpc_server_add_method(i ? s->rpc_cluster : s->rpc, RPC_M_HEALTH,
						RPC_METHOD_UNARY,
						&ferry__v1__health_request__descriptor, on_health, s,
						err)) < 0)
			return rc;
	return 0;
}

/* "listen 127.0.0.1:7400: address in use" from rpc_server_create()'s "ADDR: ..." (and
 * "listen ADDR: ..." for its messages that do not start with the address). */
static void listen_error(struct fr_error *err, int rc, const char *what, const char *addr)
{
	char msg[sizeof(err->msg)];
	size_t n = strlen(addr);

	if (!err)
		return;
	memcpy(msg, err->msg, sizeof(msg));
	if (!strncmp(msg, addr, n) && msg[n] == ':')
		fr_error_set(err, rc, "%s %s", what, msg);
	else
		fr_error_set(err, rc, "%s %s: %s", what, addr, msg);
}

/* ", TLS" / ", mTLS" / "" for the listening log lines. */
static const char *tls_note(const struct rpc_creds *c)
{
	if (!c || c->kind != RPC_CREDS_TLS)
		return "";
	return c->ca_file ? ", mTLS" : ", TLS";
}

/* The OpenAI-compatible API on [http] listen; its model id is the checkpoint directory's
 * name. */
static int http_start(struct co_server *s, const struct co_server_opts *o, struct fr_error *err)
{
	char id[256];
	const char *base;
	size_t n;

	if (!o->http_listen || !o->http_listen[0])
		return 0;
	n = strlen(s->model_path);
	while (n > 1 && s->model_path[n - 1] == '/')
		n--;
	snprintf(id, sizeof(id), "%.*s", (int)n, s->model_path);
	base = strrchr(id, '/') ? strrchr(id, '/') + 1 : id;
	struct co_openai_opts oo = { .listen = o->http_listen, .model_id = base,
				     .api_key = o->http_api_key,
				     .api_key_len = o->http_api_key_len };
	int rc = co_openai_start(&oo, &s->serving, &s->openai, err);
	if (rc < 0)
		return rc;
	fr_info(LOG_COMP, "OpenAI-compatible API on %s (port %d): POST /v1/completions, GET "
		"/v1/models, model '%s'%s", o->http_listen, co_openai_port(s->openai), base,
		o->http_api_key ? ", bearer key required" : "");
	return 0;
}

int co_server_create(const struct co_server_opts *o, struct co_server **ret,
		     struct fr_error *err)
{
	struct co_server *s;
	int rc;

	if (!o->model_path || !o->listen || o->workers < 1 || o->workers > MAX_WORKERS ||
	    o->micro_batches < 1 || o->micro_batches > MOE_MAX_MICRO_BATCHES || o->max_batch < 1 ||
	    o->max_seqs < 0 || o->kv_blocks < 0 || !o->secret || o->secret_len == 0)
		return fr_error_set(err, -EINVAL, "coordinator options out of range");
	s = calloc(1, sizeof(*s));
	if (!s)
		return fr_error_set(err, -ENOMEM, "out of memory");
	s->o = *o;
	s->t_start_ns = fr_now_ns();
	s->redundancy = -1;
	s->auto_undrain = -1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->engine_mu, NULL);
	s->model_path = strdup(o->model_path);
	s->listen = strdup(o->listen);
	s->load_profile = o->load_profile ? strdup(o->load_profile) : NULL;
	s->secret = o->secret_len ? malloc(o->secret_len) : NULL;
	/* New workers may join while serving, up to 64 more than it started with. */
	s->workers_cap = FR_MIN(MAX_WORKERS, o->workers + 64);
	s->workers = calloc((size_t)s->workers_cap, sizeof(*s->workers));
	if (!s->model_path || !s->listen || (o->load_profile && !s->load_profile) ||
	    (o->secret_len && !s->secret) || !s->workers) {
		co_server_destroy(s);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	if (o->secret_len)
		memcpy(s->secret, o->secret, o->secret_len);
	if (o->admin_token_len) {
		if (!(s->admin_token = malloc(o->admin_token_len))) {
			co_server_destroy(s);
			return fr_error_set(err, -ENOMEM, "out of memory");
		}
		memcpy(s->admin_token, o->admin_token, o->admin_token_len);
	}
	s->o.admin_token = s->admin_token;
	s->o.model_path = s->model_path;
	s->o.listen = s->listen;
	s->o.load_profile = s->load_profile;
	s->o.secret = s->secret;
	/* Borrowed: co__open_transport() keeps copies of the device names. */
	s->o.tp.device = NULL;
	s->o.tp_devices = NULL;
	s->o.n_tp_devices = 0;
	s->o.creds = NULL; /* only read below */
	s->o.cluster_listen = NULL;
	s->o.cluster_creds = NULL;
	s->o.metrics_listen = NULL;
	s->o.http_listen = NULL;
	s->o.http_api_key = NULL;

	if ((rc = model_ckpt_open(s->model_path, &s->ck, err)) < 0)
		goto fail;
	s->cfg = model_ckpt_config(s->ck);
	if (model_n_moe_layers(s->cfg) == 0) {
		rc = fr_error_set(err, -EINVAL, "%s: the model has no MoE layers to distribute",
				  s->model_path);
		goto fail;
	}
	s->max_ctx = o->max_ctx > 0 ? FR_MIN(o->max_ctx, s->cfg->max_position_embeddings) :
				      s->cfg->max_position_embeddings;
	/* The KV pool is the memory; the sequence count follows from it unless set. */
	if (!s->o.kv_blocks) {
		int64_t want = (int64_t)(s->o.max_seqs ? s->o.max_seqs : 16) *
			       FR_DIV_ROUND_UP(s->max_ctx, CO_KV_BLOCK_SIZE);
		s->o.kv_blocks = (int)FR_MIN(want, (int64_t)1 << 26);
	}
	if (!s->o.max_seqs)
		s->o.max_seqs = FR_MIN(s->o.max_batch, s->o.kv_blocks);
	/* What every worker's copy must match (read from both ends of each expert tensor). A
	 * coordinator whose copy lacks the routed experts cannot compare: it says so. */
	if ((rc = model_expert_fingerprints(s->ck, &s->fp, &s->n_fp, err)) == -ENOENT) {
		fr_warn(LOG_COMP, "cannot fingerprint the routed experts (%s): workers' "
			"checkpoints will not be compared with ours", err->msg);
		s->n_fp = 0;
	} else if (rc < 0) {
		goto fail;
	}
	if ((rc = model_weights_bind(s->ck, MODEL_BIND_NO_ROUTED, &s->w, err)) < 0)
		goto fail;
	char tpath[4096];
	snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", s->model_path);
	if (access(tpath, F_OK) == 0) {
		if ((rc = model_tokenizer_load(tpath, &s->tok, err)) < 0)
			goto fail;
		if (model_tokenizer_vocab_size(s->tok) > s->cfg->vocab_size)
			fr_warn(LOG_COMP, "%s has %d tokens, the model's vocab_size is %d: text whose "
				"ids do not fit is refused", tpath, model_tokenizer_vocab_size(s->tok),
				s->cfg->vocab_size);
	} else {
		fr_info(LOG_COMP, "%s: no tokenizer.json: clients must send token ids", s->model_path);
	}
	s->info = (struct co_inference_info){ .cfg = s->cfg, .tok = s->tok, .max_ctx = s->max_ctx,
					      .placement = placement_summary, .placement_ctx = s };
	s->serving = (struct co_serving){ .cfg = s->cfg, .tok = s->tok, .max_ctx = s->max_ctx,
					  .default_max_tokens = 256, .stall_ms = s->o.stall_ms,
					  .unavailable = serving_unavailable, .ctx = s };
	s->per_expert = o->metrics_per_expert;
	if ((rc = co__metrics_init(s, err)) < 0)
		goto fail;
	if ((rc = rpc_auth_replay_create(0, &s->replay)) < 0 ||
	    (rc = rpc_auth_challenges_create(0, 30000, &s->challenges)) < 0) {
		fr_error_set(err, rc, "out of memory");
		goto fail;
	}
	if (rpc_auth_random(s->boot_id, sizeof(s->boot_id)) < 0) {
		rc = fr_error_set(err, -EIO, "getrandom failed");
		goto fail;
	}
	if ((rc = co__open_transport(s, o, err)) < 0)
		goto fail;
	if ((rc = rpc_server_create(s->listen, o->creds, &s->rpc, err)) < 0) {
		listen_error(err, rc, "listen", s->listen);
		goto fail;
	}
	if (o->cluster_listen &&
	    (rc = rpc_server_create(o->cluster_listen, o->cluster_creds, &s->rpc_cluster,
				    err)) < 0) {
		listen_error(err, rc, "cluster listen", o->cluster_listen);
		goto fail;
	}
	if ((rc = add_methods(s, err)) < 0 || (rc = rpc_server_start(s->rpc, err)) < 0 ||
	    (s->rpc_cluster && (rc = rpc_server_start(s->rpc_cluster, err)) < 0) ||
	    (rc = co__metrics_listen(s, o->metrics_listen, err)) < 0 ||
	    (rc = http_start(s, o, err)) < 0)
		goto fail;
	fr_info(LOG_COMP, "listening on %s (port %d%s), waiting for %d worker(s), %s transport",
		s->listen, rpc_server_port(s->rpc), tls_note(o->creds), o->workers,
		tp_backend_name(o->tp.backend));
	if (s->rpc_cluster)
		fr_info(LOG_COMP, "workers join on %s (port %d%s)", o->cluster_listen,
			rpc_server_port(s->rpc_cluster), tls_note(o->cluster_creds));
	*ret = s;
	return 0;
fail:
	co_server_destroy(s);
	return rc;
}

int co_server_port(const struct co_server *s)
{
	return rpc_server_port(s->rpc);
}

int co_server_cluster_port(const struct co_server *s)
{
	return s->rpc_cluster ? rpc_server_port(s->rpc_cluster) : 0;
}

int co_server_start(struct co_server *s, struct fr_error *err)
{
	int n_moe = model_n_moe_layers(s->cfg), rc;
	struct tp_ep **eps = NULL;
	struct tp_mem **recv = NULL;

	if ((rc = co__form_cluster(s, err)) < 0)
		goto fail;
	eps = calloc((size_t)s->o.workers, sizeof(*eps));
	recv = calloc((size_t)s->o.workers, sizeof(*recv));
	if (!eps || !recv) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < s->o.workers; i++) {
		eps[i] = s->workers[i].ep;
		recv[i] = s->workers[i].recv;
	}
	if ((rc = co_load_create(n_moe, s->cfg->n_routed_experts, s->o.workers, s->place->slots,
				 s->o.load_window, &s->load, err)) < 0)
		goto fail;
	const char **names = calloc((size_t)s->o.workers, sizeof(*names));
	if (!names) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < s->o.workers; i++)
		names[i] = s->workers[i].name;
	struct moe_remote_opts ro = { .ring = s->ring, .wire = s->o.wire,
				     .timeout_ms = s->o.expert_timeout_ms, .load = s->load,
				     .epoch = (uint32_t)s->epoch, .names = names,
				     .suspect_ms = s->o.suspect_ms,
				     .on_combine = co__metrics_on_combine, .on_combine_ctx = s };
	rc = moe_remote_create(s->cfg, s->tp, s->n_tp, s->o.workers, eps, recv, s->place, &ro,
				  &s->moe, err);
	free(names);
	if (rc < 0)
		goto fail;
	struct co_engine_opts eo = { .max_seqs = s->o.max_seqs, .max_ctx = s->max_ctx,
				     .max_batch = s->o.max_batch,
				     .micro_batches = s->o.micro_batches,
				     .kv_blocks = s->o.kv_blocks };
	if ((rc = co_device_open(s->o.engine_device, eo.max_ctx, &s->dev, err)) < 0) {
		fr_error_prefix(err, rc, "[engine] device");
		goto fail;
	}
	if (s->dev.twin)
		fr_info(LOG_COMP, "engine: the device path on the CPU twin (testing)");
	else if (s->dev.gpu)
		fr_info(LOG_COMP, "engine: embeddings, attention, routers, shared experts and "
			"lm_head on %s, %s products", s->dev.where,
			kn_precision() == KN_PRECISION_EXACT ? "exact (f32 activations)"
							     : "fast (bf16 activations)");
	eo.dev_ops = s->dev.ops;
	eo.dev_ctx = s->dev.ctx;
	if ((rc = co_engine_create(s->w, s->moe, &eo, &s->engine, err)) < 0)
		goto fail;
	if (s->dev.gpu) { /* the step's host copies from and to the GPU go by DMA */
		struct moe_host_region v[CO_ENGINE_HOST_REGIONS];
		int n = co_engine_host_regions(s->engine, v, CO_ENGINE_HOST_REGIONS);
		s->n_pinned = moe_gpu_pin_regions(s->dev.gpu_mod, s->dev.gpu, v, n, s->pinned,
						  LOG_COMP, "engine");
	}
	struct co_sched_opts so = {
		.max_seqs = s->o.max_seqs, .max_batch = s->o.max_batch,
		.prefill_chunk = s->o.prefill_chunk, .max_ctx = s->max_ctx,
		.kv_blocks = co_engine_kv_blocks(s->engine),
		.block_size = co_engine_block_size(s->engine),
		.queue_max = s->o.queue_max, .vocab = s->cfg->vocab_size,
		.eos = s->cfg->eos_token_id, .stream_buffer = s->o.stream_buffer,
	};
	struct co_sched_engine se = { .forward = sched_forward, .release = sched_release, .ctx = s };
	if ((rc = co_sched_create(&so, &se, &s->sched, err)) < 0)
		goto fail;
	s->serving.sched = s->sched;
	pthread_mutex_lock(&s->mu);
	s->status = S_SERVING;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	fr_info(LOG_COMP, "serving: %d workers, %d micro-batches of up to %d tokens, %s wire, "
		"epoch %llu; %d sequences, KV pool of %d blocks x %d positions", s->o.workers,
		s->o.micro_batches, FR_DIV_ROUND_UP(s->o.max_batch, s->o.micro_batches),
		s->o.wire == FP_DTYPE_F32 ? "f32" : "bf16", (unsigned long long)s->epoch,
		s->o.max_seqs, co_engine_kv_blocks(s->engine), co_engine_block_size(s->engine));
	free(eps);
	free(recv);
	return 0;
fail:
	free(eps);
	free(recv);
	pthread_mutex_lock(&s->mu);
	if (s->place_err[0]) {
		/* Let the workers hear why (their GetAssignment is waiting) before going. */
		struct timespec dl;
		/* generous: a worker still connecting on a loaded host asks late */
		fr_deadline_ms(&dl, 10000);
		for (;;) {
			int told = 0;
			for (int i = 0; i < s->n_joined; i++)
				told += s->workers[i].told_place_err;
			if (told == s->n_joined || fr_deadline_passed(&dl))
				break;
			pthread_cond_timedwait(&s->cv, &s->mu, &dl);
		}
	}
	co__fail_cluster_locked(s, err->msg);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* Takes worker i (whose endpoint failed) out of the routing table when the other workers
 * hold replicas of all its experts. Returns 0 or -EBUSY (logged: some expert would have no
 * replica left). Under engine_mu and mu. */
static int take_out_locked(struct co_server *s, int i)
{
	struct srv_worker *w = &s->workers[i];
	struct co_placement *p = s->place;
	struct fr_error err = { { 0 } };
	int cnt = 0, rc;

	if (w->state == W_RELEASED) {
		fr_info(LOG_COMP, "worker %d '%s' left (it had handed its slots back)", w->index,
			w->name);
		w->state = W_FAILED;
		return 0;
	}
	int32_t *layer = malloc(sizeof(*layer) * (size_t)(p->n_layers * p->slots[i] + 1));
	int32_t *slot = malloc(sizeof(*slot) * (size_t)(p->n_layers * p->slots[i] + 1));
	if (!layer || !slot) {
		fr_err(LOG_COMP, "worker %d '%s' is gone; out of memory taking its slots out of "
		       "service", w->index, w->name);
		rc = -EBUSY;
		goto out;
	}
	for (int l = 0; l < p->n_layers; l++)
		for (int j = 0; j < p->slots[i]; j++)
			if (co_place_expert_at(p, l, i, j) != CO_PLACE_EMPTY) {
				layer[cnt] = l;
				slot[cnt++] = j;
			}
	bool fenced = moe_remote_worker_status(&s->moe, i) == -ETIMEDOUT;
	if (cnt && co_place_unload(p, i, cnt, layer, slot, &err) < 0) {
		fr_warn(LOG_COMP, "worker %d '%s' is %s and held the only copy of some experts "
			"(%s): the next step that needs them moves them to the other workers",
			w->index, w->name, fenced ? "fenced" : "gone", err.msg);
		w->state = W_FAILED;
		snprintf(w->fail, sizeof(w->fail), "%s; it held the only copy of some experts",
			 fenced ? "fenced: it stopped answering in time" : "gone");
		rc = -EBUSY;
		goto out;
	}
	fr_warn(LOG_COMP, "worker %d '%s' is %s: its %d slots are out of service, replicas on "
		"the other workers serve its experts", w->index, w->name,
		fenced ? "fenced (it stopped answering in time)" : "gone", cnt);
	w->state = W_FAILED;
	snprintf(w->fail, sizeof(w->fail), "%s, slots out of service",
		 fenced ? "fenced: it stopped answering in time" : "gone");
	rc = 0;
out:
	free(layer);
	free(slot);
	return rc;
}

/* Workers whose endpoint failed while no step needed them (found between steps): their
 * slots leave the routing table when the other workers hold replicas of all of them, and
 * the cluster serves on without them. Otherwise the loss is logged and left to the first
 * step that needs the worker, which fails the cluster naming it. Called without mu. */
static void check_workers(struct co_server *s)
{
	int dead[64], n;

	co__engine_lock(s);
	n = moe_remote_check(&s->moe, 1, dead, (int)FR_ARRAY_SIZE(dead));
	if (n <= 0) {
		pthread_mutex_unlock(&s->engine_mu);
		return;
	}
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < n; i++)
		(void)take_out_locked(s, dead[i]);
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
}

/* ---- the automatic rebalance policy ([placement] rebalance = auto) --------------------------- */

static void *auto_main(void *arg)
{
	struct co_server *s = arg;
	struct fr_error err = { { 0 } };
	struct co_rebalance_opts o = { .max_moves = (uint32_t)FR_MAX(s->o.rebalance_max_moves, 0),
				       .why = s->auto_why, .drain = -1, .undrain = s->auto_undrain,
				       .redundancy = -2 };

	if (co__rebalance(s, &o, &err) < 0)
		fr_warn(LOG_COMP, "automatic rebalance (%s) did not happen: %s", s->auto_why,
			err.msg);
	pthread_mutex_lock(&s->mu);
	s->auto_running = false;
	if (o.undrain < 0)
		s->auto_last_ns = fr_now_ns();
	else if (s->workers[o.undrain].drained && s->workers[o.undrain].state == W_LOADED) {
		/* not yet (say, another rebalance ran): try again in a while */
		s->workers[o.undrain].undrain_due = true;
		s->workers[o.undrain].undrain_not_before_ns = fr_now_ns() + 5000000000ull;
	}
	s->auto_undrain = -1;
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Called from co_server_wait()'s tick without locks: starts an automatic rebalance when a
 * layer's balancedness (by compute time; by tokens until workers report time) has stayed
 * below the threshold for the window, the interval since the last one has passed, and the
 * workers have spare slots to put replicas in. */
static void auto_tick(struct co_server *s)
{
	uint64_t now = fr_now_ns();
	double worst = 1.0;
	int worst_layer = -1;

	pthread_mutex_lock(&s->mu);
	if (s->auto_joinable && !s->auto_running) {
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->auto_thread, NULL);
		pthread_mutex_lock(&s->mu);
		s->auto_joinable = false;
	}
	/* A worker that came back gets slots again (whatever [placement] rebalance says: this
	 * restores redundancy, it does not chase load), once it serves its empty table. */
	for (int i = 0; i < s->n_joined && s->status == S_SERVING && !s->stop &&
			!s->rebalancing && !s->auto_running && !s->auto_joinable; i++) {
		struct srv_worker *w = &s->workers[i];
		if (!w->undrain_due || w->state != W_LOADED || now < w->undrain_not_before_ns ||
		    now - w->last_heartbeat_ns > 2ull * s->o.heartbeat_ms * 1000000ull)
			continue;
		w->undrain_due = false;
		snprintf(s->auto_why, sizeof(s->auto_why), "worker '%s' %s", w->name,
			 w->fresh ? "joined" : "is back");
		fr_info(LOG_COMP, "automatic rebalance: %s: giving it slots", s->auto_why);
		s->auto_undrain = i;
		s->auto_running = true;
		if (pthread_create(&s->auto_thread, NULL, auto_main, s) == 0) {
			s->auto_joinable = true;
		} else {
			s->auto_running = false;
			s->auto_undrain = -1;
			w->undrain_due = true;
		}
		pthread_mutex_unlock(&s->mu);
		return;
	}
	bool idle = s->o.auto_rebalance && s->status == S_SERVING && s->place && !s->stop &&
		    !s->rebalancing && !s->auto_running &&
		    s->place->total_slots > s->place->n_experts;
	if (!s->auto_last_ns)
		s->auto_last_ns = now; /* the interval also runs from the start */
	pthread_mutex_unlock(&s->mu);
	if (!idle)
		return;
	co__engine_lock(s);
	for (int l = 0; s->load && l < model_n_moe_layers(s->cfg); l++) {
		double bt = 1.0, bk = 1.0;
		co_load_balancedness(s->load, l, CO_LOAD_TIME, &bt);
		co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &bk);
		double b = bt < 1.0 ? bt : bk;
		if (b < worst) {
			worst = b;
			worst_layer = l;
		}
	}
	pthread_mutex_unlock(&s->engine_mu);
	pthread_mutex_lock(&s->mu);
	if (worst >= s->o.rebalance_threshold) {
		s->auto_below_since_ns = 0;
	} else if (!s->auto_below_since_ns) {
		s->auto_below_since_ns = now;
	} else if (now - s->auto_below_since_ns >= (uint64_t)s->o.rebalance_window_ms * 1000000ull &&
		   now - s->auto_last_ns >= (uint64_t)s->o.rebalance_min_interval_ms * 1000000ull) {
		snprintf(s->auto_why, sizeof(s->auto_why), "auto: layer %d balancedness %.3f < %.3f "
			 "for %lld s", worst_layer, worst, s->o.rebalance_threshold,
			 (long long)((now - s->auto_below_since_ns) / 1000000000ull));
		fr_info(LOG_COMP, "automatic rebalance: %s", s->auto_why);
		s->auto_below_since_ns = 0;
		s->auto_running = true;
		if (pthread_create(&s->auto_thread, NULL, auto_main, s) == 0) {
			s->auto_joinable = true;
		} else {
			s->auto_running = false;
			s->auto_last_ns = now;
			fr_warn(LOG_COMP, "automatic rebalance: cannot start its thread");
		}
	}
	pthread_mutex_unlock(&s->mu);
}

int co_server_wait(struct co_server *s, struct fr_error *err)
{
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	while (!s->stop && s->status != S_FAILED) {
		struct timespec tick;
		fr_deadline_ms(&tick, 200);
		pthread_cond_timedwait(&s->cv, &s->mu, &tick);
		if (s->status == S_SERVING && !s->stop) {
			pthread_mutex_unlock(&s->mu);
			check_workers(s);
			co__join_tick(s);
			auto_tick(s);
			pthread_mutex_lock(&s->mu);
			if (s->lost[0])
				co__lost_locked(s);
		}
		/* Heartbeats: a worker silent for three intervals is suspect: fenced (with
		 * [transport] suspect_after set), so that no step waits on it; check_workers
		 * then takes it out of the routing table. */
		uint64_t now = fr_now_ns();
		int silent_w[64], n_silent = 0;
		uint64_t iv = (uint64_t)s->o.heartbeat_ms * 1000000ull;
		for (int i = 0; i < s->n_joined; i++) {
			struct srv_worker *w = &s->workers[i];
			uint64_t silent = now - w->last_heartbeat_ns;
			if (w->state != W_LOADED || silent <= 3 * iv)
				continue;
			/* (one loading a rebalance is the rebalance's to judge; one per pass: the
			 * next pass sees it out when judging the others) */
			bool loading = s->pending && w->acked_epoch < s->pending_epoch;
			bool fence = silent > 5 * iv && s->o.suspect_ms > 0 &&
				     s->status == S_SERVING && !loading && n_silent == 0 &&
				     covered_locked(s, i);
			if (!fence && now - w->hb_warned_ns <= 3 * iv)
				continue;
			fr_warn(LOG_COMP, "worker %d '%s' missed heartbeats for %llu ms%s", i,
				w->name, (unsigned long long)(silent / 1000000),
				fence ? ": suspect, fenced" : "");
			w->hb_warned_ns = now;
			if (fence)
				silent_w[n_silent++] = i;
		}
		if (n_silent) {
			pthread_mutex_unlock(&s->mu);
			co__engine_lock(s);
			for (int k = 0; k < n_silent; k++)
				moe_remote_fence(&s->moe, silent_w[k]);
			pthread_mutex_unlock(&s->engine_mu);
			check_workers(s);
			pthread_mutex_lock(&s->mu);
		}
	}
	if (s->status == S_FAILED)
		rc = fr_error_set(err, -EIO, "%s", s->fail);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int co_server_forward(struct co_server *s, int n, const int32_t *tokens, const int32_t *seq,
		      const int32_t *pos, const bool *want_logits, float *logits)
{
	char why[512];

	pthread_mutex_lock(&s->mu);
	bool ok = s->status == S_SERVING;
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return -EAGAIN;
	for (int i = 0; i < n; i++)
		if (pos[i] == 0) {
			pthread_mutex_lock(&s->engine_mu);
			co_engine_reset_seq(s->engine, seq[i]);
			pthread_mutex_unlock(&s->engine_mu);
		}
	return co__engine_step(s, n, tokens, seq, pos, want_logits, NULL, logits, why, sizeof(why));
}

void co_server_prof(struct co_server *s, uint64_t ret_ns[])
{
	co__engine_lock(s);
	if (s->engine) {
		co_engine_prof(s->engine, ret_ns);
		co_engine_prof_reset(s->engine);
	}
	pthread_mutex_unlock(&s->engine_mu);
}

void co_server_stop(struct co_server *s)
{
	s->stop = 1;
}

void co_server_destroy(struct co_server *s)
{
	if (!s)
		return;
	co__metrics_stop(s); /* it reads what the rest of this frees */
	/* Drain: no new requests; running ones finish (bounded), then the workers are told
	 * to drain by their next heartbeat. */
	pthread_mutex_lock(&s->mu);
	if (s->status == S_SERVING || s->status == S_STARTING)
		s->status = S_DRAINING;
	pthread_cond_broadcast(&s->cv); /* a rebalance loading gives up */
	bool auto_thread = s->auto_joinable;
	s->auto_joinable = false;
	pthread_mutex_unlock(&s->mu);
	if (auto_thread)
		pthread_join(s->auto_thread, NULL);
	bool served = false;
	if (s->sched) {
		struct co_sched_stats st;
		uint64_t end = fr_now_ns() + 10000000000ull;
		for (;;) {
			co_sched_stats(s->sched, &st);
			if ((!st.running && !st.queued) || fr_now_ns() > end)
				break;
			struct timespec ts = { .tv_nsec = 20 * 1000000L };
			nanosleep(&ts, NULL);
		}
		if (st.running || st.queued)
			fr_warn(LOG_COMP, "%d request(s) still running after 10 s: cancelling them",
				st.running + st.queued);
		served = st.finished > 0;
	}
	pthread_mutex_lock(&s->mu);
	int hb = s->o.heartbeat_ms;
	bool any = s->n_joined > 0 && s->status != S_FAILED;
	pthread_mutex_unlock(&s->mu);
	if (served && s->rpc) {
		/* Handlers that just returned still have their final status in flight; let it
		 * reach the clients before the server cancels what is left. */
		struct timespec ts = { .tv_nsec = 200 * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (any && hb > 0 && s->rpc) {
		/* Give the workers one heartbeat to hear "drain" before their endpoints close. */
		struct timespec ts = { .tv_sec = (hb + 100) / 1000, .tv_nsec = (long)((hb + 100) % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	/* Handlers first (they hold requests), then the scheduler (it drives the engine). */
	co_openai_stop(s->openai);
	rpc_server_destroy(s->rpc);
	rpc_server_destroy(s->rpc_cluster);
	co_sched_destroy(s->sched);
	if (s->dev.gpu)
		moe_gpu_unpin_regions(s->dev.gpu_mod, s->dev.gpu, s->pinned, &s->n_pinned);
	co_engine_destroy(s->engine);
	co_device_close(&s->dev);
	moe_destroy(&s->moe);
	co_load_destroy(s->load);
	for (int i = 0; s->workers && i < s->n_joined; i++) {
		tp_ep_destroy(s->workers[i].ep);
		tp_mem_free(s->workers[i].recv);
		rpc_auth_replay_destroy(s->workers[i].replay);
		free(s->workers[i].stats_ns);
	}
	for (int d = 0; d < s->n_tp; d++)
		tp_context_destroy(s->tp[d]);
	for (int d = 0; d < TP_WAIT_MANY_MAX; d++)
		free(s->tp_dev[d]);
	co_place_destroy(s->place);
	rpc_auth_replay_destroy(s->replay);
	rpc_auth_challenges_destroy(s->challenges);
	free(s->fp);
	model_weights_free(s->w);
	model_ckpt_close(s->ck);
	free(s->workers);
	model_tokenizer_free(s->tok);
	free(s->model_path);
	free(s->listen);
	free(s->load_profile);
	free(s->secret);
	free(s->admin_token);
	co__metrics_fini(s);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->engine_mu);
	free(s);
}
