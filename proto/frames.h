/* SPDX-License-Identifier: Apache-2.0 */
/*
 * proto/frames.h - data-plane frames carried by transport put_imm: dispatch (tokens to an
 * expert worker) and combine (pre-weighted partial sums back to the coordinator).
 *
 * Wire layout, every integer and float little-endian, offsets from the frame start:
 *
 *   header (32 bytes)
 *     0  u32 magic        FP_MAGIC ("FRF1")
 *     4  u16 version      FP_VERSION
 *     6  u8  kind         enum fp_kind
 *     7  u8  dtype        enum fp_dtype of the vectors
 *     8  u16 layer
 *    10  u16 micro_batch
 *    12  u32 step_epoch
 *    16  u32 n_tokens
 *    20  u32 hidden       elements per vector
 *    24  u32 n_pairs      dispatch: total (slot, weight) pairs; combine: 0
 *    28  u32 payload_len  bytes after the header; frame length = 32 + payload_len
 *
 *   dispatch payload
 *     token_rows  [n_tokens]  u32   row of each token in the micro-batch
 *     pair_counts [n_tokens]  u16   pairs belonging to each token, in token order
 *     pairs       [n_pairs]   {u16 slot, u16 zero, f32 weight}   (8 bytes each)
 *     zero padding to a 16-byte boundary
 *     vectors     [n_tokens][hidden] bf16 or f32
 *
 *   combine payload
 *     token_rows  [n_tokens]  u32
 *     zero padding to a 16-byte boundary
 *     partials    [n_tokens][hidden] bf16 or f32  (already multiplied by the gate weights)
 *
 * Decoders never trust the buffer: every count, size and offset is checked against the
 * buffer length with overflow-safe arithmetic before a view is returned, so a view's
 * pointers are always inside the buffer. Views point into the caller's buffer (no copies).
 */
#ifndef FERRY_PROTO_FRAMES_H
#define FERRY_PROTO_FRAMES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/common.h"

#define FP_MAGIC 0x31465246u /* "FRF1" read as LE u32 */
#define FP_VERSION 1
#define FP_HDR_SIZE 32
#define FP_PAIR_SIZE 8
#define FP_MAX_TOKENS (1u << 20)
#define FP_MAX_HIDDEN (1u << 16)
#define FP_MAX_PAIRS_PER_TOKEN 256

enum fp_kind {
	FP_KIND_DISPATCH = 1,
	FP_KIND_COMBINE = 2,
};

enum fp_dtype {
	FP_DTYPE_BF16 = 1,
	FP_DTYPE_F32 = 2,
};

/* Frame header fields, host order. */
struct fp_header {
	enum fp_kind kind;
	enum fp_dtype dtype;
	uint16_t layer;
	uint16_t micro_batch;
	uint32_t step_epoch;
	uint32_t n_tokens;
	uint32_t hidden;
	uint32_t n_pairs;
};

/* What an encoder reads: host arrays owned by the caller. */
struct fp_dispatch {
	struct fp_header h;          /* kind is set by the encoder */
	const uint32_t *token_rows;  /* [n_tokens] */
	const uint16_t *pair_counts; /* [n_tokens], sum == h.n_pairs */
	const uint16_t *slots;       /* [n_pairs] local expert slot of each pair */
	const float *weights;        /* [n_pairs] gate weight of each pair */
	const void *vectors;         /* [n_tokens][hidden] h.dtype, host order */
};

struct fp_combine {
	struct fp_header h;         /* kind is set by the encoder, n_pairs must be 0 */
	const uint32_t *token_rows; /* [n_tokens] */
	const void *partials;       /* [n_tokens][hidden] h.dtype, host order */
};

/* A validated frame: pointers into the decoded buffer, which the caller keeps alive. The
 * arrays are little-endian and may be unaligned except vectors/partials, which sit at a
 * 16-byte offset from the frame start; read them with fp_le16()/fp_le32()/fp_lef32(). */
struct fp_dispatch_view {
	struct fp_header h;
	const uint8_t *token_rows;  /* [n_tokens] u32 LE */
	const uint8_t *pair_counts; /* [n_tokens] u16 LE */
	const uint8_t *pairs;       /* [n_pairs] {u16 slot, u16 0, f32 weight} LE */
	const uint8_t *vectors;     /* [n_tokens][hidden] dtype LE */
	size_t frame_len;
};

struct fp_combine_view {
	struct fp_header h;
	const uint8_t *token_rows; /* [n_tokens] u32 LE */
	const uint8_t *partials;   /* [n_tokens][hidden] dtype LE */
	size_t frame_len;
};

