/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu - the CUDA expert layer against this GPU's ceilings, measured in the same run: a
 * device-to-device copy (bytes read + written per second) and one dense cuBLAS bf16 product
 * (8192^3, TFLOP/s). Then:
 *   - the experts' products (a worker's 32 slots of the 145B shape, 4096 -> 1408, token
 *     counts drawn skewed around a mean): grouped (one cuBLAS problem per expert) and padded
 *     (every expert to the largest count), TFLOP/s against one dense product of equal FLOPs,
 *     and at decode sizes the bytes they must read per second against the copy ceiling
 *     (targets: >= 0.7 of the copy at decode sizes, >= 0.8 of the dense product at >= 256
 *     tokens per expert);
 *   - a frame's vectors (n tokens x 4096 f32) copied to the device and back, from pageable
 *     host memory (the driver stages through a bounce buffer) and from memory pinned as a
 *     worker pins its frame buffers (kn_cuda_host_register): GB/s and pinned / pageable;
 *   - the whole layer (kn_cuda_moe, 128 experts, top-12, 4096 hidden, 1408 wide) at 1, 32
 *     and 256 tokens: ms per call with KN_CUDA_GEMM_AUTO as a worker runs it (and the pick,
 *     and each method's time, and in the exact precision: f32 activations on the CUDA
 *     cores, the cost of checking), printed as "layer N ms" lines that tests/gpu/
 *     run-on-device.sh sets against tests/gpu/moe_torch.py's PyTorch layer on the same GPU.
 * Medians of --reps timed runs after warm-up, device events around each. Random inputs
 * (never zeros).
 *
 *   build/bench/gpu [--device N] [--reps R]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kernels/cuda/kn_cuda.h"
#include "kernels/kernels.h"

enum { HIDDEN = 4096, INTER = 1408, N_EXPERTS = 128, TOP_K = 12, WORKER_SLOTS = 32 };

static struct kn_cuda *cu;
static int reps = 20;
static uint64_t rng = 12345;

static void die(const char *what)
{
	fprintf(stderr, "gpu: %s: %s\n", what, kn_cuda_error(cu));
	exit(1);
}

static void *dalloc(size_t bytes)
{
	void *p;
	if (kn_cuda_alloc(cu, bytes, &p) < 0)
		die("cudaMalloc");
	return p;
}

/* Fills a device buffer with random bf16 values in [-scale, scale] (a 16 MiB random block
 * repeated: enough for timing, and never zeros). */
