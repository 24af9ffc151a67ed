/* SPDX-License-Identifier: Apache-2.0 */
/*
 * moe.h - the seam between the engine and the routed experts, and both of its halves.
 *
 * The engine (coordinator/) hands each MoE layer's routed work to a struct moe: dispatch()
 * the tokens with their top-k (expert, weight), combine() the weighted partial sums back.
 * Two implementations sit behind it:
 *   - in-process experts (local.c): slot tables computed in this process;
 *   - remote experts (remote.c): the cluster's data path. Each token goes once to each
 *     worker holding any of its experts, as a dispatch frame (proto/frames.h) over the
 *     transport; the worker's data-plane server (serve.c) computes its slots grouped by
 *     slot (slots.c) and answers with one combine frame of pre-weighted partials.
 * The worker daemon (worker/) wraps the server with its control plane; the placement
 * (placement: which worker holds which expert in which slot) decides where tokens go.
 */
#ifndef FERRY_MOE_H
#define FERRY_MOE_H

#include <stdbool.h>
#include <stdint.h>

#include "placement/placement.h"
#include "model/model.h"
#include "proto/frames.h"
#include "transport/transport.h"

/* ==== the seam ============================================================================== */

/* Most micro-batches a forward pass is split into (and that the seam must track). */
#define MOE_MAX_MICRO_BATCHES 8

/* ==== the MoE seam ========================================================================== */

/* Routed-expert work for one MoE layer of one micro-batch. The engine calls dispatch() with
 * the normalized hidden states and every token's top-k (expert, weight), computes the shared
 * experts, then calls combine(), which must ADD sum_j w_j * Expert_j(x[t]) into out[t].
 * Each op returns 0 or a negative errno (the forward pass fails with it). */
struct moe_ops {
	const char *name;
	int (*dispatch)(void *ctx, int layer, int mb, const float *x /* [n][hidden] */, int n_tok,
			const int32_t *expert /* [n][k] */, const float *weight /* [n][k] */, int k);
	int (*combine)(void *ctx, int layer, int mb, float *out /* [n][hidden], += */);
	void (*destroy)(void *ctx);
};

struct moe {
	const struct moe_ops *ops;
	void *ctx;
};

struct moe_device_ops;

/* In-process experts: n_workers slot tables, expert e of every layer on worker e % n_workers
 * (a worker per table, computed one after the other). Binds the routed experts from ck,
 * which must outlive it. Errors: -EINVAL, -ENOMEM, -ENOENT (missing tensor, err names it). */
int moe_local_create(const struct model_ckpt *ck, int n_workers, struct moe *ret,
			struct fr_error *err);
/* The same with every table's experts on a device (moe_slots_use_device(dev_ops,
 * dev_ctx), borrowed: they must outlive it), as ferry-worker's with [compute] device =
 * cuda:N; dev_ops NULL is moe_local_create(). */
int moe_local_create_on(const struct model_ckpt *ck, int n_workers,
			const struct moe_device_ops *dev_ops, void *dev_ctx, struct moe *ret,
			struct fr_error *err);
void moe_destroy(struct moe *moe);

/* Remote experts: the cluster's data path (ARCHITECTURE §2, §4). Worker w is reached
 * through eps[w] (connected; its receive region recv[w] holds ring.slots combine slots,
 * proto/frames.h) and holds the slots placement p gives it. Per layer and micro-batch,
 * dispatch() picks for every (token, expert) a replica so that the workers' loads in this
 * micro-batch come out most even (co_place_choose), sends each token ONCE to each worker holding any
 * of its experts, as one dispatch frame per worker with the token's (slot, weight) pairs,
 * and returns without waiting; combine() waits for the combine frames of exactly the
 * workers it sent to and adds their partials. Up to ring.slots micro-batches may be
 * outstanding; the frame of micro-batch mb uses ring slot mb % ring.slots.
 *
 * The workers' endpoints may live on several transport contexts (one per local device, so
 * that no single NIC carries every worker): eps[i] and recv[i] are on one of ctxs[0..n_ctxs),
 * worker i's send ring is allocated on that same context, and the ops poll every context
 * and sleep on all of them at once (tp_wait_many()).
 *
 * Everything (ctxs, eps, recv, p, load) is borrowed and used only from the thread calling
 * the ops. */
