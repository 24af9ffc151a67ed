/* SPDX-License-Identifier: Apache-2.0 */
/*
 * metrics.c - ferry-coordinator's /metrics ([metrics] listen): Prometheus text, written
 * from the counters the daemon keeps anyway (rpc call counts, the scheduler's, the load
 * accounting's totals) and from the serving histograms. Every series is documented in
 * deploy/README.md ("Metrics").
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/server-internal.h"
#include "metrics/httpd.h"

#define LOG_COMP "coordinator"

static const char *const finish_names[] = {
	[CO_FINISH_NONE] = "none",	   [CO_FINISH_LENGTH] = "length",
	[CO_FINISH_STOP] = "stop",	   [CO_FINISH_CONTEXT] = "context",
	[CO_FINISH_CANCELLED] = "cancelled", [CO_FINISH_ERROR] = "error",
};

enum co_wstate co__worker_state(const struct co_server *s, int i, uint64_t now_ns)
{
	const struct srv_worker *w = &s->workers[i];

	switch (w->state) {
	case W_JOINING:
	case W_READY:
	case W_CONNECTED:
		return CO_WS_JOINING;
	case W_LOADED:
		if (now_ns - w->last_heartbeat_ns >
		    3ull * (uint64_t)s->o.heartbeat_ms * 1000000ull)
			return CO_WS_SUSPECT;
		return w->drained ? CO_WS_DRAINING : CO_WS_SERVING;
	case W_RELEASED:
		return CO_WS_DRAINING;
	case W_FAILED:
		break;
	}
	return CO_WS_DEAD;
}

const char *co__wstate_name(enum co_wstate st)
{
	static const char *const names[] = { [CO_WS_JOINING] = "joining",
					     [CO_WS_SERVING] = "serving",
					     [CO_WS_DRAINING] = "draining",
					     [CO_WS_SUSPECT] = "suspect", [CO_WS_DEAD] = "dead" };
	return (unsigned)st < FR_ARRAY_SIZE(names) ? names[st] : "unknown";
}

struct calls_ctx {
	FILE *f;
};

static void put_calls(void *ctx, const char *path, grpc_status_code code, uint64_t n)
{
	struct calls_ctx *c = ctx;
	char lb[320];

	fr_prom_sample(c->f, "ferry_requests_total",
		       fr_prom_labels(lb, sizeof(lb), "method", path[0] == '/' ? path + 1 : path,
				      "code", rpc_status_name(code), NULL),
		       (double)n);
}

static void put_counter(FILE *f, const char *name, const char *help, uint64_t v)
{
	fr_prom_family(f, name, "counter", help);
	fr_prom_sample(f, name, NULL, (double)v);
}

static void put_gauge(FILE *f, const char *name, const char *help, double v)
{
	fr_prom_family(f, name, "gauge", help);
	fr_prom_sample(f, name, NULL, v);
}

/* Per (layer, worker) totals and per-layer balancedness; under engine_mu (the data path
 * writes the load accounting while it steps). */
