/* SPDX-License-Identifier: Apache-2.0 */
/* test_place_file.c - placement files (round trips of solved placements, every refusal and
 * its position) and co_place_cap_moves(). */
#include "place_test.h"

static int parse(const char *json, int want_experts, struct co_placement **p,
		 struct fr_error *err)
{
	fr_error_clear(err);
	return co_place_file_parse(json, strlen(json), want_experts, p, err);
}

static bool same(const struct co_placement *a, const struct co_placement *b)
{
	return a->n_layers == b->n_layers && a->n_experts == b->n_experts &&
	       a->n_workers == b->n_workers && co_place_moves(a, b) == 0;
}

static void random_problem(uint64_t *rng, int *L, int *E, int *W, int *slots, double **load)
{
	*L = t_rand_int(rng, 1, 6);
	*E = t_rand_int(rng, 2, 40);
	*W = t_rand_int(rng, 1, 7);
	int need = FR_DIV_ROUND_UP(*E, *W);
	for (int w = 0; w < *W; w++)
		slots[w] = need + t_rand_int(rng, 0, 3);
	*load = t_xmalloc(sizeof(double) * (size_t)*L * *E);
	for (int l = 0; l < *L; l++)
		t_zipf_row(rng, *E, 0.5 + fr_rand_unit(rng), *load + (size_t)l * *E);
}

static void test_round_trip(uint64_t *rng)
{
	for (int it = 0; it < 20; it++) {
		struct co_placement *a = NULL, *b = NULL;
		struct fr_error err = { { 0 } };
		int L, E, W, slots[8];
		double *load;
		char *text = NULL;
		size_t len = 0;

		random_problem(rng, &L, &E, &W, slots, &load);
		struct co_place_problem pb = { L, E, W, slots, load };
		CHECK(co_place_solve(&pb, NULL, NULL, &a, &err) == 0);
		if (!a) {
			free(load);
			continue;
		}
		CHECK(co_place_file_format(a, &text, &len, &err) == 0);
		CHECK(text && strlen(text) == len);
		CHECK(parse(text, E, &b, &err) == 0);
		if (b)
			CHECK(same(a, b) && co_place_check(b, 1, &err) == 0);
		co_place_destroy(b);
		b = NULL;
		/* without "n_experts": the ids in the table */
		if (text) {
			char *k = strstr(text, "\"n_experts\"");
			CHECK(k != NULL);
			if (k) /* blank out `"n_experts": N,` */
				memset(k, ' ', (size_t)(strchr(k, ',') - k + 1));
			CHECK(parse(text, 0, &b, &err) == 0);
			if (b)
				CHECK(same(a, b));
			co_place_destroy(b);
			b = NULL;
		}
		free(text);

		/* through a file */
		char path[] = "/tmp/ferry-placefile-XXXXXX";
		int fd = mkstemp(path);
		CHECK(fd >= 0);
		close(fd);
		CHECK(co_place_file_write(a, path, &err) == 0);
		CHECK(co_place_file_read(path, 0, &b, &err) == 0);
		if (b)
			CHECK(same(a, b));
		co_place_destroy(b);
		b = NULL;
		unlink(path);
		int rc = co_place_file_read(path, 0, &b, &err);
		t_expect_err("missing file", rc, -ENOENT, &err, path, NULL);
		co_place_destroy(a);
		free(load);
	}
	printf("ok   round trips\n");
}

