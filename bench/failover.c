/* SPDX-License-Identifier: Apache-2.0 */
/*
 * failover - what a dead or hung worker costs serving: decode steps before and after
 * `kill -9` (dead) or `kill -STOP` (hung) of one worker of a replicated cluster (every
 * expert on at least two workers), measured in the same run.
 *
 * The coordinator runs in this process, the workers are real ferry-worker processes (as in
 * bench/cluster). This thread decodes B sequences one token per step without pause; after
 * a warm-up the last worker gets the signal. Per signal and batch size B:
 *   detect      from the signal to the coordinator marking the worker dead or fenced (ms);
 *   next step   from the kill to the end of the first step that completed after it (the
 *               step the death broke runs again on the others), ms;
 *   longest     the longest step around the kill, against the median step before it;
 *   tok/s       decode throughput over the second before the kill, the second after it,
 *               and from 1 s to 3 s after it (two workers left), as ratios to before.
 * A hung worker is fenced at its step deadline ([transport] suspect_after, 250 ms here,
 * or 10x its recent answers).
 *
 * Usage: failover --model DIR [--workers N] [--batch "8 32"] [--transport shm|tcp]
 *                 [--threads T] [--worker-threads T]
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/benchcluster.h"
#include "coordinator/coordinator.h"
#include "coordinator/server-internal.h"

#define MAX_CTX 256
#define MAX_STEPS (1 << 20)
#define MAX_LIST 8

struct watch {
	struct co_server *srv;
	int worker;
	uint64_t dead_ns;
	atomic_bool stop;
};

/* Polls the victim's state every 0.2 ms after the kill: when the coordinator gave up on it. */
static void *watcher(void *arg)
{
	struct watch *w = arg;
	while (!atomic_load(&w->stop)) {
		pthread_mutex_lock(&w->srv->mu);
		bool dead = w->srv->workers[w->worker].state == W_FAILED;
		pthread_mutex_unlock(&w->srv->mu);
		if (dead) {
			w->dead_ns = fr_now_ns();
			return NULL;
		}
		usleep(200);
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct result {
	double detect_ms, next_ms, median_ms, longest_ms, tps_before, tps_after1, tps_after3;
	int ok;
};

static double tps(const uint64_t *end, int n, uint64_t from, uint64_t to, int batch)
{
	int k = 0;
	for (int i = 0; i < n; i++)
		k += end[i] >= from && end[i] < to;
	return (double)k * batch / ((double)(to - from) / 1e9);
}

static int run_one(struct bench_cluster_opts *bo, int batch, int vocab, int sig,
		   struct result *r)
{
	struct fr_error err = { { 0 } };
	struct bench_cluster cl;
	int rc = 0, n = 0, p = 0;

	memset(r, 0, sizeof(*r));
	bo->max_seqs = batch;
	if (bench_cluster_up(bo, &cl, &err) < 0) {
		fprintf(stderr, "failover: %s\n", err.msg);
		return -1;
	}
	uint64_t *end = malloc(sizeof(uint64_t) * MAX_STEPS);
	uint64_t *dur = malloc(sizeof(uint64_t) * MAX_STEPS);
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)batch);
	int32_t *seq = malloc(sizeof(int32_t) * (size_t)batch);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)batch);
	float *logits = malloc(sizeof(float) * (size_t)batch * (size_t)vocab);
	uint64_t rng = 7, t_start = fr_now_ns(), t_kill = 0;
	struct watch wt = { .srv = cl.srv, .worker = -1 };
	pthread_t th;
	bool watching = false;

	/* The victim: the worker process that joined last is the last pid; find its index. */
	pid_t victim = cl.pids[cl.n - 1];
	for (;;) {
		uint64_t now = fr_now_ns();
		if (!t_kill && now - t_start > 2000000000ull) {
			/* its index: the joined worker named after it ("w<i>") */
			char name[16];
			snprintf(name, sizeof(name), "w%d", cl.n - 1);
			pthread_mutex_lock(&cl.srv->mu);
			for (int i = 0; i < cl.srv->n_joined; i++)
				if (strcmp(cl.srv->workers[i].name, name) == 0)
					wt.worker = i;
			pthread_mutex_unlock(&cl.srv->mu);
			if (wt.worker >= 0 && pthread_create(&th, NULL, watcher, &wt) == 0)
				watching = true;
			t_kill = fr_now_ns();
			kill(victim, sig);
		}
		if (t_kill && fr_now_ns() - t_kill > 3000000000ull)
			break;
		if (n == MAX_STEPS)
			break;
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
			seq[b] = b;
			pos[b] = p;
		}
		uint64_t t = fr_now_ns();
		if ((rc = co_server_forward(cl.srv, batch, tok, seq, pos, NULL, logits)) < 0) {
			fprintf(stderr, "failover: batch %d: a step failed after the kill: %s\n", batch,
				strerror(-rc));
			break;
		}
		end[n] = fr_now_ns();
		dur[n] = end[n] - t;
		n++;
		p = (p + 1) % MAX_CTX;
	}
	atomic_store(&wt.stop, true);
	if (watching)
		pthread_join(th, NULL);
	if (rc == 0 && t_kill) {
		uint64_t *before = malloc(sizeof(uint64_t) * (size_t)(n + 1)), longest = 0;
		int k = 0;
		for (int i = 0; i < n; i++) {
			if (end[i] < t_kill)
				before[k++] = dur[i];
			if (end[i] >= t_kill && end[i] - dur[i] <= t_kill + 1000000000ull)
				longest = FR_MAX(longest, dur[i]);
			if (end[i] >= t_kill && !r->next_ms)
				r->next_ms = (double)(end[i] - t_kill) / 1e6;
		}
		qsort(before, (size_t)k, sizeof(*before), cmp_u64);
		r->median_ms = k ? (double)before[k / 2] / 1e6 : 0;
		r->longest_ms = (double)longest / 1e6;
		r->detect_ms = wt.dead_ns ? (double)(wt.dead_ns - t_kill) / 1e6 : -1;
		r->tps_before = tps(end, n, t_kill - 1000000000ull, t_kill, batch);
		r->tps_after1 = tps(end, n, t_kill, t_kill + 1000000000ull, batch);
		r->tps_after3 = tps(end, n, t_kill + 1000000000ull, t_kill + 3000000000ull, batch);
		r->ok = 1;
		free(before);
	}
	if (sig == SIGSTOP)
		kill(victim, SIGKILL); /* it would never hear the drain */
	bench_cluster_down(&cl);
	free(end);
	free(dur);
	free(tok);
	free(seq);
	free(pos);
	free(logits);
	return rc < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "workers", required_argument, NULL, 'w' },
		{ "batch", required_argument, NULL, 'b' },
		{ "transport", required_argument, NULL, 't' },
		{ "threads", required_argument, NULL, 'T' },
		{ "worker-threads", required_argument, NULL, 'W' },
		{ NULL, 0, NULL, 0 },
	};
	const char *usage = "usage: failover --model DIR [--workers N] [--batch \"8 32\"] "
			    "[--transport shm|tcp] [--threads T] [--worker-threads T]\n";
	struct bench_cluster_opts bo = { .backend = TP_BACKEND_SHM, .wire = FP_DTYPE_BF16,
					 .workers = 3, .micro_batches = 2, .max_ctx = MAX_CTX,
					 .min_distinct = 2 };
	struct fr_error err = { { 0 } };
	int batch[MAX_LIST] = { 8, 32 }, n_batch = 2, threads = 0, c;
	int64_t v;

	while ((c = getopt_long(argc, argv, "m:w:b:t:T:W:", lo, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'm': bo.model = optarg; break;
		case 'w': bad = fr_parse_i64(optarg, 2, 16, &v) < 0; bo.workers = (int)v; break;
		case 'b': {
			char *dup = strdup(optarg), *save = NULL;
			n_batch = 0;
			for (char *t = strtok_r(dup, " ,", &save); t && !bad;
			     t = strtok_r(NULL, " ,", &save)) {
				bad = n_batch == MAX_LIST || fr_parse_i64(t, 1, 256, &v) < 0;
				if (!bad)
					batch[n_batch++] = (int)v;
			}
			bad |= n_batch == 0;
			free(dup);
			break;
		}
		case 't': bad = tp_backend_parse(optarg, &bo.backend) < 0; break;
		case 'T': bad = fr_parse_i64(optarg, 1, 1024, &v) < 0; threads = (int)v; break;
		case 'W':
			bad = fr_parse_i64(optarg, 1, 1024, &v) < 0;
			bo.worker_threads = (int)v;
			break;
		default: bad = 1;
		}
		if (bad) {
			fputs(usage, stderr);
			return 2;
		}
	}
	if (!bo.model) {
		fprintf(stderr, "failover: --model DIR is required\n%s", usage);
		return 2;
	}
	if (threads)
		kn_set_threads(threads);
	if (!getenv("FERRY_LOG"))
		fr_log_set_levels("error");
	signal(SIGPIPE, SIG_IGN);

	struct model_ckpt *ck = NULL;
	if (model_ckpt_open(bo.model, &ck, &err) < 0) {
		fprintf(stderr, "failover: %s\n", err.msg);
		return 1;
	}
	const struct model_config *cfg = model_ckpt_config(ck);
	int E = cfg->n_routed_experts;
	/* every expert on two workers: 2E slots over the workers, one spare each */
	bo.slots = FR_MIN(E, FR_DIV_ROUND_UP(2 * E, bo.workers) + 1);
	printf("one of %d workers (every expert on 2 of them, %d slots each) killed or stopped "
	       "while decoding: %s, %s transport, kernel threads %d\n\n", bo.workers, bo.slots,
	       bo.model, tp_backend_name(bo.backend), kn_threads());
	printf("%-8s %6s %10s %12s %11s %11s %12s %10s %12s\n", "signal", "batch", "detect ms",
	       "next step ms", "median ms", "longest ms", "tok/s before", "1 s after",
	       "1-3 s after");
	int rc = 0;
	static const int sigs[] = { SIGKILL, SIGSTOP };
	for (int k = 0; k < 2; k++)
		for (int i = 0; i < n_batch; i++) {
			const char *sn = sigs[k] == SIGKILL ? "kill -9" : "SIGSTOP";
			struct result r;
			if (run_one(&bo, batch[i], cfg->vocab_size, sigs[k], &r) < 0 || !r.ok) {
				printf("%-8s %6d failed (a step failed after the signal: see above)\n",
				       sn, batch[i]);
				rc = 1;
				continue;
			}
			printf("%-8s %6d %10.1f %12.1f %11.2f %11.2f %12.1f %9.2fx %11.2fx\n", sn,
			       batch[i], r.detect_ms, r.next_ms, r.median_ms, r.longest_ms,
			       r.tps_before, r.tps_before > 0 ? r.tps_after1 / r.tps_before : 0,
			       r.tps_before > 0 ? r.tps_after3 / r.tps_before : 0);
		}
	model_ckpt_close(ck);
	return rc;
}
