/* SPDX-License-Identifier: Apache-2.0 */
/*
 * moe.cu - the routed experts of one worker and layer on the GPU, what moe_compute()
 * (moe/slots.c) does on the CPU: each token's pairs are sorted by slot on the host (a
 * counting sort, tokens in order within a slot), then on the stream: permute -> GEMM gate
 * and up -> SwiGLU -> GEMM down -> weighted un-permute. Fast: the GEMMs' inputs (the
 * permuted tokens, the SwiGLU) are bf16 and the GEMMs cuBLAS's; exact: they stay f32 and
 * the GEMMs are exact.cu's, in the packed layout.
 *
 * Rows (kn_moe_plan, moe_plan.c): with KN_CUDA_GEMM_GROUPED the slots' rows are packed (slot
 * s from its offset, as many as it has tokens); with KN_CUDA_GEMM_PADDED each slot with
 * tokens gets the largest count's worth of rows, so that one batched GEMM covers them all.
 * KN_CUDA_GEMM_AUTO times both on the first layers of each shape (the bit length of the
 * busiest slot's count) and keeps the faster.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda-internal.h"
#include "kernels/cuda/moe_plan.h"

static_assert((int)KN_CUDA_GEMM_GROUPED == (int)KN_MOE_LAYOUT_PACKED &&
		      (int)KN_CUDA_GEMM_PADDED == (int)KN_MOE_LAYOUT_PADDED,
	      "a GEMM method names its row layout");

#define ALIGN_UP(x) (((x) + 255) & ~(size_t)255)

static int bit_length(unsigned v)
{
	int b = 0;
	for (; v; v >>= 1)
		b++;
	return b;
}

extern "C" int kn_cuda_gemm_pick(const struct kn_cuda *c, int max_tokens, enum kn_cuda_gemm *ret,
				 float *ms)
{
	int b = bit_length(max_tokens > 0 ? (unsigned)max_tokens : 0u);
	if (b >= KN_CUDA_TUNE_BUCKETS || c->tune[b].pick < 0)
		return -EAGAIN;
	*ret = (enum kn_cuda_gemm)c->tune[b].pick;
	if (ms) {
		ms[0] = c->tune[b].best[0];
		ms[1] = c->tune[b].best[1];
	}
	return 0;
}

/* AUTO: the method for a layer whose busiest slot has mmax tokens, and *ret_bucket the
 * shape to time it for (-1: decided already). */
static enum kn_cuda_gemm auto_method(struct kn_cuda *c, int mmax, int *ret_bucket)
{
	int b = bit_length((unsigned)mmax);
	*ret_bucket = -1;
	if (b >= KN_CUDA_TUNE_BUCKETS)
		return KN_CUDA_GEMM_GROUPED;
	if (c->tune[b].pick >= 0)
		return (enum kn_cuda_gemm)c->tune[b].pick;
	*ret_bucket = b;
	return c->tune[b].tried[0] <= c->tune[b].tried[1] ? KN_CUDA_GEMM_GROUPED
							  : KN_CUDA_GEMM_PADDED;
}

/* AUTO: the layer just queued (tune_ev[0] before it) took how long with method how. */
static int auto_record(struct kn_cuda *c, int b, enum kn_cuda_gemm how)
{
	float ms = 0;
	int rc = kn_cuda__elapsed(c, c->tune_ev[0], c->tune_ev[1], &ms);
	if (rc < 0)
		return rc;
	int i = how == KN_CUDA_GEMM_PADDED;
	if (!c->tune[b].tried[i]++ || ms < c->tune[b].best[i])
		c->tune[b].best[i] = ms;
	if (c->tune[b].tried[0] >= KN_CUDA_TUNE_TRIALS && c->tune[b].tried[1] >= KN_CUDA_TUNE_TRIALS)
		c->tune[b].pick = c->tune[b].best[1] < c->tune[b].best[0] ? KN_CUDA_GEMM_PADDED
									  : KN_CUDA_GEMM_GROUPED;
	return 0;
}

/* One of the layer's products: exact (f32 inputs, exact.cu) or bf16 through cuBLAS. */
static int layer_gemm(struct kn_cuda *c, bool exact, enum kn_cuda_gemm how, enum kn_dtype wdt,
		      int n, const int *m, int rows, int cols, const void *const *w,
		      const void *const *x, float *const *y)
{
	if (exact)
		return kn_cuda_gemm_f32(c, wdt, n, m, rows, cols, w, (const float *const *)x, y);
	return kn_cuda_gemm_bf16(c, how, n, m, rows, cols, (const uint16_t *const *)w,
				 (const uint16_t *const *)x, y);
}

