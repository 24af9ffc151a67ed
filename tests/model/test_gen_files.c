/* SPDX-License-Identifier: Apache-2.0 */
/* test_gen_files.c - the generator's files: byte-identical reruns, seeds, bf16 = rounded f32,
 * shards + index = single file, --layers keeps values, headers laid out as safetensors says
 * (checked here with jansson and again through model_ckpt_open / model_weights_bind). */
#include <dirent.h>
#include <inttypes.h>
#include <math.h>

#include "gen_test.h"

/* One parsed safetensors file; tensors in header order. */
struct st_tensor {
	char name[128];
	char dtype[8];
	int ndim;
	int64_t shape[4];
	const uint8_t *data;
	size_t nbytes;
};

struct st_file {
	uint8_t *buf;
	size_t len;
	struct st_tensor *t;
	size_t n;
};

/* Strict layout check: padded header, __metadata__ first, offsets contiguous from 0 in
 * header order and covering the whole data section, nbytes = dtype x shape. */
static int st_load(const char *path, struct st_file *f)
{
	json_error_t jerr;
	json_t *root;
	uint64_t hl = 0, expect = 0;
	const char *key;
	json_t *v;
	size_t i = 0;

	memset(f, 0, sizeof(*f));
	f->buf = g_slurp(path, &f->len);
	if (f->len < 8)
		return -1;
	for (int b = 0; b < 8; b++)
		hl |= (uint64_t)f->buf[b] << (8 * b);
	if (hl % 8 || 8 + hl > f->len) {
		fprintf(stderr, "%s: header length %" PRIu64 "\n", path, hl);
		return -1;
	}
	root = json_loadb((const char *)f->buf + 8, hl, 0, &jerr);
	if (!root || !json_is_object(root)) {
		fprintf(stderr, "%s: header: %s\n", path, jerr.text);
		return -1;
	}
	/* Compact JSON then only spaces. */
	const char *h = (const char *)f->buf + 8;
	size_t end = hl;
	while (end > 0 && h[end - 1] == ' ')
		end--;
	if (end == 0 || h[end - 1] != '}' || hl - end >= 8) {
		fprintf(stderr, "%s: bad padding\n", path);
		return -1;
	}
	f->t = calloc(json_object_size(root), sizeof(*f->t));
	json_object_foreach(root, key, v) {
		if (i == 0) {
			json_t *fmt = json_object_get(v, "format");
			if (strcmp(key, "__metadata__") || !fmt || strcmp(json_string_value(fmt), "pt")) {
				fprintf(stderr, "%s: __metadata__ is not first\n", path);
				return -1;
			}
			i++;
			continue;
		}
		struct st_tensor *t = &f->t[f->n++];
		json_t *shape = json_object_get(v, "shape"), *offs = json_object_get(v, "data_offsets");
		const char *dt = json_string_value(json_object_get(v, "dtype"));
		uint64_t b0 = json_integer_value(json_array_get(offs, 0));
		uint64_t b1 = json_integer_value(json_array_get(offs, 1));
		uint64_t numel = 1;

		snprintf(t->name, sizeof(t->name), "%s", key);
		snprintf(t->dtype, sizeof(t->dtype), "%s", dt ? dt : "?");
		t->ndim = (int)json_array_size(shape);
		for (int d = 0; d < t->ndim && d < 4; d++) {
			t->shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
			numel *= (uint64_t)t->shape[d];
		}
		size_t es = !strcmp(t->dtype, "F32") ? 4 : !strcmp(t->dtype, "BF16") ? 2 : 0;
		if (json_object_size(v) != 3 || !es || b0 != expect || b1 - b0 != numel * es ||
		    8 + hl + b1 > f->len) {
			fprintf(stderr, "%s: tensor %s: bad entry\n", path, key);
			return -1;
		}
		expect = b1;
		t->data = f->buf + 8 + hl + b0;
		t->nbytes = b1 - b0;
		i++;
	}
	json_decref(root);
	if (8 + hl + expect != f->len) {
		fprintf(stderr, "%s: data section %zu bytes, tensors cover %" PRIu64 "\n", path,
			f->len - 8 - (size_t)hl, expect);
		return -1;
	}
	return 0;
}

static void st_free(struct st_file *f)
{
	free(f->buf);
	free(f->t);
}

