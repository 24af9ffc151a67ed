/* SPDX-License-Identifier: Apache-2.0 */
/*
 * golden.c - the single-process engine against the golden references (../shared/golden):
 * every reference sequence's logits within 3e-5 max abs, same argmax at every position,
 * and the same greedy continuation, with 1, 2 and 3 in-process workers and 1, 2 and 3
 * ping-pong micro-batches.
 *
 * Usage: golden [SET ...]   (default: every set under $FERRY_GOLDEN)
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/coordinator.h"

#define TOL 3e-5f

static int failures;

#define CHECK(cond, ...)                                                                    \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
			fprintf(stderr, __VA_ARGS__);                                       \
			fprintf(stderr, "\n");                                              \
			failures++;                                                         \
		}                                                                           \
	} while (0)

static int read_ids(const char *path, int vocab, int32_t **ret, size_t *n)
{
	struct fr_error err = { { 0 } };
	char *txt;
	size_t len;
	if (fr_read_file(path, 1 << 20, &txt, &len, &err) < 0 ||
	    fr_parse_ids(txt, vocab, ret, n, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return -1;
	}
	free(txt);
	return 0;
}

static float *read_f32(const char *path, size_t want_floats)
{
	struct fr_error err = { { 0 } };
	char *buf;
	size_t len;
	if (fr_read_file(path, 64u << 20, &buf, &len, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return NULL;
	}
	if (len != want_floats * sizeof(float)) {
		fprintf(stderr, "%s: %zu bytes, expected %zu\n", path, len, want_floats * 4);
		free(buf);
		return NULL;
	}
	return (float *)buf;
}

/* Compares rows; returns the max abs difference and counts argmax mismatches. */
static float compare(const char *what, const float *got, const float *ref, size_t rows, int vocab)
{
	float worst = 0.0f;
	for (size_t r = 0; r < rows; r++) {
		const float *g = got + r * vocab, *f = ref + r * vocab;
		for (int i = 0; i < vocab; i++) {
			float d = fabsf(g[i] - f[i]);
			if (!(d <= worst))
				worst = isnan(d) ? INFINITY : FR_MAX(worst, d);
		}
		CHECK(co_argmax(g, vocab) == co_argmax(f, vocab), "%s row %zu: argmax %d, ref %d", what,
		      r, co_argmax(g, vocab), co_argmax(f, vocab));
	}
	CHECK(worst <= TOL, "%s: max abs diff %.3g > %.1g", what, worst, TOL);
	return worst;
}

