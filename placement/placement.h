/* SPDX-License-Identifier: Apache-2.0 */
/*
 * placement.h - where routed experts live and how much work each worker gets
 * (ARCHITECTURE §5).
 *
 * Slot model. Every worker w has slots[w] slots per MoE layer (from its memory or config;
 * 0 = the worker holds nothing, e.g. it is dead). A layer's slots are numbered globally:
 * worker w owns the global ids slot_base[w] .. slot_base[w+1]-1, its local slot s is global
 * id slot_base[w] + s. Every slot holds one logical expert; every expert has at least one
 * replica; total slots >= routed experts and the surplus holds replicas of hot experts.
 *
 * Load model: an expert's load (tokens, or any non-negative weight) is split between its
 * replicas the way the dispatch splits its tokens (co_place_choose(): water-filling, the
 * split that evens the workers' loads most); a worker's load in a layer is the sum of its
 * shares. The
 * solver minimises the largest worker load of every layer; its searches steer by the equal
 * split (an upper bound, cheap to update) and judge layouts by water-filling.
 *
 * Four parts:
 *   co_place_*        solver, routing table, replica choice per token, quality metrics
 *   co_load_*         sliding-window load accounting (tokens and compute time)
 *   co_load_profile_* load-profile files: the solver's input from disk
 *   co_place_file_*   placement files: a plan on disk, and the previous one read back
 *
 * Everything returns 0 or a negative errno; -EINVAL failures that a user can cause fill a
 * struct fr_error naming the problem. Nothing here logs, prints or exits.
 */
#ifndef FERRY_PLACEMENT_H
#define FERRY_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Shape limits (input validation; far above any DeepSeekMoE model). */
#define CO_PLACE_MAX_LAYERS 4096
#define CO_PLACE_MAX_EXPERTS 65536
#define CO_PLACE_MAX_WORKERS 16384
#define CO_PLACE_MAX_SLOTS (1 << 20)           /* total slots of one layer */
#define CO_PLACE_MAX_CELLS (1 << 26)           /* n_layers * total slots */

/* ==== placement ============================================================================= */

/* One physical copy of a logical expert. */
struct co_place_replica {
	int32_t worker;
	int32_t slot; /* local slot index on that worker */
};

/* A placement of every MoE layer. Allocated by co_place_solve() / co_place_from_table(),
 * released with co_place_destroy(); read-only for everyone else. */
#define CO_PLACE_EMPTY (-1) /* slot_expert of a slot taken out of service (co_place_unload) */

struct co_placement {
	int n_layers;
	int n_experts;
	int n_workers;
	int total_slots;                 /* per layer: sum of slots[] */
	int32_t *slots;                  /* [n_workers] slots per layer of each worker */
	int32_t *slot_base;              /* [n_workers + 1] prefix sums of slots[] */
	int32_t *slot_worker;            /* [total_slots] worker owning each global slot */
	int32_t *slot_expert;            /* [n_layers][total_slots] logical expert in each slot,
					  * or CO_PLACE_EMPTY */
	/* Routing table: the replicas of (layer l, expert e) are
	 * rep[l * total_slots + rep_off[l * (n_experts + 1) + e] .. + rep_off[... + e + 1]),
	 * ordered by worker, then slot. Use co_place_replicas(). */
	int32_t *rep_off;                /* [n_layers][n_experts + 1] */
	struct co_place_replica *rep;    /* [n_layers][total_slots] */
};

struct co_place_problem {
	int n_layers;
	int n_experts;             /* routed experts per MoE layer */
	int n_workers;
	const int *slots;          /* [n_workers] slots per layer, >= 0; borrowed for the call */
	const double *load;        /* [n_layers][n_experts] finite, >= 0; NULL = uniform;
				    * borrowed for the call */
};

enum co_place_algo {
	CO_PLACE_ALGO_FERRY = 0,   /* default: see co_place_solve() */
	CO_PLACE_ALGO_EPLB,        /* EPLB's global policy only (baseline, comparisons) */
};

