/* SPDX-License-Identifier: Apache-2.0 */
/* cmp_f32 GOT REF VOCAB TOL [GOT_ROW0]: compares raw float32 logit files row by row
 * (REF's rows against GOT's rows from GOT_ROW0 on): max abs diff <= TOL and equal argmax. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"

static int argmax(const float *x, long n)
{
	int b = 0;
	for (long i = 1; i < n; i++)
		if (x[i] > x[b])
			b = (int)i;
	return b;
}

int main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	char *got, *ref;
	size_t gl, rl;
	int64_t vocab, row0 = 0;
	double tol;

	if (argc < 5 || fr_parse_i64(argv[3], 1, 1 << 24, &vocab) < 0 ||
	    fr_parse_double(argv[4], &tol) < 0 || (argc > 5 && fr_parse_i64(argv[5], 0, 1 << 24, &row0) < 0)) {
		fprintf(stderr, "usage: cmp_f32 GOT REF VOCAB TOL [GOT_ROW0]\n");
		return 2;
	}
	if (fr_read_file(argv[1], 1u << 30, &got, &gl, &err) < 0 ||
	    fr_read_file(argv[2], 1u << 30, &ref, &rl, &err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	size_t row_bytes = (size_t)vocab * sizeof(float);
	size_t rows = rl / row_bytes;
	if (rl % row_bytes || gl % row_bytes || gl / row_bytes < rows + (size_t)row0) {
		fprintf(stderr, "sizes: got %zu bytes, ref %zu bytes, vocab %lld, row0 %lld\n", gl, rl,
			(long long)vocab, (long long)row0);
		return 1;
	}
	const float *g = (const float *)got + row0 * vocab, *r = (const float *)ref;
	double worst = 0;
	int bad_argmax = 0;
	for (size_t i = 0; i < rows; i++) {
		for (long j = 0; j < vocab; j++) {
			double d = fabs((double)g[i * vocab + j] - r[i * vocab + j]);
			if (!(d <= worst))
				worst = isnan(d) ? INFINITY : d;
		}
		bad_argmax += argmax(g + i * vocab, vocab) != argmax(r + i * vocab, vocab);
	}
	printf("%zu rows: max abs diff %.3g (tol %.1g), %d argmax mismatches\n", rows, worst, tol,
	       bad_argmax);
	free(got);
	free(ref);
	return worst <= tol && bad_argmax == 0 ? 0 : 1;
}
