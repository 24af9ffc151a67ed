/* SPDX-License-Identifier: Apache-2.0 */
/*
 * daemon.h - what ferry-coordinator and ferry-worker do alike as processes: signals, log
 * levels, the systemd watchdog and status notifications (sd_notify; no-ops outside systemd).
 */
#ifndef FERRY_COMMON_DAEMON_H
#define FERRY_COMMON_DAEMON_H

/* SIGTERM and SIGINT call stop (which must be async-signal-safe); SIGPIPE is ignored (a
 * peer closing a socket is an error return, not a death). */
void fr_daemon_signals(void (*stop)(int sig));

/* Log levels: the configured spec ("info", "warn,tp=debug"), then FERRY_LOG over it. */
void fr_daemon_log_levels(const char *configured);

/* With WatchdogSec= in the unit, pings the watchdog from a detached thread at half the
 * interval for the life of the process; otherwise nothing. */
void fr_daemon_watchdog(void);

#endif /* FERRY_COMMON_DAEMON_H */
