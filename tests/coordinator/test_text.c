/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_text.c - streamed text (coordinator/text.c) with DeepSeek-V3's tokenizer.
 *   test_text utf8     co_utf8_lossy: WHATWG cases, and == the tokenizer's own input repair
 *                      (decode(encode(bytes))) on random bytes
 *   test_text corpus   every line of tests/data/tokenizer/corpus.jsonl encoded, then
 *                      streamed id by id (and in random chunks): the pieces are whole UTF-8
 *                      characters and concatenate to lossy(decode(all ids))
 *   test_text random   random id sequences (byte tokens splitting characters, invalid
 *                      UTF-8, special tokens skipped or not, unknown ids)
 *   test_text stop     stop strings: split across tokens, overlapping, against a naive
 *                      matcher on random text and random chunking
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/text.h"
#include "model/model.h"
#include "tests/test.h"

static uint64_t g_rng;

static int irand(int n)
{
	return (int)(fr_splitmix64(&g_rng) % (uint64_t)n);
}

static const char *src_dir(void)
{
	const char *s = getenv("FERRY_SRC");
	return s ? s : ".";
}

static struct model_tokenizer *load_tok(void)
{
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk;
	char path[4096];

	snprintf(path, sizeof(path), "%s/tests/data/tokenizer/tokenizer.json", src_dir());
	if (model_tokenizer_load(path, &tk, &err) < 0) {
		fprintf(stderr, "FAIL: %s: %s\n", path, err.msg);
		exit(1);
	}
	return tk;
}

/* ---- a growable byte string ---------------------------------------------------------- */

struct str {
	char *p;
	size_t len, cap;
};

static void str_add(struct str *s, const char *p, size_t n)
{
	if (s->len + n + 1 > s->cap) {
		s->cap = (s->len + n + 1) * 2;
		s->p = realloc(s->p, s->cap);
		if (!s->p)
			abort();
	}
	memcpy(s->p + s->len, p, n);
	s->len += n;
	s->p[s->len] = '\0';
}

/* lossy(decode(ids)) the direct way. */
static char *want_text(const struct model_tokenizer *tk, const int32_t *ids, size_t n,
		       unsigned flags, size_t *len)
{
	char *raw, *text;
	size_t rl;

	if (model_tokenizer_decode(tk, ids, n, flags & CO_DETOK_SKIP_SPECIAL, &raw, &rl) < 0)
		abort();
	if ((flags & CO_DETOK_NO_NUL ? co_utf8_proto : co_utf8_lossy)(raw, rl, &text, len) < 0)
		abort();
	free(raw);
	return text;
}

/* Streams ids through a detokenizer in chunks (chunk 0: random sizes 1..4, sometimes 0)
 * and compares the pieces with want. Returns the number of feeds that held bytes back. */
static int stream_check(const struct model_tokenizer *tk, const int32_t *ids, size_t n,
			unsigned flags, int chunk, const char *what)
{
	struct co_detok *d;
	struct str got = { 0 };
	size_t wl, i = 0;
	int held = 0;
	char *want = want_text(tk, ids, n, flags, &wl);

	CHECK(co_detok_create(tk, flags, &d) == 0);
	while (i < n) {
		size_t k = chunk ? (size_t)chunk : (size_t)irand(5);
		const char *t;
		size_t tl;

		k = FR_MIN(k, n - i);
		CHECK(co_detok_feed(d, ids + i, k, &t, &tl) == 0);
		/* Each piece on its own is whole characters. */
		if (!co_utf8_valid(t, tl) || ((flags & CO_DETOK_NO_NUL) && memchr(t, 0, tl))) {
			fprintf(stderr, "FAIL %s: piece at id %zu is not valid UTF-8\n", what, i);
			t_failures++;
		}
		str_add(&got, t, tl);
		i += k;
		/* Behind the direct decode of the ids so far? Then bytes are held back. */
		size_t pl;
		char *part = want_text(tk, ids, i, flags, &pl);
		if (got.len < pl)
			held++;
		if (got.len > pl || memcmp(got.p, part, got.len)) {
			fprintf(stderr, "FAIL %s: after %zu ids the stream is not a prefix of the "
				"decode\n", what, i);
			t_failures++;
		}
		free(part);
	}
	const char *t;
	size_t tl;
	CHECK(co_detok_flush(d, &t, &tl) == 0);
	str_add(&got, t, tl);
	if (got.len != wl || (wl && memcmp(got.p, want, wl))) {
		fprintf(stderr, "FAIL %s: streamed %zu bytes, decode %zu: '%.80s' vs '%.80s'\n",
			what, got.len, wl, got.p ? got.p : "", want);
		t_failures++;
	}
	co_detok_destroy(d);
	free(got.p);
	free(want);
	return held;
}

