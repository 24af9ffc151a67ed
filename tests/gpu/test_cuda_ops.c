/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_cuda_ops - every op of kernels/cuda against its CPU reference (kernels/kernels.h), on
 * random inputs (never zeros) at several shapes, odd sizes and a slot with no tokens among
 * them; outputs are poisoned with NaN first, so an element left unwritten fails. Errors are
 * relative norms, ||gpu - ref|| / ||ref||. Without a CUDA device this exits 77 and says why.
 *
 *   test_cuda_ops [--device N]
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kn_cuda.h"
#include "kernels/kernels.h"
#include "tests/test.h"
#include "tests/gpu/gpu_test.h"

static float *rand_f32(size_t n)
{
	float *v = xmalloc(n * sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = urand();
	return v;
}

static uint16_t *rand_bf16(size_t n, float scale)
{
	uint16_t *v = xmalloc(n * sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = kn_f32_to_bf16(urand() * scale);
	return v;
}

static struct kn_cuda *cu;

static void *dev(const void *host, size_t bytes)
{
	void *d = NULL;
	if (kn_cuda_alloc(cu, bytes, &d) < 0 || (host && kn_cuda_upload(cu, d, host, bytes) < 0)) {
		fprintf(stderr, "device memory: %s\n", kn_cuda_error(cu));
		exit(1);
	}
	return d;
}

/* A device buffer of n floats, every one NaN until written. */
static float *dev_poisoned(size_t n)
{
	float *h = xmalloc(n * sizeof(*h));
	for (size_t i = 0; i < n; i++)
		h[i] = NAN;
	float *d = dev(h, n * sizeof(*h));
	free(h);
	return d;
}

static float *fetch(const void *d, size_t n)
{
	float *h = xmalloc(n * sizeof(*h));
	if (kn_cuda_download(cu, h, d, n * sizeof(*h)) < 0) {
		fprintf(stderr, "download: %s\n", kn_cuda_error(cu));
		exit(1);
	}
	return h;
}

static void report(const char *what, double err, double tol)
{
	printf("%s %-48s rel err %.2e (tolerance %.0e)\n", err <= tol ? "ok  " : "FAIL", what,
	       err, tol);
	CHECK(err <= tol);
}

static int run_rc(int rc, const char *what)
{
	if (rc < 0) {
		fprintf(stderr, "FAIL %s: %d: %s\n", what, rc, kn_cuda_error(cu));
		t_failures++;
	}
	return rc;
}

static void test_rmsnorm(void)
{
	static const int shapes[][2] = { { 1, 1 }, { 3, 17 }, { 7, 2048 }, { 5, 4099 } };
	for (size_t i = 0; i < FR_ARRAY_SIZE(shapes); i++) {
		int n = shapes[i][0], dim = shapes[i][1];
		size_t N = (size_t)n * dim;
		float *x = rand_f32(N), *g = rand_f32((size_t)dim), *ref = xmalloc(N * 4);
		float *dx = dev(x, N * 4), *dg = dev(g, (size_t)dim * 4), *dy = dev_poisoned(N);
		char what[64];

		kn_rmsnorm(ref, x, g, n, dim, 1e-6f);
		run_rc(kn_cuda_rmsnorm(cu, dy, dx, dg, n, dim, 1e-6f), "rmsnorm");
		float *y = fetch(dy, N);
		snprintf(what, sizeof(what), "rmsnorm %d x %d", n, dim);
		report(what, rel_err(y, ref, N), 1e-5);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dg);
		kn_cuda_free(cu, dy);
		free(x);
		free(g);
		free(ref);
		free(y);
	}
}

static void test_swiglu_convert(void)
{
	static const size_t sizes[] = { 1, 33, 1408 * 3 + 5 };
	for (size_t i = 0; i < FR_ARRAY_SIZE(sizes); i++) {
		size_t n = sizes[i];
		float *ga = rand_f32(n), *up = rand_f32(n), *ref = xmalloc(n * 4),
		      *refb = xmalloc(n * 4), *yb = xmalloc(n * 4);
		float *dga = dev(ga, n * 4), *dup = dev(up, n * 4), *dy = dev_poisoned(n);
		uint16_t *dyb = dev(NULL, n * 2), *hb = xmalloc(n * 2), *hb2 = xmalloc(n * 2);
		char what[64];
		long bad = 0;

		for (size_t k = 0; k < n; k++)
			ga[k] *= 4; /* reach silu's tails too */
		run_rc(kn_cuda_upload(cu, dga, ga, n * 4), "upload");
		kn_swiglu(ref, ga, up, (int)n);
		run_rc(kn_cuda_swiglu(cu, dy, dga, dup, n), "swiglu");
		float *y = fetch(dy, n);
		snprintf(what, sizeof(what), "swiglu f32, n %zu", n);
		report(what, rel_err(y, ref, n), 1e-6);

		run_rc(kn_cuda_swiglu_bf16(cu, dyb, dga, dup, n), "swiglu_bf16");
		run_rc(kn_cuda_download(cu, hb, dyb, n * 2), "download");
		for (size_t k = 0; k < n; k++) {
			yb[k] = kn_bf16_to_f32(hb[k]);
			refb[k] = kn_bf16_to_f32(kn_f32_to_bf16(ref[k]));
		}
		snprintf(what, sizeof(what), "swiglu bf16, n %zu", n);
		report(what, rel_err(yb, refb, n), 4e-3);

		/* conversion: the same bits as kn_f32_to_bf16, ties to even included */
		for (size_t k = 0; k < n; k++) {
			union { float f; uint32_t u; } v = { .f = ref[k] };
			if (k % 3 == 0)
				v.u = (v.u & 0xffff0000u) | 0x8000u; /* exactly halfway */
			ref[k] = v.f;
		}
		run_rc(kn_cuda_upload(cu, dy, ref, n * 4), "upload");
		run_rc(kn_cuda_f32_to_bf16(cu, dyb, dy, n), "f32_to_bf16");
		run_rc(kn_cuda_download(cu, hb2, dyb, n * 2), "download");
		for (size_t k = 0; k < n; k++)
			bad += hb2[k] != kn_f32_to_bf16(ref[k]);
		printf("%s f32 -> bf16, n %zu: %ld of %zu differ from kn_f32_to_bf16\n",
		       bad ? "FAIL" : "ok  ", n, bad, n);
		CHECK(bad == 0);
		kn_cuda_free(cu, dga);
		kn_cuda_free(cu, dup);
		kn_cuda_free(cu, dy);
		kn_cuda_free(cu, dyb);
		free(ga);
		free(up);
		free(ref);
		free(refb);
		free(yb);
		free(y);
		free(hb);
		free(hb2);
	}
}

static void test_softmax_rope_embed(void)
{
	/* softmax, rows of odd lengths */
	static const int shapes[][2] = { { 1, 1 }, { 4, 129 }, { 3, 102400 } };
	for (size_t i = 0; i < FR_ARRAY_SIZE(shapes); i++) {
		int n = shapes[i][0], dim = shapes[i][1];
		size_t N = (size_t)n * dim;
		float *x = rand_f32(N), *ref = xmalloc(N * 4);
		char what[64];
		for (size_t k = 0; k < N; k++)
			x[k] *= 8;
		memcpy(ref, x, N * 4);
		for (int t = 0; t < n; t++)
			kn_ops()->softmax(ref + (size_t)t * dim, dim);
		float *dx = dev(x, N * 4);
		run_rc(kn_cuda_softmax(cu, dx, n, dim), "softmax");
		float *y = fetch(dx, N);
		snprintf(what, sizeof(what), "softmax %d x %d", n, dim);
		report(what, rel_err(y, ref, N), 1e-5);
		kn_cuda_free(cu, dx);
		free(x);
		free(ref);
		free(y);
	}
	/* rope: 5 tokens at scattered positions, 3 heads of 64 and of 128 */
	static const int hds[] = { 64, 128 };
	for (size_t i = 0; i < FR_ARRAY_SIZE(hds); i++) {
		int n = 5, nh = 3, hd = hds[i];
		int32_t pos[5] = { 0, 1, 17, 4095, 100000 };
		size_t N = (size_t)n * nh * hd;
		float *x = rand_f32(N), *ref = xmalloc(N * 4);
		char what[64];
		memcpy(ref, x, N * 4);
		kn_rope(ref, n, nh, hd, pos, 10000.0f);
		float *dx = dev(x, N * 4);
		int32_t *dpos = dev(pos, sizeof(pos));
		run_rc(kn_cuda_rope(cu, dx, n, nh, hd, dpos, 10000.0f), "rope");
		float *y = fetch(dx, N);
		snprintf(what, sizeof(what), "rope 5 tokens x 3 heads x %d", hd);
		report(what, rel_err(y, ref, N), 1e-6);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dpos);
		free(x);
		free(ref);
		free(y);
	}
	/* embed: every row where the table has it, from a bf16 table and from an f32 one */
	for (int dt = KN_DTYPE_F32; dt <= KN_DTYPE_BF16; dt++) {
		int vocab = 1000, dim = 77, n = 6;
		int32_t ids[6] = { 0, 999, 5, 5, 512, 1 };
		size_t esz = kn_dtype_size((enum kn_dtype)dt);
		void *tab = dt == KN_DTYPE_BF16 ? (void *)rand_bf16((size_t)vocab * dim, 1)
						: (void *)rand_f32((size_t)vocab * dim);
		float *ref = xmalloc((size_t)n * dim * 4);
		for (int t = 0; t < n; t++)
			kn_to_f32(ref + (size_t)t * dim, (char *)tab + (size_t)ids[t] * dim * esz,
				  (enum kn_dtype)dt, (size_t)dim);
		void *dtab = dev(tab, (size_t)vocab * dim * esz);
		int32_t *dids = dev(ids, sizeof(ids));
		float *dy = dev_poisoned((size_t)n * dim);
		char what[64];
		run_rc(kn_cuda_embed(cu, dy, dtab, (enum kn_dtype)dt, vocab, dim, dids, n), "embed");
		float *y = fetch(dy, (size_t)n * dim);
		snprintf(what, sizeof(what), "embed 6 ids of 1000 x 77, %s",
			 kn_dtype_name((enum kn_dtype)dt));
		report(what, rel_err(y, ref, (size_t)n * dim), 0);
		kn_cuda_free(cu, dtab);
		kn_cuda_free(cu, dids);
		kn_cuda_free(cu, dy);
		free(tab);
		free(ref);
		free(y);
	}
}

