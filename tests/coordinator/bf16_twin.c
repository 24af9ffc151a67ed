/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bf16_twin.c - a generated checkpoint in BF16 behaves like its F32 twin (same preset and
 * seed; the BF16 weights are the F32 ones rounded to nearest even) up to bf16 tolerance:
 *  - teacher-forced on the F32 model's greedy continuation, every position's logits agree
 *    within a tolerance relative to the logit scale;
 *  - the greedy tokens are identical wherever the F32 top-1/top-2 gap exceeds twice the
 *    measured logit difference (a smaller gap is a legitimate bf16 tie-break);
 *  - an F16 conversion path is not generated, so only BF16/F32 are compared.
 * Also checks activations stay O(1): logits are finite and their scale is within [0.1, 100].
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coordinator.h"

#define N_PROMPT 8
#define N_GEN 24

struct run {
	struct model_ckpt *ck;
	struct model_weights *w;
	struct moe moe;
	struct co_engine *e;
};

static int open_run(const char *dir, struct run *r)
{
	struct fr_error err = { { 0 } };
	struct co_engine_opts eo = { .max_seqs = 1, .max_ctx = N_PROMPT + N_GEN, .max_batch = 64 };
	memset(r, 0, sizeof(*r));
	if (model_ckpt_open(dir, &r->ck, &err) < 0 ||
	    model_weights_bind(r->ck, MODEL_BIND_NO_ROUTED, &r->w, &err) < 0 ||
	    moe_local_create(r->ck, 2, &r->moe, &err) < 0 ||
	    co_engine_create(r->w, r->moe, &eo, &r->e, &err) < 0) {
		fprintf(stderr, "%s: %s\n", dir, err.msg);
		return -1;
	}
	return 0;
}

static void close_run(struct run *r)
{
	co_engine_destroy(r->e);
	moe_destroy(&r->moe);
	model_weights_free(r->w);
	model_ckpt_close(r->ck);
}

static int gen(const char *dir, enum kn_dtype dt, uint64_t seed)
{
	struct fr_error err = { { 0 } };
	struct model_gen_opts o = { .preset = MODEL_PRESET_TINY, .dtype = dt, .seed = seed, .shards = 1 };
	if (model_gen(&o, dir, &err) < 0) {
		fprintf(stderr, "model_gen %s: %s\n", dir, err.msg);
		return -1;
	}
	return 0;
}

