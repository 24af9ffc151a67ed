/* SPDX-License-Identifier: Apache-2.0 */
/* test_place_waves.c - co_place_waves(): moves between solved placements split into waves
 * that fit random staging room; every wave serves (each expert kept, the distinct-worker
 * guarantee kept), changes at most the room of each worker, and the last wave is the
 * target; cycles within the room, and a cycle beyond it refused. */
#include "place_test.h"

/* Distinct workers holding (l, e). */
static int distinct(const struct co_placement *p, int l, int e)
{
	int k, n = 0;
	const struct co_place_replica *r = co_place_replicas(p, l, e, &k);
	for (int i = 0; i < k; i++) {
		bool dup = false;
		for (int j = 0; j < i && !dup; j++)
			dup = r[j].worker == r[i].worker;
		n += !dup;
	}
	return n;
}

/* Checks waves[0..n) from `from` to `to` against room and min_distinct. */
static void check_waves(const struct co_placement *from, const struct co_placement *to,
			struct co_placement **waves, int n, const int32_t *room, int md)
{
	const struct co_placement *prev = from;
	struct fr_error err = { { 0 } };

	CHECK(n >= 1);
	for (int i = 0; i < n; i++) {
		const struct co_placement *w = waves[i];
		CHECK(co_place_check(w, 1, &err) == 0);
		for (int l = 0; l < w->n_layers; l++)
			for (int e = 0; e < w->n_experts; e++) {
				int want = FR_MIN(md, FR_MIN(distinct(from, l, e), distinct(to, l, e)));
				CHECK(distinct(w, l, e) >= FR_MAX(1, want));
			}
		for (int x = 0; x < w->n_workers; x++) {
			int changed = 0;
			for (int l = 0; l < w->n_layers; l++)
				for (int g = w->slot_base[x]; g < w->slot_base[x + 1]; g++)
					changed += w->slot_expert[(size_t)l * w->total_slots + g] !=
						   prev->slot_expert[(size_t)l * w->total_slots + g];
			CHECK(room[x] < 0 || changed <= room[x]);
		}
		CHECK(co_place_moves(prev, w) > 0);
		prev = w;
	}
	CHECK(co_place_moves(waves[n - 1], to) == 0);
}

static void free_waves(struct co_placement **w, int n)
{
	for (int i = 0; i < n; i++)
		co_place_destroy(w[i]);
	free(w);
}

static void test_random(uint64_t *rng)
{
	int tried = 0, split = 0;
	for (int it = 0; it < (T_SANITIZED ? 60 : 300); it++) {
		int L = t_rand_int(rng, 1, 4), E = t_rand_int(rng, 2, 32), W = t_rand_int(rng, 2, 6);
		int slots[8], md = t_rand_int(rng, 0, 2);
		int32_t room[8];
		double *a = t_xmalloc(sizeof(double) * (size_t)L * E);
		double *b = t_xmalloc(sizeof(double) * (size_t)L * E);
		struct co_placement *from = NULL, *to = NULL, **waves = NULL;
		struct fr_error err = { { 0 } };
		int n = 0, need = FR_DIV_ROUND_UP(E, W);

		for (int w = 0; w < W; w++) {
			slots[w] = need + t_rand_int(rng, 0, 3);
			room[w] = t_rand_int(rng, 0, 4) == 0 ? -1 : t_rand_int(rng, 2, 6);
		}
		for (int l = 0; l < L; l++) {
			t_zipf_row(rng, E, 0.5 + fr_rand_unit(rng), a + (size_t)l * E);
			t_zipf_row(rng, E, 0.5 + fr_rand_unit(rng), b + (size_t)l * E);
		}
		struct co_place_problem pa = { L, E, W, slots, a }, pb = { L, E, W, slots, b };
		struct co_place_opts o = { .min_distinct = md };
		if (co_place_solve(&pa, &o, NULL, &from, &err) < 0 ||
		    co_place_solve(&pb, &o, NULL, &to, &err) < 0) {
			co_place_destroy(from);
			free(a);
			free(b);
			continue;
		}
		tried++;
		int rc = co_place_waves(from, to, room, md, &waves, &n, &err);
		if (co_place_moves(from, to) == 0) {
			CHECK(rc == 0 && n == 0);
		} else if (rc == 0) {
			check_waves(from, to, waves, n, room, md);
			split += n > 1;
		} else {
			/* only a room of 2+ everywhere may fail, and it says why */
			CHECK(rc == -ENOSPC && strstr(err.msg, "staging room"));
		}
		free_waves(waves, n);
		co_place_destroy(from);
		co_place_destroy(to);
		free(a);
		free(b);
	}
	printf("ok   waves: %d random moves, %d split into several waves\n", tried, split);
	CHECK(split > tried / 4);
}

