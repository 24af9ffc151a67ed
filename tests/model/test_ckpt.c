/* SPDX-License-Identifier: Apache-2.0 */
/* test_ckpt.c - checkpoint directories: both golden checkpoints (every tensor the config
 * implies is found with the right shape and dtype), synthetic single and sharded
 * directories, and bad indexes (missing shard, tensor in the wrong shard, unlisted tensor,
 * path traversal, malformed JSON). */
#include "model_test.h"

static uint64_t rng;
static int n_expected;

static void expect(const struct model_ckpt *ck, enum kn_dtype dt, int d0, int d1,
		   const char *fmt, ...) FR_PRINTF(5, 6);

static void expect(const struct model_ckpt *ck, enum kn_dtype dt, int d0, int d1,
		   const char *fmt, ...)
{
	const struct model_tensor *t;
	char name[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	n_expected++;
	t = model_ckpt_find(ck, name);
	if (!t) {
		fprintf(stderr, "FAIL %s: tensor %s not found\n", model_ckpt_dir(ck), name);
		t_failures++;
		return;
	}
	if (t->dtype != dt || t->ndim != (d1 ? 2 : 1) || t->shape[0] != d0 ||
	    (d1 && t->shape[1] != d1) || !t->data || strcmp(t->name, name) ||
	    t->nbytes != (size_t)d0 * (size_t)(d1 ? d1 : 1) * kn_dtype_size(dt)) {
		fprintf(stderr, "FAIL %s: tensor %s: dtype %d ndim %d shape [%lld, %lld]\n",
			model_ckpt_dir(ck), name, (int)t->dtype, t->ndim, (long long)t->shape[0],
			(long long)t->shape[1]);
		t_failures++;
	}
}

/* Every tensor a DeepSeekMoE v1 config implies (names as in the golden READMEs). */
static void expect_all(const struct model_ckpt *ck, enum kn_dtype dt)
{
	const struct model_config *c = model_ckpt_config(ck);
	int h = c->hidden_size, kv = c->num_key_value_heads * c->head_dim;
	int mi = c->moe_intermediate_size;

	n_expected = 0;
	expect(ck, dt, c->vocab_size, h, "model.embed_tokens.weight");
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const char *p = "model.layers";
		expect(ck, dt, h, 0, "%s.%d.input_layernorm.weight", p, l);
		expect(ck, dt, h, 0, "%s.%d.post_attention_layernorm.weight", p, l);
		expect(ck, dt, h, h, "%s.%d.self_attn.q_proj.weight", p, l);
		expect(ck, dt, kv, h, "%s.%d.self_attn.k_proj.weight", p, l);
		expect(ck, dt, kv, h, "%s.%d.self_attn.v_proj.weight", p, l);
		expect(ck, dt, h, h, "%s.%d.self_attn.o_proj.weight", p, l);
		if (!model_layer_is_moe(c, l)) {
			int w = c->intermediate_size;
			expect(ck, dt, w, h, "%s.%d.mlp.gate_proj.weight", p, l);
			expect(ck, dt, w, h, "%s.%d.mlp.up_proj.weight", p, l);
			expect(ck, dt, h, w, "%s.%d.mlp.down_proj.weight", p, l);
			continue;
		}
		expect(ck, dt, c->n_routed_experts, h, "%s.%d.mlp.gate.weight", p, l);
		for (int e = 0; e < c->n_routed_experts; e++) {
			expect(ck, dt, mi, h, "%s.%d.mlp.experts.%d.gate_proj.weight", p, l, e);
			expect(ck, dt, mi, h, "%s.%d.mlp.experts.%d.up_proj.weight", p, l, e);
			expect(ck, dt, h, mi, "%s.%d.mlp.experts.%d.down_proj.weight", p, l, e);
		}
		if (c->n_shared_experts) {
			int w = mi * c->n_shared_experts;
			expect(ck, dt, w, h, "%s.%d.mlp.shared_experts.gate_proj.weight", p, l);
			expect(ck, dt, w, h, "%s.%d.mlp.shared_experts.up_proj.weight", p, l);
			expect(ck, dt, h, w, "%s.%d.mlp.shared_experts.down_proj.weight", p, l);
		}
	}
	expect(ck, dt, h, 0, "model.norm.weight");
	expect(ck, dt, c->vocab_size, h, "lm_head.weight");
}

