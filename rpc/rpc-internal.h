/* SPDX-License-Identifier: Apache-2.0 */
/* rpc-internal.h - shared by server.c and client.c: the protobuf-c <-> gRPC byte buffer
 * bridge, credentials and the per-process gRPC init. */
#ifndef FERRY_RPC_INTERNAL_H
#define FERRY_RPC_INTERNAL_H

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "rpc/rpc.h"

#define RPC_LOG "rpc"

/* Packs msg into a new byte buffer (caller destroys it with grpc_byte_buffer_destroy).
 * Returns 0, -EMSGSIZE (over RPC_MAX_MESSAGE_BYTES), -ENOMEM. */
int rpc__pack(const ProtobufCMessage *msg, grpc_byte_buffer **ret_bb);

/* Reads bb whole and unpacks it as desc. bb stays the caller's. *ret_msg is freed with
 * protobuf_c_message_free_unpacked. Returns 0, -EBADMSG (does not unpack), -EMSGSIZE,
 * -ENOMEM. */
int rpc__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
		ProtobufCMessage **ret_msg);

/* The one place credentials are made: insecure ones for NULL or RPC_CREDS_INSECURE, SSL
 * ones from the PEM files of an RPC_CREDS_TLS (loaded and checked as rpc_creds_check()
 * does, with its errors). The caller releases *ret_creds. Call after grpc_init(). */
int rpc__server_creds(const struct rpc_creds *creds, grpc_server_credentials **ret_creds,
		      struct fr_error *err);
int rpc__channel_creds(const struct rpc_creds *creds, grpc_channel_credentials **ret_creds,
		       struct fr_error *err);

/* Deadline helpers on the monotonic clock. */
gpr_timespec rpc__deadline_from_ms(int64_t timeout_ms);
int64_t rpc__ms_until(gpr_timespec deadline);

#endif /* FERRY_RPC_INTERNAL_H */
