/* SPDX-License-Identifier: Apache-2.0 */
/*
 * placementfile.c - placement files (format in placement.h): a plan written by
 * `ferryctl placement plan --out` and read back as --prev. JSON through jansson; the reader
 * checks every value and names where a refusal is ("layers[3][17] (worker 2 slot 5): ...").
 */
#include "placement/placement-internal.h"
#include "common/json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PLACEFILE_MAX_BYTES (256u << 20)
#define PLACEFILE_FORMAT "ferry-placement"

/* A required (or optional, when !need) integer key in [lo, hi]; absent leaves *ret. */
static int get_int_key(const json_t *root, const char *key, bool need, long lo, long hi,
		       int *ret, struct fr_error *err)
{
	const json_t *v = json_object_get(root, key);
	json_int_t x;

	if (!v) {
		if (need)
			return fr_error_set(err, -EINVAL, "placement file: no \"%s\"", key);
		return 0;
	}
	if (!json_is_integer(v))
		return fr_error_set(err, -EINVAL, "placement file: \"%s\" is %s, not an integer",
				    key, fr_json_kind(v));
	x = json_integer_value(v);
	if (x < lo || x > hi)
		return fr_error_set(err, -EINVAL, "placement file: \"%s\" is %lld, not in [%ld, %ld]",
				    key, (long long)x, lo, hi);
	*ret = (int)x;
	return 0;
}

static int parse_slots(const json_t *root, int n_workers, int *slots, long *ret_total,
		       struct fr_error *err)
{
	const json_t *arr = json_object_get(root, "slots");
	long total = 0;

	if (!arr)
		return fr_error_set(err, -EINVAL, "placement file: no \"slots\" array");
	if (!json_is_array(arr))
		return fr_error_set(err, -EINVAL, "placement file: \"slots\" is %s, not an array",
				    fr_json_kind(arr));
	if (json_array_size(arr) != (size_t)n_workers)
		return fr_error_set(err, -EINVAL, "placement file: \"slots\" has %zu entries, "
				    "\"n_workers\" is %d", json_array_size(arr), n_workers);
	for (int w = 0; w < n_workers; w++) {
		const json_t *v = json_array_get(arr, (size_t)w);
		json_int_t x;

		if (!json_is_integer(v))
			return fr_error_set(err, -EINVAL, "placement file: slots[%d] is %s, not an "
					    "integer", w, fr_json_kind(v));
		x = json_integer_value(v);
		if (x < 0 || x > CO_PLACE_MAX_SLOTS)
			return fr_error_set(err, -EINVAL, "placement file: slots[%d] is %lld, not in "
					    "[0, %d]", w, (long long)x, CO_PLACE_MAX_SLOTS);
		slots[w] = (int)x;
		total += x;
		if (total > CO_PLACE_MAX_SLOTS)
			return fr_error_set(err, -EINVAL, "placement file: \"slots\" add up to more "
					    "than the limit %d per layer", CO_PLACE_MAX_SLOTS);
	}
	*ret_total = total;
	return 0;
}

/* Checks "layers" against the slot count; *ret_max: the largest expert id seen (-1: none). */
static int check_layers(const json_t *layers, long total, size_t *ret_n, int *ret_max,
			struct fr_error *err)
{
	size_t n = 0;
	int max = -1;

