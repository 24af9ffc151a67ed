/* SPDX-License-Identifier: Apache-2.0 */
/* status.c - gRPC status <-> -errno (converted here only), the protobuf-c bridge, and
 * credentials. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "rpc/rpc-internal.h"

int rpc_status_to_errno(grpc_status_code code)
{
	switch (code) {
	case GRPC_STATUS_OK: return 0;
	case GRPC_STATUS_CANCELLED: return -ECANCELED;
	case GRPC_STATUS_INVALID_ARGUMENT: return -EINVAL;
	case GRPC_STATUS_DEADLINE_EXCEEDED: return -ETIMEDOUT;
	case GRPC_STATUS_NOT_FOUND: return -ENOENT;
	case GRPC_STATUS_ALREADY_EXISTS: return -EEXIST;
	case GRPC_STATUS_PERMISSION_DENIED: return -EPERM;
	case GRPC_STATUS_UNAUTHENTICATED: return -EACCES;
	case GRPC_STATUS_RESOURCE_EXHAUSTED: return -EAGAIN;
	case GRPC_STATUS_UNAVAILABLE: return -EAGAIN;
	case GRPC_STATUS_FAILED_PRECONDITION: return -ESTALE;
	case GRPC_STATUS_ABORTED: return -ECONNABORTED;
	case GRPC_STATUS_OUT_OF_RANGE: return -ERANGE;
	case GRPC_STATUS_UNIMPLEMENTED: return -ENOSYS;
	case GRPC_STATUS_DATA_LOSS: return -EBADMSG;
	default: return -EIO;
	}
}

grpc_status_code rpc_status_from_errno(int neg_errno)
{
	switch (neg_errno) {
	case 0: return GRPC_STATUS_OK;
	case -ECANCELED: return GRPC_STATUS_CANCELLED;
	case -EINVAL: case -EBADMSG: case -EMSGSIZE: return GRPC_STATUS_INVALID_ARGUMENT;
	case -ETIMEDOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
	case -ENOENT: return GRPC_STATUS_NOT_FOUND;
	case -EEXIST: return GRPC_STATUS_ALREADY_EXISTS;
	case -EPERM: return GRPC_STATUS_PERMISSION_DENIED;
	case -EACCES: return GRPC_STATUS_UNAUTHENTICATED;
	case -EAGAIN: case -ENOMEM: case -ENOSPC: return GRPC_STATUS_RESOURCE_EXHAUSTED;
	case -ESTALE: return GRPC_STATUS_FAILED_PRECONDITION;
	case -ECONNABORTED: return GRPC_STATUS_ABORTED;
	case -ERANGE: return GRPC_STATUS_OUT_OF_RANGE;
	case -ENOSYS: case -EOPNOTSUPP: return GRPC_STATUS_UNIMPLEMENTED;
	default: return GRPC_STATUS_INTERNAL;
	}
}

const char *rpc_status_name(grpc_status_code code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};
	if ((unsigned)code < FR_ARRAY_SIZE(names))
		return names[code];
	return "UNKNOWN_STATUS";
}

int rpc__pack(const ProtobufCMessage *msg, grpc_byte_buffer **ret_bb)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	grpc_slice slice;
	grpc_byte_buffer *bb;

	if (len > RPC_MAX_MESSAGE_BYTES)
		return -EMSGSIZE;
	slice = grpc_slice_malloc(len); /* gRPC aborts rather than return NULL */
	if (len)
		protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
	bb = grpc_raw_byte_buffer_create(&slice, 1); /* takes its own ref */
	grpc_slice_unref(slice);
	if (!bb)
		return -ENOMEM;
	*ret_bb = bb;
	return 0;
}

int rpc__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
		ProtobufCMessage **ret_msg)
{
	grpc_byte_buffer_reader reader;
	grpc_slice whole;
	ProtobufCMessage *msg;

	if (!bb)
		return -EBADMSG;
	if (grpc_byte_buffer_length(bb) > RPC_MAX_MESSAGE_BYTES)
		return -EMSGSIZE;
	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return -EBADMSG; /* undecompressable */
	whole = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(whole),
					GRPC_SLICE_START_PTR(whole));
	grpc_slice_unref(whole);
	if (!msg)
		return -EBADMSG;
	*ret_msg = msg;
	return 0;
}

grpc_server_credentials *rpc__server_creds(const struct rpc_creds *creds)
{
	if (!creds || creds->kind == RPC_CREDS_INSECURE)
		return grpc_insecure_server_credentials_create();
	return NULL;
}

grpc_channel_credentials *rpc__channel_creds(const struct rpc_creds *creds)
{
	if (!creds || creds->kind == RPC_CREDS_INSECURE)
		return grpc_insecure_credentials_create();
	return NULL;
}

gpr_timespec rpc__deadline_from_ms(int64_t timeout_ms)
{
	if (timeout_ms <= 0)
		return gpr_inf_future(GPR_CLOCK_MONOTONIC);
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			    gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

int64_t rpc__ms_until(gpr_timespec deadline)
{
	gpr_timespec now, d;

	if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
		return INT64_MAX;
	now = gpr_now(deadline.clock_type);
	d = gpr_time_sub(deadline, now);
	/* Rounded up: 0 means the deadline has really passed. */
	return (int64_t)d.tv_sec * 1000 + (d.tv_nsec + 999999) / 1000000;
}
