/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_index.c - model_index_parse on arbitrary bytes; every (name, file) it hands out must
 * be a non-empty name and a plain file name. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int check_cb(const char *name, const char *file, void *ctx)
{
	size_t *n = ctx;
	if (!name[0] || !file[0] || strchr(file, '/') || !strcmp(file, "..") || !strcmp(file, "."))
		abort();
	/* Stop early sometimes, to exercise the callback's error path. */
	if (++*n == 1000)
		return -ECANCELED;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fr_error err = { { 0 } };
	size_t n = 0;
	int rc = model_index_parse((const char *)data, size, check_cb, &n, &err);

	if (rc < 0 && rc != -ECANCELED && !err.msg[0])
		abort();
	return 0;
}
