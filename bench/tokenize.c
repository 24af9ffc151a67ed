/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench/tokenize.c - tokenizer encode throughput (MB/s of UTF-8 input) on the test corpus
 * and on large generated English prose and source code, against a ceiling measured in the
 * same run: one memchr pass over the same bytes (what any tokenizer must at least read).
 *
 *   bench_tokenize [TOKENIZER_JSON [CORPUS_JSONL]]
 * Defaults: $FERRY_SRC (or .)/tests/data/tokenizer/{tokenizer.json,expected.jsonl}.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

struct input {
	const char *name;
	char **texts;       /* [n] */
	size_t *lens;       /* [n] */
	size_t n, bytes;
};

static void add_text(struct input *in, char *s, size_t len)
{
	in->texts = realloc(in->texts, (in->n + 1) * sizeof(*in->texts));
	in->lens = realloc(in->lens, (in->n + 1) * sizeof(*in->lens));
	if (!in->texts || !in->lens) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	in->texts[in->n] = s;
	in->lens[in->n++] = len;
	in->bytes += len;
}

static int load_corpus(const char *path, struct input *in)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	if (!f) {
		perror(path);
		return -1;
	}
	while ((got = getline(&line, &cap, f)) > 0) {
		json_t *o = json_loadb(line, (size_t)got, JSON_ALLOW_NUL, NULL);
		json_t *t = json_object_get(o, "text");
		if (json_is_string(t)) {
			size_t n = json_string_length(t);
			char *s = malloc(n + 1);
			memcpy(s, json_string_value(t), n + 1);
			add_text(in, s, n);
		}
		json_decref(o);
	}
	free(line);
	fclose(f);
	return 0;
}

/* ~size bytes of generated English prose or C-like code, split into 4 KiB documents. */
static void gen_text(struct input *in, bool code, size_t size, uint64_t seed)
{
	static const char *const words[] = { "the", "of", "and", "to", "in", "is", "was", "for",
		"that", "with", "as", "by", "model", "expert", "token", "layer", "attention",
		"cluster", "worker", "coordinator", "routing", "balance", "throughput", "latency",
		"however", "between", "through", "because", "important", "different", "system" };
	static const char *const idents[] = { "x", "idx", "buf", "len", "ctx", "n_tokens",
		"hidden", "kv_cache", "ptr", "i", "j", "result", "worker_id", "expert" };
	static const char *const ops[] = { " = ", " + ", " * ", " == ", " != ", "->", ".", " < ", " += " };
	uint64_t st = seed;
	size_t total = 0;

	while (total < size) {
		char *doc = malloc(4096 + 256);
		size_t w = 0;
		while (w < 4096) {
			uint64_t r = fr_splitmix64(&st);
			if (!code) {
				int nw = 5 + (int)(r % 15);
				for (int k = 0; k < nw; k++) {
					const char *word = words[fr_splitmix64(&st) % FR_ARRAY_SIZE(words)];
					if (k)
						w += (size_t)snprintf(doc + w, 4096 + 256 - w, " %s", word);
					else
						w += (size_t)snprintf(doc + w, 4096 + 256 - w, "%c%s", word[0] - 32, word + 1);
				}
				w += (size_t)snprintf(doc + w, 4096 + 256 - w, "%s", r % 7 == 0 ? ".\n\n" : ". ");
			} else {
				int depth = (int)(r % 3);
				for (int k = 0; k < depth; k++)
					doc[w++] = '\t';
				w += (size_t)snprintf(doc + w, 4096 + 256 - w, "%s%s%s%llu;%s\n",
						      r % 5 == 0 ? "if (" : "",
						      idents[(r >> 8) % FR_ARRAY_SIZE(idents)],
						      ops[(r >> 16) % FR_ARRAY_SIZE(ops)],
						      (unsigned long long)((r >> 24) % 100000),
						      r % 5 == 0 ? ") {" : "");
			}
		}
		doc[w] = '\0';
		add_text(in, doc, w);
		total += w;
	}
}