/* ---- utf8 -------------------------------------------------------------------------------- */

static void lossy_case(const char *in, size_t n, const char *want, size_t wn)
{
	char *out;
	size_t ol;

	CHECK(co_utf8_lossy(in, n, &out, &ol) == 0);
	if (ol != wn || memcmp(out, want, ol)) {
		fprintf(stderr, "FAIL lossy: %zu bytes -> '%s', want '%s'\n", n, out, want);
		t_failures++;
	}
	CHECK(co_utf8_valid(out, ol));
	CHECK(co_utf8_valid(in, n) == (ol == n && !memcmp(in, out, n)));
	free(out);
}

#define FFFD "\xEF\xBF\xBD"
#define LOSSY(in, want) lossy_case(in, sizeof(in) - 1, want, sizeof(want) - 1)

static int run_utf8(void)
{
	struct model_tokenizer *tk = load_tok();

	LOSSY("", "");
	LOSSY("abc", "abc");
	LOSSY("a\0b", "a\0b"); /* NUL is a character */
	LOSSY("\xE4\xB8\xAD", "\xE4\xB8\xAD");
	LOSSY("\xE4\xB8" "A", FFFD "A");                 /* one maximal subpart */
	LOSSY("\xF0\x9F\x98", FFFD);                     /* truncated at the end */
	LOSSY("\xC0\x80", FFFD FFFD);                     /* overlong: each byte */
	LOSSY("\xED\xA0\x80", FFFD FFFD FFFD);           /* surrogate */
	LOSSY("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD); /* past U+10FFFF */
	LOSSY("\xFF\xFE", FFFD FFFD);
	LOSSY("\x80" "a\xF0\x9F\x98\x80", FFFD "a\xF0\x9F\x98\x80");
	LOSSY("\xE0\x80\xAF", FFFD FFFD FFFD);
	LOSSY("\xF0\x9F" "\xF0\x9F\x98\x80", FFFD "\xF0\x9F\x98\x80");
	{
		char *out;
		size_t ol;
		CHECK(co_utf8_proto("a\0\xE4\xB8", 4, &out, &ol) == 0 && ol == 7 &&
		      !memcmp(out, "a" FFFD FFFD, 7) && out[7] == '\0');
		free(out);
	}

	/* The tokenizer repairs its input the WHATWG way before encoding, and decode gives
	 * the repaired text back: so decode(encode(x)) == lossy(x) for any bytes. */
	for (int r = 0; r < 3000; r++) {
		char in[48];
		size_t n = (size_t)irand(48), ol, dl, nid;
		static const unsigned char pool[] = { 'a', ' ', 0x80, 0xBF, 0xC2, 0xDF, 0xE0,
						      0xE4, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
						      0xA0, 0x9F, 0x90, 0x8F, 0xB8 };
		char *out, *dec;
		int32_t *ids;

		for (size_t i = 0; i < n; i++)
			in[i] = irand(3) ? (char)pool[irand((int)sizeof(pool))] : (char)irand(256);
		CHECK(co_utf8_lossy(in, n, &out, &ol) == 0);
		CHECK(model_tokenizer_encode(tk, in, n, false, &ids, &nid) == 0);
		CHECK(model_tokenizer_decode(tk, ids, nid, false, &dec, &dl) == 0);
		if (ol != dl || memcmp(out, dec, ol)) {
			fprintf(stderr, "FAIL lossy vs tokenizer repair (%zu bytes): %zu vs %zu\n", n,
				ol, dl);
			t_failures++;
		}
		free(out);
		free(dec);
		free(ids);
	}
	model_tokenizer_free(tk);
	printf("utf8: done\n");
	return t_failures != 0;
}

/* ---- corpus ------------------------------------------------------------------------------ */

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int run_corpus(void)
{
	struct model_tokenizer *tk = load_tok();
	char path[4096], *line = NULL;
	size_t cap = 0, lineno = 0, split_lines = 0, n_ids = 0;
	ssize_t got;
	FILE *f;

	snprintf(path, sizeof(path), "%s/tests/data/tokenizer/corpus.jsonl", src_dir());
	f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "FAIL: %s: %s\n", path, strerror(errno));
		return 1;
	}
	while ((got = getline(&line, &cap, f)) > 0) {
		json_error_t jerr;
		json_t *o = json_loadb(line, (size_t)got, JSON_ALLOW_NUL, &jerr);
		json_t *t, *h;
		char *in, what[64];
		size_t len, n;
		int32_t *ids;

		lineno++;
		if (!o) {
			fprintf(stderr, "FAIL: %s:%zu: %s\n", path, lineno, jerr.text);
			t_failures++;
			continue;
		}
		t = json_object_get(o, "text");
		h = json_object_get(o, "hex");
		if (json_is_string(t)) {
			len = json_string_length(t);
			in = malloc(len + 1);
			memcpy(in, json_string_value(t), len + 1);
		} else {
			const char *x = json_string_value(h);
			len = strlen(x) / 2;
			in = malloc(len + 1);
			for (size_t i = 0; i < len; i++)
				in[i] = (char)(hexval(x[2 * i]) * 16 + hexval(x[2 * i + 1]));
		}
		CHECK(model_tokenizer_encode(tk, in, len, lineno % 7 == 0, &ids, &n) == 0);
		snprintf(what, sizeof(what), "corpus line %zu", lineno);
		if (stream_check(tk, ids, n, lineno % 7 == 0 ? CO_DETOK_SKIP_SPECIAL : 0, 1, what))
			split_lines++;
		if (lineno % 5 == 0)
			stream_check(tk, ids, n, 0, 0, what);
		/* Valid text comes back as it went in. */
		if (json_is_string(t) && lineno % 7) {
			size_t wl;
			char *w = want_text(tk, ids, n, false, &wl);
			CHECK(wl == len && !memcmp(w, in, len));
			free(w);
		}
		n_ids += n;
		free(ids);
		free(in);
		json_decref(o);
	}
	free(line);
	fclose(f);
	model_tokenizer_free(tk);
	printf("corpus: %zu lines, %zu ids; %zu lines had characters split across ids\n", lineno,
	       n_ids, split_lines);
	CHECK(lineno >= 2000);
	CHECK(split_lines >= 50); /* the hold-back path is exercised */
	return t_failures != 0;
}

