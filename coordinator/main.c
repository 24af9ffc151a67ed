/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-coordinator: the daemon over coordinator/server.c - configuration (INI + command
 * line), signals, systemd notification.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/daemon.h"
#include "coordinator/config.h"
#include "coordinator/server.h"
#include "kernels/kernels.h"
#include "rpc/auth.h"
#include "rpc/rpc.h"

static const char usage[] =
	"Usage: ferry-coordinator [OPTIONS]\n"
	"\n"
	"Runs embeddings, attention, routers and shared experts of a DeepSeekMoE model and\n"
	"serves ferry.v1.Inference over gRPC once its expert workers have joined.\n"
	"\n"
	"  -c, --config FILE       INI configuration (default " CO_CONFIG_DEFAULT_PATH ";\n"
	"                          a missing default file is fine, see deploy/coordinator.conf)\n"
	"  -s, --set SECTION.KEY=VALUE  override one configuration key (repeatable)\n"
	"  -m, --model DIR         same as --set model.path=DIR\n"
	"  -l, --listen ADDR       same as --set server.listen=ADDR\n"
	"  -w, --workers N         same as --set cluster.workers=N\n"
	"  -t, --transport NAME    same as --set transport.backend=NAME (shm, tcp, verbs)\n"
	"      --secret-file FILE  same as --set cluster.secret_file=FILE\n"
	"      --print-config      print the effective configuration and exit\n"
	"  -V, --version           print the version and exit\n"
	"  -h, --help              this text\n"
	"\n"
	"Exit status: 0 after SIGTERM/SIGINT and a clean drain; 1 when the cluster failed\n"
	"(a worker did not join or load in time, impossible placement, a worker died);\n"
	"2 for bad arguments or configuration.\n";

/* Shortcuts for keys (the shared options are fr_daemon_cmdline()'s). */
static const struct fr_daemon_opt opts[] = {
	{ "model", 'm', "model.path" },
	{ "listen", 'l', "server.listen" },
	{ "workers", 'w', "cluster.workers" },
	{ "transport", 't', "transport.backend" },
};

static struct co_server *g_srv;

/* [SECTION] tls_*, borrowing cfg's paths: TLS when tls_cert is set, else plaintext. */
static struct rpc_creds tls_creds(const char *cert, const char *key, const char *ca)
{
	if (!cert)
		return (struct rpc_creds){ .kind = RPC_CREDS_INSECURE };
	return (struct rpc_creds){ .kind = RPC_CREDS_TLS, .cert_file = cert, .key_file = key,
				   .ca_file = ca };
}

static void on_signal(int sig)
{
	(void)sig;
	if (g_srv)
		co_server_stop(g_srv);
}

