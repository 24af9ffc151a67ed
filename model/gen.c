/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gen.c - the synthetic checkpoint generator (model_gen): a tool for ferryctl and tests,
 * built as its own library (ferry-model-gen) so the daemons do not link it. The presets it
 * generates are in presets.c.
 *
 * Weights. Element i of tensor T is a pure function of (seed, T's name, i): a counter-based
 * splitmix64 stream keyed by a hash of the name gives one 64-bit draw per Box-Muller pair
 * (elements 2j, 2j+1), computed in f32 with our own log/sincos (see gen_pairs: the same
 * bits on every compiler and ISA; tails cut at 5.77 sigma), then scaled. BF16 files hold the
 * round-to-nearest-even of those f32 values, so a BF16 and an F32 checkpoint of one seed are
 * twins, and sharding or generation order never changes a value. Scales keep activations
 * O(1) at every size: projections std 1/sqrt(fan_in); o_proj, dense and shared down_proj
 * 0.5/sqrt(fan_in) (they add to the residual every layer); routed down_proj 1/sqrt(fan_in)
 * (their outputs are weighted by routing probabilities well below 1); router 2/sqrt(hidden)
 * so routing is not flat; embeddings std 1; lm_head 1/sqrt(hidden) (logits std ~1, max a few);
 * norm weights 1 + 0.1 N(0,1). With a skew (model_gen_opts.skew > 0) the embeddings and
 * routers get a deterministic component on top, added in f32 before rounding (see the skew
 * section below).
 *
 * Files are streamed: all headers are computed from the config first, then each tensor is
 * generated in blocks of GEN_BLOCK elements and written, so memory is the tensor table (about
 * 150 bytes a tensor) plus one block, whatever the model size.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"

/* Values must not depend on the compiler fusing a*b+c (clang contracts by default). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; gen.c writes host floats as they are"
#endif

#define GEN_BLOCK (1u << 20)     /* elements generated and written per write() */
#define GEN_MAX_SHARDS 256
#define GEN_NAME_MAX 96

/* ---- the tensor table --------------------------------------------------------------------- */

enum gen_init {
	GEN_INIT_NORMAL = 0,  /* std * N(0,1) */
	GEN_INIT_NORM,        /* 1 + 0.1 N(0,1) */
};

/* What --skew adds to a tensor (gen_rows_skew). */
enum gen_skew {
	GEN_SKEW_NONE = 0,
	GEN_SKEW_EMBED,       /* model.embed_tokens: the half's shared direction */
	GEN_SKEW_GATE,        /* a router: popularity components along both directions */
};

struct gen_tensor {
	char name[GEN_NAME_MAX];
	int ndim;
	int64_t shape[2];
	enum gen_init init;
	enum gen_skew skew;
	double std;
	uint64_t numel;
	uint64_t offset;            /* within its shard's data section */
	int shard;
};

struct gen_table {
	struct gen_tensor *t;
	size_t n, cap;
	int rc;                     /* sticky -ENOMEM */
};

static void table_add(struct gen_table *tb, enum gen_init init, double std, int64_t rows,
		      int64_t cols, const char *fmt, ...) FR_PRINTF(6, 7);

static void table_add(struct gen_table *tb, enum gen_init init, double std, int64_t rows,
		      int64_t cols, const char *fmt, ...)
{
	struct gen_tensor *t;
	va_list ap;

	if (tb->rc)
		return;
	if (tb->n == tb->cap) {
		size_t cap = tb->cap ? tb->cap * 2 : 256;
		void *p = realloc(tb->t, cap * sizeof(*tb->t));
		if (!p) {
			tb->rc = -ENOMEM;
			return;
		}
		tb->t = p;
		tb->cap = cap;
	}
	t = &tb->t[tb->n++];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	t->init = init;
	t->std = std;
	t->ndim = cols ? 2 : 1;
	t->shape[0] = rows;
	t->shape[1] = cols;
	t->numel = (uint64_t)rows * (uint64_t)(cols ? cols : 1);
}

static void table_ffn(struct gen_table *tb, const char *prefix, int64_t h, int64_t width,
		      double down_gain)
{
	const double s_in = 1.0 / sqrt((double)h), s_down = down_gain / sqrt((double)width);

	table_add(tb, GEN_INIT_NORMAL, s_in, width, h, "%s.gate_proj.weight", prefix);
	table_add(tb, GEN_INIT_NORMAL, s_in, width, h, "%s.up_proj.weight", prefix);
	table_add(tb, GEN_INIT_NORMAL, s_down, h, width, "%s.down_proj.weight", prefix);
}

/* Every tensor in HF DeepseekForCausalLM order (the order of golden tiny-a's header). */
static int table_build(const struct model_config *cfg, struct gen_table *tb)
{
	const int64_t h = cfg->hidden_size, hd = cfg->head_dim;
	const int64_t q = (int64_t)cfg->num_attention_heads * hd;
	const int64_t kv = (int64_t)cfg->num_key_value_heads * hd;
	const double s_h = 1.0 / sqrt((double)h);
	char prefix[GEN_NAME_MAX];

	memset(tb, 0, sizeof(*tb));
	table_add(tb, GEN_INIT_NORMAL, 1.0, cfg->vocab_size, h, "model.embed_tokens.weight");
	if (!tb->rc)
		tb->t[tb->n - 1].skew = GEN_SKEW_EMBED;
	for (int l = 0; l < cfg->num_hidden_layers; l++) {
		table_add(tb, GEN_INIT_NORM, 0, h, 0, "model.layers.%d.input_layernorm.weight", l);
		table_add(tb, GEN_INIT_NORMAL, s_h, q, h, "model.layers.%d.self_attn.q_proj.weight", l);
		table_add(tb, GEN_INIT_NORMAL, s_h, kv, h, "model.layers.%d.self_attn.k_proj.weight", l);
		table_add(tb, GEN_INIT_NORMAL, s_h, kv, h, "model.layers.%d.self_attn.v_proj.weight", l);
		table_add(tb, GEN_INIT_NORMAL, 0.5 / sqrt((double)q), h, q,
			  "model.layers.%d.self_attn.o_proj.weight", l);
		table_add(tb, GEN_INIT_NORM, 0, h, 0,
			  "model.layers.%d.post_attention_layernorm.weight", l);
		if (!model_layer_is_moe(cfg, l)) {
			snprintf(prefix, sizeof(prefix), "model.layers.%d.mlp", l);
			table_ffn(tb, prefix, h, cfg->intermediate_size, 0.5);
			continue;
		}
		table_add(tb, GEN_INIT_NORMAL, 2.0 * s_h, cfg->n_routed_experts, h,
			  "model.layers.%d.mlp.gate.weight", l);
		if (!tb->rc)
			tb->t[tb->n - 1].skew = GEN_SKEW_GATE;
		for (int e = 0; e < cfg->n_routed_experts; e++) {
			snprintf(prefix, sizeof(prefix), "model.layers.%d.mlp.experts.%d", l, e);
			table_ffn(tb, prefix, h, cfg->moe_intermediate_size, 1.0);
		}
		if (cfg->n_shared_experts > 0) {
			snprintf(prefix, sizeof(prefix), "model.layers.%d.mlp.shared_experts", l);
			table_ffn(tb, prefix, h,
				  (int64_t)cfg->moe_intermediate_size * cfg->n_shared_experts, 0.5);
		}
	}
	table_add(tb, GEN_INIT_NORM, 0, h, 0, "model.norm.weight");
	if (!cfg->tie_word_embeddings)
		table_add(tb, GEN_INIT_NORMAL, s_h, cfg->vocab_size, h, "lm_head.weight");
	if (tb->rc) {
		free(tb->t);
		memset(tb, 0, sizeof(*tb));
		return -ENOMEM;
	}
	return 0;
}

/* ---- values --------------------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

#define GEN_GOLDEN 0x9E3779B97F4A7C15ull

static uint64_t tensor_key(uint64_t seed, const char *name)
{
	return mix64(fr_fnv1a64(name, strlen(name)) ^ mix64(seed + GEN_GOLDEN));
}

/*
 * Box-Muller in float with our own log and sincos: only +, -, *, /, sqrt (IEEE, no
 * contraction, no libm), so values are the same on every compiler, libm and ISA, and the
 * inner loop vectorizes (each SIMD lane computes exactly what the scalar code would).
 * One 64-bit draw per pair j: its top 24 bits give u1 in (0, 1] (so |values| <= 5.77 sigma),
 * the next 24 the angle. Polynomial errors (~1e-9) are below the f32 rounding.
 */
#define GEN_SUB 1024 /* pairs per inner block (stack arrays) */

union gen_fbits {
	float f;
	int32_t i;
};

/* v0[j], v1[j] = the pair (pair0 + j), j < cnt, already scaled. */
static void gen_pairs(uint64_t key, uint64_t pair0, int cnt, float scale, float bias,
		      float *restrict v0, float *restrict v1)
{
	int32_t k1[GEN_SUB], k2[GEN_SUB];
	float r2[GEN_SUB];

	for (int j = 0; j < cnt; j++) {
		uint64_t r = mix64(key + (pair0 + (uint64_t)j + 1) * GEN_GOLDEN);
		k1[j] = (int32_t)(r >> 40);
		k2[j] = (int32_t)((r >> 16) & 0xffffff);
	}
#pragma omp simd
	for (int j = 0; j < cnt; j++) {
		/* ln(u), u = m 2^e with m in [sqrt(1/2), sqrt(2)): ln m = 2 atanh(s). */
		union gen_fbits u = { .f = (float)(k1[j] + 1) * 0x1p-24f }, mb;
		int32_t mant = u.i & 0x7fffff;
		int32_t up = mant > 0x3504f3; /* 1.mant > sqrt(2): use m / 2, e + 1 */
		int32_t e = ((u.i >> 23) & 0xff) - 127 + up;
		mb.i = mant | ((127 - up) << 23);
		float m = mb.f;
		float sa = (m - 1.0f) / (m + 1.0f); /* |s| <= 0.1716 */
		float za = sa * sa;
		float p = 1.0f / 9;
		p = 1.0f / 7 + za * p;
		p = 1.0f / 5 + za * p;
		p = 1.0f / 3 + za * p;
		p = 1.0f + za * p;
		float lnu = (float)e * 0.69314718f + 2.0f * sa * p;
		r2[j] = -2.0f * lnu;
	}
	/* Its own loop: sqrtf's errno path (never taken, r2 >= 0) keeps GCC from vectorizing
	 * a loop that contains it. */
	for (int j = 0; j < cnt; j++)
		r2[j] = sqrtf(r2[j]);
#pragma omp simd
	for (int j = 0; j < cnt; j++) {
		float rad = r2[j];
		/* A uniform angle: quadrant q (2 bits) plus x in [-pi/4, pi/4); any uniform angle
		 * serves, and this one needs no range reduction. */
		int32_t q = k2[j] >> 22;
		float x = ((float)(k2[j] & 0x3fffff) * 0x1p-22f - 0.5f) * 1.57079633f;
		float z = x * x;
		float sn = 1.0f / 362880;
		sn = -1.0f / 5040 + z * sn;
		sn = 1.0f / 120 + z * sn;
		sn = -1.0f / 6 + z * sn;
		sn = x + x * z * sn;
		float cs = -1.0f / 3628800;
		cs = 1.0f / 40320 + z * cs;
		cs = -1.0f / 720 + z * cs;
		cs = 1.0f / 24 + z * cs;
		cs = -0.5f + z * cs;
		cs = 1.0f + z * cs;
		/* Turn by q quarters: (s, c) -> 1: (c, -s), 2: (-s, -c), 3: (-c, s). */
		int32_t swap = -(q & 1);
		union gen_fbits bs = { .f = sn }, bc = { .f = cs }, ra, rb;
		ra.i = (bs.i & ~swap) | (bc.i & swap);
		rb.i = (bc.i & ~swap) | (bs.i & swap);
		ra.i ^= (int32_t)((uint32_t)(q & 2) << 30);
		rb.i ^= (int32_t)((uint32_t)((q + 1) & 2) << 30);
		v0[j] = bias + scale * (rad * rb.f);
		v1[j] = bias + scale * (rad * ra.f);
	}
}

/* Round-to-nearest-even, as kn_f32_to_bf16 (generated values are never NaN). */
static inline uint16_t gen_bf16(float f)
{
	union gen_fbits v = { .f = f };
	uint32_t u = (uint32_t)v.i;
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Elements [start, start + n) of t (start even) into out, as dtype (F32 or BF16). */
static void gen_block(const struct gen_tensor *t, uint64_t key, uint64_t start, size_t n,
		      enum kn_dtype dtype, int threads, void *out)
{
	const float scale = t->init == GEN_INIT_NORM ? 0.1f : (float)t->std;
	const float bias = t->init == GEN_INIT_NORM ? 1.0f : 0.0f;
	const size_t npairs = (n + 1) / 2;
	const int64_t nsub = (int64_t)FR_DIV_ROUND_UP(npairs, (size_t)GEN_SUB);

#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1 && nsub >= 8)
	for (int64_t b = 0; b < nsub; b++) {
		float v0[GEN_SUB], v1[GEN_SUB];
		size_t j0 = (size_t)b * GEN_SUB;
		int cnt = (int)FR_MIN((size_t)GEN_SUB, npairs - j0);
		size_t i0 = 2 * j0, full = (size_t)cnt - (i0 + 2 * (size_t)cnt > n);

		gen_pairs(key, start / 2 + j0, cnt, scale, bias, v0, v1);
		if (dtype == KN_DTYPE_F32) {
			float *o = (float *)out + i0;
			for (size_t j = 0; j < full; j++) {
				o[2 * j] = v0[j];
				o[2 * j + 1] = v1[j];
			}
			if (full < (size_t)cnt)
				o[2 * full] = v0[full];
		} else {
			uint16_t *o = (uint16_t *)out + i0;
			for (size_t j = 0; j < full; j++) {
				o[2 * j] = gen_bf16(v0[j]);
				o[2 * j + 1] = gen_bf16(v1[j]);
			}
			if (full < (size_t)cnt)
				o[2 * full] = gen_bf16(v0[full]);
		}
	}
}

/* ---- skew (model_gen_opts.skew) ------------------------------------------------------------ */

/*
 * Directions: d_A is sign(i) on even coordinates i and 0 on odd ones, d_B the same on odd
 * ones, so d_A . d_B = 0 exactly and |d_A|^2 = |d_B|^2 = hidden / 2. Embedding rows of tokens
 * below vocab/2 get GEN_SKEW_EMBED_GAIN d_A added, the others GEN_SKEW_EMBED_GAIN d_B; the
 * residual stream and RMSNorm keep that shared component (a fixed share of every row's
 * norm), so a router input u has u . d_X ~ gain (hidden / 2) / rms(h) for tokens of half X.
 * Router row e: its random part minus its projections on d_A and d_B (else they would meet
 * the embeddings' shared component as a random per-expert bias common to all of a half's
 * tokens, as large as the intended one), plus c_A(e) d_A + c_B(e) d_B with
 * c_X(e) = GEN_SKEW_KAPPA skew (m - ln rank_X(e)) / (hidden / 2), m the mean of ln r over
 * r = 1..n. The logit bias is then beta skew ln(1/rank) + const, beta ~ the Gumbel scale of
 * the router's own token-to-token noise, which KAPPA matches (measured through the engine
 * by tests/model/test_gen_skew.c). rank_A is a permutation drawn from the gate's key (every
 * layer has its own hot set), rank_B the same rotated by n/2 (gen_skew_ranks). All arithmetic is IEEE +, -, *, / and
 * frexp (no libm), in a fixed order: values stay a pure function of (seed, name, index,
 * skew) on every compiler.
 */
#define GEN_SKEW_EMBED_GAIN 1.5f
#define GEN_SKEW_KAPPA 1.0

/* ln x for x > 0: frexp (exact), then 2 atanh(s) as a series. */
static double gen_ln(double x)
{
	int e;
	double m = frexp(x, &e); /* x = m 2^e, m in [1/2, 1) */

	if (m < 0.70710678118654752) {
		m *= 2;
		e--;
	}
	double s = (m - 1) / (m + 1), z = s * s, p = 0; /* |s| <= 0.1716 */
	for (int j = 23; j >= 1; j -= 2)
		p = 1.0 / j + z * p;
	return (double)e * 0.69314718055994531 + 2 * s * p;
}

/* +1 or -1: the sign of coordinate i in both directions. */
static float gen_skew_sign(uint64_t key, uint64_t i)
{
	return mix64(key + (i + 1) * GEN_GOLDEN) >> 63 ? -1.0f : 1.0f;
}

/* rank[e] in 1..n: expert e's place in order `half` (0: A, 1: B) of the router whose
 * tensor key is key. Order A is a Fisher-Yates shuffle; order B is A rotated by n/2, so
 * the hotter half of either order is the colder half of the other: moving a load from
 * one vocabulary half to the other moves it onto other experts. perm: scratch of n. */
static void gen_skew_ranks(uint64_t key, int half, int n, int *perm, int *rank)
{
	const uint64_t k = mix64(key ^ 0xA5A5A5A5ull);

	for (int i = 0; i < n; i++)
		perm[i] = i;
	for (int i = n - 1; i > 0; i--) {
		int j = (int)(mix64(k + (uint64_t)i * GEN_GOLDEN) % (uint64_t)(i + 1));
		int tmp = perm[i];
		perm[i] = perm[j];
		perm[j] = tmp;
	}
	for (int i = 0; i < n; i++)
		rank[perm[i]] = (i + (half ? n / 2 : 0)) % n + 1;
}

struct gen_skew_state {
	int hidden, split;          /* row length; first token of half B */
	float *sign;                /* [hidden] +-1 */
	double *coef;               /* gate: [rows][2] c_A(e), c_B(e) */
};

static void gen_skew_fini(struct gen_skew_state *st)
{
	free(st->sign);
	free(st->coef);
}

static int gen_skew_init(const struct gen_tensor *t, const struct model_config *cfg,
			 uint64_t seed, uint64_t key, double skew, struct gen_skew_state *st)
{
	const int h = (int)t->shape[1], n = (int)t->shape[0];
	const uint64_t sign_key = tensor_key(seed, "ferry.skew.direction");
	int *perm = NULL, *rank = NULL;
	double m = 0;

	memset(st, 0, sizeof(*st));
	st->hidden = h;
	st->split = cfg->vocab_size / 2;
	st->sign = malloc((size_t)h * sizeof(*st->sign));
	if (!st->sign)
		return -ENOMEM;
	for (int i = 0; i < h; i++)
		st->sign[i] = gen_skew_sign(sign_key, (uint64_t)i);
	if (t->skew != GEN_SKEW_GATE)
		return 0;
	st->coef = malloc((size_t)n * 2 * sizeof(*st->coef));
	perm = malloc((size_t)n * sizeof(*perm));
	rank = malloc((size_t)n * sizeof(*rank));
	if (!st->coef || !perm || !rank) {
		free(perm);
		free(rank);
		gen_skew_fini(st);
		return -ENOMEM;
	}
	for (int r = 1; r <= n; r++)
		m += gen_ln(r);
	m /= n;
	for (int half = 0; half < 2; half++) {
		gen_skew_ranks(key, half, n, perm, rank);
		for (int e = 0; e < n; e++)
			st->coef[2 * e + half] = GEN_SKEW_KAPPA * skew * (m - gen_ln(rank[e])) /
						 (h / 2);
	}
	free(perm);
	free(rank);
	return 0;
}

/* Adds the skew to rows [row0, row0 + nrows) of t, f32 values in place. */
static void gen_skew_rows(const struct gen_tensor *t, const struct gen_skew_state *st,
			  int64_t row0, int64_t nrows, float *v)
{
	const int h = st->hidden;

	for (int64_t r = 0; r < nrows; r++) {
		float *row = v + (size_t)r * (size_t)h;
		int64_t idx = row0 + r;

		if (t->skew == GEN_SKEW_EMBED) {
			for (int i = idx >= st->split; i < h; i += 2)
				row[i] = row[i] + st->sign[i] * GEN_SKEW_EMBED_GAIN;
			continue;
		}
		double p[2] = { 0, 0 };
		for (int i = 0; i < h; i++)
			p[i & 1] += (double)row[i] * st->sign[i];
		for (int i = 0; i < h; i++) {
			double c = st->coef[2 * idx + (i & 1)] - p[i & 1] / (h / 2);
			row[i] = (float)((double)row[i] + c * st->sign[i]);
		}
	}
}

double model_gen_skew_load(double skew, int n, int k)
{
	enum { TRIALS = 20000 };
	double lw[MODEL_MAX_EXPERTS], key[MODEL_MAX_EXPERTS];
	uint64_t rng = 0x5eedull, hits = 0;

	if (!(skew > 0) || n <= 0 || k <= 0 || k >= n || n > MODEL_MAX_EXPERTS)
		return 1.0;
	for (int r = 0; r < n; r++)
		lw[r] = -skew * log(r + 1.0);
	for (int t = 0; t < TRIALS; t++) {
		for (int r = 0; r < n; r++) {
			double u = ((double)(mix64(rng += GEN_GOLDEN) >> 11) + 0.5) * 0x1p-53;
			key[r] = lw[r] - log(-log(u));
		}
		/* Rank 1 is the most loaded expert: is it among this token's k picks? */
		int above = 0;
		for (int r = 1; r < n; r++)
			above += key[r] > key[0];
		hits += above < k;
	}
	return (double)n * (double)hits / TRIALS / k;
}

/* ---- writing ---------------------------------------------------------------------------------- */

struct gen_shard {
	char name[64];              /* model.safetensors or model-0000k-of-0000N.safetensors */
	size_t first, count;        /* tensor index range */
	uint64_t data_bytes;
	char *header;               /* padded JSON, header_len bytes; owned */
	size_t header_len;
};

struct gen_ctx {
	const struct model_gen_opts *o;
	const struct model_config *cfg;
	const char *dir;
	struct fr_error *err;
	struct gen_table tb;
	struct gen_shard *shards;
	int n_shards;
	size_t esize;
	uint64_t done, total;
	void *buf;                  /* [GEN_BLOCK] of the output dtype */
	float *f32;                 /* [GEN_BLOCK] f32, with a skew in bf16 (else NULL) */
};

struct strbuf {
	char *p;
	size_t len, cap;
	int rc;
};

static void sb_printf(struct strbuf *sb, const char *fmt, ...) FR_PRINTF(2, 3);

static void sb_printf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (sb->rc)
		return;
	for (;;) {
		size_t room = sb->cap - sb->len;
		va_start(ap, fmt);
		n = vsnprintf(sb->p ? sb->p + sb->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			sb->rc = -EINVAL;
			return;
		}
		if ((size_t)n < room) {
			sb->len += (size_t)n;
			return;
		}
		size_t cap = FR_MAX(sb->cap * 2, sb->len + (size_t)n + 4096);
		char *p = realloc(sb->p, cap);
		if (!p) {
			sb->rc = -ENOMEM;
			return;
		}
		sb->p = p;
		sb->cap = cap;
	}
}

/* Compact JSON like golden tiny-a's: __metadata__ first, tensors in model order, padded with
 * spaces to a multiple of 8. */
static int shard_header(struct gen_ctx *g, struct gen_shard *s)
{
	const char *dt = kn_dtype_name(g->o->dtype);
	struct strbuf sb = { 0 };

	sb_printf(&sb, "{\"__metadata__\":{\"format\":\"pt\"}");
	for (size_t i = s->first; i < s->first + s->count; i++) {
		const struct gen_tensor *t = &g->tb.t[i];
		uint64_t end = t->offset + t->numel * g->esize;
		sb_printf(&sb, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%" PRId64, t->name, dt,
			  t->shape[0]);
		if (t->ndim == 2)
			sb_printf(&sb, ",%" PRId64, t->shape[1]);
		sb_printf(&sb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset, end);
	}
	sb_printf(&sb, "}");
	while (!sb.rc && sb.len % 8)
		sb_printf(&sb, " ");
	if (sb.rc) {
		free(sb.p);
		return fr_error_set(g->err, sb.rc, "%s: out of memory building the header", s->name);
	}
	s->header = sb.p;
	s->header_len = sb.len;
	return 0;
}

/* Tensors go to shards in model order; a tensor belongs to the shard its byte midpoint falls
 * in (how golden tiny-b was split), so shards have roughly equal bytes. */
static int plan_shards(struct gen_ctx *g)
{
	const int n = g->n_shards;
	uint64_t total = 0, cum = 0;
	int rc;

	for (size_t i = 0; i < g->tb.n; i++)
		total += g->tb.t[i].numel * g->esize;
	g->shards = calloc((size_t)n, sizeof(*g->shards));
	if (!g->shards)
		return fr_error_set(g->err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < g->tb.n; i++) {
		struct gen_tensor *t = &g->tb.t[i];
		uint64_t bytes = t->numel * g->esize;
		/* 128-bit: cum * n can pass 2^64 for 145b-sized models */
		unsigned __int128 mid2 = (unsigned __int128)(2 * cum + bytes) * (unsigned)n;
		int k = (int)(mid2 / ((unsigned __int128)2 * total));
		t->shard = FR_MIN(k, n - 1);
		cum += bytes;
	}
	for (size_t i = 0; i < g->tb.n; i++) {
		struct gen_tensor *t = &g->tb.t[i];
		struct gen_shard *s = &g->shards[t->shard];
		if (s->count == 0)
			s->first = i;
		s->count++;
		t->offset = s->data_bytes;
		s->data_bytes += t->numel * g->esize;
	}
	for (int k = 0; k < n; k++) {
		struct gen_shard *s = &g->shards[k];
		if (s->count == 0)
			return fr_error_set(g->err, -EINVAL,
					    "--shards %d: too many shards for %zu tensors (shard %d "
					    "would be empty)", n, g->tb.n, k + 1);
		if (n == 1)
			snprintf(s->name, sizeof(s->name), "model.safetensors");
		else
			snprintf(s->name, sizeof(s->name), "model-%05d-of-%05d.safetensors", k + 1,
				 n);
		if ((rc = shard_header(g, s)) < 0)
			return rc;
		g->total += 8 + s->header_len + s->data_bytes;
	}
	return 0;
}

static int write_all(int fd, const void *buf, size_t len, const char *path, struct fr_error *err)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t w = write(fd, p, FR_MIN(len, (size_t)1 << 30));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return fr_error_set(err, -errno, "%s: write: %s", path, strerror(errno));
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static void progress(struct gen_ctx *g, uint64_t bytes)
{
	g->done += bytes;
	if (g->o->progress)
		g->o->progress(g->done, g->total, g->o->progress_ctx);
}

/* A tensor with a skew: whole rows at a time, generated in f32, skewed, then converted. */
static int write_tensor_skew(struct gen_ctx *g, int fd, const char *path,
			     const struct gen_tensor *t, uint64_t key)
{
	const int64_t h = t->shape[1], rows = t->shape[0];
	const int64_t per_block = (int64_t)GEN_BLOCK / h; /* >= 2: checked in model_gen() */
	const int threads = FR_MAX(g->o->threads, 1);
	float *f32 = g->f32 ? g->f32 : g->buf;
	struct gen_skew_state st;
	int rc;

	if (gen_skew_init(t, g->cfg, g->o->seed, key, g->o->skew, &st) < 0)
		return fr_error_set(g->err, -ENOMEM, "%s: out of memory", t->name);
	for (int64_t r0 = 0; r0 < rows; r0 += per_block) {
		int64_t nr = FR_MIN(per_block, rows - r0);
		size_t n = (size_t)(nr * h);

		/* Row starts are even (hidden is), as gen_block needs. */
		gen_block(t, key, (uint64_t)(r0 * h), n, KN_DTYPE_F32, threads, f32);
		gen_skew_rows(t, &st, r0, nr, f32);
		if (g->o->dtype == KN_DTYPE_BF16) {
			uint16_t *o = g->buf;
			for (size_t i = 0; i < n; i++)
				o[i] = gen_bf16(f32[i]);
		}
		if ((rc = write_all(fd, g->buf, n * g->esize, path, g->err)) < 0)
			goto out;
		progress(g, n * g->esize);
	}
	rc = 0;
out:
	gen_skew_fini(&st);
	return rc;
}

static int write_tensor(struct gen_ctx *g, int fd, const char *path, const struct gen_tensor *t)
{
	const uint64_t key = tensor_key(g->o->seed, t->name);
	int rc;

	if (t->skew != GEN_SKEW_NONE && g->o->skew > 0)
		return write_tensor_skew(g, fd, path, t, key);
	for (uint64_t start = 0; start < t->numel; start += GEN_BLOCK) {
		size_t n = (size_t)FR_MIN((uint64_t)GEN_BLOCK, t->numel - start);

		gen_block(t, key, start, n, g->o->dtype, FR_MAX(g->o->threads, 1), g->buf);
		if ((rc = write_all(fd, g->buf, n * g->esize, path, g->err)) < 0)
			return rc;
		progress(g, n * g->esize);
	}
	return 0;
}

static int path_join(char *buf, size_t size, const char *dir, const char *prefix,
		     const char *name, const char *suffix, struct fr_error *err)
{
	if (snprintf(buf, size, "%s/%s%s%s", dir, prefix, name, suffix) >= (int)size)
		return fr_error_set(err, -ENAMETOOLONG, "%s/%s: path too long", dir, name);
	return 0;
}

/* Writes one shard under ".NAME.tmp"; the caller renames it. */
static int write_shard(struct gen_ctx *g, const struct gen_shard *s, const char *tmp)
{
	uint8_t len8[8];
	int fd, rc;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return fr_error_set(g->err, -errno, "%s: %s", tmp, strerror(errno));
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((uint64_t)s->header_len >> (8 * i));
	if ((rc = write_all(fd, len8, 8, tmp, g->err)) < 0 ||
	    (rc = write_all(fd, s->header, s->header_len, tmp, g->err)) < 0)
		goto out;
	progress(g, 8 + s->header_len);
	for (size_t i = s->first; i < s->first + s->count; i++)
		if ((rc = write_tensor(g, fd, tmp, &g->tb.t[i])) < 0)
			goto out;
out:
	if (close(fd) < 0 && rc == 0)
		rc = fr_error_set(g->err, -errno, "%s: close: %s", tmp, strerror(errno));
	return rc;
}

/* text and a newline to path, through tmp. */
static int write_text(const char *text, const char *path, const char *tmp, struct fr_error *err)
{
	FILE *f = fopen(tmp, "we");

	if (!f)
		return fr_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
	if (fputs(text, f) < 0 || fputc('\n', f) < 0) {
		int rc = fr_error_set(err, -errno, "%s: write: %s", tmp, strerror(errno));
		fclose(f);
		unlink(tmp);
		return rc;
	}
	if (fclose(f) != 0) {
		int rc = fr_error_set(err, -errno, "%s: close: %s", tmp, strerror(errno));
		unlink(tmp);
		return rc;
	}
	if (rename(tmp, path) < 0) {
		int rc = fr_error_set(err, -errno, "%s: rename: %s", tmp, strerror(errno));
		unlink(tmp);
		return rc;
	}
	return 0;
}

/* model.safetensors.index.json as transformers writes it (indent 2, sorted keys). */
static int write_index(struct gen_ctx *g, const char *path, const char *tmp)
{
	json_t *root = json_object(), *meta = json_object(), *map = json_object();
	uint64_t total = 0;
	int rc = -ENOMEM;
	char *text = NULL;

	if (!root || !meta || !map)
		goto nomem;
	for (size_t i = 0; i < g->tb.n; i++) {
		const struct gen_tensor *t = &g->tb.t[i];
		total += t->numel * g->esize;
		if (json_object_set_new(map, t->name, json_string(g->shards[t->shard].name)))
			goto nomem;
	}
	if (json_object_set_new(meta, "total_size", json_integer((json_int_t)total)))
		goto nomem;
	/* json_object_set_new takes the reference even when it fails. */
	rc = json_object_set_new(root, "metadata", meta);
	meta = NULL;
	if (rc)
		goto nomem;
	rc = json_object_set_new(root, "weight_map", map);
	map = NULL;
	if (rc)
		goto nomem;
	text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (!text)
		goto nomem;
	rc = write_text(text, path, tmp, g->err);
	goto out;
nomem:
	rc = fr_error_set(g->err, -ENOMEM, "%s: out of memory building the index", path);
out:
	free(text);
	json_decref(meta);
	json_decref(map);
	json_decref(root);
	return rc;
}

/* ferry-gen.json: what model_gen_skew_read() reads back. Removes a stale one without skew. */
static int write_manifest(struct gen_ctx *g)
{
	char path[4096], tmp[4096], *text = NULL;
	json_t *root = NULL;
	int rc;

	if ((rc = path_join(path, sizeof(path), g->dir, "", MODEL_GEN_MANIFEST, "", g->err)) < 0 ||
	    (rc = path_join(tmp, sizeof(tmp), g->dir, ".", MODEL_GEN_MANIFEST, ".tmp", g->err)) < 0)
		return rc;
	if (!(g->o->skew > 0)) {
		if (unlink(path) == 0)
			fr_info("model", "removed stale %s", path);
		return 0;
	}
	root = json_pack("{s:s, s:f, s:i}", "generator", "ferryctl model gen", "skew", g->o->skew,
			 "vocab_split", g->cfg->vocab_size / 2);
	text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
	rc = text ? write_text(text, path, tmp, g->err)
		  : fr_error_set(g->err, -ENOMEM, "%s: out of memory", path);
	free(text);
	json_decref(root);
	return rc;
}

int model_gen_skew_read(const char *dir, struct model_gen_skew_info *ret, struct fr_error *err)
{
	struct model_gen_skew_info info = { 0 };
	char path[4096];
	json_error_t jerr;
	json_t *root, *skew, *split;
	int rc;

	if ((rc = path_join(path, sizeof(path), dir, "", MODEL_GEN_MANIFEST, "", err)) < 0)
		return rc;
	if (access(path, F_OK) < 0) {
		if (errno != ENOENT)
			return fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
		*ret = info;
		return 0;
	}
	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "%s: %s (line %d)", path, jerr.text, jerr.line);
	skew = json_object_get(root, "skew");
	split = json_object_get(root, "vocab_split");
	if (!json_is_number(skew) || !(json_number_value(skew) >= 0) ||
	    isinf(json_number_value(skew))) {
		rc = fr_error_set(err, -EINVAL, "%s: \"skew\" is not a number >= 0", path);
		goto out;
	}
	if (!json_is_integer(split) || json_integer_value(split) < 0 ||
	    json_integer_value(split) > INT32_MAX) {
		rc = fr_error_set(err, -EINVAL, "%s: \"vocab_split\" is not an integer >= 0", path);
		goto out;
	}
	info.skew = json_number_value(skew);
	info.vocab_split = (int)json_integer_value(split);
	*ret = info;
	rc = 0;
out:
	json_decref(root);
	return rc;
}

