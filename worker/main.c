/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-worker: the daemon over worker/agent.c (worker.h) - configuration (INI + command line),
 * signals, systemd notification.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/daemon.h"
#include "kernels/kernels.h"
#include "metrics/httpd.h"
#include "rpc/auth.h"
#include "worker/worker.h"
#include "worker/config.h"

static const char usage[] =
	"Usage: ferry-worker [OPTIONS]\n"
	"\n"
	"Holds expert slots of every MoE layer and computes routed experts for a\n"
	"ferry-coordinator: joins it, loads the assigned experts from its own checkpoint\n"
	"copy and serves dispatch frames until told to drain or stopped. On SIGTERM it first\n"
	"hands its slots back: when other workers hold replicas of all of them, the cluster\n"
	"goes on without it.\n"
	"\n"
	"  -c, --config FILE       INI configuration (default " WK_CONFIG_DEFAULT_PATH ";\n"
	"                          a missing default file is fine, see deploy/worker.conf)\n"
	"  -s, --set SECTION.KEY=VALUE  override one configuration key (repeatable)\n"
	"  -m, --model DIR         same as --set model.path=DIR\n"
	"  -C, --coordinator ADDR  same as --set worker.coordinator=ADDR\n"
	"  -n, --name NAME         same as --set worker.name=NAME\n"
	"      --slots N           same as --set worker.slots=N\n"
	"  -t, --transport NAME    same as --set transport.backend=NAME (shm, tcp, verbs)\n"
	"      --secret-file FILE  same as --set cluster.secret_file=FILE\n"
	"      --print-config      print the effective configuration and exit\n"
	"  -V, --version           print the version and exit\n"
	"  -h, --help              this text\n"
	"\n"
	"Exit status: 0 after SIGTERM/SIGINT or a drain asked by the coordinator; 1 on\n"
	"failure (join refused, a checkpoint tensor missing, the coordinator gone); 2 for\n"
	"bad arguments or configuration.\n";

/* Shortcuts for keys (the shared options are fr_daemon_cmdline()'s). */
static const struct fr_daemon_opt opts[] = {
	{ "model", 'm', "model.path" },
	{ "coordinator", 'C', "worker.coordinator" },
	{ "name", 'n', "worker.name" },
	{ "slots", 0, "worker.slots" },
	{ "transport", 't', "transport.backend" },
};

static struct wk_agent *g_agent;

static void on_signal(int sig)
{
	(void)sig;
	if (g_agent)
		wk_agent_stop(g_agent);
}

static int metrics_page(void *ctx, const char *path, FILE *f, const char **ctype)
{
	if (strcmp(path, "/metrics") != 0) {
		fprintf(f, "%s: not found; the metrics are at /metrics\n", path);
		return 404;
	}
	*ctype = "text/plain; version=0.0.4; charset=utf-8";
	wk_agent_metrics_write(ctx, f);
	return 200;
}

int main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct wk_config cfg = { 0 };
	struct fr_daemon_cmdline cl = { 0 };
	int rc, ret = 2;
	struct fr_httpd *httpd = NULL;
	uint8_t *secret = NULL;
	size_t secret_len = 0;

	if ((rc = fr_daemon_cmdline(argc, argv, "ferry-worker", usage, opts, FR_ARRAY_SIZE(opts),
				    &cl)) != 0)
		return rc == 1 ? 0 : rc == 2 ? 2 : 1;
	if (wk_config_load(cl.config_path, cl.overrides, cl.n_overrides, &cfg, &err) < 0) { /* validates too */
		fprintf(stderr, "ferry-worker: %s\n", err.msg);
		goto out;
	}
	if (cl.print_config) {
		wk_config_dump(&cfg, stdout);
		ret = 0;
		goto out;
	}
	fr_daemon_log_levels(fr_log_level_name(cfg.log.level));
	if (cfg.worker.threads)
		kn_set_threads(cfg.worker.threads);
	int dev = -1;
	wk_config_device(cfg.compute.device, &dev, &err); /* validated when loaded */
	kn_set_precision(kn_precision_resolve(cfg.worker.precision, dev >= 0));
	if (cfg.worker.precision == KN_PRECISION_FAST && dev < 0 && !kn_fast_active())
		fr_warn("worker", "[worker] precision = fast, but the %s kernels have no bf16 dot "
			"product (AVX512_BF16): computing exactly", kn_ops()->name);
	if (rpc_auth_secret_load(cfg.cluster.secret_file, &secret, &secret_len, &err) < 0) {
		fprintf(stderr, "ferry-worker: %s\n", err.msg);
		goto out;
	}

	struct rpc_creds creds = { .kind = RPC_CREDS_INSECURE };
	if (cfg.cluster.tls_ca || cfg.cluster.tls_cert)
		creds = (struct rpc_creds){ .kind = RPC_CREDS_TLS, .ca_file = cfg.cluster.tls_ca,
					    .cert_file = cfg.cluster.tls_cert,
					    .key_file = cfg.cluster.tls_key };
	if (rpc_creds_check(&creds, false, &err) < 0) {
		fprintf(stderr, "ferry-worker: [cluster] tls_*: %s\n", err.msg);
		goto out;
	}

	struct wk_agent_opts o = {
		.name = cfg.worker.name,
		.coordinator = cfg.worker.coordinator,
		.creds = &creds,
		.model_path = cfg.model.path,
		.secret = secret,
		.secret_len = secret_len,
		.slots = cfg.worker.slots,
		.memory_limit = cfg.worker.memory_limit,
		.staging_slots = cfg.worker.staging_slots,
		.tp = tp_conf_config(&cfg.transport.tp),
		.ring_slots = (uint32_t)cfg.transport.ring_slots,
		.ring_tokens = (uint32_t)cfg.transport.ring_tokens,
		.join_timeout_ms = 60000,
	};
	o.on_gpu = dev >= 0;
	o.dev_twin = dev == WK_DEVICE_TWIN;
	o.frames = cfg.compute.frames;
	o.gpu_device = dev;
	fr_daemon_signals(on_signal);

	ret = 1;
	if (wk_agent_create(&o, &g_agent, &err) < 0) {
		fr_err("worker", "%s", err.msg);
		goto out;
	}
	if (cfg.metrics.listen && cfg.metrics.listen[0]) {
		if (fr_httpd_start(cfg.metrics.listen, metrics_page, g_agent, &httpd, &err) < 0) {
			fr_err("worker", "%s", err.msg);
			goto out;
		}
		fr_info("worker", "metrics on %s (port %d): /metrics", cfg.metrics.listen,
			fr_httpd_port(httpd));
	}
	fr_daemon_watchdog();
	sd_notify(0, "READY=1\nSTATUS=joining");
	rc = wk_agent_run(g_agent, &err);
	sd_notify(0, "STOPPING=1");
	if (rc < 0) {
		fr_err("worker", "%s", err.msg);
		goto out;
	}
	fr_info("worker", "%s: stopped", cfg.worker.name);
	ret = 0;
out:
	fr_httpd_stop(httpd); /* it reads the agent */
	wk_agent_destroy(g_agent);
	g_agent = NULL;
	wk_config_free(&cfg);
	fr_daemon_cmdline_free(&cl);
	rpc_auth_secret_free(secret, secret_len);
	return ret;
}
