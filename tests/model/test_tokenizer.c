/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_tokenizer.c - the byte-level BPE tokenizer against the reference encoder.
 *
 *   test_tokenizer corpus      every line of tests/data/tokenizer/expected.jsonl: our ids ==
 *                              the reference ids (transformers.js, see gen-expected.mjs)
 *   test_tokenizer roundtrip   decode(encode(x)) == x for valid UTF-8; for invalid UTF-8,
 *                              decode gives valid UTF-8 that re-encodes to the same ids
 *   test_tokenizer special     added/special tokens, BOS/EOS, add_special, skip_special
 *   test_tokenizer malformed   broken tokenizer.json files, each refused with a message
 *   test_tokenizer behaviors   Split behaviours, invert, prefix space, merges as pairs
 *   test_tokenizer random      random bytes: deterministic, decode of ids re-encodes equal
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "model/model.h"
#include "tests/model/mini-tokenizer.h"

static int failures;

#define CHECK(cond, ...)                                                                      \
	do {                                                                                  \
		if (!(cond)) {                                                                \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
			fprintf(stderr, __VA_ARGS__);                                         \
			fputc('\n', stderr);                                                  \
			failures++;                                                           \
		}                                                                             \
	} while (0)

static const char *src_dir(void)
{
	const char *s = getenv("FERRY_SRC");
	return s ? s : ".";
}

