/* SPDX-License-Identifier: Apache-2.0 */
/*
 * solver.c - the expert placement solver.
 *
 * Per layer the solver builds a few candidate layouts (EPLB packing, distinct-preferring
 * packing, the previous layout, a local search from it), improves them by local search on
 * the most loaded worker and keeps the best, trading load for moved experts when asked.
 */
#include "placement/placement-internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ==== solver =============================================================================== */

/* Per-layer working state. Slots are global ids g; worker w owns base[w] .. base[w+1]-1.
 * Each expert's slots form a doubly linked list (head/nxt/prv) so that replica counts,
 * distinct workers and per-worker loads update in O(replicas). */
struct item {
	double w;
	int32_t e;
};

struct ws {
	int E, W, S, need;          /* need: min distinct workers per expert (>= 1) */
	const int32_t *cap;         /* [W] */
	const int32_t *base;        /* [W + 1] */
	const int32_t *sw;          /* [S] slot -> worker */
	const double *load;         /* [E] this layer's expert loads */
	int32_t *se;                /* [S] slot -> expert (-1 while packing) */
	int32_t *rep;               /* [E] replicas */
	int32_t *ndist;             /* [E] distinct workers holding the expert */
	int32_t *head, *nxt, *prv;  /* [E], [S], [S] */
	int32_t *cnt;               /* [E][W] replicas of e on w; NULL for huge shapes */
	double *wl;                 /* [W] worker loads */
	/* scratch */
	double *delta;              /* [W], zero between uses */
	int32_t *touched;           /* [W] */
	int32_t *stamp;             /* [W] */
	int32_t stamp_gen;
	int32_t *fill;              /* [W] */
	int32_t *xcnt;              /* [W] zero between uses */
	int32_t *zv1, *zv2;         /* [E] local search bounds, see ls_cold_bounds() */
	double *zb1, *zb2;          /* [E] */
	double *wmax;               /* [W] heaviest replica on each worker */
	struct item *items;         /* [S] */
	int32_t *heap;              /* [E] */
	int32_t *ecount;            /* [E] zero between uses */
	int32_t *tmp;               /* [S] */
};

static inline double ws_weight(const struct ws *s, int e)
{
	return s->rep[e] > 0 ? s->load[e] / s->rep[e] : 0.0;
}

static int ws_count_on(const struct ws *s, int e, int w)
{
	int n = 0;
	if (s->cnt)
		return s->cnt[(size_t)e * s->W + w];
	for (int g = s->head[e]; g >= 0; g = s->nxt[g])
		n += s->sw[g] == w;
	return n;
}

static void ws_recompute_worker(struct ws *s, int w)
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
		ws_recompute_worker(s, w);
}

/* Puts expert e into slot g (replacing what was there); loads are NOT recomputed. */
static void ws_assign(struct ws *s, int g, int e)
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

static double ws_max(const struct ws *s, int *ret_w)
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

static long ws_dups(const struct ws *s)
{
	long d = 0;
	for (int e = 0; e < s->E; e++)
		d += s->rep[e] - s->ndist[e];
	return d;
}

/* Would moving one replica of x from worker a to worker b keep x on enough workers? */
static bool ws_move_ok(const struct ws *s, int x, int a, int b)
{
	int nd;
	if (s->need <= 1)
		return true;
	nd = s->ndist[x] - (ws_count_on(s, x, a) == 1) + (ws_count_on(s, x, b) == 0);
	return nd >= FR_MIN(s->need, s->ndist[x]) ;
}

/* ---- replication: D'Hondt on load per replica, like EPLB ---- */

static bool heap_before(const struct ws *s, int a, int b)
{
	double wa = s->load[a] / s->rep[a], wb = s->load[b] / s->rep[b];
	return wa > wb || (wa == wb && a < b);
}

