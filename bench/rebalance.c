/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rebalance - what a live rebalance costs serving: decode steps while expert slots move,
 * against the steps of the same cluster just before, measured in the same run.
 *
 * The coordinator runs in this process, the workers are real ferry-worker processes (as in
 * bench/cluster). This thread decodes B sequences one token per step without pause; another
 * thread waits, then rebalances to a load profile whose hot experts differ from the last one
 * (Zipf popularity of exponent --skew, a fresh hot set per layer and round), so every round
 * moves slots. Per round:
 *   median before = the median step of the minute before the rebalance started;
 *   max during    = the longest step that overlapped the rebalance (plan, load, swap);
 *   stall         = max during - median before, in ms;
 *   quiet         = the longest step of a window as long as the rebalance, just before it:
 *                   what this machine's noise alone gives (the ceiling to compare with).
 * The target (issue: no decode step during a rebalance takes more than 2x the median step
 * of the minute before) is checked on the median over rounds of max during / median before.
 *
 * Usage: rebalance --model DIR [--workers N] [--spare S] [--batch B] [--rounds R]
 *                  [--skew S] [--transport shm|tcp] [--threads T] [--worker-threads T]
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
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
#define MAX_ROUNDS 64

struct round {
	uint64_t t0, t1;
	uint32_t moves;
	int rc;
	char err[256];
};

struct run {
	struct co_server *srv;
	int n_moe, n_experts, rounds;
	double skew, gap_s;
	struct round r[MAX_ROUNDS];
	atomic_bool done;
};

/* Zipf popularity of exponent skew over a fresh random order of the experts per layer. */
static void make_profile(double *p, int n_moe, int n_experts, double skew, uint64_t seed)
{
	int *perm = malloc(sizeof(int) * (size_t)n_experts);
	for (int l = 0; l < n_moe; l++) {
		for (int e = 0; e < n_experts; e++)
			perm[e] = e;
		for (int e = n_experts - 1; e > 0; e--) {
			int j = (int)(fr_splitmix64(&seed) % (uint64_t)(e + 1)), t = perm[e];
			perm[e] = perm[j];
			perm[j] = t;
		}
		for (int rank = 0; rank < n_experts; rank++)
			p[(size_t)l * n_experts + perm[rank]] = 1000.0 / pow(rank + 1, skew);
	}
	free(perm);
}

