/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_sample.c - sampling with request parameters (coordinator/sample.c).
 *   test_sample equiv     co_sample_full (top_k 0, no penalty, with and without a history)
 *                         == the original qsort-based sampler, token and rng state, over
 *                         random logits
 *   test_sample topk      top-k restricts the support; k = 1 is argmax; frequencies follow
 *                         the renormalized top-k probabilities; top-k with top-p
 *   test_sample penalty   CTRL repetition penalty: divide positive, multiply negative, each
 *                         distinct id once, ids out of range ignored; its effect on greedy
 *   test_sample logprob   co_logprob against a naive long double log-softmax
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "coordinator/scheduler.h"
#include "tests/test.h"

static uint64_t g_rng;

static double unit(void)
{
	return fr_rand_unit(&g_rng);
}

static int irand(int n)
{
	return (int)(fr_splitmix64(&g_rng) % (uint64_t)n);
}

/* ---- the sampler that shipped before co_sample_full, verbatim but for names ----------- */

struct ref_cand {
	float p;
	int32_t id;
};

static int ref_cmp(const void *a, const void *b)
{
	const struct ref_cand *x = a, *y = b;
	if (x->p != y->p)
		return x->p < y->p ? 1 : -1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* The plain draw (temperature, top_p, no top-k, no penalty) written out directly. */
struct ref_sampler {
	float temperature, top_p;
	uint64_t rng;
};

static int32_t ref_sample(struct ref_sampler *s, const float *logits, int vocab, void *scratch)
{
	struct ref_cand *c = scratch;
	float max, sum = 0.0f, top_p;
	int n = vocab;

	if (!(s->temperature > 0.0f))
		return co_argmax(logits, vocab);
	max = logits[co_argmax(logits, vocab)];
	for (int i = 0; i < vocab; i++) {
		c[i].p = expf((logits[i] - max) / s->temperature);
		c[i].id = i;
		sum += c[i].p;
	}
	top_p = s->top_p > 0.0f && s->top_p < 1.0f ? s->top_p : 1.0f;
	if (top_p < 1.0f) {
		qsort(c, (size_t)vocab, sizeof(*c), ref_cmp);
		float acc = 0.0f;
		for (n = 0; n < vocab;) {
			acc += c[n++].p;
			if (acc >= top_p * sum)
				break;
		}
		sum = acc;
	}
	double r = fr_rand_unit(&s->rng) * sum, acc = 0.0;
	for (int i = 0; i < n; i++) {
		acc += c[i].p;
		if (r < acc)
			return c[i].id;
	}
	return c[n - 1].id;
}

/* Random logits: normal-ish, sometimes quantized (ties), sometimes peaked or with -inf. */
static void fill_logits(float *l, int vocab)
{
	int kind = irand(4);
	float scale = (float)(0.1 + 8.0 * unit());

	for (int i = 0; i < vocab; i++) {
		double g = unit() + unit() + unit() - 1.5;
		l[i] = (float)(g * scale);
		if (kind == 1)
			l[i] = roundf(l[i]);               /* many ties */
		else if (kind == 2 && irand(10) == 0)
			l[i] = -INFINITY;                  /* masked ids */
	}
	if (kind == 3)
		l[irand(vocab)] += 20.0f;                  /* one dominant id */
	if (kind == 2)
		l[irand(vocab)] = 0.5f;                    /* never all masked */
}

static float rand_temperature(void)
{
	static const float fixed[] = { 0.0f, -1.0f, 1.0f, 0.7f, 1e-3f, 5.0f };
	return irand(3) ? fixed[irand((int)FR_ARRAY_SIZE(fixed))] : (float)(2.0 * unit());
}

static float rand_top_p(void)
{
	static const float fixed[] = { 0.0f, 1.0f, 0.9f, 0.5f, 1e-6f, 0.999f, 1.5f };
	return irand(3) ? fixed[irand((int)FR_ARRAY_SIZE(fixed))] : (float)unit();
}

static int run_equiv(void)
{
	static const int vocabs[] = { 1, 2, 3, 17, 256, 1000, 4099, 32000 };
	int n_cases = 0, n_nongreedy = 0;

	for (size_t v = 0; v < FR_ARRAY_SIZE(vocabs); v++) {
		int vocab = vocabs[v];
		int reps = vocab >= 4099 ? 150 : 1500;
		float *l = malloc((size_t)vocab * sizeof(*l));
		float *l2 = malloc((size_t)vocab * sizeof(*l2));
		void *s1 = malloc(co_sample_scratch_size(vocab));
		void *s2 = malloc(co_sample_scratch_size(vocab));
		void *s3 = malloc(co_sample_scratch_size(vocab));

		CHECK(co_sample_scratch_size(vocab) >= (size_t)vocab * 8);
		for (int r = 0; r < reps; r++) {
			uint64_t seed = fr_splitmix64(&g_rng);
			struct ref_sampler a = { rand_temperature(), rand_top_p(), seed };
			struct co_sample_params b = { .temperature = a.temperature, .top_p = a.top_p,
						      .seed = seed };
			uint64_t b_rng = seed;
			struct co_sample_params p = { .temperature = a.temperature, .top_p = a.top_p,
						      .top_k = irand(2) ? 0 : (irand(2) ? vocab : -3),
						      .rep_penalty = irand(2) ? 0.0f : 1.0f,
						      .seed = seed };
			uint64_t rng = seed;
			int32_t hist[4] = { 0, vocab - 1, vocab / 2, 0 };

			fill_logits(l, vocab);
			memcpy(l2, l, (size_t)vocab * sizeof(*l));
			/* Several draws from one state: the rng must advance identically. */
			for (int k = 0; k < 3; k++) {
				int32_t want = ref_sample(&a, l, vocab, s1);
				int32_t got = co_sample_full(&b, &b_rng, l, vocab, NULL, 0, s2);
				int32_t full = co_sample_full(&p, &rng, l2, vocab, hist, 4, s3);
				if (want != got || want != full || a.rng != b_rng || a.rng != rng) {
					fprintf(stderr, "FAIL equiv: vocab %d T %g top_p %g top_k %d "
						"rep %g: ref %d plain %d full %d; logits", vocab,
						(double)a.temperature, (double)a.top_p, p.top_k,
						(double)p.rep_penalty, want, got, full);
					for (int i = 0; i < vocab && i < 8; i++)
						fprintf(stderr, " %g", (double)l[i]);
					fputc('\n', stderr);
					t_failures++;
				}
				n_nongreedy += a.temperature > 0.0f;
				n_cases++;
			}
			CHECK(memcmp(l, l2, (size_t)vocab * sizeof(*l)) == 0); /* no penalty: untouched */
		}
		free(l);
		free(l2);
		free(s1);
		free(s2);
		free(s3);
	}
	printf("equiv: %d draws (%d sampled, the rest greedy)\n", n_cases, n_nongreedy);
	return t_failures != 0;
}

/* Ids ranked like the sampler ranks them: higher logit first, ties to the lower id. */
static float *g_rank_logits;
static int rank_cmp(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	float lx = g_rank_logits[x], ly = g_rank_logits[y];
	if (lx != ly)
		return lx > ly ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int run_topk(void)
{
	const int vocab = 500;
	float *l = malloc(vocab * sizeof(*l)), *w = malloc(vocab * sizeof(*w));
	int32_t *order = malloc(vocab * sizeof(*order));
	void *scratch = malloc(co_sample_scratch_size(vocab));
	int *count = calloc(vocab, sizeof(*count));

	/* Support: every draw is among the k best. */
	for (int r = 0; r < 400; r++) {
		int k = 1 + irand(irand(2) ? 5 : vocab - 1);
		struct co_sample_params p = { .temperature = (float)(0.2 + 3.0 * unit()),
					      .top_p = irand(2) ? 1.0f : (float)unit(), .top_k = k };
		uint64_t rng = fr_splitmix64(&g_rng);
		bool in[500] = { false };

		fill_logits(l, vocab);
		for (int i = 0; i < vocab; i++)
			order[i] = i;
		g_rank_logits = l;
		qsort(order, vocab, sizeof(*order), rank_cmp);
		for (int i = 0; i < k; i++)
			in[order[i]] = true;
		for (int d = 0; d < 20; d++) {
			memcpy(w, l, vocab * sizeof(*l));
			int32_t t = co_sample_full(&p, &rng, w, vocab, NULL, 0, scratch);
			if (t < 0 || t >= vocab || !in[t]) {
				fprintf(stderr, "FAIL topk: k %d T %g top_p %g drew %d (rank outside)\n",
					k, (double)p.temperature, (double)p.top_p, t);
				t_failures++;
				break;
			}
		}
		/* k = 1 is greedy whatever the temperature. */
		struct co_sample_params g = p;
		g.top_k = 1;
		memcpy(w, l, vocab * sizeof(*l));
		CHECK(co_sample_full(&g, &rng, w, vocab, NULL, 0, scratch) == co_argmax(l, vocab));
	}

	/* Frequencies: logits 0..9 scaled, k = 3, T = 1: p ~ softmax over the best three. */
	for (int i = 0; i < vocab; i++)
		l[i] = -5.0f + (float)(i % 10) * 0.3f;    /* best: ids 9, 19, 29... (ties) */
	l[7] = 3.0f;
	l[8] = 2.5f;
	l[9] = 2.0f;
	{
		struct co_sample_params p = { .temperature = 1.0f, .top_p = 1.0f, .top_k = 3 };
		uint64_t rng = fr_splitmix64(&g_rng);
		const int draws = 60000;
		double z = exp(3.0) + exp(2.5) + exp(2.0);

		memset(count, 0, vocab * sizeof(*count));
		for (int d = 0; d < draws; d++) {
			memcpy(w, l, vocab * sizeof(*l));
			count[co_sample_full(&p, &rng, w, vocab, NULL, 0, scratch)]++;
		}
		CHECK(count[7] + count[8] + count[9] == draws);
		for (int i = 7; i <= 9; i++) {
			double want = exp((double)l[i]) / z, got = (double)count[i] / draws;
			double sd = sqrt(want * (1 - want) / draws);
			printf("topk: id %d freq %.4f want %.4f\n", i, got, want);
			CHECK(fabs(got - want) < 5 * sd);
		}
		/* top-p after top-k, renormalized over the three: 0.5 keeps ids 7 (0.506). */
		p.top_p = 0.5f;
		memset(count, 0, vocab * sizeof(*count));
		for (int d = 0; d < 2000; d++) {
			memcpy(w, l, vocab * sizeof(*l));
			count[co_sample_full(&p, &rng, w, vocab, NULL, 0, scratch)]++;
		}
		CHECK(count[7] == 2000);
		/* 0.8 keeps 7 and 8 (0.506 + 0.307 = 0.813). */
		p.top_p = 0.8f;
		memset(count, 0, vocab * sizeof(*count));
		for (int d = 0; d < 4000; d++) {
			memcpy(w, l, vocab * sizeof(*l));
			count[co_sample_full(&p, &rng, w, vocab, NULL, 0, scratch)]++;
		}
		CHECK(count[7] + count[8] == 4000 && count[8] > 1000);
	}
	/* Ties at the k-th place go to the lower ids: ten equal logits, k = 4. */
	for (int i = 0; i < vocab; i++)
		l[i] = i >= 100 && i < 110 ? 1.0f : -30.0f;
	{
		struct co_sample_params p = { .temperature = 1.0f, .top_p = 1.0f, .top_k = 4 };
		uint64_t rng = fr_splitmix64(&g_rng);
		memset(count, 0, vocab * sizeof(*count));
		for (int d = 0; d < 4000; d++) {
			memcpy(w, l, vocab * sizeof(*l));
			count[co_sample_full(&p, &rng, w, vocab, NULL, 0, scratch)]++;
		}
		CHECK(count[100] + count[101] + count[102] + count[103] == 4000);
		CHECK(count[100] > 700 && count[103] > 700);
	}
	free(l);
	free(w);
	free(order);
	free(scratch);
	free(count);
	printf("topk: done\n");
	return t_failures != 0;
}

static int run_penalty(void)
{
	const int vocab = 64;
	float l[64], w[64];
	void *scratch = malloc(co_sample_scratch_size(vocab));

	for (int r = 0; r < 300; r++) {
		float pen = irand(2) ? (float)(1.0 + 9.0 * unit()) : (float)(0.1 + 0.9 * unit());
		struct co_sample_params p = { .temperature = 0.0f, .rep_penalty = pen };
		int32_t hist[40];
		int n_hist = irand(40);
		bool seen[64] = { false };
		uint64_t rng = 1;

		for (int i = 0; i < vocab; i++)
			l[i] = (float)(unit() * 8.0 - 4.0);
		l[irand(vocab)] = 0.0f;
		for (int i = 0; i < n_hist; i++) {
			/* Repeats, and a few ids out of range (ignored). */
			hist[i] = irand(8) == 0 ? (irand(2) ? -1 - irand(5) : vocab + irand(5))
						: irand(16);
			if (hist[i] >= 0 && hist[i] < vocab)
				seen[hist[i]] = true;
		}
		memcpy(w, l, sizeof(l));
		int32_t t = co_sample_full(&p, &rng, w, vocab, hist, n_hist, scratch);
		for (int i = 0; i < vocab; i++) {
			float want = !seen[i] ? l[i] : l[i] > 0.0f ? l[i] / pen : l[i] * pen;
			if (w[i] != want) {
				fprintf(stderr, "FAIL penalty %g: id %d logit %g -> %g, want %g\n",
					(double)pen, i, (double)l[i], (double)w[i], (double)want);
				t_failures++;
			}
		}
		CHECK(t == co_argmax(w, vocab));
	}
	/* Greedy moves off a repeated token: 5.0 / 2 = 2.5 < 4.0. */
	for (int i = 0; i < vocab; i++)
		l[i] = -1.0f;
	l[3] = 5.0f;
	l[9] = 4.0f;
	{
		struct co_sample_params p = { .temperature = 0.0f, .rep_penalty = 2.0f };
		int32_t hist[] = { 3, 3, 3 };
		uint64_t rng = 7;
		memcpy(w, l, sizeof(l));
		CHECK(co_sample_full(&p, &rng, w, vocab, hist, 3, scratch) == 9);
		CHECK(w[3] == 2.5f); /* once, not three times */
		p.rep_penalty = 1.0f;
		memcpy(w, l, sizeof(l));
		CHECK(co_sample_full(&p, &rng, w, vocab, hist, 3, scratch) == 3);
		CHECK(memcmp(w, l, sizeof(l)) == 0);
		p.rep_penalty = 0.0f;
		CHECK(co_sample_full(&p, &rng, w, vocab, hist, 3, scratch) == 3);
		/* Negative logits are pushed down: -1 * 2 = -2 makes id 0 lose its tie. */
		for (int i = 0; i < vocab; i++)
			l[i] = -1.0f;
		int32_t h0[] = { 0 };
		p.rep_penalty = 2.0f;
		memcpy(w, l, sizeof(l));
		CHECK(co_sample_full(&p, &rng, w, vocab, h0, 1, scratch) == 1);
		CHECK(w[0] == -2.0f);
	}
	free(scratch);
	printf("penalty: done\n");
	return t_failures != 0;
}

static int run_logprob(void)
{
	static const int vocabs[] = { 1, 2, 10, 1000, 102400 };
	double worst = 0.0;

	for (size_t v = 0; v < FR_ARRAY_SIZE(vocabs); v++) {
		int vocab = vocabs[v];
		float *l = malloc((size_t)vocab * sizeof(*l));
		for (int r = 0; r < (vocab > 1000 ? 5 : 200); r++) {
			double scale = 0.1 + 20.0 * unit(), shift = unit() * 200.0 - 100.0;
			long double max = -INFINITY, z = 0.0L, total = 0.0L;

			for (int i = 0; i < vocab; i++) {
				l[i] = (float)((unit() - 0.5) * scale + shift);
				if (l[i] > max)
					max = l[i];
			}
			for (int i = 0; i < vocab; i++)
				z += expl((long double)l[i] - max);
			for (int k = 0; k < 8; k++) {
				int32_t t = irand(vocab);
				long double want = logl(expl((long double)l[t] - max) / z);
				double got = co_logprob(l, vocab, t);
				double tol = 1e-12 * (1.0 + fabs((double)want)) +
					     1e-15 * (double)vocab;
				worst = fmax(worst, fabs(got - (double)want));
				if (!(fabs(got - (double)want) <= tol)) {
					fprintf(stderr, "FAIL logprob vocab %d id %d: %.17g want %.17Lg\n",
						vocab, t, got, want);
					t_failures++;
				}
			}
			for (int i = 0; i < vocab && vocab <= 1000; i++)
				total += expl((long double)co_logprob(l, vocab, i));
			if (vocab <= 1000)
				CHECK(fabsl(total - 1.0L) < 1e-12L);
		}
		CHECK(isnan(co_logprob(l, vocab, -1)) && isnan(co_logprob(l, vocab, vocab)));
		free(l);
	}
	/* Exact small cases: uniform over 4 -> log(1/4); one -inf entry -> -inf. */
	{
		float u[4] = { 3.0f, 3.0f, 3.0f, 3.0f };
		CHECK(fabs(co_logprob(u, 4, 2) - log(0.25)) < 1e-15);
		u[1] = -INFINITY;
		CHECK(isinf(co_logprob(u, 4, 1)) && co_logprob(u, 4, 1) < 0);
		CHECK(fabs(co_logprob(u, 4, 0) - log(1.0 / 3.0)) < 1e-15);
	}
	printf("logprob: worst abs error %.3g\n", worst);
	return t_failures != 0;
}

int main(int argc, char **argv)
{
	g_rng = t_seed();
	if (argc == 2 && !strcmp(argv[1], "equiv"))
		return run_equiv();
	if (argc == 2 && !strcmp(argv[1], "topk"))
		return run_topk();
	if (argc == 2 && !strcmp(argv[1], "penalty"))
		return run_penalty();
	if (argc == 2 && !strcmp(argv[1], "logprob"))
		return run_logprob();
	fprintf(stderr, "usage: test_sample equiv|topk|penalty|logprob\n");
	return 2;
}