static void test_bad(void)
{
	static const struct {
		const char *json, *n1, *n2;
		int we;
	} cases[] = {
		{ "", "invalid JSON", NULL, 0 },
		{ "[1]", "top level is an array", NULL, 0 },
		{ "{\"slots\": [2], \"layers\": [[0, 1]]}", "no \"n_workers\"", NULL, 0 },
		{ "{\"n_workers\": 1, \"layers\": [[0, 1]]}", "no \"slots\"", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2]}", "no \"layers\"", NULL, 0 },
		{ "{\"n_workers\": 0, \"slots\": [], \"layers\": [[]]}", "\"n_workers\" is 0", NULL, 0 },
		{ "{\"n_workers\": 2, \"slots\": [2], \"layers\": [[0, 1]]}", "\"slots\" has 1",
		  "\"n_workers\" is 2", 0 },
		{ "{\"n_workers\": 2, \"slots\": [2, -1], \"layers\": [[0, 1]]}", "slots[1] is -1",
		  NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [\"2\"], \"layers\": [[0, 1]]}",
		  "slots[0] is a string", NULL, 0 },
		{ "{\"n_workers\": 2, \"slots\": [2, 1], \"layers\": [[0, 1, 2], [0, 1]]}",
		  "layers[1] has 2 slots", "add up to 3", 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": []}", "\"layers\" is empty", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1], 3]}", "layers[1] is an "
		  "integer", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1.5]]}", "layers[0][1] is a "
		  "number", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, -2]]}", "layers[0][1]: expert "
		  "-2 out of range", NULL, 0 },
		{ "{\"n_workers\": 2, \"slots\": [2, 2], \"n_experts\": 3, \"layers\": [[0, 1, 2, 1],"
		  " [0, 1, 2, 200]]}", "layers[1][3] (worker 1 slot 1): expert 200 out of range",
		  "(3 experts)", 0 },
		{ "{\"n_workers\": 2, \"slots\": [2, 2], \"layers\": [[0, 1, 2, 1], [0, 1, 1, -1]]}",
		  "layers[1]: expert 2 is in no slot", NULL, 0 },
		{ "{\"n_workers\": 2, \"slots\": [2, 2], \"n_experts\": 4, \"layers\": [[0, 1, 2, 1]]}",
		  "layers[0]: expert 3 is in no slot", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"n_experts\": 3, \"layers\": [[0, 1]]}",
		  "need at least 3 slots", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[-1, -1]]}", "every slot is empty",
		  NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1]], \"n_layers\": 2}",
		  "\"n_layers\" is 2", "holds 1", 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1]]}", "2 experts per layer",
		  "8 expected", 8 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1]], \"extra\": 1}",
		  "unknown key \"extra\"", NULL, 0 },
		{ "{\"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1]], \"format\": \"x\"}",
		  "\"format\" is \"x\"", NULL, 0 },
		{ "{\"n_workers\": 1, \"n_workers\": 1, \"slots\": [2], \"layers\": [[0, 1]]}",
		  "invalid JSON", "duplicate", 0 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++) {
		struct co_placement *p = NULL;
		struct fr_error err = { { 0 } };
		char what[64];
		int rc = parse(cases[i].json, cases[i].we, &p, &err);
		snprintf(what, sizeof(what), "bad placement file %zu", i);
		t_expect_err(what, rc, -EINVAL, &err, cases[i].n1, cases[i].n2);
		CHECK(p == NULL);
	}
	/* empty slots are fine as long as every expert keeps one */
	struct co_placement *p = NULL;
	struct fr_error err = { { 0 } };
	CHECK(parse("{\"n_workers\": 2, \"slots\": [2, 1], \"layers\": [[0, -1, 1]]}", 2, &p,
		    &err) == 0);
	if (p)
		CHECK(co_place_expert_at(p, 0, 0, 1) == CO_PLACE_EMPTY &&
		      co_place_expert_at(p, 0, 1, 0) == 1);
	co_place_destroy(p);
	printf("ok   refusals\n");
}

static void test_cap(uint64_t *rng)
{
	for (int it = 0; it < 20; it++) {
		struct co_placement *a = NULL, *b = NULL;
		struct co_place_stats *sa, *sb;
		struct fr_error err = { { 0 } };
		int L, E, W, slots[8];
		double *load;

		random_problem(rng, &L, &E, &W, slots, &load);
		struct co_place_problem pb = { L, E, W, slots, NULL };
		CHECK(co_place_solve(&pb, NULL, NULL, &a, &err) == 0); /* uniform */
		pb.load = load;
		CHECK(co_place_solve(&pb, NULL, a, &b, &err) == 0);
		if (!a || !b)
			goto next;
		long full = co_place_moves(a, b), cap = full / 2;
		sa = t_xmalloc(sizeof(*sa) * (size_t)L);
		sb = t_xmalloc(sizeof(*sb) * (size_t)L);
		CHECK(co_place_cap_moves(b, a, load, 1, full) == full); /* under the cap: no-op */
		long left = co_place_cap_moves(b, a, load, 1, cap);
		CHECK(left >= 0 && left <= cap && left == co_place_moves(a, b));
		CHECK(co_place_check(b, 1, &err) == 0);
		/* every layer is either the new layout or the old one */
		co_place_evaluate(a, load, sa);
		co_place_evaluate(b, load, sb);
		CHECK(co_place_cap_moves(b, a, load, 1, 0) == 0 && co_place_moves(a, b) == 0);
		CHECK(co_place_cap_moves(b, a, load, 1, -1) == -EINVAL);
		free(sa);
		free(sb);
next:
		co_place_destroy(a);
		co_place_destroy(b);
		free(load);
	}
	printf("ok   move caps\n");
}

int main(void)
{
	uint64_t rng = t_seed();

	test_round_trip(&rng);
	test_bad();
	test_cap(&rng);
	if (t_failures) {
		fprintf(stderr, "%d failure(s)\n", t_failures);
		return 1;
	}
	printf("all ok\n");
	return 0;
}