	if (!layers)
		return fr_error_set(err, -EINVAL, "placement file: no \"layers\" array");
	if (!json_is_array(layers))
		return fr_error_set(err, -EINVAL, "placement file: \"layers\" is %s, not an array",
				    fr_json_kind(layers));
	n = json_array_size(layers);
	if (n == 0)
		return fr_error_set(err, -EINVAL, "placement file: \"layers\" is empty");
	if (n > CO_PLACE_MAX_LAYERS)
		return fr_error_set(err, -EINVAL, "placement file: %zu layers, more than the limit %d",
				    n, CO_PLACE_MAX_LAYERS);
	if ((long)n * total > CO_PLACE_MAX_CELLS)
		return fr_error_set(err, -EINVAL, "placement file: %zu layers x %ld slots, more "
				    "than the limit %d", n, total, CO_PLACE_MAX_CELLS);
	for (size_t l = 0; l < n; l++) {
		const json_t *row = json_array_get(layers, l);

		if (!json_is_array(row))
			return fr_error_set(err, -EINVAL, "placement file: layers[%zu] is %s, not an "
					    "array of experts", l, fr_json_kind(row));
		if (json_array_size(row) != (size_t)total)
			return fr_error_set(err, -EINVAL, "placement file: layers[%zu] has %zu slots, "
					    "\"slots\" add up to %ld", l, json_array_size(row),
					    total);
		for (long g = 0; g < total; g++) {
			const json_t *v = json_array_get(row, (size_t)g);
			json_int_t x;

			if (!json_is_integer(v))
				return fr_error_set(err, -EINVAL, "placement file: layers[%zu][%ld] "
						    "is %s, not an expert id", l, g, fr_json_kind(v));
			x = json_integer_value(v);
			if (x < CO_PLACE_EMPTY || x >= CO_PLACE_MAX_EXPERTS)
				return fr_error_set(err, -EINVAL, "placement file: layers[%zu][%ld]: "
						    "expert %lld out of range (-1 for an empty "
						    "slot, at most %d)", l, g, (long long)x,
						    CO_PLACE_MAX_EXPERTS - 1);
			max = FR_MAX(max, (int)x);
		}
	}
	*ret_n = n;
	*ret_max = max;
	return 0;
}

static int parse_root(const json_t *root, int want_experts, struct co_placement **ret,
		      struct fr_error *err)
{
	/* "epoch", "workers" and "load" are what `ferryctl placement show --json` adds about
	 * the cluster it read: accepted (so its output reads back), not used. */
	static const char *const keys[] = { "format", "n_workers", "slots", "n_experts",
					    "n_layers", "layers", "comment", "epoch", "workers",
					    "load" };
	struct co_placement *p = NULL;
	const json_t *layers, *v;
	const char *key;
	int n_workers = 0, n_experts = 0, n_layers = 0, max_id = -1, rc;
	int *slots = NULL;
	int32_t *seen = NULL;
	size_t n = 0;
	long total = 0;

