/* SPDX-License-Identifier: Apache-2.0 */
/* benchcluster.c - see benchcluster.h. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/benchcluster.h"
#include "rpc/auth.h"

static int find_worker(char *buf, size_t cap)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -errno;
	self[n] = '\0';
	*strrchr(self, '/') = '\0';
	snprintf(buf, cap, "%s/../worker/ferry-worker", self);
	if (access(buf, X_OK) == 0)
		return 0;
	snprintf(buf, cap, "%s/ferry-worker", self);
	return access(buf, X_OK) == 0 ? 0 : -ENOENT;
}

void bench_cluster_down(struct bench_cluster *c)
{
	co_server_destroy(c->srv);
	c->srv = NULL;
	for (int i = 0; i < c->n; i++) {
		int st;
		/* The drain tells them to go; give them a moment, then insist. */
		for (int t = 0; t < 100 && waitpid(c->pids[i], &st, WNOHANG) == 0; t++)
			usleep(50000);
		if (kill(c->pids[i], 0) == 0) {
			kill(c->pids[i], SIGTERM);
			waitpid(c->pids[i], &st, 0);
		}
	}
	c->n = 0;
}

int bench_cluster_up(const struct bench_cluster_opts *o, struct bench_cluster *c,
		     struct fr_error *err)
{
	char wk[PATH_MAX], port[32], slots[32], name[32], conf[] = "/tmp/ferry-bench.XXXXXX";
	char secret_file[] = "/tmp/ferry-bench-secret.XXXXXX", secret[65];
	uint8_t raw[32];
	int rc, fd;

	memset(c, 0, sizeof(*c));
	if (o->workers < 1 || o->workers > (int)FR_ARRAY_SIZE(c->pids))
		return fr_error_set(err, -EINVAL, "%d workers: 1..%zu", o->workers,
				    FR_ARRAY_SIZE(c->pids));
	if (find_worker(wk, sizeof(wk)) < 0)
		return fr_error_set(err, -ENOENT, "ferry-worker not found next to this benchmark");
	if ((fd = mkstemp(conf)) < 0)
		return fr_error_set(err, -errno, "mkstemp failed");
	close(fd);
	/* A fresh cluster secret (mkstemp makes the file 0600, as the daemons require). */
	if (rpc_auth_random(raw, sizeof(raw)) < 0 || (fd = mkstemp(secret_file)) < 0) {
		unlink(conf);
		return fr_error_set(err, -EIO, "cannot make a cluster secret");
	}
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(secret + 2 * i, 3, "%02x", raw[i]);
	if (write(fd, secret, 64) != 64) {
		close(fd);
		unlink(conf);
		unlink(secret_file);
		return fr_error_set(err, -EIO, "cannot write the cluster secret");
	}
	close(fd);
	struct co_server_opts so = {
		.model_path = o->model, .listen = "127.0.0.1:0",
		.secret = (const uint8_t *)secret, .secret_len = 64,
		.workers = o->workers, .join_timeout_ms = 120000,
		.heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 500,
		.max_skew_ms = 30000, .micro_batches = o->micro_batches, .max_batch = 256,
		.max_seqs = o->max_seqs, .max_ctx = o->max_ctx, .load_window = 256,
		.tp = { .backend = o->backend }, .wire = o->wire, .expert_timeout_ms = 60000,
		.min_distinct = o->min_distinct, .suspect_ms = 250,
	};
	if ((rc = co_server_create(&so, &c->srv, err)) < 0)
		goto out;
	snprintf(port, sizeof(port), "127.0.0.1:%d", co_server_port(c->srv));
	snprintf(slots, sizeof(slots), "%d", o->slots);
	for (int i = 0; i < o->workers; i++) {
		char threads[48];
		snprintf(name, sizeof(name), "w%d", i);
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		int wt = o->worker_threads ? o->worker_threads :
			 (int)FR_MAX(1, (ncpu > 0 ? ncpu : 1) / o->workers);
		snprintf(threads, sizeof(threads), "worker.threads=%d", wt);
		char *argv[] = { wk, "-c", conf, "--secret-file", secret_file, "-m",
				 (char *)o->model, "-C", port,
				 "-n", name, "--slots", slots, "-t",
				 (char *)tp_backend_name(o->backend), "-s", threads, NULL };
		pid_t pid = fork();
		if (pid == 0) {
			execv(wk, argv);
			_exit(127);
		}
		c->pids[c->n++] = pid;
	}
	rc = co_server_start(c->srv, err);
out:
	unlink(conf);
	unlink(secret_file);
	if (rc < 0)
		bench_cluster_down(c);
	return rc;
}
