/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_safetensors.c - model_st_open_buffer on arbitrary bytes. On success every tensor is
 * looked up by name and its first and last data bytes are read, so ASan catches any range
 * that escapes the buffer. */
#include <stdint.h>
#include <stdlib.h>

#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct model_st_file *f = NULL;
	struct fr_error err = { { 0 } };
	volatile uint8_t sink = 0;

	if (model_st_open_buffer(data, size, "fuzz", &f, &err) < 0) {
		if (!err.msg[0] || f)
			abort();
		return 0;
	}
	for (size_t i = 0; i < model_st_count(f); i++) {
		const struct model_tensor *t = model_st_tensor(f, i);
		const uint8_t *p = t->data;
		if (model_st_find(f, t->name) != t || t->ndim < 0 || t->ndim > MODEL_MAX_DIMS ||
		    p < data || p + t->nbytes > data + size)
			abort();
		if (t->nbytes)
			sink ^= p[0] ^ p[t->nbytes - 1];
	}
	(void)sink;
	model_st_close(f);
	return 0;
}
