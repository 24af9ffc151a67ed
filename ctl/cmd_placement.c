/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_placement.c - `ferryctl placement plan`: solves an expert placement for a load-profile
 * file offline (the same solver a coordinator runs), reports its balancedness and the slots
 * it moves relative to a previous placement, and writes it as a placement file.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "placement/placement.h"

struct plan_opts {
	const char *profile, *prev, *out;
	int n_workers;         /* 0 until --workers or a --slots list gives it */
	int slot_each;         /* --slots S: every worker's count; 0 with a list */
	int *slots;            /* [n_workers] heap, a --slots list (or filled from slot_each) */
	int min_distinct;
	long max_moves;        /* -1: no cap */
	double tolerance;
	enum co_place_algo algo;
	bool json;
};

static const char placement_usage[] =
	"Usage: ferryctl placement plan --profile FILE (--workers N --slots S | --slots S1,S2,...)\n"
	"                               [OPTIONS]\n"
	"       ferryctl placement show --cluster ADDR [--layer L]... [--json]\n"
	"\n"
	"  plan   solve an expert placement for a load profile, offline\n"
	"  show   where every expert of a running cluster lives, with its load\n"
	"\n"
	"`ferryctl placement plan --help` and `ferryctl placement show --help` describe them.\n";

static const char plan_usage[] =
	"Usage: ferryctl placement plan --profile FILE (--workers N --slots S | --slots S1,S2,...)\n"
	"           [--min-distinct K] [--prev PLACEMENT] [--max-moves M] [--tolerance T]\n"
	"           [--algo ferry|eplb] [--out PLACEMENT] [--json]\n"
	"\n"
	"Solves where every MoE layer's routed experts go for the expert loads of a load-profile\n"
	"file (JSON: {\"layers\": [[load of expert 0, 1, ...] per MoE layer]}, e.g. from the\n"
	"window a coordinator measured), with the solver a coordinator runs, and prints each\n"
	"layer's balancedness (mean / max of the per-worker load under the profile, an expert's\n"
	"load split between its replicas as the dispatch splits it, to the least-loaded; 1 is\n"
	"perfect), their mean and worst, and the\n"
	"number of slots whose expert changes relative to --prev (the expert weights workers\n"
	"must load to switch; without --prev, every slot).\n"
	"\n"
	"  -p, --profile FILE   the load profile (required)\n"
	"  -w, --workers N      number of workers, each with --slots S slots per layer\n"
	"  -s, --slots S|LIST   slots per layer of every worker (with --workers), or one count\n"
	"                       per worker: 10,10,12 (then --workers may be left out)\n"
	"  -d, --min-distinct K every expert on at least K different workers (default 1)\n"
	"  -P, --prev FILE      the placement in force (a placement file, as --out writes);\n"
	"                       the solver keeps experts where they are when that costs little\n"
	"                       load, and moves are counted against it. Same layers, experts,\n"
	"                       workers and slots as the plan.\n"
	"  -m, --max-moves M    with --prev: move at most M slots in all. The solver has no such\n"
	"                       bound; layers are given back their --prev layout, those that\n"
	"                       gain the least balancedness per moved slot first, until the plan\n"
	"                       fits (co_place_cap_moves)\n"
	"  -t, --tolerance T    with --prev: keep a layer's layout (or one closer to it) unless\n"
	"                       the best one found lowers its largest worker load by more than\n"
	"                       a factor 1 + T (default 0: best load, moves break ties).\n"
	"                       T > 0 also starts from --prev and moves replicas only until\n"
	"                       the largest load is within 1 + T of a lower bound, or as low\n"
	"                       as a from-scratch EPLB solve would get it\n"
	"      --algo A         ferry (default) or eplb (EPLB's global policy, for comparison)\n"
	"  -o, --out FILE       write the plan as a placement file (JSON: n_workers, slots, and\n"
	"                       per layer the expert in every slot, workers in order, -1 empty)\n"
	"      --json           print {\"layers\":[{\"layer\":L,\"balancedness\":B},...],\n"
	"                       \"balancedness_mean\":M,\"balancedness_worst\":W,\"moves\":K,\n"
	"                       \"slots_total\":T} (T: slots of all layers) instead of the table\n"
	"  -h, --help           this text\n"
	"\n"
	"Exit codes: 0 success; 2 bad arguments; 1 a bad or missing file, slots too few for the\n"
	"profile's experts (or for --min-distinct), a --prev of another shape, a failed write.\n"
	"Example: ferryctl placement plan --profile load.json --workers 8 --slots 18 \\\n"
	"             --prev now.json --max-moves 800 --out next.json\n";

enum { PLAN_JSON = 256, PLAN_ALGO };

