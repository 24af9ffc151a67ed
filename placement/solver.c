/* SPDX-License-Identifier: Apache-2.0 */
/*
 * solver.c - co_place_solve(): the expert placement solver, its per-layer working state and
 * the per-layer driver.
 *
 * Per layer the solver builds a few candidate layouts (EPLB packing, distinct-preferring
 * packing, the previous layout, a local search from it), improves them by local search on
 * the most loaded worker and keeps the best, trading load for moved experts when asked.
 * With a previous placement and a tolerance it first searches from the previous layout
 * alone (migration-aware, search.c) and builds the candidates only when that falls short.
 * The steps live beside it: eplb.c (replication, packing), distinct.c (the min_distinct
 * guarantee), search.c (local search), align.c (alignment with the previous layout).
 */
#include "placement/placement-internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== per-layer working state ============================================================= */

void co_place__ws_recompute_worker(struct ws *s, int w)
{
	double x = 0;
	for (int g = s->base[w]; g < s->base[w + 1]; g++)
		x += ws_weight(s, s->se[g]);
	s->wl[w] = x;
}

/* Loads a complete layout se[S] (copied unless it is s->se) and derives everything else. */
static void ws_set(struct ws *s, const int32_t *se)
{
	if (s->cnt) /* clear what the old lists recorded */
		for (int e = 0; e < s->E; e++)
			for (int g = s->head[e]; g >= 0; g = s->nxt[g])
				s->cnt[(size_t)e * s->W + s->sw[g]] = 0;
	if (se != s->se)
		memcpy(s->se, se, sizeof(*se) * (size_t)s->S);
	for (int e = 0; e < s->E; e++) {
		s->head[e] = -1;
		s->rep[e] = 0;
		s->ndist[e] = 0;
	}
	/* insert in reverse so that lists come out in slot order (irrelevant but tidy) */
	for (int g = s->S - 1; g >= 0; g--) {
		int e = s->se[g];
		s->prv[g] = -1;
		s->nxt[g] = s->head[e];
		if (s->head[e] >= 0)
			s->prv[s->head[e]] = g;
		s->head[e] = g;
		s->rep[e]++;
		if (s->cnt)
			s->cnt[(size_t)e * s->W + s->sw[g]]++;
	}
	for (int w = 0; w < s->W; w++) {
		s->stamp_gen++;
		for (int g = s->base[w]; g < s->base[w + 1]; g++) {
			int e = s->se[g];
			if (s->ecount[e] != s->stamp_gen) {
				s->ecount[e] = s->stamp_gen;
				s->ndist[e]++;
			}
		}
	}
	/* ecount doubled as a stamp array above: give it back zeroed */
	memset(s->ecount, 0, sizeof(*s->ecount) * (size_t)s->E);
	s->stamp_gen = 0;
	memset(s->stamp, 0, sizeof(*s->stamp) * (size_t)s->W);
	for (int w = 0; w < s->W; w++)
		co_place__ws_recompute_worker(s, w);
}

void co_place__ws_assign(struct ws *s, int g, int e)
{
	int x = s->se[g], w = s->sw[g];

	if (x == e)
		return;
	if (ws_count_on(s, x, w) == 1)
		s->ndist[x]--;
	if (s->prv[g] >= 0)
		s->nxt[s->prv[g]] = s->nxt[g];
	else
		s->head[x] = s->nxt[g];
	if (s->nxt[g] >= 0)
		s->prv[s->nxt[g]] = s->prv[g];
	s->rep[x]--;
	if (s->cnt)
		s->cnt[(size_t)x * s->W + w]--;

	if (ws_count_on(s, e, w) == 0)
		s->ndist[e]++;
	if (s->cnt)
		s->cnt[(size_t)e * s->W + w]++;
	s->prv[g] = -1;
	s->nxt[g] = s->head[e];
	if (s->head[e] >= 0)
		s->prv[s->head[e]] = g;
	s->head[e] = g;
	s->rep[e]++;
	s->se[g] = e;
}

double co_place__ws_max(const struct ws *s, int *ret_w)
{
	double m = -1;
	int arg = 0;
	for (int w = 0; w < s->W; w++)
		if (s->wl[w] > m) {
			m = s->wl[w];
			arg = w;
		}
	if (ret_w)
		*ret_w = arg;
	return m;
}

