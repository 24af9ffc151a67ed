/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_bench_serve.c - `ferryctl bench-serve`: a closed-loop load generator for a running
 * cluster. N client threads, each with its own Generate stream at a time (the channel is
 * shared: it is thread-safe), send token-id prompts of random length drawn from a seeded
 * generator and measure what a client sees: time to first token, inter-token latency,
 * request and output-token throughput, errors.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "kernels/kernels.h"
#include "rpc/inference.pb-c.h"
#include "rpc/admin.pb-c.h"
#include "rpc/auth.h"
#include "rpc/rpc.h"

#define BS_MAX_LEVELS 16
#define BS_MAX_ROUNDS 100
#define BS_MAX_CONC 1024
#define BS_MAX_LEN (1 << 20)

struct bs_opts {
	const char *cluster;
	struct ctl_tls tls;           /* --tls-* */
	const char *prompt_spec, *output_spec;
	int64_t conc[BS_MAX_LEVELS];
	size_t n_conc;
	int64_t requests;            /* per level; 0 = default (or --duration) */
	double duration_s;           /* 0 = use --requests */
	struct ctl_len_dist prompt_len, output_len;
	uint64_t seed;
	int64_t vocab;               /* 0 = ModelInfo's */
	bool eos;                    /* let end-of-sequence stop a request */
	float temperature;
	double timeout_s;
	bool json;
	bool no_engine;              /* skip the Admin.BenchEngine baseline */
	const char *model;           /* --model: the single-process baseline; NULL = none */
	int precision;               /* its enum kn_precision; -1: exact (the default) */
	int threads;                 /* its kernel threads; 0: all CPUs */
	int rounds;                  /* --rounds: served window + baselines, per level */
};

/* Rows per forward call of the single-process baseline: the coordinator's default
 * [engine] max_batch, so that both prefill the same way. */
#define BS_SINGLE_MAX_BATCH 256

static const char bs_usage[] =
	"Usage: ferryctl bench-serve [OPTIONS]\n"
	"\n"
	"Load-tests a running cluster: --concurrency client threads each send one Generate\n"
	"request at a time (closed loop) until --requests have been sent or --duration has\n"
	"passed, then the next concurrency level runs. Prompts are token ids drawn uniformly\n"
	"from [0, vocab) by a generator seeded with --seed (the same requests at every level);\n"
	"end-of-sequence is ignored by default so the output length is the one asked for.\n"
	"Reports per level: requests/s, output tokens/s (prefill and waiting included) and\n"
	"decode-only tokens/s (dec_tok/s: concurrency / mean ITL, the streams while they\n"
	"decode), time to first token (TTFT) and inter-token latency (ITL) p50/p99 as the\n"
	"clients measured them, and errors; then the\n"
	"serving engine's own tokens/s on the same work at batch = concurrency (Admin.BenchEngine:\n"
	"prompts of the mean prompt length prefilled together, then the mean output length\n"
	"decoded together, without scheduler and streaming API, admission paused meanwhile)\n"
	"and the ratio served / engine: the server's overhead; with --model, also the same work\n"
	"on a single-process engine and the ratio served / single-process. The admin token,\n"
	"if the coordinator has one, comes from $FERRY_ADMIN_TOKEN_FILE.\n"
	"\n"
	"  -c, --cluster ADDR       coordinator address (default $FERRY_CLUSTER, else\n"
	"                           " CTL_DEFAULT_CLUSTER ")\n"
	"  -C, --concurrency LIST   concurrent clients, one level or a list \"1 8 32\"\n"
	"                           (default 8; at most 1024)\n"
	"  -n, --requests N         requests per level (default 4 x concurrency, >= 32)\n"
	"  -d, --duration S         run each level for S seconds instead of --requests\n"
	"      --prompt-len DIST    prompt tokens: fixed:N or uniform:MIN:MAX (default fixed:128)\n"
	"      --output-len DIST    tokens to generate, same forms (default fixed:64)\n"
	"      --seed S             request generator seed (default 1)\n"
	"      --vocab N            token ids in [0, N) (default: the server's ModelInfo)\n"
	"      --eos                stop at end-of-sequence (default: ignore it)\n"
	"      --temperature T      sampling temperature (default 0, greedy)\n"
	"      --timeout S          deadline per request in seconds (default none)\n"
	"      --json               one JSON object instead of the table\n"
	"      --no-engine          skip the engine baseline and the ratio\n"
	"      --model DIR          also time the same work on a single-process engine in this\n"
	"                           process (what `ferryctl run` uses: local experts, no\n"
	"                           scheduler, no transport; max_batch 256), after each level\n"
	"                           while the cluster idles: columns single_t/s and vs_single\n"
	"                           (served / single-process). At least 3 runs and half the\n"
	"                           level's --duration (up to 5 s): their tokens over their\n"
	"                           time. DIR must be the served model\n"
	"      --precision P        that engine's precision: exact (default) or fast; give\n"
	"                           the cluster's\n"
	"      --threads N          that engine's kernel threads (default: all CPUs)\n"
	"      --rounds R           run each level R times (default 1), each round its\n"
	"                           served window then its baselines, a row a round, then\n"
	"                           a line of medians: the median of the rounds' ratios\n"
	"                           compares each served window with the baselines taken\n"
	"                           right after it, which a machine whose speed drifts\n"
	"                           over minutes needs\n"
	CTL_TLS_USAGE("      ")
	"  -h, --help               this text\n"
	"\n"
	"Exit status: 0 when every level completed requests (errors are counted in the\n"
	"report), 1 when the cluster cannot be reached or a level had no successful request,\n"
	"2 for bad arguments, 130 when interrupted (the levels measured so far are printed).\n";