struct moe_remote_opts {
	struct fp_ring ring;          /* the geometry every worker announced (same for all) */
	enum fp_dtype wire;           /* FP_DTYPE_BF16 (default when 0) or FP_DTYPE_F32 */
	int timeout_ms;               /* combine() waits at most this long (default 30000) */
	struct co_load *load;         /* NULL, or where tokens per expert/slot are counted */
	uint32_t epoch;               /* written into every frame's step_epoch */
	const char *const *names;     /* NULL, or [n_workers] worker names for messages */
	/* A worker that owes a combine frame past its step deadline is suspect: fenced (its
	 * later frames are dropped) and the op fails as if its endpoint had (-ECONNRESET,
	 * moe_remote_recover() applies). The deadline, from the put of its dispatch frame:
	 * max(suspect_ms, 10x the longest of its last 64 answers, 10x its longest answer per
	 * token times the tokens sent), once 4 answers are known (before: timeout_ms).
	 * 0: no suspicion, only timeout_ms. */
	int suspect_ms;
	/* NULL, or called after each combine with the MoE layer index and the time since its
	 * dispatch began (the experts' part of the step as the engine sees it: /metrics). */
	void (*on_combine)(void *ctx, int moe_layer, uint64_t ns);
	void *on_combine_ctx;
};

/* Errors: -EINVAL (shapes: placement vs config vs ring; n_ctxs outside 1..TP_WAIT_MANY_MAX,
 * an endpoint on none of ctxs; err says which), -ENOMEM, tp_mem_alloc()'s.
 * At run time the ops return -ECONNRESET (a worker's endpoint failed, or it did not answer
 * within its step deadline or timeout_ms and is fenced: err names it and the
 * layer/micro-batch), -ETIMEDOUT (a send slot or credit did not free up), -EBADMSG (a malformed or
 * unexpected combine frame), -E2BIG (a micro-batch larger than ring.tokens, or a token
 * with more than ring.max_pairs experts on one worker), -EINVAL (misuse: a dense layer, mb
 * outside 0..255, a ring slot still busy, a combine without its dispatch), -ENOBUFS (one
 * micro-batch left uncombined while 4 x ring.slots later frames queued behind it).
 * moe_remote_error() has the text. Errors found before anything is sent leave the ring
 * usable; the others (timeout, a failed endpoint that owed a frame, a bad frame) are
 * sticky: frames in flight could land in reused slots, so every later op returns the same
 * error and the caller rebuilds the MoE over fresh endpoints. The destroy op waits up to
 * timeout_ms for puts still reading its send buffers (tcp sends from them in place). */
int moe_remote_create(const struct model_config *cfg, struct tp_context *const *ctxs,
			 int n_ctxs, int n_workers, struct tp_ep *const *eps,
			 struct tp_mem *const *recv, const struct co_placement *p,
			 const struct moe_remote_opts *o, struct moe *ret, struct fr_error *err);
/* Live rebalance, between two steps (the thread of the ops; no micro-batch outstanding):
 * from the next dispatch on, route by p (same layers, experts, workers and slots per worker
 * as the one in use; borrowed until the next call or destroy) and write epoch into every
 * frame. The workers must hold p's slots staged for that epoch (moe_server_stage()).
 * Errors: -EINVAL (another shape), -EBUSY (a micro-batch is outstanding), the sticky error. */
int moe_remote_set_placement(struct moe *moe, const struct co_placement *p, uint32_t epoch);
/* Text of the last run-time failure of a remote MoE ("" if none). */
const char *moe_remote_error(const struct moe *moe);
/* Between steps (same thread rules as the ops): makes transport progress for up to
 * timeout_ms and writes into dead[] (at most max) the workers whose endpoint failed since
 * the last call, each reported once. Returns their number, or the MoE's sticky error. */
int moe_remote_check(struct moe *moe, int timeout_ms, int *dead, int max);
/* After a step failed because a worker's endpoint failed (the sticky -ECONNRESET, or the
 * dispatch that needed a dead worker): abandons the micro-batches in flight - waits up to
 * timeout_ms for every frame the live workers owe, releases them unread - and makes the
 * ring usable again, so the step can run again once the routing leaves the dead workers
 * out (moe_remote_check() names them). Returns 0, -ENOENT (no worker is dead: nothing to
 * recover from), or the failure that stays (a live worker timed out or sent a bad frame). */
