/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_serve.c - `ferryctl generate`: one streaming Generate call against a running cluster. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "model/model.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

#define GEN_MAX_STOP 16          /* stop strings, as the proto allows */
#define GEN_MAX_STOP_LEN 256
#define GEN_MAX_STOP_IDS 64
#define GEN_MAX_PROMPT_BYTES (64u << 20)

struct gen_opts {
	const char *cluster;
	struct ctl_tls tls;           /* --tls-* */
	const char *prompt;          /* text, "-" = stdin; or NULL with tokens */
	const char *tokens;
	const char *request_id;
	uint32_t max_tokens;         /* 0 = the server's default */
	float temperature, top_p, rep_penalty;
	uint32_t top_k;
	uint64_t seed;
	const char *stop[GEN_MAX_STOP];
	size_t n_stop;
	int32_t stop_ids[GEN_MAX_STOP_IDS];
	size_t n_stop_ids;
	uint32_t routed_top_k, mask_top, priority;
	bool no_shared, ignore_eos, add_bos, json, quiet, ids;
	double timeout_s;            /* 0 = no deadline */
};

static const char gen_usage[] =
	"Usage: ferryctl generate [OPTIONS] \"PROMPT\"\n"
	"       ferryctl generate [OPTIONS] --tokens \"ID ID ...\"\n"
	"\n"
	"Generates on a running cluster (ferry.v1.Inference/Generate) and streams the text to\n"
	"stdout as it arrives (ending with a newline); token ids instead when the prompt is ids\n"
	"and the model has no tokenizer (or with --ids). A summary goes to stderr: tokens,\n"
	"tokens/s, time to first token (TTFT) and mean inter-token time, as the server timed\n"
	"them. PROMPT \"-\" reads the prompt text from stdin. Ctrl-C cancels the stream (the\n"
	"server frees the request's KV cache at once); a second Ctrl-C exits immediately.\n"
	"\n"
	"  -c, --cluster ADDR          coordinator address (default $FERRY_CLUSTER, else\n"
	"                              " CTL_DEFAULT_CLUSTER ")\n"
	"  -t, --tokens IDS            prompt token ids, space or comma separated\n"
	"  -n, --max-tokens N          tokens to generate at most (default: the server's)\n"
	"      --temperature T         0 = greedy (default 0)\n"
	"      --top-p P               nucleus sampling mass in (0, 1] (default 1 = off)\n"
	"      --top-k K               sample among the K most likely tokens (default 0 = off)\n"
	"      --seed S                sampler seed (default 0: the server picks one)\n"
	"      --stop STR              stop when the text contains STR (repeatable, at most 16)\n"
	"      --stop-id ID            stop at this token id (repeatable)\n"
	"      --repetition-penalty X  CTRL penalty in (0, 10] (default 1 = off)\n"
	"      --ignore-eos            keep going past the end-of-sequence token\n"
	"      --add-bos               prepend the tokenizer's BOS token to PROMPT\n"
	"      --top-k-experts K       routed experts per token (default: the model's)\n"
	"      --mask-top R            mask the R highest-scoring routed experts per token\n"
	"      --no-shared             disable the shared experts\n"
	"      --priority P            scheduling priority 0..9, higher first (default 0)\n"
	"      --request-id ID         caller's id for the server's logs (at most 64 bytes)\n"
	"      --timeout S             deadline for the whole call in seconds (default none)\n"
	"      --ids                   print token ids even when the model has a tokenizer\n"
	"      --json                  one JSON object per streamed message (JSON lines)\n"
	"  -q, --quiet                 no summary on stderr\n"
	CTL_TLS_USAGE("         ")
	"  -h, --help                  this text\n"
	"\n"
	"Exit status: 0 when the generation finished, 1 on a server or connection error\n"
	"(the message names the gRPC status, e.g. INVALID_ARGUMENT), 2 for bad arguments,\n"
	"130 when interrupted.\n";

