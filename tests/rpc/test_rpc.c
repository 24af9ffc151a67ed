/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rpc.c - the rpc library end to end on loopback: a server on 127.0.0.1 with an
 * ephemeral port serving Inference.Health (unary) and Inference.Generate (streaming).
 *   test_rpc --case health|stream|cancel|deadline|malformed|concurrent|shutdown
 *   test_rpc --case reuseport        a second server on a taken port: -EADDRINUSE
 *   test_rpc --case tls --certs DIR  TLS and mTLS over the PKI of tests/rpc/gen-certs.sh
 * Under ASan/LSan the process exit proves that every call state was freed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,     \
				#cond);                                                     \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* Server-side behaviour and observations. */
static atomic_int g_health_delay_ms;
static atomic_int g_token_delay_ms;
static atomic_int g_handlers_started;
static atomic_int g_handlers_done;
static atomic_int g_cancel_seen;
static uint64_t g_seed;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static grpc_status_code on_health(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	Ferry__V1__HealthResponse resp = FERRY__V1__HEALTH_RESPONSE__INIT;
	int delay = atomic_load(&g_health_delay_ms);

	atomic_fetch_add(&g_handlers_started, 1);
	while (delay > 0 && !rpc_call_cancelled(call)) {
		sleep_ms(5);
		delay -= 5;
	}
	resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
	resp.version = (char *)"0.1.0";
	resp.workers = 3;
	resp.epoch = 42;
	if (rpc_call_cancelled(call))
		atomic_fetch_add(&g_cancel_seen, 1);
	rpc_call_send(call, &resp.base);
	atomic_fetch_add(&g_handlers_done, 1);
	return GRPC_STATUS_OK;
}

/* Streams max_tokens messages; token i is prompt[0] + i. */
static grpc_status_code on_generate(struct rpc_call *call, const ProtobufCMessage *req,
				    void *arg)
{
	const Ferry__V1__GenerateRequest *r = (const Ferry__V1__GenerateRequest *)req;
	grpc_status_code st = GRPC_STATUS_OK;

	atomic_fetch_add(&g_handlers_started, 1);
	if (r->n_prompt_tokens == 0) {
		st = rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "empty prompt");
		goto out;
	}
	for (uint32_t i = 0; i < r->max_tokens; i++) {
		Ferry__V1__GenerateResponse resp = FERRY__V1__GENERATE_RESPONSE__INIT;
		int32_t tok = r->prompt_tokens[0] + (int32_t)i;
		int delay = atomic_load(&g_token_delay_ms);
		int rc;

		if (delay)
			sleep_ms(delay);
		resp.n_tokens = 1;
		resp.tokens = &tok;
		resp.offset = i;
		if (i == 0)
			resp.prompt_tokens = (uint32_t)r->n_prompt_tokens;
		if (i + 1 == r->max_tokens)
			resp.finish_reason = FERRY__V1__FINISH_REASON__FINISH_REASON_LENGTH;
		rc = rpc_call_send(call, &resp.base);
		if (rc < 0) {
			atomic_fetch_add(&g_cancel_seen, 1);
			st = rpc_call_fail(call, rpc_status_from_errno(rc), "send: %s",
					   strerror(-rc));
			goto out;
		}
	}
out:
	atomic_fetch_add(&g_handlers_done, 1);
	return st;
}

static struct rpc_server *server_up(char *target, size_t target_len)
{
	struct fr_error err = { { 0 } };
	struct rpc_server *srv;

	CHECK(rpc_server_create("127.0.0.1:0", NULL, &srv, &err) == 0);
	CHECK(rpc_server_add_method(srv, RPC_M_HEALTH, RPC_METHOD_UNARY,
				    &ferry__v1__health_request__descriptor, on_health, NULL,
				    &err) == 0);
	CHECK(rpc_server_add_method(srv, RPC_M_GENERATE, RPC_METHOD_SERVER_STREAMING,
				    &ferry__v1__generate_request__descriptor, on_generate, NULL,
				    &err) == 0);
	CHECK(rpc_server_add_method(srv, RPC_M_HEALTH, RPC_METHOD_UNARY,
				    &ferry__v1__health_request__descriptor, on_health, NULL,
				    &err) == -EINVAL);
	CHECK(rpc_server_start(srv, &err) == 0);
	CHECK(rpc_server_port(srv) > 0);
	snprintf(target, target_len, "127.0.0.1:%d", rpc_server_port(srv));
	return srv;
}