static void run_set(const char *dir, int workers, int mbs)
{
	struct fr_error err = { { 0 } };
	struct model_ckpt *ck = NULL;
	struct model_weights *w = NULL;
	struct moe moe = { 0 };
	struct co_engine *e = NULL;
	char path[4096];
	float worst = 0.0f;

	if (model_ckpt_open(dir, &ck, &err) < 0 ||
	    model_weights_bind(ck, MODEL_BIND_NO_ROUTED, &w, &err) < 0 ||
	    moe_local_create(ck, workers, &moe, &err) < 0) {
		CHECK(0, "%s: %s", dir, err.msg);
		goto out;
	}
	const struct model_config *c = model_ckpt_config(ck);
	struct co_engine_opts eo = { .max_seqs = 2, .max_ctx = 256, .max_batch = 64,
				      .micro_batches = mbs };
	if (co_engine_create(w, moe, &eo, &e, &err) < 0) {
		CHECK(0, "%s: %s", dir, err.msg);
		goto out;
	}

	for (int k = 0;; k++) {
		int32_t *ids, *seq, *pos;
		size_t n;
		snprintf(path, sizeof(path), "%s/ref_tokens_%d.txt", dir, k);
		if (access(path, R_OK) != 0)
			break;
		if (read_ids(path, c->vocab_size, &ids, &n) < 0) {
			CHECK(0, "%s unreadable", path);
			break;
		}
		snprintf(path, sizeof(path), "%s/ref_logits_%d.f32", dir, k);
		float *ref = read_f32(path, n * c->vocab_size);
		float *got = calloc(n * c->vocab_size, sizeof(float));
		seq = calloc(n, sizeof(*seq));
		pos = malloc(n * sizeof(*pos));
		for (size_t i = 0; i < n; i++) {
			pos[i] = (int32_t)i;
			seq[i] = k & 1; /* alternate cache slots: a reused slot must not leak state */
		}
		co_engine_reset_seq(e, seq[0]);
		CHECK(ref != NULL, "%s", path);
		if (ref && co_engine_forward(e, (int)n, ids, seq, pos, NULL, NULL, got) == 0) {
			char what[256];
			snprintf(what, sizeof(what), "%s seq %d (T=%zu, %d workers, %d micro-batches)", dir, k,
				 n, workers, mbs);
			float d = compare(what, got, ref, n, c->vocab_size);
			worst = FR_MAX(worst, d);
		} else if (ref) {
			CHECK(0, "forward failed on %s", path);
		}
		free(ids);
		free(seq);
		free(pos);
		free(ref);
		free(got);
	}

	/* Greedy: prompt in one prefill, then one token at a time through the cache. */
	int32_t *prompt, *gen;
	size_t np, ng;
	snprintf(path, sizeof(path), "%s/ref_greedy_prompt.txt", dir);
	if (read_ids(path, c->vocab_size, &prompt, &np) == 0) {
		snprintf(path, sizeof(path), "%s/ref_greedy_tokens.txt", dir);
		if (read_ids(path, c->vocab_size, &gen, &ng) == 0) {
			snprintf(path, sizeof(path), "%s/ref_greedy_logits.f32", dir);
			float *ref = read_f32(path, ng * c->vocab_size);
			float *got = calloc((np + ng) * c->vocab_size, sizeof(float));
			int32_t seq[512] = { 0 }, pos[512], toks[512];
			for (size_t i = 0; i < np + ng; i++)
				pos[i] = (int32_t)i;
			memcpy(toks, prompt, np * sizeof(*toks));
			co_engine_reset_seq(e, 0);
			int rc = co_engine_forward(e, (int)np, toks, seq, pos, NULL, NULL, got);
			CHECK(rc == 0, "greedy prefill failed");
			for (size_t s = 0; rc == 0 && s < ng; s++) {
				float *row = got + (np - 1 + s) * c->vocab_size;
				toks[np + s] = co_argmax(row, c->vocab_size);
				CHECK(toks[np + s] == gen[s], "%s greedy step %zu: %d, ref %d", dir, s,
				      toks[np + s], gen[s]);
				if (s + 1 < ng)
					rc = co_engine_forward(e, 1, toks + np + s, seq, pos + np + s, NULL, NULL,
							       row + c->vocab_size);
			}
			if (ref) {
				char what[256];
				snprintf(what, sizeof(what), "%s greedy (%d workers)", dir, workers);
				worst = FR_MAX(worst, compare(what, got + (np - 1) * c->vocab_size, ref, ng,
							      c->vocab_size));
			}
			free(ref);
			free(got);
			free(gen);
		}
		free(prompt);
	}
	printf("%s: %d worker(s), %d micro-batch(es), max abs diff %.3g (bar %.0e)\n", dir, workers,
	       mbs, worst, TOL);
out:
	co_engine_destroy(e);
	moe_destroy(&moe);
	model_weights_free(w);
	model_ckpt_close(ck);
}

int main(int argc, char **argv)
{
	const char *root = getenv("FERRY_GOLDEN");
	int n_sets = 0;

	printf("isa=%s threads=%d\n", kn_ops()->name, kn_threads());
	if (argc > 1) {
		for (int i = 1; i < argc; i++, n_sets++) {
			run_set(argv[i], 1, 1);
			run_set(argv[i], 3, 2);
			run_set(argv[i], 2, 3);
		}
	} else {
		if (!root) {
			fprintf(stderr, "FERRY_GOLDEN is not set\n");
			return 1;
		}
		struct dirent **ents;
		int m = scandir(root, &ents, NULL, alphasort);
		if (m < 0) {
			perror(root);
			return 1;
		}
		for (int i = 0; i < m; i++) {
			char dir[4096];
			struct stat st;
			snprintf(dir, sizeof(dir), "%s/%s", root, ents[i]->d_name);
			if (ents[i]->d_name[0] != '.' && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
				run_set(dir, 1, 1);
				run_set(dir, 3, 2);
				run_set(dir, 2, 3);
				n_sets++;
			}
			free(ents[i]);
		}
		free(ents);
	}
	if (n_sets == 0) {
		fprintf(stderr, "no golden sets found\n");
		return 1;
	}
	printf("%d set(s), %d failure(s)\n", n_sets, failures);
	return failures ? 1 : 0;
}