struct co_place_opts {
	enum co_place_algo algo;
	/* 0 or 1: no guarantee. k >= 2: every expert has replicas on at least k different
	 * workers (each expert then gets at least k replicas). */
	int min_distinct;
	/* With a previous placement: accept a layer whose largest worker load is up to
	 * (1 + migrate_tolerance) x the best one found, if it moves fewer experts. 0 = best
	 * load first (moves only break ties); e.g. 0.05 keeps the old placement of a layer
	 * unless the new one is more than 5% better. > 0 with algo FERRY also makes the
	 * solver migration-aware (see co_place_solve()): it starts from the previous layout
	 * and moves replicas only until the largest load is within this tolerance of a lower
	 * bound, or as low as a from-scratch EPLB solve would get it. Must be finite and
	 * >= 0. */
	double migrate_tolerance;
};

/*
 * Computes a placement of every layer.
 *
 * Per layer: replicas go one at a time to the expert with the highest load per replica
 * (EPLB's replication; with min_distinct = k every expert starts with k), then replicas
 * are packed heaviest-first onto the least-loaded worker with a free slot (EPLB's packing,
 * generalised to unequal slot counts), once as-is and once preferring workers that do not
 * yet hold the expert. Each packing is improved by local search on the most loaded worker
 * (swapping two replicas between workers, or handing a slot of a cold expert to a hot
 * one), which never raises the largest load: with algo FERRY the result is never worse than
 * EPLB's global policy. With prev (same n_layers, n_experts, n_workers), the previous layout
 * of each layer and a local search started from it are candidates too, workers with equal
 * slot counts are permuted and slots within a worker reordered to keep experts where they
 * were, and migrate_tolerance trades load for moved experts (see co_place_moves()).
 *
 * Migration-aware path (algo FERRY, prev of the same slot counts, migrate_tolerance > 0):
 * each layer starts from prev's layout. First its replica counts are brought to what
 * replication gives for this load (a slot of an expert with more replicas than that goes to
 * one with fewer, where the latter is hotter per replica; the new replica lands on the
 * least-loaded worker without it), so that spare slots follow the hot experts as they
 * drift. Then a local search moves replicas (swaps, and slots of over-replicated experts
 * handed to hot ones) choosing the move that removes the most load above the target per
 * newly loaded slot, until the largest water-filled load (see co_place_worker_loads()) is
 * at the target: within (1 + migrate_tolerance) of a lower bound (mean load, heaviest
 * replica after replication, without spare slots the heaviest expert plus the lightest ones
 * beside it), or no lower than EPLB's packing of this load gets it, whichever is higher:
 * balance that a from-scratch solve would not give is not worth moving experts for. Slots
 * are then given back their prev expert where the loads allow. Only a layer that cannot
 * reach the target that way gets the full candidates above, chosen by the rule above.
 *
 * pb, opts (NULL = defaults) and prev (may be NULL) are borrowed. *ret is owned by the
 * caller (co_place_destroy()).
 * Errors: -EINVAL with err naming the problem: a shape out of range, a negative or
 * non-finite load "(layer, expert)", fewer slots than experts ("need at least N slots"),
 * a min_distinct guarantee the slots cannot give, prev of another shape. -ENOMEM.
 */
int co_place_solve(const struct co_place_problem *pb, const struct co_place_opts *opts,
		   const struct co_placement *prev, struct co_placement **ret,
		   struct fr_error *err);

/* Builds a placement from an explicit table (a layout read back, or the default
 * expert-e-on-worker-e%n one): slot_expert is [n_layers][sum slots], copied.
 * Errors: -EINVAL (shapes; an expert id out of range; an expert with no replica, named),
 * -ENOMEM. */
int co_place_from_table(int n_layers, int n_experts, int n_workers, const int *slots,
			const int32_t *slot_expert, struct co_placement **ret,
			struct fr_error *err);

/* Accepts NULL. */
void co_place_destroy(struct co_placement *p);

/*
 * Caps the migration from prev to p at max_moves slots (co_place_moves()) by giving whole
 * layers of p back their layout in prev. The layers given back are those that gain least
 * balancedness (mean / max worker load under load, NULL = uniform) per moved slot, first
 * come; a layer given back is then taken again if it fits in what the cap leaves. With
 * min_distinct >= 2 a layer whose prev layout breaks that guarantee is never given back.
 * Returns the moves left (<= max_moves unless no more layers can be given back), or -EINVAL
 * (shapes differ, max_moves < 0), -ENOMEM. p is modified in place (its routing table
 * rebuilt); prev and load are borrowed.
 */
long co_place_cap_moves(struct co_placement *p, const struct co_placement *prev,
			const double *load, int min_distinct, long max_moves);

/* The replicas of (layer, expert) and their number; NULL/0 when out of range. */
const struct co_place_replica *co_place_replicas(const struct co_placement *p, int layer,
						 int expert, int *ret_n);

