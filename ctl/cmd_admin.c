/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_admin.c - the operator's view of a running cluster over ferry.v1.Admin:
 * `ferryctl status` (the cluster at a glance) and `ferryctl placement show` (where every
 * expert lives, with a heat map of its load). Both take the admin bearer token and the TLS
 * options; --json prints one JSON object for scripts.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "rpc/admin.pb-c.h"
#include "rpc/auth.h"
#include "rpc/rpc.h"

#define ADMIN_TIMEOUT_MS 10000

int ctl_admin_channel(const char *cluster, const struct ctl_tls *tls, const char *token_file,
		      struct rpc_channel **ret, struct fr_error *err)
{
	struct rpc_channel *ch = NULL;
	uint8_t *tok = NULL;
	size_t len = 0;
	int rc;

	if (token_file && (rc = rpc_auth_secret_load(token_file, &tok, &len, err)) < 0)
		return fr_error_prefix(err, rc, "--token-file");
	if ((rc = ctl_channel_create(cluster, tls, &ch, err)) == 0 && tok &&
	    (rc = rpc_channel_set_bearer(ch, tok, len)) < 0)
		fr_error_set(err, rc, "--token-file: the token cannot be sent as a header");
	rpc_auth_secret_free(tok, len);
	if (rc < 0) {
		rpc_channel_destroy(ch);
		return rc;
	}
	*ret = ch;
	return 0;
}

/* Options every admin command shares. */
struct admin_opts {
	const char *cluster;
	struct ctl_tls tls;
	const char *token_file;
	bool json;
	uint32_t layers[256];
	size_t n_layers;
};

enum { ADM_JSON = 256, ADM_TOKEN };

#define ADMIN_USAGE_COMMON                                                                   \
	"  -c, --cluster ADDR   coordinator's gRPC address (default $FERRY_CLUSTER)\n"         \
	"      --token-file F   admin bearer token (the coordinator's [server] admin_token_file;\n" \
	"                       default $FERRY_ADMIN_TOKEN_FILE; none: no token sent)\n"       \
	"      --json           one JSON object instead of the table\n"                          \
	CTL_TLS_USAGE("  ")                                                                     \
	"  -h, --help           this text\n"

static const struct option admin_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "layer", required_argument, NULL, 'l' },
	{ "json", no_argument, NULL, ADM_JSON },
	{ "token-file", required_argument, NULL, ADM_TOKEN },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int admin_parse(int argc, char **argv, bool layers, struct admin_opts *o,
		       struct fr_error *err)
{
	int c, v = 0;

	memset(o, 0, sizeof(*o));
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, layers ? ":c:l:h" : ":c:h", admin_longopts, NULL)) !=
	       -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 'l':
			if (!layers)
				return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
			if (ctl_arg_int("layer", optarg, 0, 65535, &v, err) < 0)
				return -EINVAL;
			if (o->n_layers == FR_ARRAY_SIZE(o->layers))
				return fr_error_set(err, -EINVAL, "--layer: at most %zu",
						    FR_ARRAY_SIZE(o->layers));
			o->layers[o->n_layers++] = (uint32_t)v;
			break;
		case ADM_JSON: o->json = true; break;
		case ADM_TOKEN: o->token_file = optarg; break;
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
	if (!o->cluster)
		o->cluster = getenv("FERRY_CLUSTER");
	if (!o->cluster || !*o->cluster)
		return fr_error_set(err, -EINVAL, "--cluster ADDR is required (or $FERRY_CLUSTER)");
	if (!o->token_file && getenv("FERRY_ADMIN_TOKEN_FILE") && *getenv("FERRY_ADMIN_TOKEN_FILE"))
		o->token_file = getenv("FERRY_ADMIN_TOKEN_FILE");
	return ctl_tls_finish(&o->tls, err);
}

/* One Admin call; *ret freed by the caller with protobuf_c_message_free_unpacked. */
static int admin_call(const char *cmd, const struct admin_opts *o, const char *method,
		      const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
		      ProtobufCMessage **ret)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	int rc = ctl_admin_channel(o->cluster, &o->tls, o->token_file, &ch, &err);

	if (rc == 0)
		rc = rpc_unary(ch, method, req, desc, ADMIN_TIMEOUT_MS, ret, &err);
	rpc_channel_destroy(ch);
	if (rc < 0)
		fprintf(stderr, "ferryctl %s: %s\n", cmd, err.msg);
	return rc;
}

static int print_json(json_t *j)
{
	int rc = j ? json_dumpf(j, stdout, JSON_COMPACT) : -1;
	json_decref(j);
	putchar('\n');
	return rc == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
}

