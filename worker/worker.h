/* SPDX-License-Identifier: Apache-2.0 */
/*
 * worker.h - expert slots and their compute: the worker side of the MoE seam.
 *
 * A worker holds, per MoE layer, a fixed number of slots; each slot holds one logical
 * expert's SwiGLU FFN (weights borrowed from a checkpoint mmap). Given a batch of tokens,
 * each with the (slot, weight) pairs that selected this worker, it computes experts grouped
 * by slot (one matmul per slot over all its tokens) and returns one pre-weighted partial
 * sum per token. The single-process engine runs this in-process; ferry-worker runs the same
 * code behind the transport.
 */
#ifndef FERRY_WORKER_H
#define FERRY_WORKER_H

#include <stdint.h>

#include "model/model.h"

struct wk_slots;

/* Creates an empty slot table: n_slots per MoE layer (model_n_moe_layers(cfg) layers).
 * cfg is borrowed and must outlive the table. Errors: -EINVAL, -ENOMEM. */
int wk_slots_create(const struct model_config *cfg, int n_slots, struct wk_slots **ret);
void wk_slots_destroy(struct wk_slots *s);
int wk_slots_count(const struct wk_slots *s);

/* Puts expert `expert` (weights in *ffn, borrowed) into (moe_layer, slot); replaces what
 * was there. Errors: -EINVAL (indices out of range, shapes not the config's). */
int wk_slot_set(struct wk_slots *s, int moe_layer, int slot, int expert,
		const struct model_ffn *ffn);
/* Logical expert in a slot, or -1 when empty. */
int wk_slot_expert(const struct wk_slots *s, int moe_layer, int slot);

/* One layer's work for this worker. Pairs of token t are [pair_off[t], pair_off[t+1]). */
struct wk_batch {
	int n_tok;
	const float *x;          /* [n_tok][hidden] f32 */
	const int32_t *pair_off; /* [n_tok + 1] */
	const int32_t *slot;     /* [n_pairs] slot index within the layer */
	const float *weight;     /* [n_pairs] routing weight */
};

/* out[t] = sum over t's pairs of weight * FFN_slot(x[t]); out: [n_tok][hidden] f32,
 * overwritten. Scratch is owned by s and grows to the largest batch seen (not thread-safe
 * per table). Errors: -EINVAL (empty slot or slot out of range), -ENOMEM. */
int wk_compute(struct wk_slots *s, int moe_layer, const struct wk_batch *b, float *out);

/* Per-slot token counts and compute time of the last wk_compute call per layer (load
 * accounting). ret_ns may be NULL. */
void wk_last_stats(const struct wk_slots *s, int moe_layer, uint64_t *ret_ns);

#endif
