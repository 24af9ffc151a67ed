/* SPDX-License-Identifier: Apache-2.0 */
/*
 * placement-internal.h - what the files of placement/ share and nobody else sees.
 *
 *   routing.c   the placement object, routing table, lookups, replica choice, unload, quality
 *   solver.c    co_place_solve(): per-layer working state, candidates, the choice between them
 *   eplb.c        EPLB's global policy (the baseline): replication, heaviest-first packing
 *   distinct.c    the min_distinct guarantee: cyclic layout, repair
 *   search.c      local search on the most loaded worker
 *   waterfill.c   worker loads under the dispatch's replica choice (water-filling)
 *   align.c       alignment with the previous layout (migration cost)
 *   cap.c       co_place_cap_moves(): a migration budget over whole layers
 *   load.c      sliding-window load accounting (co_load_*)
 *   loadfile.c  load-profile files (co_load_profile_*)
 *   placementfile.c  placement files (co_place_file_*)
 */
#ifndef FERRY_PLACEMENT_INTERNAL_H
#define FERRY_PLACEMENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "placement/placement.h"

/* ---- the placement object (routing.c) ---------------------------------------------------- */

/* A placement of this shape with slots, slot_base and slot_worker filled in; slot_expert and
 * the routing table are left for the caller to fill. slots[n_workers] is copied; *ret is owned
 * by the caller (co_place_destroy()). Errors: -EINVAL with err naming the problem (a shape out
 * of range, fewer slots than experts), -ENOMEM. */
int co_place__alloc(int n_layers, int n_experts, int n_workers, const int *slots,
		    struct co_placement **ret, struct fr_error *err);

/* Rebuilds the routing table (rep_off, rep) of layer l from its slot_expert row. */
void co_place__build_routing(struct co_placement *p, int l);

/* ---- the solver's per-layer working state (solver.c) ------------------------------------- */

struct item {
	double w;
	int32_t e;
};

/* Per-layer working state. Slots are global ids g; worker w owns base[w] .. base[w+1]-1.
 * Each expert's slots form a doubly linked list (head/nxt/prv) so that replica counts,
 * distinct workers and per-worker loads update in O(replicas). */
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
	double heavy_cap;           /* an expert gives up a slot only if its replicas stay
				     * this light (replication's heaviest; INFINITY: any) */
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
	/* co_place__ws_wf_max() */
	int32_t *wf_off;            /* [E + 1] */
	int32_t *wf_wk;             /* [S] */
	double *wf_flow;            /* [S] */
	double *wf_wl;              /* [W] */
	int32_t *wf_mark;           /* [W] zero between uses */
	double *wf_lv;              /* [2 S] */
};

/* The hot helpers of the inner loops stay inline in every file that uses them. */

static inline double ws_weight(const struct ws *s, int e)
{
	return s->rep[e] > 0 ? s->load[e] / s->rep[e] : 0.0;
}

/* Whether expert e may give up one of its slots: it keeps one, and its replicas do not
 * grow heavier than heavy_cap (a hot expert left with too few replicas has no share to
 * shift when a step's tokens swing). */
static inline bool ws_can_give(const struct ws *s, int e)
{
	return s->rep[e] >= 2 && s->load[e] / (s->rep[e] - 1) <= s->heavy_cap;
}

/* Sum of the squared worker loads (equal split): how spread they are. */
static inline double ws_ss(const struct ws *s)
{
	double ss = 0;
	for (int w = 0; w < s->W; w++)
		ss += s->wl[w] * s->wl[w];
	return ss;
}

static inline int ws_count_on(const struct ws *s, int e, int w)
{
	int n = 0;
	if (s->cnt)
		return s->cnt[(size_t)e * s->W + w];
	for (int g = s->head[e]; g >= 0; g = s->nxt[g])
		n += s->sw[g] == w;
	return n;
}

/* Would moving one replica of x from worker a to worker b keep x on enough workers? */
static inline bool ws_move_ok(const struct ws *s, int x, int a, int b)
{
	int nd;
	if (s->need <= 1)
		return true;
	nd = s->ndist[x] - (ws_count_on(s, x, a) == 1) + (ws_count_on(s, x, b) == 0);
	return nd >= FR_MIN(s->need, s->ndist[x]) ;
}

/* wl[w] from the slots of worker w. */
void co_place__ws_recompute_worker(struct ws *s, int w);
/* Puts expert e into slot g (replacing what was there); loads are NOT recomputed. */
void co_place__ws_assign(struct ws *s, int g, int e);
/* The largest worker load; *ret_w (may be NULL) the first worker that carries it. */
double co_place__ws_max(const struct ws *s, int *ret_w);

/* The largest worker load of the layout under the dispatch's split (co_place__waterfill());
 * at most co_place__ws_max(), equal to it without replicas. */
double co_place__ws_wf_max(struct ws *s);