int main(void)
{
	char tmpl[] = "/tmp/ferry-twin-XXXXXX", d32[300], d16[300], cmd[700];
	struct run a, b;
	uint64_t seed = (uint64_t)getpid() ^ fr_now_ns();
	int fail = 0;

	if (!mkdtemp(tmpl))
		return 1;
	snprintf(d32, sizeof(d32), "%s/f32", tmpl);
	snprintf(d16, sizeof(d16), "%s/bf16", tmpl);
	printf("seed %llu\n", (unsigned long long)seed);
	if (gen(d32, KN_DTYPE_F32, seed) < 0 || gen(d16, KN_DTYPE_BF16, seed) < 0 ||
	    open_run(d32, &a) < 0 || open_run(d16, &b) < 0)
		return 1;
	const struct model_config *c = model_ckpt_config(a.ck);
	int V = c->vocab_size, T = N_PROMPT + N_GEN;
	int32_t tok[N_PROMPT + N_GEN], seq[N_PROMPT + N_GEN] = { 0 }, pos[N_PROMPT + N_GEN];
	float *la = calloc((size_t)T * V, sizeof(float)), *lb = calloc((size_t)T * V, sizeof(float));
	uint64_t rng = seed;

	for (int i = 0; i < T; i++)
		pos[i] = i;
	for (int i = 0; i < N_PROMPT; i++)
		tok[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)V);
	/* F32 greedy, then both models teacher-forced over the same ids in one pass. */
	if (co_engine_forward(a.e, N_PROMPT, tok, seq, pos, NULL, NULL, la) < 0)
		return 1;
	for (int i = N_PROMPT; i < T; i++) {
		tok[i] = co_argmax(la + (size_t)(i - 1) * V, V);
		if (co_engine_forward(a.e, 1, tok + i, seq, pos + i, NULL, NULL, la + (size_t)i * V) < 0)
			return 1;
	}
	if (co_engine_forward(b.e, T, tok, seq, pos, NULL, NULL, lb) < 0)
		return 1;

	double scale = 0, diff = 0;
	for (size_t i = 0; i < (size_t)T * V; i++) {
		if (!isfinite(la[i]) || !isfinite(lb[i])) {
			fprintf(stderr, "FAIL: non-finite logit at %zu\n", i);
			return 1;
		}
		scale = fmax(scale, fabs(la[i]));
		diff = fmax(diff, fabs((double)la[i] - lb[i]));
	}
	printf("logit scale %.3f, max |f32 - bf16| %.4f (%.2f%% of scale)\n", scale, diff,
	       100 * diff / scale);
	if (scale < 0.1 || scale > 100) {
		fprintf(stderr, "FAIL: logit scale %.3g is not O(1)\n", scale);
		fail = 1;
	}
	/* bf16 keeps 8 bits of mantissa (rel. error 2^-9 per weight): a typical row differs by
	 * well under 2% of the logit scale. A token whose router margin is within bf16 noise may
	 * pick another expert, which moves that row (and, through attention, later ones) more:
	 * the median row bounds the typical error, the worst row only gross breakage (a broken
	 * widening is off by O(scale) everywhere). */
	double *row_diffs = calloc((size_t)T, sizeof(double));
	for (int i = 0; i < T; i++)
		for (int j = 0; j < V; j++)
			row_diffs[i] = fmax(row_diffs[i], fabs((double)la[(size_t)i * V + j] - lb[(size_t)i * V + j]));
	for (int i = 1; i < T; i++) /* insertion sort: T is tiny */
		for (int j = i; j > 0 && row_diffs[j - 1] > row_diffs[j]; j--) {
			double t = row_diffs[j];
			row_diffs[j] = row_diffs[j - 1];
			row_diffs[j - 1] = t;
		}
	double med = row_diffs[T / 2];
	free(row_diffs);
	printf("median row |f32 - bf16| %.4f (%.2f%% of scale)\n", med, 100 * med / scale);
	if (med > 0.02 * scale || diff > 0.25 * scale) {
		fprintf(stderr, "FAIL: bf16 logits differ too much (median row %.4f, worst %.4f)\n", med,
			diff);
		fail = 1;
	}
	int compared = 0;
	for (int i = N_PROMPT - 1; i < T - 1; i++) {
		const float *ra = la + (size_t)i * V, *rb = lb + (size_t)i * V;
		int ia = co_argmax(ra, V), ib = co_argmax(rb, V);
		float second = -INFINITY, row_diff = 0;
		for (int j = 0; j < V; j++) {
			if (j != ia && ra[j] > second)
				second = ra[j];
			row_diff = fmaxf(row_diff, fabsf(ra[j] - rb[j]));
		}
		/* A gap above twice this row's own difference cannot flip under bf16 rounding. */
		if (ra[ia] - second > 2 * row_diff) {
			compared++;
			if (ia != ib) {
				fprintf(stderr, "FAIL: position %d: f32 picks %d (gap %.4f), bf16 %d\n", i, ia,
					ra[ia] - second, ib);
				fail = 1;
			}
		}
	}
	printf("greedy tokens compared at %d of %d steps (others within bf16 tie range)\n", compared,
	       N_GEN);
	if (compared < N_GEN / 2) {
		fprintf(stderr, "FAIL: too few decisive steps (%d) to compare tokens\n", compared);
		fail = 1;
	}
	close_run(&a);
	close_run(&b);
	free(la);
	free(lb);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpl);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: could not remove %s\n", tmpl);
	return fail;
}
