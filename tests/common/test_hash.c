/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_hash.c - fr_fnv1a64 on published FNV-1a 64 vectors, and fr_hash64 on values the
 * per-file copies it replaced (model/safetensors.c, model/ckpt.c) computed.
 */
#include <inttypes.h>

#include "tests/test.h"

static void expect(const char *what, uint64_t got, uint64_t want)
{
	if (got != want) {
		fprintf(stderr, "FAIL %s: %#" PRIx64 ", want %#" PRIx64 "\n", what, got, want);
		t_failures++;
	}
}

int main(void)
{
	static const struct {
		const char *s;
		uint64_t fnv, hash;
	} v[] = {
		{ "", 0xcbf29ce484222325ull, 0xecba3df2c3383c52ull },
		{ "a", 0xaf63dc4c8601ec8cull, 0xed8170de1919a24dull },
		{ "foobar", 0x85944171f73967e8ull, 0x6916ce8b48d4bc55ull },
		{ "model.embed_tokens.weight", 0xa88fd795d5c6d156ull, 0xac92e5ba141c4c31ull },
		{ "model.layers.3.mlp.experts.15.down_proj.weight", 0x760826fce23a2049ull,
		  0xf692d2899c5d7e4full },
	};
	uint64_t seed = t_seed();

	for (size_t i = 0; i < FR_ARRAY_SIZE(v); i++) {
		expect(v[i].s, fr_fnv1a64(v[i].s, strlen(v[i].s)), v[i].fnv);
		expect(v[i].s, fr_hash64(v[i].s), v[i].hash);
	}

	/* Bytes past a NUL count for fr_fnv1a64; changing any one byte changes the hash (each
	 * step is a bijection of the state). */
	expect("a\\0b", fr_fnv1a64("a\0b", 3), 0xe5d29919042666b2ull);
	unsigned char buf[64];
	for (int round = 0; round < 1000; round++) {
		size_t n = 1 + fr_splitmix64(&seed) % sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = (unsigned char)fr_splitmix64(&seed);
		uint64_t h = fr_fnv1a64(buf, n);
		size_t at = fr_splitmix64(&seed) % n;
		buf[at] ^= (unsigned char)(1 + fr_splitmix64(&seed) % 255);
		CHECK(fr_fnv1a64(buf, n) != h);
	}
	printf("%s\n", t_failures ? "FAIL" : "ok");
	return t_failures != 0;
}