/* Copies src to dir/name through dir/.name.tmp, in blocks. */
static int copy_file(const char *src, const char *dir, const char *name, struct fr_error *err)
{
	char path[4096], tmp[4096];
	char *buf = NULL;
	int in = -1, out = -1, rc;

	if ((rc = path_join(path, sizeof(path), dir, "", name, "", err)) < 0 ||
	    (rc = path_join(tmp, sizeof(tmp), dir, ".", name, ".tmp", err)) < 0)
		return rc;
	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return fr_error_set(err, -errno, "%s: %s", src, strerror(errno));
	buf = malloc(1 << 16);
	if (!buf) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0) {
		rc = fr_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	for (;;) {
		ssize_t got = read(in, buf, 1 << 16);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = fr_error_set(err, -errno, "%s: read: %s", src, strerror(errno));
			goto out_unlink;
		}
		if (got == 0)
			break;
		if ((rc = write_all(out, buf, (size_t)got, tmp, err)) < 0)
			goto out_unlink;
	}
	if (close(out) < 0) {
		out = -1;
		rc = fr_error_set(err, -errno, "%s: close: %s", tmp, strerror(errno));
		goto out_unlink;
	}
	out = -1;
	if (rename(tmp, path) < 0) {
		rc = fr_error_set(err, -errno, "%s: rename: %s", tmp, strerror(errno));
		goto out_unlink;
	}
	rc = 0;
	goto out;
