/* SPDX-License-Identifier: Apache-2.0 */
/*
 * routing.c - the placement object and what the engine asks of it every step: building it
 * (from a table, or for the solver), the routing table, lookups, replica choice per token,
 * taking slots out of service, and the quality metrics of a placement.
 */
#include "placement/placement-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ==== placement object ==================================================================== */

void co_place_destroy(struct co_placement *p)
{
	if (!p)
		return;
	free(p->slots);
	free(p->slot_base);
	free(p->slot_worker);
	free(p->slot_expert);
	free(p->rep_off);
	free(p->rep);
	free(p);
}

static int place_check_shape(int n_layers, int n_experts, int n_workers, const int *slots,
			     int *ret_total, struct fr_error *err)
{
	long total = 0;

	if (n_layers < 1 || n_layers > CO_PLACE_MAX_LAYERS)
		return fr_error_set(err, -EINVAL, "placement: n_layers %d out of range 1..%d",
				    n_layers, CO_PLACE_MAX_LAYERS);
	if (n_experts < 1 || n_experts > CO_PLACE_MAX_EXPERTS)
		return fr_error_set(err, -EINVAL, "placement: n_experts %d out of range 1..%d",
				    n_experts, CO_PLACE_MAX_EXPERTS);
	if (n_workers < 1 || n_workers > CO_PLACE_MAX_WORKERS)
		return fr_error_set(err, -EINVAL, "placement: n_workers %d out of range 1..%d",
				    n_workers, CO_PLACE_MAX_WORKERS);
	if (!slots)
		return fr_error_set(err, -EINVAL, "placement: no slot counts");
	for (int w = 0; w < n_workers; w++) {
		if (slots[w] < 0 || slots[w] > CO_PLACE_MAX_SLOTS)
			return fr_error_set(err, -EINVAL,
					    "placement: worker %d: %d slots out of range 0..%d", w,
					    slots[w], CO_PLACE_MAX_SLOTS);
		total += slots[w];
	}
	if (total > CO_PLACE_MAX_SLOTS)
		return fr_error_set(err, -EINVAL,
				    "placement: %ld slots per layer, more than the limit %d", total,
				    CO_PLACE_MAX_SLOTS);
	if (total < n_experts)
		return fr_error_set(err, -EINVAL,
				    "placement impossible: %d workers give %ld slots per layer, "
				    "fewer than the %d routed experts (need at least %d slots, %ld "
				    "short)", n_workers, total, n_experts, n_experts,
				    n_experts - total);
	if ((long)n_layers * (total + n_experts + 1) > CO_PLACE_MAX_CELLS)
		return fr_error_set(err, -EINVAL,
				    "placement: %d layers x %ld slots is more than the limit %d",
				    n_layers, total, CO_PLACE_MAX_CELLS);
	*ret_total = (int)total;
	return 0;
}

int co_place__alloc(int n_layers, int n_experts, int n_workers, const int *slots,
		    struct co_placement **ret, struct fr_error *err)
{
	struct co_placement *p;
	int total = 0, rc;

	rc = place_check_shape(n_layers, n_experts, n_workers, slots, &total, err);
	if (rc < 0)
		return rc;
	p = calloc(1, sizeof(*p));
	if (!p)
		goto enomem;
	p->n_layers = n_layers;
	p->n_experts = n_experts;
	p->n_workers = n_workers;
	p->total_slots = total;
	p->slots = malloc(sizeof(*p->slots) * (size_t)n_workers);
	p->slot_base = malloc(sizeof(*p->slot_base) * ((size_t)n_workers + 1));
	p->slot_worker = malloc(sizeof(*p->slot_worker) * (size_t)total);
	p->slot_expert = malloc(sizeof(*p->slot_expert) * (size_t)n_layers * (size_t)total);
	p->rep_off = malloc(sizeof(*p->rep_off) * (size_t)n_layers * ((size_t)n_experts + 1));
	p->rep = malloc(sizeof(*p->rep) * (size_t)n_layers * (size_t)total);
	if (!p->slots || !p->slot_base || !p->slot_worker || !p->slot_expert || !p->rep_off ||
	    !p->rep)
		goto enomem;
	p->slot_base[0] = 0;
	for (int w = 0; w < n_workers; w++) {
		p->slots[w] = slots[w];
		p->slot_base[w + 1] = p->slot_base[w] + slots[w];
		for (int g = p->slot_base[w]; g < p->slot_base[w + 1]; g++)
			p->slot_worker[g] = w;
	}
	*ret = p;
	return 0;
enomem:
	co_place_destroy(p);
	return fr_error_set(err, -ENOMEM, "placement: out of memory (%d layers x %d slots)",
			    n_layers, total);
}

