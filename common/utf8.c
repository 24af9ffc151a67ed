/* SPDX-License-Identifier: Apache-2.0 */
/* utf8.c - the one UTF-8 decoder (WHATWG / TextDecoder semantics, see common.h). */
#include "common/common.h"

size_t fr_utf8_decode(const void *s, size_t n, uint32_t *ret_cp, size_t *ret_bad,
		      bool *ret_truncated)
{
	const unsigned char *u = s;
	unsigned char c = u[0], lo = 0x80, hi = 0xBF;
	uint32_t cp;
	size_t need;

	if (c < 0x80) {
		if (ret_cp)
			*ret_cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		need = 1;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		need = 2;
		cp = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 3;
		cp = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		if (ret_bad)
			*ret_bad = 1;
		if (ret_truncated)
			*ret_truncated = false;
		return 0;
	}
	for (size_t k = 1; k <= need; k++) {
		if (k >= n || u[k] < lo || u[k] > hi) {
			if (ret_bad)
				*ret_bad = k;
			if (ret_truncated)
				*ret_truncated = k >= n;
			return 0;
		}
		cp = (cp << 6) | (u[k] & 0x3Fu);
		lo = 0x80;
		hi = 0xBF;
	}
	if (ret_cp)
		*ret_cp = cp;
	return need + 1;
}
