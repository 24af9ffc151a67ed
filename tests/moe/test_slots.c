/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_slots - the worker's slot table and grouped expert compute (moe/slots.c) against a
 * plain reference: out[t] = sum over t's pairs of weight * down(silu(gate(x)) * up(x)), in
 * double, expert by expert, token by token. Random f32 and bf16 weights and inputs (never
 * zero), odd sizes, tokens with 0..k pairs, slots that get no token, the same slot twice
 * for one token, every slot of a layer at once; then the refusals: an empty slot, a slot
 * out of range, an expert whose shapes are not the config's.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "tests/test.h"

static uint64_t g_rng;

static float frand(void)
{
	/* (-1, 1), never 0 */
	float v = (float)fr_rand_unit(&g_rng) * 2.0f - 1.0f;
	return v == 0.0f ? 0.5f : v;
}

/* A random matrix [rows][cols] in dtype, and its exact f32 values. */
static struct kn_mat rand_mat(enum kn_dtype dt, int rows, int cols, float **ret_f32)
{
	size_t n = (size_t)rows * cols;
	float *f = malloc(n * sizeof(float));
	void *data = malloc(n * kn_dtype_size(dt));
	if (!f || !data)
		abort();
	for (size_t i = 0; i < n; i++) {
		float v = frand() * 0.2f;
		if (dt == KN_DTYPE_BF16) {
			uint16_t h = kn_f32_to_bf16(v);
			((uint16_t *)data)[i] = h;
			f[i] = kn_bf16_to_f32(h);
		} else {
			((float *)data)[i] = v;
			f[i] = v;
		}
	}
	*ret_f32 = f;
	return (struct kn_mat){ .data = data, .dtype = dt, .rows = rows, .cols = cols };
}

struct expert {
	struct model_ffn ffn;
	float *g, *u, *d;       /* f32 copies: gate/up [inter][hidden], down [hidden][inter] */
};

static void ref_expert(const struct expert *e, const float *x, int hidden, int inter,
		       double *acc, double w)
{
	double *a = malloc((size_t)inter * sizeof(double));
	if (!a)
		abort();
	for (int i = 0; i < inter; i++) {
		double g = 0, u = 0;
		for (int j = 0; j < hidden; j++) {
			g += (double)e->g[(size_t)i * hidden + j] * x[j];
			u += (double)e->u[(size_t)i * hidden + j] * x[j];
		}
		a[i] = g / (1.0 + exp(-g)) * u;
	}
	for (int o = 0; o < hidden; o++) {
		double s = 0;
		for (int i = 0; i < inter; i++)
			s += (double)e->d[(size_t)o * inter + i] * a[i];
		acc[o] += w * s;
	}
	free(a);
}