enum { B_PLEN = 256, B_OLEN, B_SEED, B_VOCAB, B_EOS, B_TEMP, B_TIMEOUT, B_JSON, B_NOENG,
       B_MODEL, B_PRECISION, B_THREADS, B_ROUNDS };

static const struct option bs_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "concurrency", required_argument, NULL, 'C' },
	{ "requests", required_argument, NULL, 'n' },
	{ "duration", required_argument, NULL, 'd' },
	{ "prompt-len", required_argument, NULL, B_PLEN },
	{ "output-len", required_argument, NULL, B_OLEN },
	{ "seed", required_argument, NULL, B_SEED },
	{ "vocab", required_argument, NULL, B_VOCAB },
	{ "eos", no_argument, NULL, B_EOS },
	{ "temperature", required_argument, NULL, B_TEMP },
	{ "timeout", required_argument, NULL, B_TIMEOUT },
	{ "json", no_argument, NULL, B_JSON },
	{ "no-engine", no_argument, NULL, B_NOENG },
	{ "model", required_argument, NULL, B_MODEL },
	{ "precision", required_argument, NULL, B_PRECISION },
	{ "threads", required_argument, NULL, B_THREADS },
	{ "rounds", required_argument, NULL, B_ROUNDS },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int bs_parse(int argc, char **argv, struct bs_opts *o, struct fr_error *err)
{
	int64_t v;
	double d;
	int c;

	memset(o, 0, sizeof(*o));
	o->cluster = ctl_default_cluster();
	o->conc[0] = 8;
	o->n_conc = 1;
	o->prompt_spec = "fixed:128";
	o->output_spec = "fixed:64";
	o->prompt_len = (struct ctl_len_dist){ 128, 128 };
	o->output_len = (struct ctl_len_dist){ 64, 64 };
	o->seed = 1;
	o->precision = -1;
	o->rounds = 1;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:C:n:d:h", bs_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 'C':
			if (ctl_arg_i64_list("concurrency", optarg, 1, BS_MAX_CONC, o->conc,
					     BS_MAX_LEVELS, &o->n_conc, err) < 0)
				return -EINVAL;
			break;
		case 'n':
			if (ctl_arg_i64("requests", optarg, 1, 100000000, &o->requests, err) < 0)
				return -EINVAL;
			break;
		case 'd':
			if (ctl_arg_double("duration", optarg, 0.001, 1e6, &o->duration_s, err) < 0)
				return -EINVAL;
			break;
		case B_PLEN:
			if (ctl_arg_len_dist("prompt-len", optarg, 1, BS_MAX_LEN, &o->prompt_len, err) < 0)
				return -EINVAL;
			o->prompt_spec = optarg;
			break;
		case B_OLEN:
			if (ctl_arg_len_dist("output-len", optarg, 1, BS_MAX_LEN, &o->output_len, err) < 0)
				return -EINVAL;
			o->output_spec = optarg;
			break;
		case B_SEED:
			if (ctl_arg_i64("seed", optarg, 0, INT64_MAX, &v, err) < 0)
				return -EINVAL;
			o->seed = (uint64_t)v;
			break;
		case B_VOCAB:
			if (ctl_arg_i64("vocab", optarg, 1, INT32_MAX, &o->vocab, err) < 0)
				return -EINVAL;
			break;
		case B_EOS: o->eos = true; break;
		case B_TEMP:
			if (ctl_arg_double("temperature", optarg, 0, 100, &d, err) < 0)
				return -EINVAL;
			o->temperature = (float)d;
			break;
		case B_TIMEOUT:
			if (fr_parse_double(optarg, &d) < 0 || !(d > 0 && d <= 1e6))
				return fr_error_set(err, -EINVAL, "--timeout: '%s' is not a number of "
						    "seconds in (0, 1e6]", optarg);
			o->timeout_s = d;
			break;
		case B_JSON: o->json = true; break;
		case B_NOENG: o->no_engine = true; break;
		case B_MODEL:
			if (!optarg[0])
				return fr_error_set(err, -EINVAL, "--model: empty path");
			o->model = optarg;
			break;
		case B_PRECISION:
			if (ctl_arg_precision(optarg, &o->precision, err) < 0)
				return -EINVAL;
			break;
		case B_THREADS:
			if (ctl_arg_int("threads", optarg, 1, 4096, &o->threads, err) < 0)
				return -EINVAL;
			break;
		case B_ROUNDS:
			if (ctl_arg_int("rounds", optarg, 1, BS_MAX_ROUNDS, &o->rounds, err) < 0)
				return -EINVAL;
			break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (o->requests && o->duration_s > 0)
		return fr_error_set(err, -EINVAL, "give at most one of --requests and --duration");
	if (!o->cluster[0])
		return fr_error_set(err, -EINVAL, "--cluster: empty address");
	if (!o->model && (o->precision >= 0 || o->threads))
		return fr_error_set(err, -EINVAL, "--precision and --threads are for the --model "
				    "baseline: give --model DIR");
	return ctl_tls_finish(&o->tls, err);
}

