/* SPDX-License-Identifier: Apache-2.0 */
/*
 * safetensors.c - mmapped .safetensors files with a fully validated header.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON, then the data section. The
 * header is checked whole before any tensor is handed out (see model.h); the data itself is
 * never touched here, so opening a 300 GB shard costs one header read. Names are looked up
 * through an open-addressing hash table (checkpoints have tens of thousands of tensors).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "model/model.h"

#define ST_MAX_HEADER (100u << 20) /* the safetensors library's own limit */
#define ST_MAX_TENSORS (1u << 24)

struct model_st_file {
	char *label;                  /* path or caller's label, for messages */
	void *map;                    /* mmapped file, NULL for a borrowed buffer */
	size_t map_len;
	size_t n;
	struct model_tensor *tensors; /* [n], in header order */
	char *names;                  /* every name, NUL-terminated, back to back */
	uint32_t *slots;              /* [mask + 1]: tensor index + 1, 0 = empty */
	size_t mask;
};

static const struct {
	const char *name;
	int dtype; /* enum kn_dtype, or -1: a valid safetensors dtype we do not support */
} st_dtypes[] = {
	{ "F32", KN_DTYPE_F32 }, { "BF16", KN_DTYPE_BF16 }, { "F16", KN_DTYPE_F16 },
	{ "F64", -1 }, { "I64", -1 }, { "I32", -1 }, { "I16", -1 }, { "I8", -1 },
	{ "U64", -1 }, { "U32", -1 }, { "U16", -1 }, { "U8", -1 }, { "BOOL", -1 },
	{ "F8_E4M3", -1 }, { "F8_E5M2", -1 }, { "F8_E8M0", -1 }, { "F6_E2M3", -1 },
	{ "F6_E3M2", -1 }, { "F4", -1 }, { "C64", -1 },
};

static int st_entry(const struct model_st_file *f, const char *name, const json_t *v,
		    const uint8_t *data, size_t dlen, struct model_tensor *t, struct fr_error *err)
{
	const char *lb = f->label;
	const json_t *dt, *shape, *offs, *jb, *je;
	uint64_t count = 1, nbytes, begin, end;
	const char *dts;
	size_t i;
	int dtype = -2;

	if (!json_is_object(v))
		return fr_error_set(err, -EINVAL, "%s: tensor \"%.200s\": entry is not an object",
				    lb, name);

	dt = json_object_get(v, "dtype");
	if (!json_is_string(dt))
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": dtype is missing or not a string", lb,
				    name);
	dts = json_string_value(dt);
	for (i = 0; i < FR_ARRAY_SIZE(st_dtypes); i++)
		if (!strcmp(dts, st_dtypes[i].name))
			dtype = st_dtypes[i].dtype;
	if (dtype == -1)
		return fr_error_set(err, -ENOTSUP,
				    "%s: tensor \"%.200s\": dtype %s is not supported (F32, BF16, "
				    "F16 only)", lb, name, dts);
	if (dtype < 0)
		return fr_error_set(err, -EINVAL, "%s: tensor \"%.200s\": unknown dtype \"%.32s\"",
				    lb, name, dts);

	shape = json_object_get(v, "shape");
	if (!json_is_array(shape))
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": shape is missing or not an array", lb,
				    name);
	if (json_array_size(shape) > MODEL_MAX_DIMS)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": shape has %zu dims, at most %d supported",
				    lb, name, json_array_size(shape), MODEL_MAX_DIMS);
	for (i = 0; i < json_array_size(shape); i++) {
		const json_t *d = json_array_get(shape, i);
		json_int_t x;
		if (!json_is_integer(d))
			return fr_error_set(err, -EINVAL,
					    "%s: tensor \"%.200s\": shape[%zu] is not an integer", lb,
					    name, i);
		x = json_integer_value(d);
		if (x < 0)
			return fr_error_set(err, -EINVAL,
					    "%s: tensor \"%.200s\": shape[%zu] is negative (%lld)",
					    lb, name, i, (long long)x);
		if (__builtin_mul_overflow(count, (uint64_t)x, &count))
			return fr_error_set(err, -EINVAL,
					    "%s: tensor \"%.200s\": shape element count overflows",
					    lb, name);
		t->shape[i] = x;
	}
	t->ndim = (int)json_array_size(shape);

	offs = json_object_get(v, "data_offsets");
	if (!json_is_array(offs) || json_array_size(offs) != 2)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": data_offsets is missing or not a "
				    "[begin, end] pair", lb, name);
	jb = json_array_get(offs, 0);
	je = json_array_get(offs, 1);
	if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
	    json_integer_value(je) < 0)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": data_offsets must be non-negative "
				    "integers", lb, name);
	begin = (uint64_t)json_integer_value(jb);
	end = (uint64_t)json_integer_value(je);
	if (begin > end)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": data_offsets [%llu, %llu] has begin > end",
				    lb, name, (unsigned long long)begin, (unsigned long long)end);
	if (end > dlen)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": data_offsets [%llu, %llu] run past the "
				    "end of the data section (%zu bytes)", lb, name,
				    (unsigned long long)begin, (unsigned long long)end, dlen);
	if (__builtin_mul_overflow(count, (uint64_t)kn_dtype_size((enum kn_dtype)dtype), &nbytes))
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": shape byte size overflows", lb, name);
	if (nbytes != end - begin)
		return fr_error_set(err, -EINVAL,
				    "%s: tensor \"%.200s\": dtype %s x shape is %llu bytes but "
				    "data_offsets span %llu", lb, name, dts,
				    (unsigned long long)nbytes, (unsigned long long)(end - begin));

	t->dtype = (enum kn_dtype)dtype;
	t->data = data + begin;
	t->nbytes = (size_t)nbytes;
	t->path = f->label;
	return 0;
}

