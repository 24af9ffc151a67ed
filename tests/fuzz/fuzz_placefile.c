/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_placefile.c - co_place_file_parse on arbitrary bytes: every refusal says why and
 * leaves nothing behind; every placement it accepts passes co_place_check() and survives a
 * round trip through co_place_file_format() unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "placement/placement.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct co_placement *p = NULL, *q = NULL;
	struct fr_error err = { { 0 } };
	char *text = NULL;
	size_t len = 0;

	if (co_place_file_parse((const char *)data, size, 0, &p, &err) < 0) {
		if (!err.msg[0] || p)
			abort();
		return 0;
	}
	if (!p || co_place_check(p, 1, &err) < 0)
		abort();
	if (co_place_file_format(p, &text, &len, &err) < 0)
		abort();
	if (co_place_file_parse(text, len, p->n_experts, &q, &err) < 0 ||
	    co_place_moves(p, q) != 0)
		abort();
	free(text);
	co_place_destroy(q);
	co_place_destroy(p);
	return 0;
}
