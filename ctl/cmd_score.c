/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_score.c - `ferryctl score` (per-line loss and perplexity of a file under the served
 * model) and `ferryctl eval` (the same over routing variants: the DeepSeekMoE paper's
 * Figures 4-5, loss against masked top experts and against activated experts).
 * Both send one ferry.v1.Inference/Score call per line, --parallel calls at a time.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "model/model.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

#define SC_MAX_FILE_BYTES (1u << 30)
#define SC_MAX_PARALLEL 256
#define EV_MAX_VALUES 32

/* ==== scoring many lines ==================================================================== */

struct sc_line {
	int line_no;                 /* 1-based, in the file */
	const char *text;            /* into the file buffer; NUL-terminated */
	int32_t *ids;                /* --tokens: heap */
	size_t n_ids;
};

struct sc_result {
	bool done;
	uint32_t n_tokens;           /* tokens the server scored (incl. the first) */
	uint32_t n_pred;             /* logprobs: n_tokens - 1 */
	double loss;                 /* mean over n_pred */
};

struct sc_knobs {
	uint32_t routed_top_k, mask_top;
	bool no_shared;
};

struct sc_run {
	/* Inputs, read-only while workers run. */
	struct rpc_channel *ch;
	const struct sc_line *lines;
	size_t n;
	struct sc_knobs kb;
	bool add_bos;
	int64_t timeout_ms;
	/* State. */
	struct sc_result *res;
	atomic_size_t next;
	atomic_bool failed;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t n_done;
	int live;                    /* workers still running */
	int fail_rc;
	struct fr_error fail;        /* the first failure, naming its line */
};

static void *sc_worker(void *arg)
{
	struct sc_run *r = arg;

	for (;;) {
		size_t i = atomic_fetch_add(&r->next, 1);
		if (i >= r->n || atomic_load(&r->failed) || ctl_sig_interrupted())
			break;
		const struct sc_line *l = &r->lines[i];
		Ferry__V1__ScoreRequest req = FERRY__V1__SCORE_REQUEST__INIT;
		Ferry__V1__ScoreResponse *resp = NULL;
		struct fr_error err = { { 0 } };
		if (l->ids) {
			req.tokens = l->ids;
			req.n_tokens = l->n_ids;
		} else {
			req.text = (char *)l->text;
			req.add_bos = r->add_bos;
		}
		req.routed_top_k = r->kb.routed_top_k;
		req.mask_top = r->kb.mask_top;
		req.no_shared_experts = r->kb.no_shared;
		int rc = rpc_unary(r->ch, RPC_M_SCORE, &req.base, &ferry__v1__score_response__descriptor,
				   r->timeout_ms, (ProtobufCMessage **)&resp, &err);
		pthread_mutex_lock(&r->mu);
		if (rc < 0) {
			if (!atomic_exchange(&r->failed, true)) {
				r->fail_rc = rc;
				snprintf(r->fail.msg, sizeof(r->fail.msg), "line %d: %s", l->line_no,
					 err.msg);
			}
		} else {
			struct sc_result *o = &r->res[i];
			o->n_tokens = (uint32_t)resp->n_tokens;
			o->n_pred = (uint32_t)resp->n_logprobs;
			o->loss = o->n_pred ? resp->mean_loss : 0;
			o->done = true;
			r->n_done++;
			protobuf_c_message_free_unpacked(&resp->base, NULL);
		}
		pthread_cond_broadcast(&r->cv);
		pthread_mutex_unlock(&r->mu);
	}
	pthread_mutex_lock(&r->mu);
	r->live--;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

/* Called from the waiting thread, unlocked: results [0, in_order) are ready (n_done in
 * all), or time passed. */
typedef void (*sc_on_progress)(void *ctx, const struct sc_run *r, size_t in_order,
			       size_t n_done);

/*
 * Scores r->lines with `parallel` worker threads; res[] gets one result per line.
 * on_progress (may be NULL) runs at least every 200 ms and after each in-order result.
 * Returns 0, -EINTR (interrupted: the calls in flight finished first), or the first
 * failure (r->fail names the line).
 */
static int sc_run_all(struct sc_run *r, int parallel, sc_on_progress on_progress, void *ctx)
{
	pthread_t th[SC_MAX_PARALLEL];
	int n_th = 0, rc = 0;
	size_t in_order = 0;

	atomic_init(&r->next, 0);
	atomic_init(&r->failed, false);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->n_done = 0;
	r->fail_rc = 0;
	r->fail.msg[0] = '\0';
	memset(r->res, 0, r->n * sizeof(*r->res));
	r->live = 0;
	parallel = (int)FR_MIN((size_t)parallel, FR_MAX(r->n, (size_t)1));
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < parallel; i++) {
		if ((rc = pthread_create(&th[n_th], NULL, sc_worker, r)) != 0) {
			if (n_th == 0) {
				pthread_mutex_unlock(&r->mu);
				rc = fr_error_set(&r->fail, -rc, "pthread_create: %s", strerror(rc));
				goto out;
			}
			break;
		}
		n_th++;
		r->live++;
	}
	for (;;) {
		while (in_order < r->n && r->res[in_order].done)
			in_order++;
		bool over = r->live == 0;
		size_t n_done = r->n_done;
		pthread_mutex_unlock(&r->mu);
		if (on_progress)
			on_progress(ctx, r, in_order, n_done);
		if (over)
			break;
		pthread_mutex_lock(&r->mu);
		if (r->live > 0 && !(in_order < r->n && r->res[in_order].done)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&r->cv, &r->mu, &ts);
		}
	}
	for (int i = 0; i < n_th; i++)
		pthread_join(th[i], NULL);
	if (atomic_load(&r->failed))
		rc = r->fail_rc;
	else if (r->n_done < r->n)
		rc = -EINTR;
	else
		rc = 0;
