/* SPDX-License-Identifier: Apache-2.0 */
/* test_kn_ops.c - every op of every table this CPU can run, against the scalar reference
 * (and matmul/dot against an fp64 sum for the tolerance), on random inputs and odd shapes. */
#include <float.h>

#include "kn-test.h"

static const struct kn_ops *ref;

/* Tolerance of an fp32 sum of n products whose absolute values add up to sumabs. */
static double sum_tol(int n, double sumabs)
{
	return 8.0 * FLT_EPSILON * sqrt((double)n + 1.0) * sumabs + 1e-30;
}

static void *make_weights(const float *wf, size_t n, enum kn_dtype dt)
{
	void *p = malloc(n * kn_dtype_size(dt) + 1);
	if (!p) {
		perror("malloc");
		exit(1);
	}
	kn_from_f32(p, dt, wf, n);
	return p;
}

/* A token's result does not depend on how many came with it: the first 1 and 4 of y (n
 * tokens through mm) again through mm alone, bit for bit. */
static void check_alone(void (*mm)(float *, const float *, const struct kn_mat *, int, int, int),
			const char *what, const struct kn_mat *w, const float *x, const float *y,
			float *y2, int n)
{
	for (int m = 1; m <= 4 && m < n; m += 3) {
		mm(y2, x, w, m, 0, w->rows);
		KT_CHECK(memcmp(y2, y, sizeof(float) * (size_t)m * w->rows) == 0,
			 "%s %dx%d: the first %d of n=%d tokens differ from %d alone", what, w->rows,
			 w->cols, m, n, m);
	}
}

static void test_matmul(const struct kn_ops *ops, enum kn_dtype dt, int rows, int cols, int n)
{
	size_t nw = (size_t)rows * cols, ny = (size_t)n * rows;
	float *wf = kt_rand_vec(nw, 1.0f), *x = kt_rand_vec((size_t)n * cols, 1.0f);
	void *wd = make_weights(wf, nw, dt);
	struct kn_mat w = { .data = wd, .dtype = dt, .rows = rows, .cols = cols };
	float *y = kt_alloc(ny), *y2 = kt_alloc(ny), *yr = kt_alloc(ny);
	float *wx = kt_alloc(nw); /* the weights as the kernels see them */
	kn_to_f32(wx, wd, dt, nw);

	ref->matmul(yr, x, &w, n, 0, rows);
	ops->matmul(y, x, &w, n, 0, rows);
	for (int t = 0; t < n; t++) {
		for (int r = 0; r < rows; r++) {
			double sumabs = 0.0, exact = 0.0;
			for (int c = 0; c < cols; c++) {
				double p = (double)wx[(size_t)r * cols + c] * x[(size_t)t * cols + c];
				sumabs += fabs(p);
				exact += p;
			}
			size_t i = (size_t)t * rows + r;
			double tol = sum_tol(cols, sumabs);
			KT_CHECK(fabs(y[i] - yr[i]) <= 2 * tol && fabs(y[i] - exact) <= tol,
				 "%s matmul %s %dx%d n=%d: y[%d][%d]=%.9g scalar %.9g fp64 %.9g",
				 ops->name, kn_dtype_name(dt), rows, cols, n, t, r, y[i], yr[i], exact);
		}
	}

	/* A row range writes only its rows, and the same bits as the whole call: any split of
	 * rows over threads gives the same result. */
	int a = kt_randint(0, rows), b = kt_randint(a, rows);
	for (size_t i = 0; i < ny; i++)
		y2[i] = 12345.0f;
	ops->matmul(y2, x, &w, n, a, b);
	for (int t = 0; t < n; t++)
		for (int r = 0; r < rows; r++) {
			size_t i = (size_t)t * rows + r;
			if (r >= a && r < b)
				KT_CHECK(memcmp(&y2[i], &y[i], sizeof(float)) == 0,
					 "%s matmul %s %dx%d n=%d rows [%d,%d): y[%d][%d] %.9g != %.9g",
					 ops->name, kn_dtype_name(dt), rows, cols, n, a, b, t, r, y2[i],
					 y[i]);
			else
				KT_CHECK(y2[i] == 12345.0f, "%s matmul rows [%d,%d) wrote row %d",
					 ops->name, a, b, r);
		}
	/* Weights at an 8-byte offset from a cache line, where safetensors files written by
	 * Hugging Face's library put them: the same bits. */
	if (dt != KN_DTYPE_F32) {
		size_t bytes = nw * kn_dtype_size(dt);
		char *mis = aligned_alloc(64, FR_DIV_ROUND_UP(bytes + 8, 64) * 64);
		KT_CHECK(mis != NULL, "out of memory");
		memcpy(mis + 8, wd, bytes);
		struct kn_mat wm = { .data = mis + 8, .dtype = dt, .rows = rows, .cols = cols };
		ops->matmul(y2, x, &wm, n, 0, rows);
		KT_CHECK(memcmp(y2, y, ny * sizeof(float)) == 0,
			 "%s matmul %s %dx%d n=%d: weights at +8 bytes give other bits", ops->name,
			 kn_dtype_name(dt), rows, cols, n);
		free(mis);
	}
	/* BF16, up to 32 tokens of short rows (avx2: up to 64 tokens, any rows, long ones in
	 * column chunks): a token's result does not depend on how many came with it (the
	 * few-token tiles sum as the one-token ones) */
	bool few = strcmp(ops->name, "avx2") == 0 ? n <= 64 : n <= 32 && cols <= 2048;
	if (dt == KN_DTYPE_BF16 && few) {
		char what[64];
		snprintf(what, sizeof(what), "%s matmul", ops->name);
		check_alone(ops->matmul, what, &w, x, y, y2, n);
	}
	free(wf), free(x), free(wd), free(y), free(y2), free(yr), free(wx);
}

