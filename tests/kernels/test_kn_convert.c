/* SPDX-License-Identifier: Apache-2.0 */
/* test_kn_convert.c - bf16/f16 conversions: exhaustive widening and round trips, rounding to
 * nearest even against an independent reference, NaN and infinities, the array forms. */
#include "kn-test.h"

static uint32_t f2u(float f)
{
	union { float f; uint32_t u; } v = { .f = f };
	return v.u;
}

static float u2f(uint32_t u)
{
	union { uint32_t u; float f; } v = { .u = u };
	return v.f;
}

/* Value of a half as a double, from the IEEE definition. */
static double f16_value(uint16_t h)
{
	int e = (h >> 10) & 31, m = h & 1023;
	double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
	return (h & 0x8000) ? -v : v;
}

/* Reference f32 -> f16 for |f| finite: nearest of the 0x0000..0x7c00 ladder, where 0x7c00
 * stands for 65536 (the first value past the largest half, so overflow rounds to inf),
 * ties to the even code. */
static uint16_t f16_ref(float f)
{
	double a = fabs((double)f);
	int lo = 0, hi = 0x7c00;
	while (hi - lo > 1) {
		int mid = (lo + hi) / 2;
		if (f16_value((uint16_t)mid) <= a)
			lo = mid;
		else
			hi = mid;
	}
	double vlo = f16_value((uint16_t)lo), vhi = hi == 0x7c00 ? 65536.0 : f16_value((uint16_t)hi);
	int pick;
	if (a >= 65536.0)
		pick = 0x7c00;
	else if (a - vlo < vhi - a)
		pick = lo;
	else if (a - vlo > vhi - a)
		pick = hi;
	else
		pick = (lo & 1) ? hi : lo;
	return (uint16_t)(pick | (signbit(f) ? 0x8000 : 0));
}

static uint16_t bf16_ref(float f)
{
	uint32_t u = f2u(f), lower = u >> 16, rem = u & 0xffff;
	if (rem > 0x8000 || (rem == 0x8000 && (lower & 1)))
		lower++;
	return (uint16_t)lower;
}

static void test_bf16(void)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kn_bf16_to_f32((uint16_t)h);
		KT_CHECK(f2u(f) == h << 16, "bf16 %04x widens to %08x", h, f2u(f));
		uint16_t back = kn_f32_to_bf16(f);
		if (isnan(f))
			KT_CHECK((back & 0x7f80) == 0x7f80 && (back & 0x7f) && (back & 0x40) &&
					 (back & 0x8000) == (h & 0x8000),
				 "bf16 NaN %04x -> %04x", h, back);
		else
			KT_CHECK(back == h, "bf16 %04x round trip -> %04x", h, back);
	}
	for (int i = 0; i < 1000000; i++) {
		float f = u2f((uint32_t)fr_splitmix64(&kt_rng));
		if (isnan(f))
			continue;
		KT_CHECK(kn_f32_to_bf16(f) == bf16_ref(f), "bf16(%08x) = %04x, want %04x", f2u(f),
			 kn_f32_to_bf16(f), bf16_ref(f));
	}
	static const struct { uint32_t in; uint16_t out; } cases[] = {
		{ 0x3f808000, 0x3f80 }, /* tie, lower even: down */
		{ 0x3f818000, 0x3f82 }, /* tie, lower odd: up */
		{ 0x3f808001, 0x3f81 }, /* above the tie */
		{ 0x3f807fff, 0x3f80 },
		{ 0x7f7fffff, 0x7f80 }, /* rounds past the largest bf16: inf */
		{ 0xff7fffff, 0xff80 },
		{ 0x7f800000, 0x7f80 },
		{ 0xff800000, 0xff80 },
		{ 0x00000001, 0x0000 }, /* subnormals round like any other value */
		{ 0x80008000, 0x8000 },
		{ 0x00018000, 0x0002 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++)
		KT_CHECK(kn_f32_to_bf16(u2f(cases[i].in)) == cases[i].out, "bf16(%08x) = %04x, want %04x",
			 cases[i].in, kn_f32_to_bf16(u2f(cases[i].in)), cases[i].out);
	uint16_t qn = kn_f32_to_bf16(u2f(0x7f800001)); /* signalling NaN with low payload only */
	KT_CHECK((qn & 0x7fc0) == 0x7fc0, "bf16 of an sNaN: %04x is not a quiet NaN", qn);
}