int moe_remote_recover(struct moe *moe, int timeout_ms);
/* A worker that came back (it rejoined after its endpoint failed): from now on worker i is
 * reached over ep and answers into recv (both borrowed, on the same transport context as
 * before; the old ones are no longer used and may be destroyed after this returns). Between
 * steps. Errors: -EINVAL (i, or ep on another context), -EBUSY (a micro-batch is out). */
int moe_remote_replace_worker(struct moe *moe, int i, struct tp_ep *ep, struct tp_mem *recv);
/* Fences worker i (it stopped answering heartbeats): nothing is sent to it any more, its
 * frames are dropped, moe_remote_check() reports it. Between steps. */
void moe_remote_fence(struct moe *moe, int i);
/* A new worker joined while serving: it gets the next index (returned), reached over ep
 * and answering into recv (borrowed), and load accounting moves to load (which counts it;
 * borrowed). Route to it only after moe_remote_set_placement() with a placement of one
 * more worker. Between steps. Errors: -EINVAL (ep or recv do not fit), -EBUSY, -ENOMEM. */
int moe_remote_add_worker(struct moe *moe, struct tp_ep *ep, struct tp_mem *recv,
			  const char *name, struct co_load *load);
/* Why worker i is out: 0 (it is not), -ETIMEDOUT (fenced: it did not answer in time), or
 * its endpoint's error. */
int moe_remote_worker_status(const struct moe *moe, int i);

/* ==== the expert side: slot tables and grouped compute (slots.c) ============================ */

/*
 * A worker holds, per MoE layer, a fixed number of slots; each slot holds one logical
 * expert's SwiGLU FFN (weights borrowed from a checkpoint mmap). Given a batch of tokens,
 * each with the (slot, weight) pairs that selected this worker, it computes experts grouped
 * by slot (one matmul per slot over all its tokens) and returns one pre-weighted partial
 * sum per token. In-process experts and ferry-worker run the same code.
 */
struct moe_slots;

/* Creates an empty slot table: n_slots per MoE layer (model_n_moe_layers(cfg) layers).
 * cfg is borrowed and must outlive the table. Errors: -EINVAL, -ENOMEM. */
int moe_slots_create(const struct model_config *cfg, int n_slots, struct moe_slots **ret);
void moe_slots_destroy(struct moe_slots *s);
int moe_slots_count(const struct moe_slots *s);
/* The config the table was created with (borrowed from the caller of moe_slots_create). */
const struct model_config *moe_slots_config(const struct moe_slots *s);

struct moe_batch;

/* Where a table's experts live when not in host memory: a device that holds each slot's
 * weights and runs the layer (moe/gpu.c fills one for CUDA GPUs; the table only calls
 * through it, so this library stays free of device code). */
struct moe_device_ops {
	const char *name;
	/* Copies ffn's three matrices to the device; *ret_dev names the copy. */
	int (*load)(void *ctx, const struct model_ffn *ffn, void **ret_dev);
	void (*unload)(void *ctx, void *dev); /* NULL is fine */
	/* moe_compute() with dev[n_slots] (NULL for empty slots): same contract. exact:
	 * kn_precision() is KN_PRECISION_EXACT (f32 activations and fp32 products, for
	 * checking); else the device's fast arithmetic (bf16 inputs, fp32 sums). */
	int (*compute)(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
		       const struct moe_batch *b, bool exact, float *out);
	/* Frames in device memory (the worker's rings there: GPUDirect RDMA; the twin's stand
	 * in host memory). Optional, all three or none. Copies that return once done: */
	int (*to_host)(void *ctx, void *host, const void *dev, size_t bytes);
	int (*to_dev)(void *ctx, void *dev, const void *host, size_t bytes);
	/* compute() with b->x in device memory in dtype x_dt (KN_DTYPE_F32 or _BF16: the
	 * wire's, checked by moe_compute_dev), the partials into device memory at out in
	 * out_dt (the same two); returns once they are there (a put may read them at once). */
	int (*compute_dev)(void *ctx, void *const *dev, int n_slots, int hidden, int inter,
			   const struct moe_batch *b, enum kn_dtype x_dt, bool exact, void *out,
			   enum kn_dtype out_dt);
};