static const struct option plan_longopts[] = {
	{ "profile", required_argument, NULL, 'p' },
	{ "workers", required_argument, NULL, 'w' },
	{ "slots", required_argument, NULL, 's' },
	{ "min-distinct", required_argument, NULL, 'd' },
	{ "prev", required_argument, NULL, 'P' },
	{ "max-moves", required_argument, NULL, 'm' },
	{ "tolerance", required_argument, NULL, 't' },
	{ "algo", required_argument, NULL, PLAN_ALGO },
	{ "out", required_argument, NULL, 'o' },
	{ "json", no_argument, NULL, PLAN_JSON },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static void plan_opts_fini(struct plan_opts *o)
{
	free(o->slots);
	o->slots = NULL;
}

/* "10,10,12" -> o->slots, o->n_workers. */
static int parse_slot_list(const char *s, struct plan_opts *o, struct fr_error *err)
{
	int n = 1, i = 0;

	for (const char *c = s; *c; c++)
		n += *c == ',';
	if (n > CO_PLACE_MAX_WORKERS)
		return fr_error_set(err, -EINVAL, "--slots: %d counts, more than %d workers", n,
				    CO_PLACE_MAX_WORKERS);
	free(o->slots);
	o->slots = calloc((size_t)n, sizeof(*o->slots));
	if (!o->slots)
		return fr_error_set(err, -ENOMEM, "--slots: out of memory");
	for (const char *c = s;; i++) {
		size_t len = strcspn(c, ",");
		char item[24];
		int64_t v;

		if (len == 0 || len >= sizeof(item))
			return fr_error_set(err, -EINVAL, "--slots: item %d of '%.64s' is not a "
					    "count", i + 1, s);
		memcpy(item, c, len);
		item[len] = '\0';
		if (fr_parse_i64(item, 0, CO_PLACE_MAX_SLOTS, &v) < 0)
			return fr_error_set(err, -EINVAL, "--slots: '%s' (worker %d) is not an "
					    "integer in [0, %d]", item, i, CO_PLACE_MAX_SLOTS);
		o->slots[i] = (int)v;
		if (!c[len])
			break;
		c += len + 1;
	}
	o->n_workers = n;
	o->slot_each = 0;
	return 0;
}

/* Returns 0, 1 for --help (usage text in *ret_usage), or -EINVAL with err set. o->slots is
 * heap-owned by o either way (plan_opts_fini()). */
static int plan_parse(int argc, char **argv, struct plan_opts *o, const char **ret_usage,
		      struct fr_error *err)
{
	int c, workers = 0, rc;
	bool slot_list = false;
	int64_t v;

	memset(o, 0, sizeof(*o));
	o->max_moves = -1;
	o->min_distinct = 1;
	*ret_usage = placement_usage;
	if (argc < 2)
		return fr_error_set(err, -EINVAL, "missing subcommand (plan, show)");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))
		return 1;
	if (strcmp(argv[1], "plan"))
		return fr_error_set(err, -EINVAL, "unknown subcommand '%.64s' (plan, show)", argv[1]);
	*ret_usage = plan_usage;
	argc--;
	argv++;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":p:w:s:d:P:m:t:o:h", plan_longopts, NULL)) != -1) {
		switch (c) {
		case 'p': o->profile = optarg; break;
		case 'P': o->prev = optarg; break;
		case 'o': o->out = optarg; break;
		case 'w':
			if (ctl_arg_int("workers", optarg, 1, CO_PLACE_MAX_WORKERS, &workers, err) < 0)
				return -EINVAL;
			break;
		case 's':
			if (strchr(optarg, ',')) {
				if ((rc = parse_slot_list(optarg, o, err)) < 0)
					return rc;
				slot_list = true;
			} else {
				if (ctl_arg_int("slots", optarg, 0, CO_PLACE_MAX_SLOTS, &o->slot_each,
						err) < 0)
					return -EINVAL;
				slot_list = false;
			}
			break;
		case 'd':
			if (ctl_arg_int("min-distinct", optarg, 1, CO_PLACE_MAX_WORKERS,
					&o->min_distinct, err) < 0)
				return -EINVAL;
			break;
		case 'm':
			if (ctl_arg_i64("max-moves", optarg, 0, INT64_MAX / 2, &v, err) < 0)
				return -EINVAL;
			o->max_moves = (long)v;
			break;
		case 't':
			if (fr_parse_double(optarg, &o->tolerance) < 0 || !isfinite(o->tolerance) ||
			    o->tolerance < 0)
				return fr_error_set(err, -EINVAL, "--tolerance: '%.64s' is not a "
						    "number >= 0", optarg);
			break;
		case PLAN_ALGO:
			if (!strcmp(optarg, "ferry"))
				o->algo = CO_PLACE_ALGO_FERRY;
			else if (!strcmp(optarg, "eplb"))
				o->algo = CO_PLACE_ALGO_EPLB;
			else
				return fr_error_set(err, -EINVAL, "--algo: '%.64s' is not ferry or "
						    "eplb", optarg);
			break;
		case PLAN_JSON: o->json = true; break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%.64s'", argv[optind]);
	if (!o->profile)
		return fr_error_set(err, -EINVAL, "--profile FILE is required");
	if (slot_list) {
		if (workers && workers != o->n_workers)
			return fr_error_set(err, -EINVAL, "--workers %d, but --slots lists %d counts",
					    workers, o->n_workers);
	} else {
		free(o->slots);
		o->slots = NULL;
		if (workers && !o->slot_each)
			return fr_error_set(err, -EINVAL, "--workers N needs --slots S (slots per "
					    "layer of each worker)");
		if (!workers)
			return fr_error_set(err, -EINVAL, o->slot_each ?
					    "--slots S needs --workers N (or give one count per "
					    "worker: --slots 10,10,12)" :
					    "give --workers N --slots S, or --slots S1,S2,...");
		o->slots = calloc((size_t)workers, sizeof(*o->slots));
		if (!o->slots)
			return fr_error_set(err, -ENOMEM, "out of memory");
		for (int w = 0; w < workers; w++)
			o->slots[w] = o->slot_each;
		o->n_workers = workers;
	}
	if (o->max_moves >= 0 && !o->prev)
		return fr_error_set(err, -EINVAL, "--max-moves needs --prev (moves are counted "
				    "against the placement in force)");
	return 0;
}

static int plan_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct plan_opts o;
	const char *usage;
	int rc = plan_parse(argc, argv, &o, &usage, err);

	plan_opts_fini(&o);
	return rc < 0 ? rc : 0;
}