/* ---- random ids ----------------------------------------------------------------------------- */

static int run_random(void)
{
	struct model_tokenizer *tk = load_tok();
	int vocab = model_tokenizer_vocab_size(tk);
	int32_t bytes[256], n_bytes = 0, nul_id = 0;
	int held = 0;

	/* The single-byte tokens (>= 0x80 ones split characters). */
	for (int32_t id = 0; id < vocab && n_bytes < 256; id++) {
		char *t;
		size_t tl;
		if (model_tokenizer_decode(tk, &id, 1, false, &t, &tl) == 0) {
			if (tl == 1 && (unsigned char)t[0] >= 0x80)
				bytes[n_bytes++] = id;
			if (tl == 1 && t[0] == '\0')
				nul_id = id;
			free(t);
		}
	}
	printf("random: %d high single-byte tokens\n", n_bytes);
	CHECK(n_bytes >= 64 && nul_id > 0);
	for (int r = 0; r < 400; r++) {
		int32_t ids[64];
		size_t n = (size_t)irand(64);
		unsigned flags = (irand(2) ? CO_DETOK_SKIP_SPECIAL : 0) |
				 (irand(2) ? CO_DETOK_NO_NUL : 0);

		for (size_t i = 0; i < n; i++) {
			int k = irand(10);
			ids[i] = k < 5 ? bytes[irand(n_bytes)]
			       : k < 6 ? model_tokenizer_bos(tk)
			       : k < 7 ? model_tokenizer_eos(tk)
			       : k < 8 ? nul_id
				       : irand(vocab);
		}
		held += stream_check(tk, ids, n, flags, 1 + irand(3), "random") > 0;
		stream_check(tk, ids, n, flags, 0, "random chunks");
	}
	CHECK(held > 100);

	/* Unknown ids: -EINVAL and nothing taken; skipped with CO_DETOK_SKIP_UNKNOWN. */
	{
		struct co_detok *d;
		const char *t;
		size_t tl;
		int32_t euro[3] = { bytes[0], bytes[1], bytes[2] };
		int32_t bad[2] = { 0, vocab + 5 }, neg = -1;

		/* E2 82 AC (the euro sign) from byte tokens, with garbage in between. */
		for (int i = 0; i < n_bytes; i++) {
			char *s;
			size_t sl;
			model_tokenizer_decode(tk, &bytes[i], 1, false, &s, &sl);
			if ((unsigned char)s[0] == 0xE2)
				euro[0] = bytes[i];
			if ((unsigned char)s[0] == 0x82)
				euro[1] = bytes[i];
			if ((unsigned char)s[0] == 0xAC)
				euro[2] = bytes[i];
			free(s);
		}
		CHECK(co_detok_create(tk, 0, &d) == 0);
		CHECK(co_detok_feed(d, &euro[0], 1, &t, &tl) == 0 && tl == 0);
		CHECK(co_detok_feed(d, bad, 2, &t, &tl) == -EINVAL);
		CHECK(co_detok_feed(d, &neg, 1, &t, &tl) == -EINVAL);
		CHECK(co_detok_feed(d, &euro[1], 1, &t, &tl) == 0 && tl == 0);
		CHECK(co_detok_feed(d, &euro[2], 1, &t, &tl) == 0 && tl == 3 &&
		      !memcmp(t, "\xE2\x82\xAC", 3));
		CHECK(co_detok_feed(d, &euro[0], 1, &t, &tl) == 0 && tl == 0);
		CHECK(co_detok_flush(d, &t, &tl) == 0 && tl == 3 && !memcmp(t, FFFD, 3));
		CHECK(co_detok_flush(d, &t, &tl) == 0 && tl == 0);
		co_detok_destroy(d);

		CHECK(co_detok_create(tk, CO_DETOK_SKIP_UNKNOWN, &d) == 0);
		int32_t mix[4] = { euro[0], vocab + 1, euro[1], euro[2] };
		CHECK(co_detok_feed(d, mix, 4, &t, &tl) == 0 && tl == 3);
		co_detok_destroy(d);
		CHECK(co_detok_create(NULL, 0, &d) == -EINVAL);
		CHECK(co_detok_create(tk, 1u << 7, &d) == -EINVAL);
		co_detok_destroy(NULL);
	}
	/* A long run of ids that all end mid-character keeps the window bounded and right. */
	{
		int32_t ids[600];
		for (int i = 0; i < 600; i++)
			ids[i] = bytes[irand(n_bytes)];
		stream_check(tk, ids, 600, 0, 1, "long split run");
	}
	model_tokenizer_free(tk);
	printf("random: done (%d sequences held bytes back)\n", held);
	return t_failures != 0;
}

