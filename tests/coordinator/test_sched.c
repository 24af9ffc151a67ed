/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_sched - the continuous-batching scheduler over a fake engine whose "model" always
 * predicts token + 1, so every request's output is known. Checks: outputs, chunked prefill
 * (a long prompt never stops others from decoding), priority order, first come first served
 * within a priority, aging (no starvation), the bounded queue, KV-block admission,
 * cancellation of queued and running requests (blocks back at once), mixed routing knobs.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/scheduler.h"
#include "tests/test.h"

#define V 64
#define MAX_CALLS 20000

struct fake {
	pthread_mutex_t mu;
	int calls;
	int delay_us;
	/* Per call: rows, rows of each request (by the first prompt token, which the tests
	 * make unique), order in which requests first appeared. */
	int rows[MAX_CALLS];
	int first_seen[V];       /* call index where token t's request was first prefilled */
	int order[V], n_order;
	int decode_rows_with[MAX_CALLS];
	int knob_calls;          /* calls with top_k != 0 */
	int released;
};

static struct fake F;

static int fake_forward(void *ctx, int n, const int32_t *tok, const int32_t *seq,
			const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
			float *logits, struct fr_error *err)
{
	(void)ctx;
	(void)seq;
	pthread_mutex_lock(&F.mu);
	int c = F.calls < MAX_CALLS ? F.calls++ : MAX_CALLS - 1;
	F.rows[c] = n;
	F.knob_calls += kb && kb->top_k != 0;
	for (int i = 0; i < n; i++) {
		if (pos[i] == 0 && F.first_seen[tok[i]] < 0) {
			F.first_seen[tok[i]] = c;
			F.order[F.n_order++] = tok[i];
		}
		if (pos[i] > 0 && (i == 0 || seq[i - 1] != seq[i]) && (i + 1 == n || seq[i + 1] != seq[i]))
			F.decode_rows_with[c]++; /* a lone row past position 0: a decode row */
	}
	pthread_mutex_unlock(&F.mu);
	for (int i = 0; i < n; i++) {
		if (want && !want[i])
			continue;
		float *row = logits + (size_t)i * V;
		for (int v = 0; v < V; v++)
			row[v] = 0.0f;
		row[(tok[i] + 1) % V] = 10.0f;
	}
	if (F.delay_us)
		usleep((useconds_t)F.delay_us);
	(void)err;
	return 0;
}

static void fake_release(void *ctx, int seq)
{
	(void)ctx;
	(void)seq;
	pthread_mutex_lock(&F.mu);
	F.released++;
	pthread_mutex_unlock(&F.mu);
}

static void fake_reset(int delay_us)
{
	pthread_mutex_lock(&F.mu);
	F.calls = 0;
	F.delay_us = delay_us;
	F.n_order = 0;
	F.knob_calls = 0;
	for (int t = 0; t < V; t++)
		F.first_seen[t] = -1;
	memset(F.decode_rows_with, 0, sizeof(F.decode_rows_with));
	pthread_mutex_unlock(&F.mu);
}

static struct co_sched *mk(int max_seqs, int max_batch, int chunk, int kv_blocks, int queue_max,
			   int aging_ms)
{
	struct co_sched_opts o = { .max_seqs = max_seqs, .max_batch = max_batch,
				   .prefill_chunk = chunk, .max_ctx = 4096, .kv_blocks = kv_blocks,
				   .block_size = 16, .queue_max = queue_max, .aging_ms = aging_ms,
				   .vocab = V, .eos = -1 };
	struct co_sched_engine eng = { .forward = fake_forward, .release = fake_release };
	struct co_sched *s = NULL;
	struct fr_error err = { { 0 } };
	if (co_sched_create(&o, &eng, &s, &err) < 0) {
		fprintf(stderr, "co_sched_create: %s\n", err.msg);
		exit(1);
	}
	return s;
}

/* A request whose prompt is [first, first+1, ...] (mod V), n tokens long. */
static struct co_req *submit(struct co_sched *s, int first, int n, int max_new, int prio,
			     int top_k, int *ret_rc)
{
	int32_t *p = malloc((size_t)n * sizeof(*p));
	for (int i = 0; i < n; i++)
		p[i] = (first + i) % V;
	struct co_req_spec sp = { .kind = CO_REQ_GENERATE, .prompt = p, .n_prompt = n,
				  .max_new = max_new, .ignore_eos = true, .priority = prio,
				  .sample = { .top_p = 1.0f }, .knobs = { .top_k = top_k } };
	struct co_req *r = NULL;
	struct fr_error err = { { 0 } };
	int rc = co_sched_submit(s, &sp, &r, &err);
	free(p);
	if (ret_rc)
		*ret_rc = rc;
	return rc < 0 ? NULL : r;
}