static void print_json(const struct co_place_stats *st, int L, double mean, double worst,
		       long moves, long total)
{
	json_t *root = json_object(), *layers = json_array();
	char *text;

	for (int l = 0; l < L; l++) {
		json_t *x = json_object();
		json_object_set_new(x, "layer", json_integer(l));
		json_object_set_new(x, "balancedness", json_real(st[l].balancedness));
		json_array_append_new(layers, x);
	}
	json_object_set_new(root, "layers", layers);
	json_object_set_new(root, "balancedness_mean", json_real(mean));
	json_object_set_new(root, "balancedness_worst", json_real(worst));
	json_object_set_new(root, "moves", json_integer(moves));
	json_object_set_new(root, "slots_total", json_integer(total));
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
	if (text)
		puts(text);
	free(text);
	json_decref(root);
}

/* Slots moved in layer l between two placements of one shape. */
static long layer_moves(const struct co_placement *a, const struct co_placement *b, int l)
{
	const int32_t *x = a->slot_expert + (size_t)l * a->total_slots;
	const int32_t *y = b->slot_expert + (size_t)l * b->total_slots;
	long m = 0;

	for (int g = 0; g < a->total_slots; g++)
		m += x[g] != y[g];
	return m;
}

/* "10,10,12" (",..." when it does not fit). */
static const char *fmt_slots(const int *slots, int n_workers, char *buf, size_t cap)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int w = 0; w < n_workers; w++) {
		if (n + 16 > cap) {
			snprintf(buf + n, cap - n, ",...");
			break;
		}
		n += (size_t)snprintf(buf + n, cap - n, "%s%d", w ? "," : "", slots[w]);
	}
	return buf;
}

