/* SPDX-License-Identifier: Apache-2.0 */
/*
 * load.c - sliding-window load accounting: a ring of per-step counters plus running window
 * sums, so that recording is O(1) per token and a query never walks the ring.
 */
#include "placement/placement.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LOAD_MAX_WINDOW (1 << 20)

struct co_load {
	int n_layers, n_experts, n_workers, total_slots;
	int window;
	int cur;                 /* ring index of the current step */
	int filled;              /* steps in the window, current included */
	int32_t *slots;          /* [n_workers] */
	int32_t *slot_base;      /* [n_workers + 1] */
	/* ring: [window][...] per-step counters */
	uint32_t *step_expert;   /* [window][n_layers][n_experts] tokens */
	uint32_t *step_slot;     /* [window][n_layers][total_slots] tokens */
	uint64_t *step_time;     /* [window][n_workers][n_layers] ns */
	/* sums over the window */
	uint64_t *sum_expert;    /* [n_layers][n_experts] */
	uint64_t *sum_slot;      /* [n_layers][total_slots] */
	uint64_t *sum_time;      /* [n_workers][n_layers] */
	/* since creation (co_load_reset() keeps them): what /metrics exports as counters */
	uint64_t *tot_expert;    /* [n_layers][n_experts] tokens */
	uint64_t *tot_worker;    /* [n_layers][n_workers] tokens */
	uint64_t *tot_time;      /* [n_workers][n_layers] ns */
};

static inline size_t n_expert_cells(const struct co_load *ld)
{
	return (size_t)ld->n_layers * ld->n_experts;
}

static inline size_t n_slot_cells(const struct co_load *ld)
{
	return (size_t)ld->n_layers * ld->total_slots;
}

static inline size_t n_time_cells(const struct co_load *ld)
{
	return (size_t)ld->n_workers * ld->n_layers;
}

void co_load_destroy(struct co_load *ld)
{
	if (!ld)
		return;
	free(ld->slots);
	free(ld->slot_base);
	free(ld->step_expert);
	free(ld->step_slot);
	free(ld->step_time);
	free(ld->sum_expert);
	free(ld->sum_slot);
	free(ld->sum_time);
	free(ld->tot_expert);
	free(ld->tot_worker);
	free(ld->tot_time);
	free(ld);
}

int co_load_create(int n_layers, int n_experts, int n_workers, const int *slots, int window,
		   struct co_load **ret, struct fr_error *err)
{
	struct co_load *ld;
	long total = 0;

	if (n_layers < 1 || n_layers > CO_PLACE_MAX_LAYERS || n_experts < 1 ||
	    n_experts > CO_PLACE_MAX_EXPERTS || n_workers < 1 || n_workers > CO_PLACE_MAX_WORKERS)
		return fr_error_set(err, -EINVAL,
				    "load accounting: shape %d layers x %d experts x %d workers "
				    "out of range", n_layers, n_experts, n_workers);
	if (window < 1 || window > LOAD_MAX_WINDOW)
		return fr_error_set(err, -EINVAL, "load accounting: window %d out of range 1..%d",
				    window, LOAD_MAX_WINDOW);
	if (!slots)
		return fr_error_set(err, -EINVAL, "load accounting: no slot counts");
	for (int w = 0; w < n_workers; w++) {
		if (slots[w] < 0 || slots[w] > CO_PLACE_MAX_SLOTS)
			return fr_error_set(err, -EINVAL,
					    "load accounting: worker %d: %d slots out of range", w,
					    slots[w]);
		total += slots[w];
	}
	if (total > CO_PLACE_MAX_SLOTS ||
	    (long)n_layers * (total + n_experts + n_workers) > CO_PLACE_MAX_CELLS)
		return fr_error_set(err, -EINVAL, "load accounting: %d layers x %ld slots too large",
				    n_layers, total);

	ld = calloc(1, sizeof(*ld));
	if (!ld)
		goto enomem;
	ld->n_layers = n_layers;
	ld->n_experts = n_experts;
	ld->n_workers = n_workers;
	ld->total_slots = (int)total;
	ld->window = window;
	ld->slots = malloc(sizeof(*ld->slots) * (size_t)n_workers);
	ld->slot_base = malloc(sizeof(*ld->slot_base) * ((size_t)n_workers + 1));
	ld->step_expert = calloc((size_t)window * n_expert_cells(ld), sizeof(uint32_t));
	ld->step_slot = calloc((size_t)window * n_slot_cells(ld) + 1, sizeof(uint32_t));
	ld->step_time = calloc((size_t)window * n_time_cells(ld), sizeof(uint64_t));
	ld->sum_expert = calloc(n_expert_cells(ld), sizeof(uint64_t));
	ld->sum_slot = calloc(n_slot_cells(ld) + 1, sizeof(uint64_t));
	ld->sum_time = calloc(n_time_cells(ld), sizeof(uint64_t));
	ld->tot_expert = calloc(n_expert_cells(ld), sizeof(uint64_t));
	ld->tot_worker = calloc((size_t)n_layers * n_workers, sizeof(uint64_t));
	ld->tot_time = calloc(n_time_cells(ld), sizeof(uint64_t));
	if (!ld->slots || !ld->slot_base || !ld->step_expert || !ld->step_slot ||
	    !ld->step_time || !ld->sum_expert || !ld->sum_slot || !ld->sum_time ||
	    !ld->tot_expert || !ld->tot_worker || !ld->tot_time)
		goto enomem;
	ld->slot_base[0] = 0;
	for (int w = 0; w < n_workers; w++) {
		ld->slots[w] = slots[w];
		ld->slot_base[w + 1] = ld->slot_base[w] + slots[w];
	}
	ld->filled = 1;
	*ret = ld;
	return 0;
enomem:
	co_load_destroy(ld);
	return fr_error_set(err, -ENOMEM,
			    "load accounting: out of memory for a window of %d steps", window);
}

