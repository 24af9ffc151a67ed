/* SPDX-License-Identifier: Apache-2.0 */
/* gen_test.h - helpers shared by the generator tests, test_gen_*.c (header-only). */
#ifndef FERRY_TESTS_GEN_TEST_H
#define FERRY_TESTS_GEN_TEST_H

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"

static int g_failures;

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__,    \
				#cond);                                                     \
			g_failures++;                                                       \
		}                                                                           \
	} while (0)

static FR_UNUSED int g_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static FR_UNUSED void g_rmtree(const char *dir)
{
	nftw(dir, g_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory under $TMPDIR (or /tmp), written into buf. */
static FR_UNUSED void g_mkdtemp(char *buf, size_t n, const char *tag)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(buf, n, "%s/ferry-gen-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
	if (!mkdtemp(buf)) {
		perror(buf);
		exit(1);
	}
}

/* Whole file into a heap buffer (exits on failure: test input we wrote ourselves). */
static FR_UNUSED uint8_t *g_slurp(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long len;

	if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		perror(path);
		exit(1);
	}
	buf = malloc((size_t)len + 1);
	if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
		perror(path);
		exit(1);
	}
	buf[len] = 0;
	fclose(f);
	*ret_len = (size_t)len;
	return buf;
}

static FR_UNUSED bool g_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

#endif