/* A counting sort by expert, stable in slot order (so replicas come ordered by worker, then
 * slot). */
void co_place__build_routing(struct co_placement *p, int l)
{
	const int S = p->total_slots, E = p->n_experts;
	const int32_t *se = p->slot_expert + (size_t)l * S;
	int32_t *off = p->rep_off + (size_t)l * (E + 1);
	struct co_place_replica *rep = p->rep + (size_t)l * S;

	memset(off, 0, sizeof(*off) * ((size_t)E + 1));
	for (int g = 0; g < S; g++)
		if (se[g] != CO_PLACE_EMPTY)
			off[se[g] + 1]++;
	for (int e = 0; e < E; e++)
		off[e + 1] += off[e];
	/* off[e] is used as the fill cursor, then shifted back */
	for (int g = 0; g < S; g++) {
		int w = p->slot_worker[g];
		if (se[g] != CO_PLACE_EMPTY)
			rep[off[se[g]]++] = (struct co_place_replica){ w, g - p->slot_base[w] };
	}
	for (int e = E; e > 0; e--)
		off[e] = off[e - 1];
	off[0] = 0;
}

const struct co_place_replica *co_place_replicas(const struct co_placement *p, int layer,
						 int expert, int *ret_n)
{
	const int32_t *off;

	if (!p || layer < 0 || layer >= p->n_layers || expert < 0 || expert >= p->n_experts) {
		if (ret_n)
			*ret_n = 0;
		return NULL;
	}
	off = p->rep_off + (size_t)layer * (p->n_experts + 1);
	if (ret_n)
		*ret_n = off[expert + 1] - off[expert];
	return p->rep + (size_t)layer * p->total_slots + off[expert];
}

int co_place_expert_at(const struct co_placement *p, int layer, int worker, int slot)
{
	if (!p || layer < 0 || layer >= p->n_layers || worker < 0 || worker >= p->n_workers ||
	    slot < 0 || slot >= p->slots[worker])
		return -1;
	return p->slot_expert[(size_t)layer * p->total_slots + p->slot_base[worker] + slot];
}

int co_place_from_table(int n_layers, int n_experts, int n_workers, const int *slots,
			const int32_t *slot_expert, struct co_placement **ret,
			struct fr_error *err)
{
	struct co_placement *p = NULL;
	int rc;

	if (!slot_expert)
		return fr_error_set(err, -EINVAL, "placement: no slot table");
	rc = co_place__alloc(n_layers, n_experts, n_workers, slots, &p, err);
	if (rc < 0)
		return rc;
	memcpy(p->slot_expert, slot_expert,
	       sizeof(*slot_expert) * (size_t)n_layers * p->total_slots);
	for (int l = 0; l < n_layers; l++) {
		for (int g = 0; g < p->total_slots; g++) {
			int32_t e = p->slot_expert[(size_t)l * p->total_slots + g];
			if (e < 0 || e >= n_experts) {
				int w = p->slot_worker[g];
				rc = fr_error_set(err, -EINVAL,
						  "placement: layer %d worker %d slot %d: expert %d "
						  "out of range 0..%d", l, w, g - p->slot_base[w],
						  e, n_experts - 1);
				goto fail;
			}
		}
		co_place__build_routing(p, l);
	}
	rc = co_place_check(p, 1, err);
	if (rc < 0)
		goto fail;
	*ret = p;
	return 0;
fail:
	co_place_destroy(p);
	return rc;
}

