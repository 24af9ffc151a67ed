/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server.c - the RPC server over the gRPC C core.
 *
 * One completion queue, one poller thread. Every registered method always has one pending
 * grpc_server_request_registered_call(); when it completes the poller re-arms the method
 * first, then starts RECV_CLOSE_ON_SERVER in a batch of its own (the only cancellation
 * signal) and hands the call to a handler thread. Each call state has three tags, one per
 * kind of outstanding batch (new call, close, the handler's current send), and is freed by
 * whoever sees the last of {close done, handler done, no send pending}.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "rpc/rpc-internal.h"

#define RPC_MAX_METHODS 32
#define RPC_SHUTDOWN_GRACE_MS 1000 /* for answers in flight at shutdown */
#define RPC_STATUS_CODES 17        /* OK .. UNAUTHENTICATED */

enum rpc_tag_kind {
	RPC_TAG_NEW = 1,
	RPC_TAG_CLOSE,
	RPC_TAG_OP,
	RPC_TAG_SHUTDOWN,
};

struct rpc_tag {
	enum rpc_tag_kind kind;
	struct rpc_call *call; /* NULL for RPC_TAG_SHUTDOWN */
};

struct rpc_method {
	char *path;
	enum rpc_method_kind kind;
	const ProtobufCMessageDescriptor *req_desc;
	rpc_handler_fn fn;
	void *arg;
	void *handle; /* from grpc_server_register_method */
	_Atomic uint64_t answered[RPC_STATUS_CODES]; /* calls finished, by status code */
};

struct rpc_server {
	grpc_server *server;
	grpc_completion_queue *cq;
	pthread_t poller;
	int port;
	bool started;
	struct rpc_tag shutdown_tag;

	pthread_mutex_t mu;
	pthread_cond_t cv; /* n_live and shutdown_done changes */
	bool shutting_down;
	bool shutdown_done;
	size_t n_live; /* call states allocated, pending new-call ones included */

	struct rpc_method methods[RPC_MAX_METHODS];
	size_t n_methods;
	/* Calls to paths nobody registered: answered UNIMPLEMENTED from the poller (without
	 * a pending grpc_server_request_call() gRPC would hold them until their deadline). */
	struct rpc_method unknown;
};

struct rpc_call {
	struct rpc_server *srv;
	struct rpc_method *m;

	/* Filled by grpc_server_request_registered_call(). */
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *payload;
	grpc_call_details details; /* unregistered calls only */
	int close_cancelled; /* RECV_CLOSE_ON_SERVER's output */

	struct rpc_tag t_new, t_close, t_op;

	/* Under srv->mu. */
	pthread_cond_t cv; /* op_pending changes */
	bool close_done;
	bool handler_done;
	bool op_pending;
	bool op_ok;
	bool cancelled;
	bool stalled;      /* we cancelled it: the client did not read (RESOURCE_EXHAUSTED) */

	/* Handler thread only. */
	bool sent_initial;
	grpc_byte_buffer *unary_resp;
	char detail[256];
};

/* ---- call state ------------------------------------------------------------------------- */

static struct rpc_call *call_new(struct rpc_server *srv, struct rpc_method *m)
{
	struct rpc_call *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->srv = srv;
	c->m = m;
	grpc_metadata_array_init(&c->md);
	grpc_call_details_init(&c->details);
	c->t_new = (struct rpc_tag){ RPC_TAG_NEW, c };
	c->t_close = (struct rpc_tag){ RPC_TAG_CLOSE, c };
	c->t_op = (struct rpc_tag){ RPC_TAG_OP, c };
	pthread_cond_init(&c->cv, NULL);
	pthread_mutex_lock(&srv->mu);
	srv->n_live++;
	pthread_mutex_unlock(&srv->mu);
	return c;
}

static void call_free(struct rpc_call *c)
{
	struct rpc_server *srv = c->srv;

	if (c->call)
		grpc_call_unref(c->call);
	grpc_metadata_array_destroy(&c->md);
	grpc_call_details_destroy(&c->details);
	if (c->payload)
		grpc_byte_buffer_destroy(c->payload);
	if (c->unary_resp)
		grpc_byte_buffer_destroy(c->unary_resp);
	pthread_cond_destroy(&c->cv);
	free(c);
	pthread_mutex_lock(&srv->mu);
	srv->n_live--;
	pthread_cond_broadcast(&srv->cv);
	pthread_mutex_unlock(&srv->mu);
}

/* Called with srv->mu held; releases it. Frees c when nothing refers to it any more. */
static void call_release_locked(struct rpc_call *c)
{
	bool last = c->close_done && c->handler_done && !c->op_pending;

	pthread_mutex_unlock(&c->srv->mu);
	if (last)
		call_free(c);
}

/* Arms m for its next call. Returns 0, -ESHUTDOWN, -ENOMEM, -EIO. */
static int method_arm(struct rpc_server *srv, struct rpc_method *m)
{
	struct rpc_call *c;
	grpc_call_error e;

	pthread_mutex_lock(&srv->mu);
	if (srv->shutting_down) {
		pthread_mutex_unlock(&srv->mu);
		return -ESHUTDOWN;
	}
	pthread_mutex_unlock(&srv->mu);
	c = call_new(srv, m);
	if (!c)
		return -ENOMEM;
	if (m == &srv->unknown)
		e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, srv->cq,
					     srv->cq, &c->t_new);
	else
		e = grpc_server_request_registered_call(srv->server, m->handle, &c->call,
							&c->deadline, &c->md, &c->payload,
							srv->cq, srv->cq, &c->t_new);
	if (e != GRPC_CALL_OK) {
		fr_err(RPC_LOG, "method %s: request_registered_call failed: %d", m->path, (int)e);
		call_free(c);
		return -EIO;
	}
	return 0;
}