/* ---- stop strings ------------------------------------------------------------------------- */

/* Naive: the first end position at which a stop string completes; of those ending there,
 * the longest. Returns the bytes before it, or -1 (no match) with *idx -1. */
static long naive_stop(const char *text, size_t len, char **stops, int n, int *idx)
{
	for (size_t e = 1; e <= len; e++) {
		int best = -1;
		for (int i = 0; i < n; i++) {
			size_t l = strlen(stops[i]);
			if (l <= e && !memcmp(text + e - l, stops[i], l) &&
			    (best < 0 || l > strlen(stops[best])))
				best = i;
		}
		if (best >= 0) {
			*idx = best;
			return (long)(e - strlen(stops[best]));
		}
	}
	*idx = -1;
	return -1;
}

/* Streams text in the given piece lengths; checks output, match and hold-back. */
static void stop_stream(char **stops, int n, const char *text, size_t len, const size_t *cuts,
			int n_cuts, const char *what)
{
	struct fr_error err = { { 0 } };
	struct co_stop *s;
	struct str out = { 0 };
	size_t pos = 0;
	int idx, m = 0;
	long want = naive_stop(text, len, stops, n, &idx);

	CHECK(co_stop_create((const char *const *)stops, NULL, n, &s, &err) == 0);
	for (int c = 0; c <= n_cuts; c++) {
		size_t k = c < n_cuts ? cuts[c] : len - pos;
		const char *t;
		size_t tl;

		k = FR_MIN(k, len - pos);
		m = co_stop_push(s, text + pos, k, &t, &tl);
		CHECK(m == 0 || m == 1);
		str_add(&out, t, tl);
		pos += k;
		/* Nothing is emitted that a later stop string could still claim. */
		if (m == 0) {
			int i2;
			long w2 = naive_stop(text, len, stops, n, &i2);
			if (w2 >= 0 && (long)out.len > w2) {
				fprintf(stderr, "FAIL %s: emitted %zu bytes, the match starts at %ld\n",
					what, out.len, w2);
				t_failures++;
			}
		}
		if (m == 1)
			break;
	}
	if (m == 0) {
		const char *t;
		size_t tl;
		co_stop_flush(s, &t, &tl);
		str_add(&out, t, tl);
	} else {
		const char *t;
		size_t tl;
		/* After a match: nothing more, ever. */
		CHECK(co_stop_push(s, "xyz", 3, &t, &tl) == 1 && tl == 0);
		co_stop_flush(s, &t, &tl);
		CHECK(tl == 0);
	}
	if (want < 0) {
		if (m != 0 || out.len != len || (len && memcmp(out.p, text, len)) ||
		    co_stop_matched(s) != -1) {
			fprintf(stderr, "FAIL %s: no stop string in '%.*s' but m %d, out '%.*s'\n",
				what, (int)len, text, m, (int)out.len, out.p ? out.p : "");
			t_failures++;
		}
	} else if (m != 1 || (long)out.len != want || (want && memcmp(out.p, text, (size_t)want)) ||
		   co_stop_matched(s) != idx) {
		fprintf(stderr, "FAIL %s: '%.*s': want %ld bytes then stop[%d], got m %d, %zu "
			"bytes '%.*s', stop[%d]\n", what, (int)len, text, want, idx, m, out.len,
			(int)out.len, out.p ? out.p : "", co_stop_matched(s));
		t_failures++;
	}
	co_stop_destroy(s);
	free(out.p);
}