	json_object_foreach((json_t *)root, key, v) {
		size_t i = 0;
		while (i < FR_ARRAY_SIZE(keys) && strcmp(key, keys[i]))
			i++;
		if (i == FR_ARRAY_SIZE(keys))
			return fr_error_set(err, -EINVAL, "placement file: unknown key \"%.64s\" "
					    "(expected \"n_workers\", \"slots\", \"layers\", "
					    "\"n_experts\", \"n_layers\", \"format\", \"comment\"; "
					    "\"epoch\", \"workers\", \"load\" are read past)",
					    key);
	}
	v = json_object_get(root, "format");
	if (v && (!json_is_string(v) || strcmp(json_string_value(v), PLACEFILE_FORMAT)))
		return fr_error_set(err, -EINVAL, "placement file: \"format\" is %s%.64s%s, not "
				    "\"" PLACEFILE_FORMAT "\"", json_is_string(v) ? "\"" : "",
				    json_is_string(v) ? json_string_value(v) : fr_json_kind(v),
				    json_is_string(v) ? "\"" : "");
	v = json_object_get(root, "comment");
	if (v && !json_is_string(v))
		return fr_error_set(err, -EINVAL, "placement file: \"comment\" is %s, not a string",
				    fr_json_kind(v));
	if ((rc = get_int_key(root, "n_workers", true, 1, CO_PLACE_MAX_WORKERS, &n_workers,
			      err)) < 0 ||
	    (rc = get_int_key(root, "n_experts", false, 1, CO_PLACE_MAX_EXPERTS, &n_experts,
			      err)) < 0 ||
	    (rc = get_int_key(root, "n_layers", false, 1, CO_PLACE_MAX_LAYERS, &n_layers,
			      err)) < 0)
		return rc;
	slots = malloc(sizeof(*slots) * (size_t)n_workers);
	if (!slots)
		return fr_error_set(err, -ENOMEM, "placement file: out of memory");
	if ((rc = parse_slots(root, n_workers, slots, &total, err)) < 0)
		goto out;
	layers = json_object_get(root, "layers");
	if ((rc = check_layers(layers, total, &n, &max_id, err)) < 0)
		goto out;
	if (n_layers && (size_t)n_layers != n) {
		rc = fr_error_set(err, -EINVAL, "placement file: \"n_layers\" is %d but \"layers\" "
				  "holds %zu", n_layers, n);
		goto out;
	}
	if (!n_experts)
		n_experts = max_id + 1; /* without the key: the experts the table names */
	if (n_experts < 1) {
		rc = fr_error_set(err, -EINVAL, "placement file: every slot is empty");
		goto out;
	}
	if (want_experts > 0 && n_experts != want_experts) {
		rc = fr_error_set(err, -EINVAL, "placement file: %d experts per layer, %d expected",
				  n_experts, want_experts);
		goto out;
	}
	rc = co_place__alloc((int)n, n_experts, n_workers, slots, &p, err);
	if (rc < 0) {
		fr_error_prefix(err, rc, "placement file");
		goto out;
	}
	seen = calloc((size_t)n_experts, sizeof(*seen));
	if (!seen) {
		rc = fr_error_set(err, -ENOMEM, "placement file: out of memory");
		goto out;
	}
	for (size_t l = 0; l < n; l++) {
		const json_t *row = json_array_get(layers, l);
		int32_t *se = p->slot_expert + l * (size_t)total;

		for (long g = 0; g < total; g++) {
			int e = (int)json_integer_value(json_array_get(row, (size_t)g));
			int w = p->slot_worker[g];

			if (e >= n_experts) {
				rc = fr_error_set(err, -EINVAL, "placement file: layers[%zu][%ld] "
						  "(worker %d slot %ld): expert %d out of range (%d "
						  "experts)", l, g, w, g - p->slot_base[w], e,
						  n_experts);
				goto out;
			}
			se[g] = e;
			if (e >= 0)
				seen[e] = (int32_t)l + 1;
		}
		for (int e = 0; e < n_experts; e++)
			if (seen[e] != (int32_t)l + 1) {
				rc = fr_error_set(err, -EINVAL, "placement file: layers[%zu]: expert "
						  "%d is in no slot (every expert needs one)", l,
						  e);
				goto out;
			}
		co_place__build_routing(p, (int)l);
	}
	rc = co_place_check(p, 1, err);
	if (rc < 0)
		goto out;
	*ret = p;
	p = NULL;
out:
	co_place_destroy(p);
	free(seen);
	free(slots);
	return rc;
}

int co_place_file_parse(const char *json, size_t len, int want_experts,
			struct co_placement **ret, struct fr_error *err)
{
	json_error_t jerr;
	json_t *root;
	int rc;

	if (!json && len)
		return fr_error_set(err, -EINVAL, "placement file: no input");
	root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "placement file: invalid JSON at line %d column "
				    "%d: %s", jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root))
		rc = fr_error_set(err, -EINVAL, "placement file: top level is %s, not an object",
				  fr_json_kind(root));
	else
		rc = parse_root(root, want_experts, ret, err);
	json_decref(root);
	return rc;
}

int co_place_file_read(const char *path, int want_experts, struct co_placement **ret,
		       struct fr_error *err)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	rc = fr_read_file(path, PLACEFILE_MAX_BYTES, &buf, &len, err);
	if (rc < 0)
		return rc;
	rc = co_place_file_parse(buf, len, want_experts, ret, err);
	if (rc < 0)
		fr_error_prefix(err, rc, "%s", path);
	free(buf);
	return rc;
}

