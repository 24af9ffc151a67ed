/* SPDX-License-Identifier: Apache-2.0 */
/*
 * peak.h - this machine's compute ceilings, measured: nth threads each running 12
 * independent chains of one instruction held in registers. dp false: fp32 FMA (2 x 16
 * FLOP per AVX-512 instruction, 2 x 8 per AVX2 one on a CPU without AVX-512: the exact
 * kernels' ceiling); true: AVX512_BF16 vdpbf16ps (2 x 32, the fast kernels'). GFLOP/s
 * summed over the threads; 0 when the CPU cannot run it.
 */
#ifndef FERRY_BENCH_PEAK_H
#define FERRY_BENCH_PEAK_H

#include <stdbool.h>

double bench_peak_gflops(int nth, bool dp);

#endif /* FERRY_BENCH_PEAK_H */
