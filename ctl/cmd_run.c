/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_run.c - `ferryctl run`: evaluate a prompt and generate, in this process. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/config.h"
#include "coordinator/coordinator.h"
#include "coordinator/engine_dev.h"
#include "ctl/ctl.h"
#ifdef FERRY_HAVE_GRPC
#include "ctl/serve-internal.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"
#endif

struct run_opts {
	const char *model;
	const char *cluster;
	struct ctl_tls tls;          /* --tls-*, with --cluster */
	const char *tokens;
	const char *dump_logits;
	int max_new;
	float temperature;
	float top_p;
	uint64_t seed;
	int workers;
	int threads;
	int precision;               /* enum kn_precision; -1: unset */
	int device;                  /* --device: KN_DEV_NONE, KN_DEV_TWIN or cuda:N */
	bool stop_at_eos;
	bool stats;
	struct co_route_knobs knobs;
};

static const char run_usage[] =
	"Usage: ferryctl run --model DIR --tokens \"ID ID ...\" [OPTIONS]\n"
	"       ferryctl run --cluster ADDR --tokens \"ID ID ...\" [OPTIONS]\n"
	"\n"
	"Evaluates the prompt in one prefill, then generates --max-new tokens; prints the\n"
	"generated ids on stdout, space-separated. With --cluster the same happens on a\n"
	"running ferry-coordinator (ferry.v1.Inference/Generate), with the same output.\n"
	"\n"
	"  -m, --model DIR          HF model directory (config.json + safetensors)\n"
	"  -c, --cluster ADDR       coordinator's gRPC address (host:port) instead of --model\n"
	"  -t, --tokens IDS         prompt token ids, space or comma separated\n"
	"  -n, --max-new N          tokens to generate (default 16; 0 = only evaluate)\n"
	"  -d, --dump-logits FILE   write the logits of every prompt position, then of every\n"
	"                           generated step, as raw little-endian float32 [rows][vocab]\n"
	"      --temperature T      0 = greedy (default 0)\n"
	"      --top-p P            nucleus sampling mass in (0, 1] (default 1)\n"
	"      --seed S             sampling seed (default 0)\n"
	"      --stop-at-eos        stop when the model emits eos_token_id\n"
	"      --top-k K            routed experts per token (default: the config's)\n"
	"      --mask-top R         mask the R highest-scoring routed experts per token\n"
	"      --no-shared          disable the shared experts\n"
	"      --workers N          in-process expert workers (default 1; not with --cluster)\n"
	"      --threads N          kernel threads (default: all CPUs; not with --cluster)\n"
	"      --precision P        exact or fast: bf16 activations for bf16 weights, see\n"
	"                           [engine] precision (default: exact on the CPU, fast on\n"
	"                           a GPU; not with --cluster)\n"
	"      --device D           where the engine runs: cpu (default), cuda:N (the GPU\n"
	"                           module) or twin (the device path on the CPU), see\n"
	"                           [engine] device (not with --cluster)\n"
	"      --stats              print timing and throughput on stderr; with --model also\n"
	"                           the routed tokens per expert of every MoE layer\n"
	CTL_TLS_USAGE("      ")
	"                           (--tls-* with --cluster only)\n"
	"  -h, --help               this text\n";

enum {
	OPT_TEMP = 256, OPT_TOPP, OPT_SEED, OPT_EOS, OPT_TOPK, OPT_MASK, OPT_NOSHARED,
	OPT_WORKERS, OPT_THREADS, OPT_STATS, OPT_PRECISION, OPT_DEVICE,
};

