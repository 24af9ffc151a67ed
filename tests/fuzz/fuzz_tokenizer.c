/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_tokenizer.c - the tokenizer on untrusted bytes, two ways per input:
 *   1. the input as a tokenizer.json (parse; if it loads, encode and decode a short text);
 *   2. the input as text for a small valid tokenizer built once (the mini tokenizer with a
 *      DeepSeek-style Split sequence, no prefix space, so decode(encode(x)) is x with invalid
 *      UTF-8 repaired): encode, decode, re-encode must give the same ids.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tests/model/mini-tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct model_tokenizer *fixed;

static void build_fixed(void)
{
	static const char *const merges[] = { "a b", "ab c", "\\u0120 t", "\\u0120t h", "x x", "1 2" };
	static const char pretok[] =
		"{\"type\":\"Sequence\",\"pretokenizers\":["
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\",\"invert\":false},"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\\u4e00-\\u9fa5]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\\\p{L}\\\\p{M}]+| ?[\\\\p{P}\\\\p{S}]+[\\r\\n]*|\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
		"{\"type\":\"Split\",\"pattern\":{\"String\":\"zz\"},\"behavior\":\"MergedWithNext\",\"invert\":false},"
		"{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}]}";
	char *js = mini_tokenizer_json(pretok, merges, 6);
	struct fr_error err = { { 0 } };
	if (!js || model_tokenizer_parse(js, strlen(js), &fixed, &err) < 0)
		abort();
	free(js);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct model_tokenizer *tk = NULL;
	struct fr_error err = { { 0 } };
	int32_t *ids, *ids2;
	size_t n, n2, len;
	char *text;

	if (!fixed)
		build_fixed();

	if (model_tokenizer_parse((const char *)data, size, &tk, &err) == 0) {
		static const char sample[] = "Hello, world! 12345 \xE4\xB8\xAD\xE6\x96\x87 <s>\n\t x";
		if (model_tokenizer_encode(tk, sample, sizeof(sample) - 1, true, &ids, &n) == 0) {
			if (model_tokenizer_decode(tk, ids, n, false, &text, &len) == 0)
				free(text);
			free(ids);
		}
		if (model_tokenizer_encode(tk, (const char *)data, FR_MIN(size, 4096), false, &ids, &n) == 0)
			free(ids);
		model_tokenizer_free(tk);
	}

	if (model_tokenizer_encode(fixed, (const char *)data, size, size % 2, &ids, &n) != 0)
		abort();
	/* the decoded text (less the BOS) encodes back to the same ids */
	size_t skip = size % 2 && n > 0 ? 1 : 0;
	if (model_tokenizer_decode(fixed, ids + skip, n - skip, false, &text, &len) != 0)
		abort();
	if (model_tokenizer_encode(fixed, text, len, false, &ids2, &n2) != 0)
		abort();
	if (n2 != n - skip || memcmp(ids2, ids + skip, n2 * sizeof(*ids2)) != 0)
		abort();
	free(ids2);
	free(text);
	free(ids);
	return 0;
}