/* Starts one batch with c->t_op and waits for it. Handler thread only; one at a time.
 * With timeout_ms > 0, a batch still pending after that long (a client that does not read
 * holds a message in HTTP/2 flow control) cancels the call with RESOURCE_EXHAUSTED and
 * c->detail as the status the client sees. Returns 0, -ECANCELED (the batch failed: call
 * cancelled), -ENOBUFS (our cancel after timeout_ms) or -EIO. */
static int call_run_op(struct rpc_call *c, const grpc_op *ops, size_t n, int64_t timeout_ms)
{
	struct rpc_server *srv = c->srv;
	grpc_call_error e;
	struct timespec dl;
	bool ok, stalled = false;

	if (timeout_ms > 0)
		fr_deadline_ms(&dl, (int)FR_MIN(timeout_ms, (int64_t)INT32_MAX));
	pthread_mutex_lock(&srv->mu);
	c->op_pending = true;
	pthread_mutex_unlock(&srv->mu);
	e = grpc_call_start_batch(c->call, ops, n, &c->t_op, NULL);
	pthread_mutex_lock(&srv->mu);
	if (e != GRPC_CALL_OK) {
		c->op_pending = false;
		pthread_mutex_unlock(&srv->mu);
		fr_err(RPC_LOG, "%s: start_batch failed: %d", c->m->path, (int)e);
		return -EIO;
	}
	while (c->op_pending) {
		if (timeout_ms <= 0 || stalled) {
			pthread_cond_wait(&c->cv, &srv->mu);
			continue;
		}
		if (pthread_cond_timedwait(&c->cv, &srv->mu, &dl) != ETIMEDOUT || !c->op_pending)
			continue;
		/* The batch completes (failed) once the cancel has gone through. */
		stalled = true;
		c->stalled = true;
		pthread_mutex_unlock(&srv->mu);
		grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED, c->detail,
					     NULL);
		pthread_mutex_lock(&srv->mu);
	}
	ok = c->op_ok;
	pthread_mutex_unlock(&srv->mu);
	if (stalled)
		return -ENOBUFS;
	return ok ? 0 : -ECANCELED;
}

/* ---- handler side ----------------------------------------------------------------------- */

bool rpc_call_cancelled(struct rpc_call *c)
{
	bool cancelled;

	pthread_mutex_lock(&c->srv->mu);
	cancelled = c->cancelled || c->srv->shutting_down;
	pthread_mutex_unlock(&c->srv->mu);
	return cancelled || rpc__ms_until(c->deadline) <= 0;
}

int64_t rpc_call_remaining_ms(struct rpc_call *c)
{
	return rpc__ms_until(c->deadline);
}

