/* SPDX-License-Identifier: Apache-2.0 */
/* test_safetensors.c - safetensors header validation: a good image, name lookup at scale,
 * a corpus of bad images (built here) each refused naming the problem, files on disk, and
 * the golden shards. */
#include <inttypes.h>

#include "model_test.h"

static uint64_t rng;

static void test_good(void)
{
	static const char hdr[] =
		"{\"__metadata__\":{\"format\":\"pt\"},"
		"\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
		"\"b.weight\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
		"\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[32,34]},"
		"\"empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[34,34]},"
		"\"d\":{\"dtype\":\"F32\",\"shape\":[1,1,2,1],\"data_offsets\":[36,44]}}   ";
	struct model_st_file *f = NULL;
	struct fr_error err = { { 0 } };
	const struct model_tensor *t;
	const uint8_t *data;
	size_t len;
	uint8_t *img = t_st_image(hdr, 48, &rng, &len);
	int rc;

	rc = model_st_open_buffer(img, len, "good.st", &f, &err);
	if (rc < 0)
		fprintf(stderr, "good: %s\n", err.msg);
	CHECK(rc == 0);
	if (rc < 0)
		goto out;
	data = img + 8 + strlen(hdr);
	CHECK(model_st_count(f) == 5);
	t = model_st_find(f, "a");
	CHECK(t && t->dtype == KN_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 2 &&
	      t->shape[1] == 3 && t->nbytes == 24 && t->data == data && !strcmp(t->path, "good.st"));
	t = model_st_find(f, "b.weight");
	CHECK(t && t->dtype == KN_DTYPE_BF16 && t->ndim == 1 && t->shape[0] == 4 &&
	      t->nbytes == 8 && t->data == data + 24 && !strcmp(t->name, "b.weight"));
	t = model_st_find(f, "c");
	CHECK(t && t->dtype == KN_DTYPE_F16 && t->ndim == 0 && t->nbytes == 2 && t->data == data + 32);
	t = model_st_find(f, "empty");
	CHECK(t && t->ndim == 2 && t->shape[0] == 0 && t->shape[1] == 5 && t->nbytes == 0);
	t = model_st_find(f, "d");
	CHECK(t && t->ndim == 4 && t->shape[2] == 2 && t->nbytes == 8 && t->data == data + 36);
	CHECK(model_st_find(f, "b") == NULL && model_st_find(f, "") == NULL);
	CHECK(model_st_find(f, "__metadata__") == NULL);
	CHECK(model_st_tensor(f, 0) && !strcmp(model_st_tensor(f, 0)->name, "a"));
	CHECK(model_st_tensor(f, 5) == NULL);
	for (size_t i = 0; i < model_st_count(f); i++)
		CHECK(model_st_find(f, model_st_tensor(f, i)->name) == model_st_tensor(f, i));
	/* Data bytes are the random ones we wrote. */
	CHECK(!memcmp(model_st_find(f, "a")->data, data, 24));
out:
	model_st_close(f);
	model_st_close(NULL);
	free(img);

	/* An empty header object is a valid, empty file. */
	img = t_st_image("{}", 0, &rng, &len);
	f = NULL;
	CHECK(model_st_open_buffer(img, len, NULL, &f, &err) == 0);
	CHECK(model_st_count(f) == 0 && model_st_find(f, "a") == NULL);
	model_st_close(f);
	free(img);
}

