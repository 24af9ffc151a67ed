/* SPDX-License-Identifier: Apache-2.0 */
/* kn-test.h - shared helpers of the kernel tests: seeded random inputs, failure counting. */
#ifndef FERRY_TESTS_KN_TEST_H
#define FERRY_TESTS_KN_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "kernels/kernels.h"

static uint64_t kt_rng;
static int kt_failures;

/* Seed from $FERRY_SEED, else from the clock; printed so a failure can be replayed. */
static inline void kt_seed(const char *prog)
{
	const char *s = getenv("FERRY_SEED");
	uint64_t seed;
	if (s && *s)
		seed = strtoull(s, NULL, 0);
	else
		seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
	printf("%s: FERRY_SEED=%" PRIu64 "\n", prog, seed);
	fflush(stdout);
	kt_rng = seed;
}

/* Uniform in [-1, 1), never exactly zero. */
static inline float kt_randf(void)
{
	for (;;) {
		float v = (float)(2.0 * fr_rand_unit(&kt_rng) - 1.0);
		if (v != 0.0f)
			return v;
	}
}

static inline int kt_randint(int lo, int hi) /* [lo, hi] */
{
	return lo + (int)(fr_splitmix64(&kt_rng) % (uint64_t)(hi - lo + 1));
}

static inline float *kt_alloc(size_t n)
{
	float *p = malloc((n ? n : 1) * sizeof(float));
	if (!p) {
		perror("malloc");
		exit(1);
	}
	return p;
}

static inline float *kt_rand_vec(size_t n, float scale)
{
	float *p = kt_alloc(n);
	for (size_t i = 0; i < n; i++)
		p[i] = kt_randf() * scale;
	return p;
}

/* A random block table for n positions in blocks of bs: a permutation of the ids of a pool of
 * *ret_n_pool blocks, a few more than needed. Caller frees it. */
static inline int32_t *kt_block_table(int n, int bs, int *ret_n_pool)
{
	int n_pool = (n + bs - 1) / bs + kt_randint(0, 3);
	int32_t *perm = malloc((size_t)n_pool * sizeof(*perm));
	if (!perm) {
		perror("malloc");
		exit(1);
	}
	for (int i = 0; i < n_pool; i++)
		perm[i] = i;
	for (int i = n_pool - 1; i > 0; i--) {
		int j = kt_randint(0, i), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	*ret_n_pool = n_pool;
	return perm;
}

/* Pages rows[n][row] into a pool of n_pool blocks of bs rows (vLLM layout): position j goes to
 * row j % bs of block table[j / bs]. Pool rows not written hold noise. Caller frees it. */
static inline float *kt_page(const float *rows, int n, size_t row, int bs, const int32_t *table,
			     int n_pool)
{
	float *pool = kt_rand_vec((size_t)n_pool * bs * row, 3.0f);
	for (int j = 0; j < n; j++)
		memcpy(pool + ((size_t)table[j / bs] * bs + j % bs) * row, rows + (size_t)j * row,
		       row * sizeof(float));
	return pool;
}

#define KT_FAIL(...)                                                                        \
	do {                                                                                \
		if (kt_failures++ < 20) {                                                   \
			printf("FAIL %s:%d: ", __FILE__, __LINE__);                          \
			printf(__VA_ARGS__);                                                \
			printf("\n");                                                       \
		}                                                                           \
	} while (0)

#define KT_CHECK(cond, ...)                                                                 \
	do {                                                                                \
		if (!(cond))                                                                \
			KT_FAIL(__VA_ARGS__);                                               \
	} while (0)

static inline int kt_finish(const char *prog)
{
	if (kt_failures) {
		printf("%s: %d failure(s)\n", prog, kt_failures);
		return 1;
	}
	printf("%s: ok\n", prog);
	return 0;
}

#endif