/* The router's choice: softmax and sigmoid scoring, a selection bias, mask_top, weights
 * renormalised and scaled; the same experts as kn_gate() and the same weights. */
static void test_gate(void)
{
	struct kn_gate_opts cases[] = {
		{ KN_SCORING_SOFTMAX, 64, 6, 0, false, 1.0f, NULL },
		{ KN_SCORING_SOFTMAX, 160, 6, 2, true, 1.0f, NULL },
		{ KN_SCORING_SIGMOID, 256, 8, 0, true, 2.5f, NULL },  /* DeepSeek-V3, biased */
		{ KN_SCORING_SIGMOID, 7, 7, 0, false, 1.0f, NULL },   /* k = n_experts */
	};
	for (size_t ci = 0; ci < FR_ARRAY_SIZE(cases); ci++) {
		struct kn_gate_opts o = cases[ci];
		int n = 9, ne = o.n_experts, k = o.k;
		float *lg = rand_f32((size_t)n * ne), *bias = rand_f32((size_t)ne);
		float *scratch = xmalloc((size_t)ne * 2 * 4), *rw = xmalloc((size_t)n * k * 4);
		int32_t *ri = xmalloc((size_t)n * k * 4), *gi = xmalloc((size_t)n * k * 4);
		long bad = 0;
		char what[96];

		for (size_t i = 0; i < (size_t)n * ne; i++)
			lg[i] *= 4;
		if (ci == 2)
			o.bias = bias;
		for (int t = 0; t < n; t++)
			kn_gate(lg + (size_t)t * ne, &o, ri + (size_t)t * k, rw + (size_t)t * k, scratch);
		float *dlg = dev(lg, (size_t)n * ne * 4), *dbias = o.bias ? dev(bias, (size_t)ne * 4) : NULL;
		float *dw = dev_poisoned((size_t)n * k);
		int32_t *di = dev(NULL, (size_t)n * k * 4);
		run_rc(kn_cuda_gate(cu, dlg, n, &o, dbias, di, dw), "gate");
		float *gw = fetch(dw, (size_t)n * k);
		run_rc(kn_cuda_download(cu, gi, di, (size_t)n * k * 4), "download");
		for (int i = 0; i < n * k; i++)
			bad += gi[i] != ri[i];
		snprintf(what, sizeof(what), "gate %s, %d experts, top-%d, mask %d%s: %ld ids differ",
			 o.scoring == KN_SCORING_SOFTMAX ? "softmax" : "sigmoid", ne, k, o.mask_top,
			 o.bias ? ", bias" : "", bad);
		report(what, bad ? INFINITY : rel_err(gw, rw, (size_t)n * k), 1e-6);
		kn_cuda_free(cu, dlg);
		kn_cuda_free(cu, dbias);
		kn_cuda_free(cu, dw);
		kn_cuda_free(cu, di);
		free(lg);
		free(bias);
		free(scratch);
		free(rw);
		free(ri);
		free(gi);
		free(gw);
	}
}