static int host_reserve(struct kn_cuda *c, size_t n)
{
	if (n <= c->host_idx_n)
		return 0;
	int32_t *p = (int32_t *)realloc(c->host_idx, n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	c->host_idx = p;
	c->host_idx_n = n;
	return 0;
}

extern "C" int kn_cuda_moe(struct kn_cuda *c, enum kn_cuda_gemm how, enum kn_precision prec,
			   const struct kn_cuda_expert *slots, int n_slots, int hidden, int inter,
			   const struct kn_cuda_moe_batch *b, float *out)
{
	int n_tok = b->n_tok, rc;
	bool exact = prec == KN_PRECISION_EXACT;
	size_t n_pairs, R, xe = exact ? 4 : 2; /* bytes per GEMM input */

	kn_cuda__enter(c);
	if (exact)
		how = KN_CUDA_GEMM_GROUPED; /* the packed rows */
	if (prec != KN_PRECISION_EXACT && prec != KN_PRECISION_FAST)
		return kn_cuda__invalid(c, "moe: bad precision");
	if (n_tok < 0 || n_slots < 0 || hidden <= 0 || inter <= 0 ||
	    (n_tok && (!b->pair_off || b->pair_off[0] != 0)))
		return kn_cuda__invalid(c, "moe: bad batch shape");
	if (!n_tok)
		return 0;
	for (int t = 0; t < n_tok; t++)
		if (b->pair_off[t + 1] < b->pair_off[t])
			return kn_cuda__invalid(c, "moe: pair offsets decrease");
	n_pairs = (size_t)b->pair_off[n_tok];
	enum kn_dtype wdt = n_pairs ? KN_DTYPE_BF16 : KN_DTYPE_F32;
	for (size_t p = 0; p < n_pairs; p++) {
		int s = b->slot[p];
		if (s < 0 || s >= n_slots || !slots[s].gate || !slots[s].up || !slots[s].down)
			return kn_cuda__invalid(c, "moe: a pair names a slot out of range or empty");
		if (slots[s].dtype != KN_DTYPE_BF16 && slots[s].dtype != KN_DTYPE_F32)
			return kn_cuda__invalid(c, "moe: a slot's weights are neither bf16 nor f32");
		if (p == 0)
			wdt = slots[s].dtype;
		else if (slots[s].dtype != wdt)
			return kn_cuda__invalid(c, "moe: slots of different weight dtypes");
	}
	if (wdt == KN_DTYPE_F32) { /* no bf16 products for f32 weights: exact, as on the CPU */
		exact = true;
		xe = 4;
		how = KN_CUDA_GEMM_GROUPED;
	}
	if (!n_pairs)
		return kn_cuda__status(c, cudaMemsetAsync(out, 0, (size_t)n_tok * hidden *
							      sizeof(float), c->stream),
				       "moe: clear");

	/* host: cnt[n_slots] | base[n_slots] | tok[n_pairs] | row[n_pairs] | pair_off[n_tok + 1]
	 * (the last three uploaded as one block) */
	size_t n_host = 2 * (size_t)n_slots + 2 * n_pairs + (size_t)n_tok + 1;
	if ((rc = host_reserve(c, n_host)) < 0)
		return rc;
	int32_t *cnt = c->host_idx, *base = cnt + n_slots, *tok = base + n_slots,
		*row = tok + n_pairs, *poff = row + n_pairs;
	int bucket = -1; /* AUTO: the shape this layer is timed for */
	if (how == KN_CUDA_GEMM_AUTO) {
		int mmax = 0;
		memset(cnt, 0, (size_t)n_slots * sizeof(*cnt));
		for (size_t p = 0; p < n_pairs; p++)
			if (++cnt[b->slot[p]] > mmax)
				mmax = cnt[b->slot[p]];
		how = auto_method(c, mmax, &bucket);
	}
	long rows = kn_moe_plan((enum kn_moe_layout)how, n_slots, n_tok, b->pair_off, b->slot,
				cnt, base, tok, row);
	if (rows < 0)
		return kn_cuda__invalid(c, "moe: bad layout or slot");
	R = (size_t)rows;
	memcpy(poff, b->pair_off, ((size_t)n_tok + 1) * sizeof(*poff));

	/* device: xs [R][hidden] | g, u f32 [R][inter] | act [R][inter] | d f32 [R][hidden] |
	 * tok, row, pair_off int32 | weight f32 (xs and act bf16, or f32 when exact) */
	size_t o_xs = 0, o_g = o_xs + ALIGN_UP(R * hidden * xe), o_u = o_g + ALIGN_UP(R * inter * 4),
	       o_act = o_u + ALIGN_UP(R * inter * 4), o_d = o_act + ALIGN_UP(R * inter * xe),
	       o_idx = o_d + ALIGN_UP(R * hidden * 4),
	       o_w = o_idx + ALIGN_UP((2 * n_pairs + n_tok + 1) * 4), total = o_w + n_pairs * 4;
	if ((rc = kn_cuda__reserve(c, &c->scratch, total, "cudaMalloc (MoE scratch)")) < 0)
		return rc;
	char *sb = (char *)c->scratch.p;
	char *xs = sb + o_xs, *act = sb + o_act;
	float *g = (float *)(sb + o_g), *u = (float *)(sb + o_u), *d = (float *)(sb + o_d);
	int32_t *d_tok = (int32_t *)(sb + o_idx), *d_row = d_tok + n_pairs, *d_poff = d_row + n_pairs;
	float *d_w = (float *)(sb + o_w);
	if ((rc = kn_cuda_upload(c, d_tok, tok, (2 * n_pairs + n_tok + 1) * 4)) < 0 ||
	    (rc = kn_cuda_upload(c, d_w, b->weight, n_pairs * 4)) < 0)
		return rc;

	/* per-slot GEMM operands: eight host arrays of device pointers, then the counts */
	void **hb = (void **)malloc((size_t)n_slots * (8 * sizeof(void *) + sizeof(int)) + 1);
	if (!hb)
		return -ENOMEM;
	const void **w1 = (const void **)hb, **w2 = w1 + n_slots, **w3 = w2 + n_slots;
	const void **xa = w3 + n_slots, **xb = xa + n_slots;
	float **yg = (float **)(hb + 5 * (size_t)n_slots), **yu = yg + n_slots,
	      **yd = yu + n_slots;
	int *m = (int *)(hb + 8 * (size_t)n_slots);
	for (int s = 0; s < n_slots; s++) {
		m[s] = cnt[s];
		w1[s] = slots[s].gate;
		w2[s] = slots[s].up;
		w3[s] = slots[s].down;
		xa[s] = xs + (size_t)base[s] * hidden * xe;
		xb[s] = act + (size_t)base[s] * inter * xe;
		yg[s] = g + (size_t)base[s] * inter;
		yu[s] = u + (size_t)base[s] * inter;
		yd[s] = d + (size_t)base[s] * hidden;
	}
	if (bucket >= 0)
		rc = kn_cuda__status(c, cudaEventRecord(c->tune_ev[0], c->stream),
				     "cudaEventRecord");
	if (rc == 0 && how == KN_CUDA_GEMM_PADDED) /* rows past a slot's count: keep them finite */
		rc = kn_cuda__status(c, cudaMemsetAsync(xs, 0, R * hidden * xe, c->stream),
				     "moe: clear padding");
	if (rc == 0)
		rc = exact ? kn_cuda_permute_f32(c, (float *)xs, b->x, d_tok, d_row, (int)n_pairs,
						 hidden)
			   : kn_cuda_permute(c, (uint16_t *)xs, b->x, d_tok, d_row, (int)n_pairs,
					     hidden);
	if (rc == 0)
		rc = layer_gemm(c, exact, how, wdt, n_slots, m, inter, hidden, w1, xa, yg);
	if (rc == 0)
		rc = layer_gemm(c, exact, how, wdt, n_slots, m, inter, hidden, w2, xa, yu);
	if (rc == 0)
		rc = exact ? kn_cuda_swiglu(c, (float *)act, g, u, R * inter)
			   : kn_cuda_swiglu_bf16(c, (uint16_t *)act, g, u, R * inter);
	if (rc == 0)
		rc = layer_gemm(c, exact, how, wdt, n_slots, m, hidden, inter, w3, xb, yd);
	if (rc == 0)
		rc = kn_cuda_unpermute(c, out, d, d_poff, d_row, d_w, n_tok, hidden);
	if (rc == 0 && bucket >= 0)
		rc = auto_record(c, bucket, how);
	free(hb);
	return rc;
}
