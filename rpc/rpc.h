/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rpc.h - Ferry's control plane: protobuf-c messages over the gRPC C core.
 *
 * Messages are generated from proto/ferry/v1/ (all .proto files) at build time; include them as
 * "rpc/inference.pb-c.h", "rpc/internal.pb-c.h", "rpc/admin.pb-c.h". Method paths are the
 * gRPC ones ("/ferry.v1.Inference/Health"); RPC_M_* below name every method we serve.
 *
 * Server: rpc_server_create() on an address, rpc_server_add_method() for each method, then
 * rpc_server_start(). One completion queue and one poller thread per server; each accepted
 * call runs its handler on a thread of its own, so a handler may block (stream, sleep, wait
 * on the engine). Handlers see an already unpacked request and return a gRPC status code;
 * a request that does not unpack is answered INVALID_ARGUMENT without calling the handler.
 *
 * Client: rpc_channel_create(), then rpc_unary() (blocking, with a deadline) or
 * rpc_stream_open() / rpc_stream_next() for server-streaming methods. Channels are
 * thread-safe; each call is used by one thread.
 *
 * Errors: 0 or a negative errno. A gRPC status is converted at one place,
 * rpc_status_to_errno(); the message in struct fr_error carries the status name and the
 * peer's detail ("/ferry.v1.Inference/Generate: INVALID_ARGUMENT: empty prompt").
 *
 * Credentials: NULL or RPC_CREDS_INSECURE (loopback and trusted networks), or RPC_CREDS_TLS
 * with PEM files (struct rpc_creds): server-side TLS, optionally requiring client
 * certificates (mTLS); client-side a CA to trust and optionally a client certificate.
 * rpc_creds_check() loads and checks the files up front; the create calls do the same.
 */
#ifndef FERRY_RPC_H
#define FERRY_RPC_H

#include <stdbool.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "common/common.h"

#define RPC_M_GENERATE "/ferry.v1.Inference/Generate"
#define RPC_M_HEALTH "/ferry.v1.Inference/Health"
#define RPC_M_SCORE "/ferry.v1.Inference/Score"
#define RPC_M_TOKENIZE "/ferry.v1.Inference/Tokenize"
#define RPC_M_DETOKENIZE "/ferry.v1.Inference/Detokenize"
#define RPC_M_MODEL_INFO "/ferry.v1.Inference/ModelInfo"
#define RPC_M_CHALLENGE "/ferry.v1.Internal/Challenge"
#define RPC_M_JOIN "/ferry.v1.Internal/Join"
#define RPC_M_HEARTBEAT "/ferry.v1.Internal/Heartbeat"
#define RPC_M_GET_ASSIGNMENT "/ferry.v1.Internal/GetAssignment"
#define RPC_M_LOAD_EXPERTS "/ferry.v1.Internal/LoadExperts"
#define RPC_M_UNLOAD_EXPERTS "/ferry.v1.Internal/UnloadExperts"
#define RPC_M_REPORT_STATS "/ferry.v1.Internal/ReportStats"
#define RPC_M_GET_LOAD "/ferry.v1.Admin/GetLoad"
#define RPC_M_BENCH_ENGINE "/ferry.v1.Admin/BenchEngine"
#define RPC_M_STATUS "/ferry.v1.Admin/Status"
#define RPC_M_GET_PLACEMENT "/ferry.v1.Admin/GetPlacement"
#define RPC_M_REBALANCE "/ferry.v1.Admin/Rebalance"
#define RPC_M_DRAIN "/ferry.v1.Admin/Drain"
#define RPC_M_UNDRAIN "/ferry.v1.Admin/Undrain"
#define RPC_M_SET_REDUNDANCY "/ferry.v1.Admin/SetRedundancy"

/* Largest message either side accepts (gRPC's own default is 4 MiB). */
#define RPC_MAX_MESSAGE_BYTES (16u << 20)

/* ---- credentials ------------------------------------------------------------------------ */

enum rpc_creds_kind {
	RPC_CREDS_INSECURE = 0,
	RPC_CREDS_TLS,
};

/* Largest PEM file accepted (a certificate chain or CA bundle). */
#define RPC_PEM_MAX_BYTES (1u << 20)

