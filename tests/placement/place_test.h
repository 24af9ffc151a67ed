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

#include "placement/placement.h"
#include "tests/test.h"

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