out:
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	return rc;
}

/* Token-weighted totals over the results. */
static void sc_totals(const struct sc_result *res, size_t n, uint64_t *ret_tokens,
		      uint64_t *ret_pred, double *ret_loss)
{
	uint64_t tok = 0, pred = 0;
	double sum = 0;

	for (size_t i = 0; i < n; i++) {
		tok += res[i].n_tokens;
		pred += res[i].n_pred;
		sum += res[i].loss * res[i].n_pred;
	}
	*ret_tokens = tok;
	*ret_pred = pred;
	*ret_loss = pred ? sum / (double)pred : NAN;
}

/* Splits buf into its non-empty lines (a trailing '\r' dropped), parsing ids with tokens. */
static int sc_split(char *buf, bool tokens, const char *path, struct sc_line **ret_lines,
		    size_t *ret_n, struct fr_error *err)
{
	struct sc_line *lines = NULL;
	size_t n = 0, cap = 0;
	int line_no = 0;

	for (char *p = buf; *p;) {
		char *nl = strchr(p, '\n');
		char *end = nl ? nl : p + strlen(p);
		line_no++;
		if (end > p && end[-1] == '\r')
			end[-1] = '\0';
		*end = '\0';
		if (*p) {
			if (n == cap) {
				cap = cap ? 2 * cap : 256;
				struct sc_line *nlines = realloc(lines, cap * sizeof(*lines));
				if (!nlines)
					goto oom;
				lines = nlines;
			}
			struct sc_line *l = &lines[n++];
			memset(l, 0, sizeof(*l));
			l->line_no = line_no;
			l->text = p;
			if (tokens) {
				int rc = fr_parse_ids(p, INT32_MAX, &l->ids, &l->n_ids, err);
				if (rc < 0) {
					n--;
					fr_error_prefix(err, rc, "%s:%d", path, line_no);
					goto fail;
				}
				if (l->n_ids == 0) { /* only separators: nothing to score */
					free(l->ids);
					n--;
				}
			}
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	if (n == 0) {
		fr_error_set(err, -EINVAL, "%s: no lines to score", path);
		goto fail;
	}
	*ret_lines = lines;
	*ret_n = n;
	return 0;
oom:
	fr_error_set(err, -ENOMEM, "out of memory");
fail:
	for (size_t i = 0; i < n; i++)
		free(lines[i].ids);
	free(lines);
	return -EINVAL;
}

static void sc_lines_free(struct sc_line *lines, size_t n)
{
	for (size_t i = 0; lines && i < n; i++)
		free(lines[i].ids);
	free(lines);
}

/* ==== ferryctl score ========================================================================== */

struct score_opts {
	const char *cluster;
	struct ctl_tls tls;           /* --tls-* */
	const char *file;
	struct sc_knobs kb;
	bool tokens, add_bos, json, quiet;
	int parallel;
	double timeout_s;
};

static const char score_usage[] =
	"Usage: ferryctl score [OPTIONS] FILE\n"
	"\n"
	"Scores every non-empty line of FILE (\"-\" = stdin) under the served model\n"
	"(ferry.v1.Inference/Score): prints per line its token count, mean loss (nats per\n"
	"predicted token) and perplexity, then the token-weighted mean loss and perplexity\n"
	"of the whole file. Lines are text (the model needs a tokenizer), or token ids with\n"
	"--tokens. Progress goes to stderr when it is a terminal and stdout is not.\n"
	"\n"
	"  -c, --cluster ADDR       coordinator address (default $FERRY_CLUSTER, else\n"
	"                           " CTL_DEFAULT_CLUSTER ")\n"
	"  -t, --tokens             lines are token ids (space or comma separated, >= 2 each)\n"
	"      --add-bos            prepend the tokenizer's BOS token to each text line\n"
	"      --top-k-experts K    routed experts per token (default: the model's)\n"
	"      --mask-top R         mask the R highest-scoring routed experts per token\n"
	"      --no-shared          disable the shared experts\n"
	"  -j, --parallel N         calls in flight (default 4)\n"
	"      --timeout S          deadline per call in seconds (default none)\n"
	"      --json               one JSON object: every line and the totals\n"
	"  -q, --quiet              only the totals\n"
	CTL_TLS_USAGE("      ")
	"  -h, --help               this text\n"
	"\n"
	"Exit status: 0 when every line was scored, 1 on a server, connection or input error\n"
	"(the message names the line), 2 for bad arguments, 130 when interrupted.\n";

enum { S_BOS = 256, S_EXPERTS, S_MASK, S_NOSHARED, S_TIMEOUT, S_JSON };

static const struct option score_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "tokens", no_argument, NULL, 't' },
	{ "add-bos", no_argument, NULL, S_BOS },
	{ "top-k-experts", required_argument, NULL, S_EXPERTS },
	{ "mask-top", required_argument, NULL, S_MASK },
	{ "no-shared", no_argument, NULL, S_NOSHARED },
	{ "parallel", required_argument, NULL, 'j' },
	{ "timeout", required_argument, NULL, S_TIMEOUT },
	{ "json", no_argument, NULL, S_JSON },
	{ "quiet", no_argument, NULL, 'q' },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int timeout_arg(const char *s, double *ret, struct fr_error *err)
{
	double d;
	if (fr_parse_double(s, &d) < 0 || !(d > 0 && d <= 1e6))
		return fr_error_set(err, -EINVAL, "--timeout: '%s' is not a number of seconds in "
				    "(0, 1e6]", s);
	*ret = d;
	return 0;
}

static int score_parse(int argc, char **argv, struct score_opts *o, struct fr_error *err)
{
	int64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->cluster = ctl_default_cluster();
	o->parallel = 4;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:tj:qh", score_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 't': o->tokens = true; break;
		case S_BOS: o->add_bos = true; break;
		case S_EXPERTS:
			if (ctl_arg_i64("top-k-experts", optarg, 1, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->kb.routed_top_k = (uint32_t)v;
			break;
		case S_MASK:
			if (ctl_arg_i64("mask-top", optarg, 0, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->kb.mask_top = (uint32_t)v;
			break;
		case S_NOSHARED: o->kb.no_shared = true; break;
		case 'j':
			if (ctl_arg_i64("parallel", optarg, 1, SC_MAX_PARALLEL, &v, err) < 0)
				return -EINVAL;
			o->parallel = (int)v;
			break;
		case S_TIMEOUT:
			if (timeout_arg(optarg, &o->timeout_s, err) < 0)
				return -EINVAL;
			break;
		case S_JSON: o->json = true; break;
		case 'q': o->quiet = true; break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		o->file = argv[optind++];
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->file)
		return fr_error_set(err, -EINVAL, "FILE is required (\"-\" reads stdin)");
	if (o->tokens && o->add_bos)
		return fr_error_set(err, -EINVAL, "--add-bos applies to text lines, not --tokens");
	if (!o->cluster[0])
		return fr_error_set(err, -EINVAL, "--cluster: empty address");
	return ctl_tls_finish(&o->tls, err);
}

/* Progress on stderr, rewritten in place; only where stderr is a terminal. */
struct progress {
	bool on;
	const char *label;
	uint64_t last_ns;
	int width;
};

static void progress_init(struct progress *p, bool want)
{
	memset(p, 0, sizeof(*p));
	p->on = want && isatty(STDERR_FILENO);
}

static void progress_show(struct progress *p, size_t done, size_t total, bool force)
{
	uint64_t now = fr_now_ns();
	if (!p->on || (!force && now - p->last_ns < 100000000ull))
		return;
	p->last_ns = now;
	p->width = fprintf(stderr, "\r%s%s%zu/%zu lines", p->label ? p->label : "",
			   p->label ? ": " : "", done, total);
	fflush(stderr);
}

static void progress_clear(struct progress *p)
{
	if (p->on && p->width > 0)
		fprintf(stderr, "\r%*s\r", p->width, "");
	p->width = 0;
}

struct score_print {
	const struct score_opts *o;
	const struct sc_line *lines;
	size_t printed;
	struct progress pg;
};

static void score_print_line(const struct sc_line *l, const struct sc_result *r, bool json)
{
	if (json) {
		printf("\n    {\"line\": %d, \"tokens\": %u, \"predicted\": %u, \"mean_loss\": ",
		       l->line_no, r->n_tokens, r->n_pred);
		ctl_json_num(stdout, r->n_pred ? r->loss : NAN);
		printf(", \"perplexity\": ");
		ctl_json_num(stdout, r->n_pred ? exp(r->loss) : NAN);
		printf("}");
	} else if (r->n_pred) {
		printf("%8d %8u %10.4f %12.3f\n", l->line_no, r->n_tokens, r->loss, exp(r->loss));
	} else {
		printf("%8d %8u %10s %12s\n", l->line_no, r->n_tokens, "-", "-");
	}
}

static void score_on_progress(void *ctx, const struct sc_run *r, size_t in_order,
			      size_t n_done)
{
	struct score_print *sp = ctx;

	if (!sp->o->json && !sp->o->quiet && sp->printed < in_order) {
		progress_clear(&sp->pg);
		for (; sp->printed < in_order; sp->printed++)
			score_print_line(&sp->lines[sp->printed], &r->res[sp->printed], false);
		fflush(stdout);
	}
	progress_show(&sp->pg, n_done, r->n, false);
}

static int score_exec(const struct score_opts *o)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct sc_line *lines = NULL;
	struct sc_result *res = NULL;
	char *buf = NULL;
	size_t len, n = 0;
	int rc, ret = CTL_EXIT_FAIL;
	bool sig = false;

	if ((rc = ctl_read_all(o->file, SC_MAX_FILE_BYTES, &buf, &len, &err)) < 0 ||
	    (rc = sc_split(buf, o->tokens, strcmp(o->file, "-") ? o->file : "stdin", &lines, &n,
			   &err)) < 0)
		goto out;
	if (!(res = calloc(n, sizeof(*res)))) {
		fr_error_set(&err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = ctl_sig_start(&err)) < 0)
		goto out;
	sig = true;
	if ((rc = ctl_channel_create(o->cluster, &o->tls, &ch, &err)) < 0)
		goto out;

	struct sc_run r = { .ch = ch, .lines = lines, .n = n, .kb = o->kb, .add_bos = o->add_bos,
			    .timeout_ms = o->timeout_s > 0 ? (int64_t)ceil(o->timeout_s * 1e3) : 0,
			    .res = res };
	struct score_print sp = { .o = o, .lines = lines };
	/* Per-line rows on a terminal are progress enough. */
	progress_init(&sp.pg, o->json || o->quiet || !isatty(STDOUT_FILENO));
	if (!o->json && !o->quiet)
		printf("%8s %8s %10s %12s\n", "line", "tokens", "loss", "perplexity");
	rc = sc_run_all(&r, o->parallel, score_on_progress, &sp);
	progress_clear(&sp.pg);
	if (rc == -EINTR) {
		fprintf(stderr, "ferryctl score: interrupted after %zu of %zu lines\n", r.n_done, n);
		ret = CTL_EXIT_INTERRUPTED;
		goto out;
	}
	if (rc < 0) {
		err = r.fail;
		goto out;
	}

	uint64_t tok, pred;
	double loss;
	sc_totals(res, n, &tok, &pred, &loss);
	if (o->json) {
		printf("{\"lines\": [");
		for (size_t i = 0; i < n; i++) {
			if (i)
				putchar(',');
			score_print_line(&lines[i], &res[i], true);
		}
		printf("\n  ], \"n_lines\": %zu, \"tokens\": %llu, \"predicted\": %llu, "
		       "\"mean_loss\": ", n, (unsigned long long)tok, (unsigned long long)pred);
		ctl_json_num(stdout, loss);
		printf(", \"perplexity\": ");
		ctl_json_num(stdout, exp(loss));
		printf("}\n");
	} else {
		printf("%zu lines, %llu tokens (%llu predicted): mean loss %.4f, perplexity %.3f\n",
		       n, (unsigned long long)tok, (unsigned long long)pred, loss, exp(loss));
	}
	fflush(stdout);
	ret = CTL_EXIT_OK;
out:
	rpc_channel_destroy(ch);
	if (sig)
		ctl_sig_stop();
	if (ret == CTL_EXIT_FAIL)
		fprintf(stderr, "ferryctl score: %s\n", err.msg[0] ? err.msg : "failed");
	sc_lines_free(lines, n);
	free(res);
	free(buf);
	return ret;
}

static int score_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct score_opts o;
	int rc = ctl_parsed("score", score_usage, score_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	return score_exec(&o);
}

static int score_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct score_opts o;
	int rc = score_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_score = { "score", "loss and perplexity of a file on a cluster",
				       score_main, score_parse_only };

/* ==== ferryctl eval =========================================================================== */

enum ev_shared { EV_SHARED_ON = 0, EV_SHARED_OFF, EV_SHARED_BOTH };

struct eval_opts {
	const char *cluster;
	struct ctl_tls tls;           /* --tls-* */
	const char *file;
	int64_t mask[EV_MAX_VALUES], k[EV_MAX_VALUES];
	size_t n_mask, n_k;
	enum ev_shared shared;
	bool tokens, add_bos, json;
	int parallel;
	double timeout_s;
};

static const char eval_usage[] =
	"Usage: ferryctl eval [--mask-top R,...] [--k K,...] [--shared on|off|both] [OPTIONS] FILE\n"
	"\n"
	"Scores FILE like `ferryctl score` once per routing variant and prints the loss table\n"
	"of the DeepSeekMoE paper's expert-specialization analyses: loss against the number\n"
	"r of top routed experts masked per token (Figure 4) and against the number k of\n"
	"activated routed experts (Figure 5), with the shared experts on and/or off. Every\n"
	"combination of the lists is scored; the baseline (r = 0, the model's k, shared on) is\n"
	"added when not among them, and every row shows its loss change against it.\n"
	"\n"
	"  -c, --cluster ADDR       coordinator address (default $FERRY_CLUSTER, else\n"
	"                           " CTL_DEFAULT_CLUSTER ")\n"
	"  -r, --mask-top LIST      masked top experts, e.g. \"0,1,2,3\" (default 0)\n"
	"  -k, --k LIST             activated routed experts, e.g. \"2,4,6\"; 0 = the model's\n"
	"                           (default 0)\n"
	"      --shared MODE        shared experts: on (default), off, or both\n"
	"  -t, --tokens             lines are token ids instead of text\n"
	"      --add-bos            prepend the tokenizer's BOS token to each text line\n"
	"  -j, --parallel N         calls in flight (default 4)\n"
	"      --timeout S          deadline per call in seconds (default none)\n"
	"      --json               one JSON object instead of the table\n"
	CTL_TLS_USAGE("      ")
	"  -h, --help               this text\n"
	"\n"
	"Exit status: 0 when every variant was scored, 1 on a server, connection or input\n"
	"error (e.g. k + r above the routed experts), 2 for bad arguments, 130 when\n"
	"interrupted.\n";

enum { E_SHARED = 256, E_BOS, E_TIMEOUT, E_JSON };

static const struct option eval_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "mask-top", required_argument, NULL, 'r' },
	{ "k", required_argument, NULL, 'k' },
	{ "shared", required_argument, NULL, E_SHARED },
	{ "tokens", no_argument, NULL, 't' },
	{ "add-bos", no_argument, NULL, E_BOS },
	{ "parallel", required_argument, NULL, 'j' },
	{ "timeout", required_argument, NULL, E_TIMEOUT },
	{ "json", no_argument, NULL, E_JSON },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int eval_parse(int argc, char **argv, struct eval_opts *o, struct fr_error *err)
{
	int64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->cluster = ctl_default_cluster();
	o->parallel = 4;
	o->n_mask = o->n_k = 1; /* {0}: the model's own */
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:r:k:tj:h", eval_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 'r':
			if (ctl_arg_i64_list("mask-top", optarg, 0, MODEL_MAX_EXPERTS, o->mask,
					     EV_MAX_VALUES, &o->n_mask, err) < 0)
				return -EINVAL;
			break;
		case 'k':
			if (ctl_arg_i64_list("k", optarg, 0, MODEL_MAX_EXPERTS, o->k, EV_MAX_VALUES,
					     &o->n_k, err) < 0)
				return -EINVAL;
			break;
		case E_SHARED:
			if (strcmp(optarg, "on") == 0)
				o->shared = EV_SHARED_ON;
			else if (strcmp(optarg, "off") == 0)
				o->shared = EV_SHARED_OFF;
			else if (strcmp(optarg, "both") == 0)
				o->shared = EV_SHARED_BOTH;
			else
				return fr_error_set(err, -EINVAL, "--shared: '%s' is not on, off or both",
						    optarg);
			break;
		case 't': o->tokens = true; break;
		case E_BOS: o->add_bos = true; break;
		case 'j':
			if (ctl_arg_i64("parallel", optarg, 1, SC_MAX_PARALLEL, &v, err) < 0)
				return -EINVAL;
			o->parallel = (int)v;
			break;
		case E_TIMEOUT:
			if (timeout_arg(optarg, &o->timeout_s, err) < 0)
				return -EINVAL;
			break;
		case E_JSON: o->json = true; break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		o->file = argv[optind++];
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->file)
		return fr_error_set(err, -EINVAL, "FILE is required (\"-\" reads stdin)");
	if (o->tokens && o->add_bos)
		return fr_error_set(err, -EINVAL, "--add-bos applies to text lines, not --tokens");
	if (!o->cluster[0])
		return fr_error_set(err, -EINVAL, "--cluster: empty address");
	return ctl_tls_finish(&o->tls, err);
}

struct ev_row {
	int64_t r, k;                /* k: 0 = the model's */
	bool shared;
	bool baseline;
	double loss;
	uint64_t pred;
};

static void ev_progress(void *ctx, const struct sc_run *r, size_t in_order, size_t n_done)
{
	(void)in_order;
	progress_show(ctx, n_done, r->n, false);
}

static int eval_exec(const struct eval_opts *o)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct sc_line *lines = NULL;
	struct sc_result *res = NULL;
	struct ev_row *rows = NULL;
	struct ctl_model_info mi;
	char *buf = NULL, label[96];
	size_t len, n = 0, n_rows = 0;
	int rc, ret = CTL_EXIT_FAIL;
	bool sig = false, have_mi;

	if ((rc = ctl_read_all(o->file, SC_MAX_FILE_BYTES, &buf, &len, &err)) < 0 ||
	    (rc = sc_split(buf, o->tokens, strcmp(o->file, "-") ? o->file : "stdin", &lines, &n,
			   &err)) < 0)
		goto out;
	size_t n_shared = o->shared == EV_SHARED_BOTH ? 2 : 1;
	rows = calloc(o->n_mask * o->n_k * n_shared + 1, sizeof(*rows));
	res = calloc(n, sizeof(*res));
	if (!rows || !res) {
		fr_error_set(&err, -ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = ctl_sig_start(&err)) < 0)
		goto out;
	sig = true;
	if ((rc = ctl_channel_create(o->cluster, &o->tls, &ch, &err)) < 0)
		goto out;
	rc = ctl_model_info(ch, &mi, &err);
	if (rc < 0 && rc != -ENOSYS)
		goto out;
	have_mi = rc == 0;
	err.msg[0] = '\0';

	/* The rows: baseline first, then every combination in the order given. */
	rows[n_rows++] = (struct ev_row){ .r = 0, .k = 0, .shared = true, .baseline = true };
	for (size_t s = 0; s < n_shared; s++)
		for (size_t a = 0; a < o->n_mask; a++)
			for (size_t b = 0; b < o->n_k; b++) {
				struct ev_row w = { .r = o->mask[a], .k = o->k[b],
						    .shared = o->shared == EV_SHARED_ON ||
							      (o->shared == EV_SHARED_BOTH && s == 0) };
				if (have_mi && w.k == mi.num_experts_per_tok)
					w.k = 0;
				if (have_mi && mi.n_routed_experts > 0 &&
				    (w.k ? w.k : mi.num_experts_per_tok) + w.r > mi.n_routed_experts) {
					fr_error_set(&err, -EINVAL, "--k %lld with --mask-top %lld exceed "
						     "the model's %d routed experts",
						     (long long)(w.k ? w.k : mi.num_experts_per_tok),
						     (long long)w.r, mi.n_routed_experts);
					goto out;
				}
				bool dup = false;
				for (size_t j = 0; j < n_rows; j++)
					dup |= rows[j].r == w.r && rows[j].k == w.k &&
					       rows[j].shared == w.shared;
				if (!dup)
					rows[n_rows++] = w;
			}

	for (size_t i = 0; i < n_rows; i++) {
		struct ev_row *w = &rows[i];
		struct sc_run r = { .ch = ch, .lines = lines, .n = n, .add_bos = o->add_bos,
				    .kb = { .routed_top_k = (uint32_t)w->k, .mask_top = (uint32_t)w->r,
					    .no_shared = !w->shared },
				    .timeout_ms = o->timeout_s > 0 ? (int64_t)ceil(o->timeout_s * 1e3) : 0,
				    .res = res };
		struct progress pg;
		uint64_t tok;
		progress_init(&pg, true);
		snprintf(label, sizeof(label), "variant %zu/%zu (r=%lld k=%lld%s)", i + 1, n_rows,
			 (long long)w->r, (long long)(w->k ? w->k : (have_mi ? mi.num_experts_per_tok : 0)),
			 w->shared ? "" : " no-shared");
		pg.label = label;
		rc = sc_run_all(&r, o->parallel, ev_progress, &pg);
		progress_clear(&pg);
		if (rc == -EINTR) {
			fprintf(stderr, "ferryctl eval: interrupted in variant %zu of %zu\n", i + 1, n_rows);
			ret = CTL_EXIT_INTERRUPTED;
			goto out;
		}
		if (rc < 0) {
			fr_error_set(&err, rc, "r=%lld k=%lld%s: %s", (long long)w->r, (long long)w->k,
				     w->shared ? "" : " no-shared", r.fail.msg);
			goto out;
		}
		sc_totals(res, n, &tok, &w->pred, &w->loss);
	}

	double base = rows[0].loss; /* the baseline */
	int k_model = have_mi ? mi.num_experts_per_tok : 0;
	if (o->json) {
		printf("{\"lines\": %zu, \"predicted\": %llu, \"model_k\": %d, \"rows\": [", n,
		       (unsigned long long)rows[0].pred, k_model);
		for (size_t i = 0; i < n_rows; i++) {
			const struct ev_row *w = &rows[i];
			printf("%s\n    {\"mask_top\": %lld, \"k\": %lld, \"shared\": %s, \"baseline\": %s, "
			       "\"loss\": ", i ? "," : "", (long long)w->r,
			       (long long)(w->k ? w->k : k_model), w->shared ? "true" : "false",
			       w->baseline ? "true" : "false");
			ctl_json_num(stdout, w->loss);
			printf(", \"perplexity\": ");
			ctl_json_num(stdout, exp(w->loss));
			printf(", \"delta\": ");
			ctl_json_num(stdout, w->loss - base);
			printf("}");
		}
		printf("\n  ]}\n");
	} else {
		printf("%zu lines, %llu predicted tokens per variant%s\n", n,
		       (unsigned long long)rows[0].pred, have_mi ? "" :
		       " (no ModelInfo: k 0 = the model's own)");
		printf("%8s %4s %7s %10s %12s %10s\n", "mask_top", "k", "shared", "loss", "perplexity",
		       "delta");
		for (size_t i = 0; i < n_rows; i++) {
			const struct ev_row *w = &rows[i];
			printf("%8lld %4lld %7s %10.4f %12.3f %+10.4f%s\n", (long long)w->r,
			       (long long)(w->k ? w->k : k_model), w->shared ? "yes" : "no", w->loss,
			       exp(w->loss), w->loss - base, w->baseline ? "  baseline" : "");
		}
	}
	fflush(stdout);
	ret = CTL_EXIT_OK;
out:
	rpc_channel_destroy(ch);
	if (sig)
		ctl_sig_stop();
	if (ret == CTL_EXIT_FAIL)
		fprintf(stderr, "ferryctl eval: %s\n", err.msg[0] ? err.msg : "failed");
	sc_lines_free(lines, n);
	free(res);
	free(rows);
	free(buf);
	return ret;
}

static int eval_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct eval_opts o;
	int rc = ctl_parsed("eval", eval_usage, eval_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	return eval_exec(&o);
}

static int eval_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct eval_opts o;
	int rc = eval_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_eval = { "eval", "loss table over masked/activated experts",
				      eval_main, eval_parse_only };
