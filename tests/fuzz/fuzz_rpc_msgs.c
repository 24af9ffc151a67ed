/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_rpc_msgs.c - libFuzzer target for every request message of the control plane:
 * any input either unpacks (and then passes protobuf_c_message_check, re-packs, frees) or is
 * rejected with NULL. Catches out-of-bounds reads and leaks in the generated decoders. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/admin.pb-c.h"
#include "rpc/inference.pb-c.h"
#include "rpc/internal.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const requests[] = {
	&ferry__v1__generate_request__descriptor,
	&ferry__v1__health_request__descriptor,
	&ferry__v1__join_request__descriptor,
	&ferry__v1__heartbeat_request__descriptor,
	&ferry__v1__get_assignment_request__descriptor,
	&ferry__v1__load_experts_request__descriptor,
	&ferry__v1__unload_experts_request__descriptor,
	&ferry__v1__report_stats_request__descriptor,
	&ferry__v1__get_load_request__descriptor,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy, so reads past the end are caught by ASan. */
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
		ProtobufCMessage *m = protobuf_c_message_unpack(requests[i], NULL, size, buf);
		if (!m)
			continue;
		assert(protobuf_c_message_check(m));
		{
			size_t packed = protobuf_c_message_get_packed_size(m);
			uint8_t *out = malloc(packed ? packed : 1);
			if (out) {
				assert(protobuf_c_message_pack(m, out) == packed);
				free(out);
			}
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	free(buf);
	return 0;
}