/* Waits until k requests run (so later submits surely queue behind them). */
static void wait_running(struct co_sched *s, int k)
{
	struct co_sched_stats st;
	for (int i = 0; i < 5000; i++) {
		co_sched_stats(s, &st);
		if (st.running >= k)
			return;
		usleep(1000);
	}
	fprintf(stderr, "never %d running\n", k);
	t_failures++;
}

/* Reads a request to its end; returns the generated tokens (count in *n; out holds 1024). */
static enum co_finish drain(struct co_req *r, int32_t *out, int *n)
{
	struct co_req_out o;
	*n = 0;
	for (;;) {
		if (!co_req_next(r, 5000, &o)) {
			fprintf(stderr, "request stuck\n");
			return CO_FINISH_ERROR;
		}
		for (int i = 0; i < o.n_tokens; i++, (*n)++)
			if (*n < 1024)
				out[*n] = o.tokens[i];
		free(o.logits); /* return_logits rows are the caller's */
		if (o.finish)
			return o.finish;
	}
}

static void test_outputs(void)
{
	struct co_sched *s = mk(8, 64, 16, 1024, 64, 1000);
	struct co_req *r[8];
	fake_reset(0);
	for (int i = 0; i < 8; i++)
		r[i] = submit(s, i * 7, 3 + 5 * i, 10, 0, 0, NULL);
	for (int i = 0; i < 8; i++) {
		int32_t out[1024];
		int n;
		enum co_finish f = drain(r[i], out, &n);
		CHECK(f == CO_FINISH_LENGTH && n == 10);
		int last = (i * 7 + 3 + 5 * i - 1) % V;
		for (int j = 0; j < n; j++)
			CHECK(out[j] == (last + 1 + j) % V);
		co_req_put(r[i]);
	}
	struct co_sched_stats st;
	co_sched_stats(s, &st);
	CHECK(st.running == 0 && st.queued == 0 && st.free_blocks == 1024 && st.finished == 8);
	co_sched_destroy(s);
	printf("ok   outputs: 8 concurrent requests, exact greedy outputs, every block back\n");
}

static void test_chunked_prefill(void)
{
	/* One request decoding; then a 600-token prompt arrives: its prefill is chunked (at
	 * most 32 rows a step) and every one of those steps still carries the decode row. */
	struct co_sched *s = mk(4, 48, 32, 1024, 64, 1000);
	fake_reset(200);
	struct co_req *d = submit(s, 1, 4, 200, 0, 0, NULL);
	wait_running(s, 1);
	struct co_req *l = submit(s, 2, 600, 1, 0, 0, NULL);
	int32_t out[1024];
	int n;
	CHECK(drain(l, out, &n) == CO_FINISH_LENGTH && n == 1 && out[0] == (2 + 600) % V);
	pthread_mutex_lock(&F.mu);
	int start = F.first_seen[2], steps = 0, with_decode = 0, max_rows = 0;
	for (int c = start; c < F.calls && steps < 600 / 32; c++, steps++) {
		with_decode += F.decode_rows_with[c] > 0;
		max_rows = FR_MAX(max_rows, F.rows[c]);
	}
	pthread_mutex_unlock(&F.mu);
	CHECK(steps >= 600 / 32 && with_decode == steps && max_rows <= 33);
	printf("ok   chunked prefill: %d prefill steps of <= %d rows, the decode row in all %d\n",
	       steps, max_rows, with_decode);
	co_req_put(l);
	co_req_cancel(d);
	CHECK(drain(d, out, &n) == CO_FINISH_CANCELLED);
	co_req_put(d);
	co_sched_destroy(s);
}