int main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct co_config cfg = { 0 };
	struct fr_daemon_cmdline cl = { 0 };
	int rc, ret = 2;
	uint8_t *secret = NULL, *admin = NULL, *http_key = NULL;
	size_t secret_len = 0, admin_len = 0, http_key_len = 0;
	char **devs = NULL;
	int n_devs = 0;

	if ((rc = fr_daemon_cmdline(argc, argv, "ferry-coordinator", usage, opts,
				    FR_ARRAY_SIZE(opts), &cl)) != 0)
		return rc == 1 ? 0 : rc == 2 ? 2 : 1;
	if (co_config_load(cl.config_path, cl.overrides, cl.n_overrides, &cfg, &err) < 0) { /* validates too */
		fprintf(stderr, "ferry-coordinator: %s\n", err.msg);
		goto out;
	}
	if (cl.print_config) {
		co_config_dump(&cfg, stdout);
		ret = 0;
		goto out;
	}
	fr_daemon_log_levels(fr_log_level_name(cfg.log.level));
	if (cfg.engine.threads)
		kn_set_threads(cfg.engine.threads);
	int engine_device = KN_DEV_NONE; /* validated with the rest */
	(void)co_config_engine_device(cfg.engine.device, &engine_device, &err);
	kn_set_precision(kn_precision_resolve(cfg.engine.precision, engine_device >= 0));
	if (cfg.engine.precision == KN_PRECISION_FAST && engine_device < 0 && !kn_fast_active())
		fr_warn("coordinator", "[engine] precision = fast, but the %s kernels have no bf16 "
			"dot product (AVX512_BF16): computing exactly", kn_ops()->name);
	if (rpc_auth_secret_load(cfg.cluster.secret_file, &secret, &secret_len, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: %s\n", err.msg);
		goto out;
	}

	/* [transport] device may list several verbs devices: one context each. */
	if (co_config_devices(&cfg, &devs, &n_devs, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: %s\n", err.msg);
		goto out;
	}

	/* The TLS files now, before the model is opened. */
	struct rpc_creds creds = tls_creds(cfg.server.tls_cert, cfg.server.tls_key,
					   cfg.server.tls_client_ca);
	struct rpc_creds cluster_creds = tls_creds(cfg.cluster.tls_cert, cfg.cluster.tls_key,
						   cfg.cluster.tls_client_ca);
	if (rpc_creds_check(&creds, true, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: [server] tls_*: %s\n", err.msg);
		goto out;
	}
	if (rpc_creds_check(&cluster_creds, true, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: [cluster] tls_*: %s\n", err.msg);
		goto out;
	}

	if (cfg.server.admin_token_file &&
	    rpc_auth_secret_load(cfg.server.admin_token_file, &admin, &admin_len, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: [server] admin_token_file: %s\n", err.msg);
		goto out;
	}
	if (cfg.http.api_key_file &&
	    rpc_auth_secret_load(cfg.http.api_key_file, &http_key, &http_key_len, &err) < 0) {
		fprintf(stderr, "ferry-coordinator: [http] api_key_file: %s\n", err.msg);
		goto out;
	}

	struct co_server_opts o = {
		.model_path = cfg.model.path,
		.listen = cfg.server.listen,
		.creds = &creds,
		.cluster_listen = cfg.cluster.listen,
		.cluster_creds = &cluster_creds,
		.secret = secret,
		.secret_len = secret_len,
		.admin_token = admin,
		.admin_token_len = admin_len,
		.workers = cfg.cluster.workers,
		.join_timeout_ms = (int)cfg.cluster.join_timeout_ms,
		.heartbeat_ms = (int)cfg.cluster.heartbeat_interval_ms,
		.max_skew_ms = (int)cfg.cluster.max_skew_ms,
		.load_profile = cfg.placement.load_profile,
		.min_distinct = cfg.placement.min_distinct,
		.auto_rebalance = cfg.placement.rebalance == 1,
		.rebalance_window_ms = (int64_t)cfg.placement.rebalance_window_ms,
		.rebalance_threshold = cfg.placement.rebalance_threshold,
		.rebalance_min_interval_ms = (int64_t)cfg.placement.rebalance_min_interval_ms,
		.rebalance_max_moves = cfg.placement.rebalance_max_moves,
		.rebalance_load_timeout_ms = (int64_t)cfg.placement.rebalance_load_timeout_ms,
		.micro_batches = cfg.engine.micro_batches,
		.engine_device = engine_device,
		.max_batch = cfg.engine.max_batch,
		.max_seqs = cfg.engine.max_seqs,
		.prefill_chunk = cfg.engine.prefill_chunk,
		.queue_max = cfg.engine.queue_max,
		.kv_blocks = cfg.engine.kv_blocks,
		.stream_buffer = (size_t)cfg.server.stream_buffer,
		.stall_ms = (int64_t)cfg.server.stall_timeout_ms,
		.max_ctx = cfg.engine.max_ctx,
		.load_window = 1024,
		.tp = tp_conf_config(&cfg.transport.tp),
		.tp_devices = (const char *const *)devs,
		.n_tp_devices = n_devs,
		.wire = cfg.transport.wire_dtype == CO_WIRE_F32 ? FP_DTYPE_F32 : FP_DTYPE_BF16,
		.expert_timeout_ms = (int)cfg.transport.expert_timeout_ms,
		.suspect_ms = (int)cfg.transport.suspect_after_ms,
		.metrics_listen = cfg.metrics.listen,
		.metrics_per_expert = cfg.metrics.per_expert,
		.http_listen = cfg.http.listen,
		.http_api_key = http_key,
		.http_api_key_len = http_key_len,
	};
	fr_daemon_signals(on_signal);

	ret = 1;
	if (co_server_create(&o, &g_srv, &err) < 0) {
		fr_err("coordinator", "%s", err.msg);
		goto out;
	}
	/* ferryctl up and scripts read the bound port(s) from this line. */
	if (co_server_cluster_port(g_srv))
		printf("ferry-coordinator listening on port %d, cluster port %d\n",
		       co_server_port(g_srv), co_server_cluster_port(g_srv));
	else
		printf("ferry-coordinator listening on port %d\n", co_server_port(g_srv));
	fflush(stdout);
	fr_daemon_watchdog();
	/* Ready once it listens: workers (whose units start After= this one) can join only
	 * then, and clients get UNAVAILABLE, Health NOT_SERVING, until they have. Waiting for
	 * the workers here would deadlock a host that runs both. */
	sd_notify(0, "READY=1\nSTATUS=waiting for workers");
	if (co_server_start(g_srv, &err) < 0) {
		fr_err("coordinator", "%s", err.msg);
		goto out;
	}
	sd_notify(0, "STATUS=serving");
	rc = co_server_wait(g_srv, &err);
	sd_notify(0, "STOPPING=1");
	if (rc < 0) {
		fr_err("coordinator", "%s", err.msg);
		goto out;
	}
	fr_info("coordinator", "stopping: draining requests and workers");
	ret = 0;
out:
	co_server_destroy(g_srv);
	g_srv = NULL;
	co_config_free(&cfg);
	fr_strv_free(devs, n_devs);
	fr_daemon_cmdline_free(&cl);
	rpc_auth_secret_free(secret, secret_len);
	rpc_auth_secret_free(admin, admin_len);
	rpc_auth_secret_free(http_key, http_key_len);
	return ret;
}
