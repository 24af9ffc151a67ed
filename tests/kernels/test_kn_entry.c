/* SPDX-License-Identifier: Apache-2.0 */
/* test_kn_entry.c - the threaded kn_* entry points on the active table (--isa NAME picks it
 * through FERRY_ISA): rope against fp64, attention against a naive fp64 version, paged
 * attention bit-identical to it, kn_gate against a sort, and bit-identical matmul/attention
 * results for 1 and 2 threads; the team entry points inside one region of 2 and 3 threads,
 * and the region counter. */
#include <float.h>
#include <inttypes.h>

#include "kn-test.h"

static void test_rope(int n, int n_heads, int hd, float theta)
{
	size_t sz = (size_t)n * n_heads * hd;
	float *x = kt_rand_vec(sz, 2.0f), *x0 = kt_alloc(sz);
	int32_t *pos = malloc(n * sizeof(int32_t));
	memcpy(x0, x, sz * sizeof(float));
	for (int t = 0; t < n; t++)
		pos[t] = t == 0 ? 0 : kt_randint(0, 200000);
	kn_rope(x, n, n_heads, hd, pos, theta);
	int half = hd / 2;
	for (int t = 0; t < n; t++)
		for (int h = 0; h < n_heads; h++)
			for (int j = 0; j < half; j++) {
				size_t b = ((size_t)t * n_heads + h) * hd;
				double a = pos[t] * pow(theta, -2.0 * j / hd);
				double u = x0[b + j], v = x0[b + j + half];
				double w0 = u * cos(a) - v * sin(a), w1 = v * cos(a) + u * sin(a);
				double tol = 4 * FLT_EPSILON * (fabs(u) + fabs(v));
				KT_CHECK(fabs(x[b + j] - w0) <= tol && fabs(x[b + j + half] - w1) <= tol,
					 "rope hd=%d pos=%d j=%d: (%.9g, %.9g) want (%.9g, %.9g)", hd, pos[t],
					 j, x[b + j], x[b + j + half], w0, w1);
			}
	free(x), free(x0), free(pos);
}