/*
 * Owned by the caller (the struct and the paths); only read during the create call. NULL
 * means insecure. Paths of PEM files, NULL where not given:
 *   server (rpc_server_create): cert_file and key_file required (the chain presented to
 *     clients, leaf first, and its private key); ca_file optional: set, every client must
 *     present a certificate that chains to it (mTLS), else the handshake fails.
 *   client (rpc_channel_create): ca_file the roots that the server's certificate must chain
 *     to (NULL: gRPC's default roots, $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH or the system's);
 *     cert_file and key_file, both or neither, the client certificate for mTLS.
 * The server's name is checked against the target's host (a DNS or IP subjectAltName).
 */
struct rpc_creds {
	enum rpc_creds_kind kind;
	const char *cert_file;
	const char *key_file;
	const char *ca_file;
};

/*
 * Loads and checks the files of creds for a server (server true) or a client, so that a
 * daemon can refuse a bad configuration before it starts anything. NULL and insecure creds
 * pass. Errors (err names the file and the creds' role, "TLS certificate: /etc/x.pem: ..."):
 * -ENOENT, -EACCES and other open/read errors (missing, unreadable), -EFBIG (over
 * RPC_PEM_MAX_BYTES), -EINVAL (unknown kind; not PEM: no certificate or no private key in
 * it; the key does not match the certificate; a server without cert_file or key_file; a
 * client with only one of them), -ENOMEM. A certificate that has expired or is not yet
 * valid is not an error here (the peer refuses it); it is logged as a warning.
 */
int rpc_creds_check(const struct rpc_creds *creds, bool server, struct fr_error *err);

/* ---- status mapping --------------------------------------------------------------------- */

/* OK -> 0; CANCELLED -> -ECANCELED; DEADLINE_EXCEEDED -> -ETIMEDOUT; INVALID_ARGUMENT ->
 * -EINVAL; NOT_FOUND -> -ENOENT; ALREADY_EXISTS -> -EEXIST; PERMISSION_DENIED -> -EPERM;
 * UNAUTHENTICATED -> -EACCES; RESOURCE_EXHAUSTED and UNAVAILABLE -> -EAGAIN (retry later);
 * FAILED_PRECONDITION -> -ESTALE; ABORTED -> -ECONNABORTED; OUT_OF_RANGE -> -ERANGE;
 * UNIMPLEMENTED -> -ENOSYS; DATA_LOSS -> -EBADMSG; INTERNAL, UNKNOWN, others -> -EIO. */
int rpc_status_to_errno(grpc_status_code code);
/* The reverse, for handlers that hold a -errno (the one map every handler uses): 0 -> OK;
 * -ECANCELED -> CANCELLED; -EINVAL, -EBADMSG, -EMSGSIZE -> INVALID_ARGUMENT; -ETIMEDOUT ->
 * DEADLINE_EXCEEDED; -ENOENT -> NOT_FOUND; -EEXIST -> ALREADY_EXISTS; -EPERM ->
 * PERMISSION_DENIED; -EACCES -> UNAUTHENTICATED; -EAGAIN, -ENOMEM, -ENOSPC ->
 * RESOURCE_EXHAUSTED; -ESTALE, -ENOTSUP -> FAILED_PRECONDITION; -ESHUTDOWN -> UNAVAILABLE;
 * -ECONNABORTED -> ABORTED; -ERANGE -> OUT_OF_RANGE; -ENOSYS -> UNIMPLEMENTED; others ->
 * INTERNAL. */
grpc_status_code rpc_status_from_errno(int neg_errno);
/* "INVALID_ARGUMENT", ... ("UNKNOWN_STATUS" for codes outside the enum). */
const char *rpc_status_name(grpc_status_code code);

/* ---- server ------------------------------------------------------------------------------ */

struct rpc_server;
struct rpc_call;

enum rpc_method_kind {
	RPC_METHOD_UNARY = 0,
	RPC_METHOD_SERVER_STREAMING,
};