/* KN_PRECISION_FAST: against the scalar fast reference (x rounded to bf16, exact products)
 * and an fp64 sum of the same rounded products, with the fp32 sum tolerance; and against the
 * exact result, within what rounding x to bf16 (relative 2^-9) can move a sum. Row ranges
 * as for matmul. A table with no fast path is skipped (kn_matmul computes exactly). */
static void test_matmul_fast(const struct kn_ops *ops, int rows, int cols, int n)
{
	size_t nw = (size_t)rows * cols, ny = (size_t)n * rows;
	float *wf = kt_rand_vec(nw, 1.0f), *x = kt_rand_vec((size_t)n * cols, 1.0f);
	void *wd = make_weights(wf, nw, KN_DTYPE_BF16);
	struct kn_mat w = { .data = wd, .dtype = KN_DTYPE_BF16, .rows = rows, .cols = cols };
	float *y = kt_alloc(ny), *y2 = kt_alloc(ny), *yr = kt_alloc(ny), *ye = kt_alloc(ny);
	float *wx = kt_alloc(nw);

	if (!ops->matmul_fast)
		goto out;
	kn_to_f32(wx, wd, KN_DTYPE_BF16, nw);
	ref->matmul_fast(yr, x, &w, n, 0, rows);
	ref->matmul(ye, x, &w, n, 0, rows);
	ops->matmul_fast(y, x, &w, n, 0, rows);
	for (int t = 0; t < n; t++) {
		for (int r = 0; r < rows; r++) {
			double sumabs = 0.0, exact = 0.0;
			for (int c = 0; c < cols; c++) {
				float xb = kn_bf16_to_f32(kn_f32_to_bf16(x[(size_t)t * cols + c]));
				double p = (double)wx[(size_t)r * cols + c] * xb;
				sumabs += fabs(p);
				exact += p;
			}
			size_t i = (size_t)t * rows + r;
			double tol = sum_tol(cols, sumabs);
			KT_CHECK(fabs(y[i] - yr[i]) <= 2 * tol && fabs(y[i] - exact) <= tol,
				 "%s matmul_fast %dx%d n=%d: y[%d][%d]=%.9g scalar %.9g fp64 %.9g",
				 ops->name, rows, cols, n, t, r, y[i], yr[i], exact);
			KT_CHECK(fabs(y[i] - ye[i]) <= sumabs / 256 + tol,
				 "%s matmul_fast %dx%d n=%d: y[%d][%d]=%.9g, exact %.9g: more than "
				 "bf16 rounding of x explains", ops->name, rows, cols, n, t, r, y[i],
				 ye[i]);
		}
	}
	/* a token's result does not depend on how many came with it (1..64 tokens: the dot
	 * tiles and the few-token tiles sum in the same order) */
	if (n <= 64) {
		char what[64];
		snprintf(what, sizeof(what), "%s matmul_fast", ops->name);
		check_alone(ops->matmul_fast, what, &w, x, y, y2, n);
	}
	/* the same through activations rounded once (what kn_matmul's threads share) */
	if (ops->matmul_fast_xb) {
		size_t ld = KN_XB_LD(cols);
		uint16_t *xb = malloc((size_t)n * ld * sizeof(uint16_t));
		KT_CHECK(xb != NULL, "out of memory");
		ops->round_bf16(xb, x, n, cols);
		for (int t = 0; t < n; t++)
			for (size_t k = 0; k < ld; k++)
				KT_CHECK(xb[t * ld + k] == (k < (size_t)cols
								    ? kn_f32_to_bf16(x[t * cols + k])
								    : 0),
					 "%s round_bf16 %d cols: x[%d][%zu]", ops->name, cols, t, k);
		ops->matmul_fast_xb(y2, xb, &w, n, 0, rows);
		KT_CHECK(memcmp(y2, y, sizeof(float) * ny) == 0,
			 "%s matmul_fast_xb %dx%d n=%d differs from matmul_fast", ops->name, rows,
			 cols, n);
		free(xb);
	}
	int a = kt_randint(0, rows), b = kt_randint(a, rows);
	for (size_t i = 0; i < ny; i++)
		y2[i] = 12345.0f;
	ops->matmul_fast(y2, x, &w, n, a, b);
	for (int t = 0; t < n; t++)
		for (int r = 0; r < rows; r++) {
			size_t i = (size_t)t * rows + r;
			if (r >= a && r < b)
				KT_CHECK(memcmp(&y2[i], &y[i], sizeof(float)) == 0,
					 "%s matmul_fast %dx%d n=%d rows [%d,%d): y[%d][%d] %.9g != "
					 "%.9g", ops->name, rows, cols, n, a, b, t, r, y2[i], y[i]);
			else
				KT_CHECK(y2[i] == 12345.0f, "%s matmul_fast rows [%d,%d) wrote row %d",
					 ops->name, a, b, r);
		}
out:
	free(wf), free(x), free(wd), free(y), free(y2), free(yr), free(ye), free(wx);
}

