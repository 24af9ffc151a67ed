/* SPDX-License-Identifier: Apache-2.0 */
/*
 * loadfile.c - load-profile files (format in placement.h): JSON through jansson, every value
 * checked, every refusal naming where it is.
 */
#include "placement/placement.h"
#include "common/json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOADFILE_MAX_BYTES (64u << 20)

/* An optional size key: absent, or an integer that must equal `actual`. */
static int check_size_key(const json_t *root, const char *key, int actual, const char *what,
			  struct fr_error *err)
{
	const json_t *v = json_object_get(root, key);

	if (!v)
		return 0;
	if (!json_is_integer(v))
		return fr_error_set(err, -EINVAL, "load profile: \"%s\" is %s, not an integer", key,
				    fr_json_kind(v));
	if (json_integer_value(v) != actual)
		return fr_error_set(err, -EINVAL, "load profile: \"%s\" is %lld but \"layers\" holds "
				    "%d %s", key, (long long)json_integer_value(v), actual, what);
	return 0;
}

static int parse_root(const json_t *root, int want_layers, int want_experts,
		      struct co_load_profile *ret, struct fr_error *err)
{
	const json_t *layers, *v;
	const char *key;
	double *load = NULL;
	size_t n_layers, n_experts = 0;
	int rc;

	json_object_foreach((json_t *)root, key, v) {
		if (strcmp(key, "layers") && strcmp(key, "n_layers") && strcmp(key, "n_experts") &&
		    strcmp(key, "comment"))
			return fr_error_set(err, -EINVAL,
					    "load profile: unknown key \"%.64s\" (expected "
					    "\"layers\", \"n_layers\", \"n_experts\", \"comment\")",
					    key);
	}
	v = json_object_get(root, "comment");
	if (v && !json_is_string(v))
		return fr_error_set(err, -EINVAL, "load profile: \"comment\" is %s, not a string",
				    fr_json_kind(v));
	layers = json_object_get(root, "layers");
	if (!layers)
		return fr_error_set(err, -EINVAL, "load profile: no \"layers\" array");
	if (!json_is_array(layers))
		return fr_error_set(err, -EINVAL, "load profile: \"layers\" is %s, not an array",
				    fr_json_kind(layers));
	n_layers = json_array_size(layers);
	if (n_layers == 0)
		return fr_error_set(err, -EINVAL, "load profile: \"layers\" is empty");
	if (n_layers > CO_PLACE_MAX_LAYERS)
		return fr_error_set(err, -EINVAL, "load profile: %zu layers, more than the limit %d",
				    n_layers, CO_PLACE_MAX_LAYERS);
	for (size_t l = 0; l < n_layers; l++) {
		const json_t *row = json_array_get(layers, l);
		size_t n;

		if (!json_is_array(row))
			return fr_error_set(err, -EINVAL, "load profile: layers[%zu] is %s, not an "
					    "array of loads", l, fr_json_kind(row));
		n = json_array_size(row);
		if (l == 0) {
			if (n == 0)
				return fr_error_set(err, -EINVAL,
						    "load profile: layers[0] has no experts");
			if (n > CO_PLACE_MAX_EXPERTS)
				return fr_error_set(err, -EINVAL,
						    "load profile: layers[0] has %zu experts, more "
						    "than the limit %d", n, CO_PLACE_MAX_EXPERTS);
			n_experts = n;
		} else if (n != n_experts) {
			return fr_error_set(err, -EINVAL,
					    "load profile: layers[%zu] has %zu loads, layers[0] "
					    "has %zu", l, n, n_experts);
		}
	}
	if ((rc = check_size_key(root, "n_layers", (int)n_layers, "layers", err)) < 0 ||
	    (rc = check_size_key(root, "n_experts", (int)n_experts, "experts per layer", err)) < 0)
		return rc;
	if (want_layers > 0 && (size_t)want_layers != n_layers)
		return fr_error_set(err, -EINVAL, "load profile: %zu layers, the model has %d MoE "
				    "layers", n_layers, want_layers);
	if (want_experts > 0 && (size_t)want_experts != n_experts)
		return fr_error_set(err, -EINVAL, "load profile: %zu experts per layer, the model "
				    "has %d routed experts", n_experts, want_experts);

	load = malloc(sizeof(*load) * n_layers * n_experts);
	if (!load)
		return fr_error_set(err, -ENOMEM, "load profile: out of memory for %zu x %zu loads",
				    n_layers, n_experts);
	for (size_t l = 0; l < n_layers; l++) {
		const json_t *row = json_array_get(layers, l);
		double sum = 0;
		for (size_t e = 0; e < n_experts; e++) {
			const json_t *x = json_array_get(row, e);
			double d;
			if (!json_is_number(x)) {
				rc = fr_error_set(err, -EINVAL, "load profile: layers[%zu][%zu] is %s, "
						  "not a number", l, e, fr_json_kind(x));
				goto fail;
			}
			d = json_number_value(x);
			if (!isfinite(d) || d < 0) {
				rc = fr_error_set(err, -EINVAL, "load profile: layers[%zu][%zu] is %g: "
						  "loads must be finite and >= 0", l, e, d);
				goto fail;
			}
			load[l * n_experts + e] = d;
			sum += d;
		}
		if (!isfinite(sum)) {
			rc = fr_error_set(err, -EINVAL, "load profile: layers[%zu] adds up past the "
					  "largest double: scale the loads down", l);
			goto fail;
		}
	}
	*ret = (struct co_load_profile){ (int)n_layers, (int)n_experts, load };
	return 0;
fail:
	free(load);
	return rc;
}

int co_load_profile_parse(const char *json, size_t len, int want_layers, int want_experts,
			  struct co_load_profile *ret, struct fr_error *err)
{
	json_error_t jerr;
	json_t *root;
	int rc;

	if (!json && len)
		return fr_error_set(err, -EINVAL, "load profile: no input");
	root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "load profile: invalid JSON at line %d column %d: %s",
				    jerr.line, jerr.column, jerr.text);
	if (!json_is_object(root))
		rc = fr_error_set(err, -EINVAL, "load profile: top level is %s, not an object",
				  fr_json_kind(root));
	else
		rc = parse_root(root, want_layers, want_experts, ret, err);
	json_decref(root);
	return rc;
}

int co_load_profile_read(const char *path, int want_layers, int want_experts,
			 struct co_load_profile *ret, struct fr_error *err)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	rc = fr_read_file(path, LOADFILE_MAX_BYTES, &buf, &len, err);
	if (rc < 0)
		return rc;
	rc = co_load_profile_parse(buf, len, want_layers, want_experts, ret, err);
	if (rc < 0)
		fr_error_prefix(err, rc, "%s", path);
	free(buf);
	return rc;
}

void co_load_profile_fini(struct co_load_profile *pr)
{
	if (!pr)
		return;
	free(pr->load);
	pr->load = NULL;
	pr->n_layers = pr->n_experts = 0;
}