/* Logical expert in (layer, worker, local slot); CO_PLACE_EMPTY for an unloaded slot or
 * one out of range. */
int co_place_expert_at(const struct co_placement *p, int layer, int worker, int slot);

/* Takes slots (layer[i], slot[i]) of worker out of service, e.g. because the worker
 * released them (Internal.UnloadExperts) or is leaving: they become CO_PLACE_EMPTY and the
 * routing table stops choosing them. All or nothing. Returns n, or -EINVAL (a slot out of
 * range, empty already or listed twice), -EBUSY (some expert would be left without a
 * replica: named in err), -ENOMEM. Not thread-safe with co_place_choose() on p. */
int co_place_unload(struct co_placement *p, int worker, int n, const int32_t *layer,
		    const int32_t *slot, struct fr_error *err);
/* Whether every expert in worker's slots (in service) has a copy on another worker for
 * which live(ctx, that worker) holds: whether the others could stand in for it. */
bool co_place_covered_elsewhere(const struct co_placement *p, int worker,
				bool (*live)(const void *ctx, int worker), const void *ctx);
/* Slots of worker, over all layers, that hold an expert (are not CO_PLACE_EMPTY). */
int co_place_filled(const struct co_placement *p, int worker);

/* Checks the invariants: every slot holds a valid expert or is empty, every expert has >= 1
 * replica,
 * the routing table matches the slots, and (min_distinct >= 2) every expert is on at least
 * min_distinct workers. Returns 0 or -EINVAL with err naming the first violation. */
int co_place_check(const struct co_placement *p, int min_distinct, struct fr_error *err);

/*
 * A move from placement `from` to `to` (same shape) in waves, for workers that load a
 * wave's new slots beside those serving: wave i changes at most room[w] slots of worker w
 * (over all layers; room[w] < 0: no limit, 0: none), and every wave is a placement that serves -
 * each expert keeps a copy, and min(min_distinct, its workers in from, in to) distinct
 * workers. The changes of one wave take effect together. *ret: n placements (the last one
 * equals `to`; none when nothing changes), the caller destroys each and frees the array.
 * Errors: -EINVAL (shapes differ), -ENOSPC (the changes left form cycles that need more
 * room than the workers have: err names a worker), -ENOMEM.
 */
int co_place_waves(const struct co_placement *from, const struct co_placement *to,
		   const int32_t *room, int min_distinct, struct co_placement ***ret, int *ret_n,
		   struct fr_error *err);

/* p with one more worker, of `slots` slots per layer, all empty (out of service): a worker
 * that joined while serving, before it gets experts. *ret is the caller's. Errors: -EINVAL,
 * -ENOMEM. */
int co_place_add_worker(const struct co_placement *p, int slots, struct co_placement **ret,
			struct fr_error *err);

/* ---- quality ---- */

struct co_place_stats {
	double max_load;      /* largest worker load */
	double mean_load;     /* mean over workers that have slots */
	double balancedness;  /* mean / max; 1 when there is no load */
};

/* Worker loads of one layer under a load row (load[n_experts], NULL = uniform), each
 * expert's load split among its replicas the way co_place_choose() splits a step's tokens:
 * water-filling, the split that makes the workers' loads most even (the equal split when
 * that is already even): ret[n_workers]. Over steps whose tokens are drawn from the row,
 * the dispatch's sums match it up to the sampling (tests/placement).
 * Errors: -EINVAL (layer), -ENOMEM. */
int co_place_worker_loads(const struct co_placement *p, int layer, const double *load,
			  double *ret);

/* Per-layer stats under a profile (load[n_layers][n_experts], NULL = uniform):
 * ret[n_layers]. Errors: -EINVAL. */
int co_place_evaluate(const struct co_placement *p, const double *load,
		      struct co_place_stats *ret);

/* Migration cost from a to b: the number of (layer, worker, slot) whose expert differs,
 * i.e. the expert weights workers must load to go from a to b. Returns the count, or
 * -EINVAL when the shapes (layers, experts, slots per worker) differ. */
long co_place_moves(const struct co_placement *a, const struct co_placement *b);

/* ---- dispatch ---- */

