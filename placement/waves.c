/* SPDX-License-Identifier: Apache-2.0 */
/*
 * waves.c - co_place_waves(): a move from one placement to another in waves that fit the
 * workers' staging room.
 *
 * A worker loads a wave's new slots beside the ones serving, so a wave may change at most
 * room[w] of worker w's slots (over all layers; < 0: no limit). Every wave must leave a placement that
 * serves: each expert keeps a copy, and as many distinct workers as the guarantee asks
 * (min_distinct, or fewer where the first or the last placement has fewer). The changes of
 * one wave swap in at once, so a copy loaded in a wave may stand in for one freed in it.
 *
 * Greedy: a wave takes, pass after pass, every change whose freed copy is not needed; when
 * no such change is left the remaining ones form cycles (a's slot goes to b while b's goes
 * to a), taken together when the room allows: a change is applied anyway and the experts
 * it leaves short are repaired by the changes that bring them, until nothing is short.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "placement/placement.h"

struct wv {
	int L, E, W, S;
	const struct co_placement *from, *to;
	int32_t *cur;       /* [L][S] the placement being built */
	int32_t *on;        /* [L][E][W] copies of e on w */
	int32_t *cnt;       /* [L][E] copies */
	int32_t *dist;      /* [L][E] workers holding e */
	int32_t *req;       /* [L][E] distinct workers e must keep */
	uint8_t *done;      /* [L][S] slot at its final expert */
	int32_t *used;      /* [W] slots changed in this wave */
	const int32_t *room;
	int32_t *undo;      /* [L*S] slots of a tentative chain */
};

static void wv_set(struct wv *v, int l, int g, int b)
{
	int w = v->from->slot_worker[g], a = v->cur[(size_t)l * v->S + g];
	if (a != CO_PLACE_EMPTY) {
		int32_t *o = &v->on[((size_t)l * v->E + a) * v->W + w];
		v->cnt[(size_t)l * v->E + a]--;
		if (--*o == 0)
			v->dist[(size_t)l * v->E + a]--;
	}
	if (b != CO_PLACE_EMPTY) {
		int32_t *o = &v->on[((size_t)l * v->E + b) * v->W + w];
		v->cnt[(size_t)l * v->E + b]++;
		if ((*o)++ == 0)
			v->dist[(size_t)l * v->E + b]++;
	}
	v->cur[(size_t)l * v->S + g] = b;
}

static bool short_of(const struct wv *v, int l, int e)
{
	return v->cnt[(size_t)l * v->E + e] < 1 ||
	       v->dist[(size_t)l * v->E + e] < v->req[(size_t)l * v->E + e];
}

static bool has_room(const struct wv *v, int w)
{
	return v->room[w] < 0 || v->used[w] < v->room[w];
}

/* Takes pending slot g of layer l to its final expert in this wave. */
static void take(struct wv *v, int l, int g)
{
	wv_set(v, l, g, v->to->slot_expert[(size_t)l * v->S + g]);
	v->done[(size_t)l * v->S + g] = 1;
	v->used[v->from->slot_worker[g]]++;
}

static void untake(struct wv *v, int l, int g, int a)
{
	wv_set(v, l, g, a);
	v->done[(size_t)l * v->S + g] = 0;
	v->used[v->from->slot_worker[g]]--;
}

/* A pending change of layer l that brings expert x to a worker (one not holding x when
 * the shortage is of workers) with room; -1 if none. */
static int find_fix(const struct wv *v, int l, int x)
{
	bool want_worker = v->cnt[(size_t)l * v->E + x] >= 1;
	for (int g = 0; g < v->S; g++) {
		int w = v->from->slot_worker[g];
		if (v->done[(size_t)l * v->S + g] ||
		    v->to->slot_expert[(size_t)l * v->S + g] != x || !has_room(v, w))
			continue;
		if (want_worker && v->on[((size_t)l * v->E + x) * v->W + w])
			continue;
		return g;
	}
	return -1;
}

/* Slot g1 of layer l in a chain: applied, then the shortages repaired by further changes.
 * Returns true when the layer is whole again (kept); otherwise everything is undone. */
static bool take_chain(struct wv *v, int l, int g1)
{
	int n = 0;
	int32_t *was = v->undo;

	was[n++] = g1;
	was[n++] = v->cur[(size_t)l * v->S + g1];
	take(v, l, g1);
	for (;;) {
		int x = -1;
		for (int e = 0; e < v->E && x < 0; e++)
			if (short_of(v, l, e))
				x = e;
		if (x < 0)
			return true;
		int g = find_fix(v, l, x);
		if (g < 0 || n + 2 > 2 * v->S)
			break;
		was[n++] = g;
		was[n++] = v->cur[(size_t)l * v->S + g];
		take(v, l, g);
	}
	while (n > 0) {
		n -= 2;
		untake(v, l, was[n], was[n + 1]);
	}
	return false;
}