static void test_f16(void)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float f = kn_f16_to_f32((uint16_t)h);
		double want = f16_value((uint16_t)h);
		if (isnan(want)) {
			KT_CHECK(isnan(f), "f16 %04x should widen to NaN", h);
			uint16_t back = kn_f32_to_f16(f);
			KT_CHECK((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "f16 NaN %04x -> %04x", h,
				 back);
			continue;
		}
		KT_CHECK((double)f == want && !signbit(f) == !signbit(want), "f16 %04x widens to %.9g, want %.9g",
			 h, f, want);
		KT_CHECK(kn_f32_to_f16(f) == h, "f16 %04x round trip -> %04x", h, kn_f32_to_f16(f));
	}
	/* Random floats with exponents around the half range (subnormal to overflow), and
	 * exact ties between neighbouring halves. */
	for (int i = 0; i < 300000; i++) {
		uint32_t u = (uint32_t)fr_splitmix64(&kt_rng);
		uint32_t e = 100 + (uint32_t)kt_randint(0, 45); /* 2^-27 .. 2^18 */
		float f = u2f((u & 0x807fffffu) | (e << 23));
		KT_CHECK(kn_f32_to_f16(f) == f16_ref(f), "f16(%.9g = %08x) = %04x, want %04x", f, f2u(f),
			 kn_f32_to_f16(f), f16_ref(f));
		uint16_t h = (uint16_t)kt_randint(0, 0x7bfe);
		float tie = (float)((f16_value(h) + f16_value((uint16_t)(h + 1))) / 2); /* exact */
		KT_CHECK(kn_f32_to_f16(tie) == f16_ref(tie) && f16_ref(tie) == (h & 1 ? h + 1 : h),
			 "f16 tie %.9g = %04x, want %04x", tie, kn_f32_to_f16(tie), f16_ref(tie));
	}
	static const struct { float in; uint16_t out; } cases[] = {
		{ 65504.0f, 0x7bff },  { 65519.99f, 0x7bff }, { 65520.0f, 0x7c00 }, { 1e6f, 0x7c00 },
		{ -1e30f, 0xfc00 },    { INFINITY, 0x7c00 },  { -INFINITY, 0xfc00 }, { 0.0f, 0x0000 },
		{ -0.0f, 0x8000 },     { 0x1p-24f, 0x0001 },  { 0x1p-25f, 0x0000 }, /* tie: to 0 */
		{ 0x1.000002p-25f, 0x0001 }, { 0x1.8p-24f, 0x0002 }, /* tie: to even */
		{ 0x1p-14f, 0x0400 },  { 1e-10f, 0x0000 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++)
		KT_CHECK(kn_f32_to_f16(cases[i].in) == cases[i].out, "f16(%.9g) = %04x, want %04x",
			 cases[i].in, kn_f32_to_f16(cases[i].in), cases[i].out);
	KT_CHECK(isnan(kn_f16_to_f32(kn_f32_to_f16(NAN))), "f16 NaN round trip");
}

static void test_arrays(void)
{
	enum { N = 1001 };
	static float src[N], back[N];
	static uint16_t h[N];
	for (int i = 0; i < N; i++)
		src[i] = kt_randf() * 100.0f;
	for (int dt = KN_DTYPE_F32; dt <= KN_DTYPE_F16; dt++) {
		uint16_t *buf = malloc(N * 4);
		kn_from_f32(buf, (enum kn_dtype)dt, src, N);
		kn_to_f32(back, buf, (enum kn_dtype)dt, N);
		for (int i = 0; i < N; i++) {
			float want = src[i];
			if (dt == KN_DTYPE_BF16) {
				h[i] = kn_f32_to_bf16(src[i]);
				KT_CHECK(buf[i] == h[i], "kn_from_f32 BF16 [%d]", i);
				want = kn_bf16_to_f32(h[i]);
			} else if (dt == KN_DTYPE_F16) {
				h[i] = kn_f32_to_f16(src[i]);
				KT_CHECK(buf[i] == h[i], "kn_from_f32 F16 [%d]", i);
				want = kn_f16_to_f32(h[i]);
			}
			KT_CHECK(f2u(back[i]) == f2u(want), "kn_to_f32 %s [%d]: %.9g vs %.9g",
				 kn_dtype_name((enum kn_dtype)dt), i, back[i], want);
		}
		free(buf);
	}
	KT_CHECK(kn_dtype_size(KN_DTYPE_F32) == 4 && kn_dtype_size(KN_DTYPE_BF16) == 2 &&
			 kn_dtype_size(KN_DTYPE_F16) == 2,
		 "kn_dtype_size");
	KT_CHECK(strcmp(kn_dtype_name(KN_DTYPE_BF16), "BF16") == 0 &&
			 strcmp(kn_dtype_name(KN_DTYPE_F16), "F16") == 0 &&
			 strcmp(kn_dtype_name(KN_DTYPE_F32), "F32") == 0,
		 "kn_dtype_name");
}

int main(void)
{
	kt_seed("test_kn_convert");
	test_bf16();
	test_f16();
	test_arrays();
	return kt_finish("test_kn_convert");
}