/* ---- one level ------------------------------------------------------------------------------ */

/* Samples kept by one client thread. */
struct bs_samples {
	double *v;
	size_t n, cap;
};

static int samples_push(struct bs_samples *s, double x)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		double *nv = realloc(s->v, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		s->v = nv;
		s->cap = cap;
	}
	s->v[s->n++] = x;
	return 0;
}

struct bs_client {
	struct bs_level *lv;
	pthread_t th;
	struct bs_samples ttft, itl, lat;   /* ms */
	uint64_t ok, errors, out_tokens;
	int32_t *prompt;                    /* [prompt_len.hi] */
	struct fr_error first_err;
};

struct bs_level {
	const struct bs_opts *o;
	struct rpc_channel *ch;
	int vocab;
	int64_t requests;                   /* 0 with duration */
	uint64_t end_ns;                    /* with duration */
	atomic_llong next;
	atomic_bool oom;
};

/* Request idx's prompt and output length: the same at every level for a seed. */
static void bs_request(const struct bs_opts *o, int vocab, int64_t idx, int32_t *prompt,
		       int64_t *ret_n_prompt, int64_t *ret_n_out)
{
	uint64_t rng = o->seed ^ ((uint64_t)idx * 0x9E3779B97F4A7C15ull);
	int64_t n = ctl_len_draw(&o->prompt_len, &rng);

	*ret_n_out = ctl_len_draw(&o->output_len, &rng);
	for (int64_t i = 0; i < n; i++)
		prompt[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
	*ret_n_prompt = n;
}

static void *bs_client_main(void *arg)
{
	struct bs_client *cl = arg;
	struct bs_level *lv = cl->lv;
	const struct bs_opts *o = lv->o;

	for (;;) {
		if (ctl_sig_interrupted() || atomic_load(&lv->oom))
			break;
		if (!lv->requests && fr_now_ns() >= lv->end_ns)
			break;
		int64_t idx = atomic_fetch_add(&lv->next, 1);
		if (lv->requests && idx >= lv->requests)
			break;

		Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
		struct fr_error err = { { 0 } };
		struct rpc_stream *st = NULL;
		int64_t n_prompt, n_out;
		uint64_t t0, t_prev = 0;
		uint64_t n_tok = 0;
		bool oom = false;
		int rc;

		bs_request(o, lv->vocab, idx, cl->prompt, &n_prompt, &n_out);
		req.prompt_tokens = cl->prompt;
		req.n_prompt_tokens = (size_t)n_prompt;
		req.max_tokens = (uint32_t)n_out;
		req.ignore_eos = !o->eos;
		req.temperature = o->temperature;
		req.seed = (uint64_t)idx + 1;
		t0 = fr_now_ns();
		rc = rpc_stream_open(lv->ch, RPC_M_GENERATE, &req.base,
				     &ferry__v1__generate_response__descriptor,
				     o->timeout_s > 0 ? (int64_t)ceil(o->timeout_s * 1e3) : 0, &st, &err);
		if (rc == 0) {
			ctl_sig_register(st);
			for (;;) {
				Ferry__V1__GenerateResponse *m = NULL;
				rc = rpc_stream_next(st, (ProtobufCMessage **)&m, &err);
				if (rc <= 0)
					break;
				if (m->n_tokens) {
					uint64_t now = fr_now_ns();
					if (!t_prev) {
						oom |= samples_push(&cl->ttft, (double)(now - t0) / 1e6) < 0;
					} else {
						/* A message with several tokens: its gap shared among them. */
						double gap = (double)(now - t_prev) / 1e6 / (double)m->n_tokens;
						for (size_t i = 0; i < m->n_tokens; i++)
							oom |= samples_push(&cl->itl, gap) < 0;
					}
					t_prev = now;
					n_tok += m->n_tokens;
				}
				protobuf_c_message_free_unpacked(&m->base, NULL);
			}
			ctl_sig_unregister(st);
			rpc_stream_destroy(st);
		}
		if (rc < 0) {
			if (ctl_sig_interrupted())
				break;
			if (!cl->errors++)
				cl->first_err = err;
			continue;
		}
		cl->ok++;
		cl->out_tokens += n_tok;
		oom |= samples_push(&cl->lat, (double)(fr_now_ns() - t0) / 1e6) < 0;
		if (oom)
			atomic_store(&lv->oom, true);
	}
	return NULL;
}

struct bs_result {
	int64_t concurrency;
	int round;             /* 0-based, of --rounds */
	uint64_t ok, errors, out_tokens;
	double wall_s;
	double ttft_p50, ttft_p99, itl_p50, itl_p99, lat_p50, lat_p99;
	double itl_mean;       /* ms; 0 without samples */
	bool interrupted;
	struct fr_error first_err;
	double engine_tok_s;   /* Admin.BenchEngine at batch = concurrency; 0: not measured */
	char engine_err[160];
	double single_tok_s;   /* --model: the single-process engine, same work; 0: not measured */
	char single_err[160];
};

/* Concatenates one sample kind of every client. */
static double *bs_gather(struct bs_client *cl, int n, size_t off, size_t *ret_n)
{
	size_t total = 0, k = 0;
	for (int i = 0; i < n; i++)
		total += ((struct bs_samples *)((char *)&cl[i] + off))->n;
	double *v = malloc(FR_MAX(total, (size_t)1) * sizeof(*v));
	if (!v)
		return NULL;
	for (int i = 0; i < n; i++) {
		struct bs_samples *s = (struct bs_samples *)((char *)&cl[i] + off);
		if (s->n)
			memcpy(v + k, s->v, s->n * sizeof(*v));
		k += s->n;
	}
	*ret_n = total;
	return v;
}

static int bs_run_level(const struct bs_opts *o, struct rpc_channel *ch, int vocab,
			int64_t conc, struct bs_result *res, struct fr_error *err)
{
	struct bs_level lv = { .o = o, .ch = ch, .vocab = vocab };
	struct bs_client *cl = calloc((size_t)conc, sizeof(*cl));
	int n_th = 0, rc = 0;

	memset(res, 0, sizeof(*res));
	res->concurrency = conc;
	if (!cl)
		return fr_error_set(err, -ENOMEM, "out of memory");
	lv.requests = o->duration_s > 0 ? 0 : (o->requests ? o->requests : FR_MAX(32, 4 * conc));
	atomic_init(&lv.next, 0);
	atomic_init(&lv.oom, false);
	uint64_t t0 = fr_now_ns();
	lv.end_ns = t0 + (uint64_t)(o->duration_s * 1e9);
	for (int64_t i = 0; i < conc; i++) {
		cl[i].lv = &lv;
		cl[i].prompt = malloc((size_t)o->prompt_len.hi * sizeof(int32_t));
		if (!cl[i].prompt) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			break;
		}
		int e = pthread_create(&cl[i].th, NULL, bs_client_main, &cl[i]);
		if (e) {
			free(cl[i].prompt);
			cl[i].prompt = NULL;
			rc = fr_error_set(err, -e, "client thread %lld: %s", (long long)i, strerror(e));
			break;
		}
		n_th++;
	}
	if (rc < 0)
		atomic_store(&lv.oom, true); /* stops the started clients */
	for (int i = 0; i < n_th; i++)
		pthread_join(cl[i].th, NULL);
	res->wall_s = (double)(fr_now_ns() - t0) / 1e9;
	if (rc == 0 && atomic_load(&lv.oom))
		rc = fr_error_set(err, -ENOMEM, "out of memory for samples");

	size_t n_ttft = 0, n_itl = 0, n_lat = 0;
	double *ttft = bs_gather(cl, n_th, offsetof(struct bs_client, ttft), &n_ttft);
	double *itl = bs_gather(cl, n_th, offsetof(struct bs_client, itl), &n_itl);
	double *lat = bs_gather(cl, n_th, offsetof(struct bs_client, lat), &n_lat);
	if (rc == 0 && (!ttft || !itl || !lat))
		rc = fr_error_set(err, -ENOMEM, "out of memory");
	if (rc == 0) {
		for (int i = 0; i < n_th; i++) {
			res->ok += cl[i].ok;
			res->out_tokens += cl[i].out_tokens;
			if (cl[i].errors && !res->errors)
				res->first_err = cl[i].first_err;
			res->errors += cl[i].errors;
		}
		res->ttft_p50 = ctl_quantile(ttft, n_ttft, 0.50);
		res->ttft_p99 = ctl_quantile(ttft, n_ttft, 0.99);
		res->itl_p50 = ctl_quantile(itl, n_itl, 0.50);
		double sum = 0;
		for (size_t i = 0; i < n_itl; i++)
			sum += itl[i];
		res->itl_mean = n_itl ? sum / (double)n_itl : 0.0;
		res->itl_p99 = ctl_quantile(itl, n_itl, 0.99);
		res->lat_p50 = ctl_quantile(lat, n_lat, 0.50);
		res->lat_p99 = ctl_quantile(lat, n_lat, 0.99);
		res->interrupted = ctl_sig_interrupted();
	}
	free(ttft);
	free(itl);
	free(lat);
	for (int64_t i = 0; i < conc; i++) {
		free(cl[i].ttft.v);
		free(cl[i].itl.v);
		free(cl[i].lat.v);
		free(cl[i].prompt);
	}
	free(cl);
	return rc;
}

