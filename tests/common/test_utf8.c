/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_utf8.c - fr_utf8_decode:
 *   - a table of edge cases with the expected length, code point, or maximal invalid subpart
 *     and truncation (overlong, surrogate, past U+10FFFF, truncated, stray bytes);
 *   - every input of 1 to 3 bytes, and random 4- and 5-byte ones, against an oracle built
 *     the other way round: encode every Unicode scalar value, mark each encoding and its
 *     proper prefixes, then a valid sequence is an encoding and the maximal invalid subpart
 *     is the longest proper prefix of one (at least 1 byte);
 *   - decoding random text with U+FFFD per maximal subpart gives what JS TextDecoder gives
 *     on a few fixed strings.
 */
#include <inttypes.h>

#include "tests/test.h"

/* ---- edge cases -------------------------------------------------------------------------- */

struct utf8_case {
	const char *bytes;
	size_t n;
	size_t len;         /* expected return */
	uint32_t cp;        /* when len > 0 */
	size_t bad;         /* when len == 0 */
	bool truncated;     /* when len == 0 */
};

#define VALID(s, cp) { s, sizeof(s) - 1, sizeof(s) - 1, cp, 0, false }
#define BAD(s, bad) { s, sizeof(s) - 1, 0, 0, bad, false }
#define TRUNC(s) { s, sizeof(s) - 1, 0, 0, sizeof(s) - 1, true }

static const struct utf8_case cases[] = {
	VALID("\x00", 0),
	VALID("A", 'A'),
	VALID("\x7F", 0x7F),
	VALID("\xC2\x80", 0x80),
	VALID("\xC3\xA9", 0xE9),
	VALID("\xDF\xBF", 0x7FF),
	VALID("\xE0\xA0\x80", 0x800),
	VALID("\xE2\x82\xAC", 0x20AC),
	VALID("\xED\x9F\xBF", 0xD7FF),      /* last before the surrogates */
	VALID("\xEE\x80\x80", 0xE000),      /* first after them */
	VALID("\xEF\xBB\xBF", 0xFEFF),      /* a BOM is a character like any other */
	VALID("\xEF\xBF\xBD", 0xFFFD),
	VALID("\xEF\xBF\xBF", 0xFFFF),
	VALID("\xF0\x90\x80\x80", 0x10000),
	VALID("\xF0\x9F\x98\x80", 0x1F600),
	VALID("\xF4\x8F\xBF\xBF", 0x10FFFF),
	{ "A\x80", 2, 1, 'A', 0, false },   /* only the first sequence is decoded */
	{ "\xC3\xA9\xFF", 3, 2, 0xE9, 0, false },
	BAD("\x80", 1),                     /* stray continuation bytes */
	BAD("\xBF\x80", 1),
	BAD("\xC0\x80", 1),                 /* overlong 2-byte: C0, C1 start nothing */
	BAD("\xC1\xBF", 1),
	BAD("\xE0\x80\x80", 1),             /* overlong 3-byte */
	BAD("\xE0\x9F\xBF", 1),
	BAD("\xF0\x80\x80\x80", 1),         /* overlong 4-byte */
	BAD("\xF0\x8F\xBF\xBF", 1),
	BAD("\xED\xA0\x80", 1),             /* surrogates U+D800, U+DFFF */
	BAD("\xED\xBF\xBF", 1),
	BAD("\xF4\x90\x80\x80", 1),         /* U+110000 */
	BAD("\xF5\x80\x80\x80", 1),         /* leads past U+10FFFF */
	BAD("\xF8\x88\x80\x80\x80", 1),     /* old 5- and 6-byte forms */
	BAD("\xFC\x84\x80\x80\x80\x80", 1),
	BAD("\xFE", 1),
	BAD("\xFF", 1),
	BAD("\xC2\x41", 1),                 /* a lead, then not a continuation byte */
	BAD("\xC2\xC2\x80", 1),
	BAD("\xE2\x82\x41", 2),             /* maximal subpart: lead + valid continuation */
	BAD("\xE2\x82\xE2", 2),
	BAD("\xF0\x9F\x98\x41", 3),
	BAD("\xF0\x9F\x41\x80", 2),
	BAD("\xF4\x8F\xC0\x80", 2),
	TRUNC("\xC2"),                      /* ends inside a sequence valid so far */
	TRUNC("\xE2"),
	TRUNC("\xE2\x82"),
	TRUNC("\xE0\xA0"),
	TRUNC("\xF0"),
	TRUNC("\xF0\x9F"),
	TRUNC("\xF0\x9F\x98"),
	TRUNC("\xF4\x8F\xBF"),
};