int rpc_call_metadata(const struct rpc_call *c, const char *key, char *buf, size_t cap)
{
	size_t klen = strlen(key);

	for (size_t i = 0; i < c->md.count; i++) {
		const grpc_metadata *m = &c->md.metadata[i];
		if (GRPC_SLICE_LENGTH(m->key) != klen ||
		    memcmp(GRPC_SLICE_START_PTR(m->key), key, klen) != 0)
			continue;
		size_t vlen = GRPC_SLICE_LENGTH(m->value);
		if (vlen >= cap)
			return -E2BIG;
		memcpy(buf, GRPC_SLICE_START_PTR(m->value), vlen);
		buf[vlen] = '\0';
		return (int)vlen;
	}
	return -ENOENT;
}

const char *rpc_call_method(const struct rpc_call *c)
{
	return c->m->path;
}

void rpc_call_peer(const struct rpc_call *c, char *buf, size_t cap)
{
	char *peer = c->call ? grpc_call_get_peer(c->call) : NULL;

	snprintf(buf, cap, "%s", peer ? peer : "unknown peer");
	gpr_free(peer);
}

grpc_status_code rpc_call_fail(struct rpc_call *c, grpc_status_code code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	va_end(ap);
	return code;
}

static int call_send(struct rpc_call *c, const ProtobufCMessage *msg, int64_t stall_ms)
{
	grpc_byte_buffer *bb;
	grpc_op ops[2];
	size_t n = 0;
	int rc;

	if (c->m->kind == RPC_METHOD_UNARY && c->unary_resp)
		return -EALREADY;
	if (rpc_call_cancelled(c))
		return rpc__ms_until(c->deadline) <= 0 ? -ETIMEDOUT : -ECANCELED;
	rc = rpc__pack(msg, &bb);
	if (rc < 0)
		return rc;
	if (c->m->kind == RPC_METHOD_UNARY) {
		c->unary_resp = bb; /* goes out with the status */
		return 0;
	}
	memset(ops, 0, sizeof(ops));
	if (!c->sent_initial) {
		ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
		n++;
	}
	ops[n].op = GRPC_OP_SEND_MESSAGE;
	ops[n].data.send_message.send_message = bb;
	n++;
	if (stall_ms > 0)
		snprintf(c->detail, sizeof(c->detail), "the client read nothing for %lld ms: its "
			 "stream was cancelled (a %zu-byte message waited)", (long long)stall_ms,
			 grpc_byte_buffer_length(bb));
	rc = call_run_op(c, ops, n, stall_ms);
	grpc_byte_buffer_destroy(bb);
	if (rc != -EIO)
		c->sent_initial = true; /* the batch ran: initial metadata may not go twice */
	if (rc == 0) {
		if (stall_ms > 0)
			c->detail[0] = '\0';
		return 0;
	}
	if (rc == -ECANCELED && rpc__ms_until(c->deadline) <= 0)
		return -ETIMEDOUT;
	return rc;
}

int rpc_call_send(struct rpc_call *c, const ProtobufCMessage *msg)
{
	return call_send(c, msg, 0);
}

int rpc_call_send_within(struct rpc_call *c, const ProtobufCMessage *msg, int64_t stall_ms)
{
	return call_send(c, msg, stall_ms);
}

static void count_answer(struct rpc_method *m, grpc_status_code status)
{
	if ((unsigned)status < RPC_STATUS_CODES)
		atomic_fetch_add_explicit(&m->answered[status], 1, memory_order_relaxed);
}

static void call_finish(struct rpc_call *c, grpc_status_code status)
{
	count_answer(c->m, status);
	grpc_slice details = grpc_slice_from_copied_string(c->detail);
	grpc_op ops[3];
	size_t n = 0;

	memset(ops, 0, sizeof(ops));
	if (!c->sent_initial) {
		ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
		n++;
	}
	if (status == GRPC_STATUS_OK && c->unary_resp) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = c->unary_resp;
		n++;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = status;
	ops[n].data.send_status_from_server.status_details = c->detail[0] ? &details : NULL;
	n++;
	/* Fails when the client is gone already; nothing more to do then. */
	(void)call_run_op(c, ops, n, 0);
	grpc_slice_unref(details);
}

