/* SPDX-License-Identifier: Apache-2.0 */
/*
 * json.h - what a jansson value is, in words, for the error messages of the JSON file
 * readers (load profiles, placement files, tokenizer.json). Header-only: include it only
 * where jansson is a dependency already.
 */
#ifndef FERRY_COMMON_JSON_H
#define FERRY_COMMON_JSON_H

#include <jansson.h>

/* "an object", "an array", "a string", "an integer", "a number", "a boolean" or "null". */
static inline const char *fr_json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "something else";
}

#endif
