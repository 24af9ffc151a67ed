/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_model.c - `ferryctl model gen|info`: synthetic checkpoints and checkpoint summaries. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "model/model.h"

enum model_sub {
	MODEL_SUB_GEN = 0,
	MODEL_SUB_INFO,
};

struct model_cmd_opts {
	enum model_sub sub;
	struct model_gen_opts gen;
	const char *dir;
	bool quiet;
};

static const char model_usage[] =
	"Usage: ferryctl model gen --preset NAME [OPTIONS] DIR\n"
	"       ferryctl model info DIR\n"
	"\n"
	"  gen    write a deterministic synthetic HF checkpoint (config.json + safetensors)\n"
	"  info   print a checkpoint's config summary and parameter counts\n"
	"\n"
	"`ferryctl model gen --help` and `ferryctl model info --help` describe each.\n";

static const char gen_usage[] =
	"Usage: ferryctl model gen --preset tiny|2b|16b|145b [OPTIONS] DIR\n"
	"\n"
	"Writes a synthetic DeepSeekMoE checkpoint into DIR (created if needed): config.json and\n"
	"model.safetensors, or N shards plus model.safetensors.index.json. Weights are a pure\n"
	"function of (seed, tensor name, element): the same options give byte-identical files,\n"
	"and bf16 files hold the rounded values of the f32 ones. Memory stays bounded (a few MB)\n"
	"whatever the size; files appear under their final names only when complete.\n"
	"\n"
	"  -p, --preset NAME   tiny (2.0M params), 2b (2.0B), 16b (16.4B, deepseek-moe-16b-base's\n"
	"                      config), 145b (144.5B)\n"
	"  -l, --layers N      keep the first N layers (first_k_dense_replace stays, so 2 gives one\n"
	"                      dense and one MoE layer); default: all\n"
	"  -d, --dtype T       bf16 (default) or f32\n"
	"  -s, --seed S        weight seed, 0..2^64-1 (default 0)\n"
	"  -n, --shards N      split into N files of about equal size (default 1, at most 256)\n"
	"  -j, --threads N     generator threads (default 1; more help only on idle cores)\n"
	"      --skew S        steerable routing load, S in [0, 100] (default 0: uniform-ish\n"
	"                      random routers, files as without the option): every MoE layer's\n"
	"                      router favours its own hot set, expert of rank r chosen first\n"
	"                      with probability ~ r^-S (Zipf), one hot set for prompts of tokens\n"
	"                      in [0, vocab/2) and another for [vocab/2, vocab); recorded in\n"
	"                      DIR/ferry-gen.json, shown by `model info`\n"
	"  -t, --tokenizer FILE  a HuggingFace tokenizer.json: copied into DIR (with the\n"
	"                      tokenizer_config.json beside it, if any); the vocabulary size and\n"
	"                      BOS/EOS ids become the tokenizer's, so text works end to end\n"
	"  -q, --quiet         no progress on stderr\n"
	"  -h, --help          this text\n"
	"\n"
	"Example: ferryctl model gen --preset 145b --layers 2 /tmp/m145\n"
	"         ferryctl model gen --preset 2b --layers 3 --skew 1.2 /tmp/skewed\n"
	"         ferryctl model gen --preset tiny --tokenizer tokenizer.json /tmp/tiny\n";

static const char info_usage[] =
	"Usage: ferryctl model info DIR\n"
	"\n"
	"Opens the checkpoint in DIR (config.json, safetensors, index), checks that every tensor\n"
	"the config implies is there with the right shape, and prints the config summary and\n"
	"parameter counts (total, routed experts, coordinator side, active per token); for a\n"
	"checkpoint generated with --skew, the routing load it was made to have.\n";

enum { OPT_QUIET = 'q', OPT_SKEW = 256 };

