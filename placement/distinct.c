/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distinct.c - the min_distinct guarantee: a layout that always meets it, and the repair
 * that restores it after packing.
 */
#include "placement/placement-internal.h"

#include <math.h>

void co_place__pack_cyclic(struct ws *s, const int32_t *order_rep)
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

bool co_place__repair_distinct(struct ws *s)
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
			co_place__ws_assign(s, ga, y);
			co_place__ws_assign(s, best_gb, x);
			co_place__ws_recompute_worker(s, wa);
			co_place__ws_recompute_worker(s, wb);
		}
	}
	return true;
}