int co_place_check(const struct co_placement *p, int min_distinct, struct fr_error *err)
{
	const int S = p->total_slots, E = p->n_experts;

	for (int l = 0; l < p->n_layers; l++) {
		const int32_t *se = p->slot_expert + (size_t)l * S;
		const int32_t *off = p->rep_off + (size_t)l * (E + 1);
		const struct co_place_replica *rep = p->rep + (size_t)l * S;
		int filled = 0;

		for (int g = 0; g < S; g++) {
			if (se[g] == CO_PLACE_EMPTY)
				continue;
			if (se[g] < 0 || se[g] >= E)
				return fr_error_set(err, -EINVAL,
						    "placement: layer %d slot %d: expert %d out of "
						    "range", l, g, se[g]);
			filled++;
		}
		if (off[0] != 0 || off[E] != filled)
			return fr_error_set(err, -EINVAL,
					    "placement: layer %d: routing table covers %d of %d "
					    "filled slots", l, off[E] - off[0], filled);
		for (int e = 0; e < E; e++) {
			int n = off[e + 1] - off[e], distinct = 0;
			if (n < 1)
				return fr_error_set(err, -EINVAL,
						    "placement: layer %d: expert %d has no replica",
						    l, e);
			for (int i = off[e]; i < off[e + 1]; i++) {
				const struct co_place_replica *r = &rep[i];
				if (r->worker < 0 || r->worker >= p->n_workers || r->slot < 0 ||
				    r->slot >= p->slots[r->worker] ||
				    se[p->slot_base[r->worker] + r->slot] != e)
					return fr_error_set(err, -EINVAL,
							    "placement: layer %d expert %d: "
							    "replica %d (worker %d slot %d) does "
							    "not match the slots", l, e, i - off[e],
							    r->worker, r->slot);
				if (i > off[e] && (r->worker < r[-1].worker ||
						   (r->worker == r[-1].worker &&
						    r->slot <= r[-1].slot)))
					return fr_error_set(err, -EINVAL,
							    "placement: layer %d expert %d: "
							    "replicas out of order", l, e);
				if (i == off[e] || r->worker != r[-1].worker)
					distinct++;
			}
			if (min_distinct >= 2 && distinct < min_distinct)
				return fr_error_set(err, -EINVAL,
						    "placement: layer %d: expert %d is on %d "
						    "worker(s), fewer than min_distinct %d", l, e,
						    distinct, min_distinct);
		}
	}
	return 0;
}

int co_place_unload(struct co_placement *p, int worker, int n, const int32_t *layer,
		    const int32_t *slot, struct fr_error *err)
{
	const int S = p->total_slots, E = p->n_experts;
	int32_t *left;
	int rc = 0;

	if (worker < 0 || worker >= p->n_workers)
		return fr_error_set(err, -EINVAL, "unload: worker %d out of range 0..%d", worker,
				    p->n_workers - 1);
	if (n < 0 || (n && (!layer || !slot)))
		return fr_error_set(err, -EINVAL, "unload: bad slot list");
	/* Replicas each (layer, expert) keeps: all or nothing, so count first. */
	left = malloc(sizeof(*left) * (size_t)p->n_layers * (size_t)E);
	if (!left)
		return fr_error_set(err, -ENOMEM, "unload: out of memory");
	for (int l = 0; l < p->n_layers; l++)
		for (int e = 0; e < E; e++)
			left[(size_t)l * E + e] = p->rep_off[(size_t)l * (E + 1) + e + 1] -
						  p->rep_off[(size_t)l * (E + 1) + e];
	for (int i = 0; i < n && rc == 0; i++) {
		int l = layer[i], e = co_place_expert_at(p, l, worker, slot[i]);
		if (l < 0 || l >= p->n_layers || slot[i] < 0 || slot[i] >= p->slots[worker])
			rc = fr_error_set(err, -EINVAL, "unload: (layer %d, slot %d) out of range "
					  "for worker %d (%d layers, %d slots)", l, slot[i], worker,
					  p->n_layers, p->slots[worker]);
		else if (e == CO_PLACE_EMPTY)
			rc = fr_error_set(err, -EINVAL, "unload: (layer %d, slot %d) of worker %d "
					  "is empty already", l, slot[i], worker);
		else if (e < CO_PLACE_EMPTY)
			rc = fr_error_set(err, -EINVAL, "unload: (layer %d, slot %d) listed twice",
					  l, slot[i]);
		else if (--left[(size_t)l * E + e] < 1)
			rc = fr_error_set(err, -EBUSY, "unload: expert %d of layer %d would have no "
					  "replica left", e, l);
		else /* mark now so that a duplicate is caught; undone below on error */
			p->slot_expert[(size_t)l * S + p->slot_base[worker] + slot[i]] = -2 - e;
	}
	for (int i = 0; i < n; i++) {
		int32_t *se = &p->slot_expert[(size_t)layer[i] * S + p->slot_base[worker] + slot[i]];
		if (layer[i] < 0 || layer[i] >= p->n_layers || slot[i] < 0 ||
		    slot[i] >= p->slots[worker] || *se > CO_PLACE_EMPTY - 1)
			continue;
		*se = rc < 0 ? -2 - *se : CO_PLACE_EMPTY;
	}
	free(left);
	if (rc < 0)
		return rc;
	for (int l = 0; l < p->n_layers; l++)
		co_place__build_routing(p, l);
	return n;
}

