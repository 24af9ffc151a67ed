/* SPDX-License-Identifier: Apache-2.0 */
/* gpu_test.h - what the tests of the GPU path share (header-only, after tests/test.h): the
 * start (skip without a device), the random source, inputs that are never zero, allocation
 * that exits on failure, and the relative error every comparison uses. */
#ifndef FERRY_TESTS_GPU_TEST_H
#define FERRY_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/cuda/kn_cuda.h"
#include "kernels/kernels.h"

static uint64_t rng; /* main() seeds it from t_seed() */

/* Uniform in [-1, -0.05] u [0.05, 1]: never zero. */
static FR_UNUSED float urand(void)
{
	float u = (float)fr_rand_unit(&rng) * 1.9f - 0.95f;
	return u < 0 ? u - 0.05f : u + 0.05f;
}

static FR_UNUSED void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	return p;
}

static FR_UNUSED void *xmalloc(size_t n)
{
	return xcalloc(n, 1);
}

/* ||a - b|| / ||b||; a NaN anywhere gives infinity. */
static FR_UNUSED double rel_err(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		if (isnan(a[i]) || isnan(b[i]))
			return INFINITY;
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The start of every GPU test: the devices in *n, or 77 (skip) with the reason when there
 * are none; then the random source seeded (t_seed) and the CPU kernels ready. 0 to go on. */
static FR_UNUSED int gpu_test_start(int *n)
{
	char why[256] = "";

	if (kn_cuda_device_count(n, why, sizeof(why)) < 0) {
		printf("SKIP: no CUDA device here (%s); tests/gpu/run-on-device.sh runs this on a "
		       "GPU machine\n", why);
		return 77;
	}
	rng = t_seed();
	kn_init();
	return 0;
}

#endif /* FERRY_TESTS_GPU_TEST_H */