static void test_golden(void)
{
	static const struct {
		const char *name;
		enum kn_dtype dt;
		int n;
	} g[] = { { "tiny-a", KN_DTYPE_F32, 186 }, { "tiny-b", KN_DTYPE_BF16, 258 } };

	for (size_t i = 0; i < FR_ARRAY_SIZE(g); i++) {
		struct model_ckpt *ck = NULL;
		struct fr_error err = { { 0 } };
		char buf[4096];
		const char *dir = t_golden(g[i].name, buf, sizeof(buf));
		int rc;

		if (!dir) {
			printf("skip golden %s: FERRY_GOLDEN not set or missing\n", g[i].name);
			continue;
		}
		rc = model_ckpt_open(dir, &ck, &err);
		if (rc < 0)
			fprintf(stderr, "golden %s: %s\n", g[i].name, err.msg);
		CHECK(rc == 0);
		if (rc < 0)
			continue;
		CHECK(!strcmp(model_ckpt_dir(ck), dir));
		CHECK(model_ckpt_config(ck)->vocab_size > 0);
		expect_all(ck, g[i].dt);
		CHECK(n_expected == g[i].n);
		CHECK(model_ckpt_find(ck, "model.layers.99.mlp.gate.weight") == NULL);
		CHECK(model_ckpt_find(ck, "") == NULL);
		if (!strcmp(g[i].name, "tiny-b")) {
			const struct model_tensor *t = model_ckpt_find(ck, "model.embed_tokens.weight");
			CHECK(t && strstr(t->path, "model-00001-of-00002.safetensors"));
			t = model_ckpt_find(ck, "lm_head.weight");
			CHECK(t && strstr(t->path, "model-00002-of-00002.safetensors"));
			t = model_ckpt_find(ck, "model.layers.2.mlp.experts.6.up_proj.weight");
			CHECK(t && strstr(t->path, "00001-of"));
			t = model_ckpt_find(ck, "model.layers.2.mlp.experts.6.down_proj.weight");
			CHECK(t && strstr(t->path, "00002-of"));
		}
		printf("golden %s: %d tensors found with the right shapes\n", g[i].name, n_expected);
		model_ckpt_close(ck);
	}
}

/* ---- synthetic directories ----------------------------------------------------------------- */

static const char small_cfg[] =
	"{\"model_type\": \"deepseek\", \"vocab_size\": 16, \"hidden_size\": 8,"
	" \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2}";

static void write_st(const char *dir, const char *file, const char *hdr, size_t data_len)
{
	char path[512];
	size_t len;
	uint8_t *img = t_st_image(hdr, data_len, &rng, &len);
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	t_write(path, img, len);
	free(img);
}

static void write_text(const char *dir, const char *file, const char *text)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	t_write_str(path, text);
}

/* s1: a, c   s2: b */
static const char s1_hdr[] =
	"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	"\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
static const char s2_hdr[] = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}";

static const struct bad_dir {
	const char *what;
	const char *index; /* NULL: no index */
	bool single;       /* write model.safetensors (= s1) */
	bool no_config;
	int rc;
	const char *n1, *n2;
} bad_dirs[] = {
	{ "no weights at all", NULL, false, false, -ENOENT, "neither", NULL },
	{ "no config", NULL, true, true, -ENOENT, "config.json", NULL },
	{ "missing shard",
	  "{\"weight_map\":{\"a\":\"s1\",\"c\":\"s1\",\"b\":\"s3\"}}", false, false, -ENOENT, "s3",
	  NULL },
	{ "tensor in the wrong shard",
	  "{\"weight_map\":{\"a\":\"s2\",\"c\":\"s1\",\"b\":\"s2\"}}", false, false, -EINVAL,
	  "tensor a is in", "index says s2" },
	{ "tensor not listed in the index", "{\"weight_map\":{\"a\":\"s1\",\"b\":\"s2\"}}", false,
	  false, -EINVAL, "tensor c", "not listed" },
	{ "tensor listed but absent",
	  "{\"weight_map\":{\"a\":\"s1\",\"c\":\"s1\",\"b\":\"s2\",\"zz\":\"s2\"}}", false, false,
	  -EINVAL, "zz", "not in it" },
	{ "path traversal", "{\"weight_map\":{\"a\":\"../s1\"}}", false, false, -EINVAL, "../s1",
	  "plain file name" },
	{ "subdirectory", "{\"weight_map\":{\"a\":\"sub/s1\"}}", false, false, -EINVAL, "sub/s1",
	  NULL },
	{ "dot-dot", "{\"weight_map\":{\"a\":\"..\"}}", false, false, -EINVAL, "plain file name",
	  NULL },
	{ "empty shard name", "{\"weight_map\":{\"a\":\"\"}}", false, false, -EINVAL,
	  "plain file name", NULL },
	{ "weight_map missing", "{\"metadata\":{}}", false, false, -EINVAL, "weight_map", NULL },
	{ "weight_map empty", "{\"weight_map\":{}}", false, false, -EINVAL, "weight_map", "empty" },
	{ "weight_map an array", "{\"weight_map\":[\"s1\"]}", false, false, -EINVAL, "weight_map",
	  NULL },
	{ "shard not a string", "{\"weight_map\":{\"a\":1}}", false, false, -EINVAL, "\"a\"",
	  "not a string" },
	{ "index not JSON", "{\"weight_map\":", false, false, -EINVAL, "invalid JSON", NULL },
	{ "index duplicate key", "{\"weight_map\":{\"a\":\"s1\",\"a\":\"s1\"}}", false, false,
	  -EINVAL, "duplicate", NULL },
	{ "bad shard", "{\"weight_map\":{\"a\":\"broken\"}}", false, false, -EINVAL, "broken",
	  "too short" },
};