static void human_bytes(uint64_t b, char *buf, size_t cap)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
}

/* ---- status ---------------------------------------------------------------------------------- */

static const char status_usage[] =
	"Usage: ferryctl status --cluster ADDR [--json]\n"
	"\n"
	"The cluster at a glance: the model, the coordinator's state, every worker that joined\n"
	"(name, address, state joining/serving/draining/dead, slots per layer and in service,\n"
	"memory its expert weights use, transport and device, last heartbeat), the slot-map\n"
	"epoch, requests running and queued, uptime and the last rebalance.\n"
	"\n"
	ADMIN_USAGE_COMMON;

static const char *state_name(Ferry__V1__WorkerStatus__State s)
{
	switch (s) {
	case FERRY__V1__WORKER_STATUS__STATE__STATE_JOINING: return "joining";
	case FERRY__V1__WORKER_STATUS__STATE__STATE_SERVING: return "serving";
	case FERRY__V1__WORKER_STATUS__STATE__STATE_DRAINING: return "draining";
	case FERRY__V1__WORKER_STATUS__STATE__STATE_DEAD: return "dead";
	case FERRY__V1__WORKER_STATUS__STATE__STATE_SUSPECT: return "suspect";
	default: return "unknown";
	}
}

static json_t *status_json(const Ferry__V1__StatusResponse *r)
{
	json_t *ws = json_array(), *root;

	for (size_t i = 0; i < r->n_workers; i++) {
		const Ferry__V1__WorkerStatus *w = r->workers[i];
		json_array_append_new(ws, json_pack(
			"{s:I, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:s, s:s, s:f}",
			"index", (json_int_t)w->index, "name", w->name, "address", w->address,
			"state", state_name(w->state), "detail", w->detail,
			"slots_per_layer", (json_int_t)w->slots_per_layer,
			"slots_in_service", (json_int_t)w->slots_in_service,
			"memory_used_bytes", (json_int_t)w->memory_used_bytes,
			"memory_bytes", (json_int_t)w->memory_bytes, "transport", w->transport,
			"device", w->device, "heartbeat_age_s", w->heartbeat_age_s));
	}
	root = json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:I, s:o, s:I, s:I, s:I, s:f}",
			 "version", r->version, "model", r->model,
			 "moe_layers", (json_int_t)r->moe_layers,
			 "routed_experts", (json_int_t)r->routed_experts, "status", r->status,
			 "detail", r->detail, "workers_configured", (json_int_t)r->workers_configured,
			 "workers", ws, "epoch", (json_int_t)r->epoch,
			 "requests_running", (json_int_t)r->requests_running,
			 "requests_queued", (json_int_t)r->requests_queued, "uptime_s", r->uptime_s);
	if (root && r->last_rebalance) {
		const Ferry__V1__RebalanceSummary *b = r->last_rebalance;
		json_object_set_new(root, "last_rebalance", json_pack(
			"{s:f, s:s, s:I, s:f, s:f, s:f}", "when_unix_s", b->when_unix_s, "why", b->why,
			"moves", (json_int_t)b->moves, "duration_s", b->duration_s,
			"balancedness_before", b->balancedness_before,
			"balancedness_after", b->balancedness_after));
	} else if (root) {
		json_object_set_new(root, "last_rebalance", json_null());
	}
	return root;
}

static void status_print(const Ferry__V1__StatusResponse *r)
{
	int nw = 6, aw = 7;
	char mem[32];

	printf("cluster %s%s%s, model %s (%u MoE layers, %u routed experts), version %s\n",
	       r->status, r->detail[0] ? ": " : "", r->detail, r->model, r->moe_layers,
	       r->routed_experts, r->version);
	printf("slot map epoch %llu, up %.1f s, requests %u running, %u queued\n",
	       (unsigned long long)r->epoch, r->uptime_s, r->requests_running, r->requests_queued);
	unsigned serving = 0;
	for (size_t i = 0; i < r->n_workers; i++) {
		nw = FR_MAX(nw, (int)strlen(r->workers[i]->name));
		aw = FR_MAX(aw, (int)strlen(r->workers[i]->address));
		serving += r->workers[i]->state == FERRY__V1__WORKER_STATUS__STATE__STATE_SERVING;
	}
	printf("workers: %u serving of %u configured, %zu joined\n", serving,
	       r->workers_configured, r->n_workers);
	if (r->n_workers)
		printf("%-*s %5s %-8s %-*s %6s %10s %12s %-9s %9s\n", nw, "worker", "index", "state",
		       aw, "address", "slots", "in service", "memory used", "transport",
		       "heartbeat");
	for (size_t i = 0; i < r->n_workers; i++) {
		const Ferry__V1__WorkerStatus *w = r->workers[i];
		char tp[64];
		human_bytes(w->memory_used_bytes, mem, sizeof(mem));
		snprintf(tp, sizeof(tp), "%s%s%s", w->transport, w->device[0] ? ":" : "", w->device);
		printf("%-*s %5u %-8s %-*s %6u %10u %12s %-9s %7.1f s%s%s\n", nw, w->name, w->index,
		       state_name(w->state), aw, w->address, w->slots_per_layer, w->slots_in_service,
		       mem, tp, w->heartbeat_age_s, w->detail[0] ? "  " : "", w->detail);
	}
	if (r->last_rebalance) {
		const Ferry__V1__RebalanceSummary *b = r->last_rebalance;
		printf("last rebalance: %s, %u moves in %.2f s, balancedness %.3f -> %.3f\n", b->why,
		       b->moves, b->duration_s, b->balancedness_before, b->balancedness_after);
	} else {
		printf("last rebalance: none since start\n");
	}
}