/* Paged attention, decode (one token at the end) and prefill (five tokens), grouped-query
 * heads, blocks in shuffled order: what kn_attention_paged() gives. */
static void test_attention(void)
{
	enum { NH = 8, NKV = 2, HD = 64, BS = 16, NB = 12, MAXCTX = NB * BS };
	int32_t blocks[NB], pos_pre[5] = { 0, 1, 30, 100, 170 }, pos_dec[1] = { MAXCTX - 1 };
	size_t pool = (size_t)NB * BS * NKV * HD;
	float *kp = rand_f32(pool), *vp = rand_f32(pool);
	size_t sfl = kn_attention_scratch_size(MAXCTX);
	float *scratch = xmalloc(sfl * 4);

	for (int i = 0; i < NB; i++)
		blocks[i] = (i * 5) % NB; /* 5 is prime to 12: a permutation */
	float *dkp = dev(kp, pool * 4), *dvp = dev(vp, pool * 4);
	int32_t *dblk = dev(blocks, sizeof(blocks));
	for (int pass = 0; pass < 2; pass++) {
		int n = pass ? 1 : 5;
		const int32_t *pos = pass ? pos_dec : pos_pre;
		size_t N = (size_t)n * NH * HD;
		float *q = rand_f32(N), *ref = xmalloc(N * 4);
		char what[64];
		kn_attention_paged(ref, q, kp, vp, blocks, BS, n, pos, NH, NKV, HD, scratch, sfl);
		float *dq = dev(q, N * 4), *dout = dev_poisoned(N);
		int32_t *dpos = dev(pos, (size_t)n * 4);
		run_rc(kn_cuda_attention_paged(cu, dout, dq, dkp, dvp, dblk, BS, n, dpos, NH, NKV, HD,
					       MAXCTX), "attention");
		float *y = fetch(dout, N);
		snprintf(what, sizeof(what), "attention %s, %d heads / %d kv, paged",
			 pass ? "decode at 191" : "prefill 5 tokens", NH, NKV);
		report(what, rel_err(y, ref, N), 1e-5);
		kn_cuda_free(cu, dq);
		kn_cuda_free(cu, dout);
		kn_cuda_free(cu, dpos);
		free(q);
		free(ref);
		free(y);
	}
	kn_cuda_free(cu, dkp);
	kn_cuda_free(cu, dvp);
	kn_cuda_free(cu, dblk);
	free(kp);
	free(vp);
	free(scratch);
}

/* The coordinator's ops around attention, on a batch of rows of three sequences with block
 * tables in shuffled order: the new rows' keys and values into the paged cache (the same
 * pools, bit for bit, as the CPU engine's row copies), then attention over each row's own
 * sequence (kn_attention_paged with that sequence's blocks), the residual add and greedy
 * sampling (kn_argmax, ties included). */