static void put_load(struct co_server *s, FILE *f)
{
	int n_moe = model_n_moe_layers(s->cfg), n_e = s->cfg->n_routed_experts, W;
	uint64_t *v = NULL;
	char lb[256], layer[16], ex[16];
	char (*names)[NAME_MAX_LEN + 1] = NULL;

	co__engine_lock(s);
	if (!s->load || !s->place)
		goto out;
	W = s->place->n_workers;
	v = malloc(sizeof(*v) * (size_t)FR_MAX(W, n_e));
	names = malloc(sizeof(*names) * (size_t)W);
	if (!v || !names)
		goto out;
	pthread_mutex_lock(&s->mu);
	for (int w = 0; w < W; w++)
		snprintf(names[w], sizeof(names[w]), "%s", w < s->n_joined ? s->workers[w].name : "");
	pthread_mutex_unlock(&s->mu);

	fr_prom_family(f, "ferry_layer_worker_tokens_total", "counter",
		       "Routed (token, expert) pairs each worker computed, per MoE layer.");
	for (int l = 0; l < n_moe; l++) {
		snprintf(layer, sizeof(layer), "%d", l);
		co_load_total_worker_tokens(s->load, l, v);
		for (int w = 0; w < W; w++)
			fr_prom_sample(f, "ferry_layer_worker_tokens_total",
				       fr_prom_labels(lb, sizeof(lb), "layer", layer, "worker",
						      names[w], NULL), (double)v[w]);
	}
	fr_prom_family(f, "ferry_layer_worker_busy_seconds_total", "counter",
		       "Compute time each worker reported for its experts, per MoE layer.");
	for (int l = 0; l < n_moe; l++) {
		snprintf(layer, sizeof(layer), "%d", l);
		co_load_total_worker_time(s->load, l, v);
		for (int w = 0; w < W; w++)
			fr_prom_sample(f, "ferry_layer_worker_busy_seconds_total",
				       fr_prom_labels(lb, sizeof(lb), "layer", layer, "worker",
						      names[w], NULL), (double)v[w] / 1e9);
	}
	fr_prom_family(f, "ferry_layer_balancedness", "gauge",
		       "Mean over max of the workers' load in the load window (1 = even), per "
		       "MoE layer, by routed tokens and by measured compute time.");
	for (int l = 0; l < n_moe; l++) {
		double b;
		snprintf(layer, sizeof(layer), "%d", l);
		if (co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &b) == 0)
			fr_prom_sample(f, "ferry_layer_balancedness",
				       fr_prom_labels(lb, sizeof(lb), "layer", layer, "by", "tokens",
						      NULL), b);
		if (co_load_balancedness(s->load, l, CO_LOAD_TIME, &b) == 0)
			fr_prom_sample(f, "ferry_layer_balancedness",
				       fr_prom_labels(lb, sizeof(lb), "layer", layer, "by", "time",
						      NULL), b);
	}
	if (s->per_expert) {
		fr_prom_family(f, "ferry_expert_tokens_total", "counter",
			       "Tokens routed to each expert, per MoE layer ([metrics] per_expert: "
			       "layers x experts series).");
		for (int l = 0; l < n_moe; l++) {
			snprintf(layer, sizeof(layer), "%d", l);
			co_load_total_expert_tokens(s->load, l, v);
			for (int e = 0; e < n_e; e++) {
				snprintf(ex, sizeof(ex), "%d", e);
				fr_prom_sample(f, "ferry_expert_tokens_total",
					       fr_prom_labels(lb, sizeof(lb), "layer", layer, "expert",
							      ex, NULL), (double)v[e]);
			}
		}
	}
out:
	pthread_mutex_unlock(&s->engine_mu);
	free(v);
	free(names);
}

