/* SPDX-License-Identifier: Apache-2.0 */
/*
 * moe_plan.c - the row layout of the GPU expert layer: a counting sort of the pairs by slot,
 * tokens in order within a slot (what moe_compute() does on the CPU).
 */
#include <errno.h>
#include <string.h>

#include "kernels/cuda/moe_plan.h"

long kn_moe_plan(enum kn_moe_layout layout, int n_slots, int n_tok, const int32_t *pair_off,
		 const int32_t *slot, int32_t *count, int32_t *base, int32_t *tok, int32_t *row)
{
	int32_t n_pairs, at = 0, max = 0, used = 0;

	if (n_slots < 0 || n_tok < 0 || (layout != KN_MOE_LAYOUT_PACKED &&
					 layout != KN_MOE_LAYOUT_PADDED))
		return -EINVAL;
	n_pairs = n_tok ? pair_off[n_tok] : 0;
	memset(count, 0, sizeof(*count) * (size_t)n_slots);
	for (int32_t p = 0; p < n_pairs; p++) {
		if (slot[p] < 0 || slot[p] >= n_slots)
			return -EINVAL;
		count[slot[p]]++;
	}
	for (int s = 0; s < n_slots; s++) {
		max = count[s] > max ? count[s] : max;
		base[s] = at;
		at += count[s];
	}
	if (layout == KN_MOE_LAYOUT_PADDED)
		for (int s = 0; s < n_slots; s++)
			base[s] = count[s] ? max * used++ : 0;
	/* count doubles as each slot's fill while rows are handed out, and ends as it began */
	memset(count, 0, sizeof(*count) * (size_t)n_slots);
	for (int t = 0; t < n_tok; t++)
		for (int32_t p = pair_off[t]; p < pair_off[t + 1]; p++) {
			tok[p] = t;
			row[p] = base[slot[p]] + count[slot[p]]++;
		}
	return layout == KN_MOE_LAYOUT_PADDED ? (long)used * max : (long)n_pairs;
}