double co_place__ws_wf_max(struct ws *s)
{
	int n = 0;
	for (int e = 0; e < s->E; e++) {
		s->wf_off[e] = n;
		for (int g = s->head[e]; g >= 0; g = s->nxt[g])
			s->wf_wk[n++] = s->sw[g];
	}
	s->wf_off[s->E] = n;
	return co_place__waterfill(s->E, s->W, s->load, NULL, s->wf_off, s->wf_wk, WF_EPS_MODEL,
				   s->wf_wl, s->wf_flow, s->wf_mark, s->wf_lv);
}

/* How much more spread the worker loads of a kept layout may be than EPLB's packing (squared
 * coefficient of variation, relative and absolute; spread_target()). A step lasts as long as
 * its busiest worker: with several workers just below the largest load, a step's swings
 * make one of them the busiest more often than with the others well below it, so layouts
 * with the same largest load differ step by step (bench/placement --eval step: up to 0.03
 * of balancedness at 16 and 32 workers without spare slots). */
#define SPREAD_SLACK 0.05
#define SPREAD_FLOOR 1e-4

/* The spread of the worker loads (sum of squares, equal split) a kept layout may have: that
 * of the packing in s (EPLB's) with its squared coefficient of variation SPREAD_SLACK
 * wider, plus SPREAD_FLOOR. */
static double spread_target(const struct ws *s)
{
	double sum = 0;
	int n = 0;
	for (int w = 0; w < s->W; w++) {
		sum += s->wl[w];
		n += s->cap[w] > 0;
	}
	if (n == 0 || sum <= 0)
		return INFINITY;
	double m2 = (sum / n) * (sum / n), cv2 = ws_ss(s) / (n * m2) - 1;
	return n * m2 * (1 + FR_MAX(cv2, 0) * (1 + SPREAD_SLACK) + SPREAD_FLOOR);
}

static double ws_heaviest(const struct ws *s)
{
	double h = 0;
	for (int e = 0; e < s->E; e++)
		h = FR_MAX(h, ws_weight(s, e));
	return h;
}

static long ws_dups(const struct ws *s)
{
	long d = 0;
	for (int e = 0; e < s->E; e++)
		d += s->rep[e] - s->ndist[e];
	return d;
}

/* ==== the per-layer driver ================================================================= */

enum { CAND_EPLB, CAND_DISTINCT, CAND_CYCLIC, CAND_PREV, CAND_WARM, CAND__COUNT };

struct cand {
	bool ok;
	double max;    /* water-filled (the dispatch's split) */
	double even;   /* with every replica an equal share */
	double heavy;  /* heaviest replica */
	long moves, dups;
	int32_t *se;   /* [S], aligned */
};

/* Largest experts x workers for the dense count matrix (64 MiB). */
#define SOLVER_DENSE_MAX ((size_t)1 << 24)

struct solver {
	struct ws s;
	struct align_scratch as;
	struct cand c[CAND__COUNT];
	int32_t *order_rep;   /* [E] replica counts from replication */
	void *blocks[64];
	int n_blocks;
};

static void *solver_alloc(struct solver *sv, size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (p)
		sv->blocks[sv->n_blocks++] = p;
	return p;
}

static void solver_fini(struct solver *sv)
{
	for (int i = 0; i < sv->n_blocks; i++)
		free(sv->blocks[i]);
}

