/* SPDX-License-Identifier: Apache-2.0 */
/* daemon.c - see daemon.h. */
#include "common/daemon.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "common/common.h"

/* Long-only options of our own: values past any letter. */
enum { OPT_SECRET = 256, OPT_INSECURE, OPT_PRINT, OPT_OWN };

int fr_daemon_cmdline(int argc, char **argv, const char *prog, const char *usage,
		      const struct fr_daemon_opt *opts, size_t n_opts,
		      struct fr_daemon_cmdline *ret)
{
	static const struct option shared[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "set", required_argument, NULL, 's' },
		{ "secret-file", required_argument, NULL, OPT_SECRET },
		{ "insecure", no_argument, NULL, OPT_INSECURE },
		{ "print-config", no_argument, NULL, OPT_PRINT },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
	};
	size_t n_shared = FR_ARRAY_SIZE(shared);
	struct option *lo = calloc(n_shared + n_opts + 1, sizeof(*lo));
	char *so = malloc(8 + 2 * n_opts + 1);
	struct fr_daemon_cmdline c = { 0 };
	int ch, rc = 0;

	if (!lo || !so) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(lo, shared, sizeof(shared));
	strcpy(so, "c:s:Vh");
	for (size_t i = 0; i < n_opts; i++) {
		int val = opts[i].short_name ? opts[i].short_name : OPT_OWN + (int)i;
		lo[n_shared + i] = (struct option){ opts[i].long_name, required_argument, NULL, val };
		if (opts[i].short_name) {
			size_t l = strlen(so);
			so[l] = (char)opts[i].short_name;
			so[l + 1] = ':';
			so[l + 2] = '\0';
		}
	}
	optind = 1;
	while (rc == 0 && (ch = getopt_long(argc, argv, so, lo, NULL)) != -1) {
		switch (ch) {
		case 'c': c.config_path = optarg; break;
		case 's': rc = fr_strv_push(&c.overrides, &c.n_overrides, "%s", optarg); break;
		case OPT_SECRET:
			rc = fr_strv_push(&c.overrides, &c.n_overrides, "cluster.secret_file=%s",
					  optarg);
			break;
		case OPT_INSECURE:
			rc = fr_strv_push(&c.overrides, &c.n_overrides, "cluster.insecure=true");
			break;
		case OPT_PRINT: c.print_config = true; break;
		case 'V': printf("%s %s\n", prog, FERRY_VERSION); rc = 1; break;
		case 'h': fputs(usage, stdout); rc = 1; break;
		default: {
			const struct fr_daemon_opt *o = NULL;
			for (size_t i = 0; i < n_opts && !o; i++)
				if (ch == (opts[i].short_name ? opts[i].short_name :
					   OPT_OWN + (int)i))
					o = &opts[i];
			if (!o) {
				fprintf(stderr, "(see %s --help)\n", prog);
				rc = 2;
				break;
			}
			rc = fr_strv_push(&c.overrides, &c.n_overrides, "%s=%s", o->key, optarg);
		}
		}
	}
	if (rc == 0 && optind < argc) {
		fprintf(stderr, "%s: unexpected argument '%s'\n(see %s --help)\n", prog,
			argv[optind], prog);
		rc = 2;
	}
	if (rc < 0)
		fprintf(stderr, "%s: out of memory\n", prog);
out:
	free(lo);
	free(so);
	if (rc != 0)
		fr_strv_free(c.overrides, c.n_overrides);
	else
		*ret = c;
	return rc;
}

void fr_daemon_cmdline_free(struct fr_daemon_cmdline *c)
{
	fr_strv_free(c->overrides, c->n_overrides);
	c->overrides = NULL;
	c->n_overrides = 0;
}

void fr_daemon_signals(void (*stop)(int sig))
{
	struct sigaction sa = { .sa_handler = stop };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* To journald with structured fields: PRIORITY (syslog level), FERRY_COMPONENT,
 * FERRY_LEVEL, and the message as "component: text" for plain readers. */
static void journal_sink(enum fr_log_level lvl, const char *comp, const char *msg)
{
	static const int pri[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	sd_journal_send("MESSAGE=%s: %s", comp, msg, "PRIORITY=%d", pri[lvl],
			"FERRY_COMPONENT=%s", comp, "FERRY_LEVEL=%s", fr_log_level_name(lvl),
			"SYSLOG_IDENTIFIER=%s", program_invocation_short_name, NULL);
}

/* systemd connects a service's stderr to the journal and says so in $JOURNAL_STREAM
 * ("DEV:INODE" of that stream); a redirected stderr no longer matches. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	return js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
	       (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void fr_daemon_log_levels(const char *configured)
{
	fr_log_set_levels(configured);
	if (getenv("FERRY_LOG"))
		fr_log_set_levels(getenv("FERRY_LOG"));
	if (stderr_is_journal())
		fr_log_set_sink(journal_sink);
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
