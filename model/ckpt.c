/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ckpt.c - HF model directories: config.json plus one model.safetensors or an index
 * (model.safetensors.index.json) and its shards.
 *
 * Sharded checkpoints are checked both ways: every tensor the index lists must be in the
 * shard it names, and every tensor in a shard must be listed in the index (an unlisted one is
 * an error, not a warning: it means the index and the shards come from different saves, and a
 * lookup would otherwise depend on which shard happened to be searched first).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "model/model.h"

#define CK_MAX_INDEX_BYTES (256u << 20)
#define CK_MAX_SHARD_NAME 255

struct model_ckpt {
	char *dir;
	struct model_config cfg;
	size_t n_shards;
	struct model_st_file **shards;  /* [n_shards], owned */
	char **shard_names;             /* [n_shards], owned; NULL for a single file */
	const struct model_tensor **slots; /* sharded: name -> tensor, [mask + 1]; else NULL */
	size_t mask;
};

/* ---- index.json -------------------------------------------------------------------------- */

static bool ck_plain_file_name(const char *s)
{
	size_t n = strlen(s);
	return n > 0 && n <= CK_MAX_SHARD_NAME && !strchr(s, '/') && !strchr(s, '\\') &&
	       strcmp(s, ".") && strcmp(s, "..");
}

int model_index_parse(const char *json, size_t len,
		      int (*cb)(const char *name, const char *file, void *ctx), void *ctx,
		      struct fr_error *err)
{
	const json_t *map, *meta;
	json_error_t jerr;
	const char *key;
	json_t *root, *v;
	int rc = 0;

	if (!json && len)
		return fr_error_set(err, -EINVAL, "no input");
	root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "invalid JSON at line %d column %d: %s",
				    jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root)) {
		rc = fr_error_set(err, -EINVAL, "top level is not an object");
		goto out;
	}
	meta = json_object_get(root, "metadata");
	if (meta && !json_is_object(meta) && !json_is_null(meta)) {
		rc = fr_error_set(err, -EINVAL, "metadata is not an object");
		goto out;
	}
	map = json_object_get(root, "weight_map");
	if (!map) {
		rc = fr_error_set(err, -EINVAL, "weight_map is missing");
		goto out;
	}
	if (!json_is_object(map)) {
		rc = fr_error_set(err, -EINVAL, "weight_map is not an object");
		goto out;
	}
	if (json_object_size(map) == 0) {
		rc = fr_error_set(err, -EINVAL, "weight_map is empty");
		goto out;
	}
	json_object_foreach((json_t *)map, key, v) {
		const char *file;
		if (!key[0]) {
			rc = fr_error_set(err, -EINVAL, "weight_map has an empty tensor name");
			goto out;
		}
		if (!json_is_string(v)) {
			rc = fr_error_set(err, -EINVAL,
					  "weight_map[\"%.200s\"]: shard file is not a string", key);
			goto out;
		}
		file = json_string_value(v);
		if (!ck_plain_file_name(file)) {
			rc = fr_error_set(err, -EINVAL,
					  "weight_map[\"%.200s\"]: shard file \"%.200s\" is not a "
					  "plain file name (no path separators or \"..\")", key, file);
			goto out;
		}
		rc = cb(key, file, ctx);
		if (rc < 0)
			goto out;
	}
out:
	json_decref(root);
	return rc;
}

/* ---- opening ------------------------------------------------------------------------------ */

struct ck_entry {
	char *name;
	size_t shard;
};

struct ck_load {
	struct model_ckpt *ck;
	size_t cap_shards;
	struct ck_entry *ents;
	size_t n, cap;
	struct fr_error *err;
};

static int ck_index_cb(const char *name, const char *file, void *ctx)
{
	struct ck_load *ld = ctx;
	struct model_ckpt *ck = ld->ck;
	size_t s;

	/* Indexes list a shard's tensors in runs: try the last shard first. */
	s = ck->n_shards;
	if (s && !strcmp(ck->shard_names[s - 1], file))
		s--;
	else
		for (s = 0; s < ck->n_shards && strcmp(ck->shard_names[s], file); s++)
			;
	if (s == ck->n_shards) {
		if (ck->n_shards == ld->cap_shards) {
			size_t cap = ld->cap_shards ? 2 * ld->cap_shards : 8;
			char **p = realloc(ck->shard_names, cap * sizeof(*p));
			if (!p)
				return fr_error_set(ld->err, -ENOMEM, "out of memory");
			ck->shard_names = p;
			ld->cap_shards = cap;
		}
		ck->shard_names[s] = strdup(file);
		if (!ck->shard_names[s])
			return fr_error_set(ld->err, -ENOMEM, "out of memory");
		ck->n_shards++;
	}
	if (ld->n == ld->cap) {
		size_t cap = ld->cap ? 2 * ld->cap : 256;
		struct ck_entry *p = realloc(ld->ents, cap * sizeof(*p));
		if (!p)
			return fr_error_set(ld->err, -ENOMEM, "out of memory");
		ld->ents = p;
		ld->cap = cap;
	}
	ld->ents[ld->n].name = strdup(name);
	if (!ld->ents[ld->n].name)
		return fr_error_set(ld->err, -ENOMEM, "out of memory");
	ld->ents[ld->n++].shard = s;
	return 0;
}

static const struct model_tensor **ck_slot(const struct model_ckpt *ck, const char *name)
{
	size_t s = (size_t)fr_hash64(name) & ck->mask;
	for (; ck->slots[s]; s = (s + 1) & ck->mask)
		if (!strcmp(ck->slots[s]->name, name))
			break;
	return &ck->slots[s];
}