bool co_place_covered_elsewhere(const struct co_placement *p, int worker,
				bool (*live)(const void *ctx, int worker), const void *ctx)
{
	if (!p || worker < 0 || worker >= p->n_workers)
		return false;
	for (int l = 0; l < p->n_layers; l++)
		for (int j = 0; j < p->slots[worker]; j++) {
			int e = co_place_expert_at(p, l, worker, j), n;
			bool ok = false;
			if (e == CO_PLACE_EMPTY)
				continue;
			const struct co_place_replica *r = co_place_replicas(p, l, e, &n);
			for (int k = 0; k < n && !ok; k++)
				ok = r[k].worker != worker && live(ctx, r[k].worker);
			if (!ok)
				return false;
		}
	return true;
}

int co_place_filled(const struct co_placement *p, int worker)
{
	int n = 0;
	if (!p || worker < 0 || worker >= p->n_workers)
		return 0;
	for (int l = 0; l < p->n_layers; l++)
		for (int i = 0; i < p->slots[worker]; i++)
			n += co_place_expert_at(p, l, worker, i) != CO_PLACE_EMPTY;
	return n;
}

/* ==== quality ============================================================================== */

int co_place_worker_loads(const struct co_placement *p, int layer, const double *load,
			  double *ret)
{
	const int32_t *off;
	const struct co_place_replica *rep;
	int32_t *wk, *mark;
	double *flow, *lv, *uniform = NULL;
	size_t S;

	if (!p || layer < 0 || layer >= p->n_layers)
		return -EINVAL;
	off = p->rep_off + (size_t)layer * (p->n_experts + 1);
	rep = p->rep + (size_t)layer * p->total_slots;
	S = (size_t)off[p->n_experts] + 1;
	wk = malloc(sizeof(*wk) * S);
	mark = malloc(sizeof(*mark) * (size_t)p->n_workers);
	flow = malloc(sizeof(*flow) * 3 * S);
	if (!load && (uniform = malloc(sizeof(*uniform) * (size_t)p->n_experts)))
		for (int e = 0; e < p->n_experts; e++)
			uniform[e] = 1.0;
	if (!wk || !mark || !flow || (!load && !uniform)) {
		free(wk);
		free(mark);
		free(flow);
		free(uniform);
		return -ENOMEM;
	}
	lv = flow + S;
	for (size_t i = 0; i + 1 < S; i++)
		wk[i] = rep[i].worker;
	co_place__waterfill(p->n_experts, p->n_workers, load ? load : uniform, NULL, off, wk,
			    WF_EPS_MODEL, ret, flow, mark, lv);
	free(wk);
	free(mark);
	free(flow);
	free(uniform);
	return 0;
}

static struct co_place_stats stats_of(const double *wl, const int32_t *slots, int n_workers)
{
	struct co_place_stats st = { 0, 0, 1.0 };
	int n = 0;

	for (int w = 0; w < n_workers; w++) {
		if (wl[w] > st.max_load)
			st.max_load = wl[w];
		if (slots[w] > 0) {
			st.mean_load += wl[w];
			n++;
		}
	}
	st.mean_load = n ? st.mean_load / n : 0;
	if (st.max_load > 0)
		st.balancedness = st.mean_load / st.max_load;
	return st;
}

int co_place_evaluate(const struct co_placement *p, const double *load,
		      struct co_place_stats *ret)
{
	double *wl;
	int32_t *filled;

	if (!p || !ret)
		return -EINVAL;
	wl = malloc(sizeof(*wl) * (size_t)p->n_workers);
	filled = malloc(sizeof(*filled) * (size_t)p->n_workers);
	if (!wl || !filled) {
		free(wl);
		free(filled);
		return -ENOMEM;
	}
	for (int l = 0; l < p->n_layers; l++) {
		/* the mean is over workers in service in this layer (some slot not unloaded) */
		for (int w = 0; w < p->n_workers; w++) {
			filled[w] = 0;
			for (int i = 0; i < p->slots[w]; i++)
				filled[w] += co_place_expert_at(p, l, w, i) != CO_PLACE_EMPTY;
		}
		co_place_worker_loads(p, l, load ? load + (size_t)l * p->n_experts : NULL, wl);
		ret[l] = stats_of(wl, filled, p->n_workers);
	}
	free(wl);
	free(filled);
	return 0;
}