enum {
	G_TEMP = 256, G_TOPP, G_TOPK, G_SEED, G_STOP, G_STOP_ID, G_REP, G_IGNORE_EOS, G_BOS,
	G_EXPERTS, G_MASK, G_NOSHARED, G_PRIO, G_REQID, G_TIMEOUT, G_IDS, G_JSON,
};

static const struct option gen_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "tokens", required_argument, NULL, 't' },
	{ "max-tokens", required_argument, NULL, 'n' },
	{ "temperature", required_argument, NULL, G_TEMP },
	{ "top-p", required_argument, NULL, G_TOPP },
	{ "top-k", required_argument, NULL, G_TOPK },
	{ "seed", required_argument, NULL, G_SEED },
	{ "stop", required_argument, NULL, G_STOP },
	{ "stop-id", required_argument, NULL, G_STOP_ID },
	{ "repetition-penalty", required_argument, NULL, G_REP },
	{ "ignore-eos", no_argument, NULL, G_IGNORE_EOS },
	{ "add-bos", no_argument, NULL, G_BOS },
	{ "top-k-experts", required_argument, NULL, G_EXPERTS },
	{ "mask-top", required_argument, NULL, G_MASK },
	{ "no-shared", no_argument, NULL, G_NOSHARED },
	{ "priority", required_argument, NULL, G_PRIO },
	{ "request-id", required_argument, NULL, G_REQID },
	{ "timeout", required_argument, NULL, G_TIMEOUT },
	{ "ids", no_argument, NULL, G_IDS },
	{ "json", no_argument, NULL, G_JSON },
	{ "quiet", no_argument, NULL, 'q' },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* Returns 0, 1 for --help, or -EINVAL. */