static void *handler_main(void *p)
{
	struct rpc_call *c = p;
	struct rpc_method *m = c->m;
	ProtobufCMessage *req = NULL;
	grpc_status_code status;

	if (rpc__unpack(c->payload, m->req_desc, &req) < 0) {
		status = rpc_call_fail(c, GRPC_STATUS_INVALID_ARGUMENT,
				       "request does not unpack as %s", m->req_desc->name);
	} else {
		status = m->fn(c, req, m->arg);
		protobuf_c_message_free_unpacked(req, NULL);
		if (status == GRPC_STATUS_OK && m->kind == RPC_METHOD_UNARY && !c->unary_resp)
			status = rpc_call_fail(c, GRPC_STATUS_INTERNAL, "handler sent no response");
	}
	/* A result that comes after the deadline is not one the client waits for any more; a
	 * handler that gave up because the deadline passed (CANCELLED) reports it as such. The
	 * core's own deadline timer may fire a little after ours, so this status can still be
	 * the one the client sees. */
	if ((status == GRPC_STATUS_OK || status == GRPC_STATUS_CANCELLED) &&
	    rpc__ms_until(c->deadline) <= 0)
		status = rpc_call_fail(c, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline passed");
	if (status == GRPC_STATUS_OK)
		c->detail[0] = '\0';
	call_finish(c, status);

	pthread_mutex_lock(&c->srv->mu);
	c->handler_done = true;
	call_release_locked(c);
	return NULL;
}

/* ---- poller ------------------------------------------------------------------------------ */

/* Answers c with status from the poller thread; the op's completion frees the state. */
static void call_refuse(struct rpc_call *c, grpc_status_code status, const char *detail)
{
	count_answer(c->m, status);
	struct rpc_server *srv = c->srv;
	grpc_slice details = grpc_slice_from_copied_string(detail);
	grpc_op ops[2];

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[1].data.send_status_from_server.status = status;
	ops[1].data.send_status_from_server.status_details = &details;
	pthread_mutex_lock(&srv->mu);
	c->handler_done = true;
	c->op_pending = true;
	pthread_mutex_unlock(&srv->mu);
	if (grpc_call_start_batch(c->call, ops, 2, &c->t_op, NULL) != GRPC_CALL_OK) {
		pthread_mutex_lock(&srv->mu);
		c->op_pending = false;
		call_release_locked(c);
	}
	grpc_slice_unref(details);
}

static void on_new_call(struct rpc_server *srv, struct rpc_call *c, bool ok)
{
	grpc_op op;
	pthread_attr_t attr;
	pthread_t th;
	int rc;

	if (!ok) { /* server shutting down */
		call_free(c);
		return;
	}
	rc = method_arm(srv, c->m);
	if (rc < 0 && rc != -ESHUTDOWN)
		fr_err(RPC_LOG, "method %s: cannot re-arm (%s); it stops accepting calls",
		       c->m->path, strerror(-rc));

	memset(&op, 0, sizeof(op));
	op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	op.data.recv_close_on_server.cancelled = &c->close_cancelled;
	if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
		c->close_done = true;
		c->cancelled = true;
	}

	if (c->m == &srv->unknown) {
		char detail[256];
		snprintf(detail, sizeof(detail), "unknown method %.*s",
			 (int)GRPC_SLICE_LENGTH(c->details.method),
			 (const char *)GRPC_SLICE_START_PTR(c->details.method));
		call_refuse(c, GRPC_STATUS_UNIMPLEMENTED, detail);
		return;
	}

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	rc = pthread_create(&th, &attr, handler_main, c);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		fr_err(RPC_LOG, "%s: cannot start handler thread: %s", c->m->path, strerror(rc));
		call_refuse(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "server out of threads");
	}
}

static void *poller_main(void *p)
{
	struct rpc_server *srv = p;

	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		struct rpc_tag *tag;
		struct rpc_call *c;

		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		tag = ev.tag;
		c = tag->call;
		switch (tag->kind) {
		case RPC_TAG_SHUTDOWN:
			pthread_mutex_lock(&srv->mu);
			srv->shutdown_done = true;
			pthread_cond_broadcast(&srv->cv);
			pthread_mutex_unlock(&srv->mu);
			break;
		case RPC_TAG_NEW:
			on_new_call(srv, c, ev.success);
			break;
		case RPC_TAG_CLOSE:
			pthread_mutex_lock(&srv->mu);
			c->close_done = true;
			if (c->close_cancelled || !ev.success)
				c->cancelled = true;
			call_release_locked(c);
			break;
		case RPC_TAG_OP:
			pthread_mutex_lock(&srv->mu);
			c->op_pending = false;
			c->op_ok = ev.success;
			pthread_cond_signal(&c->cv);
			call_release_locked(c);
			break;
		}
	}
	return NULL;
}

/* ---- lifetime ---------------------------------------------------------------------------- */

