/* SPDX-License-Identifier: Apache-2.0 */
/* frames.c - encoders and validating decoders for the data-plane frames (see frames.h). */
#include "proto/frames.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>

struct layout {
	uint64_t rows, counts, pairs, vectors, end;
};

size_t fp_dtype_size(enum fp_dtype dtype)
{
	switch (dtype) {
	case FP_DTYPE_BF16:
		return 2;
	case FP_DTYPE_F32:
		return 4;
	}
	return 0;
}

static uint64_t align16(uint64_t v)
{
	return (v + 15) & ~(uint64_t)15;
}

/* All arithmetic in u64: the FP_MAX_* limits keep every product below 2^40. */
static int layout_of(enum fp_kind kind, uint32_t n_tokens, uint32_t hidden, uint32_t n_pairs,
		     enum fp_dtype dtype, struct layout *l)
{
	size_t es = fp_dtype_size(dtype);
	if (!es || n_tokens > FP_MAX_TOKENS || hidden > FP_MAX_HIDDEN ||
	    (uint64_t)n_pairs > (uint64_t)n_tokens * FP_MAX_PAIRS_PER_TOKEN)
		return -EINVAL;
	if (kind == FP_KIND_COMBINE && n_pairs)
		return -EINVAL;
	l->rows = FP_HDR_SIZE;
	l->counts = l->rows + 4ull * n_tokens;
	if (kind == FP_KIND_DISPATCH) {
		l->pairs = l->counts + 2ull * n_tokens;
		l->vectors = align16(l->pairs + (uint64_t)FP_PAIR_SIZE * n_pairs);
	} else {
		l->pairs = l->counts;
		l->vectors = align16(l->counts);
	}
	l->end = l->vectors + (uint64_t)n_tokens * hidden * es;
	if (l->end - FP_HDR_SIZE > UINT32_MAX)
		return -EOVERFLOW;
	return 0;
}

int fp_dispatch_size(uint32_t n_tokens, uint32_t hidden, uint32_t n_pairs, enum fp_dtype dtype,
		     size_t *ret_len)
{
	struct layout l;
	int rc = layout_of(FP_KIND_DISPATCH, n_tokens, hidden, n_pairs, dtype, &l);
	if (rc < 0)
		return rc;
	*ret_len = (size_t)l.end;
	return 0;
}

