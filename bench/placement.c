/* SPDX-License-Identifier: Apache-2.0 */
/*
 * placement - live rebalancing on drifting expert loads: Ferry's migration-aware solver
 * (prev = the placement in force) against EPLB's global policy solved from scratch, and
 * against a stale placement left alone.
 *
 * Traces: 61 MoE layers x 128 experts (DeepSeek-V3's shape); per layer a popularity curve
 * over ranks, Zipf or lognormal, scaled so that max / mean is 2, 4 or 8; experts hold
 * random ranks, and every window each of the top-16 ranks changes expert with probability
 * 0.12 (~12% of the hot set turns over per window) and every load gets +-5% noise.
 * Configurations: 8, 16 and 32 workers, with 0 spare slots and with 2 spare slots per
 * worker (16, 32, 64 spare). Window w: Ferry plans with prev = its plan of w-1 and EPLB
 * plans from scratch, both on window w's loads; the stale placement is Ferry's plan of
 * window 0. Each is evaluated on window w (what it was planned for) and on w+1 (what it
 * serves until the next rebalance). Means over windows 1..N-1; 24 windows by default, as
 * with 8 the per-row means moved by up to 0.007 between seeds.
 * Balancedness is mean / max of the worker loads as the dispatch splits a replicated
 * expert's tokens (to the least-loaded replica: co_place_worker_loads(), water-filling;
 * tests/placement/test_place_solver.c checks the model against co_place_choose()), the same
 * for all three placements; --eval dispatch replays sampled steps through co_place_choose()
 * instead and sums each worker's tokens over the window, --eval step takes the same steps'
 * balancedness one step at a time and averages it (a synchronous step lasts as long as its
 * most loaded worker: this is the share of the step's time the workers compute).
 *
 *   build/bench/placement [--seed S] [--windows N] [--tolerance T] [--max-moves-pct P]
 *                         [--eval fluid|dispatch|step] [--workers 8|16|32]
 *
 * Targets (checked at the end): Ferry's mean balancedness within 0.005 of EPLB's on w and on
 * w+1, <= 10% of slots moved per rebalance on average, never below stale, and a median
 * solve of the 61 layers <= 50 ms at 32 workers.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "placement/placement.h"

enum { L = 61, E = 128, HOT = 16 };

#define DRIFT_P 0.12
#define NOISE 0.05

enum skew_kind { SKEW_ZIPF, SKEW_LOGNORMAL };

struct skew {
	enum skew_kind kind;
	double ratio; /* max / mean of the popularity curve */
};

static const struct skew skews[] = {
	{ SKEW_ZIPF, 2 }, { SKEW_ZIPF, 4 }, { SKEW_ZIPF, 8 },
	{ SKEW_LOGNORMAL, 2 }, { SKEW_LOGNORMAL, 4 }, { SKEW_LOGNORMAL, 8 },
};

static double max_over_mean(const double *v, int n)
{
	double m = 0, s = 0;
	for (int i = 0; i < n; i++) {
		m = FR_MAX(m, v[i]);
		s += v[i];
	}
	return m * n / s;
}

/* curve[E], descending; z[E] (lognormal): sorted normal draws. Bisection on the exponent
 * (Zipf) or sigma (lognormal) until max / mean == ratio. */
static void make_curve(const struct skew *k, const double *z, double *curve)
{
	double lo = 0, hi = 8;

	for (int it = 0; it < 100; it++) {
		double x = (lo + hi) / 2;
		for (int r = 0; r < E; r++)
			curve[r] = k->kind == SKEW_ZIPF ? pow(r + 1, -x) : exp(x * z[r]);
		if (max_over_mean(curve, E) < k->ratio)
			lo = x;
		else
			hi = x;
	}
}

static double rand_normal(uint64_t *rng)
{
	double u = fr_rand_unit(rng), v = fr_rand_unit(rng);
	return sqrt(-2 * log(1 - u)) * cos(2 * M_PI * v);
}