static struct model_tokenizer *load_ref(void)
{
	char path[4096];
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk;
	snprintf(path, sizeof(path), "%s/tests/data/tokenizer/tokenizer.json", src_dir());
	uint64_t t0 = fr_now_ns();
	if (model_tokenizer_load(path, &tk, &err) < 0) {
		fprintf(stderr, "FAIL: loading %s: %s\n", path, err.msg);
		exit(1);
	}
	printf("loaded %s in %.1f ms\n", path, (double)(fr_now_ns() - t0) / 1e6);
	return tk;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The corpus line's input bytes (text or hex). Heap. */
static char *line_input(json_t *o, size_t *len)
{
	json_t *t = json_object_get(o, "text"), *h = json_object_get(o, "hex");
	if (json_is_string(t)) {
		*len = json_string_length(t);
		char *s = malloc(*len + 1);
		memcpy(s, json_string_value(t), *len + 1);
		return s;
	}
	const char *x = json_string_value(h);
	size_t n = strlen(x) / 2;
	char *s = malloc(n + 1);
	for (size_t i = 0; i < n; i++)
		s[i] = (char)(hexval(x[2 * i]) * 16 + hexval(x[2 * i + 1]));
	s[n] = '\0';
	*len = n;
	return s;
}

static void dump_ids(const char *what, const int32_t *ids, size_t n)
{
	fprintf(stderr, "  %s (%zu):", what, n);
	for (size_t i = 0; i < n && i < 40; i++)
		fprintf(stderr, " %d", ids[i]);
	fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static bool utf8_valid(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n); /* jansson validates UTF-8 */
	bool ok = j != NULL;
	json_decref(j);
	return ok;
}

/* True if text (after U+FFFD repair) has a character PCRE2's Unicode tables (10.42: Unicode
 * 14) call unassigned: the reference (a newer JS engine) may classify it as a letter or
 * symbol, so the pre-tokenizer can legitimately split differently. */
static bool has_unassigned(const struct model_tokenizer *tk, const char *in, size_t len)
{
	static pcre2_code *re;
	int32_t *ids;
	size_t n, tl;
	char *text;
	int ec;
	PCRE2_SIZE eo;
	bool hit;

	if (!re)
		re = pcre2_compile((PCRE2_SPTR) "\\p{Cn}", PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
	if (model_tokenizer_encode(tk, in, len, false, &ids, &n) < 0)
		return false;
	if (model_tokenizer_decode(tk, ids, n, false, &text, &tl) < 0) {
		free(ids);
		return false;
	}
	pcre2_match_data *md = pcre2_match_data_create(2, NULL);
	hit = pcre2_match(re, (PCRE2_SPTR)text, tl, 0, 0, md, NULL) >= 0;
	pcre2_match_data_free(md);
	free(text);
	free(ids);
	return hit;
}

static int run_corpus(bool roundtrip)
{
	struct model_tokenizer *tk = load_ref();
	char path[4096];
	snprintf(path, sizeof(path), "%s/tests/data/tokenizer/expected.jsonl", src_dir());
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0, lineno = 0, n_ok = 0, n_bad = 0, n_unicode = 0, bytes = 0;
	ssize_t got;

	if (!f) {
		fprintf(stderr, "FAIL: %s: %s\n", path, strerror(errno));
		return 1;
	}
	while ((got = getline(&line, &cap, f)) > 0) {
		json_error_t jerr;
		json_t *o = json_loadb(line, (size_t)got, JSON_ALLOW_NUL, &jerr);
		lineno++;
		if (!o) {
			fprintf(stderr, "FAIL: %s:%zu: %s\n", path, lineno, jerr.text);
			n_bad++;
			continue;
		}
		size_t len, n, ne = json_array_size(json_object_get(o, "ids"));
		char *in = line_input(o, &len);
		int32_t *ids, *exp = malloc((ne + 1) * sizeof(*exp));
		bool hex = json_object_get(o, "hex") != NULL;
		for (size_t i = 0; i < ne; i++)
			exp[i] = (int32_t)json_integer_value(json_array_get(json_object_get(o, "ids"), i));
		bytes += len;
		int rc = model_tokenizer_encode(tk, in, len, false, &ids, &n);
		CHECK(rc == 0, "line %zu: encode rc %d", lineno, rc);
		if (rc == 0 && !roundtrip) {
			if (n == ne && memcmp(ids, exp, n * sizeof(*ids)) == 0) {
				n_ok++;
			} else if (has_unassigned(tk, in, len)) {
				n_unicode++;
				fprintf(stderr, "note: line %zu (%s) differs, and has a character unassigned in PCRE2's Unicode tables\n",
					lineno, json_string_value(json_object_get(o, "kind")));
			} else {
				n_bad++;
				if (n_bad <= 10) {
					fprintf(stderr, "FAIL: line %zu (%s): ids differ; input: %.200s\n", lineno,
						json_string_value(json_object_get(o, "kind")),
						hex ? json_string_value(json_object_get(o, "hex")) : in);
					dump_ids("want", exp, ne);
					dump_ids("got ", ids, n);
				}
			}
		}
		if (rc == 0 && roundtrip) {
			char *text;
			size_t tl;
			rc = model_tokenizer_decode(tk, ids, n, false, &text, &tl);
			CHECK(rc == 0, "line %zu: decode rc %d", lineno, rc);
			if (rc == 0 && !hex) {
				if (tl == len && memcmp(text, in, len) == 0)
					n_ok++;
				else {
					n_bad++;
					fprintf(stderr, "FAIL: line %zu: round trip differs: '%.100s' -> '%.100s'\n",
						lineno, in, text);
				}
			} else if (rc == 0) {
				/* invalid input: the decoded text is the U+FFFD-repaired input */
				int32_t *ids2;
				size_t n2;
				bool ok = utf8_valid(text, tl) &&
					  model_tokenizer_encode(tk, text, tl, false, &ids2, &n2) == 0;
				if (ok) {
					ok = n2 == n && memcmp(ids2, ids, n * sizeof(*ids)) == 0;
					free(ids2);
				}
				if (ok)
					n_ok++;
				else {
					n_bad++;
					fprintf(stderr, "FAIL: line %zu: invalid-UTF-8 round trip\n", lineno);
				}
			}
			if (rc == 0)
				free(text);
		}
		if (rc == 0)
			free(ids);
		free(exp);
		free(in);
		json_decref(o);
	}
	free(line);
	fclose(f);
	model_tokenizer_free(tk);
	printf("%s: %zu lines (%zu bytes): %zu ok, %zu failed, %zu differ by Unicode version\n",
	       roundtrip ? "roundtrip" : "corpus", lineno, bytes, n_ok, n_bad, n_unicode);
	if (n_unicode > 5) {
		fprintf(stderr, "FAIL: too many Unicode-version differences\n");
		return 1;
	}
	if (lineno < 2000) {
		fprintf(stderr, "FAIL: corpus has only %zu lines\n", lineno);
		return 1;
	}
	return n_bad || failures ? 1 : 0;
}

static void expect_ids(const struct model_tokenizer *tk, const char *text, bool add_special,
		       const int32_t *want, size_t nwant)
{
	int32_t *ids;
	size_t n;
	int rc = model_tokenizer_encode(tk, text, strlen(text), add_special, &ids, &n);
	CHECK(rc == 0, "encode '%s': rc %d", text, rc);
	if (rc)
		return;
	bool eq = n == nwant && (n == 0 || memcmp(ids, want, n * sizeof(*ids)) == 0);
	CHECK(eq, "encode '%s'", text);
	if (!eq) {
		dump_ids("want", want, nwant);
		dump_ids("got ", ids, n);
	}
	free(ids);
}

static void expect_decode(const struct model_tokenizer *tk, const int32_t *ids, size_t n,
			  bool skip, const char *want)
{
	char *text;
	size_t len;
	int rc = model_tokenizer_decode(tk, ids, n, skip, &text, &len);
	CHECK(rc == 0, "decode rc %d", rc);
	if (rc)
		return;
	CHECK(len == strlen(want) && strcmp(text, want) == 0, "decode: got '%s', want '%s'", text, want);
	free(text);
}

static int run_special(void)
{
	struct model_tokenizer *tk = load_ref();
	const char *bos = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
	char buf[256];

	CHECK(model_tokenizer_vocab_size(tk) == 128815, "vocab size %d", model_tokenizer_vocab_size(tk));
	CHECK(model_tokenizer_bos(tk) == 0, "bos %d", model_tokenizer_bos(tk));
	CHECK(model_tokenizer_eos(tk) == 1, "eos %d", model_tokenizer_eos(tk));

	expect_ids(tk, "Hello, my dog is cute", false, (int32_t[]){ 19923, 14, 1026, 6397, 344, 33125 }, 6);
	expect_ids(tk, "Hello, my dog is cute", true, (int32_t[]){ 0, 19923, 14, 1026, 6397, 344, 33125 }, 7);
	expect_ids(tk, "", false, NULL, 0);
	expect_ids(tk, "", true, (int32_t[]){ 0 }, 1);
	expect_ids(tk, bos, false, (int32_t[]){ 0 }, 1);
	snprintf(buf, sizeof(buf), "%shi<\xEF\xBD\x9CUser\xEF\xBD\x9C>x", bos);
	expect_ids(tk, buf, false, (int32_t[]){ 0, 6366, 128803, 90 }, 4);
	/* a prefix of an added token is ordinary text */
	expect_ids(tk, "<|EOT", false, (int32_t[]){ 30, 94, 39, 4894 }, 4);
	expect_ids(tk, "x<\xEF\xBD\x9CUser\xEF\xBD\x9C> y", false, (int32_t[]){ 90, 128803, 383 }, 3);
	expect_ids(tk, "<|EOT|>", false, (int32_t[]){ 128805 }, 1);

	int32_t ids[] = { 0, 6366, 128803, 90, 1 };
	snprintf(buf, sizeof(buf), "%shi<\xEF\xBD\x9CUser\xEF\xBD\x9C>x<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", bos);
	expect_decode(tk, ids, 5, false, buf);
	/* <｜User｜> is an added token but not special: kept */
	expect_decode(tk, ids, 5, true, "hi<\xEF\xBD\x9CUser\xEF\xBD\x9C>x");

	char *text;
	size_t len;
	int32_t bad[] = { 5, 128815 };
	CHECK(model_tokenizer_decode(tk, bad, 2, false, &text, &len) == -EINVAL, "out-of-range id accepted");
	int32_t neg[] = { -1 };
	CHECK(model_tokenizer_decode(tk, neg, 1, false, &text, &len) == -EINVAL, "negative id accepted");
	int32_t gap[] = { 128500 }; /* a placeholder id: present */
	CHECK(model_tokenizer_decode(tk, gap, 1, false, &text, &len) == 0, "placeholder id refused");
	free(text);
	CHECK(model_tokenizer_decode(tk, NULL, 0, false, &text, &len) == 0 && len == 0 && text[0] == 0,
	      "empty decode");
	free(text);

	/* invalid UTF-8 is repaired exactly like the WHATWG decoder */
	int32_t *a, *b;
	size_t na, nb;
	CHECK(model_tokenizer_encode(tk, "a\xC0\x80z", 4, false, &a, &na) == 0, "encode invalid");
	CHECK(model_tokenizer_encode(tk, "a\xEF\xBF\xBD\xEF\xBF\xBDz", 8, false, &b, &nb) == 0, "encode fffd");
	CHECK(na == nb && memcmp(a, b, na * sizeof(*a)) == 0, "C0 80 is two U+FFFD");
	free(a);
	free(b);
	CHECK(model_tokenizer_encode(tk, "a\xF0\x9F\x98z", 5, false, &a, &na) == 0, "encode truncated");
	CHECK(model_tokenizer_encode(tk, "a\xEF\xBF\xBDz", 5, false, &b, &nb) == 0, "encode fffd");
	CHECK(na == nb && memcmp(a, b, na * sizeof(*a)) == 0, "F0 9F 98 is one U+FFFD");
	free(a);
	free(b);
	/* embedded NUL is a character like any other */
	CHECK(model_tokenizer_encode(tk, "a\0b", 3, false, &a, &na) == 0 && na >= 2, "NUL");
	CHECK(model_tokenizer_decode(tk, a, na, false, &text, &len) == 0 && len == 3 &&
	      memcmp(text, "a\0b", 3) == 0, "NUL round trip");
	free(a);
	free(text);

	model_tokenizer_free(tk);
	printf("special: %d failures\n", failures);
	return failures ? 1 : 0;
}

struct bad_case {
	const char *json;
	int rc;
	const char *msg;        /* must appear in the error */
};

#define VOCAB_AB "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"
#define PRE_OK "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}"

static int run_malformed(void)
{
	static const struct bad_case cases[] = {
		{ "", -EINVAL, "tokenizer.json: line" },
		{ "{", -EINVAL, "tokenizer.json: line 1" },
		{ "[1,2]", -EINVAL, "expected a JSON object" },
		{ "{}", -EINVAL, "'model' is missing" },
		{ "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", -ENOTSUP, "model.type 'WordPiece'" },
		{ "{\"model\":{\"type\":\"Unigram\"}}", -ENOTSUP, "Unigram" },
		{ "{\"model\":{\"vocab\":{}}}", -EINVAL, "model.type" },
		{ "{\"model\":{\"type\":\"BPE\"}}", -EINVAL, "model.vocab" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{}}}", -EINVAL, "model.vocab is empty" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":[1]}}", -EINVAL, "model.vocab" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"}}}", -EINVAL, "token 'a': id must be an integer" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1}}}", -EINVAL, "token 'a'" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999999}}}", -EINVAL, "token 'a'" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0}}}", -EINVAL, "id 0 is used by" },
		{ "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1}}}", -EINVAL, "duplicate" },
		{ "{\"model\":{\"type\":\"BPE\",\"dropout\":0.1," VOCAB_AB "}}", -ENOTSUP, "model.dropout" },
		{ "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true," VOCAB_AB "}}", -ENOTSUP, "byte_fallback" },
		{ "{\"model\":{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\"," VOCAB_AB "}}", -ENOTSUP, "continuing_subword_prefix" },
		{ "{\"model\":{\"type\":\"BPE\",\"ignore_merges\":1," VOCAB_AB "}}", -EINVAL, "model.ignore_merges: expected a boolean" },
		{ "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"zz\"," VOCAB_AB "}}", -EINVAL, "unk_token 'zz'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":{}}}", -EINVAL, "model.merges: expected an array" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[\"ab\"]}}", -EINVAL, "model.merges[0] 'ab'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[\"a b c\"]}}", -EINVAL, "model.merges[0]" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[\"a b\",\"a c\"]}}", -EINVAL, "model.merges[1]: token 'c' is not in the vocab" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[\"b a\"]}}", -EINVAL, "the merged token is not in the vocab" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[[\"a\"]]}}", -EINVAL, "model.merges[0]: expected" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[7]}}", -EINVAL, "model.merges[0]" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}}", -ENOTSUP, "pre_tokenizer: null" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Metaspace\"}}", -ENOTSUP, "pre_tokenizer type 'Metaspace'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[]}}", -ENOTSUP, "needs a ByteLevel" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\"}}", -EINVAL, "pretokenizers" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},{\"type\":\"ByteLevel\"}]}}", -ENOTSUP, "after ByteLevel" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\"}]}}", -EINVAL, "pretokenizers[0]: bad regex '(a'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"},{\"type\":\"ByteLevel\"}]}}", -EINVAL, "behavior: unknown value 'Sideways'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{},\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\"}]}}", -EINVAL, "pattern: expected" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"}},{\"type\":\"ByteLevel\"}]}}", -EINVAL, "behavior: missing" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Isolated\",\"invert\":\"no\"},{\"type\":\"ByteLevel\"}]}}", -EINVAL, "invert: expected a boolean" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":3}}", -EINVAL, "add_prefix_space: expected a boolean" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"normalizer\":{\"type\":\"NFKC\"}}", -ENOTSUP, "normalizer type 'NFKC'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Lowercase\"}]}}", -ENOTSUP, "normalizer.normalizers[0]: normalizer type 'Lowercase'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"normalizer\":7}", -EINVAL, "normalizer: expected an object" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"decoder\":{\"type\":\"WordPiece\"}}", -ENOTSUP, "decoder type 'WordPiece'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"decoder\":{}}", -EINVAL, "decoder.type" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"post_processor\":{\"type\":\"Magic\"}}", -ENOTSUP, "post_processor type 'Magic'" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}]}}", -EINVAL, "special token '<s>' is unknown" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"post_processor\":{\"type\":\"TemplateProcessing\"}}", -EINVAL, "post_processor.single" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":{}}", -EINVAL, "added_tokens: expected an array" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[{\"id\":5}]}", -EINVAL, "added_tokens[0].content" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[{\"content\":\"x\"}]}", -EINVAL, "added_tokens: token 'x': id" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[{\"id\":5,\"content\":\"\"}]}", -EINVAL, "added_tokens[0].content" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[{\"id\":5,\"content\":\"x\",\"special\":\"yes\"}]}", -EINVAL, "added_tokens[0].special: expected a boolean" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[{\"id\":5,\"content\":\"x\",\"single_word\":true}]}", -ENOTSUP, "single_word" },
		{ "{\"model\":{\"type\":\"BPE\"," VOCAB_AB "}," PRE_OK ",\"added_tokens\":[7]}", -EINVAL, "added_tokens[0]: expected an object" },
	};
	int bad = 0;

	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++) {
		struct fr_error err = { { 0 } };
		struct model_tokenizer *tk = NULL;
		int rc = model_tokenizer_parse(cases[i].json, strlen(cases[i].json), &tk, &err);
		if (rc != cases[i].rc || !strstr(err.msg, cases[i].msg)) {
			fprintf(stderr, "FAIL: case %zu: rc %d (want %d), message '%s' (want '%s')\n  json: %s\n",
				i, rc, cases[i].rc, err.msg, cases[i].msg, cases[i].json);
			bad++;
		}
		if (rc == 0)
			model_tokenizer_free(tk);
	}
	/* and a file that does not exist names the path */
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk;
	int rc = model_tokenizer_load("/nonexistent/tokenizer.json", &tk, &err);
	if (rc != -ENOENT || !strstr(err.msg, "/nonexistent/tokenizer.json")) {
		fprintf(stderr, "FAIL: missing file: rc %d '%s'\n", rc, err.msg);
		bad++;
	}
	/* a minimal valid file loads */
	const char *ok = "{\"model\":{\"type\":\"BPE\"," VOCAB_AB ",\"merges\":[[\"a\",\"b\"]]}," PRE_OK "}";
	rc = model_tokenizer_parse(ok, strlen(ok), &tk, &err);
	if (rc != 0) {
		fprintf(stderr, "FAIL: minimal file: %s\n", err.msg);
		bad++;
	} else {
		expect_ids(tk, "abab", false, (int32_t[]){ 2, 2 }, 2);
		CHECK(model_tokenizer_bos(tk) == -1, "no bos");
		expect_ids(tk, "ab", true, (int32_t[]){ 2 }, 1);
		model_tokenizer_free(tk);
	}
	printf("malformed: %zu cases, %d failed\n", FR_ARRAY_SIZE(cases), bad + failures);
	return bad || failures ? 1 : 0;
}

static struct model_tokenizer *mini(const char *pretok, const char *const *merges, int n)
{
	char *js = mini_tokenizer_json(pretok, merges, n);
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk = NULL;
	if (model_tokenizer_parse(js, strlen(js), &tk, &err) < 0) {
		fprintf(stderr, "FAIL: mini tokenizer: %s\n", err.msg);
		failures++;
	}
	free(js);
	return tk;
}

#define SPLIT(re, beh, inv)                                                                  \
	"{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"" re \
	"\"},\"behavior\":\"" beh "\",\"invert\":" inv "},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}"

static int run_behaviors(void)
{
	static const char *const m[] = { "a b", "ab c", "c a", "x x", "xx xx", "\\u0120 a" };
	struct model_tokenizer *tk;

	/* plain GPT-2 regex, no prefix space: merges apply inside a piece */
	tk = mini(NULL, m, 6);
	if (tk) {
		expect_ids(tk, "abc", false, (int32_t[]){ 257 }, 1);
		expect_ids(tk, "ab ab", false, (int32_t[]){ 256, ' ', 256 }, 3); /* "a b" (rank 0) before "Ġ a" (rank 5) */
		expect_ids(tk, "xxxxx", false, (int32_t[]){ 260, 'x' }, 2);
		expect_ids(tk, "<s>a<|x|>", false, (int32_t[]){ 300, 'a', 301 }, 3);
		expect_ids(tk, "<s>a<|x|>", true, (int32_t[]){ 300, 300, 'a', 301 }, 4); /* "<s>" is the BOS */
		expect_decode(tk, (int32_t[]){ 300, 257, 301 }, 3, true, "abc<|x|>");
		model_tokenizer_free(tk);
	}
	/* Split on "c": Isolated keeps "ab","c"; Removed drops it; MergedWithPrevious glues it */
	tk = mini(SPLIT("c", "Isolated", "false"), m, 6);
	if (tk) {
		expect_ids(tk, "abc", false, (int32_t[]){ 256, 'c' }, 2);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("c", "Removed", "false"), m, 6);
	if (tk) {
		expect_ids(tk, "abcab", false, (int32_t[]){ 256, 256 }, 2);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("c", "MergedWithPrevious", "false"), m, 6);
	if (tk) {
		expect_ids(tk, "abcab", false, (int32_t[]){ 257, 256 }, 2);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("c", "MergedWithNext", "false"), m, 6);
	if (tk) {
		/* "ab" | "ca": "c a" merges */
		expect_ids(tk, "abca", false, (int32_t[]){ 256, 258 }, 2);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("x", "Contiguous", "false"), m, 6);
	if (tk) {
		/* "xxxx" is one piece (contiguous delimiters) -> "xxxx" = 260 */
		expect_ids(tk, "axxxxa", false, (int32_t[]){ 'a', 260, 'a' }, 3);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("x", "Isolated", "false"), m, 6);
	if (tk) {
		expect_ids(tk, "axxxxa", false, (int32_t[]){ 'a', 'x', 'x', 'x', 'x', 'a' }, 6);
		model_tokenizer_free(tk);
	}
	tk = mini(SPLIT("ab", "Removed", "true"), m, 6);
	if (tk) {
		/* invert: the matches are the content; the rest is removed */
		expect_ids(tk, "zabzzab", false, (int32_t[]){ 256, 256 }, 2);
		model_tokenizer_free(tk);
	}
	/* a String pattern is literal: "." is a dot, not any character */
	tk = mini("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"String\":\".\"},\"behavior\":\"Removed\"},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}", m, 6);
	if (tk) {
		expect_ids(tk, "ab.c", false, (int32_t[]){ 256, 'c' }, 2);
		model_tokenizer_free(tk);
	}
	/* add_prefix_space: " ab" -> Ġa merges first */
	tk = mini("{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}", m, 6);
	if (tk) {
		expect_ids(tk, "ab", false, (int32_t[]){ ' ', 256 }, 2);
		expect_ids(tk, " ab", false, (int32_t[]){ ' ', 256 }, 2);
		expect_ids(tk, "\nab", false, (int32_t[]){ ' ', '\n', 256 }, 3); /* " \nab": space and newline split */
		model_tokenizer_free(tk);
	}
	/* a long word goes through the heap merge path; it must agree with the short path */
	tk = mini(NULL, m, 6);
	if (tk) {
		int32_t want[40];
		char text[161];
		for (int i = 0; i < 40; i++) {
			memcpy(text + 4 * i, "xxxx", 4);
			want[i] = 260;
		}
		text[160] = '\0';
		expect_ids(tk, text, false, want, 40);
		model_tokenizer_free(tk);
	}
	printf("behaviors: %d failures\n", failures);
	return failures ? 1 : 0;
}

static int run_random(void)
{
	struct model_tokenizer *tk = load_ref();
	uint64_t seed = fr_now_ns(), st = seed;
	printf("random: seed %" PRIu64 "\n", seed);
	for (int it = 0; it < 300; it++) {
		size_t n = 1 + fr_splitmix64(&st) % 300;
		char *buf = malloc(n);
		for (size_t i = 0; i < n; i++) {
			uint64_t r = fr_splitmix64(&st);
			buf[i] = (char)(r % 3 == 0 ? (int)(r >> 8) % 256 : r % 3 == 1 ? 'a' + (int)(r >> 8) % 26 : " \n\t<|>\xE4\xB8\xAD"[(r >> 8) % 9]);
		}
		int32_t *a, *b;
		size_t na, nb;
		char *text;
		size_t tl;
		CHECK(model_tokenizer_encode(tk, buf, n, false, &a, &na) == 0, "encode");
		CHECK(model_tokenizer_encode(tk, buf, n, false, &b, &nb) == 0, "encode again");
		CHECK(na == nb && memcmp(a, b, na * sizeof(*a)) == 0, "deterministic (seed %" PRIu64 ")", seed);
		free(b);
		CHECK(model_tokenizer_decode(tk, a, na, false, &text, &tl) == 0, "decode");
		CHECK(utf8_valid(text, tl), "decoded text is valid UTF-8");
		CHECK(model_tokenizer_encode(tk, text, tl, false, &b, &nb) == 0, "re-encode");
		CHECK(na == nb && memcmp(a, b, na * sizeof(*a)) == 0, "re-encode equal (seed %" PRIu64 ")", seed);
		free(a);
		free(b);
		free(text);
		free(buf);
		if (failures)
			break;
	}
	model_tokenizer_free(tk);
	printf("random: %d failures\n", failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "";
	if (strcmp(what, "corpus") == 0)
		return run_corpus(false);
	if (strcmp(what, "roundtrip") == 0)
		return run_corpus(true);
	if (strcmp(what, "special") == 0)
		return run_special();
	if (strcmp(what, "malformed") == 0)
		return run_malformed();
	if (strcmp(what, "behaviors") == 0)
		return run_behaviors();
	if (strcmp(what, "random") == 0)
		return run_random();
	fprintf(stderr, "usage: test_tokenizer corpus|roundtrip|special|malformed|behaviors|random\n");
	return 2;
}
