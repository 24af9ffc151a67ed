/* SPDX-License-Identifier: Apache-2.0 */
/* peak.c - the compute ceilings the benchmarks divide by (peak.h). */
#include <immintrin.h>
#include <omp.h>
#include <stdbool.h>

#include "bench/peak.h"
#include "common/common.h"

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

/* The best of three tries: on a shared machine one try can lose a core for a moment, and a
 * low ceiling would flatter every ratio divided by it. */
double bench_peak_gflops(int nth, bool dp)
{
	double best = 0;
	if (!__builtin_cpu_supports("avx512f") || (dp && !__builtin_cpu_supports("avx512bf16")))
		return 0;
	for (int try = 0; try < 3; try++) {
		double sum = 0;
#pragma omp parallel num_threads(nth) reduction(+ : sum)
		sum += dp ? peak_dp_thread() : peak_fma_thread();
		best = FR_MAX(best, sum);
	}
	return best;
}