static void test_engine_ops(void)
{
	enum { NH = 4, NKV = 2, HD = 32, KVD = NKV * HD, BS = 8, MB = 4, NS = 3, NB = NS * MB };
	enum { N = 7, MAXCTX = MB * BS, VOCAB = 1001 };
	static const int32_t seq[N] = { 0, 2, 1, 0, 2, 2, 1 };
	static const int32_t pos[N] = { 5, 0, 17, 6, 1, 31, 18 };
	int32_t table[NS * MB];
	size_t pool = (size_t)NB * BS * KVD;
	float *kp = rand_f32(pool), *vp = rand_f32(pool);
	float *k = rand_f32((size_t)N * KVD), *v = rand_f32((size_t)N * KVD);
	size_t sfl = kn_attention_scratch_size(MAXCTX);
	float *scratch = xmalloc(sfl * 4);

	for (int i = 0; i < NB; i++)
		table[i] = (i * 5) % NB; /* 5 is prime to 12: each block in one table row */
	float *dkp = dev(kp, pool * 4), *dvp = dev(vp, pool * 4);
	float *dk = dev(k, (size_t)N * KVD * 4), *dv = dev(v, (size_t)N * KVD * 4);
	int32_t *dtab = dev(table, sizeof(table)), *dseq = dev(seq, sizeof(seq));
	int32_t *dpos = dev(pos, sizeof(pos));
	for (int t = 0; t < N; t++) {
		int32_t blk = table[seq[t] * MB + pos[t] / BS];
		size_t at = ((size_t)blk * BS + pos[t] % BS) * KVD;
		memcpy(kp + at, k + (size_t)t * KVD, KVD * 4);
		memcpy(vp + at, v + (size_t)t * KVD, KVD * 4);
	}
	if (run_rc(kn_cuda_kv_write(cu, dkp, dvp, dk, dv, dtab, MB, dseq, dpos, N, BS, KVD),
		   "kv_write") == 0) {
		float *gk = fetch(dkp, pool), *gv = fetch(dvp, pool);
		bool same = !memcmp(gk, kp, pool * 4) && !memcmp(gv, vp, pool * 4);
		printf("%s kv_write: %d rows of 3 sequences into the paged pools, bit for bit\n",
		       same ? "ok  " : "FAIL", N);
		CHECK(same);
		free(gk);
		free(gv);
	}

	size_t nq = (size_t)N * NH * HD;
	float *q = rand_f32(nq), *ref = xmalloc(nq * 4);
	for (int t = 0; t < N; t++)
		kn_attention_paged(ref + (size_t)t * NH * HD, q + (size_t)t * NH * HD, kp, vp,
				   table + seq[t] * MB, BS, 1, &pos[t], NH, NKV, HD, scratch, sfl);
	float *dq = dev(q, nq * 4), *dout = dev_poisoned(nq);
	if (run_rc(kn_cuda_attention_rows(cu, dout, dq, dkp, dvp, dtab, MB, dseq, BS, N, dpos, NH,
					  NKV, HD, MAXCTX), "attention_rows") == 0) {
		float *y = fetch(dout, nq);
		report("attention rows of 3 sequences, paged", rel_err(y, ref, nq), 1e-5);
		free(y);
	}
	CHECK(kn_cuda_attention_rows(cu, dout, dq, dkp, dvp, dtab, MB, NULL, BS, N, dpos, NH, NKV,
				     HD, MAXCTX) == -EINVAL);

	/* residual: y += x, exactly the CPU's sums */
	size_t na = 4099;
	float *ya = rand_f32(na), *xa = rand_f32(na);
	float *dya = dev(ya, na * 4), *dxa = dev(xa, na * 4);
	for (size_t i = 0; i < na; i++)
		ya[i] += xa[i];
	if (run_rc(kn_cuda_add(cu, dya, dxa, na), "add") == 0) {
		float *y = fetch(dya, na);
		bool same = !memcmp(y, ya, na * 4);
		printf("%s add: %zu values, bit for bit\n", same ? "ok  " : "FAIL", na);
		CHECK(same);
		free(y);
	}

	/* greedy sampling: random rows, a row whose maximum is there twice, a row of -inf */
	enum { NR = 5 };
	float *lg = rand_f32((size_t)NR * VOCAB);
	lg[1 * VOCAB + 77] = lg[1 * VOCAB + 900] = 10.0f;
	for (int j = 0; j < VOCAB; j++)
		lg[2 * VOCAB + j] = -INFINITY;
	lg[3 * VOCAB + VOCAB - 1] = 11.0f;
	float *dlg = dev(lg, (size_t)NR * VOCAB * 4);
	int32_t *didx = dev(NULL, NR * sizeof(int32_t)), idx[NR];
	if (run_rc(kn_cuda_argmax(cu, didx, dlg, NR, VOCAB), "argmax") == 0 &&
	    kn_cuda_download(cu, idx, didx, sizeof(idx)) == 0) {
		int bad = 0;
		for (int r = 0; r < NR; r++)
			bad += idx[r] != kn_argmax(lg + (size_t)r * VOCAB, VOCAB);
		printf("%s argmax: %d rows of %d (a tie, a row of -inf), as kn_argmax\n",
		       bad ? "FAIL" : "ok  ", NR, VOCAB);
		CHECK(bad == 0 && idx[1] == 77 && idx[2] == 0 && idx[3] == VOCAB - 1);
	}

	void *dfree[] = { dkp, dvp, dk, dv, dtab, dseq, dpos, dq, dout, dya, dxa, dlg, didx };
	for (size_t i = 0; i < FR_ARRAY_SIZE(dfree); i++)
		kn_cuda_free(cu, dfree[i]);
	void *hfree[] = { kp, vp, k, v, scratch, q, ref, ya, xa, lg };
	for (size_t i = 0; i < FR_ARRAY_SIZE(hfree); i++)
		free(hfree[i]);
}