/* Why a bind of addr failed, as gRPC does not say: binds a socket of our own the way gRPC
 * does (SO_REUSEADDR, no SO_REUSEPORT) to each address addr resolves to. Returns
 * -EADDRINUSE, -EADDRNOTAVAIL, or 0 when it cannot tell (unix: paths, names that do not
 * resolve, a bind that works now). */
static int bind_probe(const char *addr)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res, *ai;
	char host[256];
	const char *colon = strrchr(addr, ':'), *h = addr;
	size_t hlen;
	int found = 0, one = 1;

	if (!colon || strncmp(addr, "unix:", 5) == 0 || strncmp(addr, "unix-abstract:", 14) == 0)
		return 0;
	hlen = (size_t)(colon - addr);
	if (hlen >= 2 && addr[0] == '[' && addr[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	if (hlen >= sizeof(host))
		return 0;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (getaddrinfo(hlen ? host : NULL, colon + 1, &hints, &res) != 0)
		return 0;
	for (ai = res; ai && !found; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
		    (errno == EADDRINUSE || errno == EADDRNOTAVAIL))
			found = -errno;
		close(fd);
	}
	freeaddrinfo(res);
	return found;
}

int rpc_server_create(const char *addr, const struct rpc_creds *creds,
		      struct rpc_server **ret_server, struct fr_error *err)
{
	/* gRPC sets SO_REUSEPORT by default: two servers would then share a port silently,
	 * each getting some of the connections. */
	grpc_arg argv[] = {
		{ .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
		  .value.integer = (int)RPC_MAX_MESSAGE_BYTES },
		{ .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT,
		  .value.integer = 0 },
	};
	grpc_channel_args args = { .num_args = FR_ARRAY_SIZE(argv), .args = argv };
	grpc_server_credentials *sc;
	struct rpc_server *srv;
	int rc;

	if (!addr || !ret_server)
		return fr_error_set(err, -EINVAL, "rpc server: no address");
	grpc_init();
	if ((rc = rpc__server_creds(creds, &sc, err)) < 0) {
		grpc_shutdown();
		return rc;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		grpc_server_credentials_release(sc);
		grpc_shutdown();
		return fr_error_set(err, -ENOMEM, "rpc server %s: out of memory", addr);
	}
	pthread_mutex_init(&srv->mu, NULL);
	pthread_cond_init(&srv->cv, NULL);
	srv->shutdown_tag = (struct rpc_tag){ RPC_TAG_SHUTDOWN, NULL };
	srv->unknown.path = (char *)"(unregistered)";
	srv->cq = grpc_completion_queue_create_for_next(NULL);
	srv->server = grpc_server_create(&args, NULL);
	grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
	srv->port = grpc_server_add_http2_port(srv->server, addr, sc);
	grpc_server_credentials_release(sc);
	if (srv->port <= 0) {
		rpc_server_destroy(srv); /* pairs the grpc_init() above */
		rc = bind_probe(addr);
		if (rc == -EADDRNOTAVAIL)
			return fr_error_set(err, rc, "%s: not an address of this host", addr);
		if (rc == -EADDRINUSE)
			return fr_error_set(err, rc, "%s: address in use", addr);
		return fr_error_set(err, -EADDRINUSE, "%s: cannot bind", addr);
	}
	*ret_server = srv;
	return 0;
}

int rpc_server_add_method(struct rpc_server *srv, const char *path, enum rpc_method_kind kind,
			  const ProtobufCMessageDescriptor *req_desc, rpc_handler_fn fn, void *arg,
			  struct fr_error *err)
{
	struct rpc_method *m;