static int status_main(int argc, char **argv)
{
	Ferry__V1__StatusRequest req = FERRY__V1__STATUS_REQUEST__INIT;
	Ferry__V1__StatusResponse *resp = NULL;
	struct fr_error err = { { 0 } };
	struct admin_opts o;
	int rc = ctl_parsed("status", status_usage, admin_parse(argc, argv, false, &o, &err), &err);

	if (rc >= 0)
		return rc;
	if (admin_call("status", &o, RPC_M_STATUS, &req.base,
		       &ferry__v1__status_response__descriptor, (ProtobufCMessage **)&resp) < 0)
		return CTL_EXIT_FAIL;
	if (o.json)
		rc = print_json(status_json(resp));
	else
		status_print(resp);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return o.json ? rc : CTL_EXIT_OK;
}

static int status_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct admin_opts o;
	int rc = admin_parse(argc, argv, false, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_status = { "status", "show a cluster's workers, epoch and requests",
					status_main, status_parse_only };

/* ---- placement show -------------------------------------------------------------------------- */

static const char placement_show_usage[] =
	"Usage: ferryctl placement show --cluster ADDR [--layer L]... [--json]\n"
	"\n"
	"Where every routed expert lives now: per MoE layer, each worker's slots with the\n"
	"expert in each (- for a slot out of service), the experts with more than one replica,\n"
	"the layer's balancedness by tokens and by time over the load window, and a heat map of\n"
	"the window's load per expert (one character per expert, ' ' none ... '@' the\n"
	"hottest), so the hot experts show at a glance. --json prints the placement in the\n"
	"PLACEMENT file format (n_workers, slots, layers: the expert in every global slot) with\n"
	"the load beside it.\n"
	"\n"
	"  -l, --layer L        only this MoE layer (repeatable; default all)\n"
	ADMIN_USAGE_COMMON;

static json_t *u32_array(const uint32_t *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(v[i]));
	return a;
}

static json_t *u64_array(const uint64_t *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer((json_int_t)v[i]));
	return a;
}

static json_t *placement_json(const Ferry__V1__GetPlacementResponse *r)
{
	json_t *layers = json_array(), *load = json_array(), *names = json_array();

	for (size_t w = 0; w < r->n_worker_names; w++)
		json_array_append_new(names, json_string(r->worker_names[w]));
	for (size_t i = 0; i < r->n_layers; i++) {
		const Ferry__V1__LayerPlacement *l = r->layers[i];
		json_t *se = json_array();
		for (size_t j = 0; j < l->n_slot_expert; j++)
			json_array_append_new(se, json_integer(l->slot_expert[j]));
		json_array_append_new(layers, se);
		json_array_append_new(load, json_pack(
			"{s:I, s:o, s:o, s:o, s:o, s:f, s:f}", "layer", (json_int_t)l->layer,
			"replicas", u32_array(l->replicas, l->n_replicas),
			"expert_tokens", u64_array(l->expert_tokens, l->n_expert_tokens),
			"worker_tokens", u64_array(l->worker_tokens, l->n_worker_tokens),
			"worker_busy_ns", u64_array(l->worker_busy_ns, l->n_worker_busy_ns),
			"balancedness", l->balancedness, "balancedness_time", l->balancedness_time));
	}
	return json_pack("{s:I, s:o, s:I, s:o, s:I, s:o, s:o}", "n_workers",
			 (json_int_t)r->n_workers, "slots", u32_array(r->slots, r->n_slots),
			 "n_experts", (json_int_t)r->n_experts, "layers", layers,
			 "epoch", (json_int_t)r->epoch, "workers", names, "load", load);
}