static const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (!strcmp(f->t[i].name, name))
			return &f->t[i];
	return NULL;
}

static int gen_threads(const char *dir, enum model_preset p, int layers, enum kn_dtype dt,
		       uint64_t seed, int shards, int threads)
{
	struct model_gen_opts o = { .preset = p, .layers = layers, .dtype = dt, .seed = seed,
				    .shards = shards, .threads = threads };
	struct fr_error err = { { 0 } };
	int rc = model_gen(&o, dir, &err);
	if (rc < 0)
		fprintf(stderr, "model_gen %s: %s\n", dir, err.msg);
	return rc;
}

static int gen(const char *dir, enum model_preset p, int layers, enum kn_dtype dt,
	       uint64_t seed, int shards)
{
	return gen_threads(dir, p, layers, dt, seed, shards, 1);
}

static bool files_equal(const char *a, const char *b)
{
	size_t la, lb;
	uint8_t *x = g_slurp(a, &la), *y = g_slurp(b, &lb);
	bool eq = la == lb && !memcmp(x, y, la);
	free(x);
	free(y);
	return eq;
}

static void path2(char *buf, size_t n, const char *dir, const char *name)
{
	snprintf(buf, n, "%s/%s", dir, name);
}

/* No temporary file is left behind. */
static void check_no_tmp(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	CHECK(d != NULL);
	while (d && (e = readdir(d)))
		if (strstr(e->d_name, ".tmp")) {
			fprintf(stderr, "%s: leftover %s\n", dir, e->d_name);
			g_failures++;
		}
	if (d)
		closedir(d);
}

static double f32_at(const struct st_tensor *t, size_t i)
{
	float v;
	if (!strcmp(t->dtype, "F32")) {
		memcpy(&v, t->data + 4 * i, 4);
		return v;
	}
	uint16_t h;
	memcpy(&h, t->data + 2 * i, 2);
	return kn_bf16_to_f32(h);
}

static void stats(const struct st_tensor *t, double *mean, double *std)
{
	size_t n = t->nbytes / (strcmp(t->dtype, "F32") ? 2 : 4);
	double s = 0, s2 = 0;
	for (size_t i = 0; i < n; i++) {
		double v = f32_at(t, i);
		s += v;
		s2 += v * v;
	}
	*mean = s / (double)n;
	*std = sqrt(s2 / (double)n - *mean * *mean);
}

static void test_values(const struct st_file *f32)
{
	const struct st_tensor *t;
	double m, s;

	/* tiny: hidden 128, 186 tensors in HF order. */
	CHECK(f32->n == 186);
	CHECK(!strcmp(f32->t[0].name, "model.embed_tokens.weight"));
	CHECK(!strcmp(f32->t[1].name, "model.layers.0.input_layernorm.weight"));
	CHECK(!strcmp(f32->t[2].name, "model.layers.0.self_attn.q_proj.weight"));
	CHECK(!strcmp(f32->t[6].name, "model.layers.0.post_attention_layernorm.weight"));
	CHECK(!strcmp(f32->t[7].name, "model.layers.0.mlp.gate_proj.weight"));
	CHECK(!strcmp(f32->t[16].name, "model.layers.1.mlp.gate.weight"));
	CHECK(!strcmp(f32->t[17].name, "model.layers.1.mlp.experts.0.gate_proj.weight"));
	CHECK(!strcmp(f32->t[16 + 1 + 48].name,
		      "model.layers.1.mlp.shared_experts.gate_proj.weight"));
	CHECK(!strcmp(f32->t[184].name, "model.norm.weight"));
	CHECK(!strcmp(f32->t[185].name, "lm_head.weight"));
	t = st_find(f32, "model.layers.1.mlp.shared_experts.down_proj.weight");
	CHECK(t && t->ndim == 2 && t->shape[0] == 128 && t->shape[1] == 128);
	t = st_find(f32, "model.layers.2.mlp.experts.15.down_proj.weight");
	CHECK(t && t->ndim == 2 && t->shape[0] == 128 && t->shape[1] == 64);

	t = st_find(f32, "model.embed_tokens.weight");
	stats(t, &m, &s);
	printf("embed mean %.4f std %.4f\n", m, s);
	CHECK(fabs(m) < 0.01 && fabs(s - 1) < 0.01);
	{
		/* Normal, not just unit variance: kurtosis 3, 4.55% beyond 2 sigma. */
		size_t n = t->nbytes / 4, tail = 0;
		double m4 = 0;
		for (size_t i = 0; i < n; i++) {
			double v = f32_at(t, i);
			m4 += v * v * v * v;
			tail += fabs(v) > 2;
		}
		m4 /= (double)n;
		printf("embed kurtosis %.4f, beyond 2 sigma %.4f%%\n", m4, 100.0 * tail / n);
		CHECK(fabs(m4 - 3) < 0.08);
		CHECK(fabs((double)tail / n - 0.0455) < 0.003);
	}
	t = st_find(f32, "model.layers.3.self_attn.q_proj.weight");
	stats(t, &m, &s);
	printf("q_proj mean %.4f std %.4f (want %.4f)\n", m, s, 1 / sqrt(128.0));
	CHECK(fabs(m) < 0.005 && fabs(s * sqrt(128.0) - 1) < 0.03);
	t = st_find(f32, "model.layers.2.input_layernorm.weight");
	stats(t, &m, &s);
	printf("norm mean %.4f std %.4f\n", m, s);
	CHECK(fabs(m - 1) < 0.05 && s > 0.05 && s < 0.15);
	t = st_find(f32, "model.layers.1.mlp.gate.weight");
	stats(t, &m, &s);
	CHECK(fabs(s * sqrt(128.0) - 2) < 0.1);
	/* Pairs are not degenerate: neighbours differ, and are uncorrelated. */
	t = st_find(f32, "lm_head.weight");
	double c = 0;
	size_t n = t->nbytes / 4;
	for (size_t i = 0; i + 1 < n; i += 2)
		c += f32_at(t, i) * f32_at(t, i + 1);
	c /= (double)(n / 2) * (1.0 / 128);
	printf("lm_head pair correlation %.4f\n", c);
	CHECK(fabs(c) < 0.02);
}