static void fill_bf16(uint16_t *d, size_t n, float scale)
{
	enum { BLK = 8 << 20 };
	static uint16_t *h;
	if (!h) {
		h = malloc(BLK * sizeof(*h));
		if (!h)
			exit(1);
		for (size_t i = 0; i < BLK; i++) {
			float u = (float)fr_rand_unit(&rng) * 2 - 1;
			h[i] = kn_f32_to_bf16(scale * (u < 0 ? u - 0.01f : u + 0.01f));
		}
	}
	for (size_t at = 0; at < n; at += BLK) {
		size_t k = FR_MIN((size_t)BLK, n - at);
		if (kn_cuda_upload(cu, d + at, h, k * sizeof(*h)) < 0)
			die("upload");
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Median device ms of fn(arg) over reps runs after three warm-ups. */
static double time_ms(int (*fn)(void *), void *arg)
{
	double *v = malloc(sizeof(double) * (size_t)reps), m;
	if (!v)
		exit(1);
	for (int i = 0; i < 3; i++)
		if (fn(arg) < 0)
			die("warm-up");
	for (int i = 0; i < reps; i++) {
		if (kn_cuda_mark(cu) < 0 || fn(arg) < 0 || kn_cuda_elapsed_ms(cu, &v[i]) < 0)
			die("timed run");
	}
	qsort(v, (size_t)reps, sizeof(*v), cmp_double);
	m = v[reps / 2];
	free(v);
	return m;
}

struct copy_arg { void *dst; const void *src; size_t bytes; };
static int run_copy(void *p)
{
	struct copy_arg *a = p;
	return kn_cuda_copy(cu, a->dst, a->src, a->bytes);
}

struct mm_arg { float *y; const uint16_t *x, *w; int n, rows, cols; };
static int run_mm(void *p)
{
	struct mm_arg *a = p;
	return kn_cuda_matmul_bf16(cu, a->y, a->x, a->w, a->n, a->rows, a->cols);
}

struct gg_arg {
	enum kn_cuda_gemm how;
	int n, rows, cols;
	const int *m;
	const uint16_t *const *w, *const *x;
	float *const *y;
};
static int run_gg(void *p)
{
	struct gg_arg *a = p;
	return kn_cuda_gemm_bf16(cu, a->how, a->n, a->m, a->rows, a->cols, a->w, a->x, a->y);
}

struct moe_arg {
	enum kn_cuda_gemm how;
	enum kn_precision prec;
	const struct kn_cuda_expert *slots;
	const struct kn_cuda_moe_batch *b;
	float *out;
};
static int run_moe(void *p)
{
	struct moe_arg *a = p;
	return kn_cuda_moe(cu, a->how, a->prec, a->slots, N_EXPERTS, HIDDEN, INTER, a->b, a->out);
}

/* Token counts of n experts around a mean: a skewed (Zipf 1) multinomial of n * mean draws. */
struct xfer_arg { void *dev, *host; size_t bytes; };
static int run_up(void *p)
{
	struct xfer_arg *a = p;
	return kn_cuda_upload(cu, a->dev, a->host, a->bytes);
}
static int run_down(void *p)
{
	struct xfer_arg *a = p;
	return kn_cuda_download(cu, a->host, a->dev, a->bytes);
}

/* A frame's vectors up and down, from pageable and from pinned host memory. */
static void frames(void)
{
	static const int toks[] = { 1, 32, 256, 2048 };
	printf("frames: n tokens x %d f32 host <-> device, GB/s\n", HIDDEN);
	printf("%-7s | %9s %9s %7s | %9s %9s %7s\n", "tokens", "up page", "up pin", "ratio",
	       "down page", "down pin", "ratio");
	for (size_t i = 0; i < FR_ARRAY_SIZE(toks); i++) {
		size_t bytes = (size_t)toks[i] * HIDDEN * sizeof(float);
		float *page = malloc(bytes), *pin = malloc(bytes);
		void *dev = dalloc(bytes);
		if (!page || !pin)
			exit(1);
		for (size_t k = 0; k < bytes / sizeof(float); k++)
			page[k] = pin[k] = (float)fr_rand_unit(&rng);
		if (kn_cuda_host_register(cu, pin, bytes) < 0)
			die("kn_cuda_host_register");
		struct xfer_arg pg = { dev, page, bytes }, pn = { dev, pin, bytes };
		double up_pg = bytes / time_ms(run_up, &pg) / 1e6;
		double up_pn = bytes / time_ms(run_up, &pn) / 1e6;
		double dn_pg = bytes / time_ms(run_down, &pg) / 1e6;
		double dn_pn = bytes / time_ms(run_down, &pn) / 1e6;
		printf("%-7d | %9.1f %9.1f %7.2f | %9.1f %9.1f %7.2f\n", toks[i], up_pg, up_pn,
		       up_pn / up_pg, dn_pg, dn_pn, dn_pn / dn_pg);
		if (kn_cuda_host_unregister(cu, pin) < 0)
			die("kn_cuda_host_unregister");
		kn_cuda_free(cu, dev);
		free(page);
		free(pin);
	}
	printf("\n");
}

static void skewed_counts(int *m, int n, int mean)
{
	double cdf[WORKER_SLOTS], z = 0;
	for (int e = 0; e < n; e++) {
		z += 1.0 / (e + 1);
		cdf[e] = z;
		m[e] = 0;
	}
	for (long i = 0; i < (long)n * mean; i++) {
		double u = fr_rand_unit(&rng) * z;
		int e = 0;
		while (e < n - 1 && cdf[e] < u)
			e++;
		m[e]++;
	}
}

int main(int argc, char **argv)
{
	int device = 0, n_dev = 0;
	char why[256], desc[256] = "";

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--device") && i + 1 < argc)
			device = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc && atoi(argv[i + 1]) > 0)
			reps = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: gpu [--device N] [--reps R]\n");
			return 2;
		}
	}
	if (kn_cuda_device_count(&n_dev, why, sizeof(why)) < 0) {
		printf("gpu: no CUDA device here (%s)\n", why);
		return 77;
	}
	if (device < 0 || device >= n_dev || kn_cuda_create(device, &cu) < 0) {
		fprintf(stderr, "gpu: cannot use device %d of %d\n", device, n_dev);
		return 1;
	}
	kn_cuda_describe(cu, desc, sizeof(desc));
	printf("gpu: %s, medians of %d runs\n", desc, reps);

	/* ceilings */
	size_t cbytes = (size_t)1 << 30;
	struct copy_arg ca = { dalloc(cbytes), dalloc(cbytes), cbytes };
	fill_bf16((uint16_t *)ca.src, cbytes / 2, 1);
	double copy_ms = time_ms(run_copy, &ca), copy_gbs = 2.0 * cbytes / copy_ms / 1e6;
	kn_cuda_free(cu, ca.dst);
	kn_cuda_free(cu, (void *)ca.src);
	enum { D = 8192 };
	struct mm_arg dm = { dalloc((size_t)D * D * 4), dalloc((size_t)D * D * 2),
			     dalloc((size_t)D * D * 2), D, D, D };
	fill_bf16((uint16_t *)dm.x, (size_t)D * D, 1);
	fill_bf16((uint16_t *)dm.w, (size_t)D * D, 1);
	double dense_tfs = 2.0 * D * D * (double)D / time_ms(run_mm, &dm) / 1e9;
	kn_cuda_free(cu, dm.y);
	kn_cuda_free(cu, (void *)dm.x);
	kn_cuda_free(cu, (void *)dm.w);
	printf("ceilings: device copy %.0f GB/s (read + write), dense bf16 product (8192^3) %.0f "
	       "TFLOP/s\n\n", copy_gbs, dense_tfs);
	frames();

	/* the experts' products: a worker's slots, gate projection (4096 -> 1408) */
	static const int means[] = { 1, 4, 16, 64, 256, 512 };
	const int S = WORKER_SLOTS, maxm = 4 * 512;
	const uint16_t *w[WORKER_SLOTS], *x[WORKER_SLOTS];
	float *y[WORKER_SLOTS];
	uint16_t *wall = dalloc((size_t)S * INTER * HIDDEN * 2);
	uint16_t *xall = dalloc((size_t)S * maxm * HIDDEN * 2);
	float *yall = dalloc((size_t)S * maxm * INTER * 4);
	fill_bf16(wall, (size_t)S * INTER * HIDDEN, 0.05f);
	fill_bf16(xall, (size_t)S * maxm * HIDDEN, 1);
	printf("experts' products: %d slots, %d -> %d, bf16 in, fp32 out\n", S, HIDDEN, INTER);
	printf("%-9s | %-8s | %9s %9s | %8s | %9s %7s | %s\n", "tok/exp", "largest", "grouped",
	       "padded", "TFLOP/s", "dense eq", "ratio", "read GB/s / copy");
	for (size_t i = 0; i < FR_ARRAY_SIZE(means); i++) {
		int m[WORKER_SLOTS], largest = 0;
		long total = 0;
		skewed_counts(m, S, means[i]);
		for (int e = 0; e < S; e++) {
			m[e] = FR_MIN(m[e], maxm); /* within the buffers */
			largest = FR_MAX(largest, m[e]);
			total += m[e];
		}
		for (int e = 0; e < S; e++) {
			w[e] = wall + (size_t)e * INTER * HIDDEN;
			x[e] = xall + (size_t)e * maxm * HIDDEN;
			y[e] = yall + (size_t)e * maxm * INTER;
		}
		struct gg_arg ga = { KN_CUDA_GEMM_GROUPED, S, INTER, HIDDEN, m, w, x, y };
		double g_ms = time_ms(run_gg, &ga);
		ga.how = KN_CUDA_GEMM_PADDED;
		double p_ms = time_ms(run_gg, &ga), best = FR_MIN(g_ms, p_ms);
		double flops = 2.0 * total * INTER * HIDDEN;
		/* one dense product of the same FLOPs: one expert's weights, all the tokens */
		struct mm_arg da = { yall, xall, wall, (int)total, INTER, HIDDEN };
		double d_ms = time_ms(run_mm, &da);
		double bytes = 0;
		for (int e = 0; e < S; e++)
			if (m[e])
				bytes += (double)INTER * HIDDEN * 2 + (double)m[e] * (HIDDEN * 2 + INTER * 4);
		printf("%-9d | %-8d | %7.3fms %7.3fms | %8.1f | %9.1f %7.2f | %7.0f %6.2f\n",
		       means[i], largest, g_ms, p_ms, flops / best / 1e9, flops / d_ms / 1e9,
		       d_ms / best, bytes / best / 1e6, bytes / best / 1e6 / copy_gbs);
	}
	kn_cuda_free(cu, wall);
	kn_cuda_free(cu, xall);
	kn_cuda_free(cu, yall);

	/* the whole layer, 145B shape: 128 experts, top-12 */
	printf("\nexpert layer (kn_cuda_moe): %d experts, top-%d, %d hidden, %d wide\n", N_EXPERTS,
	       TOP_K, HIDDEN, INTER);
	size_t per = (size_t)INTER * HIDDEN;
	uint16_t *wl = dalloc((size_t)N_EXPERTS * 3 * per * 2);
	fill_bf16(wl, (size_t)N_EXPERTS * 3 * per, 0.05f);
	struct kn_cuda_expert slots[N_EXPERTS];
	for (int e = 0; e < N_EXPERTS; e++)
		slots[e] = (struct kn_cuda_expert){ wl + (size_t)(3 * e) * per,
						    wl + (size_t)(3 * e + 1) * per,
						    wl + (size_t)(3 * e + 2) * per,
						    KN_DTYPE_BF16 };
	static const int toks[] = { 1, 32, 256 };
	for (size_t i = 0; i < FR_ARRAY_SIZE(toks); i++) {
		int n = toks[i];
		int32_t *poff = malloc(sizeof(int32_t) * (size_t)(n + 1)),
			*slot = malloc(sizeof(int32_t) * (size_t)n * TOP_K);
		float *wt = malloc(sizeof(float) * (size_t)n * TOP_K), *hx = malloc((size_t)n * HIDDEN * 4);
		if (!poff || !slot || !wt || !hx)
			return 1;
		for (int t = 0; t <= n; t++)
			poff[t] = t * TOP_K;
		for (int t = 0; t < n; t++)
			for (int j = 0; j < TOP_K; j++) {
				int e;
				bool dup;
				do {
					e = (int)(fr_splitmix64(&rng) % N_EXPERTS);
					dup = false;
					for (int k = 0; k < j; k++)
						dup |= slot[t * TOP_K + k] == e;
				} while (dup);
				slot[t * TOP_K + j] = e;
				wt[t * TOP_K + j] = 1.0f / TOP_K;
			}
		for (size_t k = 0; k < (size_t)n * HIDDEN; k++)
			hx[k] = (float)fr_rand_unit(&rng) * 2 - 1;
		float *dx = dalloc((size_t)n * HIDDEN * 4), *dout = dalloc((size_t)n * HIDDEN * 4);
		if (kn_cuda_upload(cu, dx, hx, (size_t)n * HIDDEN * 4) < 0)
			die("upload");
		struct kn_cuda_moe_batch b = { n, dx, poff, slot, wt };
		struct moe_arg ma = { KN_CUDA_GEMM_GROUPED, KN_PRECISION_FAST, slots, &b, dout };
		double g_ms = time_ms(run_moe, &ma);
		ma.how = KN_CUDA_GEMM_PADDED;
		double p_ms = time_ms(run_moe, &ma);
		/* what the worker runs: the faster of the two, picked on this device by timing
		 * both on the first layers of the shape (the warm-up runs) */
		for (int k = 0; k < 2 * KN_CUDA_TUNE_TRIALS; k++) {
			ma.how = KN_CUDA_GEMM_AUTO;
			if (run_moe(&ma) < 0)
				die("auto");
		}
		double a_ms = time_ms(run_moe, &ma);
		int mmax = 0, cnt[N_EXPERTS] = { 0 };
		for (int k = 0; k < n * TOP_K; k++)
			mmax = FR_MAX(mmax, ++cnt[slot[k]]);
		enum kn_cuda_gemm pick = KN_CUDA_GEMM_AUTO;
		kn_cuda_gemm_pick(cu, mmax, &pick, NULL);
		ma.how = KN_CUDA_GEMM_GROUPED;
		ma.prec = KN_PRECISION_EXACT; /* what precision = exact costs */
		double e_ms = time_ms(run_moe, &ma);
		printf("layer %d ms %.4f (auto picked %s; grouped %.4f, padded %.4f; exact %.4f, "
		       "%.1fx)\n", n, a_ms, kn_cuda_gemm_name(pick), g_ms, p_ms, e_ms, e_ms / a_ms);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dout);
		free(poff);
		free(slot);
		free(wt);
		free(hx);
	}
	kn_cuda_free(cu, wl);
	kn_cuda_destroy(cu);
	return 0;
}