/* One character per expert: its window load against the layer's hottest. */
static void heat_line(const uint64_t *tok, size_t n)
{
	static const char ramp[] = " .:-=+*#%@";
	uint64_t max = 0;

	for (size_t e = 0; e < n; e++)
		max = FR_MAX(max, tok[e]);
	putchar('|');
	for (size_t e = 0; e < n; e++) {
		size_t k = max ? (size_t)((double)tok[e] / (double)max * (sizeof(ramp) - 2) + 0.5) : 0;
		putchar(ramp[tok[e] && !k ? 1 : k]);
	}
	puts("|");
}

static void placement_print(const Ferry__V1__GetPlacementResponse *r)
{
	int nw = 6;

	for (size_t w = 0; w < r->n_worker_names; w++)
		nw = FR_MAX(nw, (int)strlen(r->worker_names[w]));
	printf("slot map epoch %llu, %u workers, %u experts per layer\n",
	       (unsigned long long)r->epoch, r->n_workers, r->n_experts);
	for (size_t i = 0; i < r->n_layers; i++) {
		const Ferry__V1__LayerPlacement *l = r->layers[i];
		uint64_t total = 0;
		for (size_t e = 0; e < l->n_expert_tokens; e++)
			total += l->expert_tokens[e];
		printf("\nlayer %u: balancedness %.3f by tokens, %.3f by time; %llu token-expert "
		       "pairs in the window\n", l->layer, l->balancedness, l->balancedness_time,
		       (unsigned long long)total);
		size_t base = 0;
		for (size_t w = 0; w < r->n_slots && w < r->n_worker_names; w++) {
			printf("  %-*s %8llu |", nw, r->worker_names[w],
			       w < l->n_worker_tokens ? (unsigned long long)l->worker_tokens[w] : 0ull);
			for (uint32_t j = 0; j < r->slots[w] && base + j < l->n_slot_expert; j++) {
				int32_t e = l->slot_expert[base + j];
				if (e < 0)
					printf("   -");
				else
					printf(" %3d", e);
			}
			base += r->slots[w];
			putchar('\n');
		}
		int first = 1;
		for (size_t e = 0; e < l->n_replicas; e++)
			if (l->replicas[e] != 1) {
				printf("%s%zu x%u", first ? "  replicas: " : ", ", e, l->replicas[e]);
				first = 0;
			}
		if (!first)
			putchar('\n');
		printf("  load ");
		heat_line(l->expert_tokens, l->n_expert_tokens);
	}
}

static int placement_show(int argc, char **argv)
{
	Ferry__V1__GetPlacementRequest req = FERRY__V1__GET_PLACEMENT_REQUEST__INIT;
	Ferry__V1__GetPlacementResponse *resp = NULL;
	struct fr_error err = { { 0 } };
	struct admin_opts o;
	int rc = ctl_parsed("placement show", placement_show_usage,
			    admin_parse(argc, argv, true, &o, &err), &err);

	if (rc >= 0)
		return rc;
	req.n_layers = o.n_layers;
	req.layers = o.layers;
	if (admin_call("placement show", &o, RPC_M_GET_PLACEMENT, &req.base,
		       &ferry__v1__get_placement_response__descriptor,
		       (ProtobufCMessage **)&resp) < 0)
		return CTL_EXIT_FAIL;
	if (o.json)
		rc = print_json(placement_json(resp));
	else
		placement_print(resp);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return o.json ? rc : CTL_EXIT_OK;
}

/* ---- rebalance ------------------------------------------------------------------------------- */

