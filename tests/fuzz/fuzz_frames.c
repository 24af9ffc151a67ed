/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_frames.c - libFuzzer target for the data-plane frame decoders: any input either
 * decodes to a view that lies inside the buffer, or is rejected. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/frames.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy, so reads past the end are caught by ASan. */
	uint8_t *buf = malloc(size ? size : 1);
	struct fp_dispatch_view dv;
	struct fp_combine_view cv;
	struct fp_header h;
	struct fr_error err = { { 0 } };
	volatile uint32_t sink = 0;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	if (fp_header_decode(buf, size, &h, &err) == 0)
		assert(h.kind == FP_KIND_DISPATCH || h.kind == FP_KIND_COMBINE);
	if (fp_dispatch_decode(buf, size, 64, &dv, &err) == 0) {
		assert(dv.frame_len <= size);
		for (uint32_t t = 0; t < dv.h.n_tokens; t++)
			sink += fp_le32(dv.token_rows + 4 * t) + fp_le16(dv.pair_counts + 2 * t);
		for (uint32_t p = 0; p < dv.h.n_pairs; p++)
			sink += fp_le16(dv.pairs + 8 * p);
		size_t nv = (size_t)dv.h.n_tokens * dv.h.hidden * fp_dtype_size(dv.h.dtype);
		if (nv)
			sink += dv.vectors[nv - 1];
	}
	if (fp_combine_decode(buf, size, &cv, &err) == 0) {
		assert(cv.frame_len <= size);
		size_t nv = (size_t)cv.h.n_tokens * cv.h.hidden * fp_dtype_size(cv.h.dtype);
		for (uint32_t t = 0; t < cv.h.n_tokens; t++)
			sink += fp_le32(cv.token_rows + 4 * t);
		if (nv)
			sink += cv.partials[nv - 1];
	}
	(void)sink;
	free(buf);
	return 0;
}
