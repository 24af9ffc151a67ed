/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_serving - Generate and Score through the real handlers, scheduler and gRPC server
 * (tests/coordinator/serve_harness.h: a fake engine with known logits), checking every streamed
 * token and logit:
 *   shapes  the shapes that crashed the coordinator (128/2, 120/10, 127/20, 300/2 with
 *           prefill_chunk 512; 100/40 and 10/200) with slow and fast readers
 *   sweep   prompt lengths x max_tokens x prefill chunks around the message-chunk and
 *           prefill-chunk boundaries, with the default and a tiny stream buffer
 *   score   the largest Score answer, and a prompt whose answer could not be one message
 *   stall   8 clients that never read their return_logits streams: their requests are held
 *           back (KV kept), the coordinator's RSS stays within a bound, another client is
 *           not slowed, and after stall_timeout the streams end RESOURCE_EXHAUSTED and
 *           their KV blocks are freed
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/coordinator/serve_harness.h"
#include "common/common.h"

/* Every check here guards what follows: a failure ends the test. */
#define NEED(cond)                                                                          \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "%s:%d: NEED(%s) failed\n", __FILE__, __LINE__, #cond);  \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

static int32_t *prompt_of(int n, int32_t first, int vocab)
{
	int32_t *p = malloc((size_t)n * sizeof(*p));
	NEED(p);
	for (int i = 0; i < n; i++)
		p[i] = (first + i * 3) % vocab;
	return p;
}

/* One greedy request, checked. */
static void run_one(struct sh *h, int n_prompt, int max_tokens, bool logits,
		    const struct sh_read *rd, const char *what)
{
	Ferry__V1__GenerateRequest r = FERRY__V1__GENERATE_REQUEST__INIT;
	struct sh_result res;
	struct fr_error err = { { 0 } };
	int32_t *p = prompt_of(n_prompt, n_prompt % 97 + 2, h->o.vocab);

	r.prompt_tokens = p;
	r.n_prompt_tokens = (size_t)n_prompt;
	r.max_tokens = (uint32_t)max_tokens;
	r.return_logits = logits;
	r.ignore_eos = true;
	NEED(sh_generate(h, &r, rd, &res) == 0);
	if (sh_check(h, p, n_prompt, logits, &res, &err) < 0 || res.n_tokens != max_tokens) {
		fprintf(stderr, "FAIL %s: prompt %d, max_tokens %d: %s (tokens %d)\n", what,
			n_prompt, max_tokens, err.msg[0] ? err.msg : "wrong count", res.n_tokens);
		exit(1);
	}
	sh_result_fini(&res);
	free(p);
}

struct job {
	struct sh *h;
	int n_prompt, max_tokens, delay_us;
	const char *what;
};

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct sh_read rd = { .delay_us = j->delay_us };
	run_one(j->h, j->n_prompt, j->max_tokens, true, &rd, j->what);
	return NULL;
}

/* Runs jobs[n] at once. */
static void run_parallel(struct job *jobs, int n)
{
	pthread_t *t = calloc((size_t)n, sizeof(*t));
	NEED(t);
	for (int i = 0; i < n; i++)
		NEED(pthread_create(&t[i], NULL, job_main, &jobs[i]) == 0);
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	free(t);
}

static void test_shapes(void)
{
	static const int shapes[][3] = { /* prompt, max_tokens, prefill_chunk */
		{ 128, 2, 0 }, { 120, 10, 0 }, { 127, 20, 0 }, { 300, 2, 512 },
		{ 100, 40, 0 }, { 10, 200, 0 },
	};
	struct fr_error err = { { 0 } };

	for (size_t i = 0; i < FR_ARRAY_SIZE(shapes); i++) {
		struct sh_opts o = { .prefill_chunk = shapes[i][2],
				     .max_batch = shapes[i][2] ? 512 : 0 };
		struct sh *h;
		NEED(sh_create(&o, &h, &err) == 0);
		/* Slow and fast readers of the same shape at once: the scheduler keeps adding
		 * rows while a handler is still sending the ones it took. */
		struct job jobs[4];
		for (int k = 0; k < 4; k++)
			jobs[k] = (struct job){ h, shapes[i][0], shapes[i][1], k * 1500, "shape" };
		for (int rep = 0; rep < 3; rep++)
			run_parallel(jobs, 4);
		printf("shape %d/%d (prefill_chunk %d): 12 streams, every token and logit as "
		       "expected\n", shapes[i][0], shapes[i][1], shapes[i][2]);
		sh_destroy(h);
	}
}

