/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemm - products of n tokens: GFLOP/s of kn_matmul with F32 weights, BF16 weights in the
 * exact precision and BF16 weights in the fast one, against OpenBLAS cblas_sgemm on the same
 * shape in f32 and against this machine's compute ceilings, measured in the same run with the
 * same thread count: the fp32 FMA peak (the exact kernels' ceiling) and the bf16 dot-product
 * peak (vdpbf16ps, the fast kernels' ceiling; AVX512_BF16 only). Shapes: prefill (n >= 256)
 * and what MoE decode gives one expert (n = 8..64 rows of a 2048 x 1408 expert).
 * Targets: exact/fma >= 0.7 and fast/dp >= 0.7 at small batches; F32/blas >= 0.7.
 *
 *   build/bench/gemm [reps]      (default 5 repetitions per cell, medians reported)
 */
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

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

#define PEAK_ITERS 20000000L

/* One thread's peak: 12 independent accumulator chains (enough to cover the latency of both
 * FMA ports), each step one instruction per chain, held in registers. */
#define CHAINS(OP)                                                                          \
	do {                                                                                \
		a0 = OP(a0);                                                                \
		a1 = OP(a1);                                                                \
		a2 = OP(a2);                                                                \
		a3 = OP(a3);                                                                \
		a4 = OP(a4);                                                                \
		a5 = OP(a5);                                                                \
		a6 = OP(a6);                                                                \
		a7 = OP(a7);                                                                \
		a8 = OP(a8);                                                                \
		a9 = OP(a9);                                                                \
		a10 = OP(a10);                                                              \
		a11 = OP(a11);                                                              \
	} while (0)
#define PEAK_BODY(OP, FLOP_PER_INSN)                                                        \
	__m512 a0 = _mm512_set1_ps(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,    \
	       a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;                                   \
	uint64_t t0 = fr_now_ns();                                                          \
	for (long it = 0; it < PEAK_ITERS; it++) {                                          \
		CHAINS(OP);                                                                 \
		/* no instruction: keeps the loop between the two clock reads */           \
		__asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4),      \
				 "+v"(a5), "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), \
				 "+v"(a11));                                                \
	}                                                                                   \
	uint64_t dt = fr_now_ns() - t0;                                                     \
	__m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), \
				   _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))); \
	sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11))); \
	float sink = _mm512_reduce_add_ps(sum);                                             \
	__asm__ volatile("" : : "x"(sink));                                                 \
	return 12.0 * (FLOP_PER_INSN) * PEAK_ITERS / (double)dt

/* 2 x 16 FLOP per FMA: the fp32 FMA peak of one thread. */
__attribute__((target("avx512f"))) static double peak_fma_thread(void)
{
	__m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
#define FMA_OP(x) _mm512_fmadd_ps(x, b, c)
	PEAK_BODY(FMA_OP, 32);
#undef FMA_OP
}

/* 2 x 32 FLOP per vdpbf16ps. */
__attribute__((target("avx512f,avx512bf16"))) static double peak_dp_thread(void)
{
	__m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
#define DP_OP(x) _mm512_dpbf16_ps(x, b, c)
	PEAK_BODY(DP_OP, 64);
#undef DP_OP
}

/* GFLOP/s of nth threads each running one peak loop (0 when the CPU cannot). */
static double peak(int nth, bool dp)
{
	double sum = 0;
	if (!__builtin_cpu_supports("avx512f") || (dp && !__builtin_cpu_supports("avx512bf16")))
		return 0;
#pragma omp parallel num_threads(nth) reduction(+ : sum)
	sum += dp ? peak_dp_thread() : peak_fma_thread();
	return sum;
}

int main(int argc, char **argv)
{
	static const int shapes[][3] = {
		/* tokens, cols (in), rows (out) */
		{ 256, 2048, 2048 },
		{ 512, 2048, 1408 },
		{ 256, 1408, 2048 },
		{ 256, 2048, 10944 },
		{ 8, 2048, 1408 },
		{ 32, 2048, 1408 },
		{ 64, 2048, 1408 },
		{ 64, 1408, 2048 },
	};
	double pk_fma[3], pk_dp[3];
	int reps = argc > 1 ? atoi(argv[1]) : 5;
	uint64_t rng = 7;

	if (reps < 1)
		reps = 1;
	kn_init();
	printf("gemm: y[n][rows] = x[n][cols] . W^T, isa=%s, medians of %d runs\n", kn_ops()->name,
	       reps);
	for (int nth = 1; nth <= 2; nth++) {
		pk_fma[nth] = peak(nth, false); /* FLOP per ns = GFLOP/s */
		pk_dp[nth] = peak(nth, true);
		printf("ceilings, %d thread(s): fp32 FMA %.1f GFLOP/s, bf16 dot product %.1f GFLOP/s\n",
		       nth, pk_fma[nth], pk_dp[nth]);
	}
	printf("%-16s %3s %9s %9s %9s %9s %8s %8s %8s %8s\n", "n x cols x rows", "thr", "blas GF/s",
	       "F32 GF/s", "BF16 GF/s", "fast GF/s", "F32/blas", "BF16/fma", "fast/dp", "fast/BF16");
	for (size_t s = 0; s < FR_ARRAY_SIZE(shapes); s++) {
		int n = shapes[s][0], cols = shapes[s][1], rows = shapes[s][2];
		size_t nw = (size_t)rows * cols;
		float *wf = malloc(nw * sizeof(float)), *x = malloc((size_t)n * cols * sizeof(float));
		uint16_t *wb = malloc(nw * sizeof(uint16_t));
		float *y = malloc((size_t)n * rows * sizeof(float));
		uint64_t *t = malloc((size_t)reps * sizeof(uint64_t));
		if (!wf || !x || !wb || !y || !t) {
			fprintf(stderr, "gemm: out of memory\n");
			return 1;
		}
		for (size_t i = 0; i < nw; i++)
			wf[i] = (float)(fr_rand_unit(&rng) - 0.5);
		for (size_t i = 0; i < (size_t)n * cols; i++)
			x[i] = (float)(fr_rand_unit(&rng) - 0.5);
		kn_from_f32(wb, KN_DTYPE_BF16, wf, nw);
		struct kn_mat mf = { .data = wf, .dtype = KN_DTYPE_F32, .rows = rows, .cols = cols };
		struct kn_mat mb = { .data = wb, .dtype = KN_DTYPE_BF16, .rows = rows, .cols = cols };
		double flop = 2.0 * n * (double)cols * rows;

		for (int nth = 1; nth <= 2; nth++) {
			double gf[4];
			openblas_set_num_threads(nth);
			kn_set_threads(nth);
			for (int which = 0; which < 4; which++) {
				kn_set_precision(which == 3 ? KN_PRECISION_FAST : KN_PRECISION_EXACT);
				for (int r = -1; r < reps; r++) { /* r = -1 warms up */
					uint64_t t0 = fr_now_ns();
					if (which == 0)
						cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows,
							    cols, 1.0f, x, cols, wf, cols, 0.0f, y, rows);
					else
						kn_matmul(y, x, which == 1 ? &mf : &mb, n);
					if (r >= 0)
						t[r] = fr_now_ns() - t0;
				}
				gf[which] = flop / (double)median(t, reps);
			}
			char name[48];
			snprintf(name, sizeof(name), "%dx%dx%d", n, cols, rows);
			printf("%-16s %3d %9.1f %9.1f %9.1f %9.1f %8.2f %8.2f %8.2f %8.2f\n", name, nth,
			       gf[0], gf[1], gf[2], gf[3], gf[1] / gf[0],
			       pk_fma[nth] > 0 ? gf[2] / pk_fma[nth] : 0,
			       pk_dp[nth] > 0 ? gf[3] / pk_dp[nth] : 0, gf[3] / gf[2]);
			fflush(stdout);
		}
		free(wf), free(x), free(wb), free(y), free(t);
	}
	return 0;
}