static const struct option run_longopts[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "cluster", required_argument, NULL, 'c' },
	{ "tokens", required_argument, NULL, 't' },
	{ "max-new", required_argument, NULL, 'n' },
	{ "dump-logits", required_argument, NULL, 'd' },
	{ "temperature", required_argument, NULL, OPT_TEMP },
	{ "top-p", required_argument, NULL, OPT_TOPP },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "stop-at-eos", no_argument, NULL, OPT_EOS },
	{ "top-k", required_argument, NULL, OPT_TOPK },
	{ "mask-top", required_argument, NULL, OPT_MASK },
	{ "no-shared", no_argument, NULL, OPT_NOSHARED },
	{ "workers", required_argument, NULL, OPT_WORKERS },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "precision", required_argument, NULL, OPT_PRECISION },
	{ "device", required_argument, NULL, OPT_DEVICE },
	{ "stats", no_argument, NULL, OPT_STATS },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* Returns 0, 1 for --help, or -EINVAL. */
static int run_parse(int argc, char **argv, struct run_opts *o, struct fr_error *err)
{
	int64_t v;
	double d;
	int c;

	memset(o, 0, sizeof(*o));
	o->max_new = 16;
	o->top_p = 1.0f;
	o->workers = 1;
	o->precision = -1;
	o->device = KN_DEV_NONE;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":m:c:t:n:d:h", run_longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			o->model = optarg;
			break;
		case 'c':
			o->cluster = optarg;
			break;
		case 't':
			o->tokens = optarg;
			break;
		case 'n':
			if (ctl_arg_i64("max-new", optarg, 0, 1 << 20, &v, err) < 0)
				return -EINVAL;
			o->max_new = (int)v;
			break;
		case 'd':
			o->dump_logits = optarg;
			break;
		case OPT_TEMP:
			if (fr_parse_double(optarg, &d) < 0 || d < 0 || d > 100)
				return fr_error_set(err, -EINVAL, "--temperature: '%s' is not in [0, 100]", optarg);
			o->temperature = (float)d;
			break;
		case OPT_TOPP:
			if (fr_parse_double(optarg, &d) < 0 || !(d > 0 && d <= 1))
				return fr_error_set(err, -EINVAL, "--top-p: '%s' is not in (0, 1]", optarg);
			o->top_p = (float)d;
			break;
		case OPT_SEED:
			if (ctl_arg_i64("seed", optarg, 0, INT64_MAX, &v, err) < 0)
				return -EINVAL;
			o->seed = (uint64_t)v;
			break;
		case OPT_EOS:
			o->stop_at_eos = true;
			break;
		case OPT_TOPK:
			if (ctl_arg_i64("top-k", optarg, 1, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->knobs.top_k = (int)v;
			break;
		case OPT_MASK:
			if (ctl_arg_i64("mask-top", optarg, 0, MODEL_MAX_EXPERTS, &v, err) < 0)
				return -EINVAL;
			o->knobs.mask_top = (int)v;
			break;
		case OPT_NOSHARED:
			o->knobs.no_shared = true;
			break;
		case OPT_WORKERS:
			if (ctl_arg_i64("workers", optarg, 1, 1024, &v, err) < 0)
				return -EINVAL;
			o->workers = (int)v;
			break;
		case OPT_THREADS:
			if (ctl_arg_i64("threads", optarg, 1, 1024, &v, err) < 0)
				return -EINVAL;
			o->threads = (int)v;
			break;
		case OPT_STATS:
			o->stats = true;
			break;
		case OPT_PRECISION:
			if (ctl_arg_precision(optarg, &o->precision, err) < 0)
				return -EINVAL;
			break;
		case OPT_DEVICE:
			if (co_config_engine_device(optarg, &o->device, err) < 0) {
				/* the config's message, in the CLI's terms */
				return fr_error_set(err, -EINVAL, "--device: '%s' is not cpu, cuda:N "
						    "(N in [0, 1023]) or twin", optarg);
			}
			break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h':
			return 1;
		case ':':
			return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default:
			return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->model == !o->cluster)
		return fr_error_set(err, -EINVAL, "give exactly one of --model DIR and --cluster ADDR");
	if (o->cluster && (o->workers != 1 || o->threads || o->precision >= 0 ||
			   o->device != KN_DEV_NONE))
		return fr_error_set(err, -EINVAL, "--workers, --threads, --precision and --device "
				    "apply to --model only (the cluster's configuration decides)");
	if (!o->tokens)
		return fr_error_set(err, -EINVAL, "--tokens is required");
	if (o->model && ctl_tls_given(&o->tls))
		return fr_error_set(err, -EINVAL, "--tls-ca, --tls-cert and --tls-key apply to "
				    "--cluster only");
	if (o->cluster)
		return ctl_tls_finish(&o->tls, err);
	return 0;
}

static int write_all(FILE *f, const float *rows, size_t n_rows, int vocab)
{
	/* The format is little-endian; so is every host Ferry builds for (x86-64, aarch64). */
	return fwrite(rows, sizeof(float) * (size_t)vocab, n_rows, f) == n_rows ? 0 : -EIO;
}

/* --stats: routed (token, expert) pairs per (layer, expert), counted at the MoE seam. */
struct count_moe {
	struct moe inner;
	int n_experts;
	int64_t *count;              /* [num_hidden_layers][n_experts], heap */
};

static int count_dispatch(void *ctx, int layer, int mb, const float *x, int n_tok,
			  const int32_t *expert, const float *weight, int k)
{
	struct count_moe *cm = ctx;
	int64_t *row = cm->count + (size_t)layer * (size_t)cm->n_experts;

	for (size_t i = 0; i < (size_t)n_tok * (size_t)k; i++)
		if (expert[i] >= 0 && expert[i] < cm->n_experts)
			row[expert[i]]++;
	return cm->inner.ops->dispatch(cm->inner.ctx, layer, mb, x, n_tok, expert, weight, k);
}

static int count_combine(void *ctx, int layer, int mb, float *out)
{
	struct count_moe *cm = ctx;
	return cm->inner.ops->combine(cm->inner.ctx, layer, mb, out);
}

static const struct moe_ops count_ops = { "count", count_dispatch, count_combine, NULL };

/* One line per MoE layer: "expert load: layer L max/mean R: c0 c1 ..." (what tests parse). */
static void print_expert_load(const struct model_config *c, const struct count_moe *cm)
{
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const int64_t *row = cm->count + (size_t)l * (size_t)cm->n_experts;
		int64_t sum = 0, max = 0;

		if (!model_layer_is_moe(c, l))
			continue;
		for (int e = 0; e < cm->n_experts; e++) {
			sum += row[e];
			max = FR_MAX(max, row[e]);
		}
		fprintf(stderr, "expert load: layer %d max/mean %.2f:", l,
			sum ? (double)max * cm->n_experts / (double)sum : 0.0);
		for (int e = 0; e < cm->n_experts; e++)
			fprintf(stderr, " %" PRId64, row[e]);
		fputc('\n', stderr);
	}
}

