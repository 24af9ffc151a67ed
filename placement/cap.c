/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cap.c - co_place_cap_moves(): a migration budget for a new placement, spent on the layers
 * where moving experts buys the most balance.
 *
 * Giving back whole layers keeps every layer a layout the solver (or the cluster) already
 * vouched for; the choice is a knapsack (moves as weight, balancedness as value), solved
 * greedily by value per weight, which is what a per-rebalance budget needs: cheap and
 * never far off when every layer is a small part of the total.
 */
#include "placement/placement-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct cap_layer {
	int layer;
	long moves;
	double gain;   /* balancedness of p's layout minus prev's */
};

/* Lowest gain per moved slot first; ties: more moves first (frees more budget). */
static int cap_cmp(const void *a, const void *b)
{
	const struct cap_layer *x = a, *y = b;
	double rx = x->gain / (double)x->moves, ry = y->gain / (double)y->moves;

	if (rx != ry)
		return rx < ry ? -1 : 1;
	if (x->moves != y->moves)
		return x->moves > y->moves ? -1 : 1;
	return x->layer - y->layer;
}

/* Does layer l of p reach min_distinct workers for every expert? */
static bool layer_distinct_ok(const struct co_placement *p, int l, int need, int32_t *last,
			      int32_t *nd)
{
	const int32_t *se = p->slot_expert + (size_t)l * p->total_slots;

	for (int e = 0; e < p->n_experts; e++) {
		last[e] = -1;
		nd[e] = 0;
	}
	for (int g = 0; g < p->total_slots; g++) {
		int e = se[g];
		if (e >= 0 && last[e] != p->slot_worker[g]) {
			last[e] = p->slot_worker[g];
			nd[e]++; /* slots run worker by worker: a new worker each time it changes */
		}
	}
	for (int e = 0; e < p->n_experts; e++)
		if (nd[e] < need)
			return false;
	return true;
}

long co_place_cap_moves(struct co_placement *p, const struct co_placement *prev,
			const double *load, int min_distinct, long max_moves)
{
	const size_t S = p ? (size_t)p->total_slots : 0;
	struct co_place_stats *sp = NULL, *sq = NULL;
	struct cap_layer *c = NULL;
	int32_t *mine = NULL, *last = NULL, *nd = NULL;
	long total, rc;
	int n = 0, L;

	if (!p || !prev || max_moves < 0)
		return -EINVAL;
	total = co_place_moves(prev, p);
	if (total < 0 || total <= max_moves)
		return total;
	L = p->n_layers;
	sp = malloc(sizeof(*sp) * (size_t)L);
	sq = malloc(sizeof(*sq) * (size_t)L);
	c = malloc(sizeof(*c) * (size_t)L);
	mine = malloc(sizeof(*mine) * (size_t)L * S);
	last = malloc(sizeof(*last) * (size_t)p->n_experts);
	nd = malloc(sizeof(*nd) * (size_t)p->n_experts);
	if (!sp || !sq || !c || !mine || !last || !nd) {
		rc = -ENOMEM;
		goto out;
	}
	if (co_place_evaluate(p, load, sp) < 0 || co_place_evaluate(prev, load, sq) < 0) {
		rc = -EINVAL;
		goto out;
	}
	memcpy(mine, p->slot_expert, sizeof(*mine) * (size_t)L * S);
	for (int l = 0; l < L; l++) {
		const int32_t *a = prev->slot_expert + (size_t)l * S, *b = mine + (size_t)l * S;
		long m = 0;

		for (size_t g = 0; g < S; g++)
			m += a[g] != b[g];
		if (m == 0 || (min_distinct >= 2 &&
			       !layer_distinct_ok(prev, l, min_distinct, last, nd)))
			continue;
		c[n++] = (struct cap_layer){ l, m, sp[l].balancedness - sq[l].balancedness };
	}
	qsort(c, (size_t)n, sizeof(*c), cap_cmp);
	int given = 0;
	while (given < n && total > max_moves) {
		int l = c[given].layer;
		memcpy(p->slot_expert + (size_t)l * S, prev->slot_expert + (size_t)l * S,
		       sizeof(*mine) * S);
		total -= c[given++].moves;
	}
	/* the last layer given back may have freed more than needed: take back what fits,
	 * best value first */
	for (int i = given - 1; i >= 0; i--) {
		if (c[i].gain <= 0 || total + c[i].moves > max_moves)
			continue;
		memcpy(p->slot_expert + (size_t)c[i].layer * S, mine + (size_t)c[i].layer * S,
		       sizeof(*mine) * S);
		total += c[i].moves;
	}
	for (int l = 0; l < L; l++)
		co_place__build_routing(p, l);
	rc = total;
out:
	free(sp);
	free(sq);
	free(c);
	free(mine);
	free(last);
	free(nd);
	return rc;
}
