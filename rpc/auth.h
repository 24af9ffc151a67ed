/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.h - authentication of the control plane (ARCHITECTURE §7).
 *
 * Join: a worker proves it holds the cluster secret with an HMAC-SHA256 over its
 * JoinRequest serialized with hmac empty (protobuf-c's packing, which orders fields by
 * number: both ends are this code). A random nonce and a wall-clock timestamp make each
 * join single-use: the coordinator refuses a timestamp more than max_skew away from its
 * clock and a nonce it has seen within that window (a captured Join cannot be replayed).
 *
 * The Join also carries a single-use challenge the coordinator issued moments before, so a
 * captured Join is useless later, even against a restarted coordinator. Every request
 * after the Join is signed the same way under a per-join session key that both sides
 * derive from the secret (rpc_auth_session_key()), so replays of one session are useless
 * in the next and nobody without the secret can speak for a worker.
 *
 * Admin: ferryctl presents "authorization: Bearer <token>", compared in constant time.
 *
 * Secrets are read from files that only their owner may read (mode 0600 or stricter).
 */
#ifndef FERRY_RPC_AUTH_H
#define FERRY_RPC_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "rpc/internal.pb-c.h"

#define RPC_AUTH_HMAC_LEN 32       /* HMAC-SHA256 */
#define RPC_AUTH_SECRET_MIN 16     /* bytes a secret must have */
#define RPC_AUTH_SECRET_MAX 4096   /* bytes a secret file may have */

/*
 * Reads a secret (cluster secret or admin token) from path: a regular file that is not
 * readable, writable or executable by group or others (mode & 077 == 0), holding
 * RPC_AUTH_SECRET_MIN..RPC_AUTH_SECRET_MAX bytes once trailing newlines ("\n", "\r\n")
 * are stripped. The bytes are used as they are (no hex or base64 decoding).
 * On success *ret is a heap copy the caller frees with rpc_auth_secret_free().
 * Errors (err names the path): -ENOENT etc. (open), -EACCES (the mode: "mode 0644, must
 * not be accessible by group or others"), -EINVAL (not a regular file, empty, shorter
 * than RPC_AUTH_SECRET_MIN), -EFBIG, -ENOMEM.
 */
int rpc_auth_secret_load(const char *path, uint8_t **ret, size_t *ret_len, struct fr_error *err);

/* Wipes and frees a secret from rpc_auth_secret_load(). Accepts NULL. */
void rpc_auth_secret_free(uint8_t *secret, size_t len);

/*
 * Fills req->nonce (getrandom, never 0), req->timestamp_unix_ms (CLOCK_REALTIME) and
 * req->hmac. Every other field must be final: changing one afterwards breaks the HMAC.
 * req->hmac must be empty on entry; on success req->hmac.data is a malloc'ed
 * RPC_AUTH_HMAC_LEN-byte buffer the caller owns (free() it, or let a protobuf-c
 * *__free_unpacked of a message with the default allocator do so).
 * Errors: -EINVAL (empty secret, hmac already set), -ENOMEM, -EIO (getrandom or OpenSSL
 * failed).
 */
int rpc_auth_join_sign(Ferry__V1__JoinRequest *req, const uint8_t *secret, size_t len,
		       struct fr_error *err);
/* The same for any message with fields `uint64 nonce`, `uint64 timestamp_unix_ms` and
 * `bytes hmac` (JoinRequest, UnloadExpertsRequest). Also -EINVAL for a message without
 * them. */
int rpc_auth_sign(ProtobufCMessage *msg, const uint8_t *secret, size_t len,
		  struct fr_error *err);

/* Replay cache of Join nonces: remembers each accepted nonce until its timestamp leaves the
 * skew window. Bounded (capacity nonces) and thread-safe. */
struct rpc_auth_replay;

/* capacity 0 means 4096. Errors: -ENOMEM. */
int rpc_auth_replay_create(size_t capacity, struct rpc_auth_replay **ret);
/* Accepts NULL. */
void rpc_auth_replay_destroy(struct rpc_auth_replay *r);