/* permute then unpermute with random rows: what the CPU loops give, in the same order. */
static void test_permute(void)
{
	enum { T = 11, K = 3, DIM = 67 };
	int n_pairs = T * K, n_rows = n_pairs + 5;
	int32_t poff[T + 1], tok[T * K], row[T * K], perm[T * K + 5];
	float w[T * K];
	float *x = rand_f32((size_t)T * DIM), *part = rand_f32((size_t)n_rows * DIM);
	float *ref = xmalloc((size_t)T * DIM * 4);
	uint16_t *hs = xmalloc((size_t)n_rows * DIM * 2);
	long bad = 0;

	for (int i = 0; i < n_rows; i++)
		perm[i] = i;
	for (int i = n_rows - 1; i > 0; i--) {
		int j = (int)(fr_splitmix64(&rng) % (uint64_t)(i + 1)), t = perm[i];
		perm[i] = perm[j];
		perm[j] = t;
	}
	for (int t = 0; t <= T; t++)
		poff[t] = t * K;
	for (int p = 0; p < n_pairs; p++) {
		tok[p] = p / K;
		row[p] = perm[p];
		w[p] = urand();
	}
	float *dx = dev(x, (size_t)T * DIM * 4), *dpart = dev(part, (size_t)n_rows * DIM * 4);
	float *dw = dev(w, sizeof(w)), *dout = dev_poisoned((size_t)T * DIM);
	int32_t *dtok = dev(tok, sizeof(tok)), *drow = dev(row, sizeof(row)),
		*dpoff = dev(poff, sizeof(poff));
	uint16_t *dxs = dev(NULL, (size_t)n_rows * DIM * 2);

	run_rc(kn_cuda_permute(cu, dxs, dx, dtok, drow, n_pairs, DIM), "permute");
	run_rc(kn_cuda_download(cu, hs, dxs, (size_t)n_rows * DIM * 2), "download");
	for (int p = 0; p < n_pairs; p++)
		for (int i = 0; i < DIM; i++)
			bad += hs[(size_t)row[p] * DIM + i] !=
			       kn_f32_to_bf16(x[(size_t)tok[p] * DIM + i]);
	printf("%s permute %d pairs x %d: %ld values misplaced\n", bad ? "FAIL" : "ok  ", n_pairs,
	       DIM, bad);
	CHECK(bad == 0);

	run_rc(kn_cuda_unpermute(cu, dout, dpart, dpoff, drow, dw, T, DIM), "unpermute");
	for (int t = 0; t < T; t++)
		for (int i = 0; i < DIM; i++) {
			float acc = 0;
			for (int p = poff[t]; p < poff[t + 1]; p++)
				acc += w[p] * part[(size_t)row[p] * DIM + i];
			ref[(size_t)t * DIM + i] = acc;
		}
	float *out = fetch(dout, (size_t)T * DIM);
	report("unpermute 11 tokens x top-3 x 67", rel_err(out, ref, (size_t)T * DIM), 1e-6);
	kn_cuda_free(cu, dx);
	kn_cuda_free(cu, dpart);
	kn_cuda_free(cu, dw);
	kn_cuda_free(cu, dout);
	kn_cuda_free(cu, dtok);
	kn_cuda_free(cu, drow);
	kn_cuda_free(cu, dpoff);
	kn_cuda_free(cu, dxs);
	free(x);
	free(part);
	free(ref);
	free(hs);
	free(out);
}

/* Grouped and padded products against kn_matmul on the same bf16 inputs (exact mode). */
static void test_gemm(void)
{
	enum { N = 5, ROWS = 45, COLS = 77 };
	static const int m[N] = { 0, 1, 3, 17, 64 };
	for (int how = KN_CUDA_GEMM_GROUPED; how <= KN_CUDA_GEMM_PADDED; how++) {
		const uint16_t *w[N], *x[N];
		float *y[N];
		uint16_t *hw[N], *hx[N];
		double worst = 0;
		for (int e = 0; e < N; e++) {
			size_t rows_alloc = how == KN_CUDA_GEMM_PADDED ? 64 : (size_t)m[e];
			hw[e] = rand_bf16((size_t)ROWS * COLS, 0.5f);
			hx[e] = rand_bf16(rows_alloc * COLS, 1.0f);
			w[e] = dev(hw[e], (size_t)ROWS * COLS * 2);
			x[e] = dev(hx[e], rows_alloc * COLS * 2);
			y[e] = dev_poisoned(rows_alloc * ROWS);
		}
		run_rc(kn_cuda_gemm_bf16(cu, how, N, m, ROWS, COLS, w, x, y), "gemm");
		for (int e = 0; e < N; e++) {
			if (!m[e])
				continue;
			struct kn_mat W = { hw[e], KN_DTYPE_BF16, ROWS, COLS };
			float *xf = xmalloc((size_t)m[e] * COLS * 4), *ref = xmalloc((size_t)m[e] * ROWS * 4);
			kn_to_f32(xf, hx[e], KN_DTYPE_BF16, (size_t)m[e] * COLS);
			kn_matmul_exact(ref, xf, &W, m[e]);
			float *got = fetch(y[e], (size_t)m[e] * ROWS);
			worst = FR_MAX(worst, rel_err(got, ref, (size_t)m[e] * ROWS));
			free(xf);
			free(ref);
			free(got);
		}
		char what[64];
		snprintf(what, sizeof(what), "gemm %s, tokens 0/1/3/17/64, 45 x 77",
			 kn_cuda_gemm_name((enum kn_cuda_gemm)how));
		report(what, worst, 1e-5);
		for (int e = 0; e < N; e++) {
			kn_cuda_free(cu, (void *)w[e]);
			kn_cuda_free(cu, (void *)x[e]);
			kn_cuda_free(cu, y[e]);
			free(hw[e]);
			free(hx[e]);
		}
	}
}