/* Tens of thousands of tensors: every one must be found by name, quickly. */
static void test_many(void)
{
	enum { N = 40000 };
	size_t cap = (size_t)N * 160 + 64, n = 0, len;
	char *hdr = malloc(cap);
	struct model_st_file *f = NULL;
	struct fr_error err = { { 0 } };
	const uint8_t *data;
	uint8_t *img;
	uint64_t t0;
	int rc;

	n += (size_t)snprintf(hdr + n, cap - n, "{");
	for (int i = 0; i < N; i++)
		n += (size_t)snprintf(hdr + n, cap - n,
				      "%s\"model.layers.%d.mlp.experts.%d.w\":{\"dtype\":\"BF16\","
				      "\"shape\":[1,2],\"data_offsets\":[%d,%d]}",
				      i ? "," : "", i / 64, i % 64, 4 * i, 4 * i + 4);
	snprintf(hdr + n, cap - n, "}");
	img = t_st_image(hdr, (size_t)N * 4, &rng, &len);
	rc = model_st_open_buffer(img, len, "many.st", &f, &err);
	if (rc < 0)
		fprintf(stderr, "many: %s\n", err.msg);
	CHECK(rc == 0 && model_st_count(f) == N);
	data = img + 8 + strlen(hdr);
	t0 = fr_now_ns();
	for (int rep = 0; rep < 10 && f; rep++) {
		for (int i = 0; i < N; i++) {
			char name[96];
			const struct model_tensor *t;
			snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.%d.w", i / 64, i % 64);
			t = model_st_find(f, name);
			if (!t || t->data != data + 4 * i) {
				fprintf(stderr, "many: %s not found or wrong\n", name);
				t_failures++;
				rep = 10;
				break;
			}
		}
	}
	printf("many: %d x 10 lookups in %.1f ms\n", N, (double)(fr_now_ns() - t0) / 1e6);
	CHECK(fr_now_ns() - t0 < 10000000000ull); /* a linear search would take minutes */
	model_st_close(f);
	free(img);
	free(hdr);
}

#define T(name, dt, shape, b, e) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static const struct bad {
	const char *what;
	const char *hdr;
	size_t data_len;
	int rc;
	const char *n1, *n2;
} bad[] = {
	{ "not JSON", "{abc", 0, -EINVAL, "not valid JSON", NULL },
	{ "empty header", "", 16, -EINVAL, "not valid JSON", NULL },
	{ "header is an array", "[1, 2]", 0, -EINVAL, "not a JSON object", NULL },
	{ "header is a string", "\"x\"", 0, -EINVAL, "not valid JSON", NULL },
	{ "trailing junk", "{} x", 0, -EINVAL, "not valid JSON", NULL },
	{ "overlapping offsets", "{" T("a", "F32", "[4]", 0, 16) "," T("b", "F32", "[4]", 8, 24) "}",
	  24, -EINVAL, "overlapping", "\"b\"" },
	{ "identical offsets", "{" T("a", "F32", "[4]", 0, 16) "," T("b", "F32", "[4]", 0, 16) "}",
	  16, -EINVAL, "overlapping", NULL },
	{ "offsets past end", "{" T("a", "F32", "[6]", 0, 24) "}", 16, -EINVAL,
	  "past the end of the data section", "\"a\"" },
	{ "begin > end", "{" T("a", "F32", "[0]", 8, 0) "}", 16, -EINVAL, "begin > end", "\"a\"" },
	{ "dtype/shape mismatch", "{" T("w", "F32", "[2,3]", 0, 20) "}", 24, -EINVAL,
	  "24 bytes but data_offsets span 20", "\"w\"" },
	{ "bf16 size mismatch", "{" T("w", "BF16", "[2,3]", 0, 24) "}", 24, -EINVAL,
	  "12 bytes", "\"w\"" },
	{ "duplicate names", "{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8,
	  -EINVAL, "duplicate", NULL },
	{ "unknown dtype", "{" T("q", "Q4_K", "[1]", 0, 4) "}", 4, -EINVAL, "unknown dtype",
	  "\"q\"" },
	{ "unsupported dtype I64", "{" T("ids", "I64", "[1]", 0, 8) "}", 8, -ENOTSUP, "I64",
	  "\"ids\"" },
	{ "unsupported dtype F64", "{" T("x", "F64", "[1]", 0, 8) "}", 8, -ENOTSUP, "F64", NULL },
	{ "unsupported dtype BOOL", "{" T("m", "BOOL", "[8]", 0, 8) "}", 8, -ENOTSUP, "BOOL", NULL },
	{ "dtype not a string", "{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
	  -EINVAL, "dtype", "\"a\"" },
	{ "negative shape", "{" T("n", "F32", "[-1,4]", 0, 0) "}", 16, -EINVAL, "negative", "\"n\"" },
	{ "shape overflow", "{" T("h", "F32", "[4294967296,4294967296,4294967296]", 0, 0) "}", 16,
	  -EINVAL, "overflows", "\"h\"" },
	{ "byte size overflow", "{" T("h", "F32", "[4611686018427387904]", 0, 0) "}", 16, -EINVAL,
	  "overflows", "\"h\"" },
	{ "too many dims", "{" T("x", "F32", "[1,1,1,1,1]", 0, 4) "}", 4, -EINVAL, "dims", "\"x\"" },
	{ "float in shape", "{" T("x", "F32", "[2.0]", 0, 8) "}", 8, -EINVAL, "shape[0]", "\"x\"" },
	{ "shape not array", "{\"x\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16,
	  -EINVAL, "shape", "\"x\"" },
	{ "shape missing", "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16, -EINVAL,
	  "shape", "\"x\"" },
	{ "offsets missing", "{\"x\":{\"dtype\":\"F32\",\"shape\":[4]}}", 16, -EINVAL,
	  "data_offsets", "\"x\"" },
	{ "offsets triple", "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,8,16]}}", 16,
	  -EINVAL, "data_offsets", "\"x\"" },
	{ "negative offset", "{" T("x", "F32", "[0]", -4, 0) "}", 16, -EINVAL, "data_offsets",
	  "\"x\"" },
	{ "float offset", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 16,
	  -EINVAL, "data_offsets", "\"x\"" },
	{ "entry not an object", "{\"x\":5}", 0, -EINVAL, "not an object", "\"x\"" },
	{ "metadata not an object", "{\"__metadata__\":[1]}", 0, -EINVAL, "__metadata__", NULL },
	{ "metadata value not a string", "{\"__metadata__\":{\"format\":1}}", 0, -EINVAL,
	  "__metadata__", "format" },
	{ "NUL escape in name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
	  4, -EINVAL, "not valid JSON", NULL },
};