/*
 * Replica choice for one layer of one batch: a replica ret[t * k + j] for every token t and
 * each of its k experts expert[t * k + j], such that the workers' loads (worker_tokens,
 * in/out: zero it per batch, or seed it with tokens already sent; each choice adds one
 * token) come out as even as the replicas allow. Each expert's tokens are split over the
 * workers holding it by water-filling on top of the loads already there (co_place_worker_
 * loads()'s model, so the model is what the dispatch does, up to whole tokens), each
 * replica's share rounded down and each token left to the replica whose worker has the
 * fewest tokens so far, the lowest replica (by worker, then slot) on ties; an expert's
 * tokens fill its replicas in that order, in token order. Deterministic.
 * Errors: -EINVAL (layer, sizes, an expert id out of range or with no replica; nothing is
 * written), -ENOMEM.
 */
int co_place_choose(const struct co_placement *p, int layer, int n_tok, int k,
		    const int32_t *expert, int64_t *worker_tokens, struct co_place_replica *ret);

/* ==== sliding-window load accounting ====================================================== */

/* Token counts per (layer, expert), per (layer, global slot) - which gives per (layer,
 * worker) and per worker - and compute time per (worker, layer), summed over the last
 * `window` steps. A step is whatever the caller advances with co_load_next_step() (a forward
 * step, a time bucket). Counters are physical: slot ids refer to (worker, slot), whichever
 * expert a slot holds. Per-step counters saturate at UINT32_MAX tokens. Not thread-safe:
 * one writer, or the caller locks. Memory: window * (n_layers * (n_experts + total_slots) * 4
 * + n_workers * n_layers * 8) bytes. */
struct co_load;

/* slots[n_workers] is copied. Errors: -EINVAL (shapes, window < 1 or > 1<<20), -ENOMEM. */
int co_load_create(int n_layers, int n_experts, int n_workers, const int *slots, int window,
		   struct co_load **ret, struct fr_error *err);
/* Accepts NULL. */
void co_load_destroy(struct co_load *ld);

/* Closes the current step and opens a new, empty one; once `window` steps are held the
 * oldest one leaves the sums. */
void co_load_next_step(struct co_load *ld);
/* Forgets everything (one empty step). */
void co_load_reset(struct co_load *ld);
/* Steps now in the window, the current one included: 1 .. window. */
int co_load_window_steps(const struct co_load *ld);

/* Counts n routed (token, expert) pairs of a layer in the current step: expert[i] went to
 * replica rep[i] (rep may be NULL: expert counts only). Errors: -EINVAL (an id out of range;
 * nothing is counted then). */
int co_load_record(struct co_load *ld, int layer, int n, const int32_t *expert,
		   const struct co_place_replica *rep);
/* Adds a worker's measured compute time for a layer to the current step. Errors: -EINVAL. */
int co_load_record_time(struct co_load *ld, int worker, int layer, uint64_t ns);

/* Window sums. ret sizes: [n_experts], [total_slots], [n_workers], [n_workers].
 * layer -1 in worker_tokens/worker_time sums over all layers. Errors: -EINVAL (layer). */
int co_load_expert_tokens(const struct co_load *ld, int layer, uint64_t *ret);
int co_load_slot_tokens(const struct co_load *ld, int layer, uint64_t *ret);
int co_load_worker_tokens(const struct co_load *ld, int layer, uint64_t *ret);
int co_load_worker_time(const struct co_load *ld, int layer, uint64_t *ret);

/* Totals since co_load_create() (co_load_reset() keeps them; counters for /metrics): tokens
 * per (layer, expert) and per (layer, worker), compute time per (layer, worker) in ns. ret
 * sizes [n_experts], [n_workers], [n_workers]. Errors: -EINVAL (layer). */
int co_load_total_expert_tokens(const struct co_load *ld, int layer, uint64_t *ret);
int co_load_total_worker_tokens(const struct co_load *ld, int layer, uint64_t *ret);
int co_load_total_worker_time(const struct co_load *ld, int layer, uint64_t *ret);
/* Copies src's totals into dst (same layers and experts, at least as many workers: the
 * accounting of a grown cluster), so the counters do not restart. Errors: -EINVAL. */
int co_load_carry_totals(struct co_load *dst, const struct co_load *src);

enum co_load_metric {
	CO_LOAD_TOKENS = 0,   /* tokens routed to each worker */
	CO_LOAD_TIME,         /* measured compute time of each worker: device-level load */
};
/* mean / max of one layer's (-1: all layers') worker loads over the window, the mean taken
 * over workers with slots; 1 when nothing was recorded. Errors: -EINVAL. */