/* Whether slot g of layer l may go to its final expert now: the copy it frees is not
 * needed (another copy, on another worker where the guarantee asks for one). */
static bool safe(const struct wv *v, int l, int g)
{
	int a = v->cur[(size_t)l * v->S + g], w = v->from->slot_worker[g];
	size_t le = (size_t)l * v->E + a;
	if (a == CO_PLACE_EMPTY)
		return true;
	if (v->cnt[le] < 2)
		return false;
	return v->on[le * v->W + w] > 1 || v->dist[le] - 1 >= v->req[le];
}

static int distinct_of(const struct co_placement *p, int l, int e, int32_t *seen)
{
	int n = 0, k;
	const struct co_place_replica *r = co_place_replicas(p, l, e, &k);
	for (int i = 0; i < k; i++)
		if (seen[r[i].worker] != e + 1) {
			seen[r[i].worker] = e + 1;
			n++;
		}
	return n;
}

/* A placement of table (slots may be CO_PLACE_EMPTY) of L layers x E experts on W workers
 * of slots[w] each. */
static int from_table_shape(int L, int E, int W, const int32_t *slots, const int32_t *table,
			    struct co_placement **ret, struct fr_error *err)
{
	size_t T = 0;
	for (int w = 0; w < W; w++)
		T += (size_t)slots[w];
	size_t LS = (size_t)L * T;
	int32_t *filled = calloc(LS + 1, sizeof(*filled));
	int32_t *layer = malloc(sizeof(*layer) * (LS + 1));
	int32_t *slot = malloc(sizeof(*slot) * (LS + 1));
	struct co_placement *q = NULL;
	int rc = 0;

	if (!filled || !layer || !slot) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	/* empty slots hold expert 0 for a moment, then leave service */
	for (size_t i = 0; i < LS; i++)
		filled[i] = table[i] == CO_PLACE_EMPTY ? 0 : table[i];
	if ((rc = co_place_from_table(L, E, W, slots, filled, &q, err)) < 0)
		goto out;
	for (int w = 0; w < W; w++) {
		int n = 0;
		for (int l = 0; l < L; l++)
			for (int g = q->slot_base[w]; g < q->slot_base[w + 1]; g++)
				if (table[(size_t)l * T + g] == CO_PLACE_EMPTY) {
					layer[n] = l;
					slot[n++] = g - q->slot_base[w];
				}
		if (n && (rc = co_place_unload(q, w, n, layer, slot, err)) < 0)
			goto out;
	}
	*ret = q;
	q = NULL;
	rc = 0;
out:
	co_place_destroy(q);
	free(filled);
	free(layer);
	free(slot);
	return rc;
}

static int from_table(const struct co_placement *p, const int32_t *table,
		      struct co_placement **ret, struct fr_error *err)
{
	return from_table_shape(p->n_layers, p->n_experts, p->n_workers, p->slots, table, ret,
				err);
}

int co_place_add_worker(const struct co_placement *p, int slots, struct co_placement **ret,
			struct fr_error *err)
{
	int W = p->n_workers + 1, T = p->total_slots + slots, rc;

	if (slots < 1 || W > CO_PLACE_MAX_WORKERS)
		return fr_error_set(err, -EINVAL, "placement: cannot add a worker of %d slots",
				    slots);
	int32_t *sl = malloc(sizeof(*sl) * (size_t)W);
	int32_t *table = malloc(sizeof(*table) * ((size_t)p->n_layers * (size_t)T + 1));
	if (!sl || !table) {
		free(sl);
		free(table);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	memcpy(sl, p->slots, sizeof(*sl) * (size_t)p->n_workers);
	sl[W - 1] = slots;
	for (int l = 0; l < p->n_layers; l++) {
		memcpy(table + (size_t)l * T, p->slot_expert + (size_t)l * p->total_slots,
		       sizeof(*table) * (size_t)p->total_slots);
		for (int j = p->total_slots; j < T; j++)
			table[(size_t)l * T + j] = CO_PLACE_EMPTY;
	}
	rc = from_table_shape(p->n_layers, p->n_experts, W, sl, table, ret, err);
	free(sl);
	free(table);
	return rc;
}

static void waves_free(struct co_placement **w, int n)
{
	for (int i = 0; i < n; i++)
		co_place_destroy(w[i]);
	free(w);
}

int co_place_waves(const struct co_placement *from, const struct co_placement *to,
		   const int32_t *room, int min_distinct, struct co_placement ***ret, int *ret_n,
		   struct fr_error *err)
{
	struct wv v = { 0 };
	struct co_placement **waves = NULL;
	int n_waves = 0, rc = 0;
	long pending = 0;