static void test_rmsnorm(const struct kn_ops *ops, int dim)
{
	float *x = kt_rand_vec(dim, 3.0f), *g = kt_rand_vec(dim, 2.0f);
	float *y = kt_alloc(dim), *yr = kt_alloc(dim), *xa = kt_alloc(dim);
	ref->rmsnorm(yr, x, g, dim, 1e-6f);
	ops->rmsnorm(y, x, g, dim, 1e-6f);
	memcpy(xa, x, dim * sizeof(float));
	ops->rmsnorm(xa, xa, g, dim, 1e-6f); /* in place */
	for (int i = 0; i < dim; i++) {
		KT_CHECK(fabsf(y[i] - yr[i]) <= 1e-5f * fabsf(yr[i]) + 1e-30f,
			 "%s rmsnorm dim=%d [%d]: %.9g vs %.9g", ops->name, dim, i, y[i], yr[i]);
		KT_CHECK(xa[i] == y[i], "%s rmsnorm in place dim=%d [%d]", ops->name, dim, i);
	}
	free(x), free(g), free(y), free(yr), free(xa);
}

static double ulp_err(float got, double want)
{
	if (isnan(want))
		return isnan(got) ? 0.0 : INFINITY;
	if (isinf(want) || isinf(got))
		return got == want ? 0.0 : INFINITY;
	double aw = fabs(want);
	if (aw < FLT_MIN)
		aw = FLT_MIN;
	int e;
	frexp(aw, &e);
	double ulp = ldexp(1.0, e - 24);
	return fabs((double)got - want) / ulp;
}