/*
 * Checks a JoinRequest, in this order: HMAC (constant-time compare), timestamp within
 * max_skew_ms of now_ms (Unix milliseconds, from the caller so that tests can move time),
 * nonce not seen in the window. On success the nonce is remembered in replay.
 * Errors, err holding the reason: -EACCES "bad HMAC" (missing, wrong length or wrong
 * value: a wrong secret and a tampered field look the same), "timestamp skew of N ms
 * (limit M ms)", "replayed nonce", "missing nonce"; -EAGAIN (replay cache full of live
 * nonces: retry later); -EINVAL (empty secret, replay NULL); -ENOMEM; -EIO (OpenSSL).
 */
int rpc_auth_join_verify(const Ferry__V1__JoinRequest *req, const uint8_t *secret, size_t len,
			 struct rpc_auth_replay *replay, uint64_t now_ms, uint64_t max_skew_ms,
			 struct fr_error *err);
/* The same for any message rpc_auth_sign() signs (one replay cache may serve several
 * message kinds: nonces are random 64-bit values). */
int rpc_auth_verify(const ProtobufCMessage *msg, const uint8_t *secret, size_t len,
		    struct rpc_auth_replay *replay, uint64_t now_ms, uint64_t max_skew_ms,
		    struct fr_error *err);

/* ---- challenges and sessions (internal.proto's header comment has the protocol) ------- */

#define RPC_AUTH_CHALLENGE_LEN 32
#define RPC_AUTH_SESSION_ID_LEN 16
#define RPC_AUTH_KEY_LEN RPC_AUTH_HMAC_LEN

/* Fills buf[n] from getrandom(). Returns 0 or -EIO. */
int rpc_auth_random(uint8_t *buf, size_t n);

/*
 * The session key of one join: HMAC-SHA256(secret, "ferry.v1 session key" || challenge ||
 * session_id). Coordinator and worker both derive it; it never travels, so a peer that saw
 * the Join and its answer still cannot sign the session's requests. Returns 0, -EINVAL
 * (empty secret, challenge or session id), -EIO (OpenSSL).
 */
int rpc_auth_session_key(const uint8_t *secret, size_t len, const uint8_t *challenge,
			 size_t challenge_len, const uint8_t *session_id, size_t session_id_len,
			 uint8_t ret_key[RPC_AUTH_KEY_LEN], struct fr_error *err);

/* Outstanding Join challenges: each issued challenge is accepted once, within ttl_ms of
 * being issued. At most capacity live ones; issuing past that forgets the oldest (a
 * client flooding Challenge can make others ask again, never get in). Thread-safe. */
struct rpc_auth_challenges;

/* capacity 0: 256; ttl_ms 0: 30 s. Errors: -ENOMEM. */
int rpc_auth_challenges_create(size_t capacity, uint64_t ttl_ms,
			       struct rpc_auth_challenges **ret);
/* Accepts NULL. */
void rpc_auth_challenges_destroy(struct rpc_auth_challenges *c);
/* A fresh random challenge, remembered from now_ms (monotonic ms). Returns 0 or -EIO. */
int rpc_auth_challenge_issue(struct rpc_auth_challenges *c, uint64_t now_ms,
			     uint8_t ret[RPC_AUTH_CHALLENGE_LEN]);
/* Consumes a challenge: 0 if it was issued, not used and not expired at now_ms; else
 * -EACCES with err saying "unknown, used or expired challenge" (or its length). */
int rpc_auth_challenge_take(struct rpc_auth_challenges *c, const uint8_t *challenge, size_t len,
			    uint64_t now_ms, struct fr_error *err);
/* Milliseconds a challenge lives. */
uint64_t rpc_auth_challenge_ttl(const struct rpc_auth_challenges *c);

/* Wall clock in Unix milliseconds (the now_ms of rpc_auth_join_verify()). */
uint64_t rpc_auth_now_ms(void);

/*
 * Checks an "authorization" header value against the admin token: "Bearer <token>" (scheme
 * case-insensitive, one or more spaces). The comparison takes the same time whatever the
 * presented token (both sides are hashed first, so not even the length leaks).
 * Returns 0, or -EACCES (NULL or malformed header, wrong token, empty expected token).
 */
int rpc_auth_bearer_check(const char *header_value, const uint8_t *token, size_t len);

#endif /* FERRY_RPC_AUTH_H */
