/* SPDX-License-Identifier: Apache-2.0 */
/*
 * client.c - channels, blocking unary calls and server-streaming iterators.
 *
 * Each call owns a pluck completion queue: the caller's thread waits for exactly the batch
 * it started, so any number of threads share one channel without a poller. A streaming
 * call keeps RECV_STATUS_ON_CLIENT outstanding from the start and plucks it at the end.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "rpc/rpc-internal.h"

struct rpc_channel {
	grpc_channel *ch;
	char *target;
	/* Metadata sent with every call (the admin bearer token); lives as long as the
	 * channel, so no batch ever outlives it. */
	char *bearer;          /* "Bearer <token>" */
	grpc_metadata md;
	size_t n_md;
};

struct rpc_stream {
	grpc_call *call;
	grpc_completion_queue *cq;
	const ProtobufCMessageDescriptor *resp_desc;
	char *method;
	grpc_metadata_array init_md;
	grpc_metadata_array trail_md;
	grpc_status_code status;
	grpc_slice details;
	bool got_initial;
	bool status_pending; /* RECV_STATUS_ON_CLIENT not plucked yet */
	bool done;
	int final_rc;
	char final_msg[sizeof(((struct fr_error *)0)->msg)];
	int tag_status, tag_recv, tag_send;
};

int rpc_channel_create(const char *target, const struct rpc_creds *creds,
		       struct rpc_channel **ret_channel, struct fr_error *err)
{
	grpc_arg arg = { .type = GRPC_ARG_INTEGER,
			 .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
			 .value.integer = (int)RPC_MAX_MESSAGE_BYTES };
	grpc_channel_args args = { .num_args = 1, .args = &arg };
	grpc_channel_credentials *cc;
	struct rpc_channel *ch;
	int rc;

	if (!target || !ret_channel)
		return fr_error_set(err, -EINVAL, "rpc channel: no target");
	grpc_init();
	if ((rc = rpc__channel_creds(creds, &cc, err)) < 0) {
		grpc_shutdown();
		return rc;
	}
	ch = calloc(1, sizeof(*ch));
	if (ch)
		ch->target = strdup(target);
	if (!ch || !ch->target) {
		free(ch);
		grpc_channel_credentials_release(cc);
		grpc_shutdown();
		return fr_error_set(err, -ENOMEM, "rpc channel %s: out of memory", target);
	}
	ch->ch = grpc_channel_create(target, cc, &args);
	grpc_channel_credentials_release(cc);
	if (!ch->ch) {
		free(ch->target);
		free(ch);
		grpc_shutdown();
		return fr_error_set(err, -EINVAL, "rpc channel %s: cannot create", target);
	}
	*ret_channel = ch;
	return 0;
}

void rpc_channel_destroy(struct rpc_channel *ch)
{
	if (!ch)
		return;
	grpc_channel_destroy(ch->ch);
	free(ch->target);
	free(ch->bearer);
	free(ch);
	grpc_shutdown();
}

int rpc_channel_set_bearer(struct rpc_channel *ch, const uint8_t *token, size_t len)
{
	char *b;

	if (!ch || !token || !len || memchr(token, '\n', len) || memchr(token, '\0', len) ||
	    memchr(token, '\r', len))
		return -EINVAL;
	if (asprintf(&b, "Bearer %.*s", (int)len, (const char *)token) < 0)
		return -ENOMEM;
	free(ch->bearer);
	ch->bearer = b;
	ch->md.key = grpc_slice_from_static_string("authorization");
	ch->md.value = grpc_slice_from_static_buffer(b, strlen(b));
	ch->n_md = 1;
	return 0;
}

/* Pluck cq drained and destroyed; every tag started on it must have been plucked. */
static void cq_destroy(grpc_completion_queue *cq)
{
	grpc_completion_queue_shutdown(cq);
	while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(cq);
}

static bool pluck(grpc_completion_queue *cq, void *tag)
{
	grpc_event ev = grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_MONOTONIC),
						    NULL);
	return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static grpc_call *call_create(struct rpc_channel *ch, grpc_completion_queue *cq,
			      const char *method, int64_t timeout_ms)
{
	grpc_slice m = grpc_slice_from_copied_string(method);
	grpc_call *call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m,
						   NULL, rpc__deadline_from_ms(timeout_ms), NULL);
	grpc_slice_unref(m);
	return call;
}