static const struct option gen_longopts[] = {
	{ "preset", required_argument, NULL, 'p' },
	{ "layers", required_argument, NULL, 'l' },
	{ "dtype", required_argument, NULL, 'd' },
	{ "seed", required_argument, NULL, 's' },
	{ "shards", required_argument, NULL, 'n' },
	{ "threads", required_argument, NULL, 'j' },
	{ "tokenizer", required_argument, NULL, 't' },
	{ "skew", required_argument, NULL, OPT_SKEW },
	{ "quiet", no_argument, NULL, OPT_QUIET },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static const struct option info_longopts[] = {
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* Strict unsigned 64-bit: decimal or 0x hex, no sign, no junk. */
static int parse_u64(const char *s, uint64_t *ret)
{
	char *end;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* Returns 0, 1 for --help (usage text in *ret_usage), or -EINVAL with err set. */
static int model_parse(int argc, char **argv, struct model_cmd_opts *o, const char **ret_usage,
		       struct fr_error *err)
{
	const struct option *longopts;
	const char *shortopts;
	bool have_preset = false;
	int64_t v;
	int c;

	memset(o, 0, sizeof(*o));
	o->gen.dtype = KN_DTYPE_BF16;
	o->gen.shards = 1;
	*ret_usage = model_usage;

	if (argc < 2)
		return fr_error_set(err, -EINVAL, "missing subcommand (gen or info)");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
		return 1;
	if (!strcmp(argv[1], "gen")) {
		o->sub = MODEL_SUB_GEN;
		*ret_usage = gen_usage;
		longopts = gen_longopts;
		shortopts = ":p:l:d:s:n:j:t:qh";
	} else if (!strcmp(argv[1], "info")) {
		o->sub = MODEL_SUB_INFO;
		*ret_usage = info_usage;
		longopts = info_longopts;
		shortopts = ":h";
	} else {
		return fr_error_set(err, -EINVAL, "unknown subcommand '%s' (gen or info)", argv[1]);
	}

	/* getopt sees argv from the subcommand on. */
	argc--;
	argv++;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (model_preset_parse(optarg, &o->gen.preset) < 0)
				return fr_error_set(err, -EINVAL,
						    "--preset: '%s' is not one of tiny, 2b, 16b, 145b",
						    optarg);
			have_preset = true;
			break;
		case 'l':
			if (fr_parse_i64(optarg, 1, MODEL_MAX_LAYERS, &v) < 0)
				return fr_error_set(err, -EINVAL,
						    "--layers: '%s' is not an integer >= 1", optarg);
			o->gen.layers = (int)v;
			break;
		case 'd':
			if (!strcmp(optarg, "bf16") || !strcmp(optarg, "bfloat16"))
				o->gen.dtype = KN_DTYPE_BF16;
			else if (!strcmp(optarg, "f32") || !strcmp(optarg, "float32"))
				o->gen.dtype = KN_DTYPE_F32;
			else
				return fr_error_set(err, -EINVAL,
						    "--dtype: '%s' is not bf16 or f32", optarg);
			break;
		case 's':
			if (parse_u64(optarg, &o->gen.seed) < 0)
				return fr_error_set(err, -EINVAL,
						    "--seed: '%s' is not an integer in [0, 2^64)",
						    optarg);
			break;
		case 'n':
			if (fr_parse_i64(optarg, 1, 256, &v) < 0)
				return fr_error_set(err, -EINVAL,
						    "--shards: '%s' is not an integer in [1, 256]",
						    optarg);
			o->gen.shards = (int)v;
			break;
		case 'j':
			if (fr_parse_i64(optarg, 1, 1024, &v) < 0)
				return fr_error_set(err, -EINVAL,
						    "--threads: '%s' is not an integer in [1, 1024]",
						    optarg);
			o->gen.threads = (int)v;
			break;
		case 't':
			if (!*optarg)
				return fr_error_set(err, -EINVAL, "--tokenizer: empty path");
			o->gen.tokenizer = optarg;
			break;
		case OPT_SKEW:
			if (fr_parse_double(optarg, &o->gen.skew) < 0 || !(o->gen.skew >= 0) ||
			    o->gen.skew > MODEL_GEN_MAX_SKEW)
				return fr_error_set(err, -EINVAL,
						    "--skew: '%s' is not a number in [0, %d]", optarg,
						    MODEL_GEN_MAX_SKEW);
			o->gen.skew = o->gen.skew > 0 ? o->gen.skew : 0; /* -0 */
			break;
		case OPT_QUIET:
			o->quiet = true;
			break;
		case 'h':
			return 1;
		case ':':
			return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default:
			return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return fr_error_set(err, -EINVAL, "missing DIR");
	if (optind + 1 < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind + 1]);
	o->dir = argv[optind];
	if (o->sub == MODEL_SUB_GEN) {
		struct model_config pc;
		if (!have_preset)
			return fr_error_set(err, -EINVAL, "--preset is required");
		model_preset_config(o->gen.preset, &pc);
		if (o->gen.layers > pc.num_hidden_layers)
			return fr_error_set(err, -EINVAL, "--layers %d: preset %s has %d layers",
					    o->gen.layers, model_preset_name(o->gen.preset),
					    pc.num_hidden_layers);
	}
	return 0;
}

/* ---- gen ---------------------------------------------------------------------------------- */

struct gen_progress {
	bool tty;
	uint64_t t0, last_ns;
	int last_decile;
};

static void gen_progress_cb(uint64_t done, uint64_t total, void *ctx)
{
	struct gen_progress *p = ctx;
	uint64_t now = fr_now_ns();
	double pct = total ? 100.0 * (double)done / (double)total : 100.0;
	double secs = (double)(now - p->t0) / 1e9;

	if (p->tty) {
		if (done < total && now - p->last_ns < 200000000ull)
			return;
		p->last_ns = now;
		fprintf(stderr, "\rgen: %.2f / %.2f GB (%3.0f%%) %.0f MB/s ", (double)done / 1e9,
			(double)total / 1e9, pct, secs > 0 ? (double)done / 1e6 / secs : 0.0);
		if (done == total)
			fputc('\n', stderr);
		return;
	}
	/* Not a terminal (logs, CI): a terse line per 10%, only for models worth waiting on. */
	if (total < (256ull << 20))
		return;
	int decile = (int)(pct / 10);
	if (decile <= p->last_decile)
		return;
	p->last_decile = decile;
	fprintf(stderr, "gen: %.2f / %.2f GB (%d%%) %.1f s\n", (double)done / 1e9,
		(double)total / 1e9, decile * 10, secs);
}

static void fmt_count(char *buf, size_t n, int64_t v)
{
	if (v >= 1000000000)
		snprintf(buf, n, "%.2fB", (double)v / 1e9);
	else if (v >= 1000000)
		snprintf(buf, n, "%.2fM", (double)v / 1e6);
	else
		snprintf(buf, n, "%" PRId64, v);
}

static int gen_exec(struct model_cmd_opts *o)
{
	struct fr_error err = { { 0 } };
	struct gen_progress prog = { .tty = isatty(STDERR_FILENO) == 1, .last_decile = 0 };
	struct model_param_counts pc;
	struct model_config cfg;
	char params[32];
	uint64_t bytes = 0;
	int rc;

	prog.t0 = fr_now_ns();
	if (!o->quiet) {
		o->gen.progress = gen_progress_cb;
		o->gen.progress_ctx = &prog;
	}
	rc = model_gen(&o->gen, o->dir, &err);
	if (rc < 0) {
		if (prog.tty && !o->quiet)
			fputc('\n', stderr);
		fprintf(stderr, "ferryctl model gen: %s\n", err.msg[0] ? err.msg : strerror(-rc));
		return CTL_EXIT_FAIL;
	}
	/* The summary comes from the config the generator wrote. */
	if ((rc = model_config_load(o->dir, &cfg, &err)) < 0) {
		fprintf(stderr, "ferryctl model gen: %s\n", err.msg[0] ? err.msg : strerror(-rc));
		return CTL_EXIT_FAIL;
	}
	model_param_count(&cfg, &pc);
	bytes = (uint64_t)pc.total * kn_dtype_size(o->gen.dtype);
	fmt_count(params, sizeof(params), pc.total);
	char skew[48] = "";
	if (o->gen.skew > 0)
		snprintf(skew, sizeof(skew), ", skew %g", o->gen.skew);
	printf("%s: preset %s, %d layers, %s, seed %" PRIu64 "%s: %s params (%" PRId64 "), "
	       "%.2f GB of weights in %d safetensors file%s%s%s, %.1f s\n",
	       o->dir, model_preset_name(o->gen.preset), cfg.num_hidden_layers,
	       kn_dtype_name(o->gen.dtype), o->gen.seed, skew, params, pc.total,
	       (double)bytes / 1e9, o->gen.shards, o->gen.shards > 1 ? "s" : "",
	       o->gen.shards > 1 ? " + index" : "", o->gen.tokenizer ? " + tokenizer.json" : "",
	       (double)(fr_now_ns() - prog.t0) / 1e9);
	return CTL_EXIT_OK;
}

/* ---- info --------------------------------------------------------------------------------- */

static int info_exec(const struct model_cmd_opts *o)
{
	struct fr_error err = { { 0 } };
	struct model_ckpt *ck = NULL;
	struct model_weights *w = NULL;
	struct model_param_counts pc;
	struct model_gen_skew_info skew;
	const struct model_config *c;
	char total[32], routed[32], coord[32], active[32];
	int rc, ret = CTL_EXIT_FAIL;

	if ((rc = model_ckpt_open(o->dir, &ck, &err)) < 0)
		goto out;
	c = model_ckpt_config(ck);
	/* Binding checks every tensor's presence, shape and dtype. */
	if ((rc = model_weights_bind(ck, MODEL_BIND_ALL, &w, &err)) < 0)
		goto out;
	model_param_count(c, &pc);
	fmt_count(total, sizeof(total), pc.total);
	fmt_count(routed, sizeof(routed), pc.routed);
	fmt_count(coord, sizeof(coord), pc.coordinator);
	fmt_count(active, sizeof(active), pc.active);

	int n_moe = model_n_moe_layers(c);
	printf("%s: %s, %s\n", o->dir, c->model_type, kn_dtype_name(c->torch_dtype));
	printf("  layers %d (%d dense, %d MoE), hidden %d, heads %d x %d (kv %d), vocab %d, "
	       "max positions %d\n", c->num_hidden_layers, c->num_hidden_layers - n_moe, n_moe,
	       c->hidden_size, c->num_attention_heads, c->head_dim, c->num_key_value_heads,
	       c->vocab_size, c->max_position_embeddings);
	printf("  dense FFN %d; experts: %d shared + %d routed of width %d, top-%d %s%s\n",
	       c->intermediate_size, c->n_shared_experts, c->n_routed_experts,
	       c->moe_intermediate_size, c->num_experts_per_tok,
	       c->scoring_func == KN_SCORING_SIGMOID ? "sigmoid" : "softmax",
	       c->norm_topk_prob ? ", renormalized" : "");
	printf("  params: %s total (%" PRId64 "), %s routed experts, %s coordinator side "
	       "(%.2f GB in bf16), %s active per token\n", total, pc.total, routed, coord,
	       (double)pc.coordinator * 2 / 1e9, active);
	if ((rc = model_gen_skew_read(o->dir, &skew, &err)) < 0)
		goto out;
	if (skew.skew > 0 && n_moe > 0)
		printf("  skew %g: expected max/mean expert load ~%.1f (Zipf exponent %g over %d "
		       "experts, top-%d), hot sets: vocabulary halves [0,%d) and [%d,%d)\n",
		       skew.skew, model_gen_skew_load(skew.skew, c->n_routed_experts,
						      c->num_experts_per_tok),
		       skew.skew, c->n_routed_experts, c->num_experts_per_tok, skew.vocab_split,
		       skew.vocab_split, c->vocab_size);
	ret = CTL_EXIT_OK;
out:
	if (ret != CTL_EXIT_OK)
		fprintf(stderr, "ferryctl model info: %s\n", err.msg[0] ? err.msg : strerror(-rc));
	model_weights_free(w);
	model_ckpt_close(ck);
	return ret;
}

static int model_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct model_cmd_opts o;
	const char *usage;
	int rc;

	rc = model_parse(argc, argv, &o, &usage, &err);
	if (rc == 1) {
		fputs(usage, stdout);
		return CTL_EXIT_OK;
	}
	if (rc < 0) {
		fprintf(stderr, "ferryctl model: %s\n(see ferryctl model%s --help)\n", err.msg,
			usage == gen_usage ? " gen" : usage == info_usage ? " info" : "");
		return CTL_EXIT_USAGE;
	}
	return o.sub == MODEL_SUB_GEN ? gen_exec(&o) : info_exec(&o);
}

static int model_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct model_cmd_opts o;
	const char *usage;
	int rc = model_parse(argc, argv, &o, &usage, err);

	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_model = { "model", "synthetic checkpoints (model gen, model info)",
				       model_main, model_parse_only };
