/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_load - many concurrent streaming clients against a running cluster.
 *
 *   test_load ADDR COORDINATOR_PID [CLIENTS] [ROUNDS]
 *
 * Every client has its own greedy request (seeded random prompt, fixed length, EOS
 * ignored). First each request runs alone: its tokens are the reference. Then ROUNDS times
 * all CLIENTS run at once: every request must give exactly its reference tokens (batching
 * must not change greedy results), except every 8th client, which cancels after its third
 * message. After the first round (warm-up) the coordinator's RSS is read; after the last it
 * must not have grown by more than 10% + 16 MiB (no leak per request). At the end the
 * scheduler must be idle with every KV block free (cancelled clients freed theirs).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"
#include "tests/test.h"

#define CHECKM(cond, ...)                                                                   \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL: " __VA_ARGS__);                              \
			fputc('\n', stderr);                                                \
			t_failures++;                                                       \
		}                                                                           \
	} while (0)

#define MAX_NEW 12
#define MAX_CLIENTS 256

struct client {
	int idx;
	int32_t prompt[32];
	int n_prompt;
	int32_t ref[MAX_NEW];
	int n_ref;
	bool cancels;
	/* One run's result. */
	int32_t got[MAX_NEW];
	int n_got;
	int rc;
	char err[512];
};

static struct rpc_channel *g_ch;
static atomic_int g_mismatch;

static int run_one(struct client *c, bool cancel)
{
	Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	struct rpc_stream *st = NULL;
	int rc, msgs = 0;

	req.prompt_tokens = c->prompt;
	req.n_prompt_tokens = (size_t)c->n_prompt;
	req.max_tokens = MAX_NEW;
	req.ignore_eos = true;
	req.seed = (uint64_t)c->idx;
	c->n_got = 0;
	c->err[0] = '\0';
	rc = rpc_stream_open(g_ch, RPC_M_GENERATE, &req.base, &ferry__v1__generate_response__descriptor,
			     60000, &st, &err);
	while (rc == 0) {
		Ferry__V1__GenerateResponse *m = NULL;
		rc = rpc_stream_next(st, (ProtobufCMessage **)&m, &err);
		if (rc <= 0)
			break;
		for (size_t i = 0; i < m->n_tokens && c->n_got < MAX_NEW; i++)
			c->got[c->n_got++] = m->tokens[i];
		protobuf_c_message_free_unpacked(&m->base, NULL);
		rc = 0;
		if (cancel && ++msgs == 3) {
			rpc_stream_cancel(st);
			rc = 0;
			break;
		}
	}
	if (rc < 0)
		snprintf(c->err, sizeof(c->err), "%s", err.msg);
	rpc_stream_destroy(st);
	return rc;
}

static void *client_main(void *arg)
{
	struct client *c = arg;

	c->rc = run_one(c, c->cancels);
	if (c->cancels)
		return NULL;
	if (c->rc < 0 || c->n_got != c->n_ref || memcmp(c->got, c->ref, sizeof(int32_t) * c->n_ref)) {
		atomic_fetch_add(&g_mismatch, 1);
		fprintf(stderr, "client %d: rc %d (%s), %d tokens, first %d vs ref %d\n", c->idx, c->rc,
			c->err, c->n_got, c->n_got ? c->got[0] : -1, c->ref[0]);
	}
	return NULL;
}

