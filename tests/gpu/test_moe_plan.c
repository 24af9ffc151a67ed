/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_moe_plan - the software twin of the GPU expert layer: kn_moe_plan()'s row layouts
 * (packed and padded), checked for their invariants, then the whole layer run through them
 * with the CPU kernels in the order kn_cuda_moe() runs it (permute, per-slot products over
 * the slot's rows, SwiGLU over all rows, weighted un-permute in pair order) against the CPU
 * worker's computation per token. Random batches, a slot that no token picks, tokens with
 * no pairs, and bad input.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/moe_plan.h"
#include "kernels/kernels.h"
#include "tests/test.h"
#include "tests/gpu/gpu_test.h"

/* Each slot's rows lie in [base, base + count), every pair has its own row below n_rows,
 * and within a slot rows follow token order. */
static void check_plan(enum kn_moe_layout lay, int n_slots, int n_tok, const int32_t *poff,
		       const int32_t *slot, long n_rows, const int32_t *cnt, const int32_t *base,
		       const int32_t *tok, const int32_t *row)
{
	int32_t n_pairs = poff[n_tok], max = 0;
	char *used = xcalloc((size_t)n_rows + 1, 1);
	int32_t *last = xcalloc((size_t)n_slots, sizeof(*last));
	long sum = 0;
	int bad = 0;

	for (int s = 0; s < n_slots; s++) {
		max = FR_MAX(max, cnt[s]);
		sum += cnt[s];
		last[s] = -1;
	}
	bad += sum != n_pairs;
	bad += n_rows != (lay == KN_MOE_LAYOUT_PACKED ? n_pairs : n_rows);
	for (int t = 0; t < n_tok; t++)
		for (int32_t p = poff[t]; p < poff[t + 1]; p++) {
			int s = slot[p];
			bad += tok[p] != t;
			bad += row[p] < base[s] || row[p] >= base[s] + cnt[s] || row[p] >= n_rows;
			if (row[p] >= 0 && row[p] < n_rows)
				bad += used[row[p]]++ != 0;
			bad += row[p] <= last[s]; /* token order within the slot */
			last[s] = row[p];
			if (lay == KN_MOE_LAYOUT_PADDED)
				bad += max == 0 || base[s] % max != 0;
		}
	if (lay == KN_MOE_LAYOUT_PADDED) {
		int with = 0;
		for (int s = 0; s < n_slots; s++)
			with += cnt[s] > 0;
		bad += n_rows != (long)with * max;
	}
	CHECK(bad == 0);
	free(used);
	free(last);
}

/* The layer through the plan, as kn_cuda_moe() runs it (in f32: where the GPU rounds to
 * bf16 is the GPU test's business). */
static void run_planned(enum kn_moe_layout lay, int n_slots, int hidden, int inter,
			const struct kn_mat (*w)[3], int n_tok, const float *x,
			const int32_t *poff, const int32_t *slot, const float *wt, float *out)
{
	int32_t n_pairs = poff[n_tok];
	int32_t *cnt = xcalloc((size_t)n_slots, 4), *base = xcalloc((size_t)n_slots, 4),
		*tok = xcalloc((size_t)n_pairs, 4), *row = xcalloc((size_t)n_pairs, 4);
	long R = kn_moe_plan(lay, n_slots, n_tok, poff, slot, cnt, base, tok, row);
	CHECK(R >= 0);
	if (R < 0)
		return;
	check_plan(lay, n_slots, n_tok, poff, slot, R, cnt, base, tok, row);
	float *xs = xcalloc((size_t)R * hidden, 4), *g = xcalloc((size_t)R * inter, 4),
	      *u = xcalloc((size_t)R * inter, 4), *d = xcalloc((size_t)R * hidden, 4);
	for (int32_t p = 0; p < n_pairs; p++) /* permute */
		memcpy(xs + (size_t)row[p] * hidden, x + (size_t)tok[p] * hidden, (size_t)hidden * 4);
	int max = 0;
	for (int s = 0; s < n_slots; s++)
		max = FR_MAX(max, cnt[s]);
	/* the products over each slot's rows: max of them when padded (the rest are zeros) */
	for (int s = 0; s < n_slots; s++) {
		int m = lay == KN_MOE_LAYOUT_PADDED && cnt[s] ? max : cnt[s];
		if (!m)
			continue;
		kn_matmul(g + (size_t)base[s] * inter, xs + (size_t)base[s] * hidden, &w[s][0], m);
		kn_matmul(u + (size_t)base[s] * inter, xs + (size_t)base[s] * hidden, &w[s][1], m);
	}
	kn_swiglu(g, g, u, (int)(R * inter));
	for (int s = 0; s < n_slots; s++) {
		int m = lay == KN_MOE_LAYOUT_PADDED && cnt[s] ? max : cnt[s];
		if (m)
			kn_matmul(d + (size_t)base[s] * hidden, g + (size_t)base[s] * inter,
				  &w[s][2], m);
	}
	for (int t = 0; t < n_tok; t++) /* weighted un-permute, pair order */
		for (int i = 0; i < hidden; i++) {
			float acc = 0;
			for (int32_t p = poff[t]; p < poff[t + 1]; p++)
				acc += wt[p] * d[(size_t)row[p] * hidden + i];
			out[(size_t)t * hidden + i] = acc;
		}
	free(cnt);
	free(base);
	free(tok);
	free(row);
	free(xs);
	free(g);
	free(u);
	free(d);
}

static void test_layer(int n_slots, int hidden, int inter, int n_tok, int kmax)
{
	struct kn_mat (*w)[3] = xcalloc((size_t)n_slots, sizeof(*w));
	uint16_t **data = xcalloc((size_t)n_slots * 3, sizeof(*data));
	int32_t *poff = xcalloc((size_t)n_tok + 1, 4), *slot = xcalloc((size_t)n_tok * kmax, 4);
	float *wt = xcalloc((size_t)n_tok * kmax, 4), *x = xcalloc((size_t)n_tok * hidden, 4);
	float *ref = xcalloc((size_t)n_tok * hidden, 4), *out = xcalloc((size_t)n_tok * hidden, 4);
	float *g = xcalloc((size_t)inter, 4), *u = xcalloc((size_t)inter, 4),
	      *d = xcalloc((size_t)hidden, 4);

	for (int s = 0; s < n_slots; s++)
		for (int j = 0; j < 3; j++) {
			size_t n = (size_t)hidden * inter;
			data[s * 3 + j] = xcalloc(n, 2);
			for (size_t i = 0; i < n; i++)
				data[s * 3 + j][i] = kn_f32_to_bf16(0.2f * urand());
			w[s][j] = (struct kn_mat){ data[s * 3 + j], KN_DTYPE_BF16,
						   j == 2 ? hidden : inter, j == 2 ? inter : hidden };
		}
	for (size_t i = 0; i < (size_t)n_tok * hidden; i++)
		x[i] = urand();
	/* 0..kmax distinct slots per token, never the last slot */
	for (int t = 0; t < n_tok; t++) {
		int k = (int)(fr_splitmix64(&rng) % (uint64_t)(kmax + 1)), at = poff[t];
		for (int j = 0; j < k; j++) {
			int s;
			bool dup;
			do {
				s = (int)(fr_splitmix64(&rng) % (uint64_t)(n_slots - 1));
				dup = false;
				for (int i = poff[t]; i < at; i++)
					dup |= slot[i] == s;
			} while (dup);
			slot[at] = s;
			wt[at++] = 0.1f + 0.9f * (float)fr_rand_unit(&rng);
		}
		poff[t + 1] = at;
	}
	for (int t = 0; t < n_tok; t++) /* per token, as the CPU worker computes */
		for (int32_t p = poff[t]; p < poff[t + 1]; p++) {
			const float *xt = x + (size_t)t * hidden;
			kn_matmul(g, xt, &w[slot[p]][0], 1);
			kn_matmul(u, xt, &w[slot[p]][1], 1);
			kn_swiglu(g, g, u, inter);
			kn_matmul(d, g, &w[slot[p]][2], 1);
			for (int i = 0; i < hidden; i++)
				ref[(size_t)t * hidden + i] += wt[p] * d[i];
		}
	for (int lay = KN_MOE_LAYOUT_PACKED; lay <= KN_MOE_LAYOUT_PADDED; lay++) {
		for (size_t i = 0; i < (size_t)n_tok * hidden; i++)
			out[i] = NAN;
		run_planned((enum kn_moe_layout)lay, n_slots, hidden, inter,
			    (const struct kn_mat (*)[3])w, n_tok, x, poff, slot, wt, out);
		double err = rel_err(out, ref, (size_t)n_tok * hidden);
		printf("%s %s layout, %d slots, %d tokens x up to top-%d, %d x %d: rel err %.2e\n",
		       err <= 1e-5 ? "ok  " : "FAIL", lay ? "padded" : "packed", n_slots, n_tok,
		       kmax, hidden, inter, err);
		CHECK(err <= 1e-5);
	}
	for (int s = 0; s < n_slots * 3; s++)
		free(data[s]);
	free(data);
	free(w);
	free(poff);
	free(slot);
	free(wt);
	free(x);
	free(ref);
	free(out);
	free(g);
	free(u);
	free(d);
}

static void test_bad_input(void)
{
	int32_t poff[3] = { 0, 1, 2 }, slot[2] = { 0, 3 }, cnt[3], base[3], tok[2], row[2];
	CHECK(kn_moe_plan(KN_MOE_LAYOUT_PACKED, 3, 2, poff, slot, cnt, base, tok, row) ==
	      -EINVAL);
	slot[1] = -1;
	CHECK(kn_moe_plan(KN_MOE_LAYOUT_PADDED, 3, 2, poff, slot, cnt, base, tok, row) ==
	      -EINVAL);
	slot[1] = 2;
	CHECK(kn_moe_plan((enum kn_moe_layout)7, 3, 2, poff, slot, cnt, base, tok, row) ==
	      -EINVAL);
	CHECK(kn_moe_plan(KN_MOE_LAYOUT_PADDED, 3, 0, poff, slot, cnt, base, tok, row) == 0);
	printf("ok   bad input: slots out of range, an unknown layout\n");
}

int main(void)
{
	rng = t_seed();
	kn_init();
	test_bad_input();
	test_layer(6, 64, 40, 13, 3);
	test_layer(9, 96, 33, 40, 6);
	test_layer(2, 32, 16, 1, 1);
	return t_failures != 0;
}
