/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_place_load.c - sliding-window load accounting: window roll-over against a naive
 * history, per-worker sums, compute time, balancedness, bad input, and the loop
 * choose -> record -> profile -> solve.
 */
#include "place_test.h"

enum { L = 3, E = 10, W = 4, WINDOW = 5, STEPS = 23 };
static const int g_slots[W] = { 4, 3, 0, 5 }; /* worker 2 holds nothing */
#define S 12

/* naive history: every step's counters kept forever */
struct hist {
	uint64_t expert[STEPS][L][E];
	uint64_t slot[STEPS][L][S];
	uint64_t time[STEPS][W][L];
};

static void check_window(const struct co_load *ld, const struct hist *h, int cur)
{
	int first = FR_MAX(0, cur - WINDOW + 1);
	uint64_t got[S], want[S];

	CHECK(co_load_window_steps(ld) == cur - first + 1);
	for (int l = 0; l < L; l++) {
		CHECK(co_load_expert_tokens(ld, l, got) == 0);
		for (int e = 0; e < E; e++) {
			want[e] = 0;
			for (int t = first; t <= cur; t++)
				want[e] += h->expert[t][l][e];
			CHECK(got[e] == want[e]);
		}
		CHECK(co_load_slot_tokens(ld, l, got) == 0);
		for (int g = 0; g < S; g++) {
			want[g] = 0;
			for (int t = first; t <= cur; t++)
				want[g] += h->slot[t][l][g];
			CHECK(got[g] == want[g]);
		}
	}
	for (int l = -1; l < L; l++) {
		CHECK(co_load_worker_tokens(ld, l, got) == 0);
		for (int w = 0, base = 0; w < W; base += g_slots[w], w++) {
			uint64_t x = 0;
			for (int ll = l < 0 ? 0 : l; ll < (l < 0 ? L : l + 1); ll++)
				for (int t = first; t <= cur; t++)
					for (int g = base; g < base + g_slots[w]; g++)
						x += h->slot[t][ll][g];
			CHECK(got[w] == x);
		}
		CHECK(co_load_worker_time(ld, l, got) == 0);
		for (int w = 0; w < W; w++) {
			uint64_t x = 0;
			for (int ll = l < 0 ? 0 : l; ll < (l < 0 ? L : l + 1); ll++)
				for (int t = first; t <= cur; t++)
					x += h->time[t][w][ll];
			CHECK(got[w] == x);
		}
	}
}