static int solver_init(struct solver *sv, const struct co_placement *p, int need)
{
	struct ws *s = &sv->s;
	size_t E = (size_t)p->n_experts, W = (size_t)p->n_workers, S = (size_t)p->total_slots;
	struct align_scratch *as = &sv->as;

	memset(sv, 0, sizeof(*sv));
	s->E = p->n_experts;
	s->W = p->n_workers;
	s->S = p->total_slots;
	s->need = FR_MAX(need, 1);
	s->cap = p->slots;
	s->base = p->slot_base;
	s->sw = p->slot_worker;
	if (!(s->se = solver_alloc(sv, S, sizeof(int32_t))) ||
	    !(s->rep = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->ndist = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->head = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->nxt = solver_alloc(sv, S, sizeof(int32_t))) ||
	    !(s->prv = solver_alloc(sv, S, sizeof(int32_t))) ||
	    !(s->wl = solver_alloc(sv, W, sizeof(double))) ||
	    !(s->delta = solver_alloc(sv, W, sizeof(double))) ||
	    !(s->touched = solver_alloc(sv, W, sizeof(int32_t))) ||
	    !(s->stamp = solver_alloc(sv, W, sizeof(int32_t))) ||
	    !(s->fill = solver_alloc(sv, W, sizeof(int32_t))) ||
	    !(s->xcnt = solver_alloc(sv, W, sizeof(int32_t))) ||
	    !(s->zv1 = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->zv2 = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->zb1 = solver_alloc(sv, E, sizeof(double))) ||
	    !(s->zb2 = solver_alloc(sv, E, sizeof(double))) ||
	    !(s->wmax = solver_alloc(sv, W, sizeof(double))) ||
	    !(s->items = solver_alloc(sv, S, sizeof(struct item))) ||
	    !(s->heap = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->ecount = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(s->tmp = solver_alloc(sv, S, sizeof(int32_t))) ||
	    !(s->wf_off = solver_alloc(sv, E + 1, sizeof(int32_t))) ||
	    !(s->wf_wk = solver_alloc(sv, S, sizeof(int32_t))) ||
	    !(s->wf_flow = solver_alloc(sv, S, sizeof(double))) ||
	    !(s->wf_wl = solver_alloc(sv, W, sizeof(double))) ||
	    !(s->wf_mark = solver_alloc(sv, W, sizeof(int32_t))) ||
	    !(s->wf_lv = solver_alloc(sv, 2 * S, sizeof(double))) ||
	    !(sv->order_rep = solver_alloc(sv, E, sizeof(int32_t))) ||
	    !(as->cost = solver_alloc(sv, FR_MIN(W, ALIGN_HUNGARIAN_MAX) *
					       FR_MIN(W, ALIGN_HUNGARIAN_MAX), sizeof(long))) ||
	    !(as->u = solver_alloc(sv, W + 1, sizeof(long))) ||
	    !(as->v = solver_alloc(sv, W + 1, sizeof(long))) ||
	    !(as->minv = solver_alloc(sv, W + 1, sizeof(long))) ||
	    !(as->p = solver_alloc(sv, W + 1, sizeof(int))) ||
	    !(as->way = solver_alloc(sv, W + 1, sizeof(int))) ||
	    !(as->match = solver_alloc(sv, W, sizeof(int))) ||
	    !(as->members = solver_alloc(sv, W, sizeof(int))) ||
	    !(as->used = solver_alloc(sv, 2 * W + 2, 1)) ||
	    !(as->perm = solver_alloc(sv, W, sizeof(int32_t))))
		return -ENOMEM;
	for (int i = 0; i < CAND__COUNT; i++)
		if (!(sv->c[i].se = solver_alloc(sv, S, sizeof(int32_t))))
			return -ENOMEM;
	/* O(1) replica counts where the matrix is small (it is for real models) */
	if (E * W <= SOLVER_DENSE_MAX && !(s->cnt = solver_alloc(sv, E * W, sizeof(int32_t))))
		return -ENOMEM;
	for (size_t e = 0; e < E; e++)
		s->head[e] = -1; /* empty lists: ws_set() clears cnt through them */
	return 0;
}

/* Finishes a candidate from the layout now in s->se: quality, then alignment and moves. */
static void cand_take(struct solver *sv, int id, const struct prev_layer *pv, bool aligned)
{
	struct ws *s = &sv->s;
	struct cand *c = &sv->c[id];

	c->ok = true;
	c->max = co_place__ws_wf_max(s);
	c->even = co_place__ws_max(s, NULL);
	c->heavy = ws_heaviest(s);
	c->dups = ws_dups(s);
	if (aligned)
		memcpy(c->se, s->se, sizeof(*c->se) * (size_t)s->S);
	else
		co_place__align_layout(s, s->se, pv, &sv->as, c->se);
	c->moves = co_place__layout_moves(s, c->se, pv);
}

static bool cand_robust(const struct cand *c, double even_target, double heavy_cap)
{
	return c->even <= even_target * (1 + 1e-12) && c->heavy <= heavy_cap;
}

static int item_asc(const void *pa, const void *pb)
{
	const struct item *a = pa, *b = pb;
	return (a->w > b->w) - (a->w < b->w);
}

/* No layout of this layer does better than the mean load of the workers with slots, nor
 * than the heaviest replica once the replication (s->rep, D'Hondt: the smallest such
 * maximum for every expert with >= need replicas) is done. */
static double layer_lower_bound(const struct ws *s)
{
	double sum = 0, heavy = 0;
	int n = 0;

	for (int e = 0; e < s->E; e++) {
		sum += s->load[e];
		heavy = FR_MAX(heavy, ws_weight(s, e));
	}
	for (int w = 0; w < s->W; w++)
		n += s->cap[w] > 0;
	double lb = FR_MAX(sum / FR_MAX(n, 1), heavy);
	/* Without spare slots every expert has one replica, its whole load: the heaviest shares
	 * a worker of at least the smallest slot count with that many - 1 of the lightest. */
	if (s->need == 1 && s->S == s->E) {
		int cmin = 0, k = 0, top = 0;
		for (int w = 0; w < s->W; w++)
			if (s->cap[w] > 0 && (!cmin || s->cap[w] < cmin))
				cmin = s->cap[w];
		for (int e = 0; e < s->E; e++) {
			s->items[k++] = (struct item){ ws_weight(s, e), e };
			if (ws_weight(s, e) > ws_weight(s, top))
				top = e;
		}
		qsort(s->items, (size_t)k, sizeof(*s->items), item_asc);
		double x = ws_weight(s, top);
		for (int i = 0, got = 0; i < k && got < cmin - 1; i++)
			if (s->items[i].e != top) {
				x += s->items[i].w;
				got++;
			}
		lb = FR_MAX(lb, x);
	}
	return lb;
}

/* How far above EPLB's packing the equal split of a kept or searched layout may stay. Each
 * step's tokens are a sample of the window's load: a layout balanced only through uneven
 * splits (water-filled) has spent the slack the dispatch needs to absorb a step's swings,
 * and measured on sampled steps (bench/placement --eval dispatch) it trails EPLB's layout,
 * which is balanced under an equal split already. */
#define EVEN_SLACK 0.02
/* How much heavier than replication's heaviest a replica may get (struct ws heavy_cap): an
 * expert whose replicas are heavy has few of them, and a swing of its load then lands on
 * few workers. With EVEN_SLACK this keeps kept layouts as robust to the next window's
 * drift as a fresh EPLB solve (bench/placement, balancedness on w+1). */
#define HEAVY_SLACK 0.05

static int solve_layer(struct solver *sv, const double *load, enum co_place_algo algo,
		       const struct prev_layer *pv, bool prev_same_slots, double tol,
		       int32_t *out)
{
	struct ws *s = &sv->s;
	bool ls = algo == CO_PLACE_ALGO_FERRY, warm_done = false;
	double even_target = INFINITY, ss_target = INFINITY;
	int best = -1;

	s->load = load;
	for (int i = 0; i < CAND__COUNT; i++)
		sv->c[i].ok = false;

	co_place__replicate(s, s->need);
	memcpy(sv->order_rep, s->rep, sizeof(*s->rep) * (size_t)s->E);
	s->heavy_cap = ws_heaviest(s) * (1 + HEAVY_SLACK);
	/* Migration-aware path: from prev's layout with its replica counts refreshed, move only
	 * until the largest load (water-filled) is within the tolerance of a lower bound or as
	 * low as EPLB's packing gets it; the full candidates only when that falls short. */
	if (ls && pv && prev_same_slots && tol > 0) {
		double target = layer_lower_bound(s) * (1 + tol);
		/* no further than a from-scratch solve by EPLB's policy would get: balance it
		 * would not give is not worth moving experts for; and no less robust to a
		 * step's swings than that packing (EVEN_SLACK) */
		co_place__pack_lpt(s, false, sv->order_rep);
		ws_set(s, s->se);
		if (co_place__repair_distinct(s)) {
			target = FR_MAX(target, co_place__ws_wf_max(s));
			even_target = co_place__ws_max(s, NULL) * (1 + EVEN_SLACK);
			ss_target = spread_target(s);
		}
		even_target = FR_MAX(even_target, target);
		ws_set(s, pv->se);
		if (co_place__repair_distinct(s)) {
			/* prev meets the bounds as it is: nothing to buy by moving */
			if (!memcmp(s->se, pv->se, sizeof(*s->se) * (size_t)s->S) &&
			    ws_heaviest(s) <= s->heavy_cap &&
			    co_place__ws_max(s, NULL) <= even_target * (1 + 1e-12) &&
			    ws_ss(s) <= ss_target &&
			    co_place__ws_wf_max(s) <= target * (1 + 1e-12)) {
				memcpy(out, s->se, sizeof(*out) * (size_t)s->S);
				return 0;
			}
			co_place__refresh_replicas(s, sv->order_rep);
			co_place__local_search_warm(s, pv->se, target, even_target, ss_target);
			if (co_place__ws_wf_max(s) <= target * (1 + 1e-12) &&
			    co_place__ws_max(s, NULL) <= even_target * (1 + 1e-12)) {
				memcpy(out, s->se, sizeof(*out) * (size_t)s->S);
				return 0;
			}
			cand_take(sv, CAND_WARM, pv, true);
			warm_done = true;
		}
	}
	for (int id = CAND_EPLB; id <= (ls ? CAND_DISTINCT : CAND_EPLB); id++) {
		co_place__pack_lpt(s, id == CAND_DISTINCT, sv->order_rep);
		ws_set(s, s->se);
		if (!co_place__repair_distinct(s))
			continue;
		if (ls && id == CAND_EPLB && even_target == INFINITY)
			even_target = co_place__ws_max(s, NULL) * (1 + EVEN_SLACK);
		if (ls)
			co_place__local_search(s);
		cand_take(sv, id, pv, false);
	}
	if (!sv->c[CAND_EPLB].ok && !sv->c[CAND_DISTINCT].ok) {
		co_place__pack_cyclic(s, sv->order_rep);
		ws_set(s, s->se);
		if (ls)
			co_place__local_search(s);
		cand_take(sv, CAND_CYCLIC, pv, false);
	}
	if (pv && prev_same_slots) {
		ws_set(s, pv->se);
		if (co_place__repair_distinct(s)) {
			cand_take(sv, CAND_PREV, pv, true);
			if (ls && !warm_done) {
				co_place__local_search(s);
				cand_take(sv, CAND_WARM, pv, true);
			}
		}
	}

	/* best load, then (within tolerance) fewest moves, then load, then fewest duplicates;
	 * among those within tolerance, the robust ones first: equal split within
	 * even_target, replicas no heavier than heavy_cap (EPLB's packing after local search
	 * always is both) */
	double best_max = INFINITY;
	for (int i = 0; i < CAND__COUNT; i++)
		if (sv->c[i].ok)
			best_max = FR_MIN(best_max, sv->c[i].max);
	double limit = best_max * (1 + (pv ? tol : 0)) + 1e-12 * best_max;
	bool any_robust = false;
	for (int i = 0; i < CAND__COUNT; i++)
		any_robust |= sv->c[i].ok && sv->c[i].max <= limit &&
			      cand_robust(&sv->c[i], even_target, s->heavy_cap);
	for (int i = 0; i < CAND__COUNT; i++) {
		const struct cand *c = &sv->c[i], *b = best >= 0 ? &sv->c[best] : NULL;
		if (!c->ok || c->max > limit ||
		    (any_robust && !cand_robust(c, even_target, s->heavy_cap)))
			continue;
		if (!b || c->moves < b->moves ||
		    (c->moves == b->moves && (c->max < b->max * (1 - 1e-12) ||
					      (c->max <= b->max * (1 + 1e-12) &&
					       c->dups < b->dups))))
			best = i;
	}
	if (best < 0)
		return -EINVAL; /* cannot happen: the cyclic layout always exists */
	memcpy(out, sv->c[best].se, sizeof(*out) * (size_t)s->S);
	return 0;
}

int co_place_solve(const struct co_place_problem *pb, const struct co_place_opts *opts,
		   const struct co_placement *prev, struct co_placement **ret,
		   struct fr_error *err)
{
	static const struct co_place_opts defaults = { 0 };
	struct co_placement *p = NULL;
	struct solver sv = { 0 };
	bool same_slots = false;
	double *uniform = NULL;
	long distinct_cap = 0;
	int need, rc, with_slots = 0;

	if (!pb)
		return fr_error_set(err, -EINVAL, "placement: no problem given");
	if (!opts)
		opts = &defaults;
	if (opts->algo != CO_PLACE_ALGO_FERRY && opts->algo != CO_PLACE_ALGO_EPLB)
		return fr_error_set(err, -EINVAL, "placement: unknown algorithm %d",
				    (int)opts->algo);
	if (!isfinite(opts->migrate_tolerance) || opts->migrate_tolerance < 0)
		return fr_error_set(err, -EINVAL,
				    "placement: migrate_tolerance %g must be finite and >= 0",
				    opts->migrate_tolerance);
	if (opts->min_distinct < 0)
		return fr_error_set(err, -EINVAL, "placement: min_distinct %d is negative",
				    opts->min_distinct);
	rc = co_place__alloc(pb->n_layers, pb->n_experts, pb->n_workers, pb->slots, &p, err);
	if (rc < 0)
		return rc;
	need = FR_MAX(opts->min_distinct, 1);
	for (int w = 0; w < p->n_workers; w++) {
		with_slots += p->slots[w] > 0;
		distinct_cap += FR_MIN(p->slots[w], p->n_experts);
	}
	if (need > with_slots) {
		rc = fr_error_set(err, -EINVAL,
				  "placement impossible: min_distinct %d needs %d workers with "
				  "slots, only %d of %d workers have any", need, need, with_slots,
				  p->n_workers);
		goto fail;
	}
	if ((long)need * p->n_experts > p->total_slots) {
		rc = fr_error_set(err, -EINVAL,
				  "placement impossible: min_distinct %d needs %ld slots per layer "
				  "(%d experts x %d), the workers have %d", need,
				  (long)need * p->n_experts, p->n_experts, need, p->total_slots);
		goto fail;
	}
	if (distinct_cap < (long)need * p->n_experts) {
		rc = fr_error_set(err, -EINVAL,
				  "placement impossible: min_distinct %d needs %ld (expert, worker) "
				  "pairs, but with slots this uneven the workers can host only %ld "
				  "distinct ones", need, (long)need * p->n_experts, distinct_cap);
		goto fail;
	}
	if (pb->load) {
		for (int l = 0; l < p->n_layers; l++) {
			double sum = 0;
			for (int e = 0; e < p->n_experts; e++) {
				double x = pb->load[(size_t)l * p->n_experts + e];
				if (!isfinite(x) || x < 0) {
					rc = fr_error_set(err, -EINVAL,
							  "placement: load of layer %d expert %d "
							  "is %g: must be finite and >= 0", l, e,
							  x);
					goto fail;
				}
				sum += x;
			}
			if (!isfinite(sum)) {
				rc = fr_error_set(err, -EINVAL,
						  "placement: loads of layer %d add up past the "
						  "largest double: scale them down", l);
				goto fail;
			}
		}
	}
	if (prev) {
		if (prev->n_layers != p->n_layers || prev->n_experts != p->n_experts ||
		    prev->n_workers != p->n_workers) {
			rc = fr_error_set(err, -EINVAL,
					  "placement: previous placement is %d layers x %d "
					  "experts on %d workers, the problem %d x %d on %d",
					  prev->n_layers, prev->n_experts, prev->n_workers,
					  p->n_layers, p->n_experts, p->n_workers);
			goto fail;
		}
		same_slots = !memcmp(prev->slots, p->slots, sizeof(*p->slots) * p->n_workers);
	}
	if (!pb->load) {
		uniform = malloc(sizeof(*uniform) * (size_t)p->n_experts);
		if (!uniform)
			goto enomem;
		for (int e = 0; e < p->n_experts; e++)
			uniform[e] = 1.0;
	}
	rc = solver_init(&sv, p, need);
	if (rc < 0)
		goto enomem;
	for (int l = 0; l < p->n_layers; l++) {
		struct prev_layer pv;
		bool use_prev = prev != NULL;
		if (prev) {
			pv = (struct prev_layer){ prev->slot_expert + (size_t)l * prev->total_slots,
						  prev->slot_base, prev->slots };
			/* A layer with unloaded slots is no layout to stay close to. */
			for (int g = 0; g < prev->total_slots && use_prev; g++)
				use_prev = pv.se[g] != CO_PLACE_EMPTY;
		}
		rc = solve_layer(&sv, uniform ? uniform : pb->load + (size_t)l * p->n_experts,
				 opts->algo, use_prev ? &pv : NULL, same_slots,
				 opts->migrate_tolerance,
				 p->slot_expert + (size_t)l * p->total_slots);
		if (rc < 0) {
			fr_error_set(err, rc, "placement: layer %d: no layout found", l);
			goto fail;
		}
		co_place__build_routing(p, l);
	}
	solver_fini(&sv);
	free(uniform);
	*ret = p;
	return 0;
enomem:
	rc = fr_error_set(err, -ENOMEM, "placement: out of memory solving %d x %d slots",
			  p->n_layers, p->total_slots);
fail:
	solver_fini(&sv);
	free(uniform);
	co_place_destroy(p);
	return rc;
}