static const char rebalance_usage[] =
	"Usage: ferryctl rebalance --cluster ADDR [--dry-run] [--max-moves N] [--min-gain G]\n"
	"                          [--min-distinct K] [--profile FILE] [--wait] [--json]\n"
	"       ferryctl rebalance --cluster ADDR --to PLACEMENT [--dry-run] [--wait] [--json]\n"
	"\n"
	"Re-places the experts of a running cluster for the load it measured over its window\n"
	"(or for a load-profile file) and moves them live: each worker binds its new slots\n"
	"while it serves, then the coordinator swaps its routing table between two steps.\n"
	"Prints the plan (per layer: balancedness before and after, slots moved; per worker:\n"
	"slots and bytes to load); with --wait, follows the move to the end (a progress line on\n"
	"a terminal) and prints the outcome.\n"
	"\n"
	"      --dry-run        print the plan; nothing moves\n"
	"      --max-moves N    reload at most N slots (whole layers keep their old layout,\n"
	"                       those gaining least per moved slot first)\n"
	"      --min-gain G     keep the layout of layers that would gain less than G\n"
	"                       balancedness (0..1)\n"
	"      --min-distinct K every expert on at least K workers (default: the coordinator's\n"
	"                       [placement] min_distinct)\n"
	"      --profile FILE   plan for this load profile (placement.h format) instead of the\n"
	"                       measured window\n"
	"      --redundancy N   keep N spare slots per MoE layer for replicas of hot experts,\n"
	"                       the rest of the slots empty (-1: every slot; later rebalances\n"
	"                       keep it)\n"
	"      --to PLACEMENT   apply this placement file (ferryctl placement plan --out, or\n"
	"                       placement show --json) instead of planning one; a worker whose\n"
	"                       slots are all -1 ends drained\n"
	"      --wait           wait until the new placement is in force\n"
	ADMIN_USAGE_COMMON;

struct rebalance_opts {
	struct admin_opts a;
	bool dry_run, wait;
	uint32_t max_moves, min_distinct;
	double min_gain;
	const char *profile;
	const char *to;
	bool set_redundancy;
	int redundancy;
};

enum { RB_DRY = 300, RB_MAXM, RB_GAIN, RB_DIST, RB_PROF, RB_WAIT, RB_TO, RB_RED };

static const struct option rebalance_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "json", no_argument, NULL, ADM_JSON },
	{ "token-file", required_argument, NULL, ADM_TOKEN },
	{ "dry-run", no_argument, NULL, RB_DRY },
	{ "max-moves", required_argument, NULL, RB_MAXM },
	{ "min-gain", required_argument, NULL, RB_GAIN },
	{ "min-distinct", required_argument, NULL, RB_DIST },
	{ "profile", required_argument, NULL, RB_PROF },
	{ "wait", no_argument, NULL, RB_WAIT },
	{ "to", required_argument, NULL, RB_TO },
	{ "redundancy", required_argument, NULL, RB_RED },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int rebalance_parse(int argc, char **argv, struct rebalance_opts *o, struct fr_error *err)
{
	int c, v = 0;
	char *end;

	memset(o, 0, sizeof(*o));
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:h", rebalance_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->a.cluster = optarg; break;
		case ADM_JSON: o->a.json = true; break;
		case ADM_TOKEN: o->a.token_file = optarg; break;
		case RB_DRY: o->dry_run = true; break;
		case RB_WAIT: o->wait = true; break;
		case RB_PROF: o->profile = optarg; break;
		case RB_TO: o->to = optarg; break;
		case RB_RED:
			if (ctl_arg_int("redundancy", optarg, -1, 1 << 20, &v, err) < 0)
				return -EINVAL;
			o->set_redundancy = true;
			o->redundancy = v;
			break;
		case RB_MAXM:
			if (ctl_arg_int("max-moves", optarg, 1, INT32_MAX, &v, err) < 0)
				return -EINVAL;
			o->max_moves = (uint32_t)v;
			break;
		case RB_DIST:
			if (ctl_arg_int("min-distinct", optarg, 1, 1024, &v, err) < 0)
				return -EINVAL;
			o->min_distinct = (uint32_t)v;
			break;
		case RB_GAIN:
			errno = 0;
			o->min_gain = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(o->min_gain >= 0 && o->min_gain <= 1))
				return fr_error_set(err, -EINVAL, "--min-gain: '%s' is not a number in "
						    "[0, 1]", optarg);
			break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->a.tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (o->dry_run && o->wait)
		return fr_error_set(err, -EINVAL, "--wait with --dry-run: a dry run moves nothing");
	if (o->set_redundancy && (o->to || o->max_moves || o->min_gain > 0 || o->profile ||
				  o->min_distinct))
		return fr_error_set(err, -EINVAL, "--redundancy re-places for the measured load: "
				    "--to, --max-moves, --min-gain, --min-distinct and --profile do "
				    "not go with it");
	if (o->to && (o->max_moves || o->min_gain > 0 || o->profile || o->min_distinct))
		return fr_error_set(err, -EINVAL, "--to applies a placement as it is: --max-moves, "
				    "--min-gain, --min-distinct and --profile do not go with it");
	if (!o->a.cluster)
		o->a.cluster = getenv("FERRY_CLUSTER");
	if (!o->a.cluster || !*o->a.cluster)
		return fr_error_set(err, -EINVAL, "--cluster ADDR is required (or $FERRY_CLUSTER)");
	if (!o->a.token_file && getenv("FERRY_ADMIN_TOKEN_FILE") && *getenv("FERRY_ADMIN_TOKEN_FILE"))
		o->a.token_file = getenv("FERRY_ADMIN_TOKEN_FILE");
	return ctl_tls_finish(&o->a.tls, err);
}

