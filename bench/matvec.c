/* SPDX-License-Identifier: Apache-2.0 */
/*
 * matvec - decode-shaped products (one token) with BF16 weights: how close kn_matmul comes to
 * streaming the weights at the speed of a plain vectorized read of the same bytes with the
 * same thread count. Prints a table; the target is ratio >= 0.9.
 *
 * A decode step streams every weight from DRAM (it touches far more than the last-level
 * cache), so by default each cell cycles through copies of the matrix totalling at least
 * four times the L3, and the read ceiling reads a copy the product did not just touch.
 * --hot measures one copy over and over instead (small shapes then run from L3).
 *
 *   build/bench/matvec [reps] [--hot]   (default 15 repetitions per cell, medians reported)
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	return v[n / 2];
}

__attribute__((target("avx2"))) static uint32_t sum_avx2(const uint8_t *p, size_t bytes)
{
	__m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
	size_t i = 0;
	for (; i + 128 <= bytes; i += 128) {
		a0 = _mm256_add_epi32(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
		a1 = _mm256_add_epi32(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
		a2 = _mm256_add_epi32(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
		a3 = _mm256_add_epi32(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
	}
	a0 = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
	uint32_t lanes[8], s = 0;
	_mm256_storeu_si256((__m256i *)lanes, a0);
	for (int k = 0; k < 8; k++)
		s += lanes[k];
	for (; i < bytes; i++)
		s += p[i];
	return s;
}

static uint32_t sum_plain(const uint8_t *p, size_t bytes)
{
	uint64_t s = 0;
	size_t i = 0;
	for (; i + 8 <= bytes; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		s += v;
	}
	for (; i < bytes; i++)
		s += p[i];
	return (uint32_t)s;
}

/* The ceiling: every thread sums its contiguous share of the buffer. */
static uint32_t stream_read(const uint8_t *p, size_t bytes, int nth, bool avx2)
{
	uint32_t total = 0;
#pragma omp parallel num_threads(nth) reduction(+ : total)
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		size_t a = bytes * (size_t)t / (size_t)nt & ~(size_t)63;
		size_t b = t == nt - 1 ? bytes : bytes * (size_t)(t + 1) / (size_t)nt & ~(size_t)63;
		total += avx2 ? sum_avx2(p + a, b - a) : sum_plain(p + a, b - a);
	}
	return total;
}

int main(int argc, char **argv)
{
	static const int shapes[][2] = {
		{ 2048, 2048 }, { 1408, 2048 }, { 2048, 1408 }, { 10944, 2048 }, { 102400, 2048 },
	};
	int reps = 15;
	bool hot = false;
	uint64_t rng = 42;
	bool avx2 = __builtin_cpu_supports("avx2");
	volatile uint32_t sink = 0;
	long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
	size_t cold_bytes = 4 * (size_t)FR_MAX(l3, 32L << 20);

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--hot") == 0) {
			hot = true;
		} else if ((reps = atoi(argv[i])) < 1) {
			fprintf(stderr, "usage: matvec [reps] [--hot]\n");
			return 2;
		}
	}
	kn_init();
	printf("matvec: BF16 weights, one token, isa=%s, medians of %d runs, %s\n", kn_ops()->name,
	       reps, hot ? "one copy (cache-hot)" : "weights from DRAM (copies >= 4x L3)");
	printf("%-14s %3s %10s %10s %10s %7s\n", "rows x cols", "thr", "MiB", "kn GB/s",
	       "read GB/s", "ratio");
	for (size_t s = 0; s < FR_ARRAY_SIZE(shapes); s++) {
		int rows = shapes[s][0], cols = shapes[s][1];
		size_t nw = (size_t)rows * cols, bytes = nw * 2, stride = (bytes + 63) & ~(size_t)63;
		int copies = hot ? 1 : (int)FR_MAX((size_t)1, FR_DIV_ROUND_UP(cold_bytes, bytes));
		uint16_t *w = aligned_alloc(64, stride * (size_t)copies);
		float *x = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
		uint64_t *t_mm = malloc((size_t)reps * sizeof(uint64_t)), *t_rd = malloc((size_t)reps * sizeof(uint64_t));
		if (!w || !x || !y || !t_mm || !t_rd) {
			fprintf(stderr, "matvec: out of memory for %dx%d\n", rows, cols);
			return 1;
		}
		for (size_t i = 0; i < nw; i++)
			w[i] = kn_f32_to_bf16((float)(fr_rand_unit(&rng) - 0.5));
		for (int c = 1; c < copies; c++)
			memcpy((char *)w + stride * (size_t)c, w, bytes);
		for (int c = 0; c < cols; c++)
			x[c] = (float)(fr_rand_unit(&rng) - 0.5);
		struct kn_mat m = { .data = w, .dtype = KN_DTYPE_BF16, .rows = rows, .cols = cols };

		for (int nth = 1; nth <= 2; nth++) {
			kn_set_threads(nth);
			kn_matmul(y, x, &m, 1); /* warm up: threads, page faults */
			sink += stream_read((const uint8_t *)w, bytes, nth, avx2);
			/* Interleave the two so both see the same machine state; the read takes the
			 * copy half a cycle away from the product's. */
			for (int r = 0; r < reps; r++) {
				const char *cm = (const char *)w + stride * (size_t)(r % copies);
				const char *cr = (const char *)w + stride * (size_t)((r + copies / 2) % copies);
				m.data = cm;
				uint64_t t0 = fr_now_ns();
				kn_matmul(y, x, &m, 1);
				uint64_t t1 = fr_now_ns();
				sink += stream_read((const uint8_t *)cr, bytes, nth, avx2);
				uint64_t t2 = fr_now_ns();
				t_mm[r] = t1 - t0;
				t_rd[r] = t2 - t1;
			}
			double gb_mm = (double)bytes / (double)median(t_mm, reps);
			double gb_rd = (double)bytes / (double)median(t_rd, reps);
			char name[32];
			snprintf(name, sizeof(name), "%dx%d", rows, cols);
			printf("%-14s %3d %10.1f %10.2f %10.2f %7.2f\n", name, nth,
			       (double)bytes / 1048576.0, gb_mm, gb_rd, gb_mm / gb_rd);
			fflush(stdout);
		}
		free(w), free(x), free(y), free(t_mm), free(t_rd);
	}
	(void)sink;
	return 0;
}