static int health(struct rpc_channel *ch, int64_t timeout_ms, struct fr_error *err)
{
	Ferry__V1__HealthRequest req = FERRY__V1__HEALTH_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc = rpc_unary(ch, RPC_M_HEALTH, &req.base, &ferry__v1__health_response__descriptor,
			   timeout_ms, &m, err);

	if (rc == 0) {
		Ferry__V1__HealthResponse *h = (Ferry__V1__HealthResponse *)m;
		CHECK(h->status == FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING);
		CHECK(strcmp(h->version, "0.1.0") == 0 && h->workers == 3 && h->epoch == 42);
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return rc;
}

/* Reads up to `limit` messages (all when limit < 0); returns the count, or the error. */
static int generate(struct rpc_channel *ch, int32_t first, uint32_t n, int64_t timeout_ms,
		    int limit, struct rpc_stream **keep, struct fr_error *err)
{
	Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
	int32_t prompt[3] = { first, 7, 9 };
	struct rpc_stream *st;
	ProtobufCMessage *m;
	int got = 0, rc;

	req.n_prompt_tokens = 3;
	req.prompt_tokens = prompt;
	req.max_tokens = n;
	req.temperature = 0.7f;
	req.seed = g_seed;
	rc = rpc_stream_open(ch, RPC_M_GENERATE, &req.base,
			     &ferry__v1__generate_response__descriptor, timeout_ms, &st, err);
	if (rc < 0)
		return rc;
	while (limit < 0 || got < limit) {
		Ferry__V1__GenerateResponse *r;
		rc = rpc_stream_next(st, &m, err);
		if (rc <= 0)
			break;
		r = (Ferry__V1__GenerateResponse *)m;
		CHECK(r->n_tokens == 1 && r->tokens[0] == first + got && r->offset == (uint32_t)got);
		CHECK(got != 0 || r->prompt_tokens == 3);
		CHECK((r->finish_reason == FERRY__V1__FINISH_REASON__FINISH_REASON_LENGTH) ==
		      ((uint32_t)got + 1 == n));
		protobuf_c_message_free_unpacked(m, NULL);
		got++;
	}
	if (keep && rc > 0) {
		*keep = st;
		return got;
	}
	rpc_stream_destroy(st);
	return rc < 0 ? rc : got;
}

static void wait_for(atomic_int *v, int want, int max_ms)
{
	for (int t = 0; atomic_load(v) < want && t < max_ms; t += 5)
		sleep_ms(5);
	CHECK(atomic_load(v) >= want);
}

static int case_health(struct rpc_channel *ch)
{
	struct fr_error err = { { 0 } };
	CHECK(health(ch, 5000, &err) == 0);
	CHECK(health(ch, 0, &err) == 0); /* no deadline */
	return 0;
}

static int case_stream(struct rpc_channel *ch)
{
	struct fr_error err = { { 0 } };
	uint64_t s = g_seed;
	uint32_t n = 1 + (uint32_t)(fr_splitmix64(&s) % 200);
	int32_t first = (int32_t)(fr_splitmix64(&s) % 100000);

	printf("stream: %u messages from token %d\n", n, first);
	CHECK(generate(ch, first, n, 10000, -1, NULL, &err) == (int)n);
	return 0;
}

static int case_cancel(struct rpc_channel *ch)
{
	struct fr_error err = { { 0 } };
	struct rpc_stream *st = NULL;
	ProtobufCMessage *m;

	atomic_store(&g_token_delay_ms, 1);
	CHECK(generate(ch, 5, 1000000, 0, 5, &st, &err) == 5);
	rpc_stream_cancel(st);
	/* Messages already in flight may still arrive; then the cancellation. */
	int rc;
	while ((rc = rpc_stream_next(st, &m, &err)) > 0)
		protobuf_c_message_free_unpacked(m, NULL);
	CHECK(rc == -ECANCELED);
	CHECK(rpc_stream_next(st, &m, &err) == -ECANCELED); /* sticky */
	rpc_stream_destroy(st);
	wait_for(&g_cancel_seen, 1, 5000);
	wait_for(&g_handlers_done, 1, 5000);
	return 0;
}

static int case_deadline(struct rpc_channel *ch)
{
	struct fr_error err = { { 0 } };
	uint64_t t0 = fr_now_ns();

	atomic_store(&g_health_delay_ms, 2000);
	CHECK(health(ch, 100, &err) == -ETIMEDOUT);
	printf("unary: %s\n", err.msg);
	CHECK(strstr(err.msg, "DEADLINE_EXCEEDED"));
	CHECK(fr_now_ns() - t0 < 1500000000ull);
	wait_for(&g_handlers_done, 1, 5000);
	CHECK(atomic_load(&g_cancel_seen) == 1); /* the handler saw its deadline pass */

	atomic_store(&g_token_delay_ms, 2);
	CHECK(generate(ch, 1, 1000000, 200, -1, NULL, &err) == -ETIMEDOUT);
	printf("stream: %s\n", err.msg);
	wait_for(&g_handlers_done, 2, 5000);
	return 0;
}

static int case_malformed(struct rpc_channel *ch)
{
	struct fr_error err = { { 0 } };
	/* A HealthRequest carrying an unknown field packs verbatim: field 1, length-prefixed,
	 * holding a truncated varint. As a GenerateRequest that is a broken packed
	 * prompt_tokens. */
	uint8_t junk[] = { 0x80 };
	ProtobufCMessageUnknownField uf = { .tag = 1,
					    .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
					    .len = sizeof(junk),
					    .data = junk };
	Ferry__V1__HealthRequest bad = FERRY__V1__HEALTH_REQUEST__INIT;
	ProtobufCMessage *m = NULL;

	bad.base.n_unknown_fields = 1;
	bad.base.unknown_fields = &uf;
	CHECK(rpc_unary(ch, RPC_M_GENERATE, &bad.base, &ferry__v1__generate_response__descriptor,
			5000, &m, &err) == -EINVAL);
	printf("malformed: %s\n", err.msg);
	CHECK(strstr(err.msg, "INVALID_ARGUMENT") && strstr(err.msg, "does not unpack"));
	CHECK(atomic_load(&g_handlers_started) == 0);

	/* A well-formed request the handler refuses: its detail reaches the client. */
	{
		Ferry__V1__GenerateRequest req = FERRY__V1__GENERATE_REQUEST__INIT;
		struct rpc_stream *st;
		CHECK(rpc_stream_open(ch, RPC_M_GENERATE, &req.base,
				      &ferry__v1__generate_response__descriptor, 5000, &st,
				      &err) == 0);
		CHECK(rpc_stream_next(st, &m, &err) == -EINVAL);
		CHECK(strstr(err.msg, "empty prompt"));
		rpc_stream_destroy(st);
	}
	/* A method nobody registered. */
	{
		Ferry__V1__HealthRequest req = FERRY__V1__HEALTH_REQUEST__INIT;
		CHECK(rpc_unary(ch, "/ferry.v1.Inference/Nope", &req.base,
				&ferry__v1__health_response__descriptor, 5000, &m, &err) ==
		      -ENOSYS);
	}
	/* The server still works. */
	CHECK(health(ch, 5000, &err) == 0);
	return 0;
}

struct worker_arg {
	struct rpc_channel *ch;
	int idx;
	int rc;
};

static void *concurrent_worker(void *p)
{
	struct worker_arg *a = p;
	struct fr_error err = { { 0 } };

	for (int i = 0; i < 10; i++) {
		if (health(a->ch, 10000, &err) != 0 ||
		    generate(a->ch, a->idx * 1000, 8, 10000, -1, NULL, &err) != 8) {
			fprintf(stderr, "worker %d: %s\n", a->idx, err.msg);
			a->rc = -1;
			return NULL;
		}
	}
	return NULL;
}

static int case_concurrent(struct rpc_channel *ch)
{
	enum { N = 32 };
	pthread_t th[N];
	struct worker_arg a[N];

	for (int i = 0; i < N; i++) {
		a[i] = (struct worker_arg){ ch, i, 0 };
		CHECK(pthread_create(&th[i], NULL, concurrent_worker, &a[i]) == 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(th[i], NULL);
		CHECK(a[i].rc == 0);
	}
	CHECK(atomic_load(&g_handlers_done) == N * 20);
	return 0;
}

static void *slow_health(void *p)
{
	struct worker_arg *a = p;
	struct fr_error err = { { 0 } };

	a->rc = health(a->ch, 0, &err);
	return NULL;
}

static void *endless_reader(void *p)
{
	struct worker_arg *a = p;
	struct fr_error err = { { 0 } };

	a->rc = generate(a->ch, a->idx, 1000000, 0, -1, NULL, &err);
	return NULL;
}

/* Destroying the server with streams and a slow unary call in flight. */
static int case_shutdown(struct rpc_channel *ch, struct rpc_server **srv)
{
	enum { N = 8 };
	pthread_t th[N + 1];
	struct worker_arg a[N + 1];
	uint64_t t0;

	atomic_store(&g_token_delay_ms, 1);
	atomic_store(&g_health_delay_ms, 60000);
	for (int i = 0; i < N; i++) {
		a[i] = (struct worker_arg){ ch, i, 0 };
		CHECK(pthread_create(&th[i], NULL, endless_reader, &a[i]) == 0);
	}
	a[N] = (struct worker_arg){ ch, N, 0 };
	CHECK(pthread_create(&th[N], NULL, slow_health, &a[N]) == 0);
	wait_for(&g_handlers_started, N + 1, 10000);
	sleep_ms(50);
	t0 = fr_now_ns();
	rpc_server_destroy(*srv);
	*srv = NULL;
	printf("server destroyed in %.1f ms with %d calls in flight\n",
	       (double)(fr_now_ns() - t0) / 1e6, N);
	CHECK(fr_now_ns() - t0 < 5000000000ull);
	CHECK(atomic_load(&g_handlers_done) == atomic_load(&g_handlers_started));
	for (int i = 0; i <= N; i++) {
		pthread_join(th[i], NULL);
		printf("caller %d: %d\n", i, a[i].rc);
		CHECK(a[i].rc < 0);
	}
	return 0;
}

/* Without SO_REUSEPORT a second server on the same port fails at creation, naming it. */
static int case_reuseport(void)
{
	struct fr_error err = { { 0 } };
	struct rpc_server *a, *b = NULL;
	char addr[64];
	int rc;

	CHECK(rpc_server_create("127.0.0.1:0", NULL, &a, &err) == 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", rpc_server_port(a));
	rc = rpc_server_create(addr, NULL, &b, &err);
	printf("second server on %s: %d %s\n", addr, rc, err.msg);
	CHECK(rc == -EADDRINUSE && b == NULL);
	CHECK(strstr(err.msg, addr) && strstr(err.msg, "address in use"));
	/* The first one is unharmed: it still starts and serves. */
	CHECK(rpc_server_add_method(a, RPC_M_HEALTH, RPC_METHOD_UNARY,
				    &ferry__v1__health_request__descriptor, on_health, NULL,
				    &err) == 0);
	CHECK(rpc_server_start(a, &err) == 0);
	struct rpc_channel *ch;
	CHECK(rpc_channel_create(addr, NULL, &ch, &err) == 0);
	CHECK(health(ch, 5000, &err) == 0);
	rpc_channel_destroy(ch);
	rpc_server_destroy(a);
	/* An address that is not this host's (TEST-NET-1). */
	rc = rpc_server_create("192.0.2.1:0", NULL, &b, &err);
	printf("server on 192.0.2.1:0: %d %s\n", rc, err.msg);
	CHECK(rc == -EADDRNOTAVAIL && strstr(err.msg, "not an address of this host"));
	return 0;
}

/* ---- TLS --------------------------------------------------------------------------------- */

static const char *g_certs;

static const char *cert(const char *name)
{
	static char bufs[8][512];
	static int next;
	char *b = bufs[next++ % 8];
	snprintf(b, sizeof(bufs[0]), "%s/%s", g_certs, name);
	return b;
}

static struct rpc_creds tls(const char *cert_name, const char *key_name, const char *ca_name)
{
	return (struct rpc_creds){ .kind = RPC_CREDS_TLS,
				   .cert_file = cert_name ? cert(cert_name) : NULL,
				   .key_file = key_name ? cert(key_name) : NULL,
				   .ca_file = ca_name ? cert(ca_name) : NULL };
}

/* rc and err of creds_check(c, server) must be want and mention needle. */
static void expect_check(const char *what, struct rpc_creds c, bool server, int want,
			 const char *needle)
{
	struct fr_error err = { { 0 } };
	int rc = rpc_creds_check(&c, server, &err);
	printf("%-36s %d %s\n", what, rc, err.msg);
	if (rc != want || (needle && !strstr(err.msg, needle))) {
		fprintf(stderr, "FAIL %s: rc %d (want %d), msg \"%s\" (want \"%s\")\n", what, rc,
			want, err.msg, needle ? needle : "");
		exit(1);
	}
}

static struct rpc_server *tls_server(struct rpc_creds c, int *ret_port)
{
	struct fr_error err = { { 0 } };
	struct rpc_server *srv;

	if (rpc_server_create("127.0.0.1:0", &c, &srv, &err) < 0) {
		fprintf(stderr, "tls server: %s\n", err.msg);
		exit(1);
	}
	CHECK(rpc_server_add_method(srv, RPC_M_HEALTH, RPC_METHOD_UNARY,
				    &ferry__v1__health_request__descriptor, on_health, NULL,
				    &err) == 0);
	CHECK(rpc_server_start(srv, &err) == 0);
	*ret_port = rpc_server_port(srv);
	return srv;
}

/* One Health call from a fresh channel with creds c (NULL: insecure) to host:port. */
static int tls_call(const char *what, const char *host, int port, const struct rpc_creds *c)
{
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch;
	char target[128];
	int rc;

	snprintf(target, sizeof(target), "%s:%d", host, port);
	CHECK(rpc_channel_create(target, c, &ch, &err) == 0);
	rc = health(ch, 5000, &err);
	printf("%-36s %d %s\n", what, rc, rc ? err.msg : "ok");
	rpc_channel_destroy(ch);
	return rc;
}

static int case_tls(void)
{
	struct rpc_creds insecure = { .kind = RPC_CREDS_INSECURE }, c;
	struct rpc_server *srv;
	struct fr_error err = { { 0 } };
	int port, rc;

	if (!g_certs) {
		fprintf(stderr, "case tls needs --certs DIR (tests/rpc/gen-certs.sh)\n");
		return 2;
	}

	/* Files are checked up front, with errors that name them. */
	expect_check("check: server ok", tls("server.pem", "server.key", NULL), true, 0, NULL);
	expect_check("check: mtls server ok", tls("server.pem", "server.key", "ca.pem"), true, 0,
		     NULL);
	expect_check("check: client ok", tls(NULL, NULL, "ca.pem"), false, 0, NULL);
	expect_check("check: missing cert", tls("nope.pem", "server.key", NULL), true, -ENOENT,
		     "nope.pem: No such file");
	expect_check("check: missing ca", tls(NULL, NULL, "nope-ca.pem"), false, -ENOENT,
		     "TLS CA: ");
	expect_check("check: cert not PEM", tls("not-pem.pem", "server.key", NULL), true, -EINVAL,
		     "not-pem.pem: not a PEM certificate");
	expect_check("check: key not PEM", tls("server.pem", "server.pem", NULL), true, -EINVAL,
		     "not a PEM private key");
	expect_check("check: ca not PEM", tls("server.pem", "server.key", "not-pem.pem"), true,
		     -EINVAL, "TLS client CA: ");
	expect_check("check: key mismatch", tls("server.pem", "client.key", NULL), true, -EINVAL,
		     "does not match the certificate");
	expect_check("check: server without key", tls("server.pem", NULL, NULL), true, -EINVAL,
		     "no key file");
	expect_check("check: server without cert", tls(NULL, NULL, "ca.pem"), true, -EINVAL,
		     "no certificate file");
	expect_check("check: client cert without key", tls("client.pem", NULL, "ca.pem"), false,
		     -EINVAL, "without a key");
	expect_check("check: a directory", tls(NULL, NULL, "."), false, -EINVAL,
		     "not a regular file");
	if (geteuid() != 0) {
		char path[512];
		snprintf(path, sizeof(path), "%s", cert("unreadable.pem"));
		FILE *f = fopen(path, "w");
		CHECK(f && fclose(f) == 0 && chmod(path, 0) == 0);
		expect_check("check: unreadable", tls(NULL, NULL, "unreadable.pem"), false, -EACCES,
			     "Permission denied");
	}
	/* ... and by the create calls themselves. */
	c = tls("nope.pem", "server.key", NULL);
	rc = rpc_server_create("127.0.0.1:0", &c, &srv, &err);
	CHECK(rc == -ENOENT && strstr(err.msg, "nope.pem"));
	struct rpc_channel *ch;
	c = tls(NULL, NULL, "not-pem.pem");
	rc = rpc_channel_create("127.0.0.1:1", &c, &ch, &err);
	CHECK(rc == -EINVAL && strstr(err.msg, "not-pem.pem"));

	/* TLS, no client certificates asked for. */
	srv = tls_server(tls("server.pem", "server.key", NULL), &port);
	c = tls(NULL, NULL, "ca.pem");
	CHECK(tls_call("tls: trusted CA", "127.0.0.1", port, &c) == 0);
	CHECK(tls_call("tls: trusted CA, localhost", "localhost", port, &c) == 0);
	c = tls("client.pem", "client.key", "ca.pem");
	CHECK(tls_call("tls: unrequested client cert", "127.0.0.1", port, &c) == 0);
	CHECK(tls_call("tls: plaintext client", "127.0.0.1", port, &insecure) == -EAGAIN);
	c = tls(NULL, NULL, "other-ca.pem");
	CHECK(tls_call("tls: other CA", "127.0.0.1", port, &c) == -EAGAIN);
	rpc_server_destroy(srv);

	/* A TLS client against a plaintext server. */
	srv = tls_server(insecure, &port);
	c = tls(NULL, NULL, "ca.pem");
	CHECK(tls_call("tls client, plaintext server", "127.0.0.1", port, &c) == -EAGAIN);
	rpc_server_destroy(srv);

	/* An expired server certificate is refused by the client. */
	srv = tls_server(tls("server-expired.pem", "server-expired.key", NULL), &port);
	c = tls(NULL, NULL, "ca.pem");
	CHECK(tls_call("tls: expired server cert", "127.0.0.1", port, &c) == -EAGAIN);
	rpc_server_destroy(srv);

	/* mTLS: a client certificate from ca.pem is required. */
	srv = tls_server(tls("server.pem", "server.key", "ca.pem"), &port);
	c = tls("client.pem", "client.key", "ca.pem");
	CHECK(tls_call("mtls: client cert", "127.0.0.1", port, &c) == 0);
	c = tls(NULL, NULL, "ca.pem");
	CHECK(tls_call("mtls: no client cert", "127.0.0.1", port, &c) < 0);
	c = tls("client-expired.pem", "client-expired.key", "ca.pem");
	CHECK(tls_call("mtls: expired client cert", "127.0.0.1", port, &c) < 0);
	c = tls("other-client.pem", "other-client.key", "ca.pem");
	CHECK(tls_call("mtls: client cert of another CA", "127.0.0.1", port, &c) < 0);
	CHECK(tls_call("mtls: plaintext client", "127.0.0.1", port, &insecure) < 0);
	c = tls("client.pem", "client.key", "ca.pem");
	CHECK(tls_call("mtls: client cert again", "127.0.0.1", port, &c) == 0);
	rpc_server_destroy(srv);
	return 0;
}

int main(int argc, char **argv)
{
	const char *which = NULL;
	char target[64];
	struct rpc_server *srv;
	struct rpc_channel *ch;
	struct fr_error err = { { 0 } };
	int rc;

	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "--case") == 0)
			which = argv[i + 1];
		if (strcmp(argv[i], "--certs") == 0)
			g_certs = argv[i + 1];
	}
	if (!which) {
		fprintf(stderr, "usage: test_rpc --case NAME\n");
		return 2;
	}
	g_seed = getenv("FERRY_SEED") ? strtoull(getenv("FERRY_SEED"), NULL, 0)
				      : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	printf("case %s seed 0x%llx\n", which, (unsigned long long)g_seed);
	if (strcmp(which, "reuseport") == 0 || strcmp(which, "tls") == 0) {
		rc = which[0] == 'r' ? case_reuseport() : case_tls();
		printf("%s\n", rc == 0 ? "ok" : "FAILED");
		return rc;
	}

	srv = server_up(target, sizeof(target));
	CHECK(rpc_channel_create(target, NULL, &ch, &err) == 0);
	if (strcmp(which, "health") == 0)
		rc = case_health(ch);
	else if (strcmp(which, "stream") == 0)
		rc = case_stream(ch);
	else if (strcmp(which, "cancel") == 0)
		rc = case_cancel(ch);
	else if (strcmp(which, "deadline") == 0)
		rc = case_deadline(ch);
	else if (strcmp(which, "malformed") == 0)
		rc = case_malformed(ch);
	else if (strcmp(which, "concurrent") == 0)
		rc = case_concurrent(ch);
	else if (strcmp(which, "shutdown") == 0)
		rc = case_shutdown(ch, &srv);
	else {
		fprintf(stderr, "unknown case %s\n", which);
		rc = 2;
	}
	rpc_server_destroy(srv);
	rpc_channel_destroy(ch);
	printf("%s\n", rc == 0 ? "ok" : "FAILED");
	return rc;
}
