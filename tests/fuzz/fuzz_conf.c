/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_conf.c - conf_load_string() on arbitrary bytes with a table holding every value type,
 * then the coordinator's and worker's real tables. Invariants: every refusal says why and
 * leaves the struct as it was; whatever loads dumps to text that loads back to the same
 * values; conf_set() on the input's first line never crashes either. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "coordinator/config.h"
#include "worker/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fcfg {
	char *s1, *s2;
	int i;
	uint64_t u;
	double d;
	bool b;
	int e;
	uint64_t size;
	uint64_t ms;
	int neg;
	char *ip, *hp, *listen;
};

static const char *const names[] = { "shm", "tcp", "verbs", NULL };

#define OFF(f) offsetof(struct fcfg, f)
static const struct conf_key fkeys[] = {
	{ "a", "s1", CONF_STR, OFF(s1), .def = "x" },
	{ "a", "s2", CONF_STR, OFF(s2) },
	{ "a", "i", CONF_INT, OFF(i), 1, 1024, .def = "1" },
	{ "a", "neg", CONF_INT, OFF(neg), .def = "-1" },
	{ "b", "u", CONF_U64, OFF(u) },
	{ "b", "d", CONF_DOUBLE, OFF(d), -10, 10, .def = "0.25" },
	{ "b", "b", CONF_BOOL, OFF(b) },
	{ "b", "e", CONF_ENUM, OFF(e), .enum_names = names, .def = "tcp" },
	{ "c", "size", CONF_SIZE, OFF(size), .def = "1G" },
	{ "c", "ms", CONF_DURATION_MS, OFF(ms), 1, 86400000, .def = "30s" },
	{ "d", "ip", CONF_IPV4, OFF(ip), .def = "127.0.0.1" },
	{ "d", "hp", CONF_HOSTPORT, OFF(hp), .def = "[::1]:7400" },
	{ "d", "listen", CONF_HOSTPORT, OFF(listen), 0, 65535 },
};

/* Compares the fields of two structs described by keys. */
static bool equal(const struct conf_key *keys, size_t n, const void *a, const void *b)
{
	for (size_t i = 0; i < n; i++) {
		const char *fa = (const char *)a + keys[i].offset, *fb = (const char *)b + keys[i].offset;
		switch (keys[i].type) {
		case CONF_STR:
		case CONF_IPV4:
		case CONF_HOSTPORT: {
			const char *sa = *(char *const *)(const void *)fa;
			const char *sb = *(char *const *)(const void *)fb;
			if ((sa == NULL) != (sb == NULL) || (sa && strcmp(sa, sb)))
				return false;
			break;
		}
		case CONF_INT:
		case CONF_ENUM:
			if (*(const int *)(const void *)fa != *(const int *)(const void *)fb)
				return false;
			break;
		case CONF_DOUBLE:
			if (*(const double *)(const void *)fa != *(const double *)(const void *)fb)
				return false;
			break;
		case CONF_BOOL:
			if (*(const bool *)(const void *)fa != *(const bool *)(const void *)fb)
				return false;
			break;
		default:
			if (*(const uint64_t *)(const void *)fa != *(const uint64_t *)(const void *)fb)
				return false;
			break;
		}
	}
	return true;
}

static void one_table(const struct conf_key *keys, size_t n, size_t struct_size,
		      const uint8_t *data, size_t size)
{
	void *a = calloc(1, struct_size), *b = calloc(1, struct_size), *before = NULL;
	struct fr_error err = { { 0 } };
	char *text = NULL, *line;
	size_t len = 0;
	FILE *f;

	if (!a || !b)
		abort();
	if (conf_defaults(keys, n, a, &err) < 0 || conf_defaults(keys, n, b, &err) < 0)
		abort();
	if (!(before = malloc(struct_size)))
		abort();
	memcpy(before, a, struct_size);
	if (conf_load_string(keys, n, "fuzz", (const char *)data, size, a, &err) < 0) {
		/* every refusal says why, and changes nothing (not even a string pointer) */
		if (!err.msg[0] || memcmp(before, a, struct_size) != 0)
			abort();
	} else {
		f = open_memstream(&text, &len);
		conf_dump(keys, n, a, f);
		fclose(f);
		if (conf_load_string(keys, n, "dump", text, len, b, &err) < 0) {
			fprintf(stderr, "dump does not load: %s\n%s", err.msg, text);
			abort();
		}
		if (!equal(keys, n, a, b)) {
			fprintf(stderr, "dump loads to other values:\n%s", text);
			abort();
		}
		free(text);
	}
	/* the first line as a --set override (data is not NUL-terminated) */
	{
		const uint8_t *nl = memchr(data, '\n', size);
		if (nl && (line = strndup((const char *)data, (size_t)(nl - data)))) {
			if (conf_set(keys, n, line, a, &err) < 0 && !err.msg[0])
				abort();
			free(line);
		}
	}
	conf_free(keys, n, a);
	conf_free(keys, n, b);
	free(a);
	free(b);
	free(before);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	one_table(fkeys, FR_ARRAY_SIZE(fkeys), sizeof(struct fcfg), data, size);
	one_table(co_config_keys, co_config_n_keys, sizeof(struct co_config), data, size);
	one_table(wk_config_keys, wk_config_n_keys, sizeof(struct wk_config), data, size);
	return 0;
}