/*
 * Runs on the call's own thread. req is the unpacked request, owned by the library and
 * valid until the handler returns. A unary handler calls rpc_call_send() exactly once
 * before returning GRPC_STATUS_OK (the response then goes out together with the status);
 * a streaming handler calls it once per message, each call blocking until written.
 * Returning anything but OK sends that status (with rpc_call_set_detail()'s text) and drops
 * any unary response. Handlers must return soon after rpc_call_send() fails or
 * rpc_call_cancelled() turns true (client gone, deadline passed, server shutting down).
 */
typedef grpc_status_code (*rpc_handler_fn)(struct rpc_call *call, const ProtobufCMessage *req,
					   void *arg);

/* Creates a server listening on addr ("127.0.0.1:0" picks a free port; see
 * rpc_server_port()). creds: NULL, insecure or TLS (see struct rpc_creds). The port is
 * bound without SO_REUSEPORT, so a second server on a taken port fails here. Methods are
 * added before rpc_server_start(). Returns 0, rpc_creds_check()'s errors, -EINVAL (no
 * address), -EADDRINUSE (addr is in use: "ADDR: address in use"; also when the bind failed
 * for a reason not found out, "ADDR: cannot bind"), -EADDRNOTAVAIL (not an address of this
 * host), -ENOMEM. *ret_server is set on success only. */
int rpc_server_create(const char *addr, const struct rpc_creds *creds,
		      struct rpc_server **ret_server, struct fr_error *err);

/* Registers one method. path is copied. req_desc describes the request message
 * (&ferry__v1__health_request__descriptor); arg is passed to fn untouched (caller owns it,
 * and keeps it alive until rpc_server_destroy() returns). Only before rpc_server_start().
 * Returns 0, -EINVAL (NULL argument, duplicate path, server started), -E2BIG (more than
 * 32 methods), -ENOMEM. */
int rpc_server_add_method(struct rpc_server *srv, const char *path, enum rpc_method_kind kind,
			  const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn fn, void *arg,
			  struct fr_error *err);

/* Calls answered so far, per (method path, status code): fn once per pair with n > 0
 * ("(unregistered)" for paths nobody registered). Thread-safe; for /metrics. */
void rpc_server_call_counts(struct rpc_server *srv,
			    void (*fn)(void *ctx, const char *path, grpc_status_code code,
				       uint64_t n),
			    void *ctx);

/* Starts serving: the poller thread runs from here to rpc_server_destroy().
 * Returns 0, -EINVAL (already started, no methods), -ENOMEM, or -errno from pthread_create. */
int rpc_server_start(struct rpc_server *srv, struct fr_error *err);

/* The TCP port the server is bound to (useful after "host:0"). */
int rpc_server_port(const struct rpc_server *srv);

/* Stops accepting calls, cancels the calls in flight (their handlers see rpc_call_send()
 * fail), waits for every handler to return and every call state to be freed, then destroys
 * the server. Accepts NULL and a server that was never started. */
void rpc_server_destroy(struct rpc_server *srv);

/* Sends one response message (see rpc_handler_fn). msg is only read; the caller keeps it.
 * Returns 0, -ECANCELED (client cancelled or server shutting down), -ETIMEDOUT (deadline
 * passed), -EALREADY (second message on a unary call), -EMSGSIZE (over
 * RPC_MAX_MESSAGE_BYTES), -ENOMEM. */
int rpc_call_send(struct rpc_call *call, const ProtobufCMessage *msg);

/* rpc_call_send() for streaming handlers that must not wait on a client forever: when the
 * client has not taken the message after stall_ms (HTTP/2 flow control holds it while the
 * client does not read), the call is cancelled with RESOURCE_EXHAUSTED ("the client read
 * nothing for N ms: its stream was cancelled ...", the status the client sees) and
 * -ENOBUFS is returned; the handler then returns at once (its own status is not sent).
 * stall_ms <= 0: no limit. Other errors as rpc_call_send(). */
int rpc_call_send_within(struct rpc_call *call, const ProtobufCMessage *msg, int64_t stall_ms);

/* True once the call can no longer succeed: cancelled by the client, deadline passed, or
 * server shutdown. Cheap; poll it between expensive steps. */
bool rpc_call_cancelled(struct rpc_call *call);

