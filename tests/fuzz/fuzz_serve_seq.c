/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_serve_seq.c - sequences of valid-but-extreme requests against an in-process
 * coordinator front end (tests/coordinator/serve_harness.h: the real Generate/Score handlers,
 * scheduler and gRPC server over a fake engine with known logits).
 *
 * The input is not a message but a script: its first byte picks one of two servers (small
 * stream buffers and messages, prefill chunks of 8, 4 sequence slots and a queue of 4; or
 * the defaults) and the number of requests (1..8); every following group of bytes is one
 * request, run all at once on threads: Generate or Score, a prompt length biased to the
 * edges (1, the chunk and message boundaries, max_ctx - 1, max_ctx, max_ctx + 1),
 * max_tokens at the edges of the room left, return_logits, sampling parameters and routing
 * knobs at and past their limits, stop tokens, priorities, and how the client reads
 * (promptly, slowly, cancelling after k messages, with a short deadline, or not at all for a
 * while and then going away).
 *
 * Every call must end with OK or a status its request explains (INVALID_ARGUMENT naming
 * the field, RESOURCE_EXHAUSTED for a full queue, CANCELLED / DEADLINE_EXCEEDED when the
 * client did that); an OK greedy stream must carry exactly the fake model's tokens and
 * every logit row; any OK stream's rows match its tokens. Afterwards no request may be
 * left running and every KV block must be free. Anything else aborts.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/coordinator/serve_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_REQS 8
#define REQ_BYTES 10

static struct sh *servers[2];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void)
{
	static const struct sh_opts o[2] = {
		{ .vocab = 64, .max_ctx = 96, .max_batch = 32, .prefill_chunk = 8, .max_seqs = 4,
		  .queue_max = 4, .stream_buffer = 6 * 64 * sizeof(float),
		  .logits_msg_bytes = 5 * 64 * sizeof(float), .stall_ms = 3000 },
		{ .vocab = 64, .max_ctx = 160, .max_batch = 64, .max_seqs = 16 },
	};
	struct fr_error err = { { 0 } };

	fr_log_set_levels("error");
	for (int i = 0; i < 2; i++)
		if (sh_create(&o[i], &servers[i], &err) < 0) {
			fprintf(stderr, "fuzz_serve_seq: %s\n", err.msg);
			abort();
		}
}

struct cursor {
	const uint8_t *p;
	size_t left;
};

static uint8_t next(struct cursor *c)
{
	if (!c->left)
		return 0;
	c->left--;
	return *c->p++;
}

/* A length biased to the edges of [1, max] and of the chunk sizes. */
static int edge_len(uint8_t b, uint8_t r, int max)
{
	static const int edges[] = { 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65 };
	switch (b % 8) {
	case 0: return max - 1;
	case 1: return max;
	case 2: return max + 1;
	case 3: return 1;
	case 4:
	case 5: return edges[r % FR_ARRAY_SIZE(edges)];
	default: return 1 + r % (max + 1);
	}
}

enum read_mode { READ_NORMAL, READ_SLOW, READ_CANCEL, READ_DEADLINE, READ_NONE, N_READ };

struct req {
	struct sh *h;
	bool score;
	int n_prompt;
	int32_t prompt[512];
	uint32_t max_tokens;
	bool logits, ignore_eos, greedy;
	float temperature, top_p, rep_penalty;
	uint32_t top_k, routed_top_k, mask_top, priority;
	int n_stop;
	int32_t stop[80];
	enum read_mode mode;
	int mode_arg;
	bool surely_valid;
};

static void fail(const struct req *q, const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_serve_seq: %s request (prompt %d, max_tokens %u, logits %d, mode %d, "
		"temperature %g, top_k %u, routed_top_k %u, mask_top %u, priority %u, %d stop "
		"tokens): %s: %s\n", q->score ? "Score" : "Generate", q->n_prompt, q->max_tokens,
		q->logits, q->mode, (double)q->temperature, q->top_k, q->routed_top_k, q->mask_top,
		q->priority, q->n_stop, what, detail);
	abort();
}

/* Statuses a request may end with, whatever the server's load. */
static void check_status(const struct req *q, int rc, const char *msg)
{
	if (getenv("FUZZ_SERVE_VERBOSE"))
		fprintf(stderr, "%s prompt %d max_tokens %u mode %d: %d %s\n",
			q->score ? "Score" : "Generate", q->n_prompt, q->max_tokens, q->mode, rc,
			rc ? msg : "OK");
	if (rc == 0)
		return;
	if (rc == -EINVAL && strstr(msg, "INVALID_ARGUMENT") && !q->surely_valid &&
	    strlen(msg) > 40)
		return;
	if (rc == -EAGAIN && strstr(msg, "RESOURCE_EXHAUSTED: the admission queue is full"))
		return;
	if (rc == -EAGAIN && strstr(msg, "read nothing") && q->mode == READ_NONE)
		return;
	if (rc == -ECANCELED && (q->mode == READ_CANCEL || q->mode == READ_NONE))
		return;
	if (rc == -ETIMEDOUT && q->mode == READ_DEADLINE)
		return;
	fail(q, "unexpected status", msg);
}

