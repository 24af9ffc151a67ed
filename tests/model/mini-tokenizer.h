/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mini-tokenizer.h - a small, valid byte-level BPE tokenizer.json built in memory for tests
 * and the fuzz target: 256 byte tokens (id = byte value), a few merges, two added tokens
 * ("<s>" special, id 300; "<|x|>" not special, id 301) and the given pre_tokenizer.
 */
#ifndef FERRY_TESTS_MINI_TOKENIZER_H
#define FERRY_TESTS_MINI_TOKENIZER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ByteLevel spelling of byte b as a JSON \u escape. */
static inline void mini_bl_escape(int b, char out[12])
{
	int n = 0, c = b;
	if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
		for (int k = 0; k < b; k++)
			if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174))
				n++;
		c = 256 + n;
	}
	snprintf(out, 12, "\\u%04x", c);
}

/* Merges (in ByteLevel spelling, ASCII letters only here): each "ab" pair. The merged tokens
 * get ids 256.. in order. pretok is the pre_tokenizer JSON (NULL: ByteLevel with the GPT-2
 * regex, no prefix space). Returns a heap string (caller frees) or NULL. */
static inline char *mini_tokenizer_json(const char *pretok, const char *const *merges, int n_merges)
{
	size_t cap = 1 << 16;
	char *s = malloc(cap), esc[12];
	size_t w = 0;
	if (!s)
		return NULL;
#define MINI_PUT(...) (w += (size_t)snprintf(s + w, cap - w, __VA_ARGS__))
	MINI_PUT("{\"version\":\"1.0\",\"added_tokens\":["
		 "{\"id\":300,\"content\":\"<s>\",\"special\":true,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"single_word\":false},"
		 "{\"id\":301,\"content\":\"<|x|>\",\"special\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":true,\"single_word\":false}],"
		 "\"normalizer\":null,\"pre_tokenizer\":%s,\"post_processor\":{\"type\":\"ByteLevel\"},"
		 "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{",
		 pretok ? pretok : "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}");
	for (int b = 0; b < 256; b++) {
		mini_bl_escape(b, esc);
		MINI_PUT("%s\"%s\":%d", b ? "," : "", esc, b);
	}
	for (int i = 0; i < n_merges; i++) {
		char tok[64];
		size_t tl = 0;
		for (const char *p = merges[i]; *p; p++)
			if (*p != ' ')
				tok[tl++] = *p;
		tok[tl] = '\0';
		MINI_PUT(",\"%s\":%d", tok, 256 + i);
	}
	MINI_PUT("},\"merges\":[");
	for (int i = 0; i < n_merges; i++)
		MINI_PUT("%s\"%s\"", i ? "," : "", merges[i]);
	MINI_PUT("]}}");
#undef MINI_PUT
	return s;
}

#endif