static void test_swiglu(const struct kn_ops *ops, int n)
{
	float *gate = kt_rand_vec(n, 12.0f), *up = kt_rand_vec(n, 2.0f);
	float *o = kt_alloc(n), *orf = kt_alloc(n);
	ref->swiglu(orf, gate, up, n);
	ops->swiglu(o, gate, up, n);
	for (int i = 0; i < n; i++) {
		double g = gate[i], want = g / (1.0 + exp(-g)) * up[i];
		KT_CHECK(ulp_err(o[i], want) <= 4.0 && ulp_err(o[i], orf[i]) <= 6.0,
			 "%s swiglu n=%d [%d] g=%.9g: %.9g scalar %.9g fp64 %.9g", ops->name, n, i,
			 gate[i], o[i], orf[i], want);
	}
	free(gate), free(up), free(o), free(orf);
}

/* exp over its whole range, including overflow, underflow, subnormal results and NaN. */
static void test_swiglu_range(const struct kn_ops *ops)
{
	enum { N = 4096 + 12 };
	static float gate[N], up[N], o[N], orf[N];
	double worst = 0.0;
	for (int i = 0; i < 4096; i++) {
		gate[i] = -110.0f + 220.0f * (float)i / 4096.0f + kt_randf() * 0.01f;
		up[i] = 1.0f;
	}
	const float special[12] = { INFINITY, -INFINITY, NAN,	 1e30f,	 -1e30f, 88.72f,
				    -88.72f,  89.5f,	 -89.5f, 103.9f, -87.4f, -1e-30f };
	for (int i = 0; i < 12; i++) {
		gate[4096 + i] = special[i];
		up[4096 + i] = 1.5f;
	}
	ops->swiglu(o, gate, up, N);
	ref->swiglu(orf, gate, up, N);
	for (int i = 0; i < N; i++) {
		/* fp64 except that exp(-g) is rounded to float, as an exact expf would be: where
		 * it overflows the fp32 formula gives -0, and so must the kernel. */
		double g = gate[i], e32 = (float)exp(-g);
		double want = isinf(g) ? (g > 0 ? g * up[i] : NAN) : g / (1.0 + e32) * up[i];
		double e = ulp_err(o[i], want);
		if (i < 4096 && e > worst)
			worst = e;
		KT_CHECK(e <= 4.0 || (isnan(o[i]) && isnan(orf[i])),
			 "%s swiglu g=%.9g: %.9g (scalar %.9g, fp64 %.9g, %.1f ulp)", ops->name,
			 gate[i], o[i], orf[i], want, e);
	}
	printf("  %s: swiglu worst %.2f ulp over [-110, 110]\n", ops->name, worst);
}

static void test_axpy(const struct kn_ops *ops, int n)
{
	float *x = kt_rand_vec(n, 1.0f), *y = kt_rand_vec(n, 1.0f), *yr = kt_alloc(n);
	float a = kt_randf() * 3.0f;
	memcpy(yr, y, n * sizeof(float));
	float *y0 = kt_alloc(n);
	memcpy(y0, y, n * sizeof(float));
	ref->axpy(yr, a, x, n);
	ops->axpy(y, a, x, n);
	for (int i = 0; i < n; i++)
		KT_CHECK(fabsf(y[i] - yr[i]) <= 2.0f * FLT_EPSILON * (fabsf(y0[i]) + fabsf(a * x[i])),
			 "%s axpy n=%d [%d]: %.9g vs %.9g", ops->name, n, i, y[i], yr[i]);
	free(x), free(y), free(yr), free(y0);
}

static void test_dot(const struct kn_ops *ops, int n)
{
	float *x = kt_rand_vec(n, 1.0f), *y = kt_rand_vec(n, 1.0f);
	double sumabs = 0.0, exact = 0.0;
	for (int i = 0; i < n; i++) {
		sumabs += fabs((double)x[i] * y[i]);
		exact += (double)x[i] * y[i];
	}
	float d = ops->dot(x, y, n), dr = ref->dot(x, y, n);
	double tol = sum_tol(n, sumabs);
	KT_CHECK(fabs(d - dr) <= 2 * tol && fabs(d - exact) <= tol,
		 "%s dot n=%d: %.9g scalar %.9g fp64 %.9g", ops->name, n, d, dr, exact);
	free(x), free(y);
}

/* argmax against the scalar loop, on random values and with ties, NaNs and infinities
 * planted (a NaN first, a NaN elsewhere, -inf everywhere, the maximum twice). */