/* The device ops' CPU twin (dev_twin.c, [compute] device = twin): an expert's "device
 * copy" is its views, compute runs moe_compute() on a scratch table of the ctx's, so the
 * worker's device path runs, and is tested, without a GPU. ctx from moe_dev_twin_create()
 * (cfg borrowed, -ENOMEM), for every table of that model; destroy after them. */
extern const struct moe_device_ops moe_dev_twin_ops;
int moe_dev_twin_create(const struct model_config *cfg, void **ret);
void moe_dev_twin_destroy(void *ctx); /* NULL is fine */

/* Puts this table's experts on a device: every moe_slot_set() from now on also loads the
 * expert through ops->load, and moe_compute() runs through ops->compute. ops and ctx are
 * borrowed and must outlive the table. Call it on an empty table. Errors: -EBUSY (slots
 * already set), -EINVAL. */
int moe_slots_use_device(struct moe_slots *s, const struct moe_device_ops *ops, void *ctx);

/* Puts expert `expert` (weights in *ffn, borrowed) into (moe_layer, slot); replaces what
 * was there. Errors: -EINVAL (indices out of range, shapes not the config's); on a device
 * table, what its load returns (-ENOMEM, -EIO). */
int moe_slot_set(struct moe_slots *s, int moe_layer, int slot, int expert,
		const struct model_ffn *ffn);
/* The device ops and ctx of a device table (moe_slots_use_device); false on the CPU. */
bool moe_slots_device(const struct moe_slots *s, const struct moe_device_ops **ops, void **ctx);

/* Logical expert in a slot, or -1 when empty. */
int moe_slot_expert(const struct moe_slots *s, int moe_layer, int slot);

/* One layer's work for this worker. Pairs of token t are [pair_off[t], pair_off[t+1]). */
struct moe_batch {
	int n_tok;
	const float *x;          /* [n_tok][hidden] f32 */
	const int32_t *pair_off; /* [n_tok + 1] */
	const int32_t *slot;     /* [n_pairs] slot index within the layer */
	const float *weight;     /* [n_pairs] routing weight */
};

/* out[t] = sum over t's pairs of weight * FFN_slot(x[t]); out: [n_tok][hidden] f32,
 * overwritten. Scratch is owned by s and grows to the largest batch seen (not thread-safe
 * per table). Errors: -EINVAL (empty slot or slot out of range), -ENOMEM. */
int moe_compute(struct moe_slots *s, int moe_layer, const struct moe_batch *b, float *out);
/* The same on a device table whose ops have compute_dev, with b->x and out in device
 * memory (dtypes x_dt and out_dt, see moe_device_ops). Errors: moe_compute()'s, and
 * -EOPNOTSUPP (a CPU table, or ops without frames in device memory). */
int moe_compute_dev(struct moe_slots *s, int moe_layer, const struct moe_batch *b,
		    enum kn_dtype x_dt, void *out, enum kn_dtype out_dt);

/* Per-slot token counts and compute time of the last moe_compute call per layer (load
 * accounting). ret_ns may be NULL. */
void moe_last_stats(const struct moe_slots *s, int moe_layer, uint64_t *ret_ns);

/* ==== the worker's data plane: serving dispatch frames over the transport (serve.c) ========= */

struct moe_server;

struct moe_server_opts {
	struct fp_ring ring;
	/* Worker-side accounting only; nothing else. */
	const char *name;     /* for log lines ("w0") */
	uint32_t epoch;       /* the slot-map epoch of the table given to moe_server_create() */
	/* Frames in device memory (GPUDirect RDMA): recv is, and dev_send (borrowed, ring.slots
	 * combine slots) is the combine ring there; the table's device ops (to_host, to_dev,
	 * compute_dev) reach both. The server copies each dispatch frame's head (header, rows,
	 * pairs: fp_dispatch_head_len) to the host to decode it, computes from the vectors
	 * where they landed into the combine frame's partials where they are sent from, and
	 * writes the combine head there. NULL: frames in host memory, the send ring the
	 * server's own. */
	struct tp_mem *dev_send;
};