static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* trace[n_win][L][E] for one skew, a function of (seed, skew). */
static void make_trace(uint64_t seed, const struct skew *k, int n_win, double *trace)
{
	uint64_t rng = seed * 0x9E3779B97F4A7C15ull + (uint64_t)k->kind * 131 + (uint64_t)k->ratio;
	static double curve[L][E];
	static int perm[L][E]; /* rank -> expert */
	double z[E];

	for (int l = 0; l < L; l++) {
		for (int r = 0; r < E; r++)
			perm[l][r] = r;
		for (int r = E - 1; r > 0; r--) {
			int j = (int)(fr_splitmix64(&rng) % (uint64_t)(r + 1)), t = perm[l][r];
			perm[l][r] = perm[l][j];
			perm[l][j] = t;
		}
	}
	for (int w = 0; w < n_win; w++) {
		for (int l = 0; l < L; l++) {
			double *row = trace + ((size_t)w * L + l) * E;
			if (w == 0) { /* a curve per layer, for the whole trace */
				for (int r = 0; r < E; r++)
					z[r] = rand_normal(&rng);
				qsort(z, E, sizeof(*z), cmp_desc);
				make_curve(k, z, curve[l]);
			}
			if (w > 0)
				for (int r = 0; r < HOT; r++)
					if (fr_rand_unit(&rng) < DRIFT_P) {
						int j = HOT + (int)(fr_splitmix64(&rng) % (E - HOT));
						int t = perm[l][r];
						perm[l][r] = perm[l][j];
						perm[l][j] = t;
					}
			for (int r = 0; r < E; r++)
				row[perm[l][r]] = 1000 * curve[l][r] *
						  (1 + NOISE * (2 * fr_rand_unit(&rng) - 1));
		}
	}
}

/* Steps of the --dispatch evaluation per (layer, window): STEP_TOK tokens of TOP_K experts,
 * DeepSeek-V3's top-8, drawn from the window's loads. */
enum { STEPS = 64, STEP_TOK = 64, TOP_K = 8 };

enum eval { EVAL_FLUID, EVAL_DISPATCH, EVAL_STEP };

static double balancedness_of(const int64_t *wt, const struct co_placement *p)
{
	double m = 0, mean = 0;
	int n = 0;
	for (int w = 0; w < p->n_workers; w++) {
		m = FR_MAX(m, (double)wt[w]);
		if (p->slots[w] > 0) {
			mean += (double)wt[w];
			n++;
		}
	}
	return m > 0 ? mean / n / m : 1.0;
}

static double mean_balancedness(const struct co_placement *p, const double *load,
				enum eval ev, uint64_t dispatch_seed)
{
	struct co_place_stats st[L];
	double s = 0;

	if (ev == EVAL_FLUID) {
		if (co_place_evaluate(p, load, st) < 0)
			abort();
		for (int l = 0; l < L; l++)
			s += st[l].balancedness;
		return s / L;
	}
	/* What co_place_choose() does with the tokens of STEPS steps, summed per worker
	 * (EVAL_DISPATCH) or step by step (EVAL_STEP): the same draws (dispatch_seed) for
	 * every placement it is called on. */
	uint64_t rng = dispatch_seed;
	static int32_t ex[STEP_TOK * TOP_K];
	static struct co_place_replica rep[STEP_TOK * TOP_K];
	int64_t wt[64], tot[64];
	double cdf[E];

