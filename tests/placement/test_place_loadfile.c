/* SPDX-License-Identifier: Apache-2.0 */
/* test_place_loadfile.c - load-profile files: good ones, every refusal and its position. */
#include "place_test.h"

static int parse(const char *json, int wl, int we, struct co_load_profile *pr,
		 struct fr_error *err)
{
	fr_error_clear(err);
	return co_load_profile_parse(json, strlen(json), wl, we, pr, err);
}

static void test_good(uint64_t *rng)
{
	struct co_load_profile pr = { 0 };
	struct fr_error err = { { 0 } };

	CHECK(parse("{\"layers\": [[1, 2.5, 0], [3, 0, 1e3]], \"n_layers\": 2, \"n_experts\": 3,"
		    " \"comment\": \"bench run 7\"}", 2, 3, &pr, &err) == 0);
	CHECK(pr.n_layers == 2 && pr.n_experts == 3 && pr.load);
	if (pr.load)
		CHECK(pr.load[1] == 2.5 && pr.load[2] == 0 && pr.load[5] == 1000);
	co_load_profile_fini(&pr);
	CHECK(pr.load == NULL);
	co_load_profile_fini(&pr); /* twice is fine */

	/* a random profile written out and read back from a file */
	int L = t_rand_int(rng, 1, 8), E = t_rand_int(rng, 1, 64);
	char path[] = "/tmp/ferry-loadfile-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	FILE *f = fdopen(fd, "w");
	double *want = t_xmalloc(sizeof(double) * (size_t)L * E);
	fprintf(f, "{\"layers\": [\n");
	for (int l = 0; l < L; l++) {
		fprintf(f, "  [");
		for (int e = 0; e < E; e++) {
			want[l * E + e] = (double)(fr_splitmix64(rng) % 100000) / 8;
			fprintf(f, "%s%.17g", e ? ", " : "", want[l * E + e]);
		}
		fprintf(f, "]%s\n", l + 1 < L ? "," : "");
	}
	fprintf(f, "]}\n");
	fclose(f);
	CHECK(co_load_profile_read(path, L, 0, &pr, &err) == 0);
	if (pr.load) {
		CHECK(pr.n_layers == L && pr.n_experts == E);
		CHECK(memcmp(pr.load, want, sizeof(double) * (size_t)L * E) == 0);
	}
	co_load_profile_fini(&pr);

	/* and wrong sizes named, with the path */
	int rc = co_load_profile_read(path, 0, E + 1, &pr, &err);
	t_expect_err("file expert count", rc, -EINVAL, &err, path, "routed experts");
	unlink(path);
	rc = co_load_profile_read(path, 0, 0, &pr, &err);
	t_expect_err("missing file", rc, -ENOENT, &err, path, NULL);
	free(want);
	printf("ok   good profiles\n");
}

static void test_bad(void)
{
	static const struct {
		const char *json, *n1, *n2;
		int wl, we;
	} cases[] = {
		{ "", "invalid JSON", NULL, 0, 0 },
		{ "{\"layers\": [[1, 2]", "invalid JSON", "line 1", 0, 0 },
		{ "{\"layers\": [[1,\n 2,, 3]]}", "line 2", NULL, 0, 0 },
		{ "[[1, 2]]", "top level is an array", NULL, 0, 0 },
		{ "{}", "no \"layers\"", NULL, 0, 0 },
		{ "{\"layers\": {}}", "\"layers\" is an object", NULL, 0, 0 },
		{ "{\"layers\": []}", "\"layers\" is empty", NULL, 0, 0 },
		{ "{\"layers\": [[]]}", "layers[0] has no experts", NULL, 0, 0 },
		{ "{\"layers\": [[1], 2]}", "layers[1] is an integer", NULL, 0, 0 },
		{ "{\"layers\": [[1, 2], [3, 4], [5]]}", "layers[2] has 1 loads", "layers[0] has 2",
		  0, 0 },
		{ "{\"layers\": [[1, 2], [3, -4]]}", "layers[1][1]", "-4", 0, 0 },
		{ "{\"layers\": [[1, \"2\"]]}", "layers[0][1] is a string", NULL, 0, 0 },
		{ "{\"layers\": [[1, null]]}", "layers[0][1] is null", NULL, 0, 0 },
		{ "{\"layers\": [[1, 1e999]]}", "invalid JSON", NULL, 0, 0 },
		{ "{\"layers\": [[1]], \"extra\": 1}", "unknown key \"extra\"", NULL, 0, 0 },
		{ "{\"layers\": [[1]], \"layers\": [[2]]}", "invalid JSON", "duplicate", 0, 0 },
		{ "{\"layers\": [[1]], \"n_layers\": 2}", "\"n_layers\" is 2", "1 layers", 0, 0 },
		{ "{\"layers\": [[1]], \"n_experts\": 1.5}", "\"n_experts\" is a number", NULL, 0, 0 },
		{ "{\"layers\": [[1]], \"comment\": 3}", "\"comment\" is an integer", NULL, 0, 0 },
		{ "{\"layers\": [[1, 2]]}", "1 layers", "61 MoE layers", 61, 0 },
		{ "{\"layers\": [[1, 2]]}", "2 experts per layer", "128 routed", 0, 128 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++) {
		struct co_load_profile pr = { 0 };
		struct fr_error err = { { 0 } };
		char what[64];
		int rc = parse(cases[i].json, cases[i].wl, cases[i].we, &pr, &err);
		snprintf(what, sizeof(what), "bad profile %zu", i);
		t_expect_err(what, rc, -EINVAL, &err, cases[i].n1, cases[i].n2);
		CHECK(pr.load == NULL);
	}
	struct co_load_profile pr = { 0 };
	struct fr_error err = { { 0 } };
	CHECK(co_load_profile_parse(NULL, 3, 0, 0, &pr, &err) == -EINVAL);
}

int main(void)
{
	uint64_t rng = t_seed();

	test_good(&rng);
	test_bad();
	if (t_failures) {
		fprintf(stderr, "%d failure(s)\n", t_failures);
		return 1;
	}
	printf("all ok\n");
	return 0;
}