static long rss_kib(int pid)
{
	char path[64], line[256];
	long kib = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

static int health(Ferry__V1__HealthResponse **ret)
{
	Ferry__V1__HealthRequest req = FERRY__V1__HEALTH_REQUEST__INIT;
	struct fr_error err = { { 0 } };
	return rpc_unary(g_ch, RPC_M_HEALTH, &req.base, &ferry__v1__health_response__descriptor, 5000,
			 (ProtobufCMessage **)ret, &err);
}

int main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	static struct client cl[MAX_CLIENTS];
	pthread_t th[MAX_CLIENTS];
	int n_clients = argc > 3 ? atoi(argv[3]) : 64, rounds = argc > 4 ? atoi(argv[4]) : 3;
	uint64_t rng = 12345;

	if (argc < 3 || n_clients < 1 || n_clients > MAX_CLIENTS || rounds < 2) {
		fprintf(stderr, "usage: test_load ADDR COORDINATOR_PID [CLIENTS<=%d] [ROUNDS>=2]\n",
			MAX_CLIENTS);
		return 2;
	}
	int co_pid = atoi(argv[2]);
	CHECKM(rpc_channel_create(argv[1], NULL, &g_ch, &err) == 0, "%s", err.msg);

	Ferry__V1__ModelInfoRequest mreq = FERRY__V1__MODEL_INFO_REQUEST__INIT;
	Ferry__V1__ModelInfoResponse *mi = NULL;
	CHECKM(rpc_unary(g_ch, RPC_M_MODEL_INFO, &mreq.base, &ferry__v1__model_info_response__descriptor,
			5000, (ProtobufCMessage **)&mi, &err) == 0, "ModelInfo: %s", err.msg);
	if (!mi)
		return 1;
	int vocab = (int)mi->vocab_size;
	protobuf_c_message_free_unpacked(&mi->base, NULL);

	/* References: each request alone. */
	for (int i = 0; i < n_clients; i++) {
		struct client *c = &cl[i];
		c->idx = i;
		c->n_prompt = 4 + (int)(fr_splitmix64(&rng) % 20);
		for (int j = 0; j < c->n_prompt; j++)
			c->prompt[j] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)vocab);
		c->cancels = i % 8 == 7;
		int rc = run_one(c, false);
		CHECKM(rc == 0 && c->n_got == MAX_NEW, "client %d alone: rc %d, %d tokens (%s)", i, rc,
		      c->n_got, c->err);
		memcpy(c->ref, c->got, sizeof(c->ref));
		c->n_ref = c->n_got;
	}
	printf("%d references computed alone\n", n_clients);

	long rss_warm = -1;
	for (int r = 0; r < rounds; r++) {
		uint64_t t0 = fr_now_ns();
		for (int i = 0; i < n_clients; i++)
			pthread_create(&th[i], NULL, client_main, &cl[i]);
		for (int i = 0; i < n_clients; i++)
			pthread_join(th[i], NULL);
		double s = (double)(fr_now_ns() - t0) / 1e9;
		long rss = rss_kib(co_pid);
		printf("round %d: %d concurrent clients in %.2f s, %d mismatches, coordinator RSS %ld KiB\n",
		       r, n_clients, s, atomic_load(&g_mismatch), rss);
		if (r == 0)
			rss_warm = rss;
		else if (r == rounds - 1 && rss_warm > 0)
			CHECKM(rss <= rss_warm + rss_warm / 10 + 16 * 1024,
			      "coordinator RSS grew from %ld to %ld KiB over %d rounds", rss_warm, rss,
			      rounds - 1);
	}
	CHECKM(atomic_load(&g_mismatch) == 0, "%d requests gave other tokens than alone",
	      atomic_load(&g_mismatch));

	/* Idle, every block free (the cancelled clients' blocks came back). */
	Ferry__V1__HealthResponse *h = NULL;
	bool idle = false;
	for (int t = 0; t < 100 && !idle; t++) {
		if (h)
			protobuf_c_message_free_unpacked(&h->base, NULL);
		h = NULL;
		if (health(&h) == 0)
			idle = h->running == 0 && h->queued == 0 && h->kv_blocks_free == h->kv_blocks_total;
		if (!idle)
			usleep(50000);
	}
	CHECKM(idle, "scheduler not idle after the rounds: running %u queued %u, %u of %u blocks free",
	      h ? h->running : 0, h ? h->queued : 0, h ? h->kv_blocks_free : 0,
	      h ? h->kv_blocks_total : 0);
	if (h)
		protobuf_c_message_free_unpacked(&h->base, NULL);
	rpc_channel_destroy(g_ch);
	printf("%d failure(s)\n", t_failures);
	return t_failures ? 1 : 0;
}
