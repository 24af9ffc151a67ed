/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sample.c - greedy, temperature, top-k and top-p (nucleus) sampling, repetition penalty.
 *
 * co_sample_full() applies the penalty, then draws with sample_draw(). The draw:
 *   - probabilities p_i = expf((l_i - max) / T), summed in id order (float);
 *   - no top-k/top-p: walk the candidates in id order;
 *   - else the candidates in descending p (ties: lower id first), taken one by one from a
 *     binary max-heap (O(vocab) to build, O(log vocab) per candidate taken), so only the
 *     prefix that is kept gets sorted; top-k keeps the k best and renormalizes over them,
 *     then top-p keeps the shortest prefix holding top_p of the remaining mass;
 *   - r = fr_rand_unit(rng) * kept mass; the first candidate whose running sum (double)
 *     passes r.
 * The descending order is a total order, so the kept prefix (and the float sums over it)
 * do not depend on how it is found.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator.h"
#include "coordinator/scheduler.h"

int32_t co_argmax(const float *logits, int vocab)
{
	return vocab > 0 ? kn_argmax(logits, vocab) : 0;
}

struct cand {
	float p;
	int32_t id;
};

/* a ranks before b: higher probability, then lower id. */
static inline int cand_before(const struct cand *a, const struct cand *b)
{
	return a->p > b->p || (a->p == b->p && a->id < b->id);
}

static void heap_sift_down(struct cand *h, size_t n, size_t i)
{
	struct cand v = h[i];

	for (;;) {
		size_t l = 2 * i + 1, best;
		if (l >= n)
			break;
		best = l + 1 < n && cand_before(&h[l + 1], &h[l]) ? l + 1 : l;
		if (!cand_before(&h[best], &v))
			break;
		h[i] = h[best];
		i = best;
	}
	h[i] = v;
}

/* Pops the best candidate of the heap h[0..n) into h[n - 1]; the heap is then h[0..n-1). */
static void heap_pop(struct cand *h, size_t n)
{
	struct cand top = h[0];

	h[0] = h[n - 1];
	h[n - 1] = top;
	if (n > 2)
		heap_sift_down(h, n - 1, 0);
}

static int32_t sample_draw(const float *logits, int vocab, float temperature, float top_p,
			   int top_k, uint64_t *rng, struct cand *c)
{
	float max, sum = 0.0f;
	size_t n = (size_t)vocab, kept;

	if (!(temperature > 0.0f))
		return co_argmax(logits, vocab);
	max = logits[co_argmax(logits, vocab)];
	for (int i = 0; i < vocab; i++) {
		c[i].p = expf((logits[i] - max) / temperature);
		c[i].id = i;
		sum += c[i].p;
	}
	top_p = top_p > 0.0f && top_p < 1.0f ? top_p : 1.0f;
	if (top_k >= vocab)
		top_k = 0;
	if (top_p < 1.0f || top_k > 0) {
		/* Pop from the heap in rank order; popped candidates collect at the tail, the
		 * best at c[n - 1], so the i-th best is c[n - 1 - i]. */
		struct cand *const tail = c + n - 1;
		size_t limit = top_k > 0 ? (size_t)top_k : n;
		float acc = 0.0f;

		for (size_t i = n / 2; i-- > 0;)
			heap_sift_down(c, n, i);
		if (top_k > 0) {
			for (kept = 0; kept < limit; kept++) {
				heap_pop(c, n - kept);
				acc += tail[-(ptrdiff_t)kept].p;
			}
			if (top_p < 1.0f) {
				sum = acc;
				acc = 0.0f;
				for (kept = 0; kept < limit;) {
					acc += tail[-(ptrdiff_t)kept++].p;
					if (acc >= top_p * sum)
						break;
				}
			}
		} else {
			for (kept = 0; kept < limit;) {
				heap_pop(c, n - kept);
				acc += tail[-(ptrdiff_t)kept++].p;
				if (acc >= top_p * sum)
					break;
			}
		}
		sum = acc;
		double r = fr_rand_unit(rng) * sum, run = 0.0;
		for (size_t i = 0; i < kept; i++) {
			run += tail[-(ptrdiff_t)i].p;
			if (r < run)
				return tail[-(ptrdiff_t)i].id;
		}
		return tail[-(ptrdiff_t)(kept - 1)].id;
	}
	double r = fr_rand_unit(rng) * sum, run = 0.0;
	for (size_t i = 0; i < n; i++) {
		run += c[i].p;
		if (r < run)
			return c[i].id;
	}
	return c[n - 1].id;
}

size_t co_sample_scratch_size(int vocab)
{
	/* The candidates; the penalty's bitmap (vocab bits) fits in them and is used first. */
	return (size_t)(vocab > 0 ? vocab : 1) * sizeof(struct cand);
}

/* CTRL (Keskar et al. 2019), as HF's RepetitionPenaltyLogitsProcessor: each distinct id of
 * the history once; ids outside [0, vocab) are ignored. seen: vocab bits of scratch. */
static void rep_penalize(float *logits, int vocab, float penalty, const int32_t *history,
			 int n_hist, uint32_t *seen)
{
	memset(seen, 0, ((size_t)vocab + 31) / 32 * sizeof(*seen));
	for (int i = 0; i < n_hist; i++) {
		int32_t id = history[i];
		if (id < 0 || id >= vocab || (seen[id / 32] >> (id % 32) & 1u))
			continue;
		seen[id / 32] |= 1u << (id % 32);
		logits[id] = logits[id] > 0.0f ? logits[id] / penalty : logits[id] * penalty;
	}
}

int32_t co_sample_full(const struct co_sample_params *p, uint64_t *rng, float *logits,
		       int vocab, const int32_t *history, int n_hist, void *scratch)
{
	if (p->rep_penalty > 0.0f && p->rep_penalty != 1.0f && history && n_hist > 0)
		rep_penalize(logits, vocab, p->rep_penalty, history, n_hist, scratch);
	return sample_draw(logits, vocab, p->temperature, p->top_p, p->top_k > 0 ? p->top_k : 0,
			   rng, scratch);
}

double co_logprob(const float *logits, int vocab, int32_t target)
{
	double max = -INFINITY, sum = 0.0;

	if (target < 0 || target >= vocab)
		return NAN;
	for (int i = 0; i < vocab; i++)
		if ((double)logits[i] > max)
			max = logits[i];
	for (int i = 0; i < vocab; i++)
		sum += exp((double)logits[i] - max);
	return ((double)logits[target] - max) - log(sum);
}
