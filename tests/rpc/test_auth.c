/* SPDX-License-Identifier: Apache-2.0 */
/* test_auth.c - rpc/auth: Join sign/verify round trip (also over the wire), every tampered
 * field, wrong secret, clock skew, replay (also from many threads at once), replay-cache
 * expiry and capacity, secret-file refusals, admin bearer tokens. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "rpc/auth.h"
#include "tests/test.h"

static uint8_t secret[32], other[32];

/* A JoinRequest with every kind of field set (nested messages, repeated, bytes). */
struct join {
	Ferry__V1__JoinRequest req;
	Ferry__V1__Device dev, *devs[1];
	Ferry__V1__TransportAddress addr, *addrs[1];
	uint8_t blob[24];
};

static void join_init(struct join *j, uint64_t *st)
{
	ferry__v1__join_request__init(&j->req);
	ferry__v1__device__init(&j->dev);
	ferry__v1__transport_address__init(&j->addr);
	j->dev.kind = FERRY__V1__DEVICE__KIND__KIND_CUDA;
	j->dev.index = 1;
	j->dev.name = "NVIDIA H100";
	j->dev.memory_bytes = 80ull << 30;
	j->devs[0] = &j->dev;
	for (size_t i = 0; i < sizeof(j->blob); i++)
		j->blob[i] = (uint8_t)fr_splitmix64(st);
	j->addr.backend = "tcp";
	j->addr.blob = (ProtobufCBinaryData){ sizeof(j->blob), j->blob };
	j->addrs[0] = &j->addr;
	j->req.worker_name = "w3";
	j->req.n_devices = 1;
	j->req.devices = j->devs;
	j->req.host_memory_bytes = 1 + fr_splitmix64(st) % (1ull << 40);
	j->req.slot_capacity = 1 + (uint32_t)(fr_splitmix64(st) % 64);
	j->req.n_transport_addresses = 1;
	j->req.transport_addresses = j->addrs;
	j->req.ring_slots = 4;
	j->req.ring_tokens = 512;
	j->req.hidden_size = 2048;
	j->req.n_routed_experts = 64;
}

/* The HMAC as the proto comment defines it, computed here independently of auth.c. */
static void sign_at(Ferry__V1__JoinRequest *req, const uint8_t *key, size_t len, uint64_t ts,
		    uint64_t nonce)
{
	Ferry__V1__JoinRequest tmp;
	unsigned int mac_len;
	uint8_t *buf;
	size_t n;

	free(req->hmac.data);
	req->timestamp_unix_ms = ts;
	req->nonce = nonce;
	tmp = *req;
	tmp.hmac = (ProtobufCBinaryData){ 0, NULL };
	n = ferry__v1__join_request__get_packed_size(&tmp);
	buf = malloc(n);
	ferry__v1__join_request__pack(&tmp, buf);
	req->hmac.data = malloc(32);
	req->hmac.len = 32;
	HMAC(EVP_sha256(), key, (int)len, buf, n, req->hmac.data, &mac_len);
	free(buf);
}