/* Layer of 2 experts on 2 workers of 1 slot: the swap is a cycle that needs both in one
 * wave (room 1 each is enough); on one worker of 2 slots with room 1 it cannot be done. */
static void test_cycles(void)
{
	struct fr_error err = { { 0 } };
	struct co_placement *a = NULL, *b = NULL, **w = NULL;
	int n = 0;
	int slots2[2] = { 1, 1 }, slots1[1] = { 2 };
	int32_t ta[2] = { 0, 1 }, tb[2] = { 1, 0 }, room1[2] = { 1, 1 };

	CHECK(co_place_from_table(1, 2, 2, slots2, ta, &a, &err) == 0);
	CHECK(co_place_from_table(1, 2, 2, slots2, tb, &b, &err) == 0);
	CHECK(co_place_waves(a, b, room1, 1, &w, &n, &err) == 0 && n == 1);
	if (n == 1)
		check_waves(a, b, w, n, room1, 1);
	free_waves(w, n);
	co_place_destroy(a);
	co_place_destroy(b);
	w = NULL;
	n = 0;
	CHECK(co_place_from_table(1, 2, 1, slots1, ta, &a, &err) == 0);
	CHECK(co_place_from_table(1, 2, 1, slots1, tb, &b, &err) == 0);
	CHECK(co_place_waves(a, b, room1, 1, &w, &n, &err) == -ENOSPC);
	CHECK(strstr(err.msg, "worker 0 has room for 1") != NULL);
	printf("ok   waves: a cycle beyond the room: %s\n", err.msg);
	co_place_destroy(a);
	co_place_destroy(b);
	/* shapes that differ */
	CHECK(co_place_from_table(1, 2, 2, slots2, ta, &a, &err) == 0);
	CHECK(co_place_from_table(1, 2, 1, slots1, tb, &b, &err) == 0);
	CHECK(co_place_waves(a, b, room1, 1, &w, &n, &err) == -EINVAL);
	co_place_destroy(a);
	co_place_destroy(b);
	/* no room at all on a worker whose slots change */
	int32_t room0[2] = { 0, -1 };
	CHECK(co_place_from_table(1, 2, 2, slots2, ta, &a, &err) == 0);
	CHECK(co_place_from_table(1, 2, 2, slots2, tb, &b, &err) == 0);
	CHECK(co_place_waves(a, b, room0, 1, &w, &n, &err) == -ENOSPC);
	CHECK(strstr(err.msg, "worker 0 has no staging room") != NULL);
	co_place_destroy(a);
	co_place_destroy(b);
}

/* A worker joins: one more worker whose slots are all out of service, the rest as it was. */
static void test_add_worker(void)
{
	struct fr_error err = { { 0 } };
	struct co_placement *a = NULL, *b = NULL;
	int slots[2] = { 2, 2 };
	int32_t t[8] = { 0, 1, 2, 3, 3, 2, 1, 0 };

	CHECK(co_place_from_table(2, 4, 2, slots, t, &a, &err) == 0);
	CHECK(co_place_add_worker(a, 3, &b, &err) == 0);
	if (b) {
		CHECK(b->n_workers == 3 && b->slots[2] == 3 && b->total_slots == 7);
		CHECK(co_place_filled(b, 2) == 0 && co_place_filled(b, 0) == 4);
		for (int l = 0; l < 2; l++)
			for (int w = 0; w < 2; w++)
				for (int j = 0; j < 2; j++)
					CHECK(co_place_expert_at(b, l, w, j) ==
					      co_place_expert_at(a, l, w, j));
		CHECK(co_place_check(b, 1, &err) == 0);
	}
	CHECK(co_place_add_worker(a, 0, &b, &err) == -EINVAL);
	co_place_destroy(a);
	co_place_destroy(b);
	printf("ok   add worker: a third worker of 3 empty slots, the others unchanged\n");
}

int main(void)
{
	uint64_t rng = t_seed();

	test_random(&rng);
	test_cycles();
	test_add_worker();
	if (t_failures) {
		fprintf(stderr, "%d failure(s)\n", t_failures);
		return 1;
	}
	printf("all ok\n");
	return 0;
}