out_unlink:
	unlink(tmp);
out:
	if (out >= 0)
		close(out);
	close(in);
	free(buf);
	return rc;
}

/* The tokenizer's vocabulary and BOS/EOS go into cfg; tokenizer.json (and the
 * tokenizer_config.json beside it, which decides BOS/EOS when present) into dir. */
static int gen_tokenizer(const char *src, const char *dir, struct model_config *cfg,
			 struct fr_error *err)
{
	struct model_tokenizer *tk;
	char conf[4096];
	const char *slash = strrchr(src, '/');
	int rc;

	if ((rc = model_tokenizer_load(src, &tk, err)) < 0)
		return rc;
	cfg->vocab_size = model_tokenizer_vocab_size(tk);
	cfg->bos_token_id = model_tokenizer_bos(tk);
	cfg->eos_token_id = model_tokenizer_eos(tk);
	model_tokenizer_free(tk);
	if ((rc = copy_file(src, dir, "tokenizer.json", err)) < 0)
		return rc;
	if (snprintf(conf, sizeof(conf), "%.*stokenizer_config.json",
		     slash ? (int)(slash - src + 1) : 0, src) >= (int)sizeof(conf))
		return fr_error_set(err, -ENAMETOOLONG, "%s: path too long", src);
	if (access(conf, F_OK) == 0)
		return copy_file(conf, dir, "tokenizer_config.json", err);
	/* A stale one from an earlier run would change BOS/EOS under the new tokenizer. */
	if ((rc = path_join(conf, sizeof(conf), dir, "", "tokenizer_config.json", "", err)) < 0)
		return rc;
	if (unlink(conf) == 0)
		fr_info("model", "removed stale %s", conf);
	return 0;
}