static void test_roundtrip(uint64_t *st)
{
	struct rpc_auth_replay *r = NULL, *r2 = NULL;
	struct join j;
	struct fr_error err = { { 0 } };
	uint64_t now = rpc_auth_now_ms(), nonce1;
	uint8_t *wire, mac[32];
	size_t n;
	Ferry__V1__JoinRequest *got;

	CHECK(rpc_auth_replay_create(16, &r) == 0 && rpc_auth_replay_create(16, &r2) == 0);
	join_init(&j, st);
	CHECK(rpc_auth_join_sign(&j.req, secret, sizeof(secret), &err) == 0);
	CHECK(j.req.nonce != 0 && j.req.hmac.len == 32);
	CHECK(j.req.timestamp_unix_ms + 5000 > now && j.req.timestamp_unix_ms < now + 5000);
	nonce1 = j.req.nonce;
	/* the same MAC as an independent computation over the documented serialization */
	memcpy(mac, j.req.hmac.data, 32);
	sign_at(&j.req, secret, sizeof(secret), j.req.timestamp_unix_ms, j.req.nonce);
	CHECK(memcmp(mac, j.req.hmac.data, 32) == 0);

	/* over the wire: pack, unpack, verify the unpacked message */
	n = ferry__v1__join_request__get_packed_size(&j.req);
	wire = malloc(n);
	ferry__v1__join_request__pack(&j.req, wire);
	got = ferry__v1__join_request__unpack(NULL, n, wire);
	CHECK(got != NULL);
	t_expect_err("verify ok", rpc_auth_join_verify(got, secret, sizeof(secret), r, now, 30000,
						       &err), 0, &err, NULL, NULL);
	t_expect_err("replay", rpc_auth_join_verify(got, secret, sizeof(secret), r, now + 10, 30000,
						    &err), -EACCES, &err, "replayed nonce", NULL);
	/* another coordinator (fresh cache) accepts it: the nonce lives in the cache only */
	CHECK(rpc_auth_join_verify(&j.req, secret, sizeof(secret), r2, now, 30000, &err) == 0);
	t_expect_err("wrong secret", rpc_auth_join_verify(got, other, sizeof(other), r, now, 30000,
							  &err), -EACCES, &err, "bad HMAC", NULL);
	t_expect_err("short secret prefix", rpc_auth_join_verify(got, secret, 31, r, now, 30000,
								 &err), -EACCES, &err, "bad HMAC",
		     NULL);
	ferry__v1__join_request__free_unpacked(got, NULL);
	free(wire);

	/* a second signing draws a new nonce */
	free(j.req.hmac.data);
	j.req.hmac = (ProtobufCBinaryData){ 0, NULL };
	CHECK(rpc_auth_join_sign(&j.req, secret, sizeof(secret), &err) == 0 && j.req.nonce != nonce1);
	t_expect_err("sign twice", rpc_auth_join_sign(&j.req, secret, sizeof(secret), &err), -EINVAL,
		     &err, "hmac already set", NULL);
	free(j.req.hmac.data);
	j.req.hmac = (ProtobufCBinaryData){ 0, NULL };
	t_expect_err("sign empty secret", rpc_auth_join_sign(&j.req, secret, 0, &err), -EINVAL, &err,
		     "empty secret", NULL);
	t_expect_err("verify no cache", rpc_auth_join_verify(&j.req, secret, 32, NULL, now, 1, &err),
		     -EINVAL, &err, "no replay cache", NULL);
	rpc_auth_replay_destroy(r);
	rpc_auth_replay_destroy(r2);
}

/* Any message with nonce, timestamp_unix_ms and hmac signs the same way (UnloadExperts). */
static void test_other_messages(void)
{
	Ferry__V1__UnloadExpertsRequest u = FERRY__V1__UNLOAD_EXPERTS_REQUEST__INIT;
	Ferry__V1__SlotAssignment sa = FERRY__V1__SLOT_ASSIGNMENT__INIT, *sap = &sa;
	Ferry__V1__ChallengeRequest hb = FERRY__V1__CHALLENGE_REQUEST__INIT;
	struct rpc_auth_replay *r = NULL;
	struct fr_error err = { { 0 } };
	uint64_t now = rpc_auth_now_ms();

	CHECK(rpc_auth_replay_create(16, &r) == 0);
	u.worker_index = 2;
	u.epoch = 1;
	sa.layer = 3;
	sa.slot = 4;
	sa.expert = 5;
	u.n_slots = 1;
	u.slots = &sap;
	CHECK(rpc_auth_sign(&u.base, secret, sizeof(secret), &err) == 0);
	CHECK(u.nonce != 0 && u.hmac.len == 32);
	t_expect_err("unload verify", rpc_auth_verify(&u.base, secret, sizeof(secret), r, now, 30000,
						      &err), 0, &err, NULL, NULL);
	t_expect_err("unload replay", rpc_auth_verify(&u.base, secret, sizeof(secret), r, now,
						      30000, &err), -EACCES, &err, "replayed", NULL);
	sa.expert = 6; /* a nested field is covered too */
	t_expect_err("unload tampered", rpc_auth_verify(&u.base, secret, sizeof(secret), r, now,
							30000, &err), -EACCES, &err, "bad HMAC", NULL);
	free(u.hmac.data);
	t_expect_err("no such fields", rpc_auth_sign(&hb.base, secret, sizeof(secret), &err),
		     -EINVAL, &err, "ChallengeRequest has no nonce", NULL);
	t_expect_err("verify no such fields",
		     rpc_auth_verify(&hb.base, secret, sizeof(secret), r, now, 30000, &err), -EINVAL,
		     &err, "has no nonce", NULL);
	rpc_auth_replay_destroy(r);
}