static const char *phase_name(Ferry__V1__RebalanceProgress__Phase p)
{
	switch (p) {
	case FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED: return "planned";
	case FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_LOADING: return "loading";
	case FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_SWAPPED: return "swapped";
	case FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_DONE: return "done";
	default: return "unknown";
	}
}

static json_t *progress_json(const Ferry__V1__RebalanceProgress *m)
{
	json_t *layers = json_array(), *workers = json_array();

	for (size_t i = 0; i < m->n_layers; i++)
		json_array_append_new(layers, json_pack(
			"{s:I, s:f, s:f, s:I}", "layer", (json_int_t)m->layers[i]->layer,
			"balancedness_before", m->layers[i]->balancedness_before,
			"balancedness_after", m->layers[i]->balancedness_after,
			"moves", (json_int_t)m->layers[i]->moves));
	for (size_t i = 0; i < m->n_workers; i++)
		json_array_append_new(workers, json_pack(
			"{s:I, s:s, s:I, s:I, s:b}", "index", (json_int_t)m->workers[i]->index,
			"name", m->workers[i]->name, "slots_to_load",
			(json_int_t)m->workers[i]->slots_to_load, "bytes_to_load",
			(json_int_t)m->workers[i]->bytes_to_load, "loaded", m->workers[i]->loaded));
	return json_pack("{s:s, s:I, s:o, s:o, s:I, s:I, s:I, s:f, s:f, s:f, s:s, s:f, s:f, s:I, "
			 "s:I, s:I}",
			 "phase", phase_name(m->phase), "epoch", (json_int_t)m->epoch, "layers",
			 layers, "workers", workers, "moves", (json_int_t)m->moves, "slots_total",
			 (json_int_t)m->slots_total, "bytes_to_move", (json_int_t)m->bytes_to_move,
			 "balancedness_before", m->balancedness_before, "balancedness_after",
			 m->balancedness_after, "duration_s", m->duration_s, "detail", m->detail,
			 "step_ms_median_before", m->step_ms_median_before, "step_ms_max_during",
			 m->step_ms_max_during, "steps_during", (json_int_t)m->steps_during,
			 "waves", (json_int_t)m->waves, "wave", (json_int_t)m->wave);
}

static void plan_print(const Ferry__V1__RebalanceProgress *m, bool dry)
{
	char b[32];

	human_bytes(m->bytes_to_move, b, sizeof(b));
	printf("%s to epoch %llu: %u of %u slots move (%s), balancedness %.3f -> %.3f%s%s\n",
	       dry ? "plan (dry run)" : "rebalance", (unsigned long long)m->epoch, m->moves,
	       m->slots_total, b, m->balancedness_before, m->balancedness_after,
	       m->detail[0] ? ": " : "", m->detail);
	printf("%-6s %8s %8s %6s\n", "layer", "before", "after", "moves");
	for (size_t i = 0; i < m->n_layers; i++)
		printf("%-6u %8.3f %8.3f %6u\n", m->layers[i]->layer,
		       m->layers[i]->balancedness_before, m->layers[i]->balancedness_after,
		       m->layers[i]->moves);
	for (size_t i = 0; i < m->n_workers; i++) {
		human_bytes(m->workers[i]->bytes_to_load, b, sizeof(b));
		printf("worker %-12s loads %5u slots (%s)\n", m->workers[i]->name,
		       m->workers[i]->slots_to_load, b);
	}
}

