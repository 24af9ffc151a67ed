/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.c - Join HMAC, replay cache, admin bearer token, secret files (see auth.h).
 * OpenSSL's libcrypto is used for HMAC-SHA256, SHA-256, CRYPTO_memcmp and OPENSSL_cleanse
 * only; its error queue is cleared where a call fails so that it never leaks into a
 * later, unrelated caller.
 */
#include "rpc/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* ---- secret files ------------------------------------------------------------------------ */

int rpc_auth_secret_load(const char *path, uint8_t **ret, size_t *ret_len, struct fr_error *err)
{
	uint8_t *buf = NULL;
	size_t got = 0, cap;
	struct stat st;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return fr_error_set(err, -errno, "secret file %s: %s", path, strerror(errno));
	/* fstat of the open file, not stat of the path: what we check is what we read */
	if (fstat(fd, &st) < 0) {
		rc = fr_error_set(err, -errno, "secret file %s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = fr_error_set(err, -EINVAL, "secret file %s: not a regular file", path);
		goto out;
	}
	if (st.st_mode & 077) {
		rc = fr_error_set(err, -EACCES, "secret file %s: mode %04o, must not be accessible "
				  "by group or others (chmod 600 %s)", path,
				  (unsigned)(st.st_mode & 07777), path);
		goto out;
	}
	if (st.st_size > RPC_AUTH_SECRET_MAX + 2) {
		rc = fr_error_set(err, -EFBIG, "secret file %s: %lld bytes, more than %d", path,
				  (long long)st.st_size, RPC_AUTH_SECRET_MAX);
		goto out;
	}
	/* Room for a trailing "\r\n" and one byte more, so that a file that grew since fstat
	 * is noticed rather than cut. */
	cap = RPC_AUTH_SECRET_MAX + 3;
	if (!(buf = malloc(cap))) {
		rc = fr_error_set(err, -ENOMEM, "secret file %s: out of memory", path);
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, buf + got, cap - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = fr_error_set(err, -errno, "secret file %s: read: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
		if (got == cap)
			break;
	}
	if (got == cap) {
		rc = fr_error_set(err, -EFBIG, "secret file %s: more than %d bytes", path,
				  RPC_AUTH_SECRET_MAX);
		goto out;
	}
	while (got && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
		got--;
	if (got > RPC_AUTH_SECRET_MAX) {
		rc = fr_error_set(err, -EFBIG, "secret file %s: more than %d bytes", path,
				  RPC_AUTH_SECRET_MAX);
		goto out;
	}
	if (got == 0) {
		rc = fr_error_set(err, -EINVAL, "secret file %s: empty", path);
		goto out;
	}
	if (got < RPC_AUTH_SECRET_MIN) {
		rc = fr_error_set(err, -EINVAL, "secret file %s: %zu bytes, a secret needs at least "
				  "%d (make one with: openssl rand -hex 32 > %s)", path, got,
				  RPC_AUTH_SECRET_MIN, path);
		goto out;
	}
	*ret = buf;
	*ret_len = got;
	buf = NULL;
	rc = 0;
out:
	if (buf) {
		OPENSSL_cleanse(buf, cap);
		free(buf);
	}
	close(fd);
	return rc;
}

void rpc_auth_secret_free(uint8_t *secret, size_t len)
{
	if (secret) {
		OPENSSL_cleanse(secret, len);
		free(secret);
	}
}

/* ---- Join HMAC ----------------------------------------------------------------------------- */

uint64_t rpc_auth_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* HMAC-SHA256 of req serialized with hmac empty. */
/* The fields a signed message carries: uint64 nonce, uint64 timestamp_unix_ms, bytes hmac. */
struct signed_fields {
	size_t nonce, ts, hmac; /* offsets into the message struct */
};

static int signed_fields(const ProtobufCMessageDescriptor *d, struct signed_fields *f,
			 struct fr_error *err)
{
	const ProtobufCFieldDescriptor *n = protobuf_c_message_descriptor_get_field_by_name(d, "nonce");
	const ProtobufCFieldDescriptor *t =
		protobuf_c_message_descriptor_get_field_by_name(d, "timestamp_unix_ms");
	const ProtobufCFieldDescriptor *h = protobuf_c_message_descriptor_get_field_by_name(d, "hmac");

	if (!n || !t || !h || n->type != PROTOBUF_C_TYPE_UINT64 ||
	    t->type != PROTOBUF_C_TYPE_UINT64 || h->type != PROTOBUF_C_TYPE_BYTES ||
	    n->label == PROTOBUF_C_LABEL_REPEATED || t->label == PROTOBUF_C_LABEL_REPEATED ||
	    h->label == PROTOBUF_C_LABEL_REPEATED)
		return fr_error_set(err, -EINVAL, "%s has no nonce, timestamp_unix_ms and hmac "
				    "fields to sign", d->name);
	*f = (struct signed_fields){ n->offset, t->offset, h->offset };
	return 0;
}

#define FIELD(m, off, type) ((type *)((uint8_t *)(m) + (off)))

/* HMAC-SHA256 of msg packed with its hmac field empty (a shallow copy is packed). */
static int msg_mac(const ProtobufCMessage *msg, const struct signed_fields *f,
		   const uint8_t *secret, size_t len, uint8_t mac[RPC_AUTH_HMAC_LEN],
		   struct fr_error *err)
{
	size_t sz = msg->descriptor->sizeof_message, n;
	unsigned int mac_len = 0;
	uint8_t *tmp, *buf = NULL;
	int rc = 0;

	if (len > INT_MAX)
		return fr_error_set(err, -EINVAL, "secret of %zu bytes is too long", len);
	if (!(tmp = malloc(sz)))
		return fr_error_set(err, -ENOMEM, "HMAC: out of memory");
	memcpy(tmp, msg, sz);
	*FIELD(tmp, f->hmac, ProtobufCBinaryData) = (ProtobufCBinaryData){ 0, NULL };
	n = protobuf_c_message_get_packed_size((const ProtobufCMessage *)tmp);
	if (!(buf = malloc(n ? n : 1))) {
		rc = fr_error_set(err, -ENOMEM, "HMAC: out of memory for %zu bytes", n);
	} else if (protobuf_c_message_pack((const ProtobufCMessage *)tmp, buf) != n) {
		rc = fr_error_set(err, -EIO, "HMAC: protobuf-c packed a different length");
	} else if (!HMAC(EVP_sha256(), secret, (int)len, buf, n, mac, &mac_len) ||
		   mac_len != RPC_AUTH_HMAC_LEN) {
		ERR_clear_error();
		rc = fr_error_set(err, -EIO, "HMAC: OpenSSL HMAC-SHA256 failed");
	}
	free(buf);
	free(tmp);
	return rc;
}

static int random_nonce(uint64_t *ret)
{
	uint64_t v = 0;

	while (v == 0) { /* 0 reads as "no nonce" on the wire */
		uint8_t *p = (uint8_t *)&v;
		size_t got = 0;
		while (got < sizeof(v)) {
			ssize_t r = getrandom(p + got, sizeof(v) - got, 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			got += (size_t)r;
		}
	}
	*ret = v;
	return 0;
}

int rpc_auth_sign(ProtobufCMessage *msg, const uint8_t *secret, size_t len,
		  struct fr_error *err)
{
	struct signed_fields f;
	uint64_t *nonce_p, *ts_p, old_nonce, old_ts, nonce = 0;
	ProtobufCBinaryData *hmac;
	uint8_t mac[RPC_AUTH_HMAC_LEN];
	int rc;

	if (!secret || !len)
		return fr_error_set(err, -EINVAL, "sign: empty secret");
	if ((rc = signed_fields(msg->descriptor, &f, err)) < 0)
		return rc;
	nonce_p = FIELD(msg, f.nonce, uint64_t);
	ts_p = FIELD(msg, f.ts, uint64_t);
	hmac = FIELD(msg, f.hmac, ProtobufCBinaryData);
	if (hmac->len || hmac->data)
		return fr_error_set(err, -EINVAL, "sign: hmac already set");
	if ((rc = random_nonce(&nonce)) < 0)
		return fr_error_set(err, -EIO, "sign: getrandom: %s", strerror(-rc));
	old_nonce = *nonce_p;
	old_ts = *ts_p;
	*nonce_p = nonce;
	*ts_p = rpc_auth_now_ms();
	if ((rc = msg_mac(msg, &f, secret, len, mac, err)) < 0)
		goto fail;
	if (!(hmac->data = malloc(RPC_AUTH_HMAC_LEN))) {
		rc = fr_error_set(err, -ENOMEM, "sign: out of memory");
		goto fail;
	}
	memcpy(hmac->data, mac, RPC_AUTH_HMAC_LEN);
	hmac->len = RPC_AUTH_HMAC_LEN;
	return 0;
fail:
	*nonce_p = old_nonce;
	*ts_p = old_ts;
	return rc;
}

int rpc_auth_join_sign(Ferry__V1__JoinRequest *req, const uint8_t *secret, size_t len,
		       struct fr_error *err)
{
	return rpc_auth_sign(&req->base, secret, len, err);
}

/* ---- replay cache ---------------------------------------------------------------------------- */

struct replay_entry {
	uint64_t nonce;
	uint64_t expires_ms;   /* the nonce's timestamp + the skew window */
};

/* A flat array, scanned whole: joins are rare (one per worker start) and the capacity is a
 * few thousand, so a scan costs microseconds and keeps expiry trivial. */
struct rpc_auth_replay {
	pthread_mutex_t lock;
	size_t cap, n;
	struct replay_entry *e;   /* [cap] */
};

int rpc_auth_replay_create(size_t capacity, struct rpc_auth_replay **ret)
{
	struct rpc_auth_replay *r = calloc(1, sizeof(*r));

	if (!capacity)
		capacity = 4096;
	if (!r || !(r->e = calloc(capacity, sizeof(*r->e)))) {
		free(r);
		return -ENOMEM;
	}
	r->cap = capacity;
	pthread_mutex_init(&r->lock, NULL);
	*ret = r;
	return 0;
}

void rpc_auth_replay_destroy(struct rpc_auth_replay *r)
{
	if (!r)
		return;
	pthread_mutex_destroy(&r->lock);
	free(r->e);
	free(r);
}

/* Forgets expired nonces, then remembers this one. -EACCES if present, -EAGAIN if full. */
static int replay_insert(struct rpc_auth_replay *r, uint64_t nonce, uint64_t expires_ms,
			 uint64_t now_ms)
{
	int rc = 0;

	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n;) {
		if (r->e[i].expires_ms < now_ms) {
			r->e[i] = r->e[--r->n];
			continue;
		}
		if (r->e[i].nonce == nonce)
			rc = -EACCES;
		i++;
	}
	if (rc == 0 && r->n == r->cap)
		rc = -EAGAIN;
	if (rc == 0)
		r->e[r->n++] = (struct replay_entry){ nonce, expires_ms };
	pthread_mutex_unlock(&r->lock);
	return rc;
}

int rpc_auth_verify(const ProtobufCMessage *msg, const uint8_t *secret, size_t len,
		    struct rpc_auth_replay *replay, uint64_t now_ms, uint64_t max_skew_ms,
		    struct fr_error *err)
{
	struct signed_fields f;
	uint8_t mac[RPC_AUTH_HMAC_LEN];
	uint64_t ts, nonce, skew, expires;
	const ProtobufCBinaryData *hmac;
	int rc;

	if (!secret || !len)
		return fr_error_set(err, -EINVAL, "verify: empty secret");
	if (!replay)
		return fr_error_set(err, -EINVAL, "verify: no replay cache");
	if ((rc = signed_fields(msg->descriptor, &f, err)) < 0)
		return rc;
	ts = *FIELD(msg, f.ts, const uint64_t);
	nonce = *FIELD(msg, f.nonce, const uint64_t);
	hmac = FIELD(msg, f.hmac, const ProtobufCBinaryData);
	if (hmac->len != RPC_AUTH_HMAC_LEN || !hmac->data)
		return fr_error_set(err, -EACCES, "bad HMAC (%zu bytes, expected %d)", hmac->len,
				    RPC_AUTH_HMAC_LEN);
	if ((rc = msg_mac(msg, &f, secret, len, mac, err)) < 0)
		return rc;
	if (CRYPTO_memcmp(mac, hmac->data, RPC_AUTH_HMAC_LEN) != 0)
		return fr_error_set(err, -EACCES, "bad HMAC (wrong cluster secret, or the request "
				    "was altered)");
	skew = now_ms > ts ? now_ms - ts : ts - now_ms;
	if (skew > max_skew_ms)
		return fr_error_set(err, -EACCES, "timestamp skew of %llu ms (limit %llu ms): "
				    "check the clocks (NTP) of both hosts",
				    (unsigned long long)skew, (unsigned long long)max_skew_ms);
	if (nonce == 0)
		return fr_error_set(err, -EACCES, "missing nonce");
	if (__builtin_add_overflow(ts, max_skew_ms, &expires))
		expires = UINT64_MAX;
	rc = replay_insert(replay, nonce, expires, now_ms);
	if (rc == -EACCES)
		return fr_error_set(err, -EACCES, "replayed nonce %016llx",
				    (unsigned long long)nonce);
	if (rc == -EAGAIN)
		return fr_error_set(err, -EAGAIN, "replay cache full (%zu requests within the "
				    "skew window): retry later", replay->cap);
	return 0;
}

int rpc_auth_join_verify(const Ferry__V1__JoinRequest *req, const uint8_t *secret, size_t len,
			 struct rpc_auth_replay *replay, uint64_t now_ms, uint64_t max_skew_ms,
			 struct fr_error *err)
{
	return rpc_auth_verify(&req->base, secret, len, replay, now_ms, max_skew_ms, err);
}

/* ---- challenges and sessions ---------------------------------------------------------------- */

int rpc_auth_random(uint8_t *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = getrandom(buf + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -EIO;
		got += (size_t)r;
	}
	return 0;
}

int rpc_auth_session_key(const uint8_t *secret, size_t len, const uint8_t *challenge,
			 size_t challenge_len, const uint8_t *session_id, size_t session_id_len,
			 uint8_t ret_key[RPC_AUTH_KEY_LEN], struct fr_error *err)
{
	static const char label[] = "ferry.v1 session key";
	uint8_t key[RPC_AUTH_KEY_LEN], *msg;
	unsigned int key_len = 0;
	size_t n;
	bool ok;

	if (!secret || !len || len > INT_MAX || !challenge || !challenge_len || !session_id ||
	    !session_id_len || challenge_len > 4096 || session_id_len > 4096)
		return fr_error_set(err, -EINVAL, "session key: empty secret, challenge or "
				    "session id");
	n = sizeof(label) - 1 + challenge_len + session_id_len;
	if (!(msg = malloc(n)))
		return fr_error_set(err, -ENOMEM, "session key: out of memory");
	memcpy(msg, label, sizeof(label) - 1);
	memcpy(msg + sizeof(label) - 1, challenge, challenge_len);
	memcpy(msg + sizeof(label) - 1 + challenge_len, session_id, session_id_len);
	ok = HMAC(EVP_sha256(), secret, (int)len, msg, n, key, &key_len) &&
	     key_len == RPC_AUTH_KEY_LEN;
	free(msg);
	if (!ok) {
		ERR_clear_error();
		return fr_error_set(err, -EIO, "session key: OpenSSL HMAC-SHA256 failed");
	}
	memcpy(ret_key, key, sizeof(key));
	OPENSSL_cleanse(key, sizeof(key));
	return 0;
}

struct challenge_entry {
	uint8_t v[RPC_AUTH_CHALLENGE_LEN];
	uint64_t issued_ms;
	bool live;
};

struct rpc_auth_challenges {
	pthread_mutex_t lock;
	uint64_t ttl_ms;
	size_t cap, next;               /* next: the slot the next issue overwrites (oldest) */
	struct challenge_entry *e;      /* [cap], a ring in issue order */
};

int rpc_auth_challenges_create(size_t capacity, uint64_t ttl_ms,
			       struct rpc_auth_challenges **ret)
{
	struct rpc_auth_challenges *c = calloc(1, sizeof(*c));

	if (!capacity)
		capacity = 256;
	if (!c || !(c->e = calloc(capacity, sizeof(*c->e)))) {
		free(c);
		return -ENOMEM;
	}
	c->cap = capacity;
	c->ttl_ms = ttl_ms ? ttl_ms : 30000;
	pthread_mutex_init(&c->lock, NULL);
	*ret = c;
	return 0;
}

void rpc_auth_challenges_destroy(struct rpc_auth_challenges *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	OPENSSL_cleanse(c->e, c->cap * sizeof(*c->e));
	free(c->e);
	free(c);
}

uint64_t rpc_auth_challenge_ttl(const struct rpc_auth_challenges *c)
{
	return c->ttl_ms;
}

int rpc_auth_challenge_issue(struct rpc_auth_challenges *c, uint64_t now_ms,
			     uint8_t ret[RPC_AUTH_CHALLENGE_LEN])
{
	uint8_t v[RPC_AUTH_CHALLENGE_LEN];

	if (rpc_auth_random(v, sizeof(v)) < 0)
		return -EIO;
	pthread_mutex_lock(&c->lock);
	struct challenge_entry *e = &c->e[c->next];
	c->next = (c->next + 1) % c->cap;
	memcpy(e->v, v, sizeof(v));
	e->issued_ms = now_ms;
	e->live = true;
	pthread_mutex_unlock(&c->lock);
	memcpy(ret, v, sizeof(v));
	return 0;
}

int rpc_auth_challenge_take(struct rpc_auth_challenges *c, const uint8_t *challenge, size_t len,
			    uint64_t now_ms, struct fr_error *err)
{
	int rc = -EACCES;

	if (len != RPC_AUTH_CHALLENGE_LEN)
		return fr_error_set(err, -EACCES, "challenge of %zu bytes (expected %d): ask for "
				    "a Challenge first", len, RPC_AUTH_CHALLENGE_LEN);
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->cap; i++) {
		struct challenge_entry *e = &c->e[i];
		if (!e->live || CRYPTO_memcmp(e->v, challenge, len) != 0)
			continue;
		e->live = false;
		if (now_ms >= e->issued_ms && now_ms - e->issued_ms <= c->ttl_ms)
			rc = 0;
		break;
	}
	pthread_mutex_unlock(&c->lock);
	if (rc < 0)
		return fr_error_set(err, rc, "unknown, used or expired challenge (a Join is good "
				    "once, within %llu ms of its Challenge, on the coordinator that "
				    "issued it)", (unsigned long long)c->ttl_ms);
	return 0;
}

/* ---- admin bearer token --------------------------------------------------------------------- */

static int sha256(const void *p, size_t n, uint8_t out[32])
{
	unsigned int len = 0;

	if (!EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) || len != 32) {
		ERR_clear_error();
		return -EIO;
	}
	return 0;
}

int rpc_auth_bearer_check(const char *header_value, const uint8_t *token, size_t len)
{
	uint8_t want[32], got[32];
	const char *p;

	if (!header_value || !token || !len)
		return -EACCES;
	if (strncasecmp(header_value, "Bearer", 6) != 0 || header_value[6] != ' ')
		return -EACCES;
	for (p = header_value + 6; *p == ' '; p++)
		;
	if (!*p)
		return -EACCES;
	/* Hash both sides: the compare below then runs on 32 bytes whatever was presented. */
	if (sha256(token, len, want) < 0 || sha256(p, strlen(p), got) < 0)
		return -EACCES;
	return CRYPTO_memcmp(want, got, sizeof(want)) == 0 ? 0 : -EACCES;
}