static int run_exec(const struct run_opts *o)
{
	struct fr_error err = { { 0 } };
	struct model_ckpt *ck = NULL;
	struct model_weights *w = NULL;
	struct moe moe = { 0 };
	struct count_moe counted = { { 0 } };
	struct co_engine *e = NULL;
	const struct model_config *c;
	int32_t *ids = NULL, *seq = NULL, *pos = NULL;
	float *logits = NULL;
	void *scratch = NULL;
	FILE *dump = NULL;
	size_t n_prompt;
	int rc, ret = CTL_EXIT_FAIL;
	uint64_t t0, t1, t2;
	struct co_device dev = { .ops = NULL };

	if (o->threads)
		kn_set_threads(o->threads);
	if (o->precision >= 0 || o->device >= 0) /* else $FERRY_PRECISION, or exact */
		kn_set_precision(kn_precision_resolve(o->precision >= 0 ? o->precision
									: KN_PRECISION_AUTO,
						      o->device >= 0));
	if ((rc = model_ckpt_open(o->model, &ck, &err)) < 0)
		goto out;
	c = model_ckpt_config(ck);
	if ((rc = fr_parse_ids(o->tokens, c->vocab_size, &ids, &n_prompt, &err)) < 0) {
		fr_error_prefix(&err, rc, "--tokens");
		goto out;
	}
	if (n_prompt == 0) {
		fr_error_set(&err, -EINVAL, "--tokens: the prompt is empty");
		goto out;
	}
	int k = o->knobs.top_k ? o->knobs.top_k : c->num_experts_per_tok;
	if (model_n_moe_layers(c) > 0 && k + o->knobs.mask_top > c->n_routed_experts) {
		fr_error_set(&err, -EINVAL, "--top-k %d plus --mask-top %d exceed the %d routed experts",
			     k, o->knobs.mask_top, c->n_routed_experts);
		goto out;
	}
	size_t total = n_prompt + (size_t)o->max_new;
	if (total > (size_t)c->max_position_embeddings) {
		fr_error_set(&err, -EINVAL,
			     "prompt (%zu) + --max-new (%d) exceed max_position_embeddings (%d)",
			     n_prompt, o->max_new, c->max_position_embeddings);
		goto out;
	}
	if ((rc = model_weights_bind(ck, MODEL_BIND_NO_ROUTED, &w, &err)) < 0)
		goto out;
	if (model_n_moe_layers(c) > 0 && (rc = moe_local_create(ck, o->workers, &moe, &err)) < 0)
		goto out;
	struct moe engine_moe = moe;
	if (o->stats && moe.ops) {
		counted.inner = moe;
		counted.n_experts = c->n_routed_experts;
		counted.count = calloc((size_t)c->num_hidden_layers * (size_t)c->n_routed_experts,
				       sizeof(*counted.count));
		if (!counted.count) {
			fr_error_set(&err, -ENOMEM, "out of memory");
			goto out;
		}
		engine_moe = (struct moe){ &count_ops, &counted };
	}
	struct co_engine_opts eo = { .max_seqs = 1, .max_ctx = (int)total,
				     .max_batch = (int)FR_MIN(n_prompt, 512) };
	if ((rc = co_device_open(o->device, eo.max_ctx, &dev, &err)) < 0) {
		fr_error_prefix(&err, rc, "--device");
		goto out;
	}
	eo.dev_ops = dev.ops;
	eo.dev_ctx = dev.ctx;
	if ((rc = co_engine_create(w, engine_moe, &eo, &e, &err)) < 0)
		goto out;

	ids = realloc(ids, total * sizeof(*ids));
	seq = calloc(total, sizeof(*seq));
	pos = malloc(total * sizeof(*pos));
	logits = malloc(n_prompt * (size_t)c->vocab_size * sizeof(float));
	scratch = malloc(co_sample_scratch_size(c->vocab_size));
	if (!ids || !seq || !pos || !logits || !scratch) {
		fr_error_set(&err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < total; i++)
		pos[i] = (int32_t)i;
	if (o->dump_logits && !(dump = fopen(o->dump_logits, "wb"))) {
		fr_error_set(&err, -errno, "%s: %s", o->dump_logits, strerror(errno));
		goto out;
	}

	t0 = fr_now_ns();
	bool *want = NULL;
	if (!dump) {
		/* Only the last prompt position's logits are needed. */
		want = calloc(n_prompt, sizeof(*want));
		if (!want) {
			fr_error_set(&err, -ENOMEM, "out of memory");
			goto out;
		}
		want[n_prompt - 1] = true;
	}
	rc = co_engine_forward(e, (int)n_prompt, ids, seq, pos, want, &o->knobs, logits);
	free(want);
	if (rc < 0) {
		fr_error_set(&err, rc, "prefill failed: %s", strerror(-rc));
		goto out;
	}
	if (dump && write_all(dump, logits, n_prompt, c->vocab_size) < 0) {
		fr_error_set(&err, -EIO, "%s: write failed", o->dump_logits);
		goto out;
	}
	t1 = fr_now_ns();

	struct co_sample_params smp = { .temperature = o->temperature, .top_p = o->top_p,
					.seed = o->seed };
	uint64_t rng = o->seed;
	float *last = logits + (n_prompt - 1) * (size_t)c->vocab_size;
	size_t n_gen = 0;
	for (size_t i = n_prompt; i < total; i++) {
		int32_t tok = co_sample_full(&smp, &rng, last, c->vocab_size, NULL, 0, scratch);
		ids[i] = tok;
		n_gen++;
		printf("%s%d", n_gen > 1 ? " " : "", tok);
		fflush(stdout);
		if (i + 1 == total || (o->stop_at_eos && tok == c->eos_token_id))
			break;
		rc = co_engine_forward(e, 1, ids + i, seq + i, pos + i, NULL, &o->knobs, logits);
		if (rc < 0) {
			fr_error_set(&err, rc, "decode step %zu failed: %s", n_gen, strerror(-rc));
			goto out;
		}
		last = logits;
		if (dump && write_all(dump, logits, 1, c->vocab_size) < 0) {
			fr_error_set(&err, -EIO, "%s: write failed", o->dump_logits);
			goto out;
		}
	}
	printf("\n");
	fflush(stdout);
	t2 = fr_now_ns();
	if (o->stats) {
		double pre_s = (double)(t1 - t0) / 1e9, dec_s = (double)(t2 - t1) / 1e9;
		fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s); decode: %zu tokens in %.3f s (%.2f tok/s); isa=%s threads=%d precision=%s\n",
			n_prompt, pre_s, (double)n_prompt / pre_s, n_gen, dec_s,
			n_gen > 1 ? (double)(n_gen - 1) / dec_s : 0.0, kn_ops()->name, kn_threads(),
			kn_fast_active() ? "fast" : "exact");
		if (counted.count)
			print_expert_load(c, &counted);
	}
	ret = CTL_EXIT_OK;