static void test_window(uint64_t *rng)
{
	struct co_load *ld = NULL;
	struct fr_error err = { { 0 } };
	struct hist *h = t_xmalloc(sizeof(*h));
	int base[W + 1] = { 0 };

	for (int w = 0; w < W; w++)
		base[w + 1] = base[w] + g_slots[w];
	CHECK(co_load_create(L, E, W, g_slots, WINDOW, &ld, &err) == 0);
	if (!ld)
		return;
	for (int t = 0; t < STEPS; t++) {
		if (t)
			co_load_next_step(ld);
		int batches = t_rand_int(rng, 0, 4);
		for (int b = 0; b < batches; b++) {
			int l = t_rand_int(rng, 0, L - 1), n = t_rand_int(rng, 1, 40);
			int32_t ex[40];
			struct co_place_replica rep[40];
			for (int i = 0; i < n; i++) {
				int w;
				ex[i] = t_rand_int(rng, 0, E - 1);
				do
					w = t_rand_int(rng, 0, W - 1);
				while (!g_slots[w]);
				rep[i] = (struct co_place_replica){ w, t_rand_int(rng, 0, g_slots[w] - 1) };
				h->expert[t][l][ex[i]]++;
				h->slot[t][l][base[w] + rep[i].slot]++;
			}
			CHECK(co_load_record(ld, l, n, ex, rep) == 0);
		}
		for (int w = 0; w < W; w++)
			for (int l = 0; l < L; l++)
				if (g_slots[w] && fr_rand_unit(rng) < 0.7) {
					uint64_t ns = 1000 + fr_splitmix64(rng) % 1000000;
					CHECK(co_load_record_time(ld, w, l, ns) == 0);
					h->time[t][w][l] += ns;
				}
		check_window(ld, h, t);
	}
	printf("ok   window roll-over over %d steps (window %d)\n", STEPS, WINDOW);

	/* bad input counts nothing */
	int32_t ex[2] = { 1, E };
	struct co_place_replica rep[2] = { { 0, 0 }, { 0, 0 } };
	CHECK(co_load_record(ld, 0, 2, ex, rep) == -EINVAL);
	ex[1] = 2;
	rep[1] = (struct co_place_replica){ 2, 0 }; /* worker 2 has no slots */
	CHECK(co_load_record(ld, 0, 2, ex, rep) == -EINVAL);
	rep[1] = (struct co_place_replica){ 1, 3 };
	CHECK(co_load_record(ld, 0, 2, ex, rep) == -EINVAL);
	CHECK(co_load_record(ld, L, 1, ex, NULL) == -EINVAL);
	CHECK(co_load_record_time(ld, W, 0, 1) == -EINVAL);
	CHECK(co_load_record_time(ld, 0, -1, 1) == -EINVAL);
	check_window(ld, h, STEPS - 1);
	uint64_t tmp[S];
	CHECK(co_load_expert_tokens(ld, -1, tmp) == -EINVAL);
	CHECK(co_load_worker_tokens(ld, -2, tmp) == -EINVAL);

	/* after `window` empty steps everything has left */
	for (int i = 0; i < WINDOW; i++)
		co_load_next_step(ld);
	CHECK(co_load_worker_tokens(ld, -1, tmp) == 0);
	for (int w = 0; w < W; w++)
		CHECK(tmp[w] == 0);
	double bal = 0;
	CHECK(co_load_balancedness(ld, -1, CO_LOAD_TOKENS, &bal) == 0 && bal == 1.0);
	co_load_destroy(ld);
	free(h);
}

static void test_balancedness(void)
{
	static const int slots[3] = { 1, 1, 0 };
	struct co_load *ld = NULL;
	struct fr_error err = { { 0 } };
	double b = 0;

	CHECK(co_load_create(2, 2, 3, slots, 2, &ld, &err) == 0);
	if (!ld)
		return;
	int32_t ex[4] = { 0, 0, 0, 1 };
	struct co_place_replica rep[4] = { { 0, 0 }, { 0, 0 }, { 0, 0 }, { 1, 0 } };
	CHECK(co_load_record(ld, 0, 4, ex, rep) == 0);
	/* worker tokens 3 and 1 (worker 2 has no slots and does not count): mean 2, max 3 */
	CHECK(co_load_balancedness(ld, 0, CO_LOAD_TOKENS, &b) == 0);
	CHECK(fabs(b - 2.0 / 3.0) < 1e-12);
	CHECK(co_load_balancedness(ld, 1, CO_LOAD_TOKENS, &b) == 0 && b == 1.0);
	CHECK(co_load_record_time(ld, 0, 1, 100) == 0);
	CHECK(co_load_record_time(ld, 1, 1, 300) == 0);
	CHECK(co_load_balancedness(ld, 1, CO_LOAD_TIME, &b) == 0);
	CHECK(fabs(b - 200.0 / 300.0) < 1e-12);
	CHECK(co_load_balancedness(ld, 5, CO_LOAD_TIME, &b) == -EINVAL);
	CHECK(co_load_balancedness(ld, 0, (enum co_load_metric)7, &b) == -EINVAL);

	/* window 2: one step later still counted, two steps later gone */
	co_load_next_step(ld);
	CHECK(co_load_balancedness(ld, 0, CO_LOAD_TOKENS, &b) == 0 && fabs(b - 2.0 / 3.0) < 1e-12);
	co_load_next_step(ld);
	CHECK(co_load_balancedness(ld, 0, CO_LOAD_TOKENS, &b) == 0 && b == 1.0);
	CHECK(co_load_window_steps(ld) == 2);

	CHECK(co_load_record(ld, 0, 4, ex, rep) == 0);
	co_load_reset(ld);
	CHECK(co_load_window_steps(ld) == 1);
	uint64_t t[2];
	CHECK(co_load_expert_tokens(ld, 0, t) == 0 && t[0] == 0 && t[1] == 0);
	co_load_destroy(ld);

	/* bad shapes */
	int rc = co_load_create(2, 2, 3, slots, 0, &ld, &err);
	t_expect_err("window 0", rc, -EINVAL, &err, "window 0", NULL);
	static const int neg[3] = { 1, -2, 1 };
	rc = co_load_create(2, 2, 3, neg, 4, &ld, &err);
	t_expect_err("negative slots", rc, -EINVAL, &err, "worker 1", NULL);
	co_load_destroy(NULL);
	printf("ok   balancedness\n");
}