static void step_clear(struct co_load *ld, int i)
{
	memset(ld->step_expert + (size_t)i * n_expert_cells(ld), 0,
	       sizeof(uint32_t) * n_expert_cells(ld));
	memset(ld->step_slot + (size_t)i * n_slot_cells(ld), 0, sizeof(uint32_t) * n_slot_cells(ld));
	memset(ld->step_time + (size_t)i * n_time_cells(ld), 0, sizeof(uint64_t) * n_time_cells(ld));
}

void co_load_next_step(struct co_load *ld)
{
	int next = (ld->cur + 1) % ld->window;

	if (ld->filled == ld->window) {
		/* the oldest step is the one the ring reuses: take it out of the sums */
		const uint32_t *se = ld->step_expert + (size_t)next * n_expert_cells(ld);
		const uint32_t *ss = ld->step_slot + (size_t)next * n_slot_cells(ld);
		const uint64_t *st = ld->step_time + (size_t)next * n_time_cells(ld);
		for (size_t i = 0; i < n_expert_cells(ld); i++)
			ld->sum_expert[i] -= se[i];
		for (size_t i = 0; i < n_slot_cells(ld); i++)
			ld->sum_slot[i] -= ss[i];
		for (size_t i = 0; i < n_time_cells(ld); i++)
			ld->sum_time[i] -= st[i];
		step_clear(ld, next);
	} else {
		ld->filled++;
	}
	ld->cur = next;
}

void co_load_reset(struct co_load *ld)
{
	for (int i = 0; i < ld->window; i++)
		step_clear(ld, i);
	memset(ld->sum_expert, 0, sizeof(uint64_t) * n_expert_cells(ld));
	memset(ld->sum_slot, 0, sizeof(uint64_t) * n_slot_cells(ld));
	memset(ld->sum_time, 0, sizeof(uint64_t) * n_time_cells(ld));
	ld->cur = 0;
	ld->filled = 1;
}

int co_load_window_steps(const struct co_load *ld)
{
	return ld->filled;
}

/* Adds one to a per-step counter unless it is saturated; the sum follows what was added. */
static inline void count_one(uint32_t *step, uint64_t *sum)
{
	if (*step != UINT32_MAX) {
		(*step)++;
		(*sum)++;
	}
}

int co_load_record(struct co_load *ld, int layer, int n, const int32_t *expert,
		   const struct co_place_replica *rep)
{
	uint32_t *se, *ss;
	uint64_t *sume, *sums;

	if (layer < 0 || layer >= ld->n_layers || n < 0 || (n > 0 && !expert))
		return -EINVAL;
	/* validate first: a bad batch counts nothing */
	for (int i = 0; i < n; i++) {
		if (expert[i] < 0 || expert[i] >= ld->n_experts)
			return -EINVAL;
		if (rep && (rep[i].worker < 0 || rep[i].worker >= ld->n_workers ||
			    rep[i].slot < 0 || rep[i].slot >= ld->slots[rep[i].worker]))
			return -EINVAL;
	}
	se = ld->step_expert + (size_t)ld->cur * n_expert_cells(ld) +
	     (size_t)layer * ld->n_experts;
	ss = ld->step_slot + (size_t)ld->cur * n_slot_cells(ld) + (size_t)layer * ld->total_slots;
	sume = ld->sum_expert + (size_t)layer * ld->n_experts;
	sums = ld->sum_slot + (size_t)layer * ld->total_slots;
	for (int i = 0; i < n; i++) {
		count_one(&se[expert[i]], &sume[expert[i]]);
		ld->tot_expert[(size_t)layer * ld->n_experts + expert[i]]++;
		if (rep) {
			int g = ld->slot_base[rep[i].worker] + rep[i].slot;
			count_one(&ss[g], &sums[g]);
			ld->tot_worker[(size_t)layer * ld->n_workers + rep[i].worker]++;
		}
	}
	return 0;
}