int co_load_balancedness(const struct co_load *ld, int layer, enum co_load_metric m,
			 double *ret);
/* The window's tokens per (layer, expert) as a solver profile: ret[n_layers][n_experts]. */
void co_load_profile_get(const struct co_load *ld, double *ret);

/* ==== load-profile files ==================================================================== */

/*
 * A load profile is JSON:
 *
 *   { "layers": [ [l0e0, l0e1, ...], [l1e0, ...], ... ],    required
 *     "n_layers": 61, "n_experts": 128,                       optional, checked
 *     "comment": "anything" }                                 optional
 *
 * "layers" holds one array per MoE layer, all of the same length (the routed experts),
 * of finite numbers >= 0 (token counts or relative loads; scale does not matter). Other
 * keys and duplicate keys are rejected.
 */
struct co_load_profile {
	int n_layers;
	int n_experts;
	double *load;   /* [n_layers][n_experts], heap, owned by the profile */
};

/* Parses len bytes of JSON. want_layers / want_experts: required sizes, 0 = any.
 * Errors: -EINVAL with err naming the problem and where ("layers[3][17]: -1 is negative",
 * "invalid JSON at line 2 column 5: ..."), -ENOMEM. *ret is owned by the caller
 * (co_load_profile_fini()); written only on success. */
int co_load_profile_parse(const char *json, size_t len, int want_layers, int want_experts,
			  struct co_load_profile *ret, struct fr_error *err);
/* Same from a file (at most 64 MiB); messages start with the path. Adds -errno of the read. */
int co_load_profile_read(const char *path, int want_layers, int want_experts,
			 struct co_load_profile *ret, struct fr_error *err);
/* Frees the loads; accepts a zeroed profile. */
void co_load_profile_fini(struct co_load_profile *pr);

/* ==== placement files ======================================================================= */

/*
 * A placement file is JSON (written by co_place_file_write(), `ferryctl placement plan --out`):
 *
 *   { "format": "ferry-placement",                             optional, checked
 *     "n_workers": 3,                                           required
 *     "slots": [2, 2, 3],                                       required: slots per layer of
 *                                                               each worker, n_workers of them
 *     "n_experts": 6, "n_layers": 2,                            optional, checked
 *     "layers": [ [0, 1, 2, 3, 4, 5, 0], [5, 4, 3, 2, 1, 0, -1] ], required
 *     "comment": "anything" }                                   optional
 *
 * "layers" holds one array per MoE layer: the expert in every global slot, worker 0's slots
 * first (in slot order), then worker 1's, and so on, so each has sum(slots) entries; -1 is
 * an empty slot. Every expert 0 .. n_experts-1 must be in at least one slot of every layer.
 * Without "n_experts" the experts are 0 .. the largest id in the table. "epoch", "workers"
 * and "load" (what `ferryctl placement show --json` adds) are read past; other keys and
 * duplicate keys are rejected.
 */

/* Parses len bytes of JSON into a placement (routing table built, co_place_check()ed).
 * want_experts: the required expert count, 0 = any. Errors: -EINVAL with err naming the
 * problem and where ("layers[3][17] (worker 2 slot 5): expert 200 out of range (128
 * experts)", "layers[3]: expert 9 is in no slot", "layers[1] has 95 slots, \"slots\" add up
 * to 96", "invalid JSON at line 2 column 5: ..."), -ENOMEM. *ret is owned by the caller
 * (co_place_destroy()), written only on success. */
int co_place_file_parse(const char *json, size_t len, int want_experts,
			struct co_placement **ret, struct fr_error *err);
/* Same from a file (at most 256 MiB); messages start with the path. Adds -errno of the read. */
int co_place_file_read(const char *path, int want_experts, struct co_placement **ret,
		       struct fr_error *err);
/* The file's text for p (one line per layer), NUL-terminated: *ret is heap-owned by the
 * caller, *ret_len its length. Errors: -EINVAL (no p), -ENOMEM. */
int co_place_file_format(const struct co_placement *p, char **ret, size_t *ret_len,
			 struct fr_error *err);
/* Writes p to path: a temporary file beside it renamed over it, so a reader never sees half
 * a file. Errors: -ENOMEM, -errno of the create/write/rename with err naming the path. */
int co_place_file_write(const struct co_placement *p, const char *path, struct fr_error *err);

#endif /* FERRY_PLACEMENT_H */