/* ---- the command ---------------------------------------------------------------------------- */

/* The serving engine's own decode tok/s at batch = concurrency (Admin.BenchEngine), the
 * ceiling the served numbers are compared with. */
static void bs_engine_baseline(const struct bs_opts *o, struct rpc_channel *ch,
			       struct bs_result *r)
{
	Ferry__V1__BenchEngineRequest req = FERRY__V1__BENCH_ENGINE_REQUEST__INIT;
	Ferry__V1__BenchEngineResponse *resp = NULL;
	struct fr_error err = { { 0 } };

	req.batch = (uint32_t)r->concurrency;
	req.steps = (uint32_t)FR_MAX(1, (o->output_len.lo + o->output_len.hi) / 2);
	req.prompt_len = (uint32_t)FR_MAX(1, (o->prompt_len.lo + o->prompt_len.hi) / 2);
	req.seed = o->seed;
	if (rpc_unary(ch, RPC_M_BENCH_ENGINE, &req.base, &ferry__v1__bench_engine_response__descriptor,
		      300000, (ProtobufCMessage **)&resp, &err) < 0) {
		snprintf(r->engine_err, sizeof(r->engine_err), "%s", err.msg);
		return;
	}
	r->engine_tok_s = resp->tokens_per_s;
	protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* ---- the single-process baseline (--model) ---- */

struct bs_single {
	struct model_ckpt *ck;
	struct model_weights *w;
	struct moe moe;
	struct co_engine *e;
	int vocab;
};

static int single_step(void *arg, int n, const int32_t *tok, const int32_t *seq,
		       const int32_t *pos, const bool *want, float *logits)
{
	return co_engine_forward(arg, n, tok, seq, pos, want, NULL, logits);
}

static void single_reset(void *arg, int seq)
{
	co_engine_reset_seq(arg, seq);
}

static void bs_single_close(struct bs_single *sp)
{
	co_engine_destroy(sp->e);
	moe_destroy(&sp->moe);
	model_weights_free(sp->w);
	model_ckpt_close(sp->ck);
	memset(sp, 0, sizeof(*sp));
}

/* The engine `ferryctl run --model` builds, sized for every level. */
static int bs_single_open(const struct bs_opts *o, int vocab, struct bs_single *sp,
			  struct fr_error *err)
{
	const struct model_config *c;
	int64_t conc = 1;
	int rc;

