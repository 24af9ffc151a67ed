/* SPDX-License-Identifier: Apache-2.0 */
/*
 * moe_plan.h - where each (token, slot) pair's row goes in the permuted buffers of the GPU
 * expert layer (kn_cuda_moe). Plain C with no CUDA, so that the layout is tested on any
 * machine (tests/gpu/test_moe_plan.c runs the whole layer through it with the CPU kernels).
 */
#ifndef FERRY_KN_MOE_PLAN_H
#define FERRY_KN_MOE_PLAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The layouts of the permuted rows (enum kn_cuda_gemm's values). */
enum kn_moe_layout {
	KN_MOE_LAYOUT_PACKED = 0, /* slot s's rows at [base[s], base[s] + count[s]), packed */
	KN_MOE_LAYOUT_PADDED,     /* each slot with tokens gets max(count) rows */
};

/* For pairs p < pair_off[n_tok] of tokens t < n_tok (pair_off[0] = 0, non-decreasing; slot[p]
 * in [0, n_slots)): count[s] pairs per slot, base[s] its first row (0 for a slot with none
 * in the padded layout), tok[p] = its token, row[p] = its row; within a slot, rows follow
 * token order. Returns the rows the buffers need (>= 0), or -EINVAL naming nothing (the
 * caller validates its input first). count[n_slots], base[n_slots], tok and row [n_pairs]. */
long kn_moe_plan(enum kn_moe_layout layout, int n_slots, int n_tok, const int32_t *pair_off,
		 const int32_t *slot, int32_t *count, int32_t *base, int32_t *tok, int32_t *row);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_KN_MOE_PLAN_H */