static void test_attention(int n, int n_heads, int n_kv, int hd, int max_ctx)
{
	size_t kv_sz = (size_t)max_ctx * n_kv * hd, q_sz = (size_t)n * n_heads * hd;
	float *kc = kt_rand_vec(kv_sz, 2.0f), *vc = kt_rand_vec(kv_sz, 1.0f);
	float *q = kt_rand_vec(q_sz, 2.0f), *out = kt_alloc(q_sz), *out1 = kt_alloc(q_sz);
	int32_t *pos = malloc(n * sizeof(int32_t));
	int p0 = kt_randint(0, max_ctx - n);
	for (int t = 0; t < n; t++)
		pos[t] = p0 + t;
	double *s = malloc(max_ctx * sizeof(double));

	for (int nth = 1; nth <= 2; nth++) {
		kn_set_threads(nth);
		size_t scf = kn_attention_scratch_size(max_ctx);
		float *scratch = kt_alloc(scf);
		kn_attention(nth == 1 ? out1 : out, q, kc, vc, n, pos, n_heads, n_kv, hd, scratch, scf);
		free(scratch);
	}
	KT_CHECK(memcmp(out, out1, q_sz * sizeof(float)) == 0, "attention: 1 and 2 threads differ");

	/* Row by row, as decode calls it: the same bits as all rows at once (a prefill). */
	{
		size_t scf = kn_attention_scratch_size(max_ctx), qrow = (size_t)n_heads * hd;
		float *scratch = kt_alloc(scf), *one = kt_alloc(q_sz);
		for (int t = 0; t < n; t++)
			kn_attention(one + t * qrow, q + t * qrow, kc, vc, 1, pos + t, n_heads, n_kv, hd,
				     scratch, scf);
		KT_CHECK(memcmp(out, one, q_sz * sizeof(float)) == 0,
			 "attention n=%d heads=%d/%d hd=%d: row by row differs from all rows at once",
			 n, n_heads, n_kv, hd);
		free(scratch), free(one);
	}

	/* The same cache paged over shuffled blocks: the same bits. */
	static const int block_sizes[] = { 1, 16, 64 };
	for (size_t b = 0; b < FR_ARRAY_SIZE(block_sizes); b++) {
		int bs = block_sizes[b], n_pool;
		size_t row = (size_t)n_kv * hd, scf = kn_attention_scratch_size(max_ctx);
		int32_t *bt = kt_block_table(max_ctx, bs, &n_pool);
		float *kp = kt_page(kc, max_ctx, row, bs, bt, n_pool);
		float *vp = kt_page(vc, max_ctx, row, bs, bt, n_pool);
		float *scratch = kt_alloc(scf);
		kn_attention_paged(out1, q, kp, vp, bt, bs, n, pos, n_heads, n_kv, hd, scratch, scf);
		KT_CHECK(memcmp(out, out1, q_sz * sizeof(float)) == 0,
			 "paged attention n=%d heads=%d/%d hd=%d block %d: differs from contiguous", n,
			 n_heads, n_kv, hd, bs);
		free(bt), free(kp), free(vp), free(scratch);
	}

	double scale = 1.0 / sqrt((double)hd);
	for (int t = 0; t < n; t++)
		for (int h = 0; h < n_heads; h++) {
			int kvh = h / (n_heads / n_kv);
			const float *qv = q + ((size_t)t * n_heads + h) * hd;
			double mx = -INFINITY, sum = 0.0;
			for (int j = 0; j <= pos[t]; j++) {
				const float *kv = kc + ((size_t)j * n_kv + kvh) * hd;
				double d = 0.0;
				for (int i = 0; i < hd; i++)
					d += (double)qv[i] * kv[i];
				s[j] = d * scale;
				mx = fmax(mx, s[j]);
			}
			for (int j = 0; j <= pos[t]; j++)
				sum += (s[j] = exp(s[j] - mx));
			for (int i = 0; i < hd; i++) {
				double o = 0.0;
				for (int j = 0; j <= pos[t]; j++)
					o += s[j] / sum * vc[((size_t)j * n_kv + kvh) * hd + i];
				float got = out[((size_t)t * n_heads + h) * hd + i];
				KT_CHECK(fabs(got - o) <= 1e-5, "attention n=%d heads=%d/%d hd=%d t=%d h=%d [%d]: %.9g want %.9g",
					 n, n_heads, n_kv, hd, t, h, i, got, o);
			}
		}
	free(kc), free(vc), free(q), free(out), free(out1), free(pos), free(s);
}

/* ---- gate ---------------------------------------------------------------------------------- */