	if (!from || !to || !room || !ret || !ret_n)
		return fr_error_set(err, -EINVAL, "waves: missing argument");
	if (co_place_moves(from, to) < 0)
		return fr_error_set(err, -EINVAL, "waves: the placements differ in shape");
	v.L = from->n_layers;
	v.E = from->n_experts;
	v.W = from->n_workers;
	v.S = from->total_slots;
	v.from = from;
	v.to = to;
	v.room = room;
	size_t LS = (size_t)v.L * v.S, LE = (size_t)v.L * v.E;
	v.cur = malloc(sizeof(*v.cur) * (LS + 1));
	v.on = calloc(LE * v.W + 1, sizeof(*v.on));
	v.cnt = calloc(LE + 1, sizeof(*v.cnt));
	v.dist = calloc(LE + 1, sizeof(*v.dist));
	v.req = calloc(LE + 1, sizeof(*v.req));
	v.done = calloc(LS + 1, 1);
	v.used = calloc((size_t)v.W + 1, sizeof(*v.used));
	v.undo = malloc(sizeof(*v.undo) * (2 * (size_t)v.S + 2));
	int32_t *seen = calloc((size_t)v.W + 1, sizeof(*seen));
	if (!v.cur || !v.on || !v.cnt || !v.dist || !v.req || !v.done || !v.used || !v.undo ||
	    !seen) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < LS; i++)
		v.cur[i] = CO_PLACE_EMPTY;
	for (int l = 0; l < v.L; l++) {
		for (int g = 0; g < v.S; g++) {
			size_t i = (size_t)l * v.S + g;
			wv_set(&v, l, g, from->slot_expert[i]);
			v.done[i] = from->slot_expert[i] == to->slot_expert[i];
			pending += !v.done[i];
		}
		for (int e = 0; e < v.E; e++) {
			int a = distinct_of(from, l, e, seen), b;
			memset(seen, 0, sizeof(*seen) * (size_t)v.W);
			b = distinct_of(to, l, e, seen);
			memset(seen, 0, sizeof(*seen) * (size_t)v.W);
			v.req[(size_t)l * v.E + e] = FR_MAX(1, FR_MIN(FR_MAX(min_distinct, 1),
								      FR_MIN(a, b)));
		}
	}

	while (pending > 0) {
		long took = 0;
		bool progress = true;
		memset(v.used, 0, sizeof(*v.used) * (size_t)v.W);
		while (progress) {
			progress = false;
			for (int l = 0; l < v.L; l++)
				for (int g = 0; g < v.S; g++)
					if (!v.done[(size_t)l * v.S + g] &&
					    has_room(&v, from->slot_worker[g]) && safe(&v, l, g)) {
						take(&v, l, g);
						took++;
						progress = true;
					}
			for (int l = 0; l < v.L && !progress; l++)
				for (int g = 0; g < v.S && !progress; g++)
					if (!v.done[(size_t)l * v.S + g] &&
					    has_room(&v, from->slot_worker[g]) &&
					    take_chain(&v, l, g)) {
						progress = true;
						took++; /* at least; recounted below */
					}
		}
		if (took == 0) {
			int worst = -1;
			for (int g = 0; g < v.S && worst < 0; g++)
				for (int l = 0; l < v.L && worst < 0; l++)
					if (!v.done[(size_t)l * v.S + g])
						worst = from->slot_worker[g];
			if (worst >= 0 && room[worst] == 0)
				rc = fr_error_set(err, -ENOSPC, "cannot move: worker %d has no "
						  "staging room and %ld slot changes need it",
						  worst, pending);
			else
				rc = fr_error_set(err, -ENOSPC, "cannot move in waves: the %ld slot "
						  "changes left depend on each other beyond the "
						  "staging room (worker %d has room for %d)",
						  pending, worst, worst >= 0 ? room[worst] : 0);
			goto out;
		}
		long left = 0;
		for (size_t i = 0; i < LS; i++)
			left += !v.done[i];
		pending = left;
		struct co_placement **nw = realloc(waves, sizeof(*nw) * ((size_t)n_waves + 1));
		if (!nw) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		waves = nw;
		if ((rc = from_table(from, v.cur, &waves[n_waves], err)) < 0)
			goto out;
		n_waves++;
	}
out:
	free(v.cur);
	free(v.on);
	free(v.cnt);
	free(v.dist);
	free(v.req);
	free(v.done);
	free(v.used);
	free(v.undo);
	free(seen);
	if (rc < 0) {
		waves_free(waves, n_waves);
		return rc;
	}
	*ret = waves;
	*ret_n = n_waves;
	return 0;
}