static void check_case(const struct utf8_case *c)
{
	uint32_t cp = 0xDEADBEEF;
	size_t bad = 99;
	bool trunc = true;
	size_t len = fr_utf8_decode(c->bytes, c->n, &cp, &bad, &trunc);
	bool ok = len == c->len &&
		  (len ? cp == c->cp && bad == 99 && trunc : cp == 0xDEADBEEF &&
		   bad == c->bad && trunc == c->truncated);

	/* The NULL outputs are optional and change nothing. */
	ok = ok && fr_utf8_decode(c->bytes, c->n, NULL, NULL, NULL) == c->len;
	if (!ok) {
		fprintf(stderr, "FAIL case");
		for (size_t i = 0; i < c->n; i++)
			fprintf(stderr, " %02X", (unsigned char)c->bytes[i]);
		fprintf(stderr, ": len %zu cp %#" PRIx32 " bad %zu trunc %d; want len %zu cp %#"
			PRIx32 " bad %zu trunc %d\n", len, cp, bad, trunc, c->len, c->cp, c->bad,
			c->truncated);
		t_failures++;
	}
}

/* ---- the oracle ------------------------------------------------------------------------- */

/* Built from the encodings of all scalar values: pre1/pre2/pre3 mark each proper prefix (of
 * 1, 2, 3 bytes) of an encoding, enc2/enc3 each complete 2- and 3-byte encoding. */
static bool g_pre1[256];
static uint8_t g_pre2[65536 / 8], g_enc2[65536 / 8];
static uint8_t *g_pre3, *g_enc3; /* [(1 << 24) / 8] */

