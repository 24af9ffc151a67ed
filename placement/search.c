/* SPDX-License-Identifier: Apache-2.0 */
/*
 * search.c - local search on the most loaded worker: swaps of two replicas between workers and
 * hand-overs of a cold expert's slot to a hot one, never raising the largest load. Two
 * flavours: best improvement (co_place__local_search) and, from the previous layout, the
 * most improvement per newly loaded slot down to a target, then evening out the loads below
 * the largest (co_place__local_search_warm), which co_place__refresh_replicas() prepares by
 * moving spare slots to the experts hot now.
 */
#include "placement/placement-internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Largest new load among the workers touched if slot g (expert x) is handed to expert y;
 * with ret_dex, also by how much their load above target shrinks. */
static double transfer_eval(struct ws *s, int g, int y, double target, double *ret_dex)
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
	double dex = 0;
	for (int i = 0; i < nt; i++) {
		int w = s->touched[i];
		m = FR_MAX(m, s->wl[w] + s->delta[w]);
		dex += FR_MAX(0, s->wl[w] - target) - FR_MAX(0, s->wl[w] + s->delta[w] - target);
		s->delta[w] = 0;
	}
	if (ret_dex)
		*ret_dex = dex;
	return m;
}

/* For every expert z that could give up a slot: the two most loaded distinct workers holding
 * it, with their load once z has one replica less (each of z's replicas grows by inc). */
