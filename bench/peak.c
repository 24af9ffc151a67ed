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
#define PEAK_BODY(VEC, ZERO, OP, FLOP_PER_INSN, REDUCE)                                      \
	VEC a0 = ZERO, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,    \
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
	a0 = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;                   \
	float sink = REDUCE(a0);                                                            \
	__asm__ volatile("" : : "x"(sink));                                                 \
	return 12.0 * (FLOP_PER_INSN) * PEAK_ITERS / (double)dt

/* 2 x 16 FLOP per FMA: the fp32 FMA peak of one thread. */
__attribute__((target("avx512f"))) static double peak_fma_thread(void)
{
	__m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
#define FMA_OP(x) _mm512_fmadd_ps(x, b, c)
	PEAK_BODY(__m512, _mm512_set1_ps(0), FMA_OP, 32, _mm512_reduce_add_ps);
#undef FMA_OP
}

/* The same on AVX2 + FMA: 2 x 8 FLOP per 256-bit FMA (the avx2 kernels' ceiling). */
__attribute__((target("avx2,fma"))) static float reduce256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2,fma"))) static double peak_fma256_thread(void)
{
	__m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
#define FMA_OP(x) _mm256_fmadd_ps(x, b, c)
	PEAK_BODY(__m256, _mm256_set1_ps(0), FMA_OP, 16, reduce256);
#undef FMA_OP
}

/* 2 x 32 FLOP per vdpbf16ps. */
__attribute__((target("avx512f,avx512bf16"))) static double peak_dp_thread(void)
{
	__m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
#define DP_OP(x) _mm512_dpbf16_ps(x, b, c)
	PEAK_BODY(__m512, _mm512_set1_ps(0), DP_OP, 64, _mm512_reduce_add_ps);
#undef DP_OP
}

/* The best of three tries: on a shared machine one try can lose a core for a moment, and a
 * low ceiling would flatter every ratio divided by it. */
double bench_peak_gflops(int nth, bool dp)
{
	double best = 0;
	bool z = __builtin_cpu_supports("avx512f");
	if (dp ? !z || !__builtin_cpu_supports("avx512bf16")
	       : !z && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
		return 0;
	for (int try = 0; try < 3; try++) {
		double sum = 0;
#pragma omp parallel num_threads(nth) reduction(+ : sum)
		sum += dp ? peak_dp_thread() : z ? peak_fma_thread() : peak_fma256_thread();
		best = FR_MAX(best, sum);
	}
	return best;
}