/* One dense product (the lm_head's op) against kn_matmul on the same bf16 inputs. */
static void test_matmul(void)
{
	static const int shapes[][3] = { { 1, 45, 77 }, { 5, 1000, 256 }, { 32, 513, 2048 } };
	for (size_t i = 0; i < FR_ARRAY_SIZE(shapes); i++) {
		int n = shapes[i][0], rows = shapes[i][1], cols = shapes[i][2];
		uint16_t *hw = rand_bf16((size_t)rows * cols, 0.5f), *hx = rand_bf16((size_t)n * cols, 1);
		float *xf = xmalloc((size_t)n * cols * 4), *ref = xmalloc((size_t)n * rows * 4);
		uint16_t *dw = dev(hw, (size_t)rows * cols * 2), *dx = dev(hx, (size_t)n * cols * 2);
		float *dy = dev_poisoned((size_t)n * rows);
		struct kn_mat W = { hw, KN_DTYPE_BF16, rows, cols };
		char what[64];

		kn_to_f32(xf, hx, KN_DTYPE_BF16, (size_t)n * cols);
		kn_matmul_exact(ref, xf, &W, n);
		run_rc(kn_cuda_matmul_bf16(cu, dy, dx, dw, n, rows, cols), "matmul");
		float *y = fetch(dy, (size_t)n * rows);
		snprintf(what, sizeof(what), "matmul %d x %d x %d", n, rows, cols);
		report(what, rel_err(y, ref, (size_t)n * rows), 1e-5);
		kn_cuda_free(cu, dw);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dy);
		free(hw);
		free(hx);
		free(xf);
		free(ref);
		free(y);
	}
}

/* The exact precision's products (exact.cu): f32 activations against kn_matmul_exact on
 * the same inputs, dense at odd shapes (a partial tile of tokens, rows not a multiple of
 * the block's) and grouped with an expert of no tokens. */
static void test_exact(void)
{
	static const int shapes[][3] = { { 1, 45, 77 }, { 9, 1000, 256 }, { 33, 513, 2048 } };
	for (size_t i = 0; i < 2 * FR_ARRAY_SIZE(shapes); i++) {
		int n = shapes[i / 2][0], rows = shapes[i / 2][1], cols = shapes[i / 2][2];
		enum kn_dtype wdt = i % 2 ? KN_DTYPE_F32 : KN_DTYPE_BF16;
		size_t esz = kn_dtype_size(wdt);
		void *hw = wdt == KN_DTYPE_BF16 ? (void *)rand_bf16((size_t)rows * cols, 0.5f)
						: (void *)rand_f32((size_t)rows * cols);
		float *x = rand_f32((size_t)n * cols), *ref = xmalloc((size_t)n * rows * 4);
		void *dw = dev(hw, (size_t)rows * cols * esz);
		float *dx = dev(x, (size_t)n * cols * 4), *dy = dev_poisoned((size_t)n * rows);
		struct kn_mat W = { hw, wdt, rows, cols };
		char what[64];

		kn_matmul_exact(ref, x, &W, n);
		run_rc(kn_cuda_matmul_f32(cu, dy, dx, dw, wdt, n, rows, cols), "matmul_f32");
		float *y = fetch(dy, (size_t)n * rows);
		snprintf(what, sizeof(what), "matmul_f32 %d x %d x %d, %s weights", n, rows, cols,
			 kn_dtype_name(wdt));
		report(what, rel_err(y, ref, (size_t)n * rows), 1e-5);
		kn_cuda_free(cu, dw);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dy);
		free(hw);
		free(x);
		free(ref);
		free(y);
	}

	enum { N = 5, ROWS = 45, COLS = 77 };
	static const int m[N] = { 0, 1, 3, 17, 64 };
	const void *w[N];
	const float *xd[N];
	float *y[N], *hx[N];
	uint16_t *hw[N];
	double worst = 0;
	for (int e = 0; e < N; e++) {
		hw[e] = rand_bf16((size_t)ROWS * COLS, 0.5f);
		hx[e] = rand_f32((size_t)(m[e] ? m[e] : 1) * COLS);
		w[e] = dev(hw[e], (size_t)ROWS * COLS * 2);
		xd[e] = dev(hx[e], (size_t)(m[e] ? m[e] : 1) * COLS * 4);
		y[e] = dev_poisoned((size_t)(m[e] ? m[e] : 1) * ROWS);
	}
	run_rc(kn_cuda_gemm_f32(cu, KN_DTYPE_BF16, N, m, ROWS, COLS, w, xd, y), "gemm_f32");
	for (int e = 0; e < N; e++) {
		float *got = fetch(y[e], (size_t)(m[e] ? m[e] : 1) * ROWS);
		if (m[e]) {
			struct kn_mat W = { hw[e], KN_DTYPE_BF16, ROWS, COLS };
			float *ref = xmalloc((size_t)m[e] * ROWS * 4);
			kn_matmul_exact(ref, hx[e], &W, m[e]);
			worst = FR_MAX(worst, rel_err(got, ref, (size_t)m[e] * ROWS));
			free(ref);
		} else { /* an expert without tokens: its output untouched (still poisoned) */
			for (int i = 0; i < ROWS; i++)
				worst = isnan(got[i]) ? worst : 1.0;
		}
		free(got);
		kn_cuda_free(cu, (void *)w[e]);
		kn_cuda_free(cu, (void *)xd[e]);
		kn_cuda_free(cu, y[e]);
		free(hw[e]);
		free(hx[e]);
	}
	report("gemm_f32, tokens 0/1/3/17/64, 45 x 77", worst, 1e-5);
}