	if (!srv || !path || !req_desc || !fn || srv->started)
		return fr_error_set(err, -EINVAL, "rpc server: bad method registration");
	if (kind != RPC_METHOD_UNARY && kind != RPC_METHOD_SERVER_STREAMING)
		return fr_error_set(err, -EINVAL, "rpc method %s: bad kind %d", path, (int)kind);
	for (size_t i = 0; i < srv->n_methods; i++)
		if (strcmp(srv->methods[i].path, path) == 0)
			return fr_error_set(err, -EINVAL, "rpc method %s: registered twice", path);
	if (srv->n_methods == RPC_MAX_METHODS)
		return fr_error_set(err, -E2BIG, "rpc method %s: too many methods", path);
	m = &srv->methods[srv->n_methods];
	m->path = strdup(path);
	if (!m->path)
		return fr_error_set(err, -ENOMEM, "rpc method %s: out of memory", path);
	m->handle = grpc_server_register_method(srv->server, m->path, NULL,
						GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	if (!m->handle) {
		free(m->path);
		return fr_error_set(err, -EINVAL, "rpc method %s: gRPC refused it", path);
	}
	m->kind = kind;
	m->req_desc = req_desc;
	m->fn = fn;
	m->arg = arg;
	srv->n_methods++;
	return 0;
}

int rpc_server_start(struct rpc_server *srv, struct fr_error *err)
{
	int rc;

	if (!srv || srv->started || srv->n_methods == 0)
		return fr_error_set(err, -EINVAL, "rpc server: nothing to start");
	grpc_server_start(srv->server);
	srv->started = true;
	for (size_t i = 0; i <= srv->n_methods; i++) {
		rc = method_arm(srv, i < srv->n_methods ? &srv->methods[i] : &srv->unknown);
		if (rc < 0)
			goto fail;
	}
	rc = -pthread_create(&srv->poller, NULL, poller_main, srv);
	if (rc < 0)
		goto fail;
	return 0;
fail:
	/* Pending new-call states complete (failed) once the server shuts down. */
	{
		grpc_event ev;
		grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
		pthread_mutex_lock(&srv->mu);
		srv->shutting_down = true;
		pthread_mutex_unlock(&srv->mu);
		do {
			ev = grpc_completion_queue_next(srv->cq,
							gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
			if (ev.type == GRPC_OP_COMPLETE && ev.tag != &srv->shutdown_tag)
				call_free(((struct rpc_tag *)ev.tag)->call);
		} while (!(ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->shutdown_tag));
		srv->started = false;
		srv->shutdown_done = true;
	}
	return fr_error_set(err, rc, "rpc server: cannot start: %s", strerror(-rc));
}

int rpc_server_port(const struct rpc_server *srv)
{
	return srv->port;
}

void rpc_server_destroy(struct rpc_server *srv)
{
	grpc_event ev;

	if (!srv)
		return;
	if (srv->started) {
		pthread_mutex_lock(&srv->mu);
		srv->shutting_down = true;
		pthread_mutex_unlock(&srv->mu);
		grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
		/* Calls that are answering (a status just set, a last message) get a moment to
		 * reach their clients; long polls and streams still running are then cancelled.
		 * The poller keeps running: calls complete, handlers return, states are freed. */
		struct timespec grace;
		fr_deadline_ms(&grace, RPC_SHUTDOWN_GRACE_MS);
		pthread_mutex_lock(&srv->mu);
		while ((!srv->shutdown_done || srv->n_live > 0) && !fr_deadline_passed(&grace))
			pthread_cond_timedwait(&srv->cv, &srv->mu, &grace);
		pthread_mutex_unlock(&srv->mu);
		grpc_server_cancel_all_calls(srv->server);
		pthread_mutex_lock(&srv->mu);
		while (!srv->shutdown_done || srv->n_live > 0)
			pthread_cond_wait(&srv->cv, &srv->mu);
		pthread_mutex_unlock(&srv->mu);
	}
	grpc_server_destroy(srv->server);
	grpc_completion_queue_shutdown(srv->cq);
	if (srv->started) {
		pthread_join(srv->poller, NULL);
	} else {
		do
			ev = grpc_completion_queue_next(srv->cq,
							gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		while (ev.type != GRPC_QUEUE_SHUTDOWN);
	}
	grpc_completion_queue_destroy(srv->cq);
	for (size_t i = 0; i < srv->n_methods; i++)
		free(srv->methods[i].path);
	pthread_cond_destroy(&srv->cv);
	pthread_mutex_destroy(&srv->mu);
	free(srv);
	grpc_shutdown();
}

void rpc_server_call_counts(struct rpc_server *srv,
			    void (*fn)(void *ctx, const char *path, grpc_status_code code,
				       uint64_t n),
			    void *ctx)
{
	for (size_t i = 0; i <= srv->n_methods; i++) {
		struct rpc_method *m = i < srv->n_methods ? &srv->methods[i] : &srv->unknown;
		for (int code = 0; code < RPC_STATUS_CODES; code++) {
			uint64_t n = atomic_load_explicit(&m->answered[code], memory_order_relaxed);
			if (n)
				fn(ctx, m->path, (grpc_status_code)code, n);
		}
	}
}
