/* SPDX-License-Identifier: Apache-2.0 */
/*
 * eplb.c - EPLB's global policy, the solver's baseline: replicas go to the expert with the
 * highest load per replica (D'Hondt), then are packed heaviest-first onto the least-loaded
 * worker with a free slot, generalised to unequal slot counts.
 */
#include "placement/placement-internal.h"

#include <stdlib.h>
#include <string.h>

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

void co_place__replicate(struct ws *s, int start)
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

void co_place__pack_lpt(struct ws *s, bool prefer_new, const int32_t *order_rep)
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