static inline uint16_t fp_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t fp_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static inline float fp_lef32(const uint8_t *p)
{
	uint32_t u = fp_le32(p);
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* Bytes per element of dtype, 0 if dtype is not a valid enum fp_dtype. */
size_t fp_dtype_size(enum fp_dtype dtype);

/* Exact encoded length of a frame with these counts. Returns 0, or -EINVAL (bad dtype,
 * count over the FP_MAX_* limits) / -EOVERFLOW (does not fit u32 payload_len). */
int fp_dispatch_size(uint32_t n_tokens, uint32_t hidden, uint32_t n_pairs, enum fp_dtype dtype,
		     size_t *ret_len);
int fp_combine_size(uint32_t n_tokens, uint32_t hidden, enum fp_dtype dtype, size_t *ret_len);

/* Encode into buf[cap]. Returns 0 and the frame length in *ret_len, or -EINVAL (bad
 * fields, pair counts not summing to n_pairs), -EOVERFLOW, -ENOBUFS (cap too small). */
int fp_dispatch_encode(const struct fp_dispatch *d, void *buf, size_t cap, size_t *ret_len);
int fp_combine_encode(const struct fp_combine *c, void *buf, size_t cap, size_t *ret_len);
/* The same without the partials (c->partials is not read), for a frame whose partials are
 * written elsewhere (a GPU's memory): the header, token rows and padding into buf (cap
 * bytes for them), *ret_head their length (where the partials start), *ret_len the whole
 * frame's. Errors as fp_combine_encode(). */
int fp_combine_encode_head(const struct fp_combine *c, void *buf, size_t cap, size_t *ret_head,
			   size_t *ret_len);
/* A dispatch frame's bytes before its vectors, from its header (fp_header_decode): what a
 * reader of a frame in device memory copies to the host to decode it. -EINVAL for counts
 * out of the limits. */
int fp_dispatch_head_len(const struct fp_header *h, size_t *ret_head);

/* Reads the header only (kind, counts); validates magic/version/kind/dtype and that the
 * frame fits in len. Returns 0, -EBADMSG (bad magic, version, kind, dtype, counts) or
 * -EMSGSIZE (frame longer than len). err (optional, caller-owned) says why. */
int fp_header_decode(const void *buf, size_t len, struct fp_header *ret_hdr,
		     struct fr_error *err);

/* Full validation. n_slots bounds every dispatch slot (slot < n_slots); weights and
 * layout are checked; vectors are not inspected. Returns 0, -EBADMSG or -EMSGSIZE. */
int fp_dispatch_decode(const void *buf, size_t len, uint32_t n_slots,
		       struct fp_dispatch_view *ret_view, struct fr_error *err);
int fp_combine_decode(const void *buf, size_t len, struct fp_combine_view *ret_view,
		      struct fr_error *err);

/* ---- ring geometry and the immediate ------------------------------------------------ */

/*
 * Ring geometry. Each direction of a coordinator<->worker endpoint is a ring of
 * `slots` equal slots in the receiver's region; the frame of micro-batch mb goes to slot
 * mb % slots, at offset (mb % slots) * slot_bytes. Dispatch slots (worker side) hold a
 * frame of up to `tokens` tokens with up to `tokens * max_pairs` (slot, weight) pairs in
 * f32; combine slots (coordinator side) a frame of `tokens` f32 partials. Sizes are rounded
 * up to FP_RING_ALIGN. Both sides compute them with these functions from the same numbers
 * (the worker announces its ring in Join), so they always agree.
 */
#define FP_RING_ALIGN 4096u
#define FP_RING_MAX_SLOTS 256u /* the imm carries 8 bits of micro-batch */

struct fp_ring {
	uint32_t slots;       /* micro-batches in flight per endpoint (>= 1) */
	uint32_t tokens;      /* largest micro-batch, in tokens (>= 1) */
	uint32_t hidden;      /* model hidden size */
	uint32_t max_pairs;   /* most (slot, weight) pairs one token may carry to one worker */
};
/* Bytes of one dispatch / combine slot (sized for f32 vectors, so either wire dtype fits);
 * 0 when a field is out of the frame limits or slots > FP_RING_MAX_SLOTS. */
size_t fp_ring_dispatch_slot(const struct fp_ring *r);
size_t fp_ring_combine_slot(const struct fp_ring *r);

/* The immediate of a data-plane put: (MoE layer, micro-batch, kind) in 32 bits, so the
 * receiver knows what landed before it reads the frame (and checks it against the frame
 * header): layer in bits 31..16, micro-batch in 15..8, kind in 7..0. */
static inline uint32_t fp_imm(uint32_t layer, uint32_t mb, enum fp_kind kind)
{
	return (layer & 0xffffu) << 16 | (mb & 0xffu) << 8 | ((uint32_t)kind & 0xffu);
}

struct fp_imm_fields {
	uint32_t layer;       /* MoE layer, 0..65535 */
	uint32_t mb;          /* micro-batch, 0..255 */
	uint32_t kind;        /* an enum fp_kind value, unchecked */
};

static inline struct fp_imm_fields fp_imm_decode(uint32_t imm)
{
	return (struct fp_imm_fields){ .layer = imm >> 16, .mb = (imm >> 8) & 0xffu,
				       .kind = imm & 0xffu };
}

#endif /* FERRY_PROTO_FRAMES_H */