int fp_combine_size(uint32_t n_tokens, uint32_t hidden, enum fp_dtype dtype, size_t *ret_len)
{
	struct layout l;
	int rc = layout_of(FP_KIND_COMBINE, n_tokens, hidden, 0, dtype, &l);
	if (rc < 0)
		return rc;
	*ret_len = (size_t)l.end;
	return 0;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_header(uint8_t *p, enum fp_kind kind, const struct fp_header *h,
		       uint32_t payload_len)
{
	put32(p + 0, FP_MAGIC);
	put16(p + 4, FP_VERSION);
	p[6] = (uint8_t)kind;
	p[7] = (uint8_t)h->dtype;
	put16(p + 8, h->layer);
	put16(p + 10, h->micro_batch);
	put32(p + 12, h->step_epoch);
	put32(p + 16, h->n_tokens);
	put32(p + 20, h->hidden);
	put32(p + 24, kind == FP_KIND_DISPATCH ? h->n_pairs : 0);
	put32(p + 28, payload_len);
}

/* Vectors are copied element-wise as LE so the encoder is right on any host. */
static void put_vectors(uint8_t *dst, const void *src, uint64_t n, enum fp_dtype dtype)
{
	if (dtype == FP_DTYPE_BF16) {
		const uint16_t *s = src;
		for (uint64_t i = 0; i < n; i++)
			put16(dst + 2 * i, s[i]);
	} else {
		const uint32_t *s = src;
		for (uint64_t i = 0; i < n; i++)
			put32(dst + 4 * i, s[i]);
	}
}

int fp_dispatch_encode(const struct fp_dispatch *d, void *buf, size_t cap, size_t *ret_len)
{
	const struct fp_header *h = &d->h;
	struct layout l;
	int rc = layout_of(FP_KIND_DISPATCH, h->n_tokens, h->hidden, h->n_pairs, h->dtype, &l);
	if (rc < 0)
		return rc;
	if (l.end > cap)
		return -ENOBUFS;
	uint64_t sum = 0;
	for (uint32_t t = 0; t < h->n_tokens; t++) {
		if (d->pair_counts[t] > FP_MAX_PAIRS_PER_TOKEN)
			return -EINVAL;
		sum += d->pair_counts[t];
	}
	if (sum != h->n_pairs)
		return -EINVAL;
	for (uint32_t i = 0; i < h->n_pairs; i++)
		if (!isfinite(d->weights[i]))
			return -EINVAL;

	uint8_t *p = buf;
	memset(p, 0, (size_t)l.vectors);
	put_header(p, FP_KIND_DISPATCH, h, (uint32_t)(l.end - FP_HDR_SIZE));
	for (uint32_t t = 0; t < h->n_tokens; t++) {
		put32(p + l.rows + 4ull * t, d->token_rows[t]);
		put16(p + l.counts + 2ull * t, d->pair_counts[t]);
	}
	for (uint32_t i = 0; i < h->n_pairs; i++) {
		uint32_t w;
		memcpy(&w, &d->weights[i], 4);
		put16(p + l.pairs + 8ull * i, d->slots[i]);
		put32(p + l.pairs + 8ull * i + 4, w);
	}
	put_vectors(p + l.vectors, d->vectors, (uint64_t)h->n_tokens * h->hidden, h->dtype);
	*ret_len = (size_t)l.end;
	return 0;
}

int fp_combine_encode_head(const struct fp_combine *c, void *buf, size_t cap, size_t *ret_head,
			   size_t *ret_len)
{
	const struct fp_header *h = &c->h;
	struct layout l;
	int rc = layout_of(FP_KIND_COMBINE, h->n_tokens, h->hidden, h->n_pairs, h->dtype, &l);
	if (rc < 0)
		return rc;
	if (l.vectors > cap)
		return -ENOBUFS;
	uint8_t *p = buf;
	memset(p, 0, (size_t)l.vectors);
	put_header(p, FP_KIND_COMBINE, h, (uint32_t)(l.end - FP_HDR_SIZE));
	for (uint32_t t = 0; t < h->n_tokens; t++)
		put32(p + l.rows + 4ull * t, c->token_rows[t]);
	*ret_head = (size_t)l.vectors;
	*ret_len = (size_t)l.end;
	return 0;
}

int fp_combine_encode(const struct fp_combine *c, void *buf, size_t cap, size_t *ret_len)
{
	const struct fp_header *h = &c->h;
	size_t head, len;
	struct layout l;
	int rc = layout_of(FP_KIND_COMBINE, h->n_tokens, h->hidden, h->n_pairs, h->dtype, &l);
	if (rc < 0)
		return rc;
	if (l.end > cap) /* nothing written */
		return -ENOBUFS;
	if ((rc = fp_combine_encode_head(c, buf, cap, &head, &len)) < 0)
		return rc;
	put_vectors((uint8_t *)buf + head, c->partials, (uint64_t)h->n_tokens * h->hidden,
		    h->dtype);
	*ret_len = len;
	return 0;
}

int fp_dispatch_head_len(const struct fp_header *h, size_t *ret_head)
{
	struct layout l;
	int rc = layout_of(FP_KIND_DISPATCH, h->n_tokens, h->hidden, h->n_pairs, h->dtype, &l);
	if (rc < 0)
		return rc;
	*ret_head = (size_t)l.vectors;
	return 0;
}

int fp_header_decode(const void *buf, size_t len, struct fp_header *ret_hdr,
		     struct fr_error *err)
{
	const uint8_t *p = buf;
	if (len < FP_HDR_SIZE)
		return fr_error_set(err, -EMSGSIZE, "frame: %zu bytes, header needs %d", len,
				    FP_HDR_SIZE);
	if (fp_le32(p) != FP_MAGIC)
		return fr_error_set(err, -EBADMSG, "frame: bad magic 0x%08x", fp_le32(p));
	if (fp_le16(p + 4) != FP_VERSION)
		return fr_error_set(err, -EBADMSG, "frame: version %u, expected %d",
				    fp_le16(p + 4), FP_VERSION);
	struct fp_header h = {
		.kind = (enum fp_kind)p[6],
		.dtype = (enum fp_dtype)p[7],
		.layer = fp_le16(p + 8),
		.micro_batch = fp_le16(p + 10),
		.step_epoch = fp_le32(p + 12),
		.n_tokens = fp_le32(p + 16),
		.hidden = fp_le32(p + 20),
		.n_pairs = fp_le32(p + 24),
	};
	uint32_t payload_len = fp_le32(p + 28);
	if (h.kind != FP_KIND_DISPATCH && h.kind != FP_KIND_COMBINE)
		return fr_error_set(err, -EBADMSG, "frame: unknown kind %u", p[6]);
	struct layout l;
	int rc = layout_of(h.kind, h.n_tokens, h.hidden, h.n_pairs, h.dtype, &l);
	if (rc < 0)
		return fr_error_set(err, -EBADMSG,
				    "frame: bad counts (dtype %u, %u tokens, hidden %u, %u pairs)",
				    p[7], h.n_tokens, h.hidden, h.n_pairs);
	if (l.end - FP_HDR_SIZE != payload_len)
		return fr_error_set(err, -EBADMSG, "frame: payload_len %u, counts imply %llu",
				    payload_len, (unsigned long long)(l.end - FP_HDR_SIZE));
	if (l.end > len)
		return fr_error_set(err, -EMSGSIZE, "frame: %llu bytes, buffer has %zu",
				    (unsigned long long)l.end, len);
	*ret_hdr = h;
	return 0;
}

static int zero_padding(const uint8_t *p, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++)
		if (p[i])
			return -1;
	return 0;
}