	memset(sp, 0, sizeof(*sp));
	for (size_t i = 0; i < o->n_conc; i++)
		conc = FR_MAX(conc, o->conc[i]);
	if (o->precision >= 0)
		kn_set_precision((enum kn_precision)o->precision);
	if (o->threads)
		kn_set_threads(o->threads);
	if ((rc = model_ckpt_open(o->model, &sp->ck, err)) < 0)
		goto fail;
	c = model_ckpt_config(sp->ck);
	if (c->vocab_size != vocab) {
		rc = fr_error_set(err, -EINVAL, "--model %s has a vocabulary of %d, the cluster "
				  "serves %d: not the served model", o->model, c->vocab_size, vocab);
		goto fail;
	}
	if ((rc = model_weights_bind(sp->ck, MODEL_BIND_NO_ROUTED, &sp->w, err)) < 0 ||
	    (model_n_moe_layers(c) > 0 && (rc = moe_local_create(sp->ck, 1, &sp->moe, err)) < 0))
		goto fail;
	struct co_engine_opts eo = {
		.max_seqs = (int)conc,
		.max_ctx = (int)(o->prompt_len.hi + o->output_len.hi + 2),
		.max_batch = BS_SINGLE_MAX_BATCH,
	};
	if ((rc = co_engine_create(sp->w, sp->moe, &eo, &sp->e, err)) < 0)
		goto fail;
	sp->vocab = vocab;
	err->msg[0] = '\0'; /* what opening probed for and did not need */
	return 0;
fail:
	fr_error_prefix(err, rc, "--model");
	bs_single_close(sp);
	return rc;
}

static void bs_single_baseline(const struct bs_opts *o, struct bs_single *sp,
			       struct bs_result *r)
{
	static const struct co_bench_ops ops = { single_step, single_reset };
	struct co_bench_work wk = {
		.batch = (int)r->concurrency,
		.prompt_len = (int)FR_MAX(1, (o->prompt_len.lo + o->prompt_len.hi) / 2),
		.steps = (int)FR_MAX(1, (o->output_len.lo + o->output_len.hi) / 2),
		.max_batch = BS_SINGLE_MAX_BATCH,
		.vocab = sp->vocab,
		.seed = o->seed,
	};
	/* One run is a second or two: the memory bandwidth of a shared machine drifts over
	 * longer than that, so several, over a good part of the time the level was served. */
	double want_s = o->duration_s > 0 ? FR_MIN(o->duration_s / 2, 5.0) : 0, tokens = 0, secs = 0;