void co__metrics_write(struct co_server *s, FILE *f)
{
	struct co_serve_metrics *m = &s->metrics.serve;
	struct calls_ctx cc = { f };
	char lb[128];

	fr_prom_family(f, "ferry_requests_total", "counter",
		       "gRPC calls answered, by method and status code.");
	if (s->rpc)
		rpc_server_call_counts(s->rpc, put_calls, &cc);
	if (s->rpc_cluster)
		rpc_server_call_counts(s->rpc_cluster, put_calls, &cc);
	fr_prom_family(f, "ferry_generate_finished_total", "counter",
		       "Generate requests that ended, by how (length, stop, context, cancelled, "
		       "error).");
	for (int i = CO_FINISH_LENGTH; i <= CO_FINISH_ERROR; i++)
		fr_prom_sample(f, "ferry_generate_finished_total",
			       fr_prom_labels(lb, sizeof(lb), "reason", finish_names[i], NULL),
			       (double)atomic_load(&m->finished[i]));
	put_counter(f, "ferry_prompt_tokens_total", "Prompt tokens of admitted requests.",
		    atomic_load(&m->prompt_tokens));
	put_counter(f, "ferry_generation_tokens_total", "Generated tokens sent to clients.",
		    atomic_load(&m->gen_tokens));
	fr_prom_family(f, "ferry_time_to_first_token_seconds", "histogram",
		       "From admission to the first generated token, per finished request.");
	fr_prom_histo(f, "ferry_time_to_first_token_seconds", NULL, &m->ttft);
	fr_prom_family(f, "ferry_inter_token_latency_seconds", "histogram",
		       "Time between two tokens of a request as they are sent.");
	fr_prom_histo(f, "ferry_inter_token_latency_seconds", NULL, &m->itl);
	fr_prom_family(f, "ferry_request_latency_seconds", "histogram",
		       "End-to-end time of a finished Generate request (queue included).");
	fr_prom_histo(f, "ferry_request_latency_seconds", NULL, &m->e2e);
	fr_prom_family(f, "ferry_request_queue_seconds", "histogram",
		       "Time a finished request waited for admission.");
	fr_prom_histo(f, "ferry_request_queue_seconds", NULL, &m->queue);
	fr_prom_family(f, "ferry_step_seconds", "histogram",
		       "Duration of one forward step (every micro-batch, experts included).");
	fr_prom_histo(f, "ferry_step_seconds", NULL, &s->metrics.step);
	fr_prom_family(f, "ferry_layer_dispatch_seconds", "histogram",
		       "From a micro-batch's dispatch to its combine, per MoE layer: the routed "
		       "experts' part of a step, transport included.");
	for (int l = 0; l < s->metrics.n_dispatch; l++) {
		char layer[16];
		snprintf(layer, sizeof(layer), "%d", l);
		fr_prom_histo(f, "ferry_layer_dispatch_seconds",
			      fr_prom_labels(lb, sizeof(lb), "layer", layer, NULL),
			      &s->metrics.dispatch[l]);
	}

	struct co_sched_stats st = { 0 };
	if (s->sched)
		co_sched_stats(s->sched, &st);
	put_gauge(f, "ferry_requests_running", "Requests being computed.", st.running);
	put_gauge(f, "ferry_requests_queued", "Requests waiting for admission.", st.queued);
	fr_prom_family(f, "ferry_kv_blocks", "gauge",
		       "KV-cache blocks of the pool, reserved by running requests or free.");
	fr_prom_sample(f, "ferry_kv_blocks", fr_prom_labels(lb, sizeof(lb), "state", "used", NULL),
		       st.total_blocks - st.free_blocks);
	fr_prom_sample(f, "ferry_kv_blocks", fr_prom_labels(lb, sizeof(lb), "state", "free", NULL),
		       st.free_blocks);
	put_counter(f, "ferry_steps_total", "Forward steps run.", st.steps);

	int count[CO_WS__COUNT] = { 0 };
	uint64_t epoch, now = fr_now_ns();
	pthread_mutex_lock(&s->mu);
	epoch = s->epoch;
	for (int i = 0; i < s->n_joined; i++)
		count[co__worker_state(s, i, now)]++;
	int configured = s->o.workers;
	pthread_mutex_unlock(&s->mu);
	put_gauge(f, "ferry_placement_epoch", "The slot-map epoch in force.", (double)epoch);
	put_gauge(f, "ferry_workers_configured", "[cluster] workers.", configured);
	fr_prom_family(f, "ferry_workers", "gauge", "Workers that joined, by state.");
	for (int k = 0; k < CO_WS__COUNT; k++)
		fr_prom_sample(f, "ferry_workers",
			       fr_prom_labels(lb, sizeof(lb), "state",
					      co__wstate_name((enum co_wstate)k), NULL), count[k]);

	fr_prom_family(f, "ferry_rebalances_total", "counter",
		       "Live rebalances that were not dry runs, by outcome (completed: slots "
		       "moved; unchanged: nothing to move; failed: the old placement serves on).");
	static const char *const rb_names[] = { "completed", "unchanged", "failed" };
	for (int i = 0; i < 3; i++)
		fr_prom_sample(f, "ferry_rebalances_total",
			       fr_prom_labels(lb, sizeof(lb), "outcome", rb_names[i], NULL),
			       (double)atomic_load(&s->metrics.rebalances[i]));
	put_counter(f, "ferry_rebalance_bytes_moved_total",
		    "Expert weight bytes the workers loaded for rebalances.",
		    atomic_load(&s->metrics.bytes_moved));
	fr_prom_family(f, "ferry_failovers_total", "counter",
		       "Steps that lost a worker, by outcome (rerouted: ran again on the others; "
		       "healed: its only copies were loaded elsewhere first; lost: they could "
		       "not be).");
	static const char *const fo_names[] = { "rerouted", "healed", "lost" };
	for (int i = 0; i < 3; i++)
		fr_prom_sample(f, "ferry_failovers_total",
			       fr_prom_labels(lb, sizeof(lb), "outcome", fo_names[i], NULL),
			       (double)atomic_load(&s->metrics.failovers[i]));
	put_gauge(f, "ferry_uptime_seconds", "Seconds since the coordinator started.",
		  (double)(now - s->t_start_ns) / 1e9);
	put_load(s, f);
}