/* measured loads -> profile -> solver: the new placement balances what was measured */
static void test_loop(uint64_t *rng)
{
	enum { LL = 2, EE = 32, WW = 8, K = 4, TOK = 512 };
	int slots[WW];
	struct co_placement *p = NULL, *q = NULL;
	struct co_load *ld = NULL;
	struct fr_error err = { { 0 } };
	double pop[EE], prof[LL * EE];

	for (int w = 0; w < WW; w++)
		slots[w] = 5;
	/* the default layout: expert e on worker e % W, spare slots replicate e */
	CHECK(co_place_solve(&(struct co_place_problem){ LL, EE, WW, slots, NULL }, NULL, NULL, &p,
			     &err) == 0);
	CHECK(co_load_create(LL, EE, WW, slots, 8, &ld, &err) == 0);
	if (!p || !ld)
		goto out;
	t_zipf_row(rng, EE, 1.2, pop);
	double cdf[EE], tot = 0;
	for (int e = 0; e < EE; e++)
		cdf[e] = tot += pop[e];
	for (int step = 0; step < 8; step++) {
		if (step)
			co_load_next_step(ld);
		for (int l = 0; l < LL; l++) {
			int32_t ex[TOK * K];
			struct co_place_replica rep[TOK * K];
			int64_t wt[WW] = { 0 };
			for (int t = 0; t < TOK; t++)
				for (int k = 0; k < K; k++) {
					double u = fr_rand_unit(rng) * tot;
					int e = 0;
					while (e < EE - 1 && cdf[e] < u)
						e++;
					ex[t * K + k] = e;
				}
			CHECK(co_place_choose(p, l, TOK, K, ex, wt, rep) == 0);
			CHECK(co_load_record(ld, l, TOK * K, ex, rep) == 0);
		}
	}
	co_load_profile_get(ld, prof);
	double b0 = 0, b1 = 0;
	CHECK(co_load_balancedness(ld, 0, CO_LOAD_TOKENS, &b0) == 0);
	CHECK(co_place_solve(&(struct co_place_problem){ LL, EE, WW, slots, prof },
			     &(struct co_place_opts){ .migrate_tolerance = 0.01 }, p, &q, &err) == 0);
	if (q) {
		struct co_place_stats st[LL], st0[LL];
		CHECK(co_place_evaluate(q, prof, st) == 0);
		CHECK(co_place_evaluate(p, prof, st0) == 0);
		b1 = st[0].balancedness;
		printf("ok   measured profile: balancedness %.3f (tokens, uniform layout) -> "
		       "%.3f (planned on the profile, was %.3f), %ld slots move\n", b0, b1,
		       st0[0].balancedness, co_place_moves(p, q));
		CHECK(st[0].max_load <= st0[0].max_load);
		CHECK(b1 > 0.85);
	}
out:
	co_place_destroy(p);
	co_place_destroy(q);
	co_load_destroy(ld);
}

int main(void)
{
	uint64_t rng = t_seed();

	test_window(&rng);
	test_balancedness();
	test_loop(&rng);
	if (t_failures) {
		fprintf(stderr, "%d failure(s)\n", t_failures);
		return 1;
	}
	printf("all ok\n");
	return 0;
}