/* Returns false when two experts near the cut of the selection are too close to call. */
static bool gate_ref(const float *logits, const struct kn_gate_opts *o, int32_t *idx, double *w)
{
	int ne = o->n_experts;
	double *score = malloc(ne * sizeof(double)), *sel = malloc(ne * sizeof(double));
	int *order = malloc(ne * sizeof(int));
	double mx = -INFINITY, sum = 0.0;
	for (int e = 0; e < ne; e++)
		mx = fmax(mx, logits[e]);
	for (int e = 0; e < ne; e++) {
		score[e] = o->scoring == KN_SCORING_SOFTMAX ? exp(logits[e] - mx)
							     : 1.0 / (1.0 + exp(-(double)logits[e]));
		sum += score[e];
	}
	for (int e = 0; e < ne; e++) {
		if (o->scoring == KN_SCORING_SOFTMAX)
			score[e] /= sum;
		sel[e] = score[e] + (o->bias ? o->bias[e] : 0.0);
		order[e] = e;
	}
	/* insertion sort: by selection score descending, then by index */
	for (int i = 1; i < ne; i++)
		for (int j = i; j > 0 && sel[order[j]] > sel[order[j - 1]]; j--) {
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	bool clear = true;
	for (int i = 0; i < o->mask_top + o->k && i + 1 < ne; i++)
		if (sel[order[i]] - sel[order[i + 1]] < 1e-5)
			clear = false;
	double tot = 0.0;
	for (int i = 0; i < o->k; i++) {
		idx[i] = order[o->mask_top + i];
		w[i] = score[idx[i]];
		tot += w[i];
	}
	for (int i = 0; i < o->k; i++)
		w[i] = w[i] * o->routed_scaling / (o->norm_topk_prob ? tot : 1.0);
	free(score), free(sel), free(order);
	return clear;
}

static void check_gate(const char *what, const float *logits, const struct kn_gate_opts *o)
{
	int32_t idx[64], ridx[64];
	float w[64];
	double rw[64];
	float *scratch = kt_alloc(2 * (size_t)o->n_experts);
	kn_gate(logits, o, idx, w, scratch);
	if (!gate_ref(logits, o, ridx, rw)) {
		free(scratch);
		return; /* a near tie: fp32 may order it either way */
	}
	double wsum = 0.0;
	for (int i = 0; i < o->k; i++) {
		KT_CHECK(idx[i] == ridx[i], "gate %s: idx[%d] = %d, want %d", what, i, idx[i], ridx[i]);
		KT_CHECK(fabs(w[i] - rw[i]) <= 1e-6 * fabs(rw[i]) + 1e-30, "gate %s: w[%d] = %.9g, want %.9g",
			 what, i, w[i], rw[i]);
		wsum += w[i];
	}
	if (o->norm_topk_prob)
		KT_CHECK(fabs(wsum - o->routed_scaling) < 1e-5 * o->routed_scaling,
			 "gate %s: weights sum to %.9g, want %.9g", what, wsum, o->routed_scaling);
	free(scratch);
}

/* Logits far apart (a shuffled ladder plus noise), so fp32 and fp64 sort them alike. */
static void distinct_logits(float *l, int n, float step)
{
	for (int i = 0; i < n; i++)
		l[i] = (float)i;
	for (int i = n - 1; i > 0; i--) {
		int j = kt_randint(0, i);
		float t = l[i];
		l[i] = l[j];
		l[j] = t;
	}
	for (int i = 0; i < n; i++)
		l[i] = (l[i] - n / 2) * step + kt_randf() * step * 0.1f;
}

static void test_gate(void)
{
	float logits[256], bias[256];
	struct kn_gate_opts o = { .scoring = KN_SCORING_SOFTMAX, .n_experts = 64, .k = 6,
				  .routed_scaling = 1.0f };
	for (int rep = 0; rep < 20; rep++) {
		distinct_logits(logits, 64, 0.05f);
		o.norm_topk_prob = false, o.mask_top = 0, o.routed_scaling = 1.0f;
		check_gate("softmax", logits, &o);
		o.norm_topk_prob = true;
		check_gate("softmax norm", logits, &o);
		o.mask_top = kt_randint(1, 5), o.routed_scaling = 16.0f;
		check_gate("softmax mask_top scaled", logits, &o);
	}

	/* DeepSeek-V3: sigmoid scores, a bias that only moves selection, normalized weights. */
	struct kn_gate_opts v3 = { .scoring = KN_SCORING_SIGMOID, .n_experts = 256, .k = 8,
				   .norm_topk_prob = true, .routed_scaling = 2.5f, .bias = bias };
	for (int rep = 0; rep < 20; rep++) {
		distinct_logits(logits, 256, 0.02f);
		distinct_logits(bias, 256, 0.001f); /* a different order from the logits */
		check_gate("sigmoid bias", logits, &v3);
		v3.mask_top = 3;
		check_gate("sigmoid bias mask_top", logits, &v3);
		v3.mask_top = 0, v3.bias = NULL, v3.norm_topk_prob = false, v3.routed_scaling = 1.0f;
		check_gate("sigmoid", logits, &v3);
		v3.bias = bias, v3.norm_topk_prob = true, v3.routed_scaling = 2.5f;
	}

	/* The bias changes which experts win but never their weights. */
	for (int e = 0; e < 16; e++)
		logits[e] = 0.1f * (float)e, bias[e] = e == 2 ? 10.0f : 0.0f;
	struct kn_gate_opts b = { .scoring = KN_SCORING_SIGMOID, .n_experts = 16, .k = 2,
				  .routed_scaling = 1.0f, .bias = bias };
	int32_t idx[4];
	float w[4], sc[32];
	kn_gate(logits, &b, idx, w, sc);
	KT_CHECK(idx[0] == 2 && idx[1] == 15, "gate bias: picked %d, %d; want 2, 15", idx[0], idx[1]);
	KT_CHECK(fabsf(w[0] - 1.0f / (1.0f + expf(-0.2f))) < 1e-6f, "gate bias leaked into weight: %.9g",
		 w[0]);

	/* Ties go to the lower expert id. */
	for (int e = 0; e < 16; e++)
		logits[e] = (e % 4 == 1) ? 1.0f : 0.5f; /* 1, 5, 9, 13 tie on top, then 0, 2, ... */
	struct kn_gate_opts t = { .scoring = KN_SCORING_SOFTMAX, .n_experts = 16, .k = 6,
				  .routed_scaling = 1.0f };
	int32_t idx6[6];
	float w6[6];
	kn_gate(logits, &t, idx6, w6, sc);
	static const int32_t want[6] = { 1, 5, 9, 13, 0, 2 };
	for (int i = 0; i < 6; i++)
		KT_CHECK(idx6[i] == want[i], "gate ties: idx[%d] = %d, want %d", i, idx6[i], want[i]);
	t.mask_top = 2, t.k = 3;
	kn_gate(logits, &t, idx6, w6, sc);
	KT_CHECK(idx6[0] == 9 && idx6[1] == 13 && idx6[2] == 0, "gate ties with mask_top: %d %d %d",
		 idx6[0], idx6[1], idx6[2]);
	for (int e = 0; e < 16; e++)
		logits[e] = 0.25f;
	t.mask_top = 0, t.k = 4, t.scoring = KN_SCORING_SIGMOID, t.norm_topk_prob = true;
	kn_gate(logits, &t, idx6, w6, sc);
	for (int i = 0; i < 4; i++) {
		KT_CHECK(idx6[i] == i, "gate all equal: idx[%d] = %d", i, idx6[i]);
		KT_CHECK(fabsf(w6[i] - 0.25f) < 1e-6f, "gate all equal: w[%d] = %.9g", i, w6[i]);
	}
}

/* ---- matmul and friends through the entry points ----------------------------------------- */

static void test_matmul_threads(enum kn_dtype dt, int rows, int cols, int n)
{
	size_t nw = (size_t)rows * cols;
	float *wf = kt_rand_vec(nw, 1.0f), *x = kt_rand_vec((size_t)n * cols, 1.0f);
	void *wd = malloc(nw * kn_dtype_size(dt));
	kn_from_f32(wd, dt, wf, nw);
	struct kn_mat w = { .data = wd, .dtype = dt, .rows = rows, .cols = cols };
	float *y1 = kt_alloc((size_t)n * rows), *y2 = kt_alloc((size_t)n * rows);
	float *yr = kt_alloc((size_t)n * rows), *wx = kt_alloc(nw);

	kn_set_threads(1);
	kn_matmul(y1, x, &w, n);
	kn_set_threads(2);
	KT_CHECK(kn_threads() == 2, "kn_threads() = %d after kn_set_threads(2)", kn_threads());
	kn_matmul(y2, x, &w, n);
	KT_CHECK(memcmp(y1, y2, (size_t)n * rows * sizeof(float)) == 0,
		 "matmul %s %dx%d n=%d: 1 and 2 threads differ", kn_dtype_name(dt), rows, cols, n);
	kn_set_threads(3);
	kn_matmul(y2, x, &w, n);
	KT_CHECK(memcmp(y1, y2, (size_t)n * rows * sizeof(float)) == 0,
		 "matmul %s %dx%d n=%d: 1 and 3 threads differ", kn_dtype_name(dt), rows, cols, n);

	kn_ops_get("scalar")->matmul(yr, x, &w, n, 0, rows);
	kn_to_f32(wx, wd, dt, nw);
	for (int t = 0; t < n; t++)
		for (int r = 0; r < rows; r++) {
			double sumabs = 0.0;
			for (int c = 0; c < cols; c++)
				sumabs += fabs((double)wx[(size_t)r * cols + c] * x[(size_t)t * cols + c]);
			size_t i = (size_t)t * rows + r;
			KT_CHECK(fabs(y1[i] - yr[i]) <= 16.0 * FLT_EPSILON * sqrt(cols + 1.0) * sumabs,
				 "kn_matmul %s %dx%d n=%d [%d][%d]: %.9g vs scalar %.9g", kn_dtype_name(dt),
				 rows, cols, n, t, r, y1[i], yr[i]);
		}
	free(wf), free(x), free(wd), free(y1), free(y2), free(yr), free(wx);
}

/* Two products in one region of 2 and 3 threads, no barrier between them (kn_team_*): the
 * bits of the table's kernel over all rows on one thread, in both precisions. In fast mode
 * with n * cols large, the team rounds the activations together (tables with
 * matmul_fast_xb: scalar and avx512bf16). */
static void test_team_matmul(int rows, int cols, int n)
{
	const struct kn_ops *ops = kn_ops();
	float *wf = kt_rand_vec((size_t)rows * cols, 1.0f), *x = kt_rand_vec((size_t)n * cols, 1.0f);
	float *wf2 = kt_rand_vec((size_t)cols * 40, 1.0f);
	uint16_t *wd = malloc((size_t)rows * cols * 2), *wd2 = malloc((size_t)cols * 40 * 2);
	kn_from_f32(wd, KN_DTYPE_BF16, wf, (size_t)rows * cols);
	kn_from_f32(wd2, KN_DTYPE_BF16, wf2, (size_t)cols * 40);
	struct kn_mat w = { .data = wd, .dtype = KN_DTYPE_BF16, .rows = rows, .cols = cols };
	struct kn_mat w2 = { .data = wd2, .dtype = KN_DTYPE_BF16, .rows = 40, .cols = cols };
	size_t ny = (size_t)n * rows, ny2 = (size_t)n * 40;
	float *ref = kt_alloc(ny), *ref2 = kt_alloc(ny2), *y = kt_alloc(ny), *y2 = kt_alloc(ny2);

	for (int p = KN_PRECISION_EXACT; p <= KN_PRECISION_FAST; p++) {
		enum kn_precision prec = (enum kn_precision)p;
		bool fast = prec == KN_PRECISION_FAST && ops->matmul_fast;
		(fast ? ops->matmul_fast : ops->matmul)(ref, x, &w, n, 0, rows);
		(fast ? ops->matmul_fast : ops->matmul)(ref2, x, &w2, n, 0, 40);
		kn_team_matmul(y, x, &w, n, prec); /* outside a region: all rows */
		KT_CHECK(memcmp(y, ref, ny * sizeof(float)) == 0,
			 "team matmul %s %dx%d n=%d outside a region differs",
			 kn_precision_name(prec), rows, cols, n);
		for (int nt = 2; nt <= 3; nt++) {
			memset(y, 0, ny * sizeof(float));
			memset(y2, 0, ny2 * sizeof(float));
#pragma omp parallel num_threads(nt)
			{
				kn_team_matmul(y, x, &w, n, prec);
				kn_team_matmul(y2, x, &w2, n, prec);
			}
			KT_CHECK(memcmp(y, ref, ny * sizeof(float)) == 0 &&
					 memcmp(y2, ref2, ny2 * sizeof(float)) == 0,
				 "team matmul %s %dx%d n=%d, %d threads: differs from one thread",
				 kn_precision_name(prec), rows, cols, n, nt);
		}
	}
	free(wf), free(x), free(wf2), free(wd), free(wd2), free(ref), free(ref2), free(y), free(y2);
}

/* kn_regions() counts a threaded product's region, and none for a product that runs on the
 * calling thread inside someone else's region. */
static void test_regions(void)
{
	float *wf = kt_rand_vec(256 * 256, 1.0f), *x = kt_rand_vec(4 * 256, 1.0f), *y = kt_alloc(4 * 256);
	struct kn_mat w = { .data = wf, .dtype = KN_DTYPE_F32, .rows = 256, .cols = 256 };
	uint64_t r0;

	kn_set_threads(2);
	r0 = kn_regions();
	kn_matmul(y, x, &w, 4);
	KT_CHECK(kn_regions() == r0 + 1, "a 2-thread product counted %" PRIu64 " regions",
		 kn_regions() - r0);
#pragma omp parallel num_threads(2)
	{
#pragma omp single
		r0 = kn_regions();
#pragma omp single
		kn_matmul(y, x, &w, 4);
	}
	KT_CHECK(kn_regions() == r0, "a nested product counted %" PRIu64 " regions", kn_regions() - r0);
	KT_CHECK(kn_team_threads(0) == 1 && kn_team_threads(1 << 20) == 2,
		 "kn_team_threads: %d for nothing, %d for 2^20 with 2 threads", kn_team_threads(0),
		 kn_team_threads(1 << 20));
	kn_set_min_parallel_work(0);
	KT_CHECK(kn_team_threads(0) == 2, "kn_team_threads(0) = %d with no minimum", kn_team_threads(0));
	kn_set_min_parallel_work(32768);
	free(wf), free(x), free(y);
}

static void test_rows_ops(void)
{
	int n = 5, dim = 77;
	float *x = kt_rand_vec((size_t)n * dim, 2.0f), *g = kt_rand_vec(dim, 1.0f);
	float *y = kt_alloc((size_t)n * dim), *yr = kt_alloc((size_t)n * dim);
	const struct kn_ops *sc = kn_ops_get("scalar");
	kn_rmsnorm(y, x, g, n, dim, 1e-5f);
	for (int t = 0; t < n; t++)
		sc->rmsnorm(yr + (size_t)t * dim, x + (size_t)t * dim, g, dim, 1e-5f);
	for (int i = 0; i < n * dim; i++)
		KT_CHECK(fabsf(y[i] - yr[i]) <= 1e-5f * fabsf(yr[i]), "kn_rmsnorm [%d]: %.9g vs %.9g", i,
			 y[i], yr[i]);
	kn_swiglu(y, x, g, dim);
	sc->swiglu(yr, x, g, dim);
	for (int i = 0; i < dim; i++)
		KT_CHECK(fabsf(y[i] - yr[i]) <= 8 * FLT_EPSILON * fabsf(yr[i]), "kn_swiglu [%d]: %.9g vs %.9g",
			 i, y[i], yr[i]);
	free(x), free(g), free(y), free(yr);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--isa") == 0)
		setenv("FERRY_ISA", argv[2], 1);
	kt_seed("test_kn_entry");
	const char *want = getenv("FERRY_ISA");
	if (want && *want && !kn_ops_get(want)) {
		printf("SKIP: table %s is not available on this CPU\n", want);
		return 77;
	}
	kn_init();
	printf("active table %s\n", kn_ops()->name);
	if (want && *want)
		KT_CHECK(strcmp(kn_ops()->name, want) == 0, "FERRY_ISA=%s gave %s", want, kn_ops()->name);

	test_rope(3, 2, 2, 10000.0f);
	test_rope(4, 3, 64, 10000.0f);
	test_rope(2, 5, 128, 1000000.0f);
	test_rope(1, 1, 18, 500.0f);
	test_rope(2, 1, 1024, 10000.0f); /* past kn_rope's frequency table: computed per use */

	test_attention(1, 4, 2, 16, 40);
	test_attention(3, 4, 2, 7, 33);
	test_attention(5, 8, 8, 64, 70);
	test_attention(2, 6, 1, 128, 300);
	test_attention(9, 4, 4, 32, 50);  /* two whole runs of rows and one of a single row */
	test_attention(7, 2, 1, 18, 30);  /* head_dim past the vector width */

	test_gate();

	static const int shapes[][3] = {
		{ 300, 515, 1 }, { 257, 1030, 3 }, { 130, 700, 37 }, { 1000, 64, 2 }, { 64, 2048, 1 },
		{ 45, 256, 7 },  { 512, 33, 16 },
	};
	for (int dt = KN_DTYPE_F32; dt <= KN_DTYPE_F16; dt++)
		for (size_t s = 0; s < FR_ARRAY_SIZE(shapes); s++)
			test_matmul_threads((enum kn_dtype)dt, shapes[s][0], shapes[s][1], shapes[s][2]);
	test_rows_ops();
	test_team_matmul(300, 515, 1);
	test_team_matmul(257, 1030, 37); /* 37 x 1056 bf16 > 64 KiB: the shared rounding */
	test_team_matmul(33, 64, 5);     /* fewer 16-row blocks than threads */
	test_regions();
	return kt_finish("test_kn_entry");
}