int co_load_record_time(struct co_load *ld, int worker, int layer, uint64_t ns)
{
	size_t i;

	if (worker < 0 || worker >= ld->n_workers || layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	i = (size_t)worker * ld->n_layers + layer;
	/* saturate rather than wrap; the sum stays the exact sum of the steps */
	if (ns > UINT64_MAX - ld->sum_time[i])
		ns = UINT64_MAX - ld->sum_time[i];
	ld->step_time[(size_t)ld->cur * n_time_cells(ld) + i] += ns;
	ld->sum_time[i] += ns;
	ld->tot_time[i] += FR_MIN(ns, UINT64_MAX - ld->tot_time[i]);
	return 0;
}

int co_load_total_expert_tokens(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	memcpy(ret, ld->tot_expert + (size_t)layer * ld->n_experts,
	       sizeof(uint64_t) * (size_t)ld->n_experts);
	return 0;
}

int co_load_total_worker_tokens(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	memcpy(ret, ld->tot_worker + (size_t)layer * ld->n_workers,
	       sizeof(uint64_t) * (size_t)ld->n_workers);
	return 0;
}

int co_load_total_worker_time(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	for (int w = 0; w < ld->n_workers; w++)
		ret[w] = ld->tot_time[(size_t)w * ld->n_layers + layer];
	return 0;
}

int co_load_carry_totals(struct co_load *dst, const struct co_load *src)
{
	if (dst->n_layers != src->n_layers || dst->n_experts != src->n_experts ||
	    dst->n_workers < src->n_workers)
		return -EINVAL;
	memcpy(dst->tot_expert, src->tot_expert, sizeof(uint64_t) * n_expert_cells(src));
	for (int l = 0; l < src->n_layers; l++)
		for (int w = 0; w < src->n_workers; w++) {
			dst->tot_worker[(size_t)l * dst->n_workers + w] =
				src->tot_worker[(size_t)l * src->n_workers + w];
			dst->tot_time[(size_t)w * dst->n_layers + l] =
				src->tot_time[(size_t)w * src->n_layers + l];
		}
	return 0;
}

int co_load_expert_tokens(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	memcpy(ret, ld->sum_expert + (size_t)layer * ld->n_experts,
	       sizeof(uint64_t) * (size_t)ld->n_experts);
	return 0;
}

int co_load_slot_tokens(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < 0 || layer >= ld->n_layers)
		return -EINVAL;
	memcpy(ret, ld->sum_slot + (size_t)layer * ld->total_slots,
	       sizeof(uint64_t) * (size_t)ld->total_slots);
	return 0;
}

int co_load_worker_tokens(const struct co_load *ld, int layer, uint64_t *ret)
{
	int l0 = layer, l1 = layer + 1;

	if (layer < -1 || layer >= ld->n_layers)
		return -EINVAL;
	if (layer == -1) {
		l0 = 0;
		l1 = ld->n_layers;
	}
	for (int w = 0; w < ld->n_workers; w++) {
		uint64_t x = 0;
		for (int l = l0; l < l1; l++) {
			const uint64_t *row = ld->sum_slot + (size_t)l * ld->total_slots;
			for (int g = ld->slot_base[w]; g < ld->slot_base[w + 1]; g++)
				x += row[g];
		}
		ret[w] = x;
	}
	return 0;
}

int co_load_worker_time(const struct co_load *ld, int layer, uint64_t *ret)
{
	if (layer < -1 || layer >= ld->n_layers)
		return -EINVAL;
	for (int w = 0; w < ld->n_workers; w++) {
		const uint64_t *row = ld->sum_time + (size_t)w * ld->n_layers;
		uint64_t x = 0;
		if (layer >= 0) {
			x = row[layer];
		} else {
			for (int l = 0; l < ld->n_layers; l++)
				x += row[l];
		}
		ret[w] = x;
	}
	return 0;
}

int co_load_balancedness(const struct co_load *ld, int layer, enum co_load_metric m,
			 double *ret)
{
	uint64_t *v;
	double sum = 0, max = 0;
	int n = 0, rc;

	if (m != CO_LOAD_TOKENS && m != CO_LOAD_TIME)
		return -EINVAL;
	v = malloc(sizeof(*v) * (size_t)ld->n_workers);
	if (!v)
		return -ENOMEM;
	rc = m == CO_LOAD_TOKENS ? co_load_worker_tokens(ld, layer, v)
				 : co_load_worker_time(ld, layer, v);
	if (rc < 0)
		goto out;
	for (int w = 0; w < ld->n_workers; w++) {
		if (ld->slots[w] == 0)
			continue;
		sum += (double)v[w];
		max = FR_MAX(max, (double)v[w]);
		n++;
	}
	*ret = max > 0 && n ? sum / n / max : 1.0;
out:
	free(v);
	return rc;
}

void co_load_profile_get(const struct co_load *ld, double *ret)
{
	for (size_t i = 0; i < n_expert_cells(ld); i++)
		ret[i] = (double)ld->sum_expert[i];
}