/* The whole expert layer against the CPU worker's computation (moe_compute's loop), once
 * with activations rounded to bf16 where the GPU rounds them (tight) and once in f32; the
 * exact precision against the f32 one (tight). */
static void test_moe(int hidden, int inter, int n_slots, int n_tok, int k)
{
	size_t n_pairs = (size_t)n_tok * k;
	uint16_t *hg[16], *hu[16], *hd[16];
	struct kn_cuda_expert sl[16];
	int32_t *poff = xmalloc(((size_t)n_tok + 1) * 4), *slot = xmalloc(n_pairs * 4);
	float *wt = xmalloc(n_pairs * 4), *x = rand_f32((size_t)n_tok * hidden);
	float *ref = xmalloc((size_t)n_tok * hidden * 4), *ref32 = xmalloc((size_t)n_tok * hidden * 4);
	float *xr = xmalloc((size_t)hidden * 4), *g = xmalloc((size_t)inter * 4),
	      *u = xmalloc((size_t)inter * 4), *d = xmalloc((size_t)hidden * 4);

	for (int s = 0; s < n_slots; s++) {
		hg[s] = rand_bf16((size_t)inter * hidden, 0.2f);
		hu[s] = rand_bf16((size_t)inter * hidden, 0.2f);
		hd[s] = rand_bf16((size_t)hidden * inter, 0.2f);
		sl[s].gate = dev(hg[s], (size_t)inter * hidden * 2);
		sl[s].up = dev(hu[s], (size_t)inter * hidden * 2);
		sl[s].down = dev(hd[s], (size_t)hidden * inter * 2);
		sl[s].dtype = KN_DTYPE_BF16;
	}
	/* k distinct slots per token, never the last one (a slot with no tokens) */
	for (int t = 0; t <= n_tok; t++)
		poff[t] = t * k;
	for (int t = 0; t < n_tok; t++)
		for (int j = 0; j < k; j++) {
			int s;
			bool dup;
			do {
				s = (int)(fr_splitmix64(&rng) % (uint64_t)(n_slots - 1));
				dup = false;
				for (int i = 0; i < j; i++)
					dup |= slot[t * k + i] == s;
			} while (dup);
			slot[t * k + j] = s;
			wt[t * k + j] = 0.1f + 0.9f * (float)fr_rand_unit(&rng);
		}
	for (int pass = 0; pass < 2; pass++) { /* 0: bf16 where the GPU rounds; 1: f32 */
		float *r = pass ? ref32 : ref;
		memset(r, 0, (size_t)n_tok * hidden * 4);
		for (int t = 0; t < n_tok; t++)
			for (int p = poff[t]; p < poff[t + 1]; p++) {
				int s = slot[p];
				struct kn_mat G = { hg[s], KN_DTYPE_BF16, inter, hidden },
					      U = { hu[s], KN_DTYPE_BF16, inter, hidden },
					      D = { hd[s], KN_DTYPE_BF16, hidden, inter };
				for (int i = 0; i < hidden; i++) {
					float v = x[(size_t)t * hidden + i];
					xr[i] = pass ? v : kn_bf16_to_f32(kn_f32_to_bf16(v));
				}
				kn_matmul_exact(g, xr, &G, 1);
				kn_matmul_exact(u, xr, &U, 1);
				kn_swiglu(g, g, u, inter);
				if (!pass)
					for (int i = 0; i < inter; i++)
						g[i] = kn_bf16_to_f32(kn_f32_to_bf16(g[i]));
				kn_matmul_exact(d, g, &D, 1);
				for (int i = 0; i < hidden; i++)
					r[(size_t)t * hidden + i] += wt[p] * d[i];
			}
	}
	float *dx = dev(x, (size_t)n_tok * hidden * 4);
	for (int how = KN_CUDA_GEMM_GROUPED; how <= KN_CUDA_GEMM_PADDED; how++) {
		struct kn_cuda_moe_batch b = { n_tok, dx, poff, slot, wt };
		float *dout = dev_poisoned((size_t)n_tok * hidden);
		char what[96];
		run_rc(kn_cuda_moe(cu, (enum kn_cuda_gemm)how, KN_PRECISION_FAST, sl, n_slots,
				   hidden, inter, &b, dout),
		       "moe");
		float *out = fetch(dout, (size_t)n_tok * hidden);
		snprintf(what, sizeof(what), "moe %s, %d tok x top-%d, %d slots, %d x %d",
			 kn_cuda_gemm_name((enum kn_cuda_gemm)how), n_tok, k, n_slots, hidden,
			 inter);
		report(what, rel_err(out, ref, (size_t)n_tok * hidden), 2e-3);
		snprintf(what, sizeof(what), "  ... against the f32 activations");
		report(what, rel_err(out, ref32, (size_t)n_tok * hidden), 2e-2);
		kn_cuda_free(cu, dout);
		free(out);
	}
	{ /* AUTO: each method timed KN_CUDA_TUNE_TRIALS times, the same results throughout,
	   * then a pick for this shape */
		struct kn_cuda_moe_batch b = { n_tok, dx, poff, slot, wt };
		int mmax = 0, *cnt = xcalloc((size_t)n_slots, sizeof(int));
		for (size_t p = 0; p < n_pairs; p++)
			mmax = FR_MAX(mmax, ++cnt[slot[p]]);
		enum kn_cuda_gemm pick;
		float ms[2];
		/* undecided unless an earlier call had a busiest slot of the same bit length */
		bool fresh = kn_cuda_gemm_pick(cu, mmax, &pick, ms) == -EAGAIN;
		double worst = 0;
		for (int i = 0; i < 2 * KN_CUDA_TUNE_TRIALS; i++) {
			float *dout = dev_poisoned((size_t)n_tok * hidden);
			run_rc(kn_cuda_moe(cu, KN_CUDA_GEMM_AUTO, KN_PRECISION_FAST, sl, n_slots, hidden,
					   inter, &b, dout),
			       "moe auto");
			float *out = fetch(dout, (size_t)n_tok * hidden);
			worst = FR_MAX(worst, rel_err(out, ref, (size_t)n_tok * hidden));
			kn_cuda_free(cu, dout);
			free(out);
		}
		int rc = kn_cuda_gemm_pick(cu, mmax, &pick, ms);
		printf("%s moe auto, %d tok (%s): picked %s (grouped %.3f ms, padded %.3f ms)\n",
		       rc == 0 ? "ok  " : "FAIL", n_tok, fresh ? "timed here" : "timed before",
		       rc == 0 ? kn_cuda_gemm_name(pick) : "nothing",
		       rc == 0 ? ms[0] : 0.0, rc == 0 ? ms[1] : 0.0);
		CHECK(rc == 0 && (pick == KN_CUDA_GEMM_GROUPED || pick == KN_CUDA_GEMM_PADDED));
		report("  ... its results throughout", worst, 2e-3);
		free(cnt);
	}
	{
		struct kn_cuda_moe_batch b = { n_tok, dx, poff, slot, wt };
		float *dout = dev_poisoned((size_t)n_tok * hidden);
		char what[96];
		run_rc(kn_cuda_moe(cu, KN_CUDA_GEMM_PADDED /* not used */, KN_PRECISION_EXACT, sl,
				   n_slots, hidden, inter, &b, dout),
		       "moe exact");
		float *out = fetch(dout, (size_t)n_tok * hidden);
		snprintf(what, sizeof(what), "moe exact, %d tok x top-%d, %d slots, %d x %d", n_tok,
			 k, n_slots, hidden, inter);
		report(what, rel_err(out, ref32, (size_t)n_tok * hidden), 1e-5);
		kn_cuda_free(cu, dout);
		free(out);
	}
	/* a slot out of range is refused, nothing written */
	slot[0] = n_slots;
	struct kn_cuda_moe_batch bad = { n_tok, dx, poff, slot, wt };
	float *dout = dev(NULL, (size_t)n_tok * hidden * 4);
	int rc = kn_cuda_moe(cu, KN_CUDA_GEMM_GROUPED, KN_PRECISION_FAST, sl, n_slots, hidden,
			     inter, &bad, dout);
	printf("%s moe: slot out of range: %d (%s)\n", rc == -EINVAL ? "ok  " : "FAIL", rc,
	       kn_cuda_error(cu));
	CHECK(rc == -EINVAL);
	kn_cuda_free(cu, dout);
	kn_cuda_free(cu, dx);
	for (int s = 0; s < n_slots; s++) {
		kn_cuda_free(cu, (void *)sl[s].gate);
		kn_cuda_free(cu, (void *)sl[s].up);
		kn_cuda_free(cu, (void *)sl[s].down);
		free(hg[s]);
		free(hu[s]);
		free(hd[s]);
	}
	free(poff);
	free(slot);
	free(wt);
	free(x);
	free(ref);
	free(ref32);
	free(xr);
	free(g);
	free(u);
	free(d);
}

int main(int argc, char **argv)
{
	char desc[256] = "";
	int device = 0, n = 0, rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--device") && i + 1 < argc) {
			device = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: test_cuda_ops [--device N]\n");
			return 2;
		}
	}
	if ((rc = gpu_test_start(&n)) != 0)
		return rc;
	if (device < 0 || device >= n || kn_cuda_create(device, &cu) < 0) {
		fprintf(stderr, "cannot use CUDA device %d of %d\n", device, n);
		return 1;
	}
	if (kn_cuda_describe(cu, desc, sizeof(desc)) == 0)
		printf("device %d: %s\n", device, desc);
	test_rmsnorm();
	test_swiglu_convert();
	test_softmax_rope_embed();
	test_gate();
	test_attention();
	test_engine_ops();
	test_permute();
	test_gemm();
	test_matmul();
	test_exact();
	test_moe(64, 40, 6, 13, 3);       /* small, odd intermediate size */
	test_moe(2048, 1408, 12, 32, 6);  /* the 16b shape's expert, 32 tokens */
	kn_cuda_destroy(cu);
	printf("%s\n", t_failures ? "FAILED" : "all CUDA ops match their CPU references");
	return t_failures != 0;
}