static void test_priority_fifo_aging(void)
{
	/* One slot: A runs; B(0), C(5), D(0), E(5) queue: admission order C, E, B, D. */
	struct co_sched *s = mk(1, 64, 64, 1024, 64, 100000);
	fake_reset(1000);
	struct co_req *a = submit(s, 10, 4, 30, 0, 0, NULL);
	wait_running(s, 1);
	struct co_req *b = submit(s, 11, 4, 2, 0, 0, NULL);
	struct co_req *c = submit(s, 12, 4, 2, 5, 0, NULL);
	struct co_req *d = submit(s, 13, 4, 2, 0, 0, NULL);
	struct co_req *e = submit(s, 14, 4, 2, 5, 0, NULL);
	int32_t out[1024];
	int n;
	struct co_req *all[] = { a, b, c, d, e };
	for (int i = 0; i < 5; i++) {
		drain(all[i], out, &n);
		co_req_put(all[i]);
	}
	pthread_mutex_lock(&F.mu);
	int want[] = { 10, 12, 14, 11, 13 };
	bool ok = F.n_order == 5;
	for (int i = 0; ok && i < 5; i++)
		ok = F.order[i] == want[i];
	pthread_mutex_unlock(&F.mu);
	CHECK(ok);
	printf("ok   priority, then first come first served: admitted %d %d %d %d %d\n", F.order[0],
	       F.order[1], F.order[2], F.order[3], F.order[4]);
	co_sched_destroy(s);

	/* Aging 20 ms per level: L (priority 0) waits 200 ms (worth 10 levels) behind a long
	 * runner; H (priority 5) arrives then; L goes first. */
	s = mk(1, 64, 64, 1024, 64, 20);
	fake_reset(1000);
	a = submit(s, 20, 4, 300, 0, 0, NULL);
	wait_running(s, 1);
	struct co_req *lo = submit(s, 21, 4, 2, 0, 0, NULL);
	usleep(200000);
	struct co_req *hi = submit(s, 22, 4, 2, 5, 0, NULL);
	struct co_req *all2[] = { a, lo, hi };
	for (int i = 0; i < 3; i++) {
		drain(all2[i], out, &n);
		co_req_put(all2[i]);
	}
	pthread_mutex_lock(&F.mu);
	CHECK(F.n_order == 3 && F.order[1] == 21 && F.order[2] == 22);
	pthread_mutex_unlock(&F.mu);
	printf("ok   aging: a priority-0 request that waited 200 ms goes before a new priority 5\n");
	co_sched_destroy(s);
}

static void test_queue_and_blocks(void)
{
	/* Queue of 2 behind one slot: the 4th submit is refused. */
	struct co_sched *s = mk(1, 64, 64, 1024, 2, 1000);
	fake_reset(2000);
	int rc;
	struct co_req *a = submit(s, 30, 4, 50, 0, 0, &rc);
	wait_running(s, 1);
	struct co_req *b = submit(s, 31, 4, 2, 0, 0, &rc);
	struct co_req *c = submit(s, 32, 4, 2, 0, 0, &rc);
	struct co_req *d = submit(s, 33, 4, 2, 0, 0, &rc);
	CHECK(a && b && c && !d && rc == -EAGAIN);
	/* Cancel a queued one: it ends at once; the running one: its blocks come back. */
	int32_t out[1024];
	int n;
	co_req_cancel(c);
	CHECK(drain(c, out, &n) == CO_FINISH_CANCELLED);
	co_req_cancel(a);
	CHECK(drain(a, out, &n) == CO_FINISH_CANCELLED);
	CHECK(drain(b, out, &n) == CO_FINISH_LENGTH && n == 2);
	co_req_put(a);
	co_req_put(b);
	co_req_put(c);
	struct co_sched_stats st;
	co_sched_stats(s, &st);
	CHECK(st.free_blocks == 1024 && st.running == 0 && st.queued == 0 && st.refused == 1);
	co_sched_destroy(s);
	printf("ok   bounded queue (-EAGAIN), cancellation of queued and running requests\n");

	/* KV admission: 8 blocks (128 positions); requests of 4 blocks run two at a time,
	 * one of 9 blocks is refused outright. */
	s = mk(8, 64, 64, 8, 64, 1000);
	fake_reset(500);
	struct co_req *r[6];
	for (int i = 0; i < 6; i++)
		r[i] = submit(s, 40 + i, 4, 60, 0, 0, NULL);
	struct co_sched_stats mid;
	wait_running(s, 2);
	co_sched_stats(s, &mid);
	for (int i = 0; i < 6; i++) {
		CHECK(r[i] && drain(r[i], out, &n) == CO_FINISH_LENGTH && n == 60);
		co_req_put(r[i]);
	}
	CHECK(mid.running == 2 && mid.queued == 4 && mid.free_blocks == 0);
	struct co_req *big = submit(s, 50, 4, 200, 0, 0, &rc);
	CHECK(!big && rc == -EINVAL);
	co_sched_destroy(s);
	printf("ok   KV admission: 2 of 6 run while blocks are short (running %d, queued %d), "
	       "a request beyond the pool refused\n", mid.running, mid.queued);
}