static void ls_cold_bounds(struct ws *s)
{
	for (int z = 0; z < s->E; z++) {
		s->zv1[z] = s->zv2[z] = -1;
		if (!ws_can_give(s, z))
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

/* The bounds both searches prune with, for the layout as it stands: ls_cold_bounds(), and
 * each worker's heaviest replica (wmax). */
static void ls_bounds(struct ws *s)
{
	ls_cold_bounds(s);
	for (int w = 0; w < s->W; w++) {
		s->wmax[w] = 0;
		for (int g = s->base[w]; g < s->base[w + 1]; g++)
			s->wmax[w] = FR_MAX(s->wmax[w], ws_weight(s, s->se[g]));
	}
}

void co_place__local_search(struct ws *s)
{
	long max_iter = 50L * s->S + 1000;

	for (long it = 0; it < max_iter; it++) {
		int wa, kind = 0, bg1 = -1, bg2 = -1;
		double M = co_place__ws_max(s, &wa), best_m = M - 1e-12 * M;

		if (M <= 0)
			return;
		ls_bounds(s);
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
				if (z == x || !ws_can_give(s, z))
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
				double m = transfer_eval(s, g, x, 0, NULL);
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
			co_place__ws_assign(s, bg1, y);
			co_place__ws_assign(s, bg2, x);
			co_place__ws_recompute_worker(s, s->sw[bg1]);
			co_place__ws_recompute_worker(s, s->sw[bg2]);
		} else if (kind == 2) {
			int z = s->se[bg1];
			co_place__ws_assign(s, bg1, bg2);
			for (int h = s->head[z]; h >= 0; h = s->nxt[h])
				co_place__ws_recompute_worker(s, s->sw[h]);
			for (int h = s->head[bg2]; h >= 0; h = s->nxt[h])
				co_place__ws_recompute_worker(s, s->sw[h]);
		} else {
			return;
		}
	}
}

/* ---- migration-aware search from the previous layout ---- */

/* Slots newly loaded when slot g goes from expert a to b, against the previous layout pv. */
static inline int slot_cost(const int32_t *pv, int g, int a, int b)
{
	return (b != pv[g]) - (a != pv[g]);
}

/* Applies a swap (kind 1: slots g1, g2) or a hand-over (kind 2: slot g1 to expert x). */
static void ls_apply(struct ws *s, int kind, int g1, int g2)
{
	if (kind == 1) {
		int x = s->se[g1], y = s->se[g2];
		co_place__ws_assign(s, g1, y);
		co_place__ws_assign(s, g2, x);
		co_place__ws_recompute_worker(s, s->sw[g1]);
		co_place__ws_recompute_worker(s, s->sw[g2]);
	} else {
		int z = s->se[g1];
		co_place__ws_assign(s, g1, g2);
		for (int h = s->head[z]; h >= 0; h = s->nxt[h])
			co_place__ws_recompute_worker(s, s->sw[h]);
		for (int h = s->head[g2]; h >= 0; h = s->nxt[h])
			co_place__ws_recompute_worker(s, s->sw[h]);
	}
}

/* The search wanders: give slots back their previous expert where the loads allow it (every
 * touched worker stays at or below limit), by a swap with a replica of that expert or by
 * handing the slot back. Returns the (negative) change in slots newly loaded. */
static long ls_restore(struct ws *s, const int32_t *pv, double limit, double ss_limit)
{
	long moved = 0;
	bool again = true;

	for (int pass = 0; pass < 4 && again; pass++) {
		again = false;
		for (int g1 = 0; g1 < s->S; g1++) {
			int x = s->se[g1], want = pv[g1], w1 = s->sw[g1], best = -1, bc = 0;
			double wx, ww, bm = INFINITY;

			if (x == want)
				continue;
			wx = ws_weight(s, x);
			ww = ws_weight(s, want);
			double ss = ws_ss(s);
			for (int g2 = s->head[want]; g2 >= 0; g2 = s->nxt[g2]) {
				int w2 = s->sw[g2];
				int c = slot_cost(pv, g1, x, want) + slot_cost(pv, g2, want, x);
				double m;
				if (w2 == w1 || c >= 0 || !ws_move_ok(s, x, w1, w2) ||
				    !ws_move_ok(s, want, w2, w1))
					continue;
				m = FR_MAX(s->wl[w1] - wx + ww, s->wl[w2] + wx - ww);
				double d = wx - ww, dss = 2 * d * (s->wl[w2] - s->wl[w1]) + 2 * d * d;
				if (m <= limit && ss + dss <= ss_limit &&
				    (c < bc || (c == bc && m < bm))) {
					best = g2;
					bc = c;
					bm = m;
				}
			}
			if (best >= 0) {
				ls_apply(s, 1, g1, best);
				moved += bc;
				again = true;
				continue;
			}
			if (!ws_can_give(s, x) || (s->need > 1 && ws_count_on(s, x, w1) == 1 &&
					      s->ndist[x] - 1 < s->need))
				continue;
			if (transfer_eval(s, g1, want, limit, NULL) <= limit) {
				ls_apply(s, 2, g1, want);
				if (ws_ss(s) > ss_limit) { /* spreads the loads: hand it back */
					ls_apply(s, 2, g1, x);
					continue;
				}
				moved--;
				again = true;
			}
		}
	}
	return moved;
}

long co_place__refresh_replicas(struct ws *s, const int32_t *want)
{
	long moved = 0;

	for (int it = 0; it < s->S; it++) {
		int x = -1, z = -1, bg = -1;
		double bx = 0, bz = INFINITY;
		bool bheld = true;

		/* the short expert with the heaviest replicas ... */
		for (int e = 0; e < s->E; e++) {
			double q = s->load[e] / s->rep[e];
			if (s->rep[e] < want[e] && q > bx) {
				bx = q;
				x = e;
			}
		}
		if (x < 0 || bx <= s->heavy_cap)
			break;
		/* ... takes a slot of the surplus expert with the least load per replica once it
		 * has one less, if that is lighter than x's replicas are now (the heavier of the
		 * two experts' replicas gets lighter) */
		for (int e = 0; e < s->E; e++) {
			if (e == x || s->rep[e] <= want[e] || s->rep[e] < 2)
				continue;
			double q = s->load[e] / (s->rep[e] - 1);
			if (q < bz) {
				bz = q;
				z = e;
			}
		}
		if (z < 0 || bz >= bx)
			break;
		/* on a worker without x if there is one, the least loaded */
		for (int g = s->head[z]; g >= 0; g = s->nxt[g]) {
			int w = s->sw[g];
			bool held = ws_count_on(s, x, w) > 0;
			if (s->need > 1 && ws_count_on(s, z, w) == 1 && s->ndist[z] - 1 < s->need)
				continue;
			if (bg < 0 || (bheld && !held) ||
			    (held == bheld && s->wl[w] < s->wl[s->sw[bg]])) {
				bg = g;
				bheld = held;
			}
		}
		if (bg < 0)
			break;
		ls_apply(s, 2, bg, x);
		moved++;
	}
	return moved;
}

/* One swap between any two workers, the heavier giving its heavier replica, that lowers
 * the sum of squared loads most per slot newly loaded (never raising the largest load):
 * evens out the loads below the largest, which the largest alone does not see. */
static long spread_step(struct ws *s, const int32_t *pv)
{
	int b1 = -1, b2 = -1, bc = 0;
	double best = 0;

	for (int wa = 0; wa < s->W; wa++)
		for (int ga = s->base[wa]; ga < s->base[wa + 1]; ga++) {
			if (s->wl[wa] * s->wl[wa] <= best) /* gap <= wl[wa] */
				continue;
			int x = s->se[ga];
			double wx = ws_weight(s, x);
			for (int wb = 0; wb < s->W; wb++) {
				double gap = s->wl[wa] - s->wl[wb];
				/* no swap of this pair lowers it by more than gap^2 / 2 */
				if (gap <= 0 || gap * gap / 2 <= best)
					continue;
				for (int gb = s->base[wb]; gb < s->base[wb + 1]; gb++) {
					int y = s->se[gb];
					double d = wx - ws_weight(s, y);
					if (y == x || d <= 0 || d >= gap)
						continue;
					int c = slot_cost(pv, ga, x, y) + slot_cost(pv, gb, y, x);
					double sc = 2 * d * (gap - d) / FR_MAX(c, 1);
					if (sc > best && ws_move_ok(s, x, wa, wb) &&
					    ws_move_ok(s, y, wb, wa)) {
						best = sc;
						b1 = ga;
						b2 = gb;
						bc = c;
					}
				}
			}
		}
	if (b1 < 0)
		return -1;
	ls_apply(s, 1, b1, b2);
	return bc;
}

long co_place__local_search_warm(struct ws *s, const int32_t *pv, double target,
				 double even_target, double ss_target)
{
	long max_iter = 50L * s->S + 1000, moved = 0;
	double dex_ = 0;

	for (long it = 0; it < max_iter; it++) {
		int wa, kind = 0, bg1 = -1, bg2 = -1, bcost = 0;
		double M = co_place__ws_max(s, &wa), best_sc = 0, best_m = INFINITY;
		/* every worker a move touches must end below bm (< M) */
		double bm = M - 1e-12 * M;

		/* the dispatch's split may already bring the layer within target; then only the
		 * spread of the loads below the largest may still ask for moves (ss_target) */
		if (M <= 0)
			break;
		if (M <= target || (M <= even_target && co_place__ws_wf_max(s) <= target)) {
			long c = ws_ss(s) > ss_target ? spread_step(s, pv) : -1;
			if (c < 0)
				break;
			moved += c;
			continue;
		}
#define CONSIDER(m_, cost_, kind_, g1_, g2_)                                                \
	do {                                                                                \
		int c_ = (cost_);                                                           \
		double sc_ = dex_ / FR_MAX(c_, 1);                                          \
		if (sc_ > best_sc || (sc_ == best_sc && sc_ > 0 && (m_) < best_m)) {        \
			best_sc = sc_;                                                      \
			best_m = (m_);                                                      \
			bcost = c_;                                                         \
			kind = (kind_);                                                     \
			bg1 = (g1_);                                                        \
			bg2 = (g2_);                                                        \
		}                                                                           \
	} while (0)
		ls_bounds(s);
		for (int ga = s->base[wa]; ga < s->base[wa + 1]; ga++) {
			int x = s->se[ga];
			double wx = ws_weight(s, x);
			bool seen = false;

			for (int wb = 0; wb < s->W; wb++) {
				if (wb == wa || s->wl[wb] + wx - s->wmax[wb] >= bm)
					continue;
				for (int gb = s->base[wb]; gb < s->base[wb + 1]; gb++) {
					int y = s->se[gb];
					double wy, m;
					if (y == x)
						continue;
					wy = ws_weight(s, y);
					/* wa sheds wx - wy at most, wb only gains */
					if (wy >= wx || wx - wy <= best_sc)
						continue;
					m = FR_MAX(M - wx + wy, s->wl[wb] + wx - wy);
					if (m >= bm || !ws_move_ok(s, x, wa, wb) ||
					    !ws_move_ok(s, y, wb, wa))
						continue;
					dex_ = FR_MAX(0, M - target) - FR_MAX(0, M - wx + wy - target) +
					       FR_MAX(0, s->wl[wb] - target) -
					       FR_MAX(0, s->wl[wb] + wx - wy - target);
					CONSIDER(m, slot_cost(pv, ga, x, y) + slot_cost(pv, gb, y, x),
						 1, ga, gb);
				}
			}
			for (int g = s->base[wa]; g < ga && !seen; g++)
				seen = s->se[g] == x;
			if (seen || s->load[x] <= 0)
				continue;
			/* the bounds of co_place__local_search(), against bm */
			double ny = s->load[x] / (s->rep[x] + 1), gain = wx - ny;
			for (int h = s->head[x]; h >= 0; h = s->nxt[h])
				s->xcnt[s->sw[h]]++;
			bool off_wa = M - s->xcnt[wa] * gain < bm;
			for (int g = 0; g < s->S; g++) {
				int z = s->se[g], d = s->sw[g];
				if (d != wa && (!off_wa || s->wl[d] - s->wmax[d] + ny -
								   s->xcnt[d] * gain >= bm)) {
					g = s->base[d + 1] - 1;
					continue;
				}
				if (z == x || !ws_can_give(s, z))
					continue;
				if (d != wa &&
				    s->wl[d] - ws_weight(s, z) + ny - s->xcnt[d] * gain >= bm)
					continue;
				if ((s->zv1[z] >= 0 && s->zv1[z] != d && !s->xcnt[s->zv1[z]] &&
				     s->zb1[z] >= bm) ||
				    (s->zv2[z] >= 0 && s->zv2[z] != d && !s->xcnt[s->zv2[z]] &&
				     s->zb2[z] >= bm))
					continue;
				if (s->need > 1 && ws_count_on(s, z, d) == 1 &&
				    s->ndist[z] - 1 < s->need)
					continue;
				double m = transfer_eval(s, g, x, target, &dex_);
				if (m < bm) {
					CONSIDER(m, slot_cost(pv, g, z, x), 2, g, x);
					off_wa = M - s->xcnt[wa] * gain < bm;
				}
			}
			for (int h = s->head[x]; h >= 0; h = s->nxt[h])
				s->xcnt[s->sw[h]] = 0;
		}
#undef CONSIDER
		if (!kind)
			break;
		ls_apply(s, kind, bg1, bg2);
		moved += bcost;
	}
	return moved + ls_restore(s, pv, FR_MAX(target, co_place__ws_max(s, NULL)),
				  FR_MAX(ss_target, ws_ss(s)));
}