struct st_range {
	uint64_t begin, end;
	size_t i;
};

static int st_range_cmp(const void *a, const void *b)
{
	const struct st_range *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

static int st_check_overlaps(const struct model_st_file *f, const uint8_t *data,
			     struct fr_error *err)
{
	struct st_range *r;
	size_t m = 0;
	int rc = 0;

	r = malloc((f->n ? f->n : 1) * sizeof(*r));
	if (!r)
		return fr_error_set(err, -ENOMEM, "%s: out of memory", f->label);
	for (size_t i = 0; i < f->n; i++) {
		const struct model_tensor *t = &f->tensors[i];
		uint64_t b = (uint64_t)((const uint8_t *)t->data - data);
		if (t->nbytes) /* empty tensors occupy no bytes */
			r[m++] = (struct st_range){ b, b + t->nbytes, i };
	}
	qsort(r, m, sizeof(*r), st_range_cmp);
	for (size_t j = 1; j < m; j++) {
		if (r[j].begin < r[j - 1].end) {
			rc = fr_error_set(err, -EINVAL,
					  "%s: tensors \"%.200s\" and \"%.200s\" have overlapping "
					  "data_offsets", f->label, f->tensors[r[j - 1].i].name,
					  f->tensors[r[j].i].name);
			break;
		}
	}
	free(r);
	return rc;
}

static int st_build_index(struct model_st_file *f, struct fr_error *err)
{
	size_t cap = 16;

	while (cap < 2 * f->n)
		cap *= 2;
	f->slots = calloc(cap, sizeof(*f->slots));
	if (!f->slots)
		return fr_error_set(err, -ENOMEM, "%s: out of memory", f->label);
	f->mask = cap - 1;
	for (size_t i = 0; i < f->n; i++) {
		size_t s = (size_t)fr_hash64(f->tensors[i].name) & f->mask;
		for (; f->slots[s]; s = (s + 1) & f->mask)
			if (!strcmp(f->tensors[f->slots[s] - 1].name, f->tensors[i].name))
				return fr_error_set(err, -EINVAL,
						    "%s: tensor \"%.200s\" is listed twice",
						    f->label, f->tensors[i].name);
		f->slots[s] = (uint32_t)(i + 1);
	}
	return 0;
}

static int st_parse(struct model_st_file *f, const uint8_t *base, size_t len,
		    struct fr_error *err)
{
	const char *lb = f->label;
	const uint8_t *data;
	size_t dlen, names_len = 0, k = 0, off = 0;
	uint64_t hlen = 0;
	json_error_t jerr;
	const char *key;
	json_t *root, *v;
	int rc = 0;

	if (len < 8)
		return fr_error_set(err, -EINVAL,
				    "%s: %zu bytes, too short for the 8-byte header length", lb,
				    len);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | base[i];
	if (hlen > ST_MAX_HEADER)
		return fr_error_set(err, -EINVAL,
				    "%s: header length %llu is over the limit of %u bytes", lb,
				    (unsigned long long)hlen, ST_MAX_HEADER);
	if (hlen > len - 8)
		return fr_error_set(err, -EINVAL,
				    "%s: header length %llu runs past the end of the file "
				    "(%zu bytes)", lb, (unsigned long long)hlen, len);
	data = base + 8 + hlen;
	dlen = len - 8 - (size_t)hlen;

	root = json_loadb((const char *)base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL,
				    "%s: header is not valid JSON (line %d column %d): %s", lb,
				    jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		rc = fr_error_set(err, -EINVAL, "%s: header is not a JSON object", lb);
		goto out;
	}

	json_object_foreach(root, key, v) {
		if (!strcmp(key, "__metadata__")) {
			const char *mk;
			json_t *mv;
			if (!json_is_object(v)) {
				rc = fr_error_set(err, -EINVAL,
						  "%s: __metadata__ is not an object", lb);
				goto out;
			}
			json_object_foreach(v, mk, mv) {
				if (!json_is_string(mv)) {
					rc = fr_error_set(err, -EINVAL,
							  "%s: __metadata__ value \"%.200s\" is "
							  "not a string", lb, mk);
					goto out;
				}
			}
			continue;
		}
		f->n++;
		names_len += strlen(key) + 1;
	}
	if (f->n > ST_MAX_TENSORS) {
		rc = fr_error_set(err, -EINVAL, "%s: %zu tensors, more than the limit of %u", lb,
				  f->n, ST_MAX_TENSORS);
		goto out;
	}

	f->tensors = calloc(f->n ? f->n : 1, sizeof(*f->tensors));
	f->names = malloc(names_len ? names_len : 1);
	if (!f->tensors || !f->names) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", lb);
		goto out;
	}
	json_object_foreach(root, key, v) {
		size_t kl = strlen(key) + 1;
		if (!strcmp(key, "__metadata__"))
			continue;
		memcpy(f->names + off, key, kl);
		f->tensors[k].name = f->names + off;
		off += kl;
		rc = st_entry(f, key, v, data, dlen, &f->tensors[k], err);
		if (rc < 0)
			goto out;
		k++;
	}

	rc = st_check_overlaps(f, data, err);
	if (rc < 0)
		goto out;
	rc = st_build_index(f, err);
out:
	json_decref(root);
	return rc;
}