	for (int l = 0; l < L; l++) {
		const double *row = load + (size_t)l * E;
		double per_step = 0;
		for (int e = 0; e < E; e++)
			cdf[e] = row[e] + (e ? cdf[e - 1] : 0);
		memset(tot, 0, sizeof(tot));
		for (int st_ = 0; st_ < STEPS; st_++) {
			for (int i = 0; i < STEP_TOK * TOP_K; i++) {
				double u = fr_rand_unit(&rng) * cdf[E - 1];
				int lo = 0, hi = E - 1;
				while (lo < hi) { /* first e with cdf[e] >= u */
					int mid = (lo + hi) / 2;
					if (cdf[mid] < u)
						lo = mid + 1;
					else
						hi = mid;
				}
				ex[i] = lo;
			}
			memset(wt, 0, sizeof(wt));
			if (co_place_choose(p, l, STEP_TOK, TOP_K, ex, wt, rep) < 0)
				abort();
			for (int w = 0; w < p->n_workers; w++)
				tot[w] += wt[w];
			per_step += balancedness_of(wt, p) / STEPS;
		}
		s += ev == EVAL_STEP ? per_step : balancedness_of(tot, p);
	}
	return s / L;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct row {
	double b[2][3];  /* [eval on w, w+1][ferry, eplb, stale] */
	double moved[2]; /* % of slots, ferry, eplb */
	double ms[2];    /* median solve ms, ferry, eplb */
};

struct bench_opts {
	uint64_t seed;
	int windows;
	double tolerance;
	double max_moves_pct; /* < 0: no cap */
	enum eval eval;       /* fluid model, or co_place_choose() on sampled steps */
	int only_workers;     /* > 0: only the configurations with this many workers */
};

static struct co_placement *solve(const struct co_place_problem *pb, enum co_place_algo algo,
				  double tol, const struct co_placement *prev, double *ms)
{
	struct co_place_opts o = { .algo = algo, .migrate_tolerance = tol };
	struct fr_error err = { { 0 } };
	struct co_placement *p = NULL;
	uint64_t t0 = fr_now_ns();

	if (co_place_solve(pb, &o, prev, &p, &err) < 0) {
		fprintf(stderr, "placement: %s\n", err.msg);
		exit(1);
	}
	*ms = (double)(fr_now_ns() - t0) / 1e6;
	return p;
}

static void run_config(const struct bench_opts *bo, int W, int spare, const double *trace,
		       struct row *r)
{
	int slots[32], N = bo->windows;
	struct co_placement *fp = NULL, *ep = NULL, *stale = NULL;
	double *ms_f = calloc((size_t)N, sizeof(double));
	double *ms_e = calloc((size_t)N, sizeof(double));
	int n_ms = 0;