static void heap_down(struct ws *s, int n, int i)
{
	int32_t *h = s->heap;
	for (;;) {
		int l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && heap_before(s, h[l], h[m]))
			m = l;
		if (r < n && heap_before(s, h[r], h[m]))
			m = r;
		if (m == i)
			return;
		int32_t t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static void replicate(struct ws *s, int start)
{
	int extra = s->S - start * s->E;

	for (int e = 0; e < s->E; e++) {
		s->rep[e] = start;
		s->heap[e] = e;
	}
	for (int i = s->E / 2 - 1; i >= 0; i--)
		heap_down(s, s->E, i);
	/* the top's key only decreases: sift it down after each replica */
	for (int i = 0; i < extra; i++) {
		s->rep[s->heap[0]]++;
		heap_down(s, s->E, 0);
	}
}

/* ---- packing ---- */

static int item_cmp(const void *pa, const void *pb)
{
	const struct item *a = pa, *b = pb;
	if (a->w != b->w)
		return a->w > b->w ? -1 : 1;
	return (a->e > b->e) - (a->e < b->e);
}

static int i32_cmp(const void *pa, const void *pb)
{
	int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
	return (a > b) - (a < b);
}

/* Heaviest replica first onto the least-loaded worker with a free slot (lowest index on
 * ties). prefer_new: first among workers that do not hold the expert yet. Replicas of one
 * expert are adjacent after the sort, so stamp[w] == e + 1 marks "w holds e". */
static void pack_lpt(struct ws *s, bool prefer_new, const int32_t *order_rep)
{
	int n = 0;

	for (int e = 0; e < s->E; e++)
		for (int r = 0; r < order_rep[e]; r++)
			s->items[n++] = (struct item){ s->load[e] / order_rep[e], e };
	qsort(s->items, (size_t)n, sizeof(*s->items), item_cmp);
	for (int w = 0; w < s->W; w++) {
		s->fill[w] = 0;
		s->wl[w] = 0;
		s->stamp[w] = 0;
	}
	for (int i = 0; i < n; i++) {
		int e = s->items[i].e, best = -1;
		for (int pass = prefer_new ? 0 : 1; pass < 2 && best < 0; pass++)
			for (int w = 0; w < s->W; w++) {
				if (s->fill[w] >= s->cap[w] || (pass == 0 && s->stamp[w] == e + 1))
					continue;
				if (best < 0 || s->wl[w] < s->wl[best])
					best = w;
			}
		s->se[s->base[best] + s->fill[best]++] = e;
		s->wl[best] += s->items[i].w;
		s->stamp[best] = e + 1;
	}
	memset(s->stamp, 0, sizeof(*s->stamp) * (size_t)s->W);
}

/* Always satisfies min_distinct k when sum min(cap, E) >= k E: k rounds of every expert laid
 * out worker after worker, at most E per worker (a run of <= E consecutive positions holds
 * distinct experts, and copies of one expert are E apart); extra replicas fill the rest. */
static void pack_cyclic(struct ws *s, const int32_t *order_rep)
{
	int k = s->need, w = 0;

	for (int v = 0; v < s->W; v++)
		s->fill[v] = 0;
	for (int i = 0; i < k * s->E; i++) {
		while (s->fill[w] >= FR_MIN(s->cap[w], s->E))
			w++;
		s->se[s->base[w] + s->fill[w]++] = i % s->E;
	}
	w = 0;
	for (int e = 0; e < s->E; e++)
		for (int r = k; r < order_rep[e]; r++) {
			while (s->fill[w] >= s->cap[w])
				w++;
			s->se[s->base[w] + s->fill[w]++] = e;
		}
}

/* ---- repair of the distinct-worker guarantee ---- */

/* Swaps replicas until every expert is on >= need workers; false if stuck. Each step puts a
 * duplicated replica of a short expert onto a worker without it, picking the swap partner
 * that keeps the two workers' loads lowest and never pushes the partner below need. */
static bool repair_distinct(struct ws *s)
{
	if (s->need <= 1)
		return true;
	for (int x = 0; x < s->E; x++) {
		while (s->ndist[x] < s->need) {
			int ga = -1, best_gb = -1;
			double best_m = INFINITY, wx = ws_weight(s, x);

			for (int g = s->head[x]; g >= 0 && ga < 0; g = s->nxt[g])
				if (ws_count_on(s, x, s->sw[g]) >= 2)
					ga = g;
			if (ga < 0)
				return false; /* fewer replicas than need: cannot happen */
			int wa = s->sw[ga];
			for (int gb = 0; gb < s->S; gb++) {
				int wb = s->sw[gb], y = s->se[gb];
				if (wb == wa || y == x || ws_count_on(s, x, wb) > 0 ||
				    !ws_move_ok(s, y, wb, wa))
					continue;
				double wy = ws_weight(s, y);
				double m = FR_MAX(s->wl[wa] - wx + wy, s->wl[wb] + wx - wy);
				if (m < best_m) {
					best_m = m;
					best_gb = gb;
				}
			}
			if (best_gb < 0)
				return false;
			int y = s->se[best_gb], wb = s->sw[best_gb];
			ws_assign(s, ga, y);
			ws_assign(s, best_gb, x);
			ws_recompute_worker(s, wa);
			ws_recompute_worker(s, wb);
		}
	}
	return true;
}

/* ---- local search ---- */

/* Largest new load among the workers touched if slot g (expert x) is handed to expert y. */
static double transfer_eval(struct ws *s, int g, int y)
{
	int x = s->se[g], d = s->sw[g], nt = 0;
	double ox = ws_weight(s, x), nx = s->load[x] / (s->rep[x] - 1);
	double oy = ws_weight(s, y), ny = s->load[y] / (s->rep[y] + 1);
	double m = 0;

	if (s->stamp_gen == INT32_MAX) {
		memset(s->stamp, 0, sizeof(*s->stamp) * (size_t)s->W);
		s->stamp_gen = 0;
	}
	s->stamp_gen++;
#define TOUCH(dev, amount)                                                                  \
	do {                                                                                \
		int dv_ = (dev);                                                            \
		if (s->stamp[dv_] != s->stamp_gen) {                                        \
			s->stamp[dv_] = s->stamp_gen;                                       \
			s->delta[dv_] = 0;                                                  \
			s->touched[nt++] = dv_;                                             \
		}                                                                           \
		s->delta[dv_] += (amount);                                                  \
	} while (0)
	for (int h = s->head[x]; h >= 0; h = s->nxt[h])
		TOUCH(s->sw[h], h == g ? -ox : nx - ox);
	for (int h = s->head[y]; h >= 0; h = s->nxt[h])
		TOUCH(s->sw[h], ny - oy);
	TOUCH(d, ny);
#undef TOUCH
	for (int i = 0; i < nt; i++) {
		int w = s->touched[i];
		m = FR_MAX(m, s->wl[w] + s->delta[w]);
		s->delta[w] = 0;
	}
	return m;
}

/* Improves the layout while the most loaded worker can be relieved: a move is taken only if
 * every worker it touches ends below the current maximum M, so (M, workers at M) decreases
 * lexicographically and the largest load never rises. Best improvement first. */
/* For every expert z that could give up a slot: the two most loaded distinct workers holding
 * it, with their load once z has one replica less (each of z's replicas grows by inc). */
static void ls_cold_bounds(struct ws *s)
{
	for (int z = 0; z < s->E; z++) {
		s->zv1[z] = s->zv2[z] = -1;
		if (s->rep[z] < 2)
			continue;
		double inc = s->load[z] / (s->rep[z] - 1) - s->load[z] / s->rep[z];
		for (int h = s->head[z]; h >= 0; h = s->nxt[h]) {
			int v = s->sw[h];
			double b = s->wl[v] + inc;
			if (v == s->zv1[z] || v == s->zv2[z])
				continue;
			if (s->zv1[z] < 0 || b > s->zb1[z]) {
				s->zv2[z] = s->zv1[z];
				s->zb2[z] = s->zb1[z];
				s->zv1[z] = v;
				s->zb1[z] = b;
			} else if (s->zv2[z] < 0 || b > s->zb2[z]) {
				s->zv2[z] = v;
				s->zb2[z] = b;
			}
		}
	}
}

static void local_search(struct ws *s)
{
	long max_iter = 50L * s->S + 1000;

	for (long it = 0; it < max_iter; it++) {
		int wa, kind = 0, bg1 = -1, bg2 = -1;
		double M = ws_max(s, &wa), best_m = M - 1e-12 * M;

		if (M <= 0)
			return;
		ls_cold_bounds(s);
		for (int w = 0; w < s->W; w++) {
			s->wmax[w] = 0;
			for (int g = s->base[w]; g < s->base[w + 1]; g++)
				s->wmax[w] = FR_MAX(s->wmax[w], ws_weight(s, s->se[g]));
		}
		for (int ga = s->base[wa]; ga < s->base[wa + 1]; ga++) {
			int x = s->se[ga];
			double wx = ws_weight(s, x);
			bool seen = false;

			/* swap with a lighter replica elsewhere; wb ends at wl[wb] + wx - wy,
			 * which even wb's heaviest replica may not bring below best_m */
			for (int wb = 0; wb < s->W; wb++) {
				if (wb == wa || s->wl[wb] + wx - s->wmax[wb] >= best_m)
					continue;
				for (int gb = s->base[wb]; gb < s->base[wb + 1]; gb++) {
					int y = s->se[gb];
					double wy, m;
					if (y == x)
						continue;
					wy = ws_weight(s, y);
					if (wy >= wx)
						continue;
					m = FR_MAX(M - wx + wy, s->wl[wb] + wx - wy);
					if (m >= best_m || !ws_move_ok(s, x, wa, wb) ||
					    !ws_move_ok(s, y, wb, wa))
						continue;
					best_m = m;
					kind = 1;
					bg1 = ga;
					bg2 = gb;
				}
			}
			/* hand some slot of a cold expert to x (once per distinct x on wa) */
			for (int g = s->base[wa]; g < ga && !seen; g++)
				seen = s->se[g] == x;
			if (seen || s->load[x] <= 0)
				continue;
			/* Lower bounds before the full evaluation: x's replicas each shed
			 * gain; wa sheds xcnt[wa] * gain (plus the slot's own weight when the
			 * slot is on wa), the slot's worker d gains ny - oz - xcnt[d] * gain,
			 * and anything z does elsewhere only adds. */
			double ny = s->load[x] / (s->rep[x] + 1), gain = wx - ny;
			for (int h = s->head[x]; h >= 0; h = s->nxt[h])
				s->xcnt[s->sw[h]]++;
			bool off_wa = M - s->xcnt[wa] * gain < best_m;
			for (int g = 0; g < s->S; g++) {
				int z = s->se[g], d = s->sw[g];
				if (d != wa && (!off_wa || s->wl[d] - s->wmax[d] + ny -
								   s->xcnt[d] * gain >= best_m)) {
					g = s->base[d + 1] - 1; /* nothing on d can do */
					continue;
				}
				if (z == x || s->rep[z] < 2)
					continue;
				if (d != wa &&
				    s->wl[d] - ws_weight(s, z) + ny - s->xcnt[d] * gain >= best_m)
					continue;
				/* some other worker holding z gains at least inc(z) */
				if ((s->zv1[z] >= 0 && s->zv1[z] != d && !s->xcnt[s->zv1[z]] &&
				     s->zb1[z] >= best_m) ||
				    (s->zv2[z] >= 0 && s->zv2[z] != d && !s->xcnt[s->zv2[z]] &&
				     s->zb2[z] >= best_m))
					continue;
				if (s->need > 1 && ws_count_on(s, z, d) == 1 &&
				    s->ndist[z] - 1 < s->need)
					continue;
				double m = transfer_eval(s, g, x);
				if (m < best_m) {
					best_m = m;
					kind = 2;
					bg1 = g;
					bg2 = x;
					off_wa = M - s->xcnt[wa] * gain < best_m;
				}
			}
			for (int h = s->head[x]; h >= 0; h = s->nxt[h])
				s->xcnt[s->sw[h]] = 0;
		}
		if (kind == 1) {
			int x = s->se[bg1], y = s->se[bg2];
			ws_assign(s, bg1, y);
			ws_assign(s, bg2, x);
			ws_recompute_worker(s, s->sw[bg1]);
			ws_recompute_worker(s, s->sw[bg2]);
		} else if (kind == 2) {
			int z = s->se[bg1];
			ws_assign(s, bg1, bg2);
			for (int h = s->head[z]; h >= 0; h = s->nxt[h])
				ws_recompute_worker(s, s->sw[h]);
			for (int h = s->head[bg2]; h >= 0; h = s->nxt[h])
				ws_recompute_worker(s, s->sw[h]);
		} else {
			return;
		}
	}
}

/* ---- alignment with the previous layout ---- */

/* Hungarian algorithm (shortest augmenting paths), n x n, minimises sum a[i][match]:
 * ret[i] = column of row i. Scratch: 5 (n + 1) longs/ints provided by the caller. */
static void hungarian(int n, const long *a, long *u, long *v, long *minv, int *p, int *way,
		      char *used, int *ret)
{
	for (int j = 0; j <= n; j++) {
		u[j] = v[j] = 0;
		p[j] = 0;
	}
	for (int i = 1; i <= n; i++) {
		int j0 = 0;
		p[0] = i;
		for (int j = 0; j <= n; j++) {
			minv[j] = LONG_MAX;
			used[j] = 0;
		}
		do {
			int i0 = p[j0], j1 = 0;
			long delta = LONG_MAX;
			used[j0] = 1;
			for (int j = 1; j <= n; j++) {
				if (used[j])
					continue;
				long cur = a[(size_t)(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
				if (cur < minv[j]) {
					minv[j] = cur;
					way[j] = j0;
				}
				if (minv[j] < delta) {
					delta = minv[j];
					j1 = j;
				}
			}
			for (int j = 0; j <= n; j++) {
				if (used[j]) {
					u[p[j]] += delta;
					v[j] -= delta;
				} else {
					minv[j] -= delta;
				}
			}
			j0 = j1;
		} while (p[j0] != 0);
		do {
			int j1 = way[j0];
			p[j0] = p[j1];
			j0 = j1;
		} while (j0);
	}
	for (int j = 1; j <= n; j++)
		ret[p[j] - 1] = j - 1;
}

/* Worker groups larger than this are matched greedily. */
#define ALIGN_HUNGARIAN_MAX 256

struct prev_layer {
	const int32_t *se;    /* [prev total slots] */
	const int32_t *base;  /* [W + 1] */
	const int32_t *cap;   /* [W] */
};

struct align_scratch {
	long *cost, *u, *v, *minv;
	int *p, *way, *match, *members;
	char *used;
	int32_t *perm;        /* [W] bin -> worker */
};

/* Multiset intersection of bin b of se with worker w of the previous layout. */
static int overlap(struct ws *s, const int32_t *se, int b, const struct prev_layer *pv, int w)
{
	int ov = 0;
	for (int g = pv->base[w]; g < pv->base[w + 1]; g++)
		s->ecount[pv->se[g]]++;
	for (int g = s->base[b]; g < s->base[b + 1]; g++)
		if (s->ecount[se[g]] > 0) {
			s->ecount[se[g]]--;
			ov++;
		}
	for (int g = pv->base[w]; g < pv->base[w + 1]; g++)
		s->ecount[pv->se[g]] = 0;
	return ov;
}

/* Large groups: each bin in turn takes the free worker it overlaps most (itself on ties,
 * then the lowest). O(k^2) overlaps instead of the Hungarian O(k^3). */
static void align_greedy(struct ws *s, const int32_t *se, const struct prev_layer *pv,
			 struct align_scratch *as, int k)
{
	char *taken = as->used;

	memset(taken, 0, (size_t)k);
	for (int i = 0; i < k; i++) {
		int best = -1, best_ov = -1;
		for (int j = 0; j < k; j++) {
			if (taken[j])
				continue;
			int ov = overlap(s, se, as->members[i], pv, as->members[j]);
			if (ov > best_ov || (ov == best_ov && j == i)) {
				best = j;
				best_ov = ov;
			}
		}
		taken[best] = 1;
		as->perm[as->members[i]] = as->members[best];
	}
}

/* Writes into out[S] the layout se with its bins (solver workers) permuted among workers
 * of equal slot count to maximise overlap with pv, and each worker's experts placed in the
 * slots they held before; without pv, each worker's experts in ascending order. */
static void align_layout(struct ws *s, const int32_t *se, const struct prev_layer *pv,
			 struct align_scratch *as, int32_t *out)
{
	for (int w = 0; w < s->W; w++)
		as->perm[w] = w;
	if (pv) {
		/* group workers by slot count; solve each group's assignment */
		char *done = as->used + (s->W + 1);
		memset(done, 0, (size_t)s->W);
		for (int w0 = 0; w0 < s->W; w0++) {
			int k = 0;
			if (done[w0])
				continue;
			for (int w = w0; w < s->W; w++)
				if (!done[w] && s->cap[w] == s->cap[w0]) {
					done[w] = 1;
					as->members[k++] = w;
				}
			if (k == 1 || s->cap[w0] == 0)
				continue;
			if (k > ALIGN_HUNGARIAN_MAX) {
				align_greedy(s, se, pv, as, k);
				continue;
			}
			/* rows: bins, cols: workers; prefer the identity on ties */
			for (int i = 0; i < k; i++)
				for (int j = 0; j < k; j++) {
					long ov = overlap(s, se, as->members[i], pv, as->members[j]);
					as->cost[(size_t)i * k + j] = -(ov * (k + 1) + (i == j));
				}
			hungarian(k, as->cost, as->u, as->v, as->minv, as->p, as->way, as->used,
				  as->match);
			for (int i = 0; i < k; i++)
				as->perm[as->members[i]] = as->members[as->match[i]];
		}
	}
	for (int b = 0; b < s->W; b++) {
		int w = as->perm[b], n = s->cap[w];
		int32_t *dst = out + s->base[w];
		const int32_t *src = se + s->base[b];

		for (int i = 0; i < n; i++) {
			s->ecount[src[i]]++;
			dst[i] = -1;
		}
		if (pv) {
			for (int i = 0; i < n && i < pv->cap[w]; i++) {
				int e = pv->se[pv->base[w] + i];
				if (s->ecount[e] > 0) {
					s->ecount[e]--;
					dst[i] = e;
				}
			}
		}
		/* the rest in ascending expert order */
		int j = 0;
		memcpy(s->tmp, src, sizeof(*src) * (size_t)n);
		qsort(s->tmp, (size_t)n, sizeof(*s->tmp), i32_cmp);
		for (int i = 0; i < n; i++) {
			int e = s->tmp[i];
			if (s->ecount[e] == 0)
				continue;
			s->ecount[e]--;
			while (dst[j] >= 0)
				j++;
			dst[j] = e;
		}
	}
}

static long layout_moves(const struct ws *s, const int32_t *se, const struct prev_layer *pv)
{
	long m = 0;
	if (!pv)
		return 0;
	for (int w = 0; w < s->W; w++)
		for (int i = 0; i < s->cap[w]; i++)
			m += i >= pv->cap[w] || se[s->base[w] + i] != pv->se[pv->base[w] + i];
	return m;
}

/* ---- the per-layer driver ---- */

enum { CAND_EPLB, CAND_DISTINCT, CAND_CYCLIC, CAND_PREV, CAND_WARM, CAND__COUNT };

struct cand {
	bool ok;
	double max;
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
	void *blocks[48];
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
	c->max = ws_max(s, NULL);
	c->dups = ws_dups(s);
	if (aligned)
		memcpy(c->se, s->se, sizeof(*c->se) * (size_t)s->S);
	else
		align_layout(s, s->se, pv, &sv->as, c->se);
	c->moves = layout_moves(s, c->se, pv);
}

static int solve_layer(struct solver *sv, const double *load, enum co_place_algo algo,
		       const struct prev_layer *pv, bool prev_same_slots, double tol,
		       int32_t *out)
{
	struct ws *s = &sv->s;
	bool ls = algo == CO_PLACE_ALGO_FERRY;
	int best = -1;

	s->load = load;
	for (int i = 0; i < CAND__COUNT; i++)
		sv->c[i].ok = false;

	replicate(s, s->need);
	memcpy(sv->order_rep, s->rep, sizeof(*s->rep) * (size_t)s->E);
	for (int id = CAND_EPLB; id <= (ls ? CAND_DISTINCT : CAND_EPLB); id++) {
		pack_lpt(s, id == CAND_DISTINCT, sv->order_rep);
		ws_set(s, s->se);
		if (!repair_distinct(s))
			continue;
		if (ls)
			local_search(s);
		cand_take(sv, id, pv, false);
	}
	if (!sv->c[CAND_EPLB].ok && !sv->c[CAND_DISTINCT].ok) {
		pack_cyclic(s, sv->order_rep);
		ws_set(s, s->se);
		if (ls)
			local_search(s);
		cand_take(sv, CAND_CYCLIC, pv, false);
	}
	if (pv && prev_same_slots) {
		ws_set(s, pv->se);
		if (repair_distinct(s)) {
			cand_take(sv, CAND_PREV, pv, true);
			if (ls) {
				local_search(s);
				cand_take(sv, CAND_WARM, pv, true);
			}
		}
	}

	/* best load, then (within tolerance) fewest moves, then load, then fewest duplicates */
	double best_max = INFINITY;
	for (int i = 0; i < CAND__COUNT; i++)
		if (sv->c[i].ok)
			best_max = FR_MIN(best_max, sv->c[i].max);
	double limit = best_max * (1 + (pv ? tol : 0)) + 1e-12 * best_max;
	for (int i = 0; i < CAND__COUNT; i++) {
		const struct cand *c = &sv->c[i], *b = best >= 0 ? &sv->c[best] : NULL;
		if (!c->ok || c->max > limit)
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
