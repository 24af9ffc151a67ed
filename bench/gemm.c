/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gemm - products of n tokens: GFLOP/s of kn_matmul with F32 weights, BF16 weights in the
 * exact precision and BF16 weights in the fast one, against OpenBLAS cblas_sgemm on the same
 * shape in f32 and against this machine's compute ceilings, measured in the same run with the
 * same thread count: the fp32 FMA peak (the exact kernels' ceiling) and the bf16 dot-product
 * peak (vdpbf16ps, the fast kernels' ceiling; AVX512_BF16 only). Shapes: prefill (n >= 256)
 * what MoE decode gives one expert (n = 8..64 rows of a 2048 x 1408 expert), and the lm_head
 * of 32 decoding sequences (32 x 2048 x 102400, the 16b vocabulary: 400 MiB of weights).
 * Targets: exact/fma >= 0.7 and fast/dp >= 0.7 at small batches; F32/blas >= 0.7.
 *
 *   build/bench/gemm [reps]      (at least 5 repetitions and ~0.25 s per cell, medians
 *                                 reported)
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "bench/peak.h"

#define MIN_CELL_S 0.25 /* seconds of runs per cell, at ~100 GFLOP/s */

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
		{ 32, 10944, 2048 }, /* the dense FFN's down projection, 32 decoding sequences */
		{ 32, 2048, 102400 }, /* the lm_head of 32 decoding sequences (16b vocabulary) */
	};
	double pk_fma[3], pk_dp[3];
	int reps = argc > 1 ? atoi(argv[1]) : 5;
	uint64_t rng = 7;

	if (reps < 1)
		reps = 1;
	kn_init();
	printf("gemm: y[n][rows] = x[n][cols] . W^T, isa=%s, medians of >= %d runs (~%.2f s) a "
	       "cell\n", kn_ops()->name, reps, MIN_CELL_S);
	for (int nth = 1; nth <= 2; nth++) {
		pk_fma[nth] = bench_peak_gflops(nth, false);
		pk_dp[nth] = bench_peak_gflops(nth, true);
		printf("ceilings, %d thread(s): fp32 FMA %.1f GFLOP/s, bf16 dot product %.1f GFLOP/s\n",
		       nth, pk_fma[nth], pk_dp[nth]);
	}
	printf("%-16s %3s %9s %9s %9s %9s %8s %8s %8s %8s\n", "n x cols x rows", "thr", "blas GF/s",
	       "F32 GF/s", "BF16 GF/s", "fast GF/s", "F32/blas", "BF16/fma", "fast/dp", "fast/BF16");
	for (size_t s = 0; s < FR_ARRAY_SIZE(shapes); s++) {
		int n = shapes[s][0], cols = shapes[s][1], rows = shapes[s][2];
		size_t nw = (size_t)rows * cols;
		/* weights 64-byte aligned, as model gen writes them (and as mmap gives them) */
		float *wf = aligned_alloc(64, FR_DIV_ROUND_UP(nw * sizeof(float), 64) * 64);
		uint16_t *wb = aligned_alloc(64, FR_DIV_ROUND_UP(nw * sizeof(uint16_t), 64) * 64);
		float *x = malloc((size_t)n * cols * sizeof(float));
		float *y = malloc((size_t)n * rows * sizeof(float));
		double flop = 2.0 * n * (double)cols * rows;
		/* at least reps runs and about MIN_CELL_S seconds a cell: a small shape takes a
		 * millisecond, and one slow moment of a shared machine would move its median */
		int cell_reps = FR_MAX(reps, (int)(MIN_CELL_S * 100e9 / flop));
		uint64_t *t = malloc((size_t)cell_reps * sizeof(uint64_t));
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

		for (int nth = 1; nth <= 2; nth++) {
			double gf[4];
			openblas_set_num_threads(nth);
			kn_set_threads(nth);
			/* OpenBLAS last: its threads spin after a call and would take the
			 * second core from ours */
			for (int wi = 0; wi < 4; wi++) {
				int which = (wi + 1) % 4;
				kn_set_precision(which == 3 ? KN_PRECISION_FAST : KN_PRECISION_EXACT);
				usleep(150 * 1000); /* the last column's spinning threads go to sleep */
				for (int r = -1; r < cell_reps; r++) { /* r = -1 warms up */
					uint64_t t0 = fr_now_ns();
					if (which == 0)
						cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows,
							    cols, 1.0f, x, cols, wf, cols, 0.0f, y, rows);
					else
						kn_matmul(y, x, which == 1 ? &mf : &mb, n);
					if (r >= 0)
						t[r] = fr_now_ns() - t0;
				}
				gf[which] = flop / (double)median(t, cell_reps);
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