	for (int run = 0; run < 3 || secs < want_s; run++) {
		struct co_bench_result res = { 0 };
		int rc = co_engine_bench(&wk, &ops, sp->e, &res);

		if (rc < 0) {
			snprintf(r->single_err, sizeof(r->single_err), "%s", strerror(-rc));
			return;
		}
		if (res.tokens_per_s <= 0)
			break;
		tokens += (double)wk.batch * wk.steps;
		secs += (double)wk.batch * wk.steps / res.tokens_per_s;
	}
	r->single_tok_s = secs > 0 ? tokens / secs : 0;
}

/* One level's rounds: the medians of its served tokens/s and of the rounds' ratios, each
 * served window against the baselines taken right after it. n_* = 0 where none measured. */
struct bs_summary {
	int64_t concurrency;
	size_t rounds, n_engine, n_single;
	double tps, vs_engine, vs_engine_min, vs_engine_max, vs_single, vs_single_min,
		vs_single_max;
};

static double bs_output_tps(const struct bs_result *r)
{
	return r->wall_s > 0 ? r->out_tokens / r->wall_s : 0.0;
}

/* The median of v[0..n) (sorted in place), the mean of the middle two for even n. */
static double bs_median(double *v, size_t n)
{
	if (n == 0)
		return 0.0;
	ctl_quantile(v, n, 0.5); /* sorts */
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void bs_summarize(const struct bs_result *r, size_t n, struct bs_summary *s)
{
	double tps[BS_MAX_ROUNDS], eng[BS_MAX_ROUNDS], single[BS_MAX_ROUNDS];

	memset(s, 0, sizeof(*s));
	s->concurrency = n ? r[0].concurrency : 0;
	s->rounds = n;
	for (size_t i = 0; i < n && i < BS_MAX_ROUNDS; i++) {
		tps[i] = bs_output_tps(&r[i]);
		if (r[i].engine_tok_s > 0)
			eng[s->n_engine++] = tps[i] / r[i].engine_tok_s;
		if (r[i].single_tok_s > 0)
			single[s->n_single++] = tps[i] / r[i].single_tok_s;
	}
	s->tps = bs_median(tps, FR_MIN(n, (size_t)BS_MAX_ROUNDS));
	s->vs_engine = bs_median(eng, s->n_engine);
	s->vs_single = bs_median(single, s->n_single);
	if (s->n_engine) /* sorted by bs_median */
		s->vs_engine_min = eng[0], s->vs_engine_max = eng[s->n_engine - 1];
	if (s->n_single)
		s->vs_single_min = single[0], s->vs_single_max = single[s->n_single - 1];
}

static void bs_print_human_summary(const struct bs_summary *s)
{
	printf("      conc %lld, median of %zu rounds: out_tok/s %.1f", (long long)s->concurrency,
	       s->rounds, s->tps);
	if (s->n_engine)
		printf(", served/engine %.2f (%.2f..%.2f)", s->vs_engine, s->vs_engine_min,
		       s->vs_engine_max);
	if (s->n_single)
		printf(", served/single %.2f (%.2f..%.2f)", s->vs_single, s->vs_single_min,
		       s->vs_single_max);
	printf("\n");
	fflush(stdout);
}

static void bs_print_human_header(const struct bs_opts *o, int vocab, int max_ctx)
{
	printf("bench-serve %s: prompt %s, output %s, vocab %d%s, %s, seed %llu; times in ms\n",
	       o->cluster,
	       o->prompt_spec, o->output_spec, vocab, max_ctx ? "" : " (--vocab)",
	       o->eos ? "stops at eos" : "ignores eos", (unsigned long long)o->seed);
	printf("%5s %7s %6s %8s %8s %10s %10s %9s %9s %8s %8s %9s %10s %6s", "conc", "ok",
	       "errors", "time_s", "req/s", "out_tok/s", "dec_tok/s", "ttft_p50", "ttft_p99",
	       "itl_p50", "itl_p99", "lat_p50", "engine_t/s", "ratio");
	if (o->model)
		printf(" %10s %9s", "single_t/s", "vs_single");
	if (o->rounds > 1)
		printf(" %5s", "round");
	printf("\n");
	fflush(stdout);
}

/* Decode-only throughput: the clients' streams while they decode, concurrency tokens per
 * mean inter-token gap (what out_tok/s is without the prefills and the TTFT). */
static double bs_decode_tps(const struct bs_result *r)
{
	return r->itl_mean > 0 ? (double)r->concurrency * 1000.0 / r->itl_mean : 0.0;
}

static void bs_print_human(const struct bs_opts *o, const struct bs_result *r)
{
	double tps = bs_output_tps(r);
	char eng[32] = "-", ratio[16] = "-", single[32] = "-", vs[16] = "-";
	if (r->engine_tok_s > 0) {
		snprintf(eng, sizeof(eng), "%.1f", r->engine_tok_s);
		snprintf(ratio, sizeof(ratio), "%.2f", tps / r->engine_tok_s);
	}
	if (r->single_tok_s > 0) {
		snprintf(single, sizeof(single), "%.1f", r->single_tok_s);
		snprintf(vs, sizeof(vs), "%.2f", tps / r->single_tok_s);
	}
	printf("%5lld %7llu %6llu %8.2f %8.2f %10.1f %10.1f %9.2f %9.2f %8.2f %8.2f %9.1f %10s "
	       "%6s",
	       (long long)r->concurrency, (unsigned long long)r->ok, (unsigned long long)r->errors,
	       r->wall_s, r->wall_s > 0 ? r->ok / r->wall_s : 0.0, tps, bs_decode_tps(r),
	       r->ttft_p50, r->ttft_p99,
	       r->itl_p50, r->itl_p99, r->lat_p50, eng, ratio);
	if (o->model)
		printf(" %10s %9s", single, vs);
	if (o->rounds > 1)
		printf(" %5d", r->round + 1);
	printf("%s\n", r->interrupted ? "  (interrupted)" : "");
	if (r->errors)
		printf("      first error: %s\n", r->first_err.msg);
	if (r->engine_err[0])
		printf("      engine baseline: %s\n", r->engine_err);
	if (r->single_err[0])
		printf("      single-process baseline: %s\n", r->single_err);
	fflush(stdout);
}

static void bs_print_json(const struct bs_opts *o, int vocab, const struct bs_result *res,
			  size_t n)
{
	size_t first = 0;

	printf("{\"cluster\": ");
	ctl_json_str(stdout, o->cluster, strlen(o->cluster));
	printf(", \"prompt_len\": ");
	ctl_json_str(stdout, o->prompt_spec, strlen(o->prompt_spec));
	printf(", \"output_len\": ");
	ctl_json_str(stdout, o->output_spec, strlen(o->output_spec));
	printf(", \"vocab\": %d, \"ignore_eos\": %s, \"seed\": %llu, \"levels\": [", vocab,
	       o->eos ? "false" : "true", (unsigned long long)o->seed);
	for (size_t i = 0; i < n; i++) {
		const struct bs_result *r = &res[i];
		printf("%s\n    {\"concurrency\": %lld, \"round\": %d, \"ok\": %llu, \"errors\": %llu, "
		       "\"output_tokens\": %llu, \"duration_s\": ", i ? "," : "",
		       (long long)r->concurrency, r->round + 1, (unsigned long long)r->ok,
		       (unsigned long long)r->errors, (unsigned long long)r->out_tokens);
		ctl_json_num(stdout, r->wall_s);
		printf(", \"requests_per_s\": ");
		ctl_json_num(stdout, r->wall_s > 0 ? r->ok / r->wall_s : 0.0);
		printf(", \"output_tokens_per_s\": ");
		ctl_json_num(stdout, bs_output_tps(r));
		printf(", \"decode_tokens_per_s\": ");
		ctl_json_num(stdout, bs_decode_tps(r));
		printf(", \"ttft_ms\": {\"p50\": ");
		ctl_json_num(stdout, r->ttft_p50);
		printf(", \"p99\": ");
		ctl_json_num(stdout, r->ttft_p99);
		printf("}, \"itl_ms\": {\"p50\": ");
		ctl_json_num(stdout, r->itl_p50);
		printf(", \"p99\": ");
		ctl_json_num(stdout, r->itl_p99);
		printf("}, \"latency_ms\": {\"p50\": ");
		ctl_json_num(stdout, r->lat_p50);
		printf(", \"p99\": ");
		ctl_json_num(stdout, r->lat_p99);
		printf("}, \"engine_tokens_per_s\": %.3f", r->engine_tok_s);
		if (o->model)
			printf(", \"single_engine_tokens_per_s\": %.3f", r->single_tok_s);
		printf(", \"interrupted\": %s", r->interrupted ? "true" : "false");
		if (r->errors) {
			printf(", \"first_error\": ");
			ctl_json_str(stdout, r->first_err.msg, strlen(r->first_err.msg));
		}
		printf("}");
	}
	/* per level, the medians of its rounds */
	printf("\n  ], \"summary\": [");
	for (size_t i = 0; i < n; i++) {
		if (i + 1 < n && res[i + 1].round > 0)
			continue;
		struct bs_summary sm;
		bs_summarize(res + first, i + 1 - first, &sm);
		printf("%s\n    {\"concurrency\": %lld, \"rounds\": %zu, "
		       "\"output_tokens_per_s\": ", first ? "," : "", (long long)sm.concurrency,
		       sm.rounds);
		ctl_json_num(stdout, sm.tps);
		if (sm.n_engine) {
			printf(", \"served_over_engine\": ");
			ctl_json_num(stdout, sm.vs_engine);
		}
		if (sm.n_single) {
			printf(", \"served_over_single\": ");
			ctl_json_num(stdout, sm.vs_single);
		}
		printf("}");
		first = i + 1;
	}
	printf("\n  ]}\n");
	fflush(stdout);
}

static int bs_exec(const struct bs_opts *o)
{
	struct bs_result *res = calloc(o->n_conc * (size_t)o->rounds, sizeof(*res));
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct ctl_model_info mi = { 0 };
	struct bs_single single = { 0 };
	int rc, ret = CTL_EXIT_FAIL, vocab;
	size_t n_done = 0;
	bool sig = false;

	if (!res) {
		fr_error_set(&err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = ctl_sig_start(&err)) < 0)
		goto out;
	sig = true;
	if ((rc = ctl_channel_create(o->cluster, &o->tls, &ch, &err)) < 0)
		goto out;
	const char *tf = getenv("FERRY_ADMIN_TOKEN_FILE");
	if (tf && !o->no_engine) {
		uint8_t *tok;
		size_t len;
		if ((rc = rpc_auth_secret_load(tf, &tok, &len, &err)) < 0) {
			fr_error_prefix(&err, rc, "FERRY_ADMIN_TOKEN_FILE");
			goto out;
		}
		rc = rpc_channel_set_bearer(ch, tok, len);
		rpc_auth_secret_free(tok, len);
		if (rc < 0) {
			fr_error_set(&err, rc, "FERRY_ADMIN_TOKEN_FILE: the token cannot be a header");
			goto out;
		}
	}
	rc = ctl_model_info(ch, &mi, &err);
	if (rc == -ENOSYS && o->vocab) {
		memset(&mi, 0, sizeof(mi));
	} else if (rc == -ENOSYS) {
		fr_error_prefix(&err, rc, "the server does not serve ModelInfo: give --vocab N");
		goto out;
	} else if (rc < 0) {
		goto out;
	}
	err.msg[0] = '\0';
	vocab = o->vocab ? (int)o->vocab : mi.vocab_size;
	if (vocab <= 0) {
		fr_error_set(&err, -EINVAL, "ModelInfo reports vocab_size 0: give --vocab N");
		goto out;
	}
	if (mi.max_context && o->prompt_len.hi + o->output_len.hi > mi.max_context) {
		fr_error_set(&err, -EINVAL, "--prompt-len (up to %lld) plus --output-len (up to %lld) "
			     "exceed the server's context of %d tokens", (long long)o->prompt_len.hi,
			     (long long)o->output_len.hi, mi.max_context);
		goto out;
	}
	if (o->model && (rc = bs_single_open(o, vocab, &single, &err)) < 0)
		goto out;
	if (!o->json)
		bs_print_human_header(o, vocab, mi.max_context);
	/* Each round: the served window, then the baselines right after it. */
	for (size_t i = 0; i < o->n_conc && !ctl_sig_interrupted() && !err.msg[0]; i++) {
		size_t first = n_done;
		for (int k = 0; k < o->rounds && !ctl_sig_interrupted(); k++) {
			struct bs_result *r = &res[n_done];
			if ((rc = bs_run_level(o, ch, vocab, o->conc[i], r, &err)) < 0)
				goto out;
			r->round = k;
			if (!o->no_engine)
				bs_engine_baseline(o, ch, r);
			if (o->model)
				bs_single_baseline(o, &single, r);
			n_done++;
			if (!o->json)
				bs_print_human(o, r);
			if (r->ok == 0 && !r->interrupted) {
				fr_error_set(&err, -EIO, "no request succeeded at concurrency %lld: %s",
					     (long long)o->conc[i], r->first_err.msg);
				break;
			}
		}
		if (!o->json && o->rounds > 1 && n_done > first) {
			struct bs_summary sm;
			bs_summarize(res + first, n_done - first, &sm);
			bs_print_human_summary(&sm);
		}
	}
	if (o->json)
		bs_print_json(o, vocab, res, n_done);
	if (ctl_sig_interrupted()) {
		fprintf(stderr, "ferryctl bench-serve: interrupted\n");
		ret = CTL_EXIT_INTERRUPTED;
	} else if (!err.msg[0]) {
		ret = CTL_EXIT_OK;
	}
out:
	bs_single_close(&single);
	rpc_channel_destroy(ch);
	free(res);
	if (sig)
		ctl_sig_stop();
	if (ret == CTL_EXIT_FAIL)
		fprintf(stderr, "ferryctl bench-serve: %s\n", err.msg[0] ? err.msg : "failed");
	return ret;
}

static int bs_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct bs_opts o;
	int rc = ctl_parsed("bench-serve", bs_usage, bs_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	return bs_exec(&o);
}

static int bs_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct bs_opts o;
	int rc = bs_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_bench_serve = { "bench-serve",
					     "load-test a cluster (TTFT, ITL, tok/s)", bs_main,
					     bs_parse_only };