static void run_case(enum kn_dtype dt, int hidden, int inter, int n_experts, int n_slots,
		     int n_tok, int max_k)
{
	struct model_config cfg = { .hidden_size = hidden, .moe_intermediate_size = inter,
				    .n_routed_experts = n_experts, .num_hidden_layers = 2,
				    .first_k_dense_replace = 1, .moe_layer_freq = 1,
				    .num_experts_per_tok = max_k, .torch_dtype = dt };
	struct expert *ex = calloc((size_t)n_experts, sizeof(*ex));
	struct moe_slots *s;
	int *slot_expert = malloc((size_t)n_slots * sizeof(int));

	CHECK(model_n_moe_layers(&cfg) == 1);
	CHECK(moe_slots_create(&cfg, n_slots, &s) == 0);
	for (int e = 0; e < n_experts; e++) {
		ex[e].ffn.gate = rand_mat(dt, inter, hidden, &ex[e].g);
		ex[e].ffn.up = rand_mat(dt, inter, hidden, &ex[e].u);
		ex[e].ffn.down = rand_mat(dt, hidden, inter, &ex[e].d);
	}
	/* Slot i holds expert i % n_experts (replicas when slots > experts). */
	for (int i = 0; i < n_slots; i++) {
		slot_expert[i] = (i * 7 + 3) % n_experts;
		CHECK(moe_slot_set(s, 0, i, slot_expert[i], &ex[slot_expert[i]].ffn) == 0);
		CHECK(moe_slot_expert(s, 0, i) == slot_expert[i]);
	}
	float *x = malloc((size_t)n_tok * hidden * sizeof(float));
	float *out = malloc((size_t)n_tok * hidden * sizeof(float));
	int32_t *off = malloc((size_t)(n_tok + 1) * sizeof(int32_t));
	int32_t *slot = malloc((size_t)n_tok * max_k * sizeof(int32_t));
	float *wt = malloc((size_t)n_tok * max_k * sizeof(float));
	double *ref = calloc((size_t)n_tok * hidden, sizeof(double));
	for (size_t i = 0; i < (size_t)n_tok * hidden; i++)
		x[i] = frand();
	int np = 0;
	off[0] = 0;
	for (int t = 0; t < n_tok; t++) {
		int k = (int)(fr_splitmix64(&g_rng) % (uint64_t)(max_k + 1)); /* 0..max_k pairs */
		for (int j = 0; j < k; j++) {
			/* Slot n_slots - 1 stays idle in half the cases; the same slot may repeat. */
			int lim = n_slots > 1 && (n_tok & 1) ? n_slots - 1 : n_slots;
			slot[np] = (int32_t)(fr_splitmix64(&g_rng) % (uint64_t)lim);
			wt[np] = (float)fr_rand_unit(&g_rng) + 0.01f;
			ref_expert(&ex[slot_expert[slot[np]]], x + (size_t)t * hidden, hidden, inter,
				   ref + (size_t)t * hidden, wt[np]);
			np++;
		}
		off[t + 1] = np;
	}
	for (size_t i = 0; i < (size_t)n_tok * hidden; i++)
		out[i] = NAN; /* overwritten, even for tokens without pairs */
	struct moe_batch b = { .n_tok = n_tok, .x = x, .pair_off = off, .slot = slot,
			       .weight = wt };
	CHECK(moe_compute(s, 0, &b, out) == 0);
	double max_err = 0, max_ref = 0;
	for (size_t i = 0; i < (size_t)n_tok * hidden; i++) {
		if (!isfinite(out[i]))
			max_err = INFINITY; /* fmax() would skip a NaN */
		max_err = fmax(max_err, fabs((double)out[i] - ref[i]));
		max_ref = fmax(max_ref, fabs(ref[i]));
	}
	bool ok = max_err <= 1e-4 * fmax(1.0, max_ref);
	if (!ok)
		t_failures++;
	printf("%s %s hidden %d inter %d experts %d slots %d tokens %d pairs %d: max |err| %.2e "
	       "(max |ref| %.2e)\n", ok ? "ok  " : "FAIL", dt == KN_DTYPE_BF16 ? "bf16" : "f32 ",
	       hidden, inter, n_experts, n_slots, n_tok, np, max_err, max_ref);

	/* The same bits on one thread as on two (experts in parallel, or each product split
	 * by rows when there are fewer slots with tokens than threads), in both precisions. */
	float *o1 = malloc((size_t)n_tok * hidden * sizeof(float));
	float *o2 = malloc((size_t)n_tok * hidden * sizeof(float));
	int threads = kn_threads();
	for (int prec = KN_PRECISION_EXACT; prec <= KN_PRECISION_FAST; prec++) {
		kn_set_precision((enum kn_precision)prec);
		kn_set_threads(1);
		CHECK(moe_compute(s, 0, &b, o1) == 0);
		/* 2 and 3 threads; with no minimum work every layer takes the team, in one
		 * parallel region (whole slots per thread, or each product split over the
		 * team when fewer slots have tokens than there are threads). */
		for (int nt = 2; nt <= 3; nt++)
			for (int any = 0; any <= 1; any++) {
				kn_set_threads(nt);
				kn_set_min_parallel_work(any ? 0 : 32768);
				uint64_t r0 = kn_regions();
				CHECK(moe_compute(s, 0, &b, o2) == 0);
				CHECK(memcmp(o1, o2, (size_t)n_tok * hidden * sizeof(float)) == 0);
				CHECK(!any || np == 0 || kn_regions() - r0 == 1);
			}
		kn_set_min_parallel_work(32768);
	}
	kn_set_precision(KN_PRECISION_EXACT);
	kn_set_threads(threads);
	free(o1);
	free(o2);

	/* Refusals, nothing computed. */
	int32_t bad_slot = n_slots;
	struct moe_batch bad = { .n_tok = 1, .x = x, .pair_off = (int32_t[]){ 0, 1 },
				 .slot = &bad_slot, .weight = wt };
	CHECK(moe_compute(s, 0, &bad, out) == -EINVAL);
	struct model_ffn wrong = ex[0].ffn;
	wrong.gate.cols = hidden + 1;
	CHECK(moe_slot_set(s, 0, 0, 0, &wrong) == -EINVAL);
	CHECK(moe_slot_set(s, 1, 0, 0, &ex[0].ffn) == -EINVAL);  /* one MoE layer only */
	CHECK(moe_slot_set(s, 0, n_slots, 0, &ex[0].ffn) == -EINVAL);
	moe_slots_destroy(s);

	/* A slot never filled is refused when a token names it. */
	CHECK(moe_slots_create(&cfg, 2, &s) == 0);
	CHECK(moe_slot_expert(s, 0, 1) == -1);
	CHECK(moe_slot_set(s, 0, 0, 0, &ex[0].ffn) == 0);
	int32_t empty = 1;
	struct moe_batch e1 = { .n_tok = 1, .x = x, .pair_off = (int32_t[]){ 0, 1 },
				.slot = &empty, .weight = wt };
	CHECK(moe_compute(s, 0, &e1, out) == -EINVAL);
	moe_slots_destroy(s);

	for (int e = 0; e < n_experts; e++) {
		free((void *)ex[e].ffn.gate.data);
		free((void *)ex[e].ffn.up.data);
		free((void *)ex[e].ffn.down.data);
		free(ex[e].g);
		free(ex[e].u);
		free(ex[e].d);
	}
	free(ex);
	free(slot_expert);
	free(x);
	free(out);
	free(off);
	free(slot);
	free(wt);
	free(ref);
}

int main(void)
{
	g_rng = t_seed();
	run_case(KN_DTYPE_F32, 64, 32, 8, 8, 1, 4);
	run_case(KN_DTYPE_F32, 96, 40, 6, 9, 37, 6);
	run_case(KN_DTYPE_BF16, 128, 64, 16, 12, 64, 4);
	run_case(KN_DTYPE_BF16, 72, 24, 4, 4, 5, 8);
	run_case(KN_DTYPE_F32, 40, 8, 3, 5, 200, 3);
	run_case(KN_DTYPE_BF16, 256, 192, 8, 8, 48, 2); /* products big enough to split */
	run_case(KN_DTYPE_BF16, 96, 80, 1, 1, 30, 1);   /* one slot: its products on the team */
	printf("%s (%d failures)\n", t_failures ? "FAIL" : "ok", t_failures);
	return t_failures != 0;
}