static void run_score(struct req *q)
{
	Ferry__V1__ScoreRequest r = FERRY__V1__SCORE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	ProtobufCMessage *m = NULL;

	r.tokens = q->prompt;
	r.n_tokens = (size_t)q->n_prompt;
	r.routed_top_k = q->routed_top_k;
	r.mask_top = q->mask_top;
	int rc = rpc_unary(q->h->ch, RPC_M_SCORE, &r.base, &ferry__v1__score_response__descriptor,
			   q->mode == READ_DEADLINE ? q->mode_arg : 0, &m, &err);
	if (q->mode == READ_CANCEL || q->mode == READ_NONE)
		q->mode = READ_NORMAL; /* nothing to cancel in a unary call */
	check_status(q, rc, err.msg);
	if (rc < 0)
		return;
	const Ferry__V1__ScoreResponse *s = (const Ferry__V1__ScoreResponse *)m;
	if (s->n_tokens != (size_t)q->n_prompt || s->n_logprobs + 1 != (size_t)q->n_prompt)
		fail(q, "Score answer", "token or logprob count differs from the prompt");
	for (size_t i = 0; i < s->n_logprobs; i++)
		if (!(s->logprobs[i] <= 0.0f))
			fail(q, "Score answer", "a log-probability above 0 or NaN");
	protobuf_c_message_free_unpacked(m, NULL);
}

static void run_generate(struct req *q)
{
	Ferry__V1__GenerateRequest r = FERRY__V1__GENERATE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	struct sh_result res;

	r.prompt_tokens = q->prompt;
	r.n_prompt_tokens = (size_t)q->n_prompt;
	r.max_tokens = q->max_tokens;
	r.return_logits = q->logits;
	r.ignore_eos = q->ignore_eos;
	r.temperature = q->temperature;
	r.top_p = q->top_p;
	r.top_k = q->top_k;
	r.repetition_penalty = q->rep_penalty;
	r.routed_top_k = q->routed_top_k;
	r.mask_top = q->mask_top;
	r.priority = q->priority;
	r.stop_tokens = q->stop;
	r.n_stop_tokens = (size_t)q->n_stop;
	r.seed = 7;
	if (q->mode == READ_NONE) {
		/* Opens the stream, reads nothing for a while, then goes away. */
		struct rpc_stream *st = NULL;
		int rc = rpc_stream_open(q->h->ch, RPC_M_GENERATE, &r.base,
					 &ferry__v1__generate_response__descriptor, 0, &st, &err);
		check_status(q, rc, err.msg);
		usleep((useconds_t)q->mode_arg * 1000);
		rpc_stream_destroy(st);
		return;
	}
	struct sh_read rd = { 0 };
	if (q->mode == READ_SLOW)
		rd.delay_us = q->mode_arg * 100;
	else if (q->mode == READ_CANCEL)
		rd.cancel_after = 1 + q->mode_arg % 4;
	else if (q->mode == READ_DEADLINE)
		rd.timeout_ms = q->mode_arg;
	if (sh_generate(q->h, &r, &rd, &res) < 0)
		abort();
	check_status(q, res.status, res.errmsg);
	if (res.status == 0) {
		int max_new = q->max_tokens ? (int)q->max_tokens :
			      FR_MIN(q->h->o.max_ctx - q->n_prompt, q->h->sv.default_max_tokens);
		if (res.n_tokens < 1 || res.n_tokens > max_new)
			fail(q, "token count", "outside [1, max_tokens]");
		for (int i = 0; i < res.n_tokens; i++)
			if (res.tokens[i] < 0 || res.tokens[i] >= q->h->o.vocab)
				fail(q, "token", "outside the vocabulary");
		if (res.n_rows != (q->logits ? q->n_prompt + res.n_tokens - 1 : 0))
			fail(q, "logits rows", "count does not match prompt + tokens - 1");
		if (q->greedy) {
			struct fr_error ce = { { 0 } };
			if (sh_check(q->h, q->prompt, q->n_prompt, q->logits, &res, &ce) < 0)
				fail(q, "greedy output", ce.msg);
			if (res.n_tokens != max_new)
				fail(q, "greedy output", "ended before max_tokens");
		}
	}
	sh_result_fini(&res);
}