static void test_argmax(const struct kn_ops *ops, int n)
{
	float *x = kt_rand_vec((size_t)n, 1.0f);

	if (!ops->argmax)
		goto out;
	for (int c = 0; c < 7; c++) {
		int a = kt_randint(0, n - 1), b = kt_randint(0, n - 1);
		switch (c) {
		case 1: x[a] = x[b] = 5.0f; break;      /* a tie: the lower index wins */
		case 2: x[a] = NAN; break;               /* a NaN never wins */
		case 3: x[0] = NAN; break;               /* ... and first, it gives 0 */
		case 4: x[0] = 0.5f; x[a] = INFINITY; break;
		case 5: for (int i = 0; i < n; i++) x[i] = -INFINITY; break;
		case 6: x[a] = -0.0f; x[b] = 0.0f; x[0] = -1.0f; break;
		}
		int got = ops->argmax(x, n), want = ref->argmax(x, n);
		KT_CHECK(got == want, "%s argmax n=%d case %d: %d, the loop says %d", ops->name, n,
			 c, got, want);
		if (c >= 3)
			for (int i = 0; i < n; i++)
				x[i] = (float)(kt_randint(0, 1000000) - 500000) / 1e5f;
	}
out:
	free(x);
}

/* kn_matmul in fast mode on two threads, where the activations are rounded once into a
 * buffer the threads share: the same bits as the table's own matmul_fast. */
static void test_matmul_fast_shared(int rows, int cols, int n)
{
	const struct kn_ops *ops = kn_ops();
	float *wf = kt_rand_vec((size_t)rows * cols, 1.0f), *x = kt_rand_vec((size_t)n * cols, 1.0f);
	void *wd = make_weights(wf, (size_t)rows * cols, KN_DTYPE_BF16);
	struct kn_mat w = { .data = wd, .dtype = KN_DTYPE_BF16, .rows = rows, .cols = cols };
	float *y = kt_alloc((size_t)n * rows), *y2 = kt_alloc((size_t)n * rows);
	int threads = kn_threads();

	if (ops->matmul_fast) {
		kn_set_threads(2);
		kn_set_precision(KN_PRECISION_FAST);
		kn_matmul(y, x, &w, n);
		ops->matmul_fast(y2, x, &w, n, 0, rows);
		KT_CHECK(memcmp(y, y2, sizeof(float) * (size_t)n * rows) == 0,
			 "%s kn_matmul fast %dx%d n=%d on 2 threads differs from matmul_fast",
			 ops->name, rows, cols, n);
		kn_set_precision(KN_PRECISION_EXACT);
		kn_set_threads(threads);
	}
	free(wf), free(x), free(wd), free(y), free(y2);
}

/* [engine] / [worker] precision = auto: exact on the CPU, fast on a GPU; a value set wins
 * on both. */
static void test_precision_resolve(void)
{
	KT_CHECK(kn_precision_resolve(KN_PRECISION_AUTO, false) == KN_PRECISION_EXACT &&
			 kn_precision_resolve(KN_PRECISION_AUTO, true) == KN_PRECISION_FAST &&
			 kn_precision_resolve(KN_PRECISION_EXACT, true) == KN_PRECISION_EXACT &&
			 kn_precision_resolve(KN_PRECISION_FAST, false) == KN_PRECISION_FAST &&
			 kn_precision_resolve(KN_PRECISION_EXACT, false) == KN_PRECISION_EXACT,
		 "kn_precision_resolve");
}

static void test_softmax(const struct kn_ops *ops, int n)
{
	float *x = kt_rand_vec(n, 20.0f), *xr = kt_alloc(n);
	memcpy(xr, x, n * sizeof(float));
	ref->softmax(xr, n);
	ops->softmax(x, n);
	double sum = 0.0;
	for (int i = 0; i < n; i++) {
		sum += x[i];
		KT_CHECK(fabsf(x[i] - xr[i]) <= (8.0f + sqrtf((float)n)) * FLT_EPSILON * xr[i] + 1e-37f,
			 "%s softmax n=%d [%d]: %.9g vs %.9g", ops->name, n, i, x[i], xr[i]);
	}
	KT_CHECK(fabs(sum - 1.0) < 1e-5, "%s softmax n=%d sums to %.9g", ops->name, n, sum);
	free(x), free(xr);
}

