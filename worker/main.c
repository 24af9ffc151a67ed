/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-worker: the daemon over worker/agent.c - configuration (INI + command line),
 * signals, systemd notification.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/daemon.h"
#include "kernels/kernels.h"
#include "rpc/auth.h"
#include "worker/agent.h"
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

enum { OPT_SLOTS = 256, OPT_SECRET, OPT_INSECURE, OPT_PRINT };

static const struct option longopts[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "set", required_argument, NULL, 's' },
	{ "model", required_argument, NULL, 'm' },
	{ "coordinator", required_argument, NULL, 'C' },
	{ "name", required_argument, NULL, 'n' },
	{ "slots", required_argument, NULL, OPT_SLOTS },
	{ "transport", required_argument, NULL, 't' },
	{ "secret-file", required_argument, NULL, OPT_SECRET },
	{ "insecure", no_argument, NULL, OPT_INSECURE },
	{ "print-config", no_argument, NULL, OPT_PRINT },
	{ "version", no_argument, NULL, 'V' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static struct wk_agent *g_agent;

static void on_signal(int sig)
{
	(void)sig;
	if (g_agent)
		wk_agent_stop(g_agent);
}

int main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct wk_config cfg = { 0 };
	const char *config_path = NULL;
	char **ov = NULL;
	int n_ov = 0, c, rc, ret = 2;
	bool print = false;
	uint8_t *secret = NULL;
	size_t secret_len = 0;

	while ((c = getopt_long(argc, argv, "c:s:m:C:n:t:Vh", longopts, NULL)) != -1) {
		rc = 0;
		switch (c) {
		case 'c': config_path = optarg; break;
		case 's': rc = fr_strv_push(&ov, &n_ov, "%s", optarg); break;
		case 'm': rc = fr_strv_push(&ov, &n_ov, "model.path=%s", optarg); break;
		case 'C': rc = fr_strv_push(&ov, &n_ov, "worker.coordinator=%s", optarg); break;
		case 'n': rc = fr_strv_push(&ov, &n_ov, "worker.name=%s", optarg); break;
		case OPT_SLOTS: rc = fr_strv_push(&ov, &n_ov, "worker.slots=%s", optarg); break;
		case 't': rc = fr_strv_push(&ov, &n_ov, "transport.backend=%s", optarg); break;
		case OPT_SECRET: rc = fr_strv_push(&ov, &n_ov, "cluster.secret_file=%s", optarg); break;
		case OPT_INSECURE: rc = fr_strv_push(&ov, &n_ov, "cluster.insecure=true"); break;
		case OPT_PRINT: print = true; break;
		case 'V': printf("ferry-worker %s\n", FERRY_VERSION); return 0;
		case 'h': fputs(usage, stdout); return 0;
		default:
			fprintf(stderr, "(see ferry-worker --help)\n");
			return 2;
		}
		if (rc < 0) {
			fprintf(stderr, "ferry-worker: out of memory\n");
			return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ferry-worker: unexpected argument '%s'\n(see ferry-worker --help)\n",
			argv[optind]);
		goto out;
	}
	if (wk_config_load(config_path, ov, n_ov, &cfg, &err) < 0) { /* validates too */
		fprintf(stderr, "ferry-worker: %s\n", err.msg);
		goto out;
	}
	if (print) {
		wk_config_dump(&cfg, stdout);
		ret = 0;
		goto out;
	}
	fr_daemon_log_levels(fr_log_level_name(cfg.log.level));
	if (cfg.worker.threads)
		kn_set_threads(cfg.worker.threads);
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
		.tp = {
			.backend = cfg.transport.backend,
			.device = cfg.transport.device,
			.port = cfg.transport.port,
			.gid_index = cfg.transport.gid_index,
			.gid_index_set = cfg.transport.gid_index >= 0,
			.mtu = (uint32_t)cfg.transport.mtu,
			.peer_timeout_ms = (uint32_t)cfg.transport.peer_timeout_ms,
			.bind_addr = cfg.transport.bind_addr,
		},
		.ring_slots = (uint32_t)cfg.transport.ring_slots,
		.ring_tokens = (uint32_t)cfg.transport.ring_tokens,
		.join_timeout_ms = 60000,
	};
	fr_daemon_signals(on_signal);

	ret = 1;
	if (wk_agent_create(&o, &g_agent, &err) < 0) {
		fr_err("worker", "%s", err.msg);
		goto out;
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
	wk_agent_destroy(g_agent);
	g_agent = NULL;
	wk_config_free(&cfg);
	fr_strv_free(ov, n_ov);
	rpc_auth_secret_free(secret, secret_len);
	return ret;
}
