/* SPDX-License-Identifier: Apache-2.0 */
/* model_test.h - small helpers shared by the tests/model programs (header-only). */
#ifndef FERRY_TESTS_MODEL_TEST_H
#define FERRY_TESTS_MODEL_TEST_H

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"
#include "tests/test.h"

/* A whole safetensors image: u64 LE length of header, header, data_len random bytes. */
static FR_UNUSED uint8_t *t_st_image(const char *header, size_t data_len, uint64_t *rng,
				     size_t *ret_len)
{
	size_t hl = strlen(header), len = 8 + hl + data_len;
	uint8_t *b = malloc(len ? len : 1);
	if (!b)
		abort();
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
	memcpy(b + 8, header, hl);
	for (size_t i = 0; i < data_len; i++)
		b[8 + hl + i] = (uint8_t)fr_splitmix64(rng);
	*ret_len = len;
	return b;
}

static FR_UNUSED void t_write(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f)) {
		perror(path);
		exit(1);
	}
}

static FR_UNUSED void t_write_str(const char *path, const char *s)
{
	t_write(path, s, strlen(s));
}

static FR_UNUSED int t_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static FR_UNUSED void t_rmtree(const char *dir)
{
	nftw(dir, t_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under $TMPDIR (or /tmp); written into buf. */
static FR_UNUSED void t_mkdtemp(char *buf, size_t n, const char *tag)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(buf, n, "%s/ferry-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
	if (!mkdtemp(buf)) {
		perror(buf);
		exit(1);
	}
}

/* FERRY_GOLDEN/name if that directory exists, else NULL (caller skips). */
static FR_UNUSED const char *t_golden(const char *name, char *buf, size_t n)
{
	const char *g = getenv("FERRY_GOLDEN");
	struct stat st;
	if (!g)
		return NULL;
	snprintf(buf, n, "%s/%s", g, name);
	if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
		return NULL;
	return buf;
}

#endif