static double secs(uint64_t t0)
{
	return (double)(fr_now_ns() - t0) / 1e9;
}

static volatile size_t sink;

static void bench(const struct model_tokenizer *tk, const struct input *in, int reps)
{
	size_t tokens = 0;
	double best = 1e30, best_scan = 1e30;

	for (int r = 0; r < reps; r++) {
		uint64_t t0 = fr_now_ns();
		size_t nt = 0;
		for (size_t i = 0; i < in->n; i++) {
			int32_t *ids;
			size_t n;
			if (model_tokenizer_encode(tk, in->texts[i], in->lens[i], false, &ids, &n) < 0) {
				fprintf(stderr, "encode failed\n");
				exit(1);
			}
			nt += n;
			free(ids);
		}
		best = FR_MIN(best, secs(t0));
		tokens = nt;

		t0 = fr_now_ns();
		size_t hits = 0;
		for (size_t i = 0; i < in->n; i++) {
			const char *p = in->texts[i], *end = p + in->lens[i];
			while ((p = memchr(p, '\xff', (size_t)(end - p))) != NULL) {
				hits++;
				p++;
			}
		}
		sink = hits;
		best_scan = FR_MIN(best_scan, secs(t0));
	}
	double mbs = (double)in->bytes / best / 1e6, ceil_mbs = (double)in->bytes / best_scan / 1e6;
	printf("| %-22s | %6zu | %9.2f | %8zu | %6.2f | %9.2f | %9.0f | %9.5f |\n", in->name, in->n,
	       (double)in->bytes / 1e6, tokens, (double)in->bytes / (double)(tokens ? tokens : 1), mbs,
	       ceil_mbs, mbs / ceil_mbs);
}

int main(int argc, char **argv)
{
	const char *src = getenv("FERRY_SRC") ? getenv("FERRY_SRC") : ".";
	char tpath[4096], cpath[4096];
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk;
	struct input corpus = { .name = "test corpus, 2.7k docs" }, prose = { .name = "English prose, 4 KiB" },
		     code = { .name = "C-like code, 4 KiB" };

	snprintf(tpath, sizeof(tpath), "%s", argc > 1 ? argv[1] : "");
	snprintf(cpath, sizeof(cpath), "%s", argc > 2 ? argv[2] : "");
	if (argc <= 1)
		snprintf(tpath, sizeof(tpath), "%s/tests/data/tokenizer/tokenizer.json", src);
	if (argc <= 2)
		snprintf(cpath, sizeof(cpath), "%s/tests/data/tokenizer/expected.jsonl", src);

	uint64_t t0 = fr_now_ns();
	if (model_tokenizer_load(tpath, &tk, &err) < 0) {
		fprintf(stderr, "bench_tokenize: %s\n", err.msg);
		return 1;
	}
	double load_s = secs(t0);
	if (load_corpus(cpath, &corpus) < 0)
		return 1;
	gen_text(&prose, false, 8u << 20, 1);
	gen_text(&code, true, 8u << 20, 2);

	printf("tokenizer %s: vocab %d, loaded in %.0f ms; single thread, best of 3\n\n", tpath,
	       model_tokenizer_vocab_size(tk), load_s * 1e3);
	printf("| %-22s | %6s | %9s | %8s | %6s | %9s | %9s | %9s |\n", "input", "docs", "MB", "tokens",
	       "B/tok", "MB/s", "scan MB/s", "ratio");
	printf("|------------------------|--------|-----------|----------|--------|-----------|-----------|-----------|\n");
	bench(tk, &corpus, 3);
	bench(tk, &prose, 3);
	bench(tk, &code, 3);
	printf("\nratio = encode MB/s / memchr-scan MB/s over the same bytes (the read ceiling).\n");

	struct input *all[] = { &corpus, &prose, &code };
	for (size_t k = 0; k < FR_ARRAY_SIZE(all); k++) {
		for (size_t i = 0; i < all[k]->n; i++)
			free(all[k]->texts[i]);
		free(all[k]->texts);
		free(all[k]->lens);
	}
	model_tokenizer_free(tk);
	return 0;
}