static void test_attend(const struct kn_ops *ops, int n_ctx, int hd)
{
	static const int32_t zero = 0;
	static const int block_sizes[] = { 1, 2, 3, 16, 64 };
	size_t stride = (size_t)hd * 3 + 1;
	float *q = kt_rand_vec(hd, 2.0f), *k = kt_rand_vec(n_ctx * stride, 2.0f);
	float *v = kt_rand_vec(n_ctx * stride, 1.0f);
	float *o = kt_rand_vec(hd, 1.0f), *orf = kt_alloc(hd), *sc = kt_alloc(n_ctx);
	float *op = kt_alloc(hd);
	float scale = 1.0f / sqrtf((float)hd);
	ref->attend(orf, q, k, v, &zero, n_ctx, n_ctx, hd, stride, scale, sc);
	ops->attend(o, q, k, v, &zero, n_ctx, n_ctx, hd, stride, scale, sc);
	for (int d = 0; d < hd; d++)
		KT_CHECK(fabsf(o[d] - orf[d]) <= 2e-6f, "%s attend ctx=%d hd=%d [%d]: %.9g vs %.9g",
			 ops->name, n_ctx, hd, d, o[d], orf[d]);
	/* Paged: the same rows scattered over shuffled blocks give the same bits. */
	for (size_t b = 0; b < FR_ARRAY_SIZE(block_sizes); b++) {
		int bs = block_sizes[b];
		int n_pool;
		int32_t *bt = kt_block_table(n_ctx, bs, &n_pool);
		float *kp = kt_page(k, n_ctx, stride, bs, bt, n_pool);
		float *vp = kt_page(v, n_ctx, stride, bs, bt, n_pool);
		ops->attend(op, q, kp, vp, bt, bs, n_ctx, hd, stride, scale, sc);
		KT_CHECK(memcmp(op, o, (size_t)hd * sizeof(float)) == 0,
			 "%s attend paged ctx=%d hd=%d block %d: differs from contiguous", ops->name,
			 n_ctx, hd, bs);
		free(kp), free(vp), free(bt);
	}
	free(q), free(k), free(v), free(o), free(orf), free(sc), free(op);
}

/* attend_multi: nq queries over the same paged cache, positions ascending (some equal), give
 * each query attend's bits. */
static void test_attend_multi(const struct kn_ops *ops, int nq, int n_ctx0, int hd, int bs)
{
	int n_ctx[KN_ATTEND_MAX_Q], last, n_pool;
	size_t stride = (size_t)hd * 2 + 3, qstride = (size_t)hd + 5;
	for (int i = 0; i < nq; i++)
		n_ctx[i] = n_ctx0 + i + (i == 2 ? -1 : 0); /* queries 1 and 2 see as much */
	last = n_ctx[nq - 1];
	float *k = kt_rand_vec(last * stride, 2.0f), *v = kt_rand_vec(last * stride, 1.0f);
	float *q = kt_rand_vec(nq * qstride, 2.0f), *o = kt_alloc(nq * qstride);
	float *one = kt_alloc(hd), *sc = kt_alloc((size_t)nq * last);
	float scale = 1.0f / sqrtf((float)hd);
	int32_t *bt = kt_block_table(last, bs, &n_pool);
	float *kp = kt_page(k, last, stride, bs, bt, n_pool), *vp = kt_page(v, last, stride, bs, bt, n_pool);

	ops->attend_multi(o, q, qstride, nq, kp, vp, bt, bs, n_ctx, hd, stride, scale, sc);
	for (int i = 0; i < nq; i++) {
		ops->attend(one, q + i * qstride, kp, vp, bt, bs, n_ctx[i], hd, stride, scale, sc);
		KT_CHECK(memcmp(one, o + i * qstride, (size_t)hd * sizeof(float)) == 0,
			 "%s attend_multi nq=%d query %d (ctx %d) hd=%d block %d: differs from attend",
			 ops->name, nq, i, n_ctx[i], hd, bs);
	}
	free(k), free(v), free(q), free(o), free(one), free(sc), free(bt), free(kp), free(vp);
}