static int plan_exec(const struct plan_opts *o)
{
	struct co_load_profile pr = { 0 };
	struct co_placement *prev = NULL, *p = NULL;
	struct co_place_stats *st = NULL, *sq = NULL;
	struct fr_error err = { { 0 } };
	int rc = CTL_EXIT_FAIL;
	long moves, total;
	double mean = 0, worst = 1;

	if (co_load_profile_read(o->profile, 0, 0, &pr, &err) < 0) {
		fprintf(stderr, "ferryctl placement plan: --profile %s\n", err.msg);
		goto out;
	}
	if (o->prev) {
		if (co_place_file_read(o->prev, 0, &prev, &err) < 0) {
			fprintf(stderr, "ferryctl placement plan: --prev %s\n", err.msg);
			goto out;
		}
		bool same = prev->n_layers == pr.n_layers && prev->n_experts == pr.n_experts &&
			    prev->n_workers == o->n_workers &&
			    !memcmp(prev->slots, o->slots, sizeof(*o->slots) * (size_t)o->n_workers);
		if (!same) {
			char a[64], b[64];
			fprintf(stderr, "ferryctl placement plan: --prev %s is %d layers x %d "
				"experts on %d workers (slots %s), the plan %d layers x %d experts "
				"on %d workers (slots %s)\n", o->prev, prev->n_layers,
				prev->n_experts, prev->n_workers,
				fmt_slots(prev->slots, prev->n_workers, a, sizeof(a)), pr.n_layers,
				pr.n_experts, o->n_workers,
				fmt_slots(o->slots, o->n_workers, b, sizeof(b)));
			goto out;
		}
	}
	struct co_place_problem pb = { pr.n_layers, pr.n_experts, o->n_workers, o->slots,
				       pr.load };
	struct co_place_opts po = { .algo = o->algo, .min_distinct = o->min_distinct,
				    .migrate_tolerance = o->tolerance };
	if (co_place_solve(&pb, &po, prev, &p, &err) < 0) {
		fprintf(stderr, "ferryctl placement plan: %s: %s\n", o->profile, err.msg);
		goto out;
	}
	total = (long)p->n_layers * p->total_slots;
	moves = total;
	if (prev) {
		moves = o->max_moves >= 0 ?
				co_place_cap_moves(p, prev, pr.load, o->min_distinct, o->max_moves) :
				co_place_moves(prev, p);
		if (moves < 0) {
			fprintf(stderr, "ferryctl placement plan: counting moves: %s\n",
				strerror((int)-moves));
			goto out;
		}
	}
	st = calloc((size_t)pr.n_layers, sizeof(*st));
	sq = calloc((size_t)pr.n_layers, sizeof(*sq));
	if (!st || !sq || co_place_evaluate(p, pr.load, st) < 0 ||
	    (prev && co_place_evaluate(prev, pr.load, sq) < 0)) {
		fprintf(stderr, "ferryctl placement plan: out of memory\n");
		goto out;
	}
	for (int l = 0; l < pr.n_layers; l++) {
		mean += st[l].balancedness / pr.n_layers;
		worst = FR_MIN(worst, st[l].balancedness);
	}
	if (o->out && co_place_file_write(p, o->out, &err) < 0) {
		fprintf(stderr, "ferryctl placement plan: --out %s\n", err.msg);
		goto out;
	}
	if (o->json) {
		print_json(st, pr.n_layers, mean, worst, moves, total);
	} else {
		printf("%d MoE layers x %d experts on %d workers, %d slots per layer, %s%s\n",
		       pr.n_layers, pr.n_experts, o->n_workers, p->total_slots,
		       o->algo == CO_PLACE_ALGO_EPLB ? "eplb" : "ferry",
		       o->min_distinct >= 2 ? ", every expert on >= min_distinct workers" : "");
		printf("%-6s %-13s%s\n", "layer", "balancedness",
		       prev ? " prev          moved" : "");
		for (int l = 0; l < pr.n_layers; l++) {
			if (prev)
				printf("%-6d %-13.4f %-13.4f %ld\n", l, st[l].balancedness,
				       sq[l].balancedness, layer_moves(prev, p, l));
			else
				printf("%-6d %.4f\n", l, st[l].balancedness);
		}
		printf("balancedness mean %.4f, worst %.4f\n", mean, worst);
		printf("moves %ld of %ld slots (%.1f%%)%s\n", moves, total,
		       total ? 100.0 * (double)moves / (double)total : 0.0,
		       prev ? " relative to --prev" : ": no --prev, every slot is loaded");
	}
	rc = CTL_EXIT_OK;
out:
	free(st);
	free(sq);
	co_place_destroy(p);
	co_place_destroy(prev);
	co_load_profile_fini(&pr);
	return rc;
}

static int placement_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct plan_opts o;
	const char *usage;
	int rc;

	if (argc >= 2 && !strcmp(argv[1], "show")) {
#ifdef FERRY_HAVE_GRPC
		return ctl_placement_show_main(argc - 1, argv + 1);
#else
		fprintf(stderr, "ferryctl placement show: built without gRPC\n");
		return CTL_EXIT_FAIL;
#endif
	}
	rc = plan_parse(argc, argv, &o, &usage, &err);

	if (rc == -ENOMEM) {
		fprintf(stderr, "ferryctl placement: %s\n", err.msg);
		plan_opts_fini(&o);
		return CTL_EXIT_FAIL;
	}
	rc = ctl_parsed(rc == 1 || argc < 2 || strcmp(argv[1], "plan") ? "placement" :
			"placement plan", usage, rc, &err);
	if (rc < 0)
		rc = plan_exec(&o);
	plan_opts_fini(&o);
	return rc;
}

static int placement_parse_only(int argc, char **argv, struct fr_error *err)
{
#ifdef FERRY_HAVE_GRPC
	if (argc >= 2 && !strcmp(argv[1], "show"))
		return ctl_placement_show_parse_only(argc - 1, argv + 1, err);
#endif
	return plan_parse_only(argc, argv, err);
}

const struct ctl_cmd ctl_cmd_placement = { "placement",
					   "plan a placement offline, or show a cluster's",
					   placement_main, placement_parse_only };