static void test_index(const char *dir, int shards, const struct st_file *single)
{
	char path[4096], file[4096];
	json_error_t jerr;
	size_t len;
	uint8_t *text;
	json_t *root, *map;
	uint64_t total = 0;
	size_t seen = 0, next = 0;

	path2(path, sizeof(path), dir, "model.safetensors.index.json");
	text = g_slurp(path, &len);
	CHECK(len > 2 && text[len - 1] == '\n' && text[len - 2] == '}');
	CHECK(!strncmp((char *)text, "{\n  \"metadata\": {\n    \"total_size\": ", 36));
	root = json_loadb((const char *)text, len, 0, &jerr);
	CHECK(root != NULL);
	map = json_object_get(root, "weight_map");
	CHECK(json_object_size(map) == single->n);
	for (size_t i = 0; i < single->n; i++)
		total += single->t[i].nbytes;
	CHECK((uint64_t)json_integer_value(json_object_get(json_object_get(root, "metadata"),
							  "total_size")) == total);
	/* Keys appear sorted in the text (json.dumps(sort_keys=True)). */
	const char *prev = NULL;
	const char *key;
	json_t *v;
	json_object_foreach(map, key, v) {
		CHECK(!prev || strcmp(prev, key) < 0);
		prev = key;
	}

	/* Every shard: valid, in model order, holding exactly what the index says, values equal
	 * to the single file's. */
	for (int k = 1; k <= shards; k++) {
		struct st_file f;
		char name[64];
		snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", k, shards);
		path2(file, sizeof(file), dir, name);
		CHECK(st_load(file, &f) == 0);
		CHECK(f.n > 0);
		uint64_t bytes = 0;
		for (size_t i = 0; i < f.n; i++, next++) {
			const struct st_tensor *t = &f.t[i], *s = &single->t[next];
			const char *where = json_string_value(json_object_get(map, t->name));
			CHECK(where && !strcmp(where, name));
			CHECK(!strcmp(t->name, s->name) && t->nbytes == s->nbytes &&
			      !memcmp(t->data, s->data, t->nbytes));
			bytes += t->nbytes;
			seen++;
		}
		printf("%s: %zu tensors, %" PRIu64 " bytes\n", name, f.n, bytes);
		/* Balanced: no shard more than half off the mean (tiny's largest tensor is 6%). */
		CHECK(bytes > total / (uint64_t)shards / 2 && bytes < total / (uint64_t)shards * 3 / 2);
		st_free(&f);
	}
	CHECK(seen == single->n);
	json_decref(root);
	free(text);
}