static int gen_parse(int argc, char **argv, struct gen_opts *o, struct fr_error *err)
{
	int64_t v;
	double d;
	int c;

	memset(o, 0, sizeof(*o));
	o->cluster = ctl_default_cluster();
	o->top_p = 1.0f;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:t:n:qh", gen_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 't': o->tokens = optarg; break;
		case 'n':
			if (ctl_arg_i64("max-tokens", optarg, 1, UINT32_MAX, &v, err) < 0)
				return -EINVAL;
			o->max_tokens = (uint32_t)v;
			break;
		case G_TEMP:
			if (ctl_arg_double("temperature", optarg, 0, 100, &d, err) < 0)
				return -EINVAL;
			o->temperature = (float)d;
			break;
		case G_TOPP:
			if (fr_parse_double(optarg, &d) < 0 || !(d > 0 && d <= 1))
				return fr_error_set(err, -EINVAL, "--top-p: '%s' is not in (0, 1]", optarg);
			o->top_p = (float)d;
			break;
		case G_TOPK:
			if (ctl_arg_i64("top-k", optarg, 0, INT32_MAX, &v, err) < 0)
				return -EINVAL;
			o->top_k = (uint32_t)v;
			break;
		case G_SEED:
			if (ctl_arg_i64("seed", optarg, 0, INT64_MAX, &v, err) < 0)
				return -EINVAL;
			o->seed = (uint64_t)v;
			break;
		case G_STOP:
			if (o->n_stop == GEN_MAX_STOP)
				return fr_error_set(err, -EINVAL, "--stop: at most %d stop strings",
						    GEN_MAX_STOP);
			if (!optarg[0] || strlen(optarg) > GEN_MAX_STOP_LEN)
				return fr_error_set(err, -EINVAL, "--stop: a stop string has 1 to %d bytes",
						    GEN_MAX_STOP_LEN);
			o->stop[o->n_stop++] = optarg;
			break;
		case G_STOP_ID:
			if (o->n_stop_ids == GEN_MAX_STOP_IDS)
				return fr_error_set(err, -EINVAL, "--stop-id: at most %d ids",
						    GEN_MAX_STOP_IDS);
			if (ctl_arg_i64("stop-id", optarg, 0, INT32_MAX, &v, err) < 0)
				return -EINVAL;
			o->stop_ids[o->n_stop_ids++] = (int32_t)v;
			break;
		case G_REP:
			if (fr_parse_double(optarg, &d) < 0 || !(d > 0 && d <= 10))
				return fr_error_set(err, -EINVAL, "--repetition-penalty: '%s' is not in "
						    "(0, 10]", optarg);
			o->rep_penalty = (float)d;
			break;
		case G_IGNORE_EOS: o->ignore_eos = true; break;
		case G_BOS: o->add_bos = true; break;
		case G_EXPERTS:
			if (ctl_arg_i64("top-k-experts", optarg, 1, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->routed_top_k = (uint32_t)v;
			break;
		case G_MASK:
			if (ctl_arg_i64("mask-top", optarg, 0, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->mask_top = (uint32_t)v;
			break;
		case G_NOSHARED: o->no_shared = true; break;
		case G_PRIO:
			if (ctl_arg_i64("priority", optarg, 0, 9, &v, err) < 0)
				return -EINVAL;
			o->priority = (uint32_t)v;
			break;
		case G_REQID:
			if (strlen(optarg) > 64)
				return fr_error_set(err, -EINVAL, "--request-id: longer than 64 bytes");
			o->request_id = optarg;
			break;
		case G_TIMEOUT:
			if (fr_parse_double(optarg, &d) < 0 || !(d > 0 && d <= 1e6))
				return fr_error_set(err, -EINVAL, "--timeout: '%s' is not a number of "
						    "seconds in (0, 1e6]", optarg);
			o->timeout_s = d;
			break;
		case G_IDS: o->ids = true; break;
		case G_JSON: o->json = true; break;
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
		o->prompt = argv[optind++];
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s' (quote the prompt)",
				    argv[optind]);
	if (!o->prompt == !o->tokens)
		return fr_error_set(err, -EINVAL, "give exactly one of a PROMPT and --tokens IDS");
	if (o->prompt && !o->prompt[0])
		return fr_error_set(err, -EINVAL, "the prompt is empty");
	if (o->tokens) {
		int32_t *ids;
		size_t n;
		int rc = fr_parse_ids(o->tokens, INT32_MAX, &ids, &n, err);
		if (rc < 0)
			return fr_error_prefix(err, -EINVAL, "--tokens");
		free(ids);
		if (n == 0)
			return fr_error_set(err, -EINVAL, "--tokens: the prompt is empty");
	}
	if (o->tokens && o->add_bos)
		return fr_error_set(err, -EINVAL, "--add-bos applies to a text PROMPT only");
	if (!o->cluster[0])
		return fr_error_set(err, -EINVAL, "--cluster: empty address");
	return ctl_tls_finish(&o->tls, err);
}

static const char *finish_name(Ferry__V1__FinishReason r)
{
	switch (r) {
	case FERRY__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
	case FERRY__V1__FINISH_REASON__FINISH_REASON_STOP: return "stop";
	case FERRY__V1__FINISH_REASON__FINISH_REASON_CONTEXT: return "context";
	default: return NULL;
	}
}

static void print_json_msg(const Ferry__V1__GenerateResponse *m, bool with_text)
{
	printf("{\"tokens\": [");
	for (size_t i = 0; i < m->n_tokens; i++)
		printf("%s%d", i ? ", " : "", m->tokens[i]);
	printf("], \"offset\": %u", m->offset);
	if (with_text || (m->text && m->text[0])) {
		printf(", \"text\": ");
		ctl_json_str(stdout, m->text ? m->text : "", m->text ? strlen(m->text) : 0);
	}
	if (m->prompt_tokens)
		printf(", \"prompt_tokens\": %u", m->prompt_tokens);
	if (finish_name(m->finish_reason))
		printf(", \"finish_reason\": \"%s\"", finish_name(m->finish_reason));
	if (m->usage)
		printf(", \"usage\": {\"prompt_tokens\": %u, \"completion_tokens\": %u}",
		       m->usage->prompt_tokens, m->usage->completion_tokens);
	if (m->timing) {
		printf(", \"timing\": {\"queue_ms\": ");
		ctl_json_num(stdout, m->timing->queue_ms);
		printf(", \"time_to_first_token_ms\": ");
		ctl_json_num(stdout, m->timing->time_to_first_token_ms);
		printf(", \"mean_inter_token_ms\": ");
		ctl_json_num(stdout, m->timing->mean_inter_token_ms);
		printf(", \"total_ms\": ");
		ctl_json_num(stdout, m->timing->total_ms);
		printf("}");
	}
	printf("}\n");
}

/* What the summary line needs; the server's numbers when it sent them. */
struct gen_stats {
	uint64_t t_start, t_first, t_last;
	uint64_t gaps_ns;            /* client-side gaps between token messages */
	size_t n_gaps;
	size_t n_tokens;
	uint32_t prompt_tokens;
	const char *finish;
	bool have_usage, have_timing;
	Ferry__V1__Usage usage;
	Ferry__V1__Timing timing;
};

static void print_summary(const struct gen_stats *s)
{
	double ttft, itl, total;
	uint32_t n = s->have_usage ? s->usage.completion_tokens : (uint32_t)s->n_tokens;
	uint32_t np = s->have_usage ? s->usage.prompt_tokens : s->prompt_tokens;
	const char *src;

	if (s->have_timing) {
		ttft = s->timing.time_to_first_token_ms;
		itl = s->timing.mean_inter_token_ms;
		total = s->timing.total_ms;
		src = "server";
	} else {
		ttft = s->t_first ? (double)(s->t_first - s->t_start) / 1e6 : 0;
		itl = s->n_gaps ? (double)s->gaps_ns / (double)s->n_gaps / 1e6 : 0;
		total = (double)((s->t_last ? s->t_last : s->t_start) - s->t_start) / 1e6;
		src = "client";
	}
	fprintf(stderr, "%u tokens (prompt %u) in %.3f s: %.2f tok/s, TTFT %.1f ms, inter-token "
		"%.2f ms", n, np, total / 1e3, total > 0 ? n / (total / 1e3) : 0.0, ttft, itl);
	if (s->have_timing)
		fprintf(stderr, ", queued %.1f ms", s->timing.queue_ms);
	fprintf(stderr, "; finish %s (%s timing)\n", s->finish ? s->finish : "none", src);
}

static int gen_exec(const struct gen_opts *o)
{
	Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct rpc_stream *st = NULL;
	struct gen_stats s = { 0 };
	char *text = NULL;
	int32_t *ids = NULL;
	size_t n_ids = 0, len = 0;
	int rc, ret = CTL_EXIT_FAIL;
	bool with_text, sig = false, line_open = false;

	if (o->tokens) {
		/* Checked by gen_parse(): only out of memory can fail here. */
		if ((rc = fr_parse_ids(o->tokens, INT32_MAX, &ids, &n_ids, &err)) < 0)
			goto out;
	} else if (strcmp(o->prompt, "-") == 0) {
		if (ctl_read_all("-", GEN_MAX_PROMPT_BYTES, &text, &len, &err) < 0)
			goto out;
		if (len == 0) {
			fr_error_set(&err, -EINVAL, "the prompt on stdin is empty");
			goto out;
		}
	}
	if ((rc = ctl_sig_start(&err)) < 0)
		goto out;
	sig = true;
	if ((rc = ctl_channel_create(o->cluster, &o->tls, &ch, &err)) < 0)
		goto out;

	/* Text out when the prompt is text, or when ids go to a model with a tokenizer (a
	 * server without ModelInfo gets ids). */
	with_text = !o->ids;
	if (o->tokens && with_text) {
		struct ctl_model_info mi;
		struct fr_error ierr = { { 0 } };
		with_text = ctl_model_info(ch, &mi, &ierr) == 0 && mi.has_tokenizer;
	}

	req.prompt_tokens = ids;
	req.n_prompt_tokens = n_ids;
	req.prompt = o->prompt ? (text ? text : (char *)o->prompt) : NULL;
	req.max_tokens = o->max_tokens;
	req.temperature = o->temperature;
	req.top_p = o->top_p;
	req.top_k = o->top_k;
	req.seed = o->seed;
	req.stop = (char **)o->stop;
	req.n_stop = o->n_stop;
	req.stop_tokens = (int32_t *)o->stop_ids;
	req.n_stop_tokens = o->n_stop_ids;
	req.repetition_penalty = o->rep_penalty;
	req.ignore_eos = o->ignore_eos;
	req.add_bos = o->add_bos;
	req.routed_top_k = o->routed_top_k;
	req.mask_top = o->mask_top;
	req.no_shared_experts = o->no_shared;
	req.priority = o->priority;
	req.request_id = (char *)(o->request_id ? o->request_id : "");
	req.return_text = with_text;

	s.t_start = fr_now_ns();
	if ((rc = rpc_stream_open(ch, RPC_M_GENERATE, &req.base,
				  &ferry__v1__generate_response__descriptor,
				  o->timeout_s > 0 ? (int64_t)ceil(o->timeout_s * 1e3) : 0, &st,
				  &err)) < 0)
		goto out;
	ctl_sig_register(st);
	for (;;) {
		Ferry__V1__GenerateResponse *m = NULL;
		rc = rpc_stream_next(st, (ProtobufCMessage **)&m, &err);
		if (rc <= 0)
			break;
		uint64_t now = fr_now_ns();
		if (m->n_tokens) {
			if (s.t_first) {
				s.gaps_ns += now - s.t_last;
				s.n_gaps++;
			} else {
				s.t_first = now;
			}
			s.t_last = now;
			s.n_tokens += m->n_tokens;
		}
		if (m->prompt_tokens)
			s.prompt_tokens = m->prompt_tokens;
		if (finish_name(m->finish_reason))
			s.finish = finish_name(m->finish_reason);
		if (m->usage) {
			s.have_usage = true;
			s.usage = *m->usage;
		}
		if (m->timing) {
			s.have_timing = true;
			s.timing = *m->timing;
		}
		if (o->json) {
			print_json_msg(m, with_text);
		} else if (with_text) {
			if (m->text && m->text[0]) {
				fputs(m->text, stdout);
				line_open = m->text[strlen(m->text) - 1] != '\n';
			}
		} else {
			for (size_t i = 0; i < m->n_tokens; i++) {
				printf("%s%d", line_open ? " " : "", m->tokens[i]);
				line_open = true;
			}
		}
		fflush(stdout);
		protobuf_c_message_free_unpacked(&m->base, NULL);
	}
	ctl_sig_unregister(st);
	if (line_open)
		putchar('\n');
	fflush(stdout);
	if (rc < 0) {
		if (ctl_sig_interrupted()) {
			fprintf(stderr, "ferryctl generate: interrupted: stream cancelled after %zu "
				"tokens\n", s.n_tokens);
			ret = CTL_EXIT_INTERRUPTED;
			err.msg[0] = '\0';
		}
		goto out;
	}
	if (!o->quiet)
		print_summary(&s);
	ret = CTL_EXIT_OK;
out:
	rpc_stream_destroy(st);
	rpc_channel_destroy(ch);
	if (sig)
		ctl_sig_stop();
	if (ret != CTL_EXIT_OK && err.msg[0])
		fprintf(stderr, "ferryctl generate: %s\n", err.msg);
	free(ids);
	free(text);
	return ret;
}

static int gen_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct gen_opts o;
	int rc = ctl_parsed("generate", gen_usage, gen_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	return gen_exec(&o);
}

static int gen_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct gen_opts o;
	int rc = gen_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_generate = { "generate", "generate text on a cluster (streaming)",
					  gen_main, gen_parse_only };