static int encode(uint32_t cp, unsigned char *o)
{
	if (cp < 0x80) {
		o[0] = (unsigned char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (unsigned char)(0xC0 | cp >> 6);
		o[1] = (unsigned char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (unsigned char)(0xE0 | cp >> 12);
		o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (unsigned char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (unsigned char)(0xF0 | cp >> 18);
	o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (unsigned char)(0x80 | (cp & 0x3F));
	return 4;
}

static uint32_t key(const unsigned char *s, int n)
{
	uint32_t k = 0;
	for (int i = 0; i < n; i++)
		k = k << 8 | s[i];
	return k;
}

static void set_bit(uint8_t *bits, uint32_t i)
{
	bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static bool get_bit(const uint8_t *bits, uint32_t i)
{
	return bits[i >> 3] >> (i & 7) & 1;
}

static void oracle_init(void)
{
	g_pre3 = calloc((1u << 24) / 8, 1);
	g_enc3 = calloc((1u << 24) / 8, 1);
	if (!g_pre3 || !g_enc3)
		abort();
	for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
		unsigned char e[4];
		int n;

		if (cp >= 0xD800 && cp <= 0xDFFF)
			continue;
		n = encode(cp, e);
		if (n >= 2)
			g_pre1[e[0]] = true;
		if (n >= 3)
			set_bit(g_pre2, key(e, 2));
		if (n == 4)
			set_bit(g_pre3, key(e, 3));
		if (n == 2)
			set_bit(g_enc2, key(e, 2));
		if (n == 3)
			set_bit(g_enc3, key(e, 3));
	}
}

/* The decode of s[0..n) that the encodings imply. */
static size_t oracle(const unsigned char *s, size_t n, uint32_t *ret_cp, size_t *ret_bad,
		     bool *ret_trunc)
{
	size_t len = 0, p = 0;

	if (s[0] < 0x80)
		len = 1;
	else if (n >= 2 && get_bit(g_enc2, key(s, 2)))
		len = 2;
	else if (n >= 3 && get_bit(g_enc3, key(s, 3)))
		len = 3;
	else if (n >= 4 && get_bit(g_pre3, key(s, 3)) && s[3] >= 0x80 && s[3] <= 0xBF)
		len = 4;
	if (len) {
		static const unsigned char lead_mask[5] = { 0, 0x7F, 0x1F, 0x0F, 0x07 };
		uint32_t cp = s[0] & lead_mask[len];
		unsigned char e[4];

		for (size_t i = 1; i < len; i++)
			cp = cp << 6 | (s[i] & 0x3Fu);
		if (encode(cp, e) != (int)len || memcmp(e, s, len))
			abort(); /* the oracle itself is wrong */
		*ret_cp = cp;
		return len;
	}
	/* The longest proper prefix of an encoding (the set is prefix-closed). */
	if (g_pre1[s[0]]) {
		p = 1;
		if (n >= 2 && get_bit(g_pre2, key(s, 2))) {
			p = 2;
			if (n >= 3 && get_bit(g_pre3, key(s, 3)))
				p = 3;
		}
	}
	*ret_bad = p ? p : 1;
	*ret_trunc = p > 0 && p == n;
	return 0;
}

static long g_checked, g_mismatches;

static void check_oracle(const unsigned char *s, size_t n)
{
	uint32_t cp = 0, ocp = 0;
	size_t bad = 0, obad = 0;
	bool trunc = false, otrunc = false;
	size_t len = fr_utf8_decode(s, n, &cp, &bad, &trunc);
	size_t olen = oracle(s, n, &ocp, &obad, &otrunc);

	g_checked++;
	if (len == olen && (len ? cp == ocp : bad == obad && trunc == otrunc))
		return;
	if (g_mismatches++ < 20) {
		fprintf(stderr, "FAIL oracle");
		for (size_t i = 0; i < n; i++)
			fprintf(stderr, " %02X", s[i]);
		fprintf(stderr, ": len %zu cp %#" PRIx32 " bad %zu trunc %d; oracle len %zu cp %#"
			PRIx32 " bad %zu trunc %d\n", len, cp, bad, trunc, olen, ocp, obad, otrunc);
	}
	t_failures++;
}

/* ---- whole strings ------------------------------------------------------------------------ */

/* s with each maximal invalid subpart replaced by U+FFFD, as TextDecoder decodes it. */
static char *lossy(const char *s, size_t n)
{
	char *o = malloc(3 * n + 1), *w = o;
	size_t i = 0;

	if (!o)
		abort();
	while (i < n) {
		size_t bad = 0, k = fr_utf8_decode(s + i, n - i, NULL, &bad, NULL);
		if (k) {
			memcpy(w, s + i, k);
			w += k;
			i += k;
		} else {
			memcpy(w, FR_UTF8_REPLACEMENT, 3);
			w += 3;
			i += bad;
		}
	}
	*w = '\0';
	return o;
}

int main(void)
{
	/* What JS `new TextDecoder().decode()` gives (checked with node): U+FFFD per maximal
	 * invalid subpart. */
	static const struct {
		const char *in, *want;
	} strings[] = {
		{ "a\x80" "b", "a\xEF\xBF\xBD" "b" },
		{ "\xE2\x82\x41\xE2\x82", "\xEF\xBF\xBD" "A\xEF\xBF\xBD" },
		{ "\xF0\x80\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
		{ "\xED\xA0\x80\xE2\x82\xAC", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xE2\x82\xAC" },
		{ "\xF1\x80\x80\xE1\x80\xC0", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
		{ "\xC0\xAF\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
					      "\xEF\xBF\xBD\xEF\xBF\xBD" },
	};
	uint64_t seed = t_seed();
	unsigned char b[5];

	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++)
		check_case(&cases[i]);
	for (size_t i = 0; i < FR_ARRAY_SIZE(strings); i++) {
		char *got = lossy(strings[i].in, strlen(strings[i].in));
		if (strcmp(got, strings[i].want)) {
			fprintf(stderr, "FAIL string %zu: got \"%s\"\n", i, got);
			t_failures++;
		}
		free(got);
	}

	oracle_init();
	for (uint32_t x = 0; x < 256; x++) {
		b[0] = (unsigned char)x;
		check_oracle(b, 1);
		for (uint32_t y = 0; y < 256; y++) {
			b[1] = (unsigned char)y;
			check_oracle(b, 2);
			for (uint32_t z = 0; z < 256; z++) {
				b[2] = (unsigned char)z;
				check_oracle(b, 3);
			}
		}
	}
	/* 4 and 5 bytes: random, biased towards leads and continuation bytes. */
	for (int round = 0; round < 4000000; round++) {
		uint64_t r = fr_splitmix64(&seed);
		for (int i = 0; i < 5; i++, r >>= 12) {
			unsigned v = (unsigned)(r & 0xFF);
			b[i] = (unsigned char)((r >> 8 & 3) == 0 ? v : i ? 0x80 | (v & 0x3F)
								     : 0xE0 | (v & 0x1F));
		}
		check_oracle(b, 4);
		check_oracle(b, 5);
	}
	free(g_pre3);
	free(g_enc3);
	printf("%zu cases, %zu strings, %ld inputs against the oracle: %s\n",
	       FR_ARRAY_SIZE(cases), FR_ARRAY_SIZE(strings), g_checked,
	       t_failures ? "FAIL" : "ok");
	return t_failures != 0;
}