/* The one place a finished call's status becomes a -errno with a message. */
static int status_to_error(const char *method, grpc_status_code status, grpc_slice details,
			   struct fr_error *err)
{
	int rc = rpc_status_to_errno(status);

	if (rc == 0)
		return 0;
	return fr_error_set(err, rc, "%s: %s: %.*s", method, rpc_status_name(status),
			    (int)GRPC_SLICE_LENGTH(details),
			    (const char *)GRPC_SLICE_START_PTR(details));
}

int rpc_unary(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
	      const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
	      ProtobufCMessage **ret_resp, struct fr_error *err)
{
	grpc_metadata_array init_md, trail_md;
	grpc_byte_buffer *send = NULL, *recv = NULL;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_completion_queue *cq;
	grpc_call *call;
	grpc_op ops[6];
	int tag = 0, rc;

	if (!ch || !method || !req || !resp_desc || !ret_resp)
		return fr_error_set(err, -EINVAL, "rpc unary: bad argument");
	rc = rpc__pack(req, &send);
	if (rc < 0)
		return fr_error_set(err, rc, "%s: cannot pack request", method);
	cq = grpc_completion_queue_create_for_pluck(NULL);
	call = call_create(ch, cq, method, timeout_ms);
	if (!call) {
		grpc_byte_buffer_destroy(send);
		cq_destroy(cq);
		return fr_error_set(err, -ENOMEM, "%s: cannot create call", method);
	}
	grpc_metadata_array_init(&init_md);
	grpc_metadata_array_init(&trail_md);
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = ch->n_md;
	ops[0].data.send_initial_metadata.metadata = ch->n_md ? &ch->md : NULL;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
	ops[5].data.recv_status_on_client.status = &status;
	ops[5].data.recv_status_on_client.status_details = &details;
	if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
		rc = fr_error_set(err, -EIO, "%s: cannot start call", method);
		goto out;
	}
	(void)pluck(cq, &tag); /* the status says how it went */
	rc = status_to_error(method, status, details, err);
	if (rc == 0) {
		rc = rpc__unpack(recv, resp_desc, ret_resp);
		if (rc < 0)
			fr_error_set(err, rc, "%s: response does not unpack as %s", method,
				     resp_desc->name);
	}
out:
	if (recv)
		grpc_byte_buffer_destroy(recv);
	grpc_byte_buffer_destroy(send);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&init_md);
	grpc_metadata_array_destroy(&trail_md);
	grpc_call_unref(call);
	cq_destroy(cq);
	return rc;
}

int rpc_stream_open(struct rpc_channel *ch, const char *method, const ProtobufCMessage *req,
		    const ProtobufCMessageDescriptor *resp_desc, int64_t timeout_ms,
		    struct rpc_stream **ret_stream, struct fr_error *err)
{
	grpc_byte_buffer *send = NULL;
	struct rpc_stream *st;
	grpc_op ops[3];
	int rc;