void model_st_close(struct model_st_file *f)
{
	if (!f)
		return;
	if (f->map)
		munmap(f->map, f->map_len);
	free(f->slots);
	free(f->tensors);
	free(f->names);
	free(f->label);
	free(f);
}

static struct model_st_file *st_new(const char *label)
{
	struct model_st_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->label = strdup(label);
	if (!f->label) {
		free(f);
		return NULL;
	}
	return f;
}

int model_st_open_buffer(const void *buf, size_t len, const char *label,
			 struct model_st_file **ret, struct fr_error *err)
{
	struct model_st_file *f;
	int rc;

	if (!label)
		label = "<buffer>";
	if (!buf && len)
		return fr_error_set(err, -EINVAL, "%s: no buffer", label);
	f = st_new(label);
	if (!f)
		return fr_error_set(err, -ENOMEM, "%s: out of memory", label);
	rc = st_parse(f, buf, len, err);
	if (rc < 0) {
		model_st_close(f);
		return rc;
	}
	*ret = f;
	return 0;
}

int model_st_open(const char *path, struct model_st_file **ret, struct fr_error *err)
{
	struct model_st_file *f = NULL;
	struct stat st;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = fr_error_set(err, -EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	if (st.st_size < 8) {
		rc = fr_error_set(err, -EINVAL,
				  "%s: %lld bytes, too short for the 8-byte header length", path,
				  (long long)st.st_size);
		goto fail;
	}
	f = st_new(path);
	if (!f) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	f->map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (f->map == MAP_FAILED) {
		f->map = NULL;
		rc = fr_error_set(err, -errno, "%s: mmap: %s", path, strerror(errno));
		goto fail;
	}
	f->map_len = (size_t)st.st_size;
	rc = st_parse(f, f->map, f->map_len, err);
	if (rc < 0)
		goto fail;
	close(fd);
	*ret = f;
	return 0;
fail:
	model_st_close(f);
	close(fd);
	return rc;
}

size_t model_st_count(const struct model_st_file *f)
{
	return f ? f->n : 0;
}

const struct model_tensor *model_st_tensor(const struct model_st_file *f, size_t i)
{
	return f && i < f->n ? &f->tensors[i] : NULL;
}

const struct model_tensor *model_st_find(const struct model_st_file *f, const char *name)
{
	if (!f || !name || !f->slots)
		return NULL;
	for (size_t s = (size_t)fr_hash64(name) & f->mask; f->slots[s]; s = (s + 1) & f->mask) {
		const struct model_tensor *t = &f->tensors[f->slots[s] - 1];
		if (!strcmp(t->name, name))
			return t;
	}
	return NULL;
}