static void test_bad(void)
{
	struct fr_error err;
	uint8_t raw[64];

	for (size_t i = 0; i < FR_ARRAY_SIZE(bad); i++) {
		struct model_st_file *f = NULL;
		size_t len;
		uint8_t *img = t_st_image(bad[i].hdr, bad[i].data_len, &rng, &len);
		int rc;
		fr_error_clear(&err);
		rc = model_st_open_buffer(img, len, "bad.st", &f, &err);
		t_expect_err(bad[i].what, rc, bad[i].rc, &err, bad[i].n1, bad[i].n2);
		CHECK(strncmp(err.msg, "bad.st: ", 8) == 0);
		CHECK(f == NULL);
		model_st_close(f);
		free(img);
	}

	/* Framing errors, built by hand. */
	for (size_t n = 0; n < 8; n++) {
		struct model_st_file *f = NULL;
		int rc;
		memset(raw, '{', sizeof(raw));
		fr_error_clear(&err);
		rc = model_st_open_buffer(raw, n, "short.st", &f, &err);
		t_expect_err("truncated length", rc, -EINVAL, &err, "short.st", "too short");
	}
	{
		struct model_st_file *f = NULL;
		uint64_t lens[] = { 57, 1000, 1ull << 40, UINT64_MAX };
		for (size_t i = 0; i < FR_ARRAY_SIZE(lens); i++) {
			memset(raw, ' ', sizeof(raw));
			raw[8] = '{';
			raw[9] = '}';
			for (int b = 0; b < 8; b++)
				raw[b] = (uint8_t)(lens[i] >> (8 * b));
			fr_error_clear(&err);
			int rc = model_st_open_buffer(raw, sizeof(raw), "len.st", &f, &err);
			t_expect_err("header length past EOF", rc, -EINVAL, &err, "len.st",
				     lens[i] > (100u << 20) ? "over the limit" : "past the end");
		}
		/* A header cut short (the length says 56, the JSON closes later). */
		static const char h[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
		size_t len;
		uint8_t *img = t_st_image(h, 4, &rng, &len);
		img[0] = (uint8_t)(strlen(h) - 5);
		fr_error_clear(&err);
		int rc = model_st_open_buffer(img, len, "cut.st", &f, &err);
		t_expect_err("header cut short", rc, -EINVAL, &err, "cut.st", "JSON");
		free(img);
	}
}

static void test_files(void)
{
	static const char hdr[] =
		"{" T("x", "F32", "[3,2]", 0, 24) "," T("y", "BF16", "[5]", 24, 34) "}";
	struct model_st_file *f = NULL;
	struct fr_error err = { { 0 } };
	char dir[256], path[512];
	size_t len;
	uint8_t *img = t_st_image(hdr, 34, &rng, &len);
	int rc;

	t_mkdtemp(dir, sizeof(dir), "st");
	snprintf(path, sizeof(path), "%s/ok.safetensors", dir);
	t_write(path, img, len);
	rc = model_st_open(path, &f, &err);
	if (rc < 0)
		fprintf(stderr, "file: %s\n", err.msg);
	CHECK(rc == 0);
	if (f) {
		const struct model_tensor *t = model_st_find(f, "y");
		CHECK(t && t->nbytes == 10 && !memcmp(t->data, img + 8 + strlen(hdr) + 24, 10));
		CHECK(t && !strcmp(t->path, path));
	}
	model_st_close(f);

	/* The same file truncated in the data section, then in the length. */
	snprintf(path, sizeof(path), "%s/trunc.safetensors", dir);
	t_write(path, img, len - 1);
	f = NULL;
	rc = model_st_open(path, &f, &err);
	t_expect_err("file truncated in data", rc, -EINVAL, &err, path, "past the end");
	t_write(path, img, 5);
	rc = model_st_open(path, &f, &err);
	t_expect_err("file truncated in length", rc, -EINVAL, &err, path, "too short");
	t_write(path, img, 0);
	rc = model_st_open(path, &f, &err);
	t_expect_err("empty file", rc, -EINVAL, &err, path, "too short");
	snprintf(path, sizeof(path), "%s/missing.safetensors", dir);
	rc = model_st_open(path, &f, &err);
	t_expect_err("missing file", rc, -ENOENT, &err, path, NULL);
	rc = model_st_open(dir, &f, &err);
	t_expect_err("directory", rc, -EINVAL, &err, dir, "regular");
	CHECK(f == NULL);
	free(img);
	t_rmtree(dir);
}

static void test_golden(void)
{
	static const struct {
		const char *dir, *file;
		size_t n;
		enum kn_dtype dt;
	} g[] = {
		{ "tiny-a", "model.safetensors", 186, KN_DTYPE_F32 },
		{ "tiny-b", "model-00001-of-00002.safetensors", 119, KN_DTYPE_BF16 },
		{ "tiny-b", "model-00002-of-00002.safetensors", 139, KN_DTYPE_BF16 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(g); i++) {
		struct model_st_file *f = NULL;
		struct fr_error err = { { 0 } };
		char buf[4096], path[4200];
		const char *dir = t_golden(g[i].dir, buf, sizeof(buf));
		size_t sum = 0;
		int rc;

		if (!dir) {
			printf("skip golden %s: FERRY_GOLDEN not set or missing\n", g[i].dir);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, g[i].file);
		rc = model_st_open(path, &f, &err);
		if (rc < 0)
			fprintf(stderr, "golden: %s\n", err.msg);
		CHECK(rc == 0);
		if (rc < 0)
			continue;
		CHECK(model_st_count(f) == g[i].n);
		for (size_t j = 0; j < model_st_count(f); j++) {
			const struct model_tensor *t = model_st_tensor(f, j);
			CHECK(t->dtype == g[i].dt);
			CHECK(model_st_find(f, t->name) == t);
			sum += t->nbytes;
		}
		printf("golden %s/%s: %zu tensors, %zu data bytes\n", g[i].dir, g[i].file,
		       model_st_count(f), sum);
		model_st_close(f);
	}
}

int main(void)
{
	rng = t_seed();
	test_good();
	test_many();
	test_bad();
	test_files();
	test_golden();
	if (t_failures) {
		fprintf(stderr, "%d check(s) failed\n", t_failures);
		return 1;
	}
	printf("all safetensors tests passed\n");
	return 0;
}