/* Changing any one field after signing must fail the HMAC. */
static void test_tamper(uint64_t *st)
{
	struct rpc_auth_replay *r = NULL;
	struct fr_error err = { { 0 } };
	uint64_t now = 1700000000000ull;
	char what[64];

	CHECK(rpc_auth_replay_create(0, &r) == 0);
	for (int field = 0; field < 15; field++) {
		struct join j;
		join_init(&j, st);
		j.req.hmac = (ProtobufCBinaryData){ 0, NULL };
		sign_at(&j.req, secret, sizeof(secret), now, 1 + fr_splitmix64(st) % 1000000);
		switch (field) {
		case 0: j.req.worker_name = "w4"; break;
		case 1: j.dev.memory_bytes++; break;
		case 2: j.dev.name = "NVIDIA H200"; break;
		case 3: j.req.host_memory_bytes ^= 1; break;
		case 4: j.req.slot_capacity++; break;
		case 5: j.blob[3] ^= 0x10; break;
		case 6: j.addr.backend = "verbs"; break;
		case 7: j.req.nonce++; break;
		case 8: j.req.timestamp_unix_ms--; break;
		case 9: j.req.ring_slots = 8; break;
		case 10: j.req.ring_tokens = 4096; break;
		case 11: j.req.hidden_size = 7168; break;
		case 12: j.req.n_routed_experts = 256; break;
		case 13: j.req.hmac.data[31] ^= 1; break;
		case 14: j.req.n_devices = 0; break;
		}
		snprintf(what, sizeof(what), "tampered field %d", field);
		t_expect_err(what, rpc_auth_join_verify(&j.req, secret, sizeof(secret), r, now, 30000,
							&err), -EACCES, &err, "bad HMAC", NULL);
		free(j.req.hmac.data);
	}
	/* hmac missing or of the wrong length */
	{
		struct join j;
		join_init(&j, st);
		t_expect_err("no hmac", rpc_auth_join_verify(&j.req, secret, 32, r, now, 30000, &err),
			     -EACCES, &err, "bad HMAC (0 bytes, expected 32)", NULL);
		sign_at(&j.req, secret, sizeof(secret), now, 77);
		j.req.hmac.len = 31;
		t_expect_err("short hmac", rpc_auth_join_verify(&j.req, secret, 32, r, now, 30000, &err),
			     -EACCES, &err, "bad HMAC (31 bytes", NULL);
		free(j.req.hmac.data);
	}
	rpc_auth_replay_destroy(r);
}

static void test_skew_and_cache(uint64_t *st)
{
	struct rpc_auth_replay *r = NULL;
	struct fr_error err = { { 0 } };
	const uint64_t t0 = 1700000000000ull, skew = 1000;
	struct join a, b, c, z;

	join_init(&a, st);
	join_init(&b, st);
	join_init(&c, st);
	join_init(&z, st);
	sign_at(&a.req, secret, sizeof(secret), t0, 101);
	sign_at(&b.req, secret, sizeof(secret), t0, 102);
	sign_at(&c.req, secret, sizeof(secret), t0 + 500, 103);
	sign_at(&z.req, secret, sizeof(secret), t0, 0);

	CHECK(rpc_auth_replay_create(2, &r) == 0);
	t_expect_err("skew past", rpc_auth_join_verify(&a.req, secret, 32, r, t0 + skew + 1, skew,
						       &err), -EACCES, &err,
		     "timestamp skew of 1001 ms (limit 1000 ms)", NULL);
	t_expect_err("skew future", rpc_auth_join_verify(&a.req, secret, 32, r, t0 - skew - 5, skew,
							 &err), -EACCES, &err,
		     "timestamp skew of 1005 ms", NULL);
	t_expect_err("missing nonce", rpc_auth_join_verify(&z.req, secret, 32, r, t0, skew, &err),
		     -EACCES, &err, "missing nonce", NULL);
	/* exactly at the limit is accepted */
	CHECK(rpc_auth_join_verify(&a.req, secret, 32, r, t0 + skew, skew, &err) == 0);
	CHECK(rpc_auth_join_verify(&b.req, secret, 32, r, t0 + 100, skew, &err) == 0);
	t_expect_err("cache full", rpc_auth_join_verify(&c.req, secret, 32, r, t0 + 500, skew,
							&err), -EAGAIN, &err, "replay cache full",
		     NULL);
	/* a and b leave the cache once their timestamps leave the window; c fits then */
	CHECK(rpc_auth_join_verify(&c.req, secret, 32, r, t0 + skew + 1, skew, &err) == 0);
	t_expect_err("replay c", rpc_auth_join_verify(&c.req, secret, 32, r, t0 + skew + 2, skew,
						      &err), -EACCES, &err, "replayed nonce", NULL);
	/* a, forgotten, is still refused: by the clock */
	t_expect_err("old a", rpc_auth_join_verify(&a.req, secret, 32, r, t0 + skew + 2, skew,
						   &err), -EACCES, &err, "timestamp skew", NULL);
	free(a.req.hmac.data);
	free(b.req.hmac.data);
	free(c.req.hmac.data);
	free(z.req.hmac.data);
	rpc_auth_replay_destroy(r);
}