out:
	if (dump && fclose(dump) != 0 && ret == CTL_EXIT_OK) {
		fr_error_set(&err, -EIO, "%s: close failed", o->dump_logits);
		ret = CTL_EXIT_FAIL;
	}
	if (ret != CTL_EXIT_OK)
		fprintf(stderr, "ferryctl run: %s\n", err.msg[0] ? err.msg : "failed");
	co_engine_destroy(e);
	co_device_close(&dev);
	moe_destroy(&moe);
	free(counted.count);
	model_weights_free(w);
	model_ckpt_close(ck);
	free(ids);
	free(seq);
	free(pos);
	free(logits);
	free(scratch);
	return ret;
}

/* The same run through a cluster: one Generate stream. */
static int run_cluster(const struct run_opts *o)
{
#ifdef FERRY_HAVE_GRPC
	Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct rpc_stream *st = NULL;
	int32_t *ids = NULL;
	size_t n_prompt, n_gen = 0, n_rows = 0;
	FILE *dump = NULL;
	int rc, ret = CTL_EXIT_FAIL;
	uint64_t t0 = fr_now_ns(), t1 = 0, t_last = 0, gap = 0;

	if ((rc = fr_parse_ids(o->tokens, INT32_MAX, &ids, &n_prompt, &err)) < 0) {
		fr_error_prefix(&err, rc, "--tokens");
		goto out;
	}
	if (n_prompt == 0) {
		fr_error_set(&err, -EINVAL, "--tokens: the prompt is empty");
		goto out;
	}
	if (o->dump_logits && !(dump = fopen(o->dump_logits, "wb"))) {
		fr_error_set(&err, -errno, "%s: %s", o->dump_logits, strerror(errno));
		goto out;
	}
	req.n_prompt_tokens = n_prompt;
	req.prompt_tokens = ids;
	/* --max-new 0 only evaluates: ask for one token and drop it (its logits row is the
	 * prompt's last, which comes with the prompt rows). */
	req.max_tokens = (uint32_t)FR_MAX(o->max_new, 1);
	req.temperature = o->temperature;
	req.top_p = o->top_p;
	req.seed = o->seed;
	req.return_logits = dump != NULL;
	req.routed_top_k = (uint32_t)o->knobs.top_k;
	req.mask_top = (uint32_t)o->knobs.mask_top;
	req.no_shared_experts = o->knobs.no_shared;
	req.ignore_eos = !o->stop_at_eos;
	if ((rc = ctl_channel_create(o->cluster, &o->tls, &ch, &err)) < 0 ||
	    (rc = rpc_stream_open(ch, RPC_M_GENERATE, &req.base,
				  &ferry__v1__generate_response__descriptor, 0, &st, &err)) < 0)
		goto out;
	for (;;) {
		Ferry__V1__GenerateResponse *m = NULL;
		rc = rpc_stream_next(st, (ProtobufCMessage **)&m, &err);
		if (rc <= 0)
			break;
		if (m->n_logits && m->logits_rows &&
		    m->n_logits % m->logits_rows == 0 && dump) {
			if (fwrite(m->logits, sizeof(float), m->n_logits, dump) != m->n_logits) {
				protobuf_c_message_free_unpacked(&m->base, NULL);
				fr_error_set(&err, -EIO, "%s: write failed", o->dump_logits);
				goto out;
			}
			n_rows += m->logits_rows;
		}
		if (m->n_tokens && o->max_new > 0) {
			uint64_t now = fr_now_ns();
			if (t_last)
				gap = FR_MAX(gap, now - t_last);
			t_last = now;
		}
		for (size_t i = 0; i < m->n_tokens && o->max_new > 0; i++) {
			if (!t1)
				t1 = fr_now_ns();
			printf("%s%d", n_gen++ ? " " : "", m->tokens[i]);
			fflush(stdout);
		}
		protobuf_c_message_free_unpacked(&m->base, NULL);
	}
	if (rc < 0)
		goto out;
	printf("\n");
	fflush(stdout);
	if (o->stats) {
		uint64_t t2 = fr_now_ns();
		double pre_s = (double)((t1 ? t1 : t2) - t0) / 1e9, dec_s = (double)(t2 - (t1 ? t1 : t2)) / 1e9;
		fprintf(stderr, "cluster %s: first token after %.3f s (%zu prompt tokens); decode: %zu "
			"tokens in %.3f s (%.2f tok/s); %zu logits rows; longest pause between "
			"tokens %.3f s\n", o->cluster, pre_s, n_prompt, n_gen, dec_s,
			n_gen > 1 ? (double)(n_gen - 1) / dec_s : 0.0, n_rows, (double)gap / 1e9);
	}
	ret = CTL_EXIT_OK;
out:
	rpc_stream_destroy(st);
	rpc_channel_destroy(ch);
	if (dump && fclose(dump) != 0 && ret == CTL_EXIT_OK) {
		fr_error_set(&err, -EIO, "%s: close failed", o->dump_logits);
		ret = CTL_EXIT_FAIL;
	}
	if (ret != CTL_EXIT_OK)
		fprintf(stderr, "ferryctl run: %s\n", err.msg[0] ? err.msg : "failed");
	free(ids);
	return ret;
#else
	fprintf(stderr, "ferryctl run: --cluster needs gRPC, which this build lacks\n");
	return CTL_EXIT_FAIL;
#endif
}

static int run_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct run_opts o;
	int rc = ctl_parsed("run", run_usage, run_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	return o.cluster ? run_cluster(&o) : run_exec(&o);
}

static int run_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct run_opts o;
	int rc = run_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_run = { "run", "run a model, in this process or on a cluster", run_main,
				     run_parse_only };