/* Milliseconds until the client's deadline (INT64_MAX without one; <= 0 when passed). */
int64_t rpc_call_remaining_ms(struct rpc_call *call);

/* Copies the value of request metadata `key` (lowercase, e.g. "authorization") into
 * buf[cap], NUL-terminated. Returns its length, -ENOENT (absent) or -E2BIG. */
int rpc_call_metadata(const struct rpc_call *call, const char *key, char *buf, size_t cap);
/* The method path being served (owned by the server). */
const char *rpc_call_method(const struct rpc_call *call);
/* The client's address as gRPC names it ("ipv4:127.0.0.1:50312"), for logs; cut to cap. */
void rpc_call_peer(const struct rpc_call *call, char *buf, size_t cap);

/* Sets the status detail sent with a non-OK status and returns code, so a handler reads
 * `return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "empty prompt");`. */
grpc_status_code rpc_call_fail(struct rpc_call *call, grpc_status_code code, const char *fmt,
			       ...) FR_PRINTF(3, 4);

/* ---- client ------------------------------------------------------------------------------ */

struct rpc_channel;
struct rpc_stream;

/* Creates a channel to target ("127.0.0.1:5000", "dns:host:port"). Connection happens
 * lazily on the first call, and so does the TLS handshake: a server that does not answer
 * TLS, a certificate that does not chain to ca_file, has expired or does not name the
 * target's host, or a refused client certificate, all fail the calls with -EAGAIN
 * (UNAVAILABLE) and the handshake error in err. creds: NULL, insecure or TLS (see struct
 * rpc_creds). Returns 0, rpc_creds_check()'s errors, -EINVAL (no target), -ENOMEM. */
int rpc_channel_create(const char *target, const struct rpc_creds *creds,
		       struct rpc_channel **ret_channel, struct fr_error *err);
/* Sends "authorization: Bearer <token>" with every later call on the channel (the Admin
 * service's credential). token must not contain NUL, CR or LF. Returns 0, -EINVAL, -ENOMEM.
 * Not thread-safe against calls in flight: set it right after rpc_channel_create(). */
int rpc_channel_set_bearer(struct rpc_channel *ch, const uint8_t *token, size_t len);
/* Calls on the channel must have finished (streams destroyed). Accepts NULL. */
void rpc_channel_destroy(struct rpc_channel *ch);

/* One blocking unary call. req is only read. timeout_ms <= 0 means no deadline. On success
 * *ret_resp is a message of resp_desc's type that the caller frees with
 * protobuf_c_message_free_unpacked(*ret_resp, NULL). Returns 0, the peer's status through
 * rpc_status_to_errno() (-ETIMEDOUT when the deadline passed, -EAGAIN when the server is
 * unreachable), -EBADMSG (response does not unpack), -EMSGSIZE, -ENOMEM. */
int rpc_unary(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
	      const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
	      ProtobufCMessage **ret_resp, struct fr_error *err);

/* Starts a server-streaming call; the request is sent at once. timeout_ms <= 0 means no
 * deadline; the deadline covers the whole stream. Returns 0 (then rpc_stream_destroy() it),
 * -EINVAL, -EMSGSIZE, -ENOMEM, or a mapped status when the call fails to start. */
int rpc_stream_open(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		    struct rpc_stream **ret_stream, struct fr_error *err);

/* Waits for the next message. Returns 1 with *ret_msg set (free it with
 * protobuf_c_message_free_unpacked), 0 at the end of a stream that finished with OK, or a
 * negative errno: the final status mapped (-ECANCELED after rpc_stream_cancel(), -ETIMEDOUT
 * at the deadline, ...), -EBADMSG for a message that does not unpack. After a return <= 0
 * every further call returns the same value. */
int rpc_stream_next(struct rpc_stream *st, ProtobufCMessage **ret_msg, struct fr_error *err);

/* Cancels the call; the server's handler sees rpc_call_cancelled(). Safe to call from
 * another thread while rpc_stream_next() waits (which then returns -ECANCELED). */
void rpc_stream_cancel(struct rpc_stream *st);

/* Cancels the call if still running and frees everything. Accepts NULL. */
void rpc_stream_destroy(struct rpc_stream *st);

#endif /* FERRY_RPC_H */
