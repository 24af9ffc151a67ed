/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench.c - co_engine_bench(): the work Admin.BenchEngine and `ferryctl bench-serve --model`
 * time, one procedure for the serving engine and for a single-process one.
 */
#include "coordinator/coordinator.h"
#include "common/common.h"

#include <errno.h>
#include <stdlib.h>

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

int co_engine_bench(const struct co_bench_work *wk, const struct co_bench_ops *ops, void *arg,
		    struct co_bench_result *ret)
{
	const int B = wk->batch, plen = wk->prompt_len, steps = wk->steps, V = wk->vocab;

	if (B < 1 || plen < 1 || steps < 1 || V < 1 || wk->max_batch < 1)
		return -EINVAL;

	size_t rows = (size_t)B * plen;
	/* Prompt rows, then one decode row per sequence. */
	int32_t *tok = malloc((rows + B) * sizeof(*tok)), *seq = malloc((rows + B) * sizeof(*seq));
	int32_t *pos = malloc((rows + B) * sizeof(*pos));
	bool *want = calloc(rows, sizeof(*want));
	/* The engine writes row i's logits at row i of the call. */
	float *logits = malloc((size_t)FR_MAX(B, wk->max_batch) * V * sizeof(float));
	uint64_t *t = malloc((size_t)(steps + 2) * sizeof(*t)), rng = wk->seed;
	uint64_t t0 = 0, t_end = 0;
	int rc = -ENOMEM;

	if (!tok || !seq || !pos || !want || !logits || !t)
		goto out;
	/* The same work a served batch does, with perfect batching: every prompt prefilled
	 * (all sequences in one pass, max_batch rows at a time; only the last row of each
	 * wants logits), then `steps` decode steps of all sequences together. One untimed
	 * round warms the caches first. */
	for (int b = 0; b < B; b++)
		for (int p = 0; p < plen; p++) {
			size_t i = (size_t)b * plen + p;
			tok[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)V);
			seq[i] = b;
			pos[i] = p;
			want[i] = p == plen - 1;
		}
	for (int round = 0; round < 2; round++) {
		for (int b = 0; b < B; b++)
			ops->reset(arg, b);
		t0 = fr_now_ns();
		/* Whole sequences per pass (as many as max_batch holds) keep their rows
		 * together; a prompt longer than max_batch goes alone. */
		size_t per = (size_t)FR_MAX(1, wk->max_batch / plen) * plen;
		for (size_t off = 0, n; off < rows; off += n) {
			n = FR_MIN(rows - off, per);
			rc = ops->step(arg, (int)n, tok + off, seq + off, pos + off, want + off, logits);
			if (rc < 0)
				goto out;
		}
		int32_t *dt = tok + rows, *ds = seq + rows, *dp = pos + rows;
		for (int k = 0; k < steps; k++) {
			for (int b = 0; b < B; b++) {
				dt[b] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)V);
				ds[b] = b;
				dp[b] = plen + k;
			}
			uint64_t a = fr_now_ns();
			rc = ops->step(arg, B, dt, ds, dp, NULL, logits);
			if (rc < 0)
				goto out;
			t[k] = fr_now_ns() - a;
		}
		t_end = fr_now_ns();
	}
	qsort(t, (size_t)steps, sizeof(*t), cmp_u64);
	ret->tokens_per_s = (double)B * steps / ((double)(t_end - t0) / 1e9);
	ret->step_ms_p50 = (double)t[steps / 2] / 1e6;
	rc = 0;
out:
	for (int b = 0; b < B; b++)
		ops->reset(arg, b);
	free(tok);
	free(seq);
	free(pos);
	free(want);
	free(logits);
	free(t);
	return rc;
}
