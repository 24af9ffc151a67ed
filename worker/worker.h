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

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"
#include "proto/frames.h"
#include "transport/transport.h"

struct wk_slots;

/* Creates an empty slot table: n_slots per MoE layer (model_n_moe_layers(cfg) layers).
 * cfg is borrowed and must outlive the table. Errors: -EINVAL, -ENOMEM. */
int wk_slots_create(const struct model_config *cfg, int n_slots, struct wk_slots **ret);
void wk_slots_destroy(struct wk_slots *s);
int wk_slots_count(const struct wk_slots *s);
/* The config the table was created with (borrowed from the caller of wk_slots_create). */
const struct model_config *wk_slots_config(const struct wk_slots *s);

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

/* ==== the data plane: serving dispatch frames over the transport =========================== */

/*
 * Ring geometry. Each direction of a coordinator<->worker endpoint is a ring of
 * `slots` equal slots in the receiver's region; the frame of micro-batch mb goes to slot
 * mb % slots, at offset (mb % slots) * slot_bytes. Dispatch slots (worker side) hold a
 * frame of up to `tokens` tokens with up to `tokens * max_pairs` (slot, weight) pairs in
 * f32; combine slots (coordinator side) a frame of `tokens` f32 partials. Sizes are rounded
 * up to 4 KiB. Both sides compute them with these functions from the same numbers (the
 * worker announces its ring in Join), so they always agree.
 */
struct wk_ring {
	uint32_t slots;       /* micro-batches in flight per endpoint (>= 1) */
	uint32_t tokens;      /* largest micro-batch, in tokens (>= 1) */
	uint32_t hidden;      /* model hidden size */
	uint32_t max_pairs;   /* most (slot, weight) pairs one token may carry to one worker */
};
/* Bytes of one dispatch / combine slot (sized for f32 vectors, so either wire dtype fits);
 * 0 when a field is out of the frame limits or slots > 256 (the imm carries 8 bits of
 * micro-batch). */
size_t wk_ring_dispatch_slot(const struct wk_ring *r);
size_t wk_ring_combine_slot(const struct wk_ring *r);

/* imm of a data-plane put: (layer, micro-batch, kind). Receivers check it against the
 * frame header. */
static inline uint32_t wk_imm(uint32_t layer, uint32_t mb, enum fp_kind kind)
{
	return (layer & 0xffffu) << 16 | (mb & 0xffu) << 8 | ((uint32_t)kind & 0xffu);
}

struct wk_server;

struct wk_server_opts {
	struct wk_ring ring;
	/* Worker-side accounting only; nothing else. */
	const char *name;     /* for log lines ("w0") */
};

/*
 * Serves one coordinator endpoint: every TP_EV_ARRIVAL is a dispatch frame in `recv`
 * (slot = mb % ring.slots), decoded with fp_dispatch_decode() against the table's slot
 * count, computed with wk_compute() (bf16 vectors widened to f32 first) and answered with
 * one combine frame of the same layer, micro-batch, epoch, dtype and token rows, put at the
 * same slot of the coordinator's region with imm wk_imm(layer, mb, FP_KIND_COMBINE); then
 * the arrival is released. Frames of several micro-batches may be outstanding; they are
 * answered in arrival order.
 *
 * ctx, ep (connected), recv (the endpoint's receive region, ring.slots dispatch slots)
 * and slots are borrowed. The server allocates and registers its own send ring. While
 * run() runs, the server takes every event of ctx: give it a context of its own.
 * Errors: -EINVAL (ring out of limits or does not fit recv or the peer's region),
 * -ENOMEM.
 */
int wk_server_create(struct wk_slots *slots, struct tp_context *ctx, struct tp_ep *ep,
		     struct tp_mem *recv, const struct wk_server_opts *o,
		     struct wk_server **ret, struct fr_error *err);
/* Processes frames for up to timeout_ms (-1: until stopped or failed; 0: what is ready
 * now), sleeping in tp_wait() while idle. Returns 0 (timeout or wk_server_stop()),
 * -ECONNRESET (the coordinator's endpoint failed or closed: err says why) or -EBADMSG (a
 * frame failed validation, err names the field and the layer/micro-batch; the server
 * refuses to go on, since a coordinator that sends malformed frames cannot be trusted
 * with the rest of the ring), or rarely -ENOMEM (expert scratch) or a context-wide
 * transport error. Every failure is final: later calls return it again, same text. */
int wk_server_run(struct wk_server *w, int timeout_ms, struct fr_error *err);
/* Makes a running wk_server_run() return 0 within ~100 ms, and every later call at once
 * (a stop that races the start of run() is not lost). Thread- and signal-safe. */
void wk_server_stop(struct wk_server *w);
/* Counters since the last take, then reset. Thread-safe (the control-plane thread reads
 * them while run() serves). ret_tokens/ret_ns: [n_moe_layers] token-expert pairs computed
 * and compute nanoseconds per MoE layer; ret_frames: frames served. Any may be NULL. */
void wk_server_take_stats(struct wk_server *w, uint64_t *ret_tokens, uint64_t *ret_ns,
			  uint64_t *ret_frames);
/* Does not touch ep, ctx or recv. Accepts NULL. */
void wk_server_destroy(struct wk_server *w);

#endif
