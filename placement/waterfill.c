/* SPDX-License-Identifier: Apache-2.0 */
/*
 * waterfill.c - the worker loads a layout gives under the dispatch's replica choice.
 *
 * co_place_choose() sends each token of a replicated expert to the replica whose worker has
 * the fewest tokens so far in the step. In the fluid limit that splits every expert's load
 * among the workers holding it so that the workers' loads are as even as possible: the
 * split with the least sum of squared worker loads, which is also the one with the smallest
 * largest load. It is found by block coordinate descent: one expert at a time, its load is
 * taken off its workers and poured back as water over their levels (the least-loaded
 * workers rise together). Each such step minimises the sum of squares over the split of
 * that expert, and never raises the largest load among the workers it touches, so from the
 * equal split the largest load only falls; a few passes reach the optimum closely.
 */
#include "placement/placement-internal.h"

#include <string.h>

#define WF_MAX_PASSES 64

/* Pours load ld over the distinct workers of entries [a, b) of wk, whose current levels are
 * wl[]; writes each entry's share into flow[] (0 for repeats of a worker) and raises wl[]. */
static void wf_pour(double ld, const int32_t *wk, int a, int b, double *wl, double *flow,
		    int32_t *mark, int32_t gen, double *lv)
{
	int r = 0;

	for (int i = a; i < b; i++) {
		int w = wk[i];
		if (mark[w] == gen)
			continue;
		mark[w] = gen;
		/* insertion sort: r is a replica count, small */
		int j = r++;
		while (j > 0 && lv[j - 1] > wl[w]) {
			lv[j] = lv[j - 1];
			j--;
		}
		lv[j] = wl[w];
	}
	double pre = 0, h = 0;
	for (int k = 1; k <= r; k++) {
		pre += lv[k - 1];
		h = (ld + pre) / k;
		if (k == r || h <= lv[k])
			break;
	}
	gen = -gen; /* a second stamp for "already given its share" */
	for (int i = a; i < b; i++) {
		int w = wk[i];
		double f = 0;
		if (mark[w] != gen) {
			mark[w] = gen;
			f = h > wl[w] ? h - wl[w] : 0;
		}
		flow[i] = f;
		wl[w] += f;
	}
}

double co_place__waterfill(int E, int W, const double *load, const double *base,
			   const int32_t *off, const int32_t *wk, double rel_eps, double *wl,
			   double *flow, int32_t *mark, double *lv)
{
	double total = 0, m = 0;
	int32_t gen = 0;

	if (base)
		memcpy(wl, base, sizeof(*wl) * (size_t)W);
	else
		memset(wl, 0, sizeof(*wl) * (size_t)W);
	memset(mark, 0, sizeof(*mark) * (size_t)W);
	for (int e = 0; e < E; e++) {
		int r = off[e + 1] - off[e];
		total += load[e];
		for (int i = off[e]; i < off[e + 1]; i++) {
			flow[i] = load[e] / r;
			wl[wk[i]] += flow[i];
		}
	}
	/* stop once a pass moves less than rel_eps of the mean worker load */
	double eps = rel_eps * total / (W > 0 ? W : 1);
	for (int pass = 0; pass < WF_MAX_PASSES; pass++) {
		double moved = 0;
		for (int e = 0; e < E; e++) {
			int a = off[e], b = off[e + 1];
			if (b - a < 2 || load[e] <= 0)
				continue;
			for (int i = a; i < b; i++) {
				wl[wk[i]] -= flow[i];
				lv[i - a] = flow[i]; /* the old split, to measure the change */
			}
			wf_pour(load[e], wk, a, b, wl, flow, mark, ++gen, lv + (b - a));
			double change = 0;
			for (int i = a; i < b; i++) {
				double d = flow[i] - lv[i - a];
				change += d < 0 ? -d : d;
			}
			moved = moved > change ? moved : change;
		}
		if (moved <= eps)
			break;
	}
	memset(mark, 0, sizeof(*mark) * (size_t)W);
	for (int w = 0; w < W; w++)
		m = m > wl[w] ? m : wl[w];
	return m;
}