	if (!ms_f || !ms_e)
		abort();
	memset(r, 0, sizeof(*r));
	for (int w = 0; w < W; w++)
		slots[w] = E / W + (w < spare % W ? 1 : 0) + spare / W;
	for (int win = 0; win < N; win++) {
		const double *now = trace + (size_t)win * L * E, *next = now + (size_t)L * E;
		struct co_place_problem pb = { L, E, W, slots, now };
		double tf, te;
		struct co_placement *f = solve(&pb, CO_PLACE_ALGO_FERRY, bo->tolerance, fp, &tf);
		if (fp && bo->max_moves_pct >= 0) {
			long cap = (long)(bo->max_moves_pct / 100 * L * f->total_slots);
			uint64_t t0 = fr_now_ns();
			if (co_place_cap_moves(f, fp, now, 1, cap) < 0)
				abort();
			tf += (double)(fr_now_ns() - t0) / 1e6;
		}
		struct co_placement *e = solve(&pb, CO_PLACE_ALGO_EPLB, 0, NULL, &te);
		if (win == 0) {
			stale = f;
		} else {
			const struct co_placement *pl[3] = { f, e, stale };
			double cells = (double)L * f->total_slots;
			uint64_t ds = bo->seed * 1000003u + (uint64_t)win + 1;
			for (int i = 0; i < 3; i++) {
				r->b[0][i] += mean_balancedness(pl[i], now, bo->eval, ds) / (N - 1);
				r->b[1][i] += mean_balancedness(pl[i], next, bo->eval, ds + 7) / (N - 1);
			}
			r->moved[0] += 100.0 * (double)co_place_moves(fp, f) / cells / (N - 1);
			r->moved[1] += 100.0 * (double)co_place_moves(ep, e) / cells / (N - 1);
			ms_f[n_ms] = tf;
			ms_e[n_ms++] = te;
		}
		if (fp != stale)
			co_place_destroy(fp);
		co_place_destroy(ep);
		fp = f;
		ep = e;
	}
	r->ms[0] = median(ms_f, n_ms);
	r->ms[1] = median(ms_e, n_ms);
	if (fp != stale)
		co_place_destroy(fp);
	co_place_destroy(ep);
	co_place_destroy(stale);
	free(ms_f);
	free(ms_e);
}

static void usage(FILE *f)
{
	fprintf(f, "Usage: placement [--seed S] [--windows N] [--tolerance T] [--max-moves-pct P]\n"
		   "                 [--eval fluid|dispatch|step] [--workers 8|16|32]\n"
		   "  --seed S           trace seed (default 1)\n"
		   "  --windows N        rebalance windows, >= 2 (default 24)\n"
		   "  --tolerance T      Ferry's migrate_tolerance (default 0.003)\n"
		   "  --max-moves-pct P  cap Ferry's moves per rebalance at P%% of the slots\n"
		   "                     (co_place_cap_moves; default: no cap)\n"
		   "  --eval fluid       balancedness of the loads as co_place_evaluate() models\n"
		   "                     the dispatch (water-filling; default)\n"
		   "  --eval dispatch    ... as co_place_choose() splits sampled steps (64 steps of\n"
		   "                     64 tokens x top-8 per layer and window; slower), each\n"
		   "                     worker's tokens summed over the window\n"
		   "  --eval step        the same steps, balancedness per step, averaged (a step\n"
		   "                     lasts as long as its most loaded worker)\n"
		   "  --workers N        only the configurations with N workers (default: 8, 16\n"
		   "                     and 32)\n");
}

int main(int argc, char **argv)
{
	struct bench_opts bo = { .seed = 1, .windows = 24, .tolerance = 0.003,
				 .max_moves_pct = -1 };
	static const int workers[] = { 8, 16, 32 };
	bool ok_bal = true, ok_moves = true, ok_stale = true, ok_time = true;
	double worst_d[2] = { INFINITY, INFINITY }, worst_moved = 0, worst_ms = 0;
	int64_t v;

	for (int i = 1; i < argc; i += 2) { /* options come in pairs: --name value */
		const char *a = argv[i], *x = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		}
		if (!x) {
			usage(stderr);
			return 2;
		}
		if (!strcmp(a, "--seed") && fr_parse_i64(x, 0, INT64_MAX, &v) == 0)
			bo.seed = (uint64_t)v;
		else if (!strcmp(a, "--windows") && fr_parse_i64(x, 2, 1000, &v) == 0)
			bo.windows = (int)v;
		else if (!strcmp(a, "--tolerance") && fr_parse_double(x, &bo.tolerance) == 0 &&
			 bo.tolerance >= 0 && isfinite(bo.tolerance))
			;
		else if (!strcmp(a, "--max-moves-pct") && fr_parse_double(x, &bo.max_moves_pct) == 0 &&
			 bo.max_moves_pct >= 0 && bo.max_moves_pct <= 100)
			;
		else if (!strcmp(a, "--eval") && !strcmp(x, "fluid"))
			bo.eval = EVAL_FLUID;
		else if (!strcmp(a, "--eval") && !strcmp(x, "dispatch"))
			bo.eval = EVAL_DISPATCH;
		else if (!strcmp(a, "--eval") && !strcmp(x, "step"))
			bo.eval = EVAL_STEP;
		else if (!strcmp(a, "--workers") && fr_parse_i64(x, 8, 32, &v) == 0 &&
			 (v == 8 || v == 16 || v == 32))
			bo.only_workers = (int)v;
		else {
			fprintf(stderr, "placement: bad option %s %s\n", a, x);
			usage(stderr);
			return 2;
		}
	}
	int N = bo.windows, n_skews = (int)FR_ARRAY_SIZE(skews);
	double *traces = malloc(sizeof(double) * (size_t)n_skews * (N + 1) * L * E);
	if (!traces)
		return 1;
	for (int k = 0; k < n_skews; k++)
		make_trace(bo.seed, &skews[k], N + 1, traces + (size_t)k * (N + 1) * L * E);