static void test_sweep(void)
{
	static const int prompts[] = { 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
				       255, 256, 257 };
	static const int maxes[] = { 1, 2, 31, 32, 33 };
	static const int chunks[] = { 16, 64, 512 };
	static const size_t buffers[] = { 0, 8 * 512 * sizeof(float) }; /* default, 8 rows */
	struct fr_error err = { { 0 } };
	int n = 0;

	for (size_t b = 0; b < FR_ARRAY_SIZE(buffers); b++)
		for (size_t c = 0; c < FR_ARRAY_SIZE(chunks); c++) {
			/* 32 rows of 512 logits per message. */
			struct sh_opts o = { .prefill_chunk = chunks[c], .max_batch = 512,
					     .logits_msg_bytes = 32 * 512 * sizeof(float),
					     .stream_buffer = buffers[b] };
			struct sh *h;
			NEED(sh_create(&o, &h, &err) == 0);
			for (size_t p = 0; p < FR_ARRAY_SIZE(prompts); p++) {
				struct job jobs[FR_ARRAY_SIZE(maxes)];
				for (size_t m = 0; m < FR_ARRAY_SIZE(maxes); m++)
					jobs[m] = (struct job){ h, prompts[p], maxes[m],
								(int)(m % 2) * 300, "sweep" };
				run_parallel(jobs, (int)FR_ARRAY_SIZE(maxes));
				n += (int)FR_ARRAY_SIZE(maxes);
			}
			sh_destroy(h);
		}
	printf("sweep: %d streams (prompts 1..257 x max_tokens 1..33 x prefill chunks 16/64/512 x "
	       "stream buffers default/8 rows, 32 rows a message): all exact\n", n);
}

static void test_score(void)
{
	struct fr_error err = { { 0 } };
	struct sh_opts o = { .max_ctx = 512 };
	struct sh *h;

	NEED(sh_create(&o, &h, &err) == 0);
	Ferry__V1__ScoreRequest r = FERRY__V1__SCORE_REQUEST__INIT;
	int32_t *p = prompt_of(512, 7, h->o.vocab);
	r.tokens = p;
	r.n_tokens = 512;
	ProtobufCMessage *m = NULL;
	NEED(rpc_unary(h->ch, RPC_M_SCORE, &r.base, &ferry__v1__score_response__descriptor, 10000,
			&m, &err) == 0);
	const Ferry__V1__ScoreResponse *s = (const Ferry__V1__ScoreResponse *)m;
	NEED(s->n_tokens == 512 && s->n_logprobs == 511);
	protobuf_c_message_free_unpacked(m, NULL);
	free(p);
	sh_destroy(h);

	/* A context so long that the answer would not fit one message: refused up front. */
	struct model_config cfg = { .vocab_size = 512, .n_routed_experts = 16,
				    .num_experts_per_tok = 4 };
	struct co_serving sv = { .cfg = &cfg, .max_ctx = 4 << 20 };
	struct co_req_spec spec;
	int32_t *ids = NULL;
	int n = (int)(RPC_MAX_MESSAGE_BYTES / 8);
	p = calloc((size_t)n, sizeof(*p));
	NEED(p);
	r.tokens = p;
	r.n_tokens = (size_t)n;
	NEED(co_score_validate(&sv, &r, &spec, &ids, &err) == -EINVAL && !ids);
	NEED(strstr(err.msg, "message limit"));
	printf("score: 512 tokens answered; %d tokens refused: %s\n", n, err.msg);
	free(p);
}