static void stop_case(const char *what, const char *text, const char *s0, const char *s1,
		      const char *s2)
{
	char *stops[3] = { (char *)s0, (char *)s1, (char *)s2 };
	int n = s2 ? 3 : s1 ? 2 : 1;
	size_t len = strlen(text), ones[256];

	for (size_t i = 0; i < 256; i++)
		ones[i] = 1;
	stop_stream(stops, n, text, len, NULL, 0, what);              /* whole */
	stop_stream(stops, n, text, len, ones, (int)FR_MIN(len, 256), what); /* byte by byte */
}

static int run_stop(void)
{
	struct model_tokenizer *tk = load_tok();
	struct fr_error err = { { 0 } };
	struct co_stop *s;

	/* Named cases. */
	stop_case("plain", "Hello world. The end", "world", NULL, NULL);
	stop_case("none", "Hello world", "xyz", NULL, NULL);
	stop_case("at start", "STOPafter", "STOP", NULL, NULL);
	stop_case("at end", "before STOP", "STOP", NULL, NULL);
	stop_case("self-overlap", "aaab tail", "aab", NULL, NULL);
	stop_case("overlap same end", "xab", "b", "ab", NULL);
	stop_case("overlap earliest end", "abcde", "cde", "bcd", "abc");
	stop_case("prefix of other", "hello world", "hello world", "hello", NULL);
	stop_case("held then released", "abx abc", "abc", NULL, NULL);
	stop_case("utf8", "na\xC3\xAFve caf\xC3\xA9 \xE2\x82\xAC" "5", "\xC3\xA9 \xE2\x82\xAC",
		  NULL, NULL);
	stop_case("newlines", "line one\n\nline two", "\n\n", NULL, NULL);

	/* Split across tokens: the stop string "\n\nUser:" arrives over several ids. */
	{
		const char *text = "Sure, here it is.\n\nUser: and more text";
		char *stops[1] = { (char *)"\n\nUser:" };
		int32_t *ids;
		size_t n, cuts[64];
		int n_cuts = 0;

		CHECK(model_tokenizer_encode(tk, text, strlen(text), false, &ids, &n) == 0);
		for (size_t i = 0; i < n && n_cuts < 64; i++) {
			char *t;
			size_t tl;
			CHECK(model_tokenizer_decode(tk, &ids[i], 1, false, &t, &tl) == 0);
			cuts[n_cuts++] = tl;
			free(t);
		}
		printf("stop: \"\\n\\nUser:\" over %zu tokens\n", n);
		CHECK(n >= 4);
		stop_stream(stops, 1, text, strlen(text), cuts, n_cuts, "tokens");
		free(ids);
	}

	/* Random: text and stop strings over a small alphabet, random chunking. */
	for (int r = 0; r < 20000; r++) {
		char text[80], sbuf[CO_STOP_MAX][12], *stops[CO_STOP_MAX];
		int n = 1 + irand(irand(4) ? 3 : CO_STOP_MAX);
		int alpha = 2 + irand(3);
		size_t len = (size_t)irand(80), cuts[80];
		int n_cuts = 0;

		for (size_t i = 0; i < len; i++)
			text[i] = (char)('a' + irand(alpha));
		for (int i = 0; i < n; i++) {
			int l = 1 + irand(irand(3) ? 4 : 11);
			for (int k = 0; k < l; k++)
				sbuf[i][k] = (char)('a' + irand(alpha));
			sbuf[i][l] = '\0';
			stops[i] = sbuf[i];
		}
		for (size_t p = 0; p < len && n_cuts < 80; n_cuts++) {
			cuts[n_cuts] = (size_t)irand(6);
			p += cuts[n_cuts];
		}
		stop_stream(stops, n, text, len, cuts, n_cuts, "random");
	}

	/* No stop strings: text passes straight through. */
	{
		const char *t;
		size_t tl;
		CHECK(co_stop_create(NULL, NULL, 0, &s, &err) == 0);
		CHECK(co_stop_push(s, "abc", 3, &t, &tl) == 0 && tl == 3 && !memcmp(t, "abc", 3));
		co_stop_flush(s, &t, &tl);
		CHECK(tl == 0);
		co_stop_destroy(s);
	}
	/* Lengths given explicitly: a stop string with a NUL byte. */
	{
		const char *stops[1] = { "a\0b" };
		size_t lens[1] = { 3 };
		const char *t;
		size_t tl;
		CHECK(co_stop_create(stops, lens, 1, &s, &err) == 0);
		CHECK(co_stop_push(s, "xa", 2, &t, &tl) == 0 && tl == 1);
		CHECK(co_stop_push(s, "\0b", 2, &t, &tl) == 1 && tl == 0);
		CHECK(co_stop_matched(s) == 0);
		co_stop_destroy(s);
	}
	/* Refusals, each naming the string. */
	{
		char big[CO_STOP_MAX_LEN + 2];
		const char *many[CO_STOP_MAX + 1], *one[2] = { "ok", big }, *empty[2] = { "ok", "" };

		memset(big, 'x', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		for (int i = 0; i <= CO_STOP_MAX; i++)
			many[i] = "x";
		s = NULL;
		t_expect_err("17 stops", co_stop_create(many, NULL, CO_STOP_MAX + 1, &s, &err),
			     -EINVAL, &err, "17 stop strings", "at most 16");
		t_expect_err("too long", co_stop_create(one, NULL, 2, &s, &err), -EINVAL, &err,
			     "stop[1] is 257 bytes", "256-byte limit");
		t_expect_err("empty", co_stop_create(empty, NULL, 2, &s, &err), -EINVAL, &err,
			     "stop[1] is empty", NULL);
		CHECK(s == NULL);
		big[CO_STOP_MAX_LEN] = '\0';
		CHECK(co_stop_create(one, NULL, 2, &s, &err) == 0);
		co_stop_destroy(s);
		co_stop_destroy(NULL);
	}
	model_tokenizer_free(tk);
	printf("stop: done\n");
	return t_failures != 0;
}

int main(int argc, char **argv)
{
	g_rng = t_seed();
	if (argc == 2 && !strcmp(argv[1], "utf8"))
		return run_utf8();
	if (argc == 2 && !strcmp(argv[1], "corpus"))
		return run_corpus();
	if (argc == 2 && !strcmp(argv[1], "random"))
		return run_random();
	if (argc == 2 && !strcmp(argv[1], "stop"))
		return run_stop();
	fprintf(stderr, "usage: test_text utf8|corpus|random|stop\n");
	return 2;
}