/* Appends jansson's compact text of v (then decrefs it) to f. */
static int put_json(FILE *f, json_t *v)
{
	int rc = v && json_dumpf(v, f, JSON_COMPACT) == 0 ? 0 : -ENOMEM;

	json_decref(v);
	return rc;
}

static int format_to(const struct co_placement *p, FILE *f)
{
	const size_t S = (size_t)p->total_slots;
	json_t *slots = json_array();
	int rc;

	for (int w = 0; slots && w < p->n_workers; w++)
		if (json_array_append_new(slots, json_integer(p->slots[w])) < 0)
			break;
	fprintf(f, "{\"format\": \"" PLACEFILE_FORMAT "\", \"n_workers\": %d, "
		   "\"n_experts\": %d, \"n_layers\": %d,\n \"slots\": ",
		p->n_workers, p->n_experts, p->n_layers);
	if ((rc = put_json(f, slots)) < 0)
		return rc;
	fputs(",\n \"layers\": [\n", f);
	/* one layer per line: diffable, and readable next to `ferryctl load` */
	for (int l = 0; l < p->n_layers; l++) {
		const int32_t *se = p->slot_expert + (size_t)l * S;
		json_t *row = json_array();

		for (size_t g = 0; row && g < S; g++)
			if (json_array_append_new(row, json_integer(se[g])) < 0) {
				json_decref(row);
				row = NULL;
			}
		fputs("  ", f);
		if ((rc = put_json(f, row)) < 0)
			return rc;
		fputs(l + 1 < p->n_layers ? ",\n" : "\n", f);
	}
	fputs(" ]}\n", f);
	return 0;
}

int co_place_file_format(const struct co_placement *p, char **ret, size_t *ret_len,
			 struct fr_error *err)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f;
	int rc;

	if (!p)
		return fr_error_set(err, -EINVAL, "placement file: no placement");
	f = open_memstream(&buf, &len);
	if (!f)
		return fr_error_set(err, -ENOMEM, "placement file: out of memory");
	rc = format_to(p, f);
	if (fclose(f) != 0 && rc == 0)
		rc = -ENOMEM;
	if (rc < 0) {
		free(buf);
		return fr_error_set(err, rc, "placement file: out of memory formatting %d layers",
				    p->n_layers);
	}
	*ret = buf;
	*ret_len = len;
	return 0;
}

int co_place_file_write(const struct co_placement *p, const char *path, struct fr_error *err)
{
	char *buf = NULL, *tmp = NULL;
	size_t len = 0;
	FILE *f = NULL;
	int rc, fd = -1;

	rc = co_place_file_format(p, &buf, &len, err);
	if (rc < 0)
		return rc;
	/* a temporary file beside the target, renamed over it: never a half-written plan */
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
		tmp = NULL;
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		rc = fr_error_set(err, -errno, "%s: cannot create a temporary file beside it: %s",
				  path, strerror(errno));
		goto out;
	}
	f = fdopen(fd, "w");
	if (!f) {
		rc = fr_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (fwrite(buf, 1, len, f) != len || fflush(f) != 0) {
		rc = fr_error_set(err, -errno ? -errno : -EIO, "%s: write failed: %s", tmp,
				  strerror(errno ? errno : EIO));
		goto out;
	}
	if (fclose(f) != 0) {
		f = NULL;
		rc = fr_error_set(err, -EIO, "%s: write failed: %s", tmp, strerror(errno));
		goto out;
	}
	f = NULL;
	if (rename(tmp, path) < 0) {
		rc = fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	free(tmp);
	tmp = NULL;
out:
	if (f)
		fclose(f);
	if (fd >= 0)
		close(fd);
	if (tmp)
		unlink(tmp);
	free(tmp);
	free(buf);
	return rc;
}
