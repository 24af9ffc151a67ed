/* SPDX-License-Identifier: Apache-2.0 */
/*
 * align.c - alignment with the previous layout: workers of equal slot count are permuted
 * (Hungarian assignment, greedy for large groups) and slots within a worker reordered so that
 * experts stay where they were; and the moves a layout costs.
 */
#include "placement/placement-internal.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

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

static int i32_cmp(const void *pa, const void *pb)
{
	int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
	return (a > b) - (a < b);
}

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

void co_place__align_layout(struct ws *s, const int32_t *se, const struct prev_layer *pv,
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

long co_place__layout_moves(const struct ws *s, const int32_t *se, const struct prev_layer *pv)
{
	long m = 0;
	if (!pv)
		return 0;
	for (int w = 0; w < s->W; w++)
		for (int i = 0; i < s->cap[w]; i++)
			m += i >= pv->cap[w] || se[s->base[w] + i] != pv->se[pv->base[w] + i];
	return m;
}
