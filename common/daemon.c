/* SPDX-License-Identifier: Apache-2.0 */
/* daemon.c - see daemon.h. */
#include "common/daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "common/common.h"

void fr_daemon_signals(void (*stop)(int sig))
{
	struct sigaction sa = { .sa_handler = stop };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

void fr_daemon_log_levels(const char *configured)
{
	fr_log_set_levels(configured);
	if (getenv("FERRY_LOG"))
		fr_log_set_levels(getenv("FERRY_LOG"));
}

static uint64_t watchdog_usec;

static void *watchdog_main(void *arg)
{
	(void)arg;
	for (;;) {
		usleep((useconds_t)(watchdog_usec / 2));
		sd_notify(0, "WATCHDOG=1");
	}
	return NULL;
}

void fr_daemon_watchdog(void)
{
	pthread_t t;

	if (sd_watchdog_enabled(0, &watchdog_usec) <= 0 || watchdog_usec == 0)
		return;
	if (pthread_create(&t, NULL, watchdog_main, NULL) == 0)
		pthread_detach(t);
	else
		fr_warn("daemon", "cannot start the watchdog thread: systemd may restart us");
}