/* Streams a Rebalance-like call (Rebalance, Drain, Undrain) and prints its progress. */
static int progress_stream(const char *cmd, const struct admin_opts *a, const char *method,
			   const ProtobufCMessage *req, bool dry_run, bool wait)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct rpc_stream *st = NULL;
	bool tty = isatty(1), bar = false;
	int rc, exit_rc = CTL_EXIT_OK;

	if ((rc = ctl_admin_channel(a->cluster, &a->tls, a->token_file, &ch, &err)) == 0)
		rc = rpc_stream_open(ch, method, req, &ferry__v1__rebalance_progress__descriptor, 0,
				     &st, &err);
	while (rc == 0) {
		ProtobufCMessage *msg;
		int n = rpc_stream_next(st, &msg, &err);
		if (n <= 0) {
			rc = n;
			break;
		}
		const Ferry__V1__RebalanceProgress *m = (const Ferry__V1__RebalanceProgress *)msg;
		bool last = m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_DONE ||
			    (m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED &&
			     (dry_run || m->moves == 0));
		if (a->json) {
			if (last || m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED ||
			    wait) {
				json_t *j = progress_json(m);
				if (j) {
					json_dumpf(j, stdout, JSON_COMPACT);
					putchar('\n');
				}
				json_decref(j);
			}
		} else if (m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED) {
			plan_print(m, dry_run);
		} else if (m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_LOADING && wait) {
			size_t k = 0;
			char wv[48] = "";
			for (size_t i = 0; i < m->n_workers; i++)
				k += m->workers[i]->loaded;
			if (m->waves > 1)
				snprintf(wv, sizeof(wv), "wave %u of %u, ", m->wave, m->waves);
			if (tty) {
				printf("\rloading: %s%zu of %zu workers have staged their slots "
				       "(%.1f s)", wv, k, m->n_workers, m->duration_s);
				bar = true;
			} else {
				printf("loading: %s%zu of %zu workers have staged their slots "
				       "(%.1f s)\n", wv, k, m->n_workers, m->duration_s);
			}
		} else if (m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_SWAPPED &&
			   wait && m->waves > 1) {
			printf("%sepoch %llu in force (wave %u of %u, %.1f s)\n", bar ? "\n" : "",
			       (unsigned long long)m->epoch, m->wave, m->waves, m->duration_s);
			bar = false;
		} else if (m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_DONE) {
			printf("%sepoch %llu in force: %u slots moved in %.2f s, balancedness %.3f -> "
			       "%.3f (predicted); ", bar ? "\n" : "", (unsigned long long)m->epoch,
			       m->moves, m->duration_s, m->balancedness_before,
			       m->balancedness_after);
			if (m->steps_during)
				printf("the longest of the %u steps meanwhile took %.2f ms (median "
				       "before: %.2f ms)\n", m->steps_during, m->step_ms_max_during,
				       m->step_ms_median_before);
			else
				printf("no step ran meanwhile\n");
		}
		fflush(stdout);
		uint64_t epoch = m->epoch;
		bool planned = m->phase == FERRY__V1__REBALANCE_PROGRESS__PHASE__PHASE_PLANNED;
		protobuf_c_message_free_unpacked(msg, NULL);
		if (last)
			break;
		/* Without --wait: the move goes on at the coordinator once it started. */
		if (!wait && planned) {
			if (!a->json)
				printf("moving; `ferryctl status` shows when epoch %llu is in force\n",
				       (unsigned long long)epoch);
			break;
		}
	}
	if (rc < 0) {
		fprintf(stderr, "%sferryctl %s: %s\n", bar ? "\n" : "", cmd, err.msg);
		exit_rc = CTL_EXIT_FAIL;
	}
	rpc_stream_destroy(st);
	rpc_channel_destroy(ch);
	return exit_rc;
}

static int rebalance_main(int argc, char **argv)
{
	Ferry__V1__RebalanceRequest req = FERRY__V1__REBALANCE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	struct rebalance_opts o;
	char *profile = NULL, *to = NULL;
	size_t plen;
	int rc = ctl_parsed("rebalance", rebalance_usage, rebalance_parse(argc, argv, &o, &err),
			    &err);

	if (rc >= 0)
		return rc;
	if (o.profile && fr_read_file(o.profile, 64u << 20, &profile, &plen, &err) < 0) {
		fprintf(stderr, "ferryctl rebalance: --profile %s\n", err.msg);
		return CTL_EXIT_FAIL;
	}
	if (o.to && fr_read_file(o.to, 16u << 20, &to, &plen, &err) < 0) {
		fprintf(stderr, "ferryctl rebalance: --to %s\n", err.msg);
		free(profile);
		return CTL_EXIT_FAIL;
	}
	req.placement_json = to ? to : (char *)"";
	req.dry_run = o.dry_run;
	req.max_moves = o.max_moves;
	req.min_gain = o.min_gain;
	req.min_distinct = o.min_distinct;
	req.profile_json = profile ? profile : (char *)"";
	req.why = (char *)(o.to ? "manual (ferryctl rebalance --to)" :
				  "manual (ferryctl rebalance)");
	if (o.set_redundancy) {
		Ferry__V1__SetRedundancyRequest sr = FERRY__V1__SET_REDUNDANCY_REQUEST__INIT;
		sr.spare_slots = o.redundancy;
		sr.dry_run = o.dry_run;
		rc = progress_stream("rebalance", &o.a, RPC_M_SET_REDUNDANCY, &sr.base, o.dry_run,
				     o.wait);
	} else {
		rc = progress_stream("rebalance", &o.a, RPC_M_REBALANCE, &req.base, o.dry_run,
				     o.wait);
	}
	free(profile);
	free(to);
	return rc;
}