/* Opens the shards named by the index and cross-checks index and shards. */
static int ck_open_sharded(struct model_ckpt *ck, const char *ipath, const char *json,
			   size_t len, struct fr_error *err)
{
	struct ck_load ld = { .ck = ck, .err = err };
	size_t cap = 16;
	int rc;

	rc = model_index_parse(json, len, ck_index_cb, &ld, err);
	if (rc < 0) {
		fr_error_prefix(err, rc, "%s", ipath);
		goto out;
	}
	ck->shards = calloc(ck->n_shards, sizeof(*ck->shards));
	if (!ck->shards) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < ck->n_shards; i++) {
		char path[4096];
		if (snprintf(path, sizeof(path), "%s/%s", ck->dir, ck->shard_names[i]) >=
		    (int)sizeof(path)) {
			rc = fr_error_set(err, -ENAMETOOLONG, "%s: shard path too long", ck->dir);
			goto out;
		}
		rc = model_st_open(path, &ck->shards[i], err);
		if (rc < 0) {
			fr_error_prefix(err, rc, "%s names shard %s", ipath, ck->shard_names[i]);
			goto out;
		}
	}

	while (cap < 2 * ld.n)
		cap *= 2;
	ck->slots = calloc(cap, sizeof(*ck->slots));
	if (!ck->slots) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	ck->mask = cap - 1;
	for (size_t i = 0; i < ld.n; i++) {
		const struct ck_entry *e = &ld.ents[i];
		const struct model_tensor *t = model_st_find(ck->shards[e->shard], e->name);
		if (!t) {
			for (size_t j = 0; j < ck->n_shards && !t; j++)
				t = model_st_find(ck->shards[j], e->name);
			if (t)
				rc = fr_error_set(err, -EINVAL,
						  "%s: tensor %.200s is in %s, but the index says %s",
						  ipath, e->name, t->path, ck->shard_names[e->shard]);
			else
				rc = fr_error_set(err, -EINVAL,
						  "%s: tensor %.200s is listed in shard %s but is "
						  "not in it", ipath, e->name, ck->shard_names[e->shard]);
			goto out;
		}
		*ck_slot(ck, e->name) = t; /* names are unique: the JSON rejects duplicates */
	}
	for (size_t i = 0; i < ck->n_shards; i++) {
		for (size_t j = 0; j < model_st_count(ck->shards[i]); j++) {
			const struct model_tensor *t = model_st_tensor(ck->shards[i], j);
			if (*ck_slot(ck, t->name) != t) {
				rc = fr_error_set(err, -EINVAL,
						  "%s: tensor %.200s is not listed in the index",
						  t->path, t->name);
				goto out;
			}
		}
	}
	rc = 0;
out:
	for (size_t i = 0; i < ld.n; i++)
		free(ld.ents[i].name);
	free(ld.ents);
	return rc;
}

int model_ckpt_open(const char *dir, struct model_ckpt **ret, struct fr_error *err)
{
	struct model_ckpt *ck;
	char path[4096];
	char *json = NULL;
	size_t len;
	int rc;

	ck = calloc(1, sizeof(*ck));
	if (!ck)
		return fr_error_set(err, -ENOMEM, "out of memory");
	ck->dir = strdup(dir);
	if (!ck->dir) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	rc = model_config_load(dir, &ck->cfg, err);
	if (rc < 0)
		goto fail;

	if (snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir) >=
	    (int)sizeof(path)) {
		rc = fr_error_set(err, -ENAMETOOLONG, "%s: path too long", dir);
		goto fail;
	}
	rc = fr_read_file(path, CK_MAX_INDEX_BYTES, &json, &len, err);
	if (rc == 0) {
		rc = ck_open_sharded(ck, path, json, len, err);
		if (rc < 0)
			goto fail;
	} else if (rc == -ENOENT) {
		snprintf(path, sizeof(path), "%s/model.safetensors", dir);
		ck->shards = calloc(1, sizeof(*ck->shards));
		if (!ck->shards) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		rc = model_st_open(path, &ck->shards[0], err);
		if (rc == -ENOENT)
			fr_error_set(err, rc, "%s: neither model.safetensors.index.json nor "
				     "model.safetensors is there", dir);
		if (rc < 0)
			goto fail;
		ck->n_shards = 1;
	} else {
		goto fail;
	}
	free(json);
	*ret = ck;
	return 0;
fail:
	free(json);
	model_ckpt_close(ck);
	return rc;
}

void model_ckpt_close(struct model_ckpt *ck)
{
	if (!ck)
		return;
	for (size_t i = 0; i < ck->n_shards; i++) {
		if (ck->shards)
			model_st_close(ck->shards[i]);
		if (ck->shard_names)
			free(ck->shard_names[i]);
	}
	free(ck->shards);
	free(ck->shard_names);
	free(ck->slots);
	free(ck->dir);
	free(ck);
}

const struct model_config *model_ckpt_config(const struct model_ckpt *ck)
{
	return &ck->cfg;
}

const char *model_ckpt_dir(const struct model_ckpt *ck)
{
	return ck->dir;
}

const struct model_tensor *model_ckpt_find(const struct model_ckpt *ck, const char *name)
{
	if (!ck || !name)
		return NULL;
	if (!ck->slots)
		return ck->n_shards ? model_st_find(ck->shards[0], name) : NULL;
	return *ck_slot(ck, name);
}
