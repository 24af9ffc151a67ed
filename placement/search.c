/* SPDX-License-Identifier: Apache-2.0 */
/*
 * search.c - local search on the most loaded worker: swaps of two replicas between workers and
 * hand-overs of a cold expert's slot to a hot one, never raising the largest load.
 */
#include "placement/placement-internal.h"

#include <stdint.h>
#include <string.h>

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

void co_place__local_search(struct ws *s)
{
	long max_iter = 50L * s->S + 1000;

	for (long it = 0; it < max_iter; it++) {
		int wa, kind = 0, bg1 = -1, bg2 = -1;
		double M = co_place__ws_max(s, &wa), best_m = M - 1e-12 * M;

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