static int rebalance_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct rebalance_opts o;
	int rc = rebalance_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_rebalance = { "rebalance",
					   "re-place a cluster's experts for its load, live",
					   rebalance_main, rebalance_parse_only };

/* ---- drain / undrain -------------------------------------------------------------------------- */

static const char drain_usage[] =
	"Usage: ferryctl drain WORKER --cluster ADDR [--dry-run] [--wait] [--json]\n"
	"       ferryctl undrain WORKER --cluster ADDR [--dry-run] [--wait] [--json]\n"
	"\n"
	"drain moves every slot of WORKER (its name, or its index) to the other workers while\n"
	"the cluster serves: afterwards it holds nothing and can be stopped with no request\n"
	"failing. undrain gives a drained worker slots again. Both are live rebalances and\n"
	"print their plan like `ferryctl rebalance`; they are refused, naming the problem, when\n"
	"the other workers cannot hold every expert.\n"
	"\n"
	"      --dry-run        print the plan; nothing moves\n"
	"      --wait           wait until the new placement is in force\n"
	ADMIN_USAGE_COMMON;

struct drain_opts {
	struct admin_opts a;
	const char *worker;
	bool dry_run, wait;
};

static const struct option drain_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "json", no_argument, NULL, ADM_JSON },
	{ "token-file", required_argument, NULL, ADM_TOKEN },
	{ "dry-run", no_argument, NULL, RB_DRY },
	{ "wait", no_argument, NULL, RB_WAIT },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int drain_parse(int argc, char **argv, struct drain_opts *o, struct fr_error *err)
{
	int c;

	memset(o, 0, sizeof(*o));
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:h", drain_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->a.cluster = optarg; break;
		case ADM_JSON: o->a.json = true; break;
		case ADM_TOKEN: o->a.token_file = optarg; break;
		case RB_DRY: o->dry_run = true; break;
		case RB_WAIT: o->wait = true; break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->a.tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return fr_error_set(err, -EINVAL, "WORKER (a name or an index) is required");
	o->worker = argv[optind++];
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!*o->worker || strlen(o->worker) > 64)
		return fr_error_set(err, -EINVAL, "WORKER must be 1..64 bytes");
	if (o->dry_run && o->wait)
		return fr_error_set(err, -EINVAL, "--wait with --dry-run: a dry run moves nothing");
	if (!o->a.cluster)
		o->a.cluster = getenv("FERRY_CLUSTER");
	if (!o->a.cluster || !*o->a.cluster)
		return fr_error_set(err, -EINVAL, "--cluster ADDR is required (or $FERRY_CLUSTER)");
	if (!o->a.token_file && getenv("FERRY_ADMIN_TOKEN_FILE") && *getenv("FERRY_ADMIN_TOKEN_FILE"))
		o->a.token_file = getenv("FERRY_ADMIN_TOKEN_FILE");
	return ctl_tls_finish(&o->a.tls, err);
}

static int drain_run(int argc, char **argv, bool drain)
{
	Ferry__V1__DrainRequest req = FERRY__V1__DRAIN_REQUEST__INIT;
	const char *cmd = drain ? "drain" : "undrain";
	struct fr_error err = { { 0 } };
	struct drain_opts o;
	int rc = ctl_parsed(cmd, drain_usage, drain_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	req.worker = (char *)o.worker;
	req.dry_run = o.dry_run;
	return progress_stream(cmd, &o.a, drain ? RPC_M_DRAIN : RPC_M_UNDRAIN, &req.base,
			       o.dry_run, o.wait);
}

static int drain_main(int argc, char **argv)
{
	return drain_run(argc, argv, true);
}

static int undrain_main(int argc, char **argv)
{
	return drain_run(argc, argv, false);
}

static int drain_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct drain_opts o;
	int rc = drain_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_drain = { "drain", "move every slot of a worker to the others, live",
				       drain_main, drain_parse_only };
const struct ctl_cmd ctl_cmd_undrain = { "undrain", "give a drained worker slots again, live",
					 undrain_main, drain_parse_only };

/* ---- placement show's entry points (the placement command is in cmd_placement.c) --------- */

int ctl_placement_show_main(int argc, char **argv)
{
	return placement_show(argc, argv);
}

int ctl_placement_show_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct admin_opts o;
	int rc = admin_parse(argc, argv, true, &o, err);
	return rc < 0 ? rc : 0;
}
