/* SPDX-License-Identifier: Apache-2.0 */
/* test_frames.c - dispatch/combine frames: round trips on random content from a printed
 * seed, and every truncation or single-field corruption rejected without a crash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/frames.h"

#define CHECK(c)                                                                            \
	do {                                                                                \
		if (!(c)) {                                                                 \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);        \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

static uint64_t st;

static void test_dispatch(enum fp_dtype dt)
{
	uint32_t nt = 1 + (uint32_t)(fr_splitmix64(&st) % 40), hidden = 1 + (uint32_t)(fr_splitmix64(&st) % 70);
	uint32_t rows[64];
	uint16_t counts[64], slots[64 * 8];
	float weights[64 * 8];
	uint32_t np = 0;
	for (uint32_t t = 0; t < nt; t++) {
		rows[t] = (uint32_t)fr_splitmix64(&st);
		counts[t] = (uint16_t)(fr_splitmix64(&st) % 9);
		for (uint16_t k = 0; k < counts[t]; k++, np++) {
			slots[np] = (uint16_t)(fr_splitmix64(&st) % 32);
			weights[np] = (float)fr_rand_unit(&st);
		}
	}
	size_t es = fp_dtype_size(dt), nv = (size_t)nt * hidden;
	uint8_t *vec = malloc(nv * es);
	for (size_t i = 0; i < nv * es; i++)
		vec[i] = (uint8_t)fr_splitmix64(&st);
	struct fp_dispatch d = { .h = { .dtype = dt, .layer = 7, .micro_batch = 3,
					.step_epoch = 123456, .n_tokens = nt, .hidden = hidden,
					.n_pairs = np },
				 .token_rows = rows, .pair_counts = counts, .slots = slots,
				 .weights = weights, .vectors = vec };
	size_t need, len;
	CHECK(fp_dispatch_size(nt, hidden, np, dt, &need) == 0);
	uint8_t *buf = malloc(need);
	CHECK(fp_dispatch_encode(&d, buf, need - 1, &len) == -ENOBUFS);
	CHECK(fp_dispatch_encode(&d, buf, need, &len) == 0 && len == need);
	struct fp_dispatch_view v;
	struct fr_error err = { { 0 } };
	CHECK(fp_dispatch_decode(buf, len, 32, &v, &err) == 0);
	CHECK(v.h.layer == 7 && v.h.micro_batch == 3 && v.h.step_epoch == 123456 &&
	      v.h.n_tokens == nt && v.h.hidden == hidden && v.h.n_pairs == np && v.h.dtype == dt);
	CHECK((size_t)(v.vectors - buf) % 16 == 0);
	uint32_t p = 0;
	for (uint32_t t = 0; t < nt; t++) {
		CHECK(fp_le32(v.token_rows + 4 * t) == rows[t]);
		CHECK(fp_le16(v.pair_counts + 2 * t) == counts[t]);
	}
	for (p = 0; p < np; p++) {
		CHECK(fp_le16(v.pairs + 8 * p) == slots[p]);
		CHECK(fp_lef32(v.pairs + 8 * p + 4) == weights[p]);
	}
	CHECK(memcmp(v.vectors, vec, nv * es) == 0); /* LE host */
	/* slot bound, truncation, every single-byte flip in the metadata */
	if (np)
		CHECK(fp_dispatch_decode(buf, len, 0, &v, &err) == -EBADMSG);
	for (size_t cut = 0; cut < len; cut += 1 + cut / 4)
		CHECK(fp_dispatch_decode(buf, cut, 32, &v, &err) < 0);
	size_t meta = (size_t)(v.vectors - buf), head = 0;
	/* what a reader of a frame in device memory copies: the bytes before the vectors */
	CHECK(fp_dispatch_head_len(&v.h, &head) == 0 && head == meta);
	for (size_t i = 0; i < meta; i++) {
		uint8_t save = buf[i];
		buf[i] ^= 0x80;
		int rc = fp_dispatch_decode(buf, len, 32, &v, &err);
		if (rc == 0)
			CHECK(v.frame_len <= len);
		buf[i] = save;
	}
	CHECK(fp_combine_decode(buf, len, &(struct fp_combine_view){ 0 }, &err) == -EBADMSG);
	free(buf);
	free(vec);
}