struct race {
	const Ferry__V1__JoinRequest *req;
	struct rpc_auth_replay *r;
	uint64_t now;
	int rc;
};

static void *race_main(void *p)
{
	struct race *x = p;
	struct fr_error err;
	x->rc = rpc_auth_join_verify(x->req, secret, sizeof(secret), x->r, x->now, 30000, &err);
	return NULL;
}

/* The same Join presented by 8 threads at once: exactly one wins. */
static void test_threads(uint64_t *st)
{
	struct rpc_auth_replay *r = NULL;
	struct join j;
	struct race x[8];
	pthread_t th[8];
	int ok = 0, replayed = 0;

	CHECK(rpc_auth_replay_create(64, &r) == 0);
	join_init(&j, st);
	CHECK(rpc_auth_join_sign(&j.req, secret, sizeof(secret), NULL) == 0);
	for (int i = 0; i < 8; i++) {
		x[i] = (struct race){ &j.req, r, rpc_auth_now_ms(), 1 };
		pthread_create(&th[i], NULL, race_main, &x[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ok += x[i].rc == 0;
		replayed += x[i].rc == -EACCES;
	}
	CHECK(ok == 1 && replayed == 7);
	printf("ok   threads: %d accepted, %d replays refused\n", ok, replayed);
	free(j.req.hmac.data);
	rpc_auth_replay_destroy(r);
}

static char *secret_file(const char *dir, const char *name, const char *text, size_t len,
			 mode_t mode)
{
	char *path;
	int fd;
	if (asprintf(&path, "%s/%s", dir, name) < 0)
		abort();
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		abort();
	close(fd);
	chmod(path, mode);
	return path;
}

static void test_secret_files(void)
{
	char dir[] = "/tmp/ferry-test-auth-XXXXXX", *p, big[RPC_AUTH_SECRET_MAX + 10];
	struct fr_error err = { { 0 } };
	uint8_t *s = NULL;
	size_t len = 0;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		t_failures++;
		return;
	}
	p = secret_file(dir, "ok", "0123456789abcdef0123\n", 21, 0600);
	CHECK(rpc_auth_secret_load(p, &s, &len, &err) == 0 && len == 20 &&
	      memcmp(s, "0123456789abcdef0123", 20) == 0);
	rpc_auth_secret_free(s, len);
	unlink(p);
	free(p);
	p = secret_file(dir, "crlf", "0123456789abcdef\r\n", 18, 0400);
	CHECK(rpc_auth_secret_load(p, &s, &len, &err) == 0 && len == 16);
	rpc_auth_secret_free(s, len);
	unlink(p);
	free(p);

	static const struct {
		const char *name, *text;
		mode_t mode;
		int rc;
		const char *want;
	} bad[] = {
		{ "world", "0123456789abcdef0123", 0644, -EACCES, "mode 0644, must not be accessible "
								  "by group or others" },
		{ "group", "0123456789abcdef0123", 0640, -EACCES, "mode 0640" },
		{ "gw", "0123456789abcdef0123", 0620, -EACCES, "mode 0620" },
		{ "ox", "0123456789abcdef0123", 0601, -EACCES, "mode 0601" },
		{ "empty", "", 0600, -EINVAL, "empty" },
		{ "newlines", "\n\r\n", 0600, -EINVAL, "empty" },
		{ "short", "0123456789abcde\n", 0600, -EINVAL, "15 bytes, a secret needs at least 16" },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(bad); i++) {
		p = secret_file(dir, bad[i].name, bad[i].text, strlen(bad[i].text), bad[i].mode);
		s = NULL;
		t_expect_err(bad[i].name, rpc_auth_secret_load(p, &s, &len, &err), bad[i].rc, &err, p,
			     bad[i].want);
		CHECK(s == NULL);
		unlink(p);
		free(p);
	}
	memset(big, 'k', sizeof(big));
	p = secret_file(dir, "big", big, sizeof(big), 0600);
	t_expect_err("too big", rpc_auth_secret_load(p, &s, &len, &err), -EFBIG, &err, p,
		     "more than 4096");
	unlink(p);
	free(p);
	if (asprintf(&p, "%s/none", dir) < 0)
		abort();
	t_expect_err("missing", rpc_auth_secret_load(p, &s, &len, &err), -ENOENT, &err, p,
		     "No such file");
	free(p);
	chmod(dir, 0700);
	t_expect_err("directory", rpc_auth_secret_load(dir, &s, &len, &err), -EINVAL, &err,
		     "not a regular file", NULL);
	rmdir(dir);
}

static void test_bearer(void)
{
	static const uint8_t tok[] = "s3cr3t-admin-token-0123";
	size_t n = sizeof(tok) - 1;

	CHECK(rpc_auth_bearer_check("Bearer s3cr3t-admin-token-0123", tok, n) == 0);
	CHECK(rpc_auth_bearer_check("bearer   s3cr3t-admin-token-0123", tok, n) == 0);
	CHECK(rpc_auth_bearer_check("BEARER s3cr3t-admin-token-0123", tok, n) == 0);
	CHECK(rpc_auth_bearer_check("Bearer s3cr3t-admin-token-012", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer s3cr3t-admin-token-01234", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer S3cr3t-admin-token-0123", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Basic s3cr3t-admin-token-0123", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearers3cr3t-admin-token-0123", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("s3cr3t-admin-token-0123", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer ", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("", tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check(NULL, tok, n) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer ", (const uint8_t *)"", 0) == -EACCES);
	CHECK(rpc_auth_bearer_check("Bearer x", NULL, 0) == -EACCES);
}

/* Join challenges (single-use, expiring, bounded) and per-join session keys (a request
 * signed in one session verifies in no other). */
static void test_sessions(uint64_t *st)
{
	struct rpc_auth_challenges *ch;
	struct fr_error err = { { 0 } };
	uint8_t c1[RPC_AUTH_CHALLENGE_LEN], c2[RPC_AUTH_CHALLENGE_LEN], c3[RPC_AUTH_CHALLENGE_LEN];
	uint64_t t = 1000 + fr_splitmix64(st) % 100000;

	CHECK(rpc_auth_challenges_create(4, 30000, &ch) == 0);
	CHECK(rpc_auth_challenge_issue(ch, t, c1) == 0 && rpc_auth_challenge_issue(ch, t, c2) == 0);
	CHECK(memcmp(c1, c2, sizeof(c1)) != 0);
	t_expect_err("challenge taken", rpc_auth_challenge_take(ch, c1, sizeof(c1), t + 10, &err), 0,
		     &err, NULL, NULL);
	t_expect_err("challenge used twice", rpc_auth_challenge_take(ch, c1, sizeof(c1), t + 20,
								      &err), -EACCES, &err,
		     "unknown, used or expired challenge", NULL);
	t_expect_err("challenge expired", rpc_auth_challenge_take(ch, c2, sizeof(c2), t + 30001,
								   &err), -EACCES, &err,
		     "unknown, used or expired", NULL);
	uint8_t forged[RPC_AUTH_CHALLENGE_LEN];
	for (size_t i = 0; i < sizeof(forged); i++)
		forged[i] = (uint8_t)fr_splitmix64(st);
	t_expect_err("challenge unknown", rpc_auth_challenge_take(ch, forged, sizeof(forged), t,
								   &err), -EACCES, &err,
		     "unknown, used or expired", NULL);
	t_expect_err("challenge length", rpc_auth_challenge_take(ch, forged, 5, t, &err), -EACCES,
		     &err, "challenge of 5 bytes", NULL);
	t_expect_err("challenge missing", rpc_auth_challenge_take(ch, NULL, 0, t, &err), -EACCES,
		     &err, "ask for a Challenge first", NULL);
	/* Past capacity the oldest live one is forgotten, the newest kept. */
	CHECK(rpc_auth_challenge_issue(ch, t, c3) == 0);
	for (int i = 0; i < 4; i++) {
		uint8_t x[RPC_AUTH_CHALLENGE_LEN];
		CHECK(rpc_auth_challenge_issue(ch, t, x) == 0);
		if (i == 3)
			t_expect_err("newest challenge kept",
				     rpc_auth_challenge_take(ch, x, sizeof(x), t, &err), 0, &err,
				     NULL, NULL);
	}
	t_expect_err("oldest challenge forgotten", rpc_auth_challenge_take(ch, c3, sizeof(c3), t,
									    &err), -EACCES, &err,
		     "unknown, used or expired", NULL);
	rpc_auth_challenges_destroy(ch);

	/* Session keys: a function of secret, challenge and session id, each of which counts. */
	uint8_t sid[RPC_AUTH_SESSION_ID_LEN], sid2[RPC_AUTH_SESSION_ID_LEN];
	uint8_t k1[RPC_AUTH_KEY_LEN], k1b[RPC_AUTH_KEY_LEN], k2[RPC_AUTH_KEY_LEN];
	uint8_t k3[RPC_AUTH_KEY_LEN], k4[RPC_AUTH_KEY_LEN];
	for (size_t i = 0; i < sizeof(sid); i++) {
		sid[i] = (uint8_t)fr_splitmix64(st);
		sid2[i] = sid[i] ^ (i == 3);
	}
	CHECK(rpc_auth_session_key(secret, sizeof(secret), c1, sizeof(c1), sid, sizeof(sid), k1,
				   &err) == 0);
	CHECK(rpc_auth_session_key(secret, sizeof(secret), c1, sizeof(c1), sid, sizeof(sid), k1b,
				   &err) == 0);
	CHECK(rpc_auth_session_key(secret, sizeof(secret), c1, sizeof(c1), sid2, sizeof(sid2), k2,
				   &err) == 0);
	CHECK(rpc_auth_session_key(secret, sizeof(secret), c2, sizeof(c2), sid, sizeof(sid), k3,
				   &err) == 0);
	CHECK(rpc_auth_session_key(other, sizeof(other), c1, sizeof(c1), sid, sizeof(sid), k4,
				   &err) == 0);
	CHECK(memcmp(k1, k1b, sizeof(k1)) == 0);
	CHECK(memcmp(k1, k2, sizeof(k1)) != 0 && memcmp(k1, k3, sizeof(k1)) != 0 &&
	      memcmp(k1, k4, sizeof(k1)) != 0);
	t_expect_err("session key without a challenge",
		     rpc_auth_session_key(secret, sizeof(secret), NULL, 0, sid, sizeof(sid), k2,
					  &err), -EINVAL, &err, "empty", NULL);

	/* A Heartbeat of session 1: good in session 1 once, never in session 2. */
	struct rpc_auth_replay *r1 = NULL, *r2 = NULL;
	CHECK(rpc_auth_replay_create(0, &r1) == 0 && rpc_auth_replay_create(0, &r2) == 0);
	Ferry__V1__HeartbeatRequest hb = FERRY__V1__HEARTBEAT_REQUEST__INIT;
	hb.worker_index = 2;
	hb.epoch = 5;
	CHECK(rpc_auth_sign(&hb.base, k1, sizeof(k1), &err) == 0);
	uint64_t now = rpc_auth_now_ms();
	t_expect_err("session request", rpc_auth_verify(&hb.base, k1, sizeof(k1), r1, now, 30000,
							 &err), 0, &err, NULL, NULL);
	t_expect_err("session request replayed", rpc_auth_verify(&hb.base, k1, sizeof(k1), r1, now,
								  30000, &err), -EACCES, &err,
		     "replayed", NULL);
	t_expect_err("request of another session", rpc_auth_verify(&hb.base, k2, sizeof(k2), r2,
								    now, 30000, &err), -EACCES,
		     &err, "bad HMAC", NULL);
	t_expect_err("request under the bare secret", rpc_auth_verify(&hb.base, secret,
								       sizeof(secret), r2, now,
								       30000, &err), -EACCES, &err,
		     "bad HMAC", NULL);
	hb.worker_index = 3; /* speaking for another worker */
	t_expect_err("request for another worker", rpc_auth_verify(&hb.base, k1, sizeof(k1), r2,
								    now, 30000, &err), -EACCES,
		     &err, "bad HMAC", NULL);
	free(hb.hmac.data);
	rpc_auth_replay_destroy(r1);
	rpc_auth_replay_destroy(r2);
}

int main(void)
{
	uint64_t st = t_seed();

	for (size_t i = 0; i < sizeof(secret); i++) {
		secret[i] = (uint8_t)fr_splitmix64(&st);
		other[i] = secret[i];
	}
	other[7] ^= 0x40;
	test_roundtrip(&st);
	test_tamper(&st);
	test_other_messages();
	test_skew_and_cache(&st);
	test_threads(&st);
	test_secret_files();
	test_bearer();
	test_sessions(&st);
	printf("%s (%d failures)\n", t_failures ? "FAIL" : "ok", t_failures);
	return t_failures != 0;
}