	if (!ch || !method || !req || !resp_desc || !ret_stream)
		return fr_error_set(err, -EINVAL, "rpc stream: bad argument");
	rc = rpc__pack(req, &send);
	if (rc < 0)
		return fr_error_set(err, rc, "%s: cannot pack request", method);
	st = calloc(1, sizeof(*st));
	if (st)
		st->method = strdup(method);
	if (!st || !st->method) {
		free(st);
		grpc_byte_buffer_destroy(send);
		return fr_error_set(err, -ENOMEM, "%s: out of memory", method);
	}
	st->resp_desc = resp_desc;
	st->details = grpc_empty_slice();
	grpc_metadata_array_init(&st->init_md);
	grpc_metadata_array_init(&st->trail_md);
	st->cq = grpc_completion_queue_create_for_pluck(NULL);
	st->call = call_create(ch, st->cq, method, timeout_ms);
	if (!st->call) {
		rc = fr_error_set(err, -ENOMEM, "%s: cannot create call", method);
		goto fail;
	}

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[0].data.recv_status_on_client.trailing_metadata = &st->trail_md;
	ops[0].data.recv_status_on_client.status = &st->status;
	ops[0].data.recv_status_on_client.status_details = &st->details;
	if (grpc_call_start_batch(st->call, ops, 1, &st->tag_status, NULL) != GRPC_CALL_OK) {
		rc = fr_error_set(err, -EIO, "%s: cannot start call", method);
		goto fail;
	}
	st->status_pending = true;

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = ch->n_md;
	ops[0].data.send_initial_metadata.metadata = ch->n_md ? &ch->md : NULL;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	if (grpc_call_start_batch(st->call, ops, 3, &st->tag_send, NULL) != GRPC_CALL_OK) {
		rc = fr_error_set(err, -EIO, "%s: cannot send request", method);
		goto fail;
	}
	/* A failed send shows up as the final status in rpc_stream_next(). */
	(void)pluck(st->cq, &st->tag_send);
	grpc_byte_buffer_destroy(send);
	*ret_stream = st;
	return 0;
fail:
	grpc_byte_buffer_destroy(send);
	rpc_stream_destroy(st);
	return rc;
}

int rpc_stream_next(struct rpc_stream *st, ProtobufCMessage **ret_msg, struct fr_error *err)
{
	grpc_byte_buffer *recv = NULL;
	grpc_op ops[2];
	size_t n = 0;
	bool ok;
	int rc;

	if (st->done)
		goto finished;
	memset(ops, 0, sizeof(ops));
	if (!st->got_initial) {
		ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
		ops[n].data.recv_initial_metadata.recv_initial_metadata = &st->init_md;
		n++;
	}
	ops[n].op = GRPC_OP_RECV_MESSAGE;
	ops[n].data.recv_message.recv_message = &recv;
	n++;
	if (grpc_call_start_batch(st->call, ops, n, &st->tag_recv, NULL) != GRPC_CALL_OK) {
		grpc_call_cancel(st->call, NULL);
		ok = false;
	} else {
		ok = pluck(st->cq, &st->tag_recv);
		st->got_initial = true;
	}
	if (ok && recv) {
		rc = rpc__unpack(recv, st->resp_desc, ret_msg);
		grpc_byte_buffer_destroy(recv);
		if (rc == 0)
			return 1;
		/* A stream we cannot read is over: cancel it and report why. */
		grpc_call_cancel(st->call, NULL);
		(void)pluck(st->cq, &st->tag_status);
		st->status_pending = false;
		st->done = true;
		st->final_rc = fr_error_set(err, rc, "%s: message does not unpack as %s",
					    st->method, st->resp_desc->name);
		snprintf(st->final_msg, sizeof(st->final_msg), "%s", err ? err->msg : "");
		return st->final_rc;
	}
	if (recv)
		grpc_byte_buffer_destroy(recv);
	/* End of stream (or the call failed): the status says which. */
	(void)pluck(st->cq, &st->tag_status);
	st->status_pending = false;
	st->done = true;
	{
		struct fr_error e = { { 0 } };
		st->final_rc = status_to_error(st->method, st->status, st->details, &e);
		memcpy(st->final_msg, e.msg, sizeof(st->final_msg));
	}
finished:
	if (st->final_rc < 0 && err)
		snprintf(err->msg, sizeof(err->msg), "%s", st->final_msg);
	return st->final_rc;
}

void rpc_stream_cancel(struct rpc_stream *st)
{
	if (st && st->call)
		grpc_call_cancel(st->call, NULL);
}

void rpc_stream_destroy(struct rpc_stream *st)
{
	if (!st)
		return;
	if (st->status_pending) {
		grpc_call_cancel(st->call, NULL);
		(void)pluck(st->cq, &st->tag_status);
	}
	if (st->call)
		grpc_call_unref(st->call);
	grpc_slice_unref(st->details);
	grpc_metadata_array_destroy(&st->init_md);
	grpc_metadata_array_destroy(&st->trail_md);
	cq_destroy(st->cq);
	free(st->method);
	free(st);
}
