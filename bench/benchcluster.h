/* SPDX-License-Identifier: Apache-2.0 */
/*
 * benchcluster.h - a cluster for a benchmark: the coordinator in this process (the code
 * ferry-coordinator runs), real ferry-worker processes (found next to the benchmark)
 * joined over gRPC with a fresh cluster secret.
 */
#ifndef FERRY_BENCH_BENCHCLUSTER_H
#define FERRY_BENCH_BENCHCLUSTER_H

#include <sys/types.h>

#include "coordinator/server.h"

struct bench_cluster_opts {
	const char *model;
	enum tp_backend backend;
	enum fp_dtype wire;
	int workers;
	int worker_threads; /* 0: the host's CPUs split between the workers (as ferryctl up) */
	int micro_batches;
	int slots;          /* per worker and MoE layer */
	int max_seqs, max_ctx;
	int heartbeat_ms;
	int min_distinct;   /* placement: every expert on at least this many workers */
};

struct bench_cluster {
	struct co_server *srv;
	pid_t pids[64];
	int n;
};

/* Starts the coordinator and the workers and waits until the cluster serves. */
int bench_cluster_up(const struct bench_cluster_opts *o, struct bench_cluster *c,
		     struct fr_error *err);
/* Stops the coordinator (which tells the workers to go), then reaps the workers. */
void bench_cluster_down(struct bench_cluster *c);

#endif /* FERRY_BENCH_BENCHCLUSTER_H */