/* ---- worker loads under the dispatch's replica choice (waterfill.c) ---------------------- */

/* Writes into wl[W] the workers' loads of one layer when each expert's load[e] is split among
 * the workers wk[off[e] .. off[e + 1]) holding it (a worker may repeat; an expert with no
 * worker is skipped) the way the dispatch splits it: water-filling, the split that makes the
 * loads most even, on top of base[W] (NULL = 0). Passes stop once one moves less than
 * rel_eps of the mean worker load (WF_EPS_MODEL for the model; the dispatch, which rounds
 * to whole tokens, needs less). Returns the largest; flow[i] is entry i's share (0 for a
 * repeat of a worker). Scratch: mark[W], lv[2 off[E]]. */
#define WF_EPS_MODEL 1e-9
double co_place__waterfill(int E, int W, const double *load, const double *base,
			   const int32_t *off, const int32_t *wk, double rel_eps, double *wl,
			   double *flow, int32_t *mark, double *lv);

/* ---- EPLB's global policy (eplb.c) ------------------------------------------------------- */

/* Replication: every expert gets `start` replicas, then each remaining slot goes to the
 * expert with the highest load per replica (D'Hondt; ties to the lowest id). Writes rep[]. */
void co_place__replicate(struct ws *s, int start);
/* Heaviest replica first onto the least-loaded worker with a free slot (lowest index on
 * ties). prefer_new: first among workers that do not hold the expert yet. Replicas of one
 * expert are adjacent after the sort, so stamp[w] == e + 1 marks "w holds e". */
void co_place__pack_lpt(struct ws *s, bool prefer_new, const int32_t *order_rep);

/* ---- the min_distinct guarantee (distinct.c) --------------------------------------------- */

/* Always satisfies min_distinct k when sum min(cap, E) >= k E: k rounds of every expert laid
 * out worker after worker, at most E per worker (a run of <= E consecutive positions holds
 * distinct experts, and copies of one expert are E apart); extra replicas fill the rest. */
void co_place__pack_cyclic(struct ws *s, const int32_t *order_rep);
/* Swaps replicas until every expert is on >= need workers; false if stuck. Each step puts a
 * duplicated replica of a short expert onto a worker without it, picking the swap partner
 * that keeps the two workers' loads lowest and never pushes the partner below need. */
bool co_place__repair_distinct(struct ws *s);

/* ---- local search (search.c) ------------------------------------------------------------- */

/* Improves the layout while the most loaded worker can be relieved: a move is taken only if
 * every worker it touches ends below the current maximum M, so (M, workers at M) decreases
 * lexicographically and the largest load never rises. Best improvement first. */
void co_place__local_search(struct ws *s);
/* Migration-aware local search from the previous layout pv[S] (s holds it, or a repair of
 * it): while the largest load M is above target, takes among the moves above from the most
 * loaded worker (every touched worker ending below M) the one that removes most load above
 * target, summed over the workers it touches, per slot it newly loads against pv (at least
 * 1); ties to the lower new load. Once the water-filled maximum is within target and the
 * equal-split maximum M within even_target, it swaps only to even out the loads below the
 * largest (between any two workers, the most fall of the sum of squared loads per slot
 * newly loaded) until that sum is within ss_target. Stops there or when no move helps, then
 * gives slots back their pv expert wherever the loads stay within max(target, M) and the
 * sum of squares within max(ss_target, its own). Returns the net change in slots that
 * differ from pv. */
long co_place__local_search_warm(struct ws *s, const int32_t *pv, double target,
				 double even_target, double ss_target);
/* Brings the replica counts toward want[E] (replication's counts for this load) where that
 * pays: while some expert x has fewer than want and replicas heavier than heavy_cap, the
 * heaviest such takes a slot from the surplus expert z (more than want) with the least
 * load per replica once it has one less, if that is lighter than x's replicas are now:
 * z's replica on the least-loaded worker that does not hold x yet (min_distinct kept).
 * Against drift this keeps the spare slots on the experts that are hot now, not on those
 * that were; experts within heavy_cap keep theirs, which saves moves. Returns the slots
 * changed. */
long co_place__refresh_replicas(struct ws *s, const int32_t *want);

/* ---- alignment with the previous layout (align.c) ---------------------------------------- */

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

/* Writes into out[S] the layout se with its bins (solver workers) permuted among workers
 * of equal slot count to maximise overlap with pv, and each worker's experts placed in the
 * slots they held before; without pv, each worker's experts in ascending order. */
void co_place__align_layout(struct ws *s, const int32_t *se, const struct prev_layer *pv,
			    struct align_scratch *as, int32_t *out);
/* Slots of se whose expert differs from pv's (a slot past the worker's previous count
 * counts); 0 without pv. */
long co_place__layout_moves(const struct ws *s, const int32_t *se, const struct prev_layer *pv);

#endif /* FERRY_PLACEMENT_INTERNAL_H */
