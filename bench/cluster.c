/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cluster - decode throughput of the cluster against the single-process engine on the same
 * checkpoint, measured in the same run.
 *
 * The coordinator runs in this process (coordinator/server.c, the code ferry-coordinator
 * runs); the workers are real ferry-worker processes joined over gRPC and connected over
 * the chosen transport. For every batch size B, B sequences decode one token each per
 * step; tokens/s = B * steps / time. Per worker count and micro-batch count m, the table
 * shows tokens/s, its ratio to the single-process engine at the same B, the time per MoE
 * layer spent in dispatch + combine (routing the tokens out and waiting for the partials),
 * and for m = 2 how much of the communication the ping-pong hides:
 *   exposed(m) = step time(m) - step time(engine)      (what the cluster adds)
 *   hidden     = 1 - exposed(2) / exposed(1)
 *
 * Usage: cluster --model DIR [--workers "1 2 4"] [--batch "1 8 32"] [--steps N]
 *                [--transport shm|tcp] [--threads T] [--worker-threads T] [--wire bf16|f32]
 * (worker threads default to the CPUs split between the workers, as `ferryctl up` does)
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "bench/benchcluster.h"

#define MAX_LIST 8
#define PROMPT 8

struct opts {
	const char *model;
	int workers[MAX_LIST], n_workers;
	int batch[MAX_LIST], n_batch;
	int steps;
	enum tp_backend backend;
	int threads, worker_threads;
	enum fp_dtype wire;
};

static int parse_list(const char *s, int *v, int *n)
{
	char *dup = strdup(s), *save = NULL;
	*n = 0;
	for (char *t = strtok_r(dup, " ,", &save); t; t = strtok_r(NULL, " ,", &save)) {
		int64_t x;
		if (*n == MAX_LIST || fr_parse_i64(t, 1, 4096, &x) < 0) {
			free(dup);
			return -EINVAL;
		}
		v[(*n)++] = (int)x;
	}
	free(dup);
	return *n ? 0 : -EINVAL;
}

/* Seconds per decode step at batch B: B sequences, a PROMPT-token prefill each, then
 * `steps` steps of B rows. fwd runs one forward pass. */
typedef int (*fwd_fn)(void *ctx, int n, const int32_t *tok, const int32_t *seq,
		      const int32_t *pos, float *logits);

static double decode_step_s(fwd_fn fwd, void *ctx, int B, int steps, int vocab)
{
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * PROMPT);
	int32_t *seq = malloc(sizeof(int32_t) * (size_t)B * PROMPT);
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)B * PROMPT);
	float *logits = malloc(sizeof(float) * (size_t)B * PROMPT * (size_t)vocab);
	uint64_t rng = 42;
	double t = -1;

	for (int b = 0; b < B; b++)
		for (int p = 0; p < PROMPT; p++) {
			int i = b * PROMPT + p;
			tok[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
			seq[i] = b;
			pos[i] = p;
		}
	if (fwd(ctx, B * PROMPT, tok, seq, pos, logits) < 0)
		goto out;
	int warm = 2;
	uint64_t t0 = 0;
	for (int s = 0; s < warm + steps; s++) {
		if (s == warm)
			t0 = fr_now_ns();
		for (int b = 0; b < B; b++) {
			tok[b] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
			seq[b] = b;
			pos[b] = PROMPT + s;
		}
		if (fwd(ctx, B, tok, seq, pos, logits) < 0)
			goto out;
	}
	t = (double)(fr_now_ns() - t0) / 1e9 / steps;
out:
	free(tok);
	free(seq);
	free(pos);
	free(logits);
	return t;
}

static int engine_fwd(void *ctx, int n, const int32_t *tok, const int32_t *seq,
		      const int32_t *pos, float *logits)
{
	struct co_engine *e = ctx;
	for (int i = 0; i < n; i++)
		if (pos[i] == 0)
			co_engine_reset_seq(e, seq[i]);
	return co_engine_forward(e, n, tok, seq, pos, NULL, NULL, logits);
}