static int gen_check_opts(const struct model_gen_opts *o, const struct model_config *preset,
			  struct fr_error *err)
{
	if ((unsigned)o->preset >= MODEL_PRESET__COUNT)
		return fr_error_set(err, -EINVAL, "unknown preset %d", (int)o->preset);
	if (o->layers < 0 || o->layers > preset->num_hidden_layers)
		return fr_error_set(err, -EINVAL, "layers %d: preset %s has 1..%d layers", o->layers,
				    model_preset_name(o->preset), preset->num_hidden_layers);
	if (o->dtype != KN_DTYPE_F32 && o->dtype != KN_DTYPE_BF16)
		return fr_error_set(err, -EINVAL, "dtype %s: only F32 and BF16 are generated",
				    kn_dtype_name(o->dtype));
	if (o->threads < 0 || o->threads > 1024)
		return fr_error_set(err, -EINVAL, "threads %d: must be 0..1024", o->threads);
	if (o->shards < 1 || o->shards > GEN_MAX_SHARDS)
		return fr_error_set(err, -EINVAL, "shards %d: must be 1..%d", o->shards,
				    GEN_MAX_SHARDS);
	if (!(o->skew >= 0 && o->skew <= MODEL_GEN_MAX_SKEW))
		return fr_error_set(err, -EINVAL, "skew %g: must be a number in [0, %d]", o->skew,
				    MODEL_GEN_MAX_SKEW);
	/* Skewed rows are generated whole, and from even element indices. */
	if (o->skew > 0 && (preset->hidden_size % 2 || preset->hidden_size > (int)(GEN_BLOCK / 2)))
		return fr_error_set(err, -EINVAL, "skew: needs an even hidden size <= %u",
				    GEN_BLOCK / 2);
	return 0;
}

