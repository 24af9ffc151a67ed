/* SPDX-License-Identifier: Apache-2.0 */
/* sample.c - greedy and temperature / top-p (nucleus) sampling. */
#include <math.h>
#include <stdlib.h>

#include "coordinator/coordinator.h"

int32_t co_argmax(const float *logits, int vocab)
{
	int32_t best = 0;
	for (int i = 1; i < vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

struct cand {
	float p;
	int32_t id;
};

static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->p != y->p)
		return x->p < y->p ? 1 : -1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int32_t co_sample(struct co_sampler *s, const float *logits, int vocab, void *scratch)
{
	struct cand *c = scratch;
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
		/* Sort by probability and keep the smallest prefix holding top_p of the mass. */
		qsort(c, (size_t)vocab, sizeof(*c), cand_cmp);
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