static int page(void *ctx, const char *path, FILE *f, const char **ctype)
{
	int st;

	if (strcmp(path, "/metrics") != 0) {
		if ((st = co__status_page(ctx, path, f, ctype)) != 0)
			return st;
		fprintf(f, "%s: not found; here are /metrics, / (the status page) and "
			"/status.json\n", path);
		return 404;
	}
	*ctype = "text/plain; version=0.0.4; charset=utf-8";
	co__metrics_write(ctx, f);
	return 200;
}

int co__metrics_init(struct co_server *s, struct fr_error *err)
{
	int rc;

	int n_moe = model_n_moe_layers(s->cfg);

	if ((rc = co_serve_metrics_init(&s->metrics.serve)) < 0 ||
	    (rc = fr_histo_init(&s->metrics.step, fr_prom_step_buckets, fr_prom_step_n)) < 0)
		return fr_error_set(err, rc, "metrics: %s", strerror(-rc));
	s->metrics.dispatch = calloc((size_t)FR_MAX(n_moe, 1), sizeof(*s->metrics.dispatch));
	if (!s->metrics.dispatch)
		return fr_error_set(err, -ENOMEM, "metrics: out of memory");
	s->metrics.n_dispatch = n_moe;
	for (int l = 0; l < n_moe; l++)
		if ((rc = fr_histo_init(&s->metrics.dispatch[l], fr_prom_step_buckets,
					fr_prom_step_n)) < 0)
			return fr_error_set(err, rc, "metrics: %s", strerror(-rc));
	s->serving.metrics = &s->metrics.serve;
	return 0;
}

int co__metrics_listen(struct co_server *s, const char *listen, struct fr_error *err)
{
	int rc;

	if (!listen || !listen[0])
		return 0;
	if ((rc = fr_httpd_start(listen, page, s, &s->httpd, err)) < 0)
		return rc;
	fr_info(LOG_COMP, "metrics on %s (port %d): /metrics", listen, fr_httpd_port(s->httpd));
	return 0;
}

void co__metrics_stop(struct co_server *s)
{
	fr_httpd_stop(s->httpd);
	s->httpd = NULL;
}

void co__metrics_fini(struct co_server *s)
{
	s->serving.metrics = NULL;
	co_serve_metrics_fini(&s->metrics.serve);
	fr_histo_fini(&s->metrics.step);
	for (int l = 0; s->metrics.dispatch && l < s->metrics.n_dispatch; l++)
		fr_histo_fini(&s->metrics.dispatch[l]);
	free(s->metrics.dispatch);
	s->metrics.dispatch = NULL;
}

void co__metrics_on_combine(void *ctx, int moe_layer, uint64_t ns)
{
	struct co_server *s = ctx;

	if (moe_layer >= 0 && moe_layer < s->metrics.n_dispatch)
		fr_histo_observe(&s->metrics.dispatch[moe_layer], (double)ns / 1e9);
}