static int server_fwd(void *ctx, int n, const int32_t *tok, const int32_t *seq,
		      const int32_t *pos, float *logits)
{
	return co_server_forward(ctx, n, tok, seq, pos, NULL, logits);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "workers", required_argument, NULL, 'w' },
		{ "batch", required_argument, NULL, 'b' },
		{ "steps", required_argument, NULL, 's' },
		{ "transport", required_argument, NULL, 't' },
		{ "threads", required_argument, NULL, 'T' },
		{ "worker-threads", required_argument, NULL, 'W' },
		{ "wire", required_argument, NULL, 'x' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .steps = 16, .backend = TP_BACKEND_SHM, .wire = FP_DTYPE_BF16,
			  .worker_threads = 0 };
	struct fr_error err = { { 0 } };
	int c;
	int64_t v;

	parse_list("1 2 4", o.workers, &o.n_workers);
	parse_list("1 8 32", o.batch, &o.n_batch);
	while ((c = getopt_long(argc, argv, "m:w:b:s:t:T:W:x:", lo, NULL)) != -1) {
		int bad = 0;
		switch (c) {
		case 'm': o.model = optarg; break;
		case 'w': bad = parse_list(optarg, o.workers, &o.n_workers) < 0; break;
		case 'b': bad = parse_list(optarg, o.batch, &o.n_batch) < 0; break;
		case 's': bad = fr_parse_i64(optarg, 1, 100000, &v) < 0; o.steps = (int)v; break;
		case 't': bad = tp_backend_parse(optarg, &o.backend) < 0; break;
		case 'T': bad = fr_parse_i64(optarg, 1, 1024, &v) < 0; o.threads = (int)v; break;
		case 'W': bad = fr_parse_i64(optarg, 1, 1024, &v) < 0; o.worker_threads = (int)v; break;
		case 'x':
			bad = strcmp(optarg, "bf16") != 0 && strcmp(optarg, "f32") != 0;
			o.wire = strcmp(optarg, "f32") == 0 ? FP_DTYPE_F32 : FP_DTYPE_BF16;
			break;
		default: bad = 1;
		}
		if (bad) {
			fprintf(stderr, "usage: cluster --model DIR [--workers \"1 2 4\"] [--batch \"1 8 32\"] "
				"[--steps N] [--transport shm|tcp] [--threads T] [--worker-threads T] "
				"[--wire bf16|f32]\n");
			return 2;
		}
	}
	if (!o.model) {
		fprintf(stderr, "cluster: --model DIR is required\n");
		return 2;
	}
	if (o.threads)
		kn_set_threads(o.threads);
	if (!getenv("FERRY_LOG"))
		fr_log_set_levels("warn");
	signal(SIGPIPE, SIG_IGN);

	int max_b = 1;
	for (int i = 0; i < o.n_batch; i++)
		max_b = FR_MAX(max_b, o.batch[i]);

	/* The single-process engine: the ceiling. */
	struct model_ckpt *ck = NULL;
	struct model_weights *w = NULL;
	struct moe moe = { 0 };
	struct co_engine *e = NULL;
	if (model_ckpt_open(o.model, &ck, &err) < 0 ||
	    model_weights_bind(ck, MODEL_BIND_NO_ROUTED, &w, &err) < 0 ||
	    moe_local_create(ck, 1, &moe, &err) < 0) {
		fprintf(stderr, "cluster: %s\n", err.msg);
		return 1;
	}
	const struct model_config *cfg = model_ckpt_config(ck);
	int n_moe = model_n_moe_layers(cfg);
	struct co_engine_opts eo = { .max_seqs = max_b, .max_ctx = PROMPT + 64, .max_batch = 256 };
	if (co_engine_create(w, moe, &eo, &e, &err) < 0) {
		fprintf(stderr, "cluster: %s\n", err.msg);
		return 1;
	}
	double base[MAX_LIST];
	for (int i = 0; i < o.n_batch; i++)
		base[i] = decode_step_s(engine_fwd, e, o.batch[i], o.steps, cfg->vocab_size);
	co_engine_destroy(e);
	moe_destroy(&moe);

	printf("cluster decode vs the single-process engine: %s, %d MoE layers, %s transport, "
	       "%s wire, kernel threads %d (workers: %d each, 0 = CPUs / workers), %d steps\n\n",
	       o.model, n_moe, tp_backend_name(o.backend), o.wire == FP_DTYPE_F32 ? "f32" : "bf16",
	       kn_threads(), o.worker_threads, o.steps);
	printf("%-8s %-3s %6s %12s %12s %9s %16s %8s\n", "workers", "m", "batch", "engine tok/s",
	       "cluster tok/s", "ratio", "disp+comb ms/layer", "hidden");
	for (int wi = 0; wi < o.n_workers; wi++) {
		double step[2][MAX_LIST], xfer[2][MAX_LIST];
		for (int m = 1; m <= 2; m++) {
			struct bench_cluster cr;
			struct bench_cluster_opts bo = {
				.model = o.model, .backend = o.backend, .wire = o.wire,
				.workers = o.workers[wi], .worker_threads = o.worker_threads,
				.micro_batches = m,
				.slots = FR_DIV_ROUND_UP(cfg->n_routed_experts, o.workers[wi]),
				.max_seqs = max_b, .max_ctx = PROMPT + 64,
			};
			if (bench_cluster_up(&bo, &cr, &err) < 0) {
				fprintf(stderr, "cluster: %d workers: %s\n", o.workers[wi], err.msg);
				return 1;
			}
			for (int i = 0; i < o.n_batch; i++) {
				uint64_t prof[CO_PROF__COUNT];
				co_server_prof(cr.srv, prof);
				step[m - 1][i] = decode_step_s(server_fwd, cr.srv, o.batch[i], o.steps,
							       cfg->vocab_size);
				co_server_prof(cr.srv, prof);
				/* Prefill + warm-up steps are in prof too: scale to the decode steps. */
				xfer[m - 1][i] = (double)prof[CO_PROF_EXPERTS] / 1e6 /
						 (double)(o.steps + 3) / n_moe;
			}
			bench_cluster_down(&cr);
		}
		for (int m = 1; m <= 2; m++)
			for (int i = 0; i < o.n_batch; i++) {
				double tb = base[i], tc = step[m - 1][i];
				char hid[16] = "";
				if (m == 2) {
					double e1 = step[0][i] - tb, e2 = tc - tb;
					if (e1 > 0)
						snprintf(hid, sizeof(hid), "%.2f", 1.0 - e2 / e1);
				}
				printf("%-8d %-3d %6d %12.1f %12.1f %9.2f %16.3f %8s\n", o.workers[wi], m,
				       o.batch[i], o.batch[i] / tb, o.batch[i] / tc, tb / tc,
				       xfer[m - 1][i], hid);
			}
	}
	model_weights_free(w);
	model_ckpt_close(ck);
	return 0;
}