int main(void)
{
	static const int mm_shapes[][3] = {
		/* rows, cols, n */
		{ 1, 1, 1 },	 { 3, 7, 1 },	  { 8, 16, 1 },	   { 9, 17, 1 },    { 17, 33, 1 },
		{ 24, 1000, 1 }, { 19, 130, 2 },  { 13, 100, 3 },  { 40, 255, 4 },  { 33, 257, 5 },
		{ 16, 256, 6 },	 { 37, 513, 7 },  { 64, 300, 13 }, { 5, 1030, 9 },  { 70, 64, 2 },
		{ 2, 3, 17 },	 { 31, 520, 33 }, { 48, 8, 12 },   { 100, 31, 1 },  { 18, 777, 11 },
		/* few tokens whose activations outgrow the cache: rows in column chunks */
		{ 70, 2100, 33 }, { 9, 1100, 64 },
	};
	static const int sizes[] = { 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 64, 100, 1027 };
	static const int att[][2] = { { 1, 1 }, { 3, 7 }, { 17, 16 }, { 100, 64 }, { 33, 128 }, { 5, 9 } };

	kt_seed("test_kn_ops");
	ref = kn_ops_get("scalar");
	KT_CHECK(ref && strcmp(ref->name, "scalar") == 0, "no scalar table");
	if (!ref)
		return kt_finish("test_kn_ops");

	for (const char *const *name = kn_ops_available(); *name; name++) {
		const struct kn_ops *ops = kn_ops_get(*name);
		KT_CHECK(ops && strcmp(ops->name, *name) == 0, "kn_ops_get(%s)", *name);
		if (!ops)
			continue;
		printf("table %s\n", ops->name);
		for (int dt = KN_DTYPE_F32; dt <= KN_DTYPE_F16; dt++)
			for (size_t s = 0; s < FR_ARRAY_SIZE(mm_shapes); s++)
				test_matmul(ops, (enum kn_dtype)dt, mm_shapes[s][0], mm_shapes[s][1],
					    mm_shapes[s][2]);
		for (size_t s = 0; s < FR_ARRAY_SIZE(mm_shapes); s++)
			test_matmul_fast(ops, mm_shapes[s][0], mm_shapes[s][1], mm_shapes[s][2]);
		/* panels past one packed block of columns, odd column counts */
		test_matmul_fast(ops, 45, 1201, 9);
		test_matmul_fast(ops, 33, 513, 4);
		test_matmul_fast(ops, 37, 2100, 32);
		test_matmul_fast(ops, 9, 1500, 20);
		test_matmul_fast(ops, 40, 2100, 70); /* packed panels, rounded off the stack */
		test_matmul_fast(ops, 13, 5000, 9);  /* rows long enough to go in column chunks */
		test_matmul_fast(ops, 6, 4500, 4);
		for (size_t s = 0; s < FR_ARRAY_SIZE(sizes); s++) {
			test_rmsnorm(ops, sizes[s]);
			test_swiglu(ops, sizes[s]);
			test_axpy(ops, sizes[s]);
			test_dot(ops, sizes[s]);
			test_softmax(ops, sizes[s]);
			test_argmax(ops, sizes[s]);
		}
		test_argmax(ops, 102400);
		test_swiglu_range(ops);
		for (size_t s = 0; s < FR_ARRAY_SIZE(att); s++)
			test_attend(ops, att[s][0], att[s][1]);
		for (int nq = 2; ops->attend_multi && nq <= KN_ATTEND_MAX_Q; nq++) {
			test_attend_multi(ops, nq, 1, 16, 1);
			test_attend_multi(ops, nq, 5, 7, 3);
			test_attend_multi(ops, nq, 40, 128, 16);
			test_attend_multi(ops, nq, 70, 18, 64);
			test_attend_multi(ops, nq, 33, 100, 5);
		}
	}
	test_matmul_fast_shared(100, 2100, 48);
	test_matmul_fast_shared(70, 1500, 80);
	test_matmul_fast_shared(30, 4200, 33);
	test_precision_resolve();
	KT_CHECK(kn_ops_get("no-such-isa") == NULL, "kn_ops_get of an unknown name");
	return kt_finish("test_kn_ops");
}