/* ---- stall ------------------------------------------------------------------------------ */

#define STALL_VOCAB 32768               /* 128 KiB a row */
#define STALL_BUFFER (1u << 20)         /* 8 rows */
#define STALL_STREAMS 8
#define STALL_MS 2500

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	NEED(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* The child: opens n return_logits streams and reads nothing until its stdin closes; then
 * every stream must end RESOURCE_EXHAUSTED saying the client read nothing. */
static int stall_client(const char *addr, int n)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch;
	struct rpc_stream *st[STALL_STREAMS];
	int32_t prompt[200];
	char c;

	NEED(n <= STALL_STREAMS);
	for (int i = 0; i < 200; i++)
		prompt[i] = (i * 11 + 1) % STALL_VOCAB;
	NEED(rpc_channel_create(addr, NULL, &ch, &err) == 0);
	for (int i = 0; i < n; i++) {
		Ferry__V1__GenerateRequest r = FERRY__V1__GENERATE_REQUEST__INIT;
		r.prompt_tokens = prompt;
		r.n_prompt_tokens = 200;
		r.max_tokens = 250;
		r.return_logits = true;
		NEED(rpc_stream_open(ch, RPC_M_GENERATE, &r.base,
				      &ferry__v1__generate_response__descriptor, 0, &st[i], &err) == 0);
	}
	printf("client: %d streams open, reading nothing\n", n);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	int bad = 0;
	for (int i = 0; i < n; i++) {
		ProtobufCMessage *m;
		int rc, msgs = 0;
		while ((rc = rpc_stream_next(st[i], &m, &err)) > 0) {
			protobuf_c_message_free_unpacked(m, NULL);
			msgs++;
		}
		if (rc != -EAGAIN || !strstr(err.msg, "RESOURCE_EXHAUSTED") ||
		    !strstr(err.msg, "read nothing")) {
			fprintf(stderr, "client: stream %d ended %d after %d messages: %s\n", i, rc,
				msgs, err.msg);
			bad++;
		} else if (i == 0) {
			printf("client: stream 0 ended after %d messages: %s\n", msgs, err.msg);
		}
		rpc_stream_destroy(st[i]);
	}
	rpc_channel_destroy(ch);
	return bad ? 1 : 0;
}

static uint64_t timed_request(struct sh *h)
{
	uint64_t t0 = fr_now_ns();
	run_one(h, 40, 20, true, NULL, "reader beside stalled streams");
	return fr_now_ns() - t0;
}

