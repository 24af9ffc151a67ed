/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_loadfile.c - co_load_profile_parse on arbitrary bytes; any small profile it accepts
 * is then solved (plain, with the distinct-worker guarantee, and again against the first
 * placement) and every result must pass co_place_check(). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "placement/placement.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void solve_and_check(const struct co_load_profile *pr)
{
	struct co_placement *a = NULL, *b = NULL;
	struct fr_error err = { { 0 } };
	int E = pr->n_experts, W = 1 + E % 5, slots[5];

	for (int w = 0; w < W; w++)
		slots[w] = FR_DIV_ROUND_UP(2 * E, W) + w % 2;
	struct co_place_problem pb = { pr->n_layers, E, W, slots, pr->load };
	if (co_place_solve(&pb, NULL, NULL, &a, &err) < 0)
		abort(); /* a valid profile with enough slots must solve */
	if (co_place_check(a, 1, &err) < 0)
		abort();
	struct co_place_opts o = { .min_distinct = W >= 2 ? 2 : 1, .migrate_tolerance = 0.1 };
	if (co_place_solve(&pb, &o, a, &b, &err) < 0)
		abort();
	if (co_place_check(b, o.min_distinct, &err) < 0 || co_place_moves(a, b) < 0)
		abort();
	co_place_destroy(a);
	co_place_destroy(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct co_load_profile pr = { 0 };
	struct fr_error err = { { 0 } };

	if (co_load_profile_parse((const char *)data, size, 0, 0, &pr, &err) < 0) {
		if (!err.msg[0] || pr.load)
			abort(); /* every refusal says why and leaves nothing behind */
		return 0;
	}
	if (pr.n_layers < 1 || pr.n_experts < 1 || !pr.load)
		abort();
	for (size_t i = 0; i < (size_t)pr.n_layers * pr.n_experts; i++)
		if (!isfinite(pr.load[i]) || pr.load[i] < 0)
			abort();
	if (pr.n_layers <= 8 && pr.n_experts <= 64)
		solve_and_check(&pr);
	co_load_profile_fini(&pr);
	return 0;
}