int model_gen(const struct model_gen_opts *o, const char *dir, struct fr_error *err)
{
	struct model_config cfg;
	struct gen_ctx g = { .o = o, .cfg = &cfg, .dir = dir, .err = err };
	char path[4096], tmp[4096];
	int rc, k;

	model_preset_config(o->preset, &cfg);
	if ((rc = gen_check_opts(o, &cfg, err)) < 0)
		return rc;
	if (o->layers > 0)
		cfg.num_hidden_layers = o->layers;
	cfg.first_k_dense_replace = FR_MIN(cfg.first_k_dense_replace, cfg.num_hidden_layers);
	cfg.torch_dtype = o->dtype;
	g.esize = kn_dtype_size(o->dtype);
	g.n_shards = o->shards;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return fr_error_set(err, -errno, "%s: mkdir: %s", dir, strerror(errno));
	if (o->tokenizer && (rc = gen_tokenizer(o->tokenizer, dir, &cfg, err)) < 0)
		return rc;

	if ((rc = table_build(&cfg, &g.tb)) < 0) {
		rc = fr_error_set(err, rc, "out of memory listing tensors");
		goto out;
	}
	if ((rc = plan_shards(&g)) < 0)
		goto out;
	g.buf = malloc(GEN_BLOCK * g.esize);
	if (o->skew > 0 && o->dtype != KN_DTYPE_F32)
		g.f32 = malloc(GEN_BLOCK * sizeof(float));
	if (!g.buf || (o->skew > 0 && o->dtype != KN_DTYPE_F32 && !g.f32)) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	fr_dbg("model", "gen preset=%s layers=%d dtype=%s seed=%" PRIu64 " shards=%d skew=%g "
		"tensors=%zu bytes=%" PRIu64 " dir=%s", model_preset_name(o->preset),
		cfg.num_hidden_layers, kn_dtype_name(o->dtype), o->seed, o->shards, o->skew,
		g.tb.n, g.total, dir);

	for (k = 0; k < g.n_shards; k++) {
		const struct gen_shard *s = &g.shards[k];
		if ((rc = path_join(tmp, sizeof(tmp), dir, ".", s->name, ".tmp", err)) < 0)
			goto out;
		if ((rc = write_shard(&g, s, tmp)) < 0) {
			unlink(tmp);
			goto out;
		}
	}
	/* All shards are complete: only now do they get their real names. */
	for (k = 0; k < g.n_shards; k++) {
		const struct gen_shard *s = &g.shards[k];
		if ((rc = path_join(tmp, sizeof(tmp), dir, ".", s->name, ".tmp", err)) < 0 ||
		    (rc = path_join(path, sizeof(path), dir, "", s->name, "", err)) < 0)
			goto out;
		if (rename(tmp, path) < 0) {
			rc = fr_error_set(err, -errno, "%s: rename: %s", tmp, strerror(errno));
			goto out;
		}
	}
	if ((rc = path_join(path, sizeof(path), dir, "", "model.safetensors.index.json", "",
			    err)) < 0 ||
	    (rc = path_join(tmp, sizeof(tmp), dir, ".", "model.safetensors.index.json", ".tmp",
			    err)) < 0)
		goto out;
	if (g.n_shards > 1) {
		if ((rc = write_index(&g, path, tmp)) < 0)
			goto out;
	} else if (unlink(path) == 0) {
		/* A stale index from an earlier sharded run would shadow model.safetensors. */
		fr_info("model", "removed stale %s", path);
	}
	if ((rc = write_manifest(&g)) < 0)
		goto out;
	if ((rc = path_join(path, sizeof(path), dir, "", "config.json", "", err)) < 0 ||
	    (rc = model_config_write(&cfg, path, err)) < 0)
		goto out;
	rc = 0;
out:
	if (rc < 0)
		for (k = 0; k < g.n_shards && g.shards; k++)
			if (path_join(tmp, sizeof(tmp), dir, ".", g.shards[k].name, ".tmp", NULL) == 0)
				unlink(tmp);
	if (g.shards)
		for (k = 0; k < g.n_shards; k++)
			free(g.shards[k].header);
	free(g.shards);
	free(g.tb.t);
	free(g.buf);
	free(g.f32);
	return rc;
}