/*
 * Serves one coordinator endpoint: every TP_EV_ARRIVAL is a dispatch frame in `recv`
 * (slot = mb % ring.slots), decoded with fp_dispatch_decode() against the table's slot
 * count, computed with moe_compute() (bf16 vectors widened to f32 first) and answered with
 * one combine frame of the same layer, micro-batch, epoch, dtype and token rows, put at the
 * same slot of the coordinator's region with imm fp_imm(layer, mb, FP_KIND_COMBINE); then
 * the arrival is released. Frames of several micro-batches may be outstanding; they are
 * answered in arrival order.
 *
 * ctx, ep (connected), recv (the endpoint's receive region, ring.slots dispatch slots)
 * and slots are borrowed. The server allocates and registers its own send ring. While
 * run() runs, the server takes every event of ctx: give it a context of its own.
 * Errors: -EINVAL (ring out of limits or does not fit recv or the peer's region),
 * -ENOMEM.
 */
int moe_server_create(struct moe_slots *slots, struct tp_context *ctx, struct tp_ep *ep,
		     struct tp_mem *recv, const struct moe_server_opts *o,
		     struct moe_server **ret, struct fr_error *err);
/* Host memory that the data path copies to and from an expert device (moe_device_ops):
 * the receive ring (f32 frames are computed where they land), the widened activations of
 * bf16 frames and the partials. A worker on a GPU pins them (moe_gpu_module.pin) so that
 * those copies go by DMA. Fills up to max regions, returns how many there are (0 with
 * frames in device memory: only frame heads cross, a few KiB). */
struct moe_host_region {
	void *p;
	size_t bytes;
	const char *what; /* "receive ring", "activations", "partials" */
};
#define MOE_SERVER_HOST_REGIONS 3
int moe_server_host_regions(const struct moe_server *w, struct moe_host_region *v, int max);

/* Processes frames for up to timeout_ms (-1: until stopped or failed; 0: what is ready
 * now), sleeping in tp_wait() while idle. Returns 0 (timeout or moe_server_stop()),
 * -ECONNRESET (the coordinator's endpoint failed or closed: err says why) or -EBADMSG (a
 * frame failed validation, err names the field and the layer/micro-batch; the server
 * refuses to go on, since a coordinator that sends malformed frames cannot be trusted
 * with the rest of the ring), or rarely -ENOMEM (expert scratch) or a context-wide
 * transport error. Every failure is final: later calls return it again, same text. */
int moe_server_run(struct moe_server *w, int timeout_ms, struct fr_error *err);
/* Makes a running moe_server_run() return 0 within ~100 ms, and every later call at once
 * (a stop that races the start of run() is not lost). Thread- and signal-safe. */
void moe_server_stop(struct moe_server *w);
/* Counters since the last take, then reset. Thread-safe (the control-plane thread reads
 * them while run() serves). ret_tokens/ret_ns: [n_moe_layers] token-expert pairs computed
 * and compute nanoseconds per MoE layer; ret_frames: frames served. Any may be NULL. */
void moe_server_take_stats(struct moe_server *w, uint64_t *ret_tokens, uint64_t *ret_ns,
			  uint64_t *ret_frames);
/* Since create: dispatch frames answered, their bytes and the combine frames' bytes; and
 * like take_stats, per MoE layer, but never reset (ret_tokens, ret_ns may be NULL).
 * Thread-safe. */
struct moe_server_totals {
	uint64_t frames, bytes_in, bytes_out;
};
void moe_server_totals(struct moe_server *w, struct moe_server_totals *ret,
		       uint64_t *ret_tokens, uint64_t *ret_ns);
/*
 * Live rebalance: hands the server the slot table of a coming epoch (same slot count per
 * layer as the current one). The server keeps answering with its current table until the
 * first dispatch frame whose step_epoch is `epoch` arrives - the coordinator has swapped its
 * routing table by then, and no frame of the old epoch can follow - then switches to it
 * and destroys the table it replaces unless that is the one given at create (the caller's).
 * The server owns next from this call on (a table staged but never switched to is
 * destroyed by the next stage or by moe_server_destroy()). Thread-safe (the control thread
 * calls it while run() serves). Errors: -EINVAL (slot count differs; next is then still
 * the caller's).
 */
int moe_server_stage(struct moe_server *w, struct moe_slots *next, uint32_t epoch);
/* The epoch of the table the server answers with now. Thread-safe. */
uint32_t moe_server_epoch(struct moe_server *w);
/* Does not touch ep, ctx or recv (nor the table given at create). Accepts NULL. */
void moe_server_destroy(struct moe_server *w);

#endif /* FERRY_MOE_H */
