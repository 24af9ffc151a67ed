/* SPDX-License-Identifier: Apache-2.0 */
/* test.h - the check macro, error expectations and seeding shared by the C test programs
 * (header-only). A program returns t_failures != 0 as its exit status. */
#ifndef FERRY_TESTS_TEST_H
#define FERRY_TESTS_TEST_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

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

#endif /* FERRY_TESTS_TEST_H */