static void test_knobs(void)
{
	struct co_sched *s = mk(8, 64, 64, 1024, 64, 1000);
	fake_reset(0);
	struct co_req *a = submit(s, 1, 4, 8, 0, 0, NULL), *b = submit(s, 9, 4, 8, 0, 2, NULL);
	int32_t out[1024];
	int n;
	CHECK(drain(a, out, &n) == CO_FINISH_LENGTH && out[7] == (4 + 8) % V);
	CHECK(drain(b, out, &n) == CO_FINISH_LENGTH && out[7] == (12 + 8) % V);
	co_req_put(a);
	co_req_put(b);
	pthread_mutex_lock(&F.mu);
	CHECK(F.knob_calls > 0 && F.knob_calls < F.calls);
	pthread_mutex_unlock(&F.mu);
	co_sched_destroy(s);
	printf("ok   mixed routing knobs: separate forward passes, both outputs right\n");
}

/* A sampled request (temperature 5: the fake's next token has p ~0.1) with its own seed;
 * every third returns logits, which draws in take() rather than ahead of it. */
static struct co_req *submit_sampled(struct co_sched *s, int first, int max_new, uint64_t seed,
				     bool logits, float penalty)
{
	int32_t p[4];
	for (int i = 0; i < 4; i++)
		p[i] = (first + i) % V;
	struct co_req_spec sp = { .kind = CO_REQ_GENERATE, .prompt = p, .n_prompt = 4,
				  .max_new = max_new, .ignore_eos = true, .return_logits = logits,
				  .sample = { .temperature = 5.0f, .top_p = 0.9f, .rep_penalty = penalty,
					      .seed = seed } };
	struct co_req *r = NULL;
	struct fr_error err = { { 0 } };
	if (co_sched_submit(s, &sp, &r, &err) < 0) {
		fprintf(stderr, "submit: %s\n", err.msg);
		t_failures++;
	}
	return r;
}

/* Sampled requests batched together draw the same tokens as each alone: the batch's draws
 * run in parallel, each request with its own generator. */
static void test_sampled_batch_invariant(void)
{
	enum { N = 9, GEN = 24 };
	int32_t alone[N][1024], together[N][1024];
	int n_alone[N], n_together[N];
	struct co_req *r[N];

	struct co_sched *s = mk(N, 64, 16, 1024, 64, 1000);
	fake_reset(0);
	for (int i = 0; i < N; i++) {
		r[i] = submit_sampled(s, i * 5, GEN, 100 + (uint64_t)i, i % 3 == 2, i % 2 ? 1.3f : 1.0f);
		if (r[i]) {
			drain(r[i], alone[i], &n_alone[i]);
			co_req_put(r[i]);
		}
	}
	fake_reset(300); /* slow steps: the nine surely share them */
	for (int i = 0; i < N; i++)
		r[i] = submit_sampled(s, i * 5, GEN, 100 + (uint64_t)i, i % 3 == 2, i % 2 ? 1.3f : 1.0f);
	for (int i = 0; i < N; i++) {
		if (!r[i])
			continue;
		drain(r[i], together[i], &n_together[i]);
		co_req_put(r[i]);
		CHECK(n_alone[i] == GEN && n_together[i] == GEN);
		CHECK(memcmp(alone[i], together[i], sizeof(int32_t) * GEN) == 0);
	}
	int distinct = 0; /* the draws are random: not the greedy successor every time */
	for (int j = 1; j < GEN; j++)
		distinct += together[0][j] != (together[0][j - 1] + 1) % V;
	CHECK(distinct > 0);
	co_sched_destroy(s);
	printf("ok   sampled: %d requests drawn in one batch = each alone, token for token\n", N);
}

int main(void)
{
	pthread_mutex_init(&F.mu, NULL);
	test_outputs();
	test_chunked_prefill();
	test_priority_fifo_aging();
	test_queue_and_blocks();
	test_knobs();
	test_sampled_batch_invariant();
	printf("%d failure(s)\n", t_failures);
	return t_failures ? 1 : 0;
}