int fp_dispatch_decode(const void *buf, size_t len, uint32_t n_slots,
		       struct fp_dispatch_view *ret_view, struct fr_error *err)
{
	const uint8_t *p = buf;
	struct fp_header h;
	struct layout l;
	int rc = fp_header_decode(buf, len, &h, err);
	if (rc < 0)
		return rc;
	if (h.kind != FP_KIND_DISPATCH)
		return fr_error_set(err, -EBADMSG, "frame: kind %d is not dispatch", h.kind);
	layout_of(h.kind, h.n_tokens, h.hidden, h.n_pairs, h.dtype, &l);

	uint64_t sum = 0;
	for (uint32_t t = 0; t < h.n_tokens; t++) {
		uint16_t c = fp_le16(p + l.counts + 2ull * t);
		if (c > FP_MAX_PAIRS_PER_TOKEN)
			return fr_error_set(err, -EBADMSG, "dispatch: token %u has %u pairs", t, c);
		sum += c;
	}
	if (sum != h.n_pairs)
		return fr_error_set(err, -EBADMSG, "dispatch: pair counts sum to %llu, header %u",
				    (unsigned long long)sum, h.n_pairs);
	for (uint32_t i = 0; i < h.n_pairs; i++) {
		const uint8_t *q = p + l.pairs + 8ull * i;
		uint16_t slot = fp_le16(q);
		float w = fp_lef32(q + 4);
		if (slot >= n_slots)
			return fr_error_set(err, -EBADMSG, "dispatch: pair %u slot %u >= %u", i,
					    slot, n_slots);
		if (fp_le16(q + 2) || !isfinite(w))
			return fr_error_set(err, -EBADMSG, "dispatch: pair %u malformed", i);
	}
	if (zero_padding(p, l.pairs + 8ull * h.n_pairs, l.vectors))
		return fr_error_set(err, -EBADMSG, "dispatch: non-zero padding");
	*ret_view = (struct fp_dispatch_view){
		.h = h,
		.token_rows = p + l.rows,
		.pair_counts = p + l.counts,
		.pairs = p + l.pairs,
		.vectors = p + l.vectors,
		.frame_len = (size_t)l.end,
	};
	return 0;
}

int fp_combine_decode(const void *buf, size_t len, struct fp_combine_view *ret_view,
		      struct fr_error *err)
{
	const uint8_t *p = buf;
	struct fp_header h;
	struct layout l;
	int rc = fp_header_decode(buf, len, &h, err);
	if (rc < 0)
		return rc;
	if (h.kind != FP_KIND_COMBINE)
		return fr_error_set(err, -EBADMSG, "frame: kind %d is not combine", h.kind);
	layout_of(h.kind, h.n_tokens, h.hidden, h.n_pairs, h.dtype, &l);
	if (zero_padding(p, l.counts, l.vectors))
		return fr_error_set(err, -EBADMSG, "combine: non-zero padding");
	*ret_view = (struct fp_combine_view){
		.h = h,
		.token_rows = p + l.rows,
		.partials = p + l.vectors,
		.frame_len = (size_t)l.end,
	};
	return 0;
}

/* ---- ring geometry ------------------------------------------------------------------- */

static bool ring_ok(const struct fp_ring *r)
{
	return r->slots >= 1 && r->slots <= FP_RING_MAX_SLOTS && r->tokens >= 1 &&
	       r->tokens <= FP_MAX_TOKENS && r->hidden >= 1 && r->hidden <= FP_MAX_HIDDEN &&
	       r->max_pairs >= 1 && r->max_pairs <= FP_MAX_PAIRS_PER_TOKEN;
}

static size_t round_slot(size_t n)
{
	return (n + FP_RING_ALIGN - 1) / FP_RING_ALIGN * FP_RING_ALIGN;
}

/* Sized for f32 vectors, the larger wire dtype, so either dtype fits every slot. */
size_t fp_ring_dispatch_slot(const struct fp_ring *r)
{
	size_t len;

	if (!ring_ok(r) || fp_dispatch_size(r->tokens, r->hidden, r->tokens * r->max_pairs,
					    FP_DTYPE_F32, &len) < 0)
		return 0;
	return round_slot(len);
}

size_t fp_ring_combine_slot(const struct fp_ring *r)
{
	size_t len;

	if (!ring_ok(r) || fp_combine_size(r->tokens, r->hidden, FP_DTYPE_F32, &len) < 0)
		return 0;
	return round_slot(len);
}