/* What the other engineers' loader says about our files. */
static void test_ckpt(const char *dir, const struct st_file *ref)
{
	struct fr_error err = { { 0 } };
	struct model_ckpt *ck = NULL;
	struct model_weights *w = NULL;
	int rc = model_ckpt_open(dir, &ck, &err);

	if (rc < 0)
		fprintf(stderr, "model_ckpt_open %s: %s\n", dir, err.msg);
	CHECK(rc == 0);
	if (rc < 0)
		return;
	rc = model_weights_bind(ck, MODEL_BIND_ALL, &w, &err);
	if (rc < 0)
		fprintf(stderr, "model_weights_bind %s: %s\n", dir, err.msg);
	CHECK(rc == 0);
	for (size_t i = 0; i < ref->n; i++) {
		const struct model_tensor *t = model_ckpt_find(ck, ref->t[i].name);
		CHECK(t && t->nbytes == ref->t[i].nbytes && !memcmp(t->data, ref->t[i].data, t->nbytes));
	}
	model_weights_free(w);
	model_ckpt_close(ck);
}

int main(void)
{
	char root[4096], a[4200], b[4200], c[4200], d[4200], e[4200], l2[4200];
	char pa[4400], pb[4400];
	struct st_file fa, fc, fd, fl2;
	struct fr_error err = { { 0 } };

	g_mkdtemp(root, sizeof(root), "files");
	snprintf(a, sizeof(a), "%s/a", root);
	snprintf(b, sizeof(b), "%s/b", root);
	snprintf(c, sizeof(c), "%s/c", root);
	snprintf(d, sizeof(d), "%s/d", root);
	snprintf(e, sizeof(e), "%s/e", root);
	snprintf(l2, sizeof(l2), "%s/l2", root);

	/* Determinism: the same options twice give the same bytes; another seed does not. */
	CHECK(gen(a, MODEL_PRESET_TINY, 0, KN_DTYPE_F32, 7, 1) == 0);
	CHECK(gen_threads(b, MODEL_PRESET_TINY, 0, KN_DTYPE_F32, 7, 1, 3) == 0); /* threads too */
	CHECK(gen(c, MODEL_PRESET_TINY, 0, KN_DTYPE_F32, 8, 1) == 0);
	path2(pa, sizeof(pa), a, "model.safetensors");
	path2(pb, sizeof(pb), b, "model.safetensors");
	CHECK(files_equal(pa, pb));
	path2(pa, sizeof(pa), a, "config.json");
	path2(pb, sizeof(pb), b, "config.json");
	CHECK(files_equal(pa, pb));
	check_no_tmp(a);

	path2(pa, sizeof(pa), a, "model.safetensors");
	CHECK(st_load(pa, &fa) == 0);
	path2(pb, sizeof(pb), c, "model.safetensors");
	CHECK(st_load(pb, &fc) == 0);
	CHECK(fa.n == fc.n);
	for (size_t i = 0; i < fa.n && i < fc.n; i++) {
		CHECK(!strcmp(fa.t[i].name, fc.t[i].name));
		CHECK(memcmp(fa.t[i].data, fc.t[i].data, fa.t[i].nbytes) != 0);
	}
	/* Distinct tensors get distinct streams. */
	CHECK(memcmp(st_find(&fa, "model.layers.1.mlp.experts.0.gate_proj.weight")->data,
		     st_find(&fa, "model.layers.1.mlp.experts.1.gate_proj.weight")->data, 4096));
	test_values(&fa);

	/* bf16 = round-to-nearest-even of the f32 values, element by element. */
	CHECK(gen(d, MODEL_PRESET_TINY, 0, KN_DTYPE_BF16, 7, 1) == 0);
	path2(pa, sizeof(pa), d, "model.safetensors");
	CHECK(st_load(pa, &fd) == 0);
	CHECK(fd.n == fa.n);
	for (size_t i = 0; i < fa.n && i < fd.n; i++) {
		const struct st_tensor *x = &fa.t[i], *y = &fd.t[i];
		size_t n = x->nbytes / 4, bad = 0;
		CHECK(!strcmp(x->name, y->name) && !strcmp(y->dtype, "BF16") &&
		      y->nbytes * 2 == x->nbytes && x->ndim == y->ndim);
		for (size_t j = 0; j < n && y->nbytes * 2 == x->nbytes; j++) {
			float v;
			uint16_t h;
			memcpy(&v, x->data + 4 * j, 4);
			memcpy(&h, y->data + 2 * j, 2);
			bad += h != kn_f32_to_bf16(v);
		}
		CHECK(bad == 0);
	}

	/* Shards: same tensors, same values, valid index. */
	CHECK(gen(e, MODEL_PRESET_TINY, 0, KN_DTYPE_BF16, 7, 3) == 0);
	test_index(e, 3, &fd);
	check_no_tmp(e);
	path2(pa, sizeof(pa), e, "model.safetensors");
	CHECK(!g_exists(pa));

	test_ckpt(a, &fa);
	test_ckpt(d, &fd);
	test_ckpt(e, &fd);

	/* Regenerating single-file over a sharded dir drops the stale index. */
	CHECK(gen(e, MODEL_PRESET_TINY, 0, KN_DTYPE_BF16, 7, 1) == 0);
	path2(pa, sizeof(pa), e, "model.safetensors.index.json");
	CHECK(!g_exists(pa));
	test_ckpt(e, &fd);

	/* --layers 2: one dense + one MoE layer; every kept tensor has the full model's values. */
	CHECK(gen(l2, MODEL_PRESET_TINY, 2, KN_DTYPE_F32, 7, 1) == 0);
	path2(pa, sizeof(pa), l2, "model.safetensors");
	CHECK(st_load(pa, &fl2) == 0);
	CHECK(fl2.n == 1 + 2 * 6 + 3 + 1 + 16 * 3 + 3 + 2);
	for (size_t i = 0; i < fl2.n; i++) {
		const struct st_tensor *t = &fl2.t[i], *full = st_find(&fa, t->name);
		CHECK(full && full->nbytes == t->nbytes && !memcmp(full->data, t->data, t->nbytes));
	}
	CHECK(!st_find(&fl2, "model.layers.2.input_layernorm.weight"));
	{
		struct model_config cfg;
		CHECK(model_config_load(l2, &cfg, &err) == 0);
		CHECK(cfg.num_hidden_layers == 2 && cfg.first_k_dense_replace == 1 &&
		      model_n_moe_layers(&cfg) == 1 && cfg.torch_dtype == KN_DTYPE_F32);
	}

	/* Bad options are refused, naming the option, with nothing written. */
	{
		struct model_gen_opts o = { .preset = MODEL_PRESET_TINY, .dtype = KN_DTYPE_BF16,
					    .shards = 1 };
		snprintf(pa, sizeof(pa), "%s/bad", root);
		o.layers = 5;
		CHECK(model_gen(&o, pa, &err) == -EINVAL && strstr(err.msg, "layers"));
		o.layers = 0;
		o.shards = 257;
		CHECK(model_gen(&o, pa, &err) == -EINVAL && strstr(err.msg, "shards"));
		o.shards = 200; /* > 186 tensors: a shard would be empty */
		CHECK(model_gen(&o, pa, &err) == -EINVAL && strstr(err.msg, "empty"));
		o.shards = 1;
		o.dtype = KN_DTYPE_F16;
		CHECK(model_gen(&o, pa, &err) == -EINVAL && strstr(err.msg, "dtype"));
		o.dtype = KN_DTYPE_BF16;
		o.preset = (enum model_preset)9;
		CHECK(model_gen(&o, pa, &err) == -EINVAL);
		snprintf(pb, sizeof(pb), "%s/config.json", pa);
		CHECK(!g_exists(pb));
		path2(pb, sizeof(pb), pa, "model.safetensors");
		CHECK(!g_exists(pb));
		snprintf(pa, sizeof(pa), "%s/no/such/dir", root);
		o.preset = MODEL_PRESET_TINY;
		CHECK(model_gen(&o, pa, &err) == -ENOENT && strstr(err.msg, "no/such/dir"));
	}

	st_free(&fa);
	st_free(&fc);
	st_free(&fd);
	st_free(&fl2);
	g_rmtree(root);
	if (g_failures) {
		fprintf(stderr, "%d check(s) failed\n", g_failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