	printf("placement: %d layers x %d experts, %d windows (means over rebalances 1..%d), "
	       "seed %llu, Ferry migrate_tolerance %g%s\n", L, E, N, N - 1,
	       (unsigned long long)bo.seed, bo.tolerance,
	       bo.max_moves_pct >= 0 ? ", moves capped" : "");
	static const char *const how[] = {
		[EVAL_FLUID] = "of the window, replicas' shares as the dispatch splits them, "
			       "modelled (water-filling)",
		[EVAL_DISPATCH] = "of the window, as co_place_choose() splits sampled steps "
				  "(--eval dispatch)",
		[EVAL_STEP] = "of each sampled step as co_place_choose() splits it, averaged "
			      "over the steps (--eval step)",
	};
	printf("balancedness = mean/max worker load %s (1 = perfect); F = Ferry (prev = "
	       "placement in force), EPLB = from scratch, stale = window 0's plan\n",
	       how[bo.eval]);
	for (size_t wi = 0; wi < FR_ARRAY_SIZE(workers); wi++) {
		if (bo.only_workers && workers[wi] != bo.only_workers)
			continue;
		for (int sp = 0; sp < 2; sp++) {
			int W = workers[wi], spare = sp ? 2 * W : 0;
			printf("\n%d workers, %d slots per layer (%d spare)\n", W, E + spare, spare);
			printf("%-12s | %-22s | %-22s | %-15s | %-13s | %s\n", "skew",
			       "balancedness on w", "balancedness on w+1", "F - EPLB",
			       "% slots moved", "solve ms (61 layers)");
			printf("%-12s | %6s %6s %6s   | %6s %6s %6s   | %7s %7s | %6s %6s | %6s %6s\n",
			       "", "F", "EPLB", "stale", "F", "EPLB", "stale", "w", "w+1", "F", "EPLB",
			       "F", "EPLB");
			for (int k = 0; k < n_skews; k++) {
				struct row r;
				char name[16];
				run_config(&bo, W, spare, traces + (size_t)k * (N + 1) * L * E, &r);
				snprintf(name, sizeof(name), "%s %gx",
					 skews[k].kind == SKEW_ZIPF ? "zipf" : "lognormal",
					 skews[k].ratio);
				double d0 = r.b[0][0] - r.b[0][1], d1 = r.b[1][0] - r.b[1][1];
				printf("%-12s | %6.4f %6.4f %6.4f   | %6.4f %6.4f %6.4f   | %+7.4f "
				       "%+7.4f | %6.2f %6.2f | %6.1f %6.1f\n", name, r.b[0][0],
				       r.b[0][1], r.b[0][2], r.b[1][0], r.b[1][1], r.b[1][2], d0, d1,
				       r.moved[0], r.moved[1], r.ms[0], r.ms[1]);
				worst_d[0] = FR_MIN(worst_d[0], d0);
				worst_d[1] = FR_MIN(worst_d[1], d1);
				worst_moved = FR_MAX(worst_moved, r.moved[0]);
				ok_bal &= d0 >= -0.005 && d1 >= -0.005;
				ok_moves &= r.moved[0] <= 10;
				ok_stale &= r.b[0][0] >= r.b[0][2] - 1e-9 &&
					    r.b[1][0] >= r.b[1][2] - 1e-9;
				if (W == 32) {
					worst_ms = FR_MAX(worst_ms, r.ms[0]);
					ok_time &= r.ms[0] <= 50;
				}
			}
		}
	}
	printf("\ntargets:\n");
	printf("  %-4s mean balancedness within 0.005 of EPLB's (worst F - EPLB: %+.4f on w, "
	       "%+.4f on w+1)\n", ok_bal ? "met" : "MISS", worst_d[0], worst_d[1]);
	printf("  %-4s <= 10%% of slots moved per rebalance on average (worst row %.2f%%)\n",
	       ok_moves ? "met" : "MISS", worst_moved);
	printf("  %-4s never below stale, on w and on w+1\n", ok_stale ? "met" : "MISS");
	if (bo.only_workers && bo.only_workers != 32)
		printf("  --   median solve <= 50 ms at 32 workers (no 32-worker rows run)\n");
	else
		printf("  %-4s median solve <= 50 ms at 32 workers (worst row %.1f ms)\n",
		       ok_time ? "met" : "MISS", worst_ms);
	free(traces);
	return 0;
}