static void *req_main(void *arg)
{
	struct req *q = arg;
	if (q->score)
		run_score(q);
	else
		run_generate(q);
	return NULL;
}

static void decode(struct cursor *c, struct sh *h, struct req *q)
{
	int V = h->o.vocab, ctx = h->o.max_ctx;
	uint8_t b[REQ_BYTES];

	for (int i = 0; i < REQ_BYTES; i++)
		b[i] = next(c);
	memset(q, 0, sizeof(*q));
	q->h = h;
	q->score = (b[0] & 7) == 0;
	q->n_prompt = FR_MIN(edge_len(b[1], b[2], ctx), (int)FR_ARRAY_SIZE(q->prompt));
	for (int i = 0; i < q->n_prompt; i++)
		q->prompt[i] = (int32_t)((b[2] + i * (b[3] | 1)) % V);
	if (b[3] == 0xff)
		q->prompt[q->n_prompt - 1] = V; /* one id past the vocabulary */
	int room = ctx - q->n_prompt;
	switch (b[4] % 6) {
	case 0: q->max_tokens = 0; break;
	case 1: q->max_tokens = 1; break;
	case 2: q->max_tokens = (uint32_t)FR_MAX(room, 0); break;
	case 3: q->max_tokens = (uint32_t)FR_MAX(room + 1, 0); break;
	case 4: q->max_tokens = UINT32_MAX; break;
	default: q->max_tokens = 1 + b[5] % 40; break;
	}
	q->logits = b[0] & 8;
	q->ignore_eos = b[0] & 16;
	bool odd = b[6] & 1;   /* sampling and knobs off their defaults */
	q->temperature = !odd ? 0.0f : (float[]){ 0.7f, 1e30f, -1.0f, NAN, INFINITY }[b[6] / 2 % 5];
	q->top_p = !odd ? 0.0f : (float[]){ 1.0f, 1e-9f, 1.0001f, 0.5f }[b[6] / 16 % 4];
	q->top_k = !odd ? 0 : (uint32_t[]){ 1, (uint32_t)V, (uint32_t)V + 1, 3 }[b[7] % 4];
	q->rep_penalty = !odd ? 0.0f : (float[]){ 1.0f, 10.0f, 10.5f, 0.01f }[b[7] / 4 % 4];
	q->routed_top_k = (uint32_t[]){ 0, 0, 1, 16, 17, 4 }[b[7] / 16 % 6];
	q->mask_top = (uint32_t[]){ 0, 0, 0, 12, 13, 16 }[b[8] % 6];
	q->priority = (uint32_t[]){ 0, 0, 9, 10 }[b[8] / 8 % 4];
	q->n_stop = (int[]){ 0, 0, 0, 1, 64, 65 }[b[8] / 32 % 6];
	for (int i = 0; i < q->n_stop; i++)
		q->stop[i] = (int32_t)((b[5] + i) % (V + 1)); /* the last may be out of range */
	q->mode = (enum read_mode)(b[9] % N_READ);
	q->mode_arg = 1 + b[9] / N_READ % 50;
	bool knobs_ok = q->routed_top_k <= 16 && (q->routed_top_k ? (int)q->routed_top_k : 4) +
			(int)q->mask_top <= 16;
	q->greedy = !odd && q->n_stop == 0;
	q->surely_valid = !odd && knobs_ok && q->priority <= 9 && q->n_stop == 0 &&
			  b[3] != 0xff && q->n_prompt >= 1 && q->n_prompt < ctx &&
			  q->max_tokens <= (uint32_t)room && (!q->score || q->n_prompt >= 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cursor c = { data, size };
	struct req q[MAX_REQS];
	pthread_t t[MAX_REQS];
	struct co_sched_stats ss;

	pthread_once(&once, init);
	if (size < 1)
		return 0;
	uint8_t head = next(&c);
	struct sh *h = servers[head & 1];
	int n = 1 + (head >> 1) % MAX_REQS;
	for (int i = 0; i < n; i++)
		decode(&c, h, &q[i]);
	for (int i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, req_main, &q[i]) != 0)
			abort();
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	/* Every request is over: nothing may stay running or hold KV blocks. */
	for (int i = 0;; i++) {
		co_sched_stats(h->sched, &ss);
		if (ss.running == 0 && ss.queued == 0 && ss.free_blocks == ss.total_blocks)
			break;
		if (i == 400) {
			fprintf(stderr, "fuzz_serve_seq: 2 s after the last call, %d requests run, %d "
				"wait, %d of %d KV blocks free\n", ss.running, ss.queued,
				ss.free_blocks, ss.total_blocks);
			abort();
		}
		usleep(5000);
	}
	return 0;
}