static void test_stall(void)
{
	struct fr_error err = { { 0 } };
	struct sh_opts o = { .vocab = STALL_VOCAB, .max_ctx = 512, .max_seqs = 16,
			     .stream_buffer = STALL_BUFFER, .stall_ms = STALL_MS,
			     .step_delay_us = 200 };
	struct sh *h;
	struct co_sched_stats ss;

	NEED(sh_create(&o, &h, &err) == 0);
	uint64_t base_ns = UINT64_MAX;
	for (int i = 0; i < 3; i++)
		base_ns = FR_MIN(base_ns, timed_request(h));
	long rss0 = rss_kib();

	int in[2], out[2];
	NEED(pipe(in) == 0 && pipe(out) == 0);
	pid_t pid = fork();
	NEED(pid >= 0);
	if (pid == 0) {
		/* exec: gRPC's threads do not survive fork(). */
		char n[16];
		snprintf(n, sizeof(n), "%d", STALL_STREAMS);
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl("/proc/self/exe", "test_serving", "stall-client", h->addr, n, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	char line[256];
	FILE *cf = fdopen(out[0], "r");
	NEED(cf && fgets(line, sizeof(line), cf));
	fputs(line, stdout);

	/* Wait until every stalled request is held back by its full buffer. */
	uint64_t t_open = fr_now_ns();
	for (;;) {
		co_sched_stats(h->sched, &ss);
		if (ss.throttled == STALL_STREAMS)
			break;
		if (fr_now_ns() - t_open > 20ull * 1000000000ull) {
			fprintf(stderr, "FAIL: only %d of %d unread streams held back (running %d)\n",
				ss.throttled, STALL_STREAMS, ss.running);
			exit(1);
		}
		usleep(20000);
	}
	printf("%d unread streams held back after %.2f s (KV kept: %d of %d blocks free)\n",
	       ss.throttled, (double)(fr_now_ns() - t_open) / 1e9, ss.free_blocks,
	       ss.total_blocks);
	NEED(ss.free_blocks < ss.total_blocks);
	/* Another client meanwhile: as fast as before (the held-back requests take no rows). */
	uint64_t during_ns = UINT64_MAX;
	for (int i = 0; i < 3; i++)
		during_ns = FR_MIN(during_ns, timed_request(h));
	long peak = 0;
	for (int i = 0; i < 10; i++) {
		peak = FR_MAX(peak, rss_kib());
		usleep(50000);
	}
	co_sched_stats(h->sched, &ss);
	long growth = peak - rss0;
	/* Per stream: the scheduler's buffer, the rows its handler took, and their packed copy
	 * in gRPC; plus slack for gRPC's own per-call state. */
	long bound = (long)STALL_STREAMS * 3 * (STALL_BUFFER / 1024) + 48 * 1024;
	printf("RSS %ld KiB before, %ld KiB peak with %d unread streams: +%ld KiB (bound %ld KiB "
	       "= %d x 3 x stream_buffer %u KiB + 48 MiB)\n", rss0, peak, STALL_STREAMS, growth,
	       bound, STALL_STREAMS, STALL_BUFFER / 1024);
	printf("a reader's request: %.1f ms alone, %.1f ms beside the stalled streams\n",
	       (double)base_ns / 1e6, (double)during_ns / 1e6);
	NEED(ss.throttled == STALL_STREAMS);
	NEED(growth <= bound);
	NEED(during_ns <= 3 * base_ns + 300ull * 1000000ull);

	/* After stall_timeout the streams are cancelled and their KV blocks come back. */
	uint64_t t0 = fr_now_ns();
	for (;;) {
		co_sched_stats(h->sched, &ss);
		if (ss.running == 0 && ss.free_blocks == ss.total_blocks)
			break;
		if (fr_now_ns() - t0 > (uint64_t)(STALL_MS + 10000) * 1000000ull) {
			fprintf(stderr, "FAIL: %d requests still running %.1f s after the stall\n",
				ss.running, (double)(fr_now_ns() - t0) / 1e9);
			exit(1);
		}
		usleep(20000);
	}
	printf("stall_timeout %d ms: all %d streams cancelled %.2f s after they were held back, "
	       "every KV block free\n", STALL_MS, STALL_STREAMS,
	       (double)(fr_now_ns() - t_open) / 1e9);
	close(in[1]); /* the client reads now */
	while (fgets(line, sizeof(line), cf))
		fputs(line, stdout);
	fclose(cf);
	int status;
	NEED(waitpid(pid, &status, 0) == pid);
	NEED(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	run_one(h, 40, 20, true, NULL, "after the stall");
	sh_destroy(h);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 4 && strcmp(argv[1], "stall-client") == 0)
		return stall_client(argv[2], atoi(argv[3]));
	const char *c = argc > 1 ? argv[1] : "";
	if (strcmp(c, "shapes") == 0)
		test_shapes();
	else if (strcmp(c, "sweep") == 0)
		test_sweep();
	else if (strcmp(c, "score") == 0)
		test_score();
	else if (strcmp(c, "stall") == 0)
		test_stall();
	else {
		fprintf(stderr, "usage: test_serving shapes|sweep|score|stall\n");
		return 2;
	}
	printf("%s: passed\n", c);
	return 0;
}
