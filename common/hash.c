/* SPDX-License-Identifier: Apache-2.0 */
/* hash.c - FNV-1a 64 and the hash-table hash built on it (see common.h). */
#include <string.h>

#include "common/common.h"

uint64_t fr_fnv1a64(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 0x100000001b3ull;
	return h;
}

uint64_t fr_hash64(const char *s)
{
	uint64_t h = fr_fnv1a64(s, strlen(s));

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}