static void test_combine(enum fp_dtype dt)
{
	uint32_t nt = 1 + (uint32_t)(fr_splitmix64(&st) % 50), hidden = 1 + (uint32_t)(fr_splitmix64(&st) % 100);
	uint32_t rows[64];
	for (uint32_t t = 0; t < nt; t++)
		rows[t] = (uint32_t)fr_splitmix64(&st);
	size_t es = fp_dtype_size(dt), nv = (size_t)nt * hidden;
	uint8_t *vec = malloc(nv * es);
	for (size_t i = 0; i < nv * es; i++)
		vec[i] = (uint8_t)fr_splitmix64(&st);
	struct fp_combine c = { .h = { .dtype = dt, .layer = 1, .micro_batch = 2, .step_epoch = 9,
				       .n_tokens = nt, .hidden = hidden },
				.token_rows = rows, .partials = vec };
	size_t need, len;
	CHECK(fp_combine_size(nt, hidden, dt, &need) == 0);
	uint8_t *buf = malloc(need);
	CHECK(fp_combine_encode(&c, buf, need, &len) == 0 && len == need);
	struct fp_combine_view v;
	struct fr_error err = { { 0 } };
	CHECK(fp_combine_decode(buf, len, &v, &err) == 0);
	CHECK(v.h.n_tokens == nt && v.h.hidden == hidden && memcmp(v.partials, vec, nv * es) == 0);
	for (uint32_t t = 0; t < nt; t++)
		CHECK(fp_le32(v.token_rows + 4 * t) == rows[t]);
	/* the head alone (partials written elsewhere): the same bytes before the partials */
	size_t head = 0, hlen = 0, at = (size_t)(v.partials - buf);
	uint8_t *hbuf = malloc(at);
	CHECK(fp_combine_encode_head(&c, hbuf, at, &head, &hlen) == 0 && head == at &&
	      hlen == len && memcmp(hbuf, buf, at) == 0);
	CHECK(fp_combine_encode_head(&c, hbuf, at - 1, &head, &hlen) == -ENOBUFS);
	CHECK(fp_combine_encode(&c, buf, len - 1, &hlen) == -ENOBUFS);
	free(hbuf);
	CHECK(fp_combine_decode(buf, len - 1, &v, &err) == -EMSGSIZE);
	buf[0] ^= 1;
	CHECK(fp_combine_decode(buf, len, &v, &err) == -EBADMSG);
	free(buf);
	free(vec);
}

int main(void)
{
	uint64_t seed = (uint64_t)time(NULL);
	printf("seed %llu\n", (unsigned long long)seed);
	st = seed;
	size_t len;
	CHECK(fp_dispatch_size(FP_MAX_TOKENS + 1, 1, 0, FP_DTYPE_F32, &len) == -EINVAL);
	CHECK(fp_dispatch_size(1, 1, 300, FP_DTYPE_F32, &len) == -EINVAL);
	CHECK(fp_combine_size(1, 1, (enum fp_dtype)9, &len) == -EINVAL);
	CHECK(fp_combine_size(FP_MAX_TOKENS, FP_MAX_HIDDEN, FP_DTYPE_F32, &len) == -EOVERFLOW);
	for (int i = 0; i < 50; i++) {
		test_dispatch(i % 2 ? FP_DTYPE_BF16 : FP_DTYPE_F32);
		test_combine(i % 2 ? FP_DTYPE_BF16 : FP_DTYPE_F32);
	}
	printf("ok\n");
	return 0;
}