long co_place_moves(const struct co_placement *a, const struct co_placement *b)
{
	long moves = 0;

	if (!a || !b || a->n_layers != b->n_layers || a->n_experts != b->n_experts ||
	    a->n_workers != b->n_workers ||
	    memcmp(a->slots, b->slots, sizeof(*a->slots) * (size_t)a->n_workers))
		return -EINVAL;
	for (size_t i = 0; i < (size_t)a->n_layers * a->total_slots; i++)
		moves += a->slot_expert[i] != b->slot_expert[i];
	return moves;
}

/* ==== dispatch ============================================================================= */

/* The dispatch rounds the split to whole tokens: passes that move less than 1% of the mean
 * worker load change nothing it keeps, and stopping there makes the choice 1.5-5x cheaper
 * (2.8-18 us a call instead of 4-74 us for 32-256 tokens x top-8 over 8-32 workers with
 * spare slots; the greedy choice before water-filling took 0.8-8 us) */
#define WF_EPS_DISPATCH 1e-2

int co_place_choose(const struct co_placement *p, int layer, int n_tok, int k,
		    const int32_t *expert, int64_t *worker_tokens, struct co_place_replica *ret)
{
	const int32_t *off;
	const struct co_place_replica *rep;
	size_t n, E, W, S;

	if (!p || layer < 0 || layer >= p->n_layers || n_tok < 0 || k < 0 ||
	    (n_tok && k && (!expert || !worker_tokens || !ret)))
		return -EINVAL;
	n = (size_t)n_tok * (size_t)k;
	if (!n)
		return 0;
	off = p->rep_off + (size_t)layer * (p->n_experts + 1);
	rep = p->rep + (size_t)layer * p->total_slots;
	E = (size_t)p->n_experts;
	W = (size_t)p->n_workers;
	S = (size_t)off[E];
	for (size_t i = 0; i < n; i++)
		if (expert[i] < 0 || (size_t)expert[i] >= E || off[expert[i] + 1] == off[expert[i]])
			return -EINVAL;
	/* one block: cnt[E], base[W], wl[W], flow[S], lv[2 S] (doubles); quota[S], wk[S],
	 * cur[E], mark[W] (int32) */
	size_t nd = E + 2 * W + 3 * S, ni = 2 * S + E + W;
	double *cnt = calloc(nd * sizeof(double) + ni * sizeof(int32_t), 1);
	if (!cnt)
		return -ENOMEM;
	double *base = cnt + E, *wl = base + W, *flow = wl + W, *lv = flow + S;
	int32_t *quota = (int32_t *)(lv + 2 * S), *wk = quota + S, *cur = wk + S, *mark = cur + E;

	for (size_t i = 0; i < n; i++)
		cnt[expert[i]] += 1;
	for (size_t w = 0; w < W; w++)
		base[w] = (double)worker_tokens[w];
	for (size_t i = 0; i < S; i++)
		wk[i] = rep[i].worker;
	/* The split that evens the workers' loads most (water-filling over what they already
	 * have), then whole tokens: each replica its share rounded down, then each token left
	 * to the replica whose worker has the fewest tokens so far (wl, now whole counts; the
	 * lowest replica on ties), so that rounding favours no worker. */
	co_place__waterfill((int)E, (int)W, cnt, base, off, wk, WF_EPS_DISPATCH, wl, flow, mark,
			    lv);
	memcpy(wl, base, sizeof(*wl) * W);
	for (size_t e = 0; e < E; e++) {
		int64_t left = (int64_t)cnt[e];
		for (int i = off[e]; i < off[e + 1]; i++) {
			quota[i] = (int32_t)FR_MIN((double)left, flow[i] + 1e-9 * cnt[e]);
			left -= quota[i];
			wl[wk[i]] += quota[i];
		}
		cnt[e] = (double)left; /* the expert's tokens the shares rounded down leave */
		cur[e] = off[e];
	}
	for (size_t e = 0; e < E; e++) {
		for (int64_t left = (int64_t)cnt[e]; left > 0; left--) {
			int best = off[e];
			for (int i = off[e] + 1; i < off[e + 1]; i++)
				if (wl[wk[i]] < wl[wk[best]])
					best = i;
			quota[best]++;
			wl[wk[best]] += 1;
		}
	}
	for (size_t i = 0; i < n; i++) {
		int32_t e = expert[i];
		while (quota[cur[e]] == 0)
			cur[e]++;
		quota[cur[e]]--;
		ret[i] = rep[cur[e]];
		worker_tokens[rep[cur[e]].worker]++;
	}
	free(cnt);
	return 0;
}