static void *rebalancer(void *arg)
{
	struct run *r = arg;
	double *p = malloc(sizeof(double) * (size_t)r->n_moe * r->n_experts);

	for (int k = 0; k < r->rounds; k++) {
		struct fr_error err = { { 0 } };
		usleep((useconds_t)(r->gap_s * 1e6));
		make_profile(p, r->n_moe, r->n_experts, r->skew, 1000 + (uint64_t)k);
		struct co_rebalance_opts ro = { .profile = p, .redundancy = -2, .drain = -1,
						.undrain = -1, .why = "bench" };
		r->r[k].t0 = fr_now_ns();
		r->r[k].rc = co__rebalance(r->srv, &ro, &err);
		r->r[k].t1 = fr_now_ns();
		snprintf(r->r[k].err, sizeof(r->r[k].err), "%s", err.msg);
		pthread_mutex_lock(&r->srv->mu);
		r->r[k].moves = r->srv->last_rebalance.moves;
		pthread_mutex_unlock(&r->srv->mu);
	}
	usleep((useconds_t)(r->gap_s * 1e6 / 2));
	free(p);
	atomic_store(&r->done, true);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Steps ending in [from, to): their median and maximum duration; returns the count. */
static int window(const uint64_t *end, const uint64_t *dur, int n, uint64_t from, uint64_t to,
		  uint64_t *scratch, uint64_t *ret_med, uint64_t *ret_max)
{
	int k = 0;
	uint64_t mx = 0;
	for (int i = 0; i < n; i++)
		if (end[i] >= from && end[i] < to) {
			scratch[k++] = dur[i];
			mx = FR_MAX(mx, dur[i]);
		}
	if (k) {
		qsort(scratch, (size_t)k, sizeof(*scratch), cmp_u64);
		*ret_med = scratch[k / 2];
	}
	*ret_max = mx;
	return k;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "workers", required_argument, NULL, 'w' },
		{ "spare", required_argument, NULL, 'S' },
		{ "batch", required_argument, NULL, 'b' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "skew", required_argument, NULL, 'k' },
		{ "transport", required_argument, NULL, 't' },
		{ "threads", required_argument, NULL, 'T' },
		{ "worker-threads", required_argument, NULL, 'W' },
		{ NULL, 0, NULL, 0 },
	};
	const char *usage = "usage: rebalance --model DIR [--workers N] [--spare S] [--batch B] "
			    "[--rounds R] [--skew S] [--transport shm|tcp] [--threads T] "
			    "[--worker-threads T]\n";
	struct bench_cluster_opts bo = { .backend = TP_BACKEND_SHM, .wire = FP_DTYPE_BF16,
					 .workers = 2, .micro_batches = 2, .max_ctx = MAX_CTX };
	struct run r = { .rounds = 5, .skew = 1.2, .gap_s = 3 };
	struct fr_error err = { { 0 } };
	int c, batch = 4, spare = 2, threads = 0;
	int64_t v;
	double d;

	while ((c = getopt_long(argc, argv, "m:w:S:b:r:k:t:T:W:", lo, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'm': bo.model = optarg; break;
		case 'w': bad = fr_parse_i64(optarg, 1, 16, &v) < 0; bo.workers = (int)v; break;
		case 'S': bad = fr_parse_i64(optarg, 0, 64, &v) < 0; spare = (int)v; break;
		case 'b': bad = fr_parse_i64(optarg, 1, 256, &v) < 0; batch = (int)v; break;
		case 'r':
			bad = fr_parse_i64(optarg, 1, MAX_ROUNDS, &v) < 0;
			r.rounds = (int)v;
			break;
		case 'k':
			bad = fr_parse_double(optarg, &d) < 0 || !(d >= 0 && d <= 4);
			r.skew = d;
			break;
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
		fprintf(stderr, "rebalance: --model DIR is required\n%s", usage);
		return 2;
	}
	if (threads)
		kn_set_threads(threads);
	if (!getenv("FERRY_LOG"))
		fr_log_set_levels("warn");
	signal(SIGPIPE, SIG_IGN);

	struct model_ckpt *ck = NULL;
	if (model_ckpt_open(bo.model, &ck, &err) < 0) {
		fprintf(stderr, "rebalance: %s\n", err.msg);
		return 1;
	}
	const struct model_config *cfg = model_ckpt_config(ck);
	int vocab = cfg->vocab_size;
	r.n_moe = model_n_moe_layers(cfg);
	r.n_experts = cfg->n_routed_experts;
	bo.slots = FR_DIV_ROUND_UP(r.n_experts, bo.workers) + spare;
	bo.max_seqs = batch;
	struct bench_cluster cl;
	if (bench_cluster_up(&bo, &cl, &err) < 0) {
		fprintf(stderr, "rebalance: %s\n", err.msg);
		return 1;
	}
	r.srv = cl.srv;

	uint64_t *end = malloc(sizeof(uint64_t) * MAX_STEPS);
	uint64_t *dur = malloc(sizeof(uint64_t) * MAX_STEPS);
	uint64_t *scratch = malloc(sizeof(uint64_t) * MAX_STEPS);
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)batch);
	int32_t *seq = malloc(sizeof(int32_t) * (size_t)batch);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)batch);
	float *logits = malloc(sizeof(float) * (size_t)batch * (size_t)vocab);
	uint64_t rng = 42;
	int n = 0, p = 0, rc = 0;
	pthread_t th;

	pthread_create(&th, NULL, rebalancer, &r);
	while (!atomic_load(&r.done) && n < MAX_STEPS) {
		for (int b = 0; b < batch; b++) {
			tok[b] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
			seq[b] = b;
			pos[b] = p;
		}
		uint64_t t = fr_now_ns();
		if ((rc = co_server_forward(cl.srv, batch, tok, seq, pos, NULL, logits)) < 0) {
			fprintf(stderr, "rebalance: a step failed: %s\n", strerror(-rc));
			break;
		}
		end[n] = fr_now_ns();
		dur[n] = end[n] - t;
		n++;
		p = (p + 1) % MAX_CTX; /* pos 0 starts the sequences over */
	}
	pthread_join(th, NULL);

	printf("live rebalance vs the steps before it: %s, %d MoE layers x %d experts, %d workers "
	       "with %d slots per layer (%d spare), batch %d, %s transport, kernel threads %d, "
	       "Zipf %.2f profiles, %d steps\n\n", bo.model, r.n_moe, r.n_experts, bo.workers,
	       bo.slots, spare, batch, tp_backend_name(bo.backend), kn_threads(), r.skew, n);
	printf("%5s %6s %9s %6s %12s %12s %9s %10s %10s\n", "round", "moves", "seconds", "steps",
	       "median ms", "max ms", "stall ms", "max/med", "quiet/med");
	double ratio[MAX_ROUNDS], quiet[MAX_ROUNDS], stall[MAX_ROUNDS];
	int k_ok = 0;
	for (int k = 0; k < r.rounds; k++) {
		const struct round *x = &r.r[k];
		uint64_t med = 0, mx = 0, qmed = 0, qmx = 0, len = x->t1 - x->t0, unused;
		if (x->rc < 0) {
			printf("%5d failed: %s\n", k + 1, x->err);
			rc = -1;
			continue;
		}
		window(end, dur, n, x->t0 > 60000000000ull ? x->t0 - 60000000000ull : 0, x->t0,
		       scratch, &med, &unused);
		/* every step that overlapped [t0, t1]: it ended after t0, began before t1 */
		for (int i = 0; i < n; i++)
			if (end[i] >= x->t0 && end[i] - dur[i] <= x->t1)
				mx = FR_MAX(mx, dur[i]);
		int steps = 0;
		for (int i = 0; i < n; i++)
			steps += end[i] >= x->t0 && end[i] - dur[i] <= x->t1;
		window(end, dur, n, x->t0 - len, x->t0, scratch, &qmed, &qmx);
		if (!med) {
			printf("%5d no step before it\n", k + 1);
			continue;
		}
		ratio[k_ok] = (double)mx / (double)med;
		quiet[k_ok] = (double)qmx / (double)med;
		stall[k_ok] = mx > med ? (double)(mx - med) / 1e6 : 0;
		printf("%5d %6u %9.2f %6d %12.2f %12.2f %9.2f %10.2f %10.2f\n", k + 1, x->moves,
		       (double)len / 1e9, steps, (double)med / 1e6, (double)mx / 1e6, stall[k_ok],
		       ratio[k_ok], quiet[k_ok]);
		k_ok++;
	}
	if (k_ok) {
		qsort(ratio, (size_t)k_ok, sizeof(double), cmp_dbl);
		qsort(quiet, (size_t)k_ok, sizeof(double), cmp_dbl);
		qsort(stall, (size_t)k_ok, sizeof(double), cmp_dbl);
		printf("\nmedian over %d rounds: stall %.2f ms, longest step during / median before "
		       "%.2f (quiet window of the same length: %.2f)\n", k_ok, stall[k_ok / 2],
		       ratio[k_ok / 2], quiet[k_ok / 2]);
		printf("target: %s  no step during a rebalance longer than 2x the median step before "
		       "(median over rounds %.2fx)\n", ratio[k_ok / 2] <= 2.0 ? "met " : "MISS",
		       ratio[k_ok / 2]);
	}
	bench_cluster_down(&cl);
	model_ckpt_close(ck);
	free(end);
	free(dur);
	free(scratch);
	free(tok);
	free(seq);
	free(pos);
	free(logits);
	return rc < 0 ? 1 : 0;
}
