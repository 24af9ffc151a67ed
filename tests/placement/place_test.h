/* SPDX-License-Identifier: Apache-2.0 */
/* place_test.h - helpers shared by the tests/placement programs (header-only). */
#ifndef FERRY_TESTS_PLACE_TEST_H
#define FERRY_TESTS_PLACE_TEST_H

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/placement/placement.h"

/* Sanitizer builds run 10-30x slower: the heavy tests do less there. */
#if defined(__SANITIZE_ADDRESS__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif

static int t_failures;

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__,    \
				#cond);                                                     \
			t_failures++;                                                       \
		}                                                                           \
	} while (0)

/* Expects rc == want and err to mention every non-NULL needle. */
static FR_UNUSED void t_expect_err(const char *what, int rc, int want, const struct fr_error *err,
				   const char *n1, const char *n2)
{
	bool ok = rc == want && (!n1 || strstr(err->msg, n1)) && (!n2 || strstr(err->msg, n2));
	if (!ok) {
		fprintf(stderr, "FAIL %s: rc %d (want %d), msg \"%s\" (want \"%s\"%s%s%s)\n", what,
			rc, want, err->msg, n1 ? n1 : "", n2 ? " and \"" : "", n2 ? n2 : "",
			n2 ? "\"" : "");
		t_failures++;
	} else {
		printf("ok   %s: %s\n", what, err->msg);
	}
}

static FR_UNUSED uint64_t t_seed(void)
{
	const char *s = getenv("FERRY_TEST_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20;
	printf("seed %llu (FERRY_TEST_SEED to repeat)\n", (unsigned long long)seed);
	return seed;
}

static FR_UNUSED int t_rand_int(uint64_t *rng, int lo, int hi) /* [lo, hi] */
{
	return lo + (int)(fr_splitmix64(rng) % (uint64_t)(hi - lo + 1));
}

/* Zipf-like skewed loads for one layer: rank r gets scale / (r + 1)^s times a little noise,
 * ranks shuffled over the experts. */
static FR_UNUSED void t_zipf_row(uint64_t *rng, int n, double s, double *ret)
{
	double scale = 100 + 10000 * fr_rand_unit(rng);
	for (int i = 0; i < n; i++)
		ret[i] = scale / pow(i + 1, s) * (0.8 + 0.4 * fr_rand_unit(rng));
	for (int i = n - 1; i > 0; i--) {
		int j = (int)(fr_splitmix64(rng) % (uint64_t)(i + 1));
		double t = ret[i];
		ret[i] = ret[j];
		ret[j] = t;
	}
}

static FR_UNUSED void *t_xmalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);
	if (!p) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	return p;
}

#endif