static void test_dirs(void)
{
	struct fr_error err;
	char dir[256];

	/* A good single-file and a good sharded directory. */
	for (int sharded = 0; sharded < 2; sharded++) {
		struct model_ckpt *ck = NULL;
		const struct model_tensor *t;
		int rc;

		t_mkdtemp(dir, sizeof(dir), "ckpt");
		write_text(dir, "config.json", small_cfg);
		if (sharded) {
			write_st(dir, "s1", s1_hdr, 12);
			write_st(dir, "s2", s2_hdr, 6);
			write_text(dir, "model.safetensors.index.json",
				   "{\"metadata\":{\"total_size\":18},\"weight_map\":"
				   "{\"a\":\"s1\",\"b\":\"s2\",\"c\":\"s1\"}}");
		} else {
			write_st(dir, "model.safetensors", s1_hdr, 12);
		}
		fr_error_clear(&err);
		rc = model_ckpt_open(dir, &ck, &err);
		if (rc < 0)
			fprintf(stderr, "good dir: %s\n", err.msg);
		CHECK(rc == 0);
		if (rc < 0) {
			t_rmtree(dir);
			continue;
		}
		CHECK(model_ckpt_config(ck)->hidden_size == 8);
		t = model_ckpt_find(ck, "a");
		CHECK(t && t->shape[0] == 2 && t->nbytes == 8);
		t = model_ckpt_find(ck, "c");
		CHECK(t && t->shape[0] == 1);
		t = model_ckpt_find(ck, "b");
		CHECK(sharded ? (t && t->dtype == KN_DTYPE_BF16 && strstr(t->path, "/s2")) : !t);
		CHECK(model_ckpt_find(ck, "d") == NULL);
		model_ckpt_close(ck);
		t_rmtree(dir);
	}
	model_ckpt_close(NULL);

	for (size_t i = 0; i < FR_ARRAY_SIZE(bad_dirs); i++) {
		const struct bad_dir *b = &bad_dirs[i];
		struct model_ckpt *ck = NULL;
		int rc;

		t_mkdtemp(dir, sizeof(dir), "ckpt");
		if (!b->no_config)
			write_text(dir, "config.json", small_cfg);
		write_st(dir, "s1", s1_hdr, 12);
		write_st(dir, "s2", s2_hdr, 6);
		write_text(dir, "broken", "xyz");
		if (b->single)
			write_st(dir, "model.safetensors", s1_hdr, 12);
		if (b->index)
			write_text(dir, "model.safetensors.index.json", b->index);
		fr_error_clear(&err);
		rc = model_ckpt_open(dir, &ck, &err);
		t_expect_err(b->what, rc, b->rc, &err, b->n1, b->n2);
		CHECK(strstr(err.msg, dir) != NULL); /* every message names the file */
		CHECK(ck == NULL);
		model_ckpt_close(ck);
		t_rmtree(dir);
	}
}

struct cb_ctx {
	int n;
	int stop_at;
};

static int count_cb(const char *name, const char *file, void *ctx)
{
	struct cb_ctx *c = ctx;
	if (!name[0] || !file[0])
		return -EFAULT;
	if (++c->n == c->stop_at)
		return -ECANCELED;
	return 0;
}

static void test_index_parse(void)
{
	static const char idx[] = "{\"metadata\":{\"total_size\":1},\"weight_map\":"
				  "{\"x\":\"f1\",\"y\":\"f1\",\"z\":\"f2\"}, \"extra\": 5}";
	struct cb_ctx c = { 0, 0 };
	struct fr_error err = { { 0 } };

	CHECK(model_index_parse(idx, sizeof(idx) - 1, count_cb, &c, &err) == 0 && c.n == 3);
	c = (struct cb_ctx){ 0, 2 };
	CHECK(model_index_parse(idx, sizeof(idx) - 1, count_cb, &c, &err) == -ECANCELED && c.n == 2);
	c = (struct cb_ctx){ 0, 0 };
	CHECK(model_index_parse(idx, 10, count_cb, &c, &err) == -EINVAL && c.n == 0);
	{
		static const char bs[] = "{\"weight_map\":{\"a\":\"x\\\\y\"}}";
		static const char md[] = "{\"metadata\":3,\"weight_map\":{\"a\":\"x\"}}";
		CHECK(model_index_parse(bs, strlen(bs), count_cb, &c, &err) == -EINVAL);
		CHECK(strstr(err.msg, "plain file name") != NULL);
		CHECK(model_index_parse(md, strlen(md), count_cb, &c, &err) == -EINVAL);
	}
	CHECK(strstr(err.msg, "metadata") != NULL);
}

int main(void)
{
	rng = t_seed();
	test_golden();
	test_dirs();
	test_index_parse();
	if (t_failures) {
		fprintf(stderr, "%d check(s) failed\n", t_failures);
		return 1;
	}
	printf("all ckpt tests passed\n");
	return 0;
}
