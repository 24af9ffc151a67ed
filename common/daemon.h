/* SPDX-License-Identifier: Apache-2.0 */
/*
 * daemon.h - what ferry-coordinator and ferry-worker do alike as processes: signals, log
 * levels, the systemd watchdog and status notifications (sd_notify; no-ops outside systemd).
 */
#ifndef FERRY_COMMON_DAEMON_H
#define FERRY_COMMON_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

/* ---- the command line ------------------------------------------------------------------- */

/* A daemon's own option: --long_name VALUE (or -short_name VALUE) means --set KEY=VALUE. */
struct fr_daemon_opt {
	const char *long_name;
	int short_name;          /* a letter, or 0 for none */
	const char *key;         /* "model.path" */
};

/* What the command line asked for. */
struct fr_daemon_cmdline {
	const char *config_path; /* -c/--config; NULL: the daemon's default path */
	char **overrides;        /* --set and the options, in command-line order ("k=v") */
	int n_overrides;
	bool print_config;       /* --print-config */
};

/*
 * Parses a daemon's command line: the options both daemons share (-c/--config FILE,
 * -s/--set SECTION.KEY=VALUE, --secret-file FILE = cluster.secret_file, --print-config,
 * -V/--version, -h/--help; --insecure, undocumented, sets cluster.insecure so that the
 * configuration refuses it by name) and opts[n_opts]. prog names the daemon in messages;
 * usage is printed for --help. Returns 0 (run), 1 (--help or --version printed: exit 0),
 * 2 (a usage error, printed with "(see PROG --help)": exit 2) or -ENOMEM (printed). On 0,
 * free *ret with fr_daemon_cmdline_free().
 */
int fr_daemon_cmdline(int argc, char **argv, const char *prog, const char *usage,
		      const struct fr_daemon_opt *opts, size_t n_opts,
		      struct fr_daemon_cmdline *ret);
void fr_daemon_cmdline_free(struct fr_daemon_cmdline *c);

/* ---- the process ------------------------------------------------------------------------ */

/* SIGTERM and SIGINT call stop (which must be async-signal-safe); SIGPIPE is ignored (a
 * peer closing a socket is an error return, not a death). */
void fr_daemon_signals(void (*stop)(int sig));

/* Log levels: the configured spec ("info", "warn,tp=debug"), then FERRY_LOG over it. */
void fr_daemon_log_levels(const char *configured);

/* With WatchdogSec= in the unit, pings the watchdog from a detached thread at half the
 * interval for the life of the process; otherwise nothing. */
void fr_daemon_watchdog(void);

#endif /* FERRY_COMMON_DAEMON_H */
