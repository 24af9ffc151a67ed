/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conf.c - table-driven INI configuration (format in conf.h) over inih.
 *
 * inih does the tokenising; everything else is here. We feed it through ini_parse_stream()
 * with our own line reader rather than ini_parse_file(): the reader is what knows the line
 * number (Debian's libinih is built without INI_HANDLER_LINENO), refuses NUL bytes and
 * over-long lines (which inih would silently split into two), checks section headers
 * (inih never reports a section that holds no key) and strips leading whitespace (which
 * inih would otherwise take as a continuation of the previous value). Parsed values are
 * staged and written to the caller's struct only when the whole input is good.
 */
#include "common/conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

union conf_val {
	char *s;
	int64_t i;   /* CONF_INT, CONF_ENUM */
	uint64_t u;  /* CONF_U64, CONF_SIZE, CONF_DURATION_MS */
	double d;
	bool b;
};

/* ---- value text ----------------------------------------------------------------------- */

/* Renders untrusted text for a message: printable ASCII as is, the rest as \xNN, cut at
 * about 64 characters; in double quotes when marks. */
static const char *esc(const char *s, bool marks, char *buf, size_t cap)
{
	size_t o = 0;

	if (marks)
		buf[o++] = '"';
	for (; *s && o + 8 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (o > 64) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
			o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
		else
			buf[o++] = (char)c;
	}
	if (marks)
		buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

static const char *quote(const char *s, char *buf, size_t cap)
{
	return esc(s, true, buf, cap);
}

struct unit {
	const char *name;
	uint64_t mult;
};

/* Largest first: the formatters pick the first unit that divides the value exactly. */
static const struct unit size_units[] = {
	{ "T", 1ull << 40 }, { "G", 1ull << 30 }, { "M", 1ull << 20 }, { "K", 1ull << 10 },
};
static const struct unit duration_units[] = {
	{ "h", 3600000 }, { "m", 60000 }, { "s", 1000 }, { "ms", 1 },
};

static const char *fmt_units(uint64_t v, const struct unit *u, size_t n_units,
			     const char *plain_suffix, char *buf, size_t cap)
{
	if (v == 0) {
		snprintf(buf, cap, "0");
		return buf;
	}
	for (size_t i = 0; i < n_units; i++) {
		if (v % u[i].mult == 0) {
			snprintf(buf, cap, "%llu%s", (unsigned long long)(v / u[i].mult), u[i].name);
			return buf;
		}
	}
	snprintf(buf, cap, "%llu%s", (unsigned long long)v, plain_suffix);
	return buf;
}

static const char *fmt_size(uint64_t v, char *buf, size_t cap)
{
	return fmt_units(v, size_units, FR_ARRAY_SIZE(size_units), "", buf, cap);
}

static const char *fmt_duration(uint64_t v, char *buf, size_t cap)
{
	return fmt_units(v, duration_units, FR_ARRAY_SIZE(duration_units), "ms", buf, cap);
}

/* Strict unsigned decimal: digits only, no sign, no overflow. Returns the end of the digits
 * in *ret_end (the caller checks what follows). */
static int parse_digits(const char *s, uint64_t *ret, const char **ret_end)
{
	uint64_t v = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (__builtin_mul_overflow(v, 10, &v) ||
		    __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v))
			return -ERANGE;
	}
	*ret = v;
	*ret_end = p;
	return 0;
}

/* Whole digits followed by nothing (a multiplier of 1) or one of the units, matched
 * case-insensitively when icase. aliases, if any, holds two more spellings per unit in the
 * same order ("TiB", "TB" for "T"); with icase a lone "B" means bytes. -EINVAL for any other
 * suffix, -ERANGE on overflow. */
static int parse_with_units(const char *s, const struct unit *u, size_t n_units,
			    const char *const *aliases, bool icase, uint64_t *ret)
{
	const char *end;
	uint64_t v, mult = 0;
	int rc = parse_digits(s, &v, &end);

	if (rc < 0)
		return rc;
	if (*end == '\0') {
		mult = 1;
	} else {
		for (size_t i = 0; i < n_units && !mult; i++) {
			if (icase ? strcasecmp(end, u[i].name) == 0 : strcmp(end, u[i].name) == 0)
				mult = u[i].mult;
			for (size_t a = 2 * i; aliases && a < 2 * i + 2 && !mult; a++) {
				if (aliases[a] && strcasecmp(end, aliases[a]) == 0)
					mult = u[i].mult;
			}
		}
		if (!mult && icase && strcasecmp(end, "B") == 0)
			mult = 1;
		if (!mult)
			return -EINVAL;
	}
	if (__builtin_mul_overflow(v, mult, &v))
		return -ERANGE;
	*ret = v;
	return 0;
}

/* "GB" is read as GiB too: memory limits are powers of two, and a worker configured with
 * "48GB" means 48 GiB far more often than 48e9 bytes. */
static const char *const size_aliases[] = { "TiB", "TB", "GiB", "GB", "MiB", "MB", "KiB", "KB" };

/* Effective inclusive range of a key, in the units of its union member. */
static void key_range_i(const struct conf_key *k, int64_t *lo, int64_t *hi)
{
	*lo = INT_MIN;
	*hi = INT_MAX;
	if (k->min || k->max) {
		*lo = FR_MAX(k->min, (int64_t)INT_MIN);
		*hi = FR_MIN(k->max, (int64_t)INT_MAX);
	}
}

static void key_range_u(const struct conf_key *k, uint64_t *lo, uint64_t *hi)
{
	*lo = 0;
	*hi = UINT64_MAX;
	if (k->min || k->max) {
		*lo = k->min > 0 ? (uint64_t)k->min : 0;
		*hi = k->max > 0 ? (uint64_t)k->max : 0;
	}
}

static const char *fmt_u(const struct conf_key *k, uint64_t v, char *buf, size_t cap)
{
	if (k->type == CONF_SIZE)
		return fmt_size(v, buf, cap);
	if (k->type == CONF_DURATION_MS)
		return fmt_duration(v, buf, cap);
	snprintf(buf, cap, "%llu", (unsigned long long)v);
	return buf;
}

/* The text a string value may hold so that conf_dump() can write it back as
 * "key = value" and read it again. */
static int check_string(const struct conf_key *k, const char *s, struct fr_error *err)
{
	char q[96];

	if (strlen(k->key) + 3 + strlen(s) + 1 > CONF_MAX_LINE)
		return fr_error_set(err, -EINVAL, "%zu bytes: too long for a config line (%d bytes)",
				    strlen(s), CONF_MAX_LINE);

	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c < 0x20 || c == 0x7f)
			return fr_error_set(err, -EINVAL, "%s: control character 0x%02x in a string",
					    quote(s, q, sizeof(q)), c);
		/* inih reads whitespace + ';' as the start of a comment */
		if (c == ';' && (p == s || *(p - 1) == ' ' || *(p - 1) == '\t'))
			return fr_error_set(err, -EINVAL, "%s: a ';' at the start of a value or "
					    "after a space would start a comment", quote(s, q, sizeof(q)));
	}
	if (*s == ' ' || *s == '\t' || (*s && (s[strlen(s) - 1] == ' ' || s[strlen(s) - 1] == '\t')))
		return fr_error_set(err, -EINVAL, "%s: leading or trailing whitespace would be lost",
				    quote(s, q, sizeof(q)));
	return 0;
}

/* ---- addresses ----------------------------------------------------------------------- */

/* The types whose field is a char * (conf_free() frees them). */
static bool is_string(enum conf_type t)
{
	return t == CONF_STR || t == CONF_IPV4 || t == CONF_HOSTPORT;
}

/* The port range of a CONF_HOSTPORT key. */
static void port_range(const struct conf_key *k, int64_t *lo, int64_t *hi)
{
	*lo = 1;
	*hi = 65535;
	if (k->min || k->max) {
		*lo = FR_MAX(k->min, 0);
		*hi = FR_MIN(k->max, 65535);
	}
}

/* A DNS name as RFC 1123 writes it: labels of 1..63 letters, digits and '-' (not at either
 * end; '_' too, which container runtimes put in names), at most 253 bytes, one optional
 * final '.'. */
static bool is_hostname(const char *h, size_t len)
{
	size_t label = 0;

	if (len && h[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i <= len; i++) {
		char c = i < len ? h[i] : '.';
		if (c == '.') {
			if (label == 0 || label > 63 || h[i - 1] == '-')
				return false;
			label = 0;
		} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			   c == '_' || (c == '-' && label > 0)) {
			label++;
		} else {
			return false;
		}
	}
	return true;
}

/* True when the last label of h[len] is all digits: no DNS name ends so (top-level domains
 * are not numeric), so h is meant as an IPv4 address. */
static bool looks_numeric(const char *h, size_t len)
{
	size_t e = len;

	if (e && h[e - 1] == '.')
		e--;
	if (e == 0)
		return false;
	for (size_t i = e; i-- > 0 && h[i] != '.';) {
		if (h[i] < '0' || h[i] > '9')
			return false;
	}
	return true;
}

/* The literal of "[literal]" as getaddrinfo() reads a numeric IPv6 address (a zone such as
 * %eth0 included), without any lookup. */
static bool is_ipv6(const char *s)
{
	struct addrinfo hints = { .ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST };
	struct addrinfo *res = NULL;

	if (getaddrinfo(s, NULL, &hints, &res) != 0)
		return false;
	freeaddrinfo(res);
	return true;
}

static int check_hostport(const char *addr, int64_t lo, int64_t hi, struct fr_error *err)
{
	char q[96], hq[96], host[256];
	const char *colon;
	size_t host_len;
	uint64_t port;
	const char *end;

	if (!addr || !*addr)
		return fr_error_set(err, -EINVAL, "not set (expected host:port)");
	if (strncmp(addr, "unix:", 5) == 0) {
		size_t max = sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1;
		if (!addr[5])
			return fr_error_set(err, -EINVAL, "\"unix:\" without a path");
		if (strlen(addr + 5) > max)
			return fr_error_set(err, -EINVAL, "%s: the socket path is longer than %zu bytes",
					    quote(addr, q, sizeof(q)), max);
		return 0;
	}
	if (addr[0] == '[') {
		/* the port follows the closing bracket, whatever colons the literal holds */
		const char *close = strchr(addr, ']');
		if (!close || close[1] != ':' || close - addr < 2 ||
		    (size_t)(close - addr) > sizeof(host))
			return fr_error_set(err, -EINVAL, "%s is not [IPv6]:port",
					    quote(addr, q, sizeof(q)));
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
	}
	if (!colon)
		return fr_error_set(err, -EINVAL, "%s is not host:port (no port)",
				    quote(addr, q, sizeof(q)));
	if (colon == addr)
		return fr_error_set(err, -EINVAL, "%s is not host:port (no host)",
				    quote(addr, q, sizeof(q)));
	if (parse_digits(colon + 1, &port, &end) < 0 || *end || port < (uint64_t)lo ||
	    port > (uint64_t)hi)
		return fr_error_set(err, -EINVAL, "%s: the port must be a number in [%lld, %lld]",
				    quote(addr, q, sizeof(q)), (long long)lo, (long long)hi);
	host_len = (size_t)(colon - addr);
	if (addr[0] == '[') {
		memcpy(host, addr + 1, host_len - 2);
		host[host_len - 2] = '\0';
		if (!is_ipv6(host))
			return fr_error_set(err, -EINVAL, "%s: %s is not an IPv6 address",
					    quote(addr, q, sizeof(q)), esc(host, false, hq, sizeof(hq)));
		return 0;
	}
	if (memchr(addr, ':', host_len))
		return fr_error_set(err, -EINVAL, "%s: an IPv6 host needs brackets, as in "
				    "[::1]:7400", quote(addr, q, sizeof(q)));
	if (host_len >= sizeof(host))
		return fr_error_set(err, -EINVAL, "%s: the host is too long (a host name has "
				    "at most 253 bytes)", quote(addr, q, sizeof(q)));
	memcpy(host, addr, host_len);
	host[host_len] = '\0';
	if (looks_numeric(host, host_len)) {
		struct in_addr a;
		if (inet_pton(AF_INET, host, &a) != 1)
			return fr_error_set(err, -EINVAL, "%s: host %s is not an IPv4 address",
					    quote(addr, q, sizeof(q)), esc(host, false, hq, sizeof(hq)));
		return 0;
	}
	if (!is_hostname(host, host_len))
		return fr_error_set(err, -EINVAL, "%s: host %s is not a host name or an IP address",
				    quote(addr, q, sizeof(q)), esc(host, false, hq, sizeof(hq)));
	return 0;
}

int conf_parse_device(const char *key, const char *value, int *ret, struct fr_error *err)
{
	int64_t n;

	if (!value || !strcmp(value, "cpu")) {
		*ret = CONF_DEVICE_CPU;
		return 0;
	}
	if (!strcmp(value, "twin")) {
		*ret = CONF_DEVICE_TWIN;
		return 0;
	}
	if (strncmp(value, "cuda:", 5) || fr_parse_i64(value + 5, 0, 1023, &n) < 0)
		return fr_error_set(err, -EINVAL, "%s: '%s' is not cpu, cuda:N (N in [0, 1023]) "
				    "or twin", key, value);
	*ret = (int)n;
	return 0;
}

int conf_check_hostport(const char *addr, struct fr_error *err)
{
	return check_hostport(addr, 1, 65535, err);
}

int conf_check_listen(const char *addr, struct fr_error *err)
{
	return check_hostport(addr, 0, 65535, err);
}

int conf_check_ipv4(const char *addr, struct fr_error *err)
{
	struct in_addr a;
	char q[96];

	if (!addr || !*addr)
		return fr_error_set(err, -EINVAL, "not set (expected an IPv4 address)");
	if (inet_pton(AF_INET, addr, &a) == 1) {
		if (a.s_addr == htonl(INADDR_ANY))
			return fr_error_set(err, -EINVAL, "%s is not an address peers can connect "
					    "to: name this host's address on the network they use",
					    quote(addr, q, sizeof(q)));
		return 0;
	}
	if (is_ipv6(addr))
		return fr_error_set(err, -EINVAL, "%s is an IPv6 address; this key takes an IPv4 "
				    "address", quote(addr, q, sizeof(q)));
	return fr_error_set(err, -EINVAL, "%s is not an IPv4 address (four numbers, as in "
			    "10.0.0.5; host names are not resolved)", quote(addr, q, sizeof(q)));
}

/* Parses text as the value of k into *ret (a string is strdup'ed). Errors name the value
 * and the problem, not the key: the caller prefixes where it is. */
static int parse_value(const struct conf_key *k, const char *text, union conf_val *ret,
		       struct fr_error *err)
{
	char q[96], lo_s[32], hi_s[32];
	int rc;

	if (!is_string(k->type) && !*text)
		return fr_error_set(err, -EINVAL, "empty value");
	switch (k->type) {
	case CONF_STR:
	case CONF_IPV4:
	case CONF_HOSTPORT: {
		char *s = NULL;
		int64_t lo, hi;
		if ((rc = check_string(k, text, err)) < 0)
			return rc;
		port_range(k, &lo, &hi);
		if (*text && k->type == CONF_IPV4 && (rc = conf_check_ipv4(text, err)) < 0)
			return rc;
		if (*text && k->type == CONF_HOSTPORT && (rc = check_hostport(text, lo, hi, err)) < 0)
			return rc;
		if (*text && !(s = strdup(text)))
			return fr_error_set(err, -ENOMEM, "out of memory");
		ret->s = s;
		return 0;
	}
	case CONF_INT: {
		int64_t v, lo, hi;
		if ((rc = fr_parse_i64(text, INT64_MIN, INT64_MAX, &v)) == -EINVAL)
			return fr_error_set(err, -EINVAL, "%s is not an integer", quote(text, q, sizeof(q)));
		key_range_i(k, &lo, &hi);
		if (rc < 0 || v < lo || v > hi)
			return fr_error_set(err, -EINVAL, "%s is out of range [%lld, %lld]",
					    quote(text, q, sizeof(q)), (long long)lo, (long long)hi);
		ret->i = v;
		return 0;
	}
	case CONF_ENUM:
		for (int64_t i = 0; k->enum_names && k->enum_names[i]; i++) {
			if (strcasecmp(text, k->enum_names[i]) == 0) {
				ret->i = i;
				return 0;
			}
		}
		{
			char names[256];
			size_t o = 0;
			names[0] = '\0';
			for (size_t i = 0; k->enum_names && k->enum_names[i] && o < sizeof(names); i++)
				o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", i ? ", " : "",
						      k->enum_names[i]);
			return fr_error_set(err, -EINVAL, "%s is not one of: %s",
					    quote(text, q, sizeof(q)), names);
		}
	case CONF_U64:
	case CONF_SIZE:
	case CONF_DURATION_MS: {
		uint64_t v, lo, hi;
		const char *end;
		if (k->type == CONF_U64) {
			rc = parse_digits(text, &v, &end);
			if (rc == 0 && *end)
				rc = -EINVAL;
		} else if (k->type == CONF_SIZE) {
			rc = parse_with_units(text, size_units, FR_ARRAY_SIZE(size_units),
					      size_aliases, true, &v);
		} else {
			rc = parse_with_units(text, duration_units, FR_ARRAY_SIZE(duration_units), NULL,
					      false, &v);
		}
		if (rc == -EINVAL) {
			static const char *const what[] = {
				[CONF_U64] = "is not a non-negative integer",
				[CONF_SIZE] = "is not a size (bytes, or a whole number with K, M, G "
					      "or T, as in 512M)",
				[CONF_DURATION_MS] = "is not a duration (a whole number with ms, s, m "
						     "or h, as in 500ms; a plain number is ms)",
			};
			return fr_error_set(err, -EINVAL, "%s %s", quote(text, q, sizeof(q)),
					    what[k->type]);
		}
		key_range_u(k, &lo, &hi);
		if (rc < 0 || v < lo || v > hi)
			return fr_error_set(err, -EINVAL, "%s is out of range [%s, %s]",
					    quote(text, q, sizeof(q)), fmt_u(k, lo, lo_s, sizeof(lo_s)),
					    fmt_u(k, hi, hi_s, sizeof(hi_s)));
		ret->u = v;
		return 0;
	}
	case CONF_DOUBLE: {
		double v;
		if (fr_parse_double(text, &v) < 0)
			return fr_error_set(err, -EINVAL, "%s is not a finite number",
					    quote(text, q, sizeof(q)));
		if ((k->min || k->max) && (v < (double)k->min || v > (double)k->max))
			return fr_error_set(err, -EINVAL, "%s is out of range [%lld, %lld]",
					    quote(text, q, sizeof(q)), (long long)k->min,
					    (long long)k->max);
		ret->d = v;
		return 0;
	}
	case CONF_BOOL: {
		static const char *const yes[] = { "true", "yes", "on", "1" };
		static const char *const no[] = { "false", "no", "off", "0" };
		for (size_t i = 0; i < FR_ARRAY_SIZE(yes); i++) {
			if (strcasecmp(text, yes[i]) == 0 || strcasecmp(text, no[i]) == 0) {
				ret->b = strcasecmp(text, yes[i]) == 0;
				return 0;
			}
		}
		return fr_error_set(err, -EINVAL, "%s is not a boolean (true/false, yes/no, on/off, "
				    "1/0)", quote(text, q, sizeof(q)));
	}
	}
	return fr_error_set(err, -EINVAL, "key has an unknown type %d", (int)k->type);
}

/* Writes v into the field of k in dst; a string replaces (and frees) the old one. */
static void store(const struct conf_key *k, void *dst, const union conf_val *v)
{
	char *field = (char *)dst + k->offset;

	switch (k->type) {
	case CONF_STR:
	case CONF_IPV4:
	case CONF_HOSTPORT:
		free(*(char **)(void *)field);
		*(char **)(void *)field = v->s;
		break;
	case CONF_INT:
	case CONF_ENUM:
		*(int *)(void *)field = (int)v->i;
		break;
	case CONF_U64:
	case CONF_SIZE:
	case CONF_DURATION_MS:
		*(uint64_t *)(void *)field = v->u;
		break;
	case CONF_DOUBLE:
		*(double *)(void *)field = v->d;
		break;
	case CONF_BOOL:
		*(bool *)(void *)field = v->b;
		break;
	}
}

/* Formats the value of k in src in file syntax. NULL strings come out as "". */
static const char *format_value(const struct conf_key *k, const void *src, char *buf, size_t cap)
{
	const char *field = (const char *)src + k->offset;

	switch (k->type) {
	case CONF_STR:
	case CONF_IPV4:
	case CONF_HOSTPORT: {
		const char *s = *(char *const *)(const void *)field;
		return s ? s : "";
	}
	case CONF_INT:
		snprintf(buf, cap, "%d", *(const int *)(const void *)field);
		return buf;
	case CONF_ENUM: {
		int v = *(const int *)(const void *)field;
		for (int i = 0; k->enum_names && k->enum_names[i]; i++) {
			if (i == v)
				return k->enum_names[i];
		}
		snprintf(buf, cap, "%d", v); /* not a valid value: written so that it fails to load */
		return buf;
	}
	case CONF_U64:
	case CONF_SIZE:
	case CONF_DURATION_MS:
		return fmt_u(k, *(const uint64_t *)(const void *)field, buf, cap);
	case CONF_DOUBLE: {
		double d = *(const double *)(const void *)field;
		/* the shortest of 15..17 digits that reads back to the same double */
		for (int prec = 15; prec <= 17; prec++) {
			snprintf(buf, cap, "%.*g", prec, d);
			if (strtod(buf, NULL) == d)
				break;
		}
		return buf;
	}
	case CONF_BOOL:
		return *(const bool *)(const void *)field ? "true" : "false";
	}
	return "";
}

/* ---- tables ------------------------------------------------------------------------------ */

int conf_find(const struct conf_key *keys, size_t n, const char *section, const char *key)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
			return (int)i;
	}
	return -1;
}

static bool section_known(const struct conf_key *keys, size_t n, const char *section)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(keys[i].section, section) == 0)
			return true;
	}
	return false;
}

/* True for the first key of each section in table order. */
static bool section_first(const struct conf_key *keys, size_t i)
{
	for (size_t j = 0; j < i; j++) {
		if (strcmp(keys[j].section, keys[i].section) == 0)
			return false;
	}
	return true;
}

/* "model, server, cluster" or, with section, the keys of that section. */
static const char *list_names(const struct conf_key *keys, size_t n, const char *section,
			      char *buf, size_t cap)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < n && o < cap; i++) {
		const char *name;
		if (section) {
			if (strcmp(keys[i].section, section))
				continue;
			name = keys[i].key;
		} else {
			if (!section_first(keys, i))
				continue;
			name = keys[i].section;
		}
		o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? ", " : "", name);
	}
	return buf;
}

/* Frees the staged strings of keys marked in set[]. */
static void free_staged(const struct conf_key *keys, size_t n, union conf_val *vals,
			const int *set)
{
	for (size_t i = 0; i < n; i++) {
		if (set[i] && is_string(keys[i].type))
			free(vals[i].s);
	}
}

int conf_defaults(const struct conf_key *keys, size_t n, void *dst, struct fr_error *err)
{
	union conf_val *vals = calloc(n ? n : 1, sizeof(*vals));
	int *set = calloc(n ? n : 1, sizeof(*set));
	int rc = 0;

	if (!vals || !set) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (keys[i].def && (rc = parse_value(&keys[i], keys[i].def, &vals[i], err)) < 0) {
			fr_error_prefix(err, rc, "default of [%s] %s", keys[i].section, keys[i].key);
			free_staged(keys, n, vals, set);
			goto out;
		}
		set[i] = 1;
	}
	for (size_t i = 0; i < n; i++) {
		/* a previous string is not ours to free here (see conf.h) */
		if (is_string(keys[i].type))
			*(char **)(void *)((char *)dst + keys[i].offset) = NULL;
		store(&keys[i], dst, &vals[i]);
	}
out:
	free(vals);
	free(set);
	return rc;
}

void conf_free(const struct conf_key *keys, size_t n, void *dst)
{
	for (size_t i = 0; i < n; i++) {
		if (is_string(keys[i].type)) {
			char **s = (char **)(void *)((char *)dst + keys[i].offset);
			free(*s);
			*s = NULL;
		}
	}
}

/* ---- parsing --------------------------------------------------------------------------- */

struct parse_ctx {
	const struct conf_key *keys;
	size_t n;
	const char *name;          /* path or "<string>", for messages */
	const char *text, *p, *end;
	int line;                  /* 1-based number of the line last handed to inih */
	union conf_val *vals;      /* [n] staged values */
	int *set;                  /* [n] line that set the key, 0 if none */
	int rc;                    /* first failure we found, or 0 */
	int err_line;
	struct fr_error err;
};

static int ctx_fail(struct parse_ctx *c, int rc, const char *fmt, ...) FR_PRINTF(3, 4);
static int ctx_fail(struct parse_ctx *c, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->err.msg, sizeof(c->err.msg), fmt, ap);
	va_end(ap);
	c->rc = rc;
	c->err_line = c->line;
	return rc;
}

/* fgets() for inih over [p, end), one line at a time (see the top of the file). */
static char *conf_reader(char *str, int num, void *stream)
{
	struct parse_ctx *c = stream;
	const char *nl, *s, *e;
	size_t len;

	if (c->rc || c->p >= c->end || num < 2)
		return NULL;
	nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
	e = nl ? nl + 1 : c->end;
	s = c->p;
	c->p = e;
	c->line++;
	if (memchr(s, '\0', (size_t)(e - s))) {
		ctx_fail(c, -EINVAL, "NUL byte in the line");
		return NULL;
	}
	/* A BOM is dropped here so that the section check below sees the header. */
	if (c->line == 1 && e - s >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	while (s < e && (*s == ' ' || *s == '\t'))
		s++;
	len = (size_t)(e - s);
	if (len > (size_t)num - 1) {
		ctx_fail(c, -EINVAL, "line longer than %d bytes", num - 1);
		return NULL;
	}
	memcpy(str, s, len);
	str[len] = '\0';
	if (str[0] == '[') {
		char *close = strchr(str, ']');
		if (close) {
			char q[96], known[256];
			*close = '\0';
			if (!section_known(c->keys, c->n, str + 1)) {
				ctx_fail(c, -EINVAL, "[%s]: unknown section (sections: %s)",
					 esc(str + 1, false, q, sizeof(q)),
					 list_names(c->keys, c->n, NULL, known, sizeof(known)));
				return NULL;
			}
			*close = ']';
		}
	}
	return str;
}

static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *c = user;
	char q[96], known[256];
	struct fr_error verr;
	int i, rc;

	if (c->rc)
		return 1; /* already failed; the reader stops at the next line */
	if (!value)
		value = "";
	if (!*section) {
		ctx_fail(c, -EINVAL, "%s: key outside any [section]", esc(name, false, q, sizeof(q)));
		return 0;
	}
	if (!*name) {
		ctx_fail(c, -EINVAL, "[%s]: empty key name", section);
		return 0;
	}
	i = conf_find(c->keys, c->n, section, name);
	if (i < 0) {
		if (!section_known(c->keys, c->n, section))
			ctx_fail(c, -EINVAL, "[%s]: unknown section (sections: %s)",
				 esc(section, false, q, sizeof(q)),
				 list_names(c->keys, c->n, NULL, known, sizeof(known)));
		else
			ctx_fail(c, -EINVAL, "[%s] %s: unknown key (keys of [%s]: %s)", section,
				 esc(name, false, q, sizeof(q)), section,
				 list_names(c->keys, c->n, section, known, sizeof(known)));
		return 0;
	}
	if (c->set[i]) {
		ctx_fail(c, -EINVAL, "[%s] %s: duplicate key (first set on line %d)", section, name,
			 c->set[i]);
		return 0;
	}
	if ((rc = parse_value(&c->keys[i], value, &c->vals[i], &verr)) < 0) {
		ctx_fail(c, rc, "[%s] %s: %s", section, name, verr.msg);
		return 0;
	}
	c->set[i] = c->line;
	return 1;
}

/* Text of line `lineno` (1-based) of text[len], leading whitespace skipped. */
static void line_text(const char *text, size_t len, int lineno, char *buf, size_t cap)
{
	const char *p = text, *end = text + len, *e;
	size_t n;

	for (int l = 1; l < lineno && p < end; l++) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		p = nl ? nl + 1 : end;
	}
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	e = memchr(p, '\n', (size_t)(end - p));
	n = (size_t)((e ? e : end) - p);
	while (n && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	n = FR_MIN(n, cap - 1);
	memcpy(buf, p, n);
	buf[n] = '\0';
}

int conf_load_string(const struct conf_key *keys, size_t n, const char *name, const char *text,
		     size_t len, void *dst, struct fr_error *err)
{
	struct parse_ctx c = {
		.keys = keys, .n = n, .name = name ? name : "<string>",
		.text = text, .p = text, .end = text + len,
	};
	int rc, line;

	if (len > CONF_MAX_BYTES)
		return fr_error_set(err, -EFBIG, "%s: %zu bytes, more than the limit of %u", c.name,
				    len, CONF_MAX_BYTES);
	c.vals = calloc(n ? n : 1, sizeof(*c.vals));
	c.set = calloc(n ? n : 1, sizeof(*c.set));
	if (!c.vals || !c.set) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", c.name);
		goto out;
	}
	line = ini_parse_stream(conf_reader, &c, conf_handler, &c);
	if (line < 0) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", c.name);
	} else if (line > 0 && (!c.rc || line < c.err_line)) {
		/* inih found a line it cannot read before any problem of ours */
		char raw[160], q[96];
		line_text(text, len, line, raw, sizeof(raw));
		rc = fr_error_set(err, -EINVAL, "%s:%d: syntax error in %s: %s", c.name, line,
				  quote(raw, q, sizeof(q)),
				  raw[0] == '[' ? "a section header needs a closing ']'"
						: "expected \"key = value\", \"[section]\" or a comment");
	} else if (c.rc) {
		rc = fr_error_set(err, c.rc, "%s:%d: %s", c.name, c.err_line, c.err.msg);
	} else {
		for (size_t i = 0; i < n; i++) {
			if (c.set[i]) {
				store(&keys[i], dst, &c.vals[i]);
				c.set[i] = 0; /* now owned by dst */
			}
		}
		rc = 0;
	}
out:
	if (c.vals && c.set)
		free_staged(keys, n, c.vals, c.set);
	free(c.vals);
	free(c.set);
	return rc;
}

int conf_load_file(const struct conf_key *keys, size_t n, const char *path, void *dst,
		   struct fr_error *err)
{
	char *buf;
	size_t len;
	int rc;

	if ((rc = fr_read_file(path, CONF_MAX_BYTES, &buf, &len, err)) < 0)
		return rc;
	rc = conf_load_string(keys, n, path, buf, len, dst, err);
	free(buf);
	return rc;
}

/* Copies s[0..len) with surrounding spaces and tabs removed. */
static char *trimmed(const char *s, size_t len)
{
	char *r;

	while (len && (*s == ' ' || *s == '\t')) {
		s++;
		len--;
	}
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	r = malloc(len + 1);
	if (r) {
		memcpy(r, s, len);
		r[len] = '\0';
	}
	return r;
}

int conf_set(const struct conf_key *keys, size_t n, const char *assignment, void *dst,
	     struct fr_error *err)
{
	const char *eq = strchr(assignment, '=');
	char *name = NULL, *value = NULL, *dot, q[96], q2[96];
	union conf_val v;
	int i, rc;

	if (!eq)
		return fr_error_set(err, -EINVAL, "override %s: expected section.key=value",
				    quote(assignment, q, sizeof(q)));
	name = trimmed(assignment, (size_t)(eq - assignment));
	value = trimmed(eq + 1, strlen(eq + 1));
	if (!name || !value) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	dot = strchr(name, '.');
	if (!dot || dot == name || !dot[1]) {
		rc = fr_error_set(err, -EINVAL, "override %s: expected section.key=value",
				  quote(assignment, q, sizeof(q)));
		goto out;
	}
	*dot = '\0';
	i = conf_find(keys, n, name, dot + 1);
	if (i < 0) {
		char known[256];
		if (!section_known(keys, n, name))
			rc = fr_error_set(err, -EINVAL, "override %s: unknown section [%s] (sections: "
					  "%s)", quote(assignment, q, sizeof(q)), esc(name, false, q2, sizeof(q2)),
					  list_names(keys, n, NULL, known, sizeof(known)));
		else
			rc = fr_error_set(err, -EINVAL, "override %s: unknown key [%s] %s (keys of "
					  "[%s]: %s)", quote(assignment, q, sizeof(q)), name,
					  esc(dot + 1, false, q2, sizeof(q2)), name,
					  list_names(keys, n, name, known, sizeof(known)));
		goto out;
	}
	if ((rc = parse_value(&keys[i], value, &v, err)) < 0) {
		fr_error_prefix(err, rc, "override %s: [%s] %s", quote(assignment, q, sizeof(q)),
				keys[i].section, keys[i].key);
		goto out;
	}
	store(&keys[i], dst, &v);
	rc = 0;
out:
	free(name);
	free(value);
	return rc;
}

/* ---- writing ------------------------------------------------------------------------------ */

void conf_dump(const struct conf_key *keys, size_t n, const void *src, FILE *f)
{
	bool first = true;

	for (size_t i = 0; i < n; i++) {
		if (!section_first(keys, i))
			continue;
		fprintf(f, "%s[%s]\n", first ? "" : "\n", keys[i].section);
		first = false;
		for (size_t j = i; j < n; j++) {
			char buf[64];
			const char *v;
			if (strcmp(keys[j].section, keys[i].section))
				continue;
			v = format_value(&keys[j], src, buf, sizeof(buf));
			fprintf(f, "%s =%s%s\n", keys[j].key, *v ? " " : "", v);
		}
	}
}

/* Writes text as "# " comment lines of at most ~88 columns, breaking at spaces. */
static void write_wrapped(FILE *f, const char *text)
{
	const int width = 86;

	while (*text) {
		int len = (int)strlen(text), cut = len;
		if (len > width) {
			cut = width;
			while (cut > 0 && text[cut] != ' ')
				cut--;
			if (cut == 0)
				cut = width;
		}
		fprintf(f, "# %.*s\n", cut, text);
		text += cut;
		while (*text == ' ')
			text++;
	}
}

static void write_type(FILE *f, const struct conf_key *k)
{
	char line[512], lo_s[32], hi_s[32];
	size_t o = 0;
	bool bounded = k->min || k->max;

	switch (k->type) {
	case CONF_STR:
		return;
	case CONF_IPV4:
		snprintf(line, sizeof(line), "Numeric IPv4 address, not 0.0.0.0 (host names are not "
			 "resolved).");
		break;
	case CONF_HOSTPORT: {
		int64_t lo, hi;
		port_range(k, &lo, &hi);
		snprintf(line, sizeof(line), "host:port (a host name, an IPv4 address or [IPv6]; "
			 "port in [%lld, %lld]) or unix:/path.", (long long)lo, (long long)hi);
		break;
	}
	case CONF_INT:
	case CONF_U64:
		if (bounded)
			snprintf(line, sizeof(line), "Integer in [%lld, %lld].", (long long)k->min,
				 (long long)k->max);
		else
			snprintf(line, sizeof(line), "%s.", k->type == CONF_INT ? "Integer"
									: "Non-negative integer");
		break;
	case CONF_DOUBLE:
		if (bounded)
			snprintf(line, sizeof(line), "Number in [%lld, %lld].", (long long)k->min,
				 (long long)k->max);
		else
			snprintf(line, sizeof(line), "Number.");
		break;
	case CONF_BOOL:
		snprintf(line, sizeof(line), "true or false.");
		break;
	case CONF_ENUM:
		o = (size_t)snprintf(line, sizeof(line), "One of:");
		for (size_t i = 0; k->enum_names && k->enum_names[i] && o < sizeof(line); i++)
			o += (size_t)snprintf(line + o, sizeof(line) - o, "%s %s", i ? "," : "",
					      k->enum_names[i]);
		if (o < sizeof(line) - 1)
			snprintf(line + o, sizeof(line) - o, ".");
		break;
	case CONF_SIZE:
	case CONF_DURATION_MS: {
		uint64_t lo, hi;
		const char *what = k->type == CONF_SIZE
			? "Size in bytes, or with a K, M, G or T suffix (powers of 1024)"
			: "Duration: a whole number with ms, s, m or h (a plain number is ms)";
		key_range_u(k, &lo, &hi);
		if (bounded)
			snprintf(line, sizeof(line), "%s, in [%s, %s].", what,
				 fmt_u(k, lo, lo_s, sizeof(lo_s)), fmt_u(k, hi, hi_s, sizeof(hi_s)));
		else
			snprintf(line, sizeof(line), "%s.", what);
		break;
	}
	}
	write_wrapped(f, line);
}

void conf_write_doc(const struct conf_key *keys, size_t n, FILE *f)
{
	for (size_t i = 0; i < n; i++) {
		if (!section_first(keys, i))
			continue;
		fprintf(f, "%s[%s]\n", i ? "\n" : "", keys[i].section);
		for (size_t j = i; j < n; j++) {
			const struct conf_key *k = &keys[j];
			if (strcmp(k->section, keys[i].section))
				continue;
			if (j != i)
				fputc('\n', f);
			if (k->doc)
				write_wrapped(f, k->doc);
			write_type(f, k);
			fprintf(f, "#%s =%s%s\n", k->key, k->def && *k->def ? " " : "",
				k->def ? k->def : "");
		}
	}
}

int conf_load(const struct conf_key *keys, size_t n, const char *path, const char *default_path,
	      char *const *overrides, int n_overrides, void *dst, struct fr_error *err)
{
	int rc;

	if ((rc = conf_defaults(keys, n, dst, err)) < 0)
		return rc;
	rc = conf_load_file(keys, n, path ? path : default_path, dst, err);
	/* Without --config a missing default file means "defaults and --set only". */
	if (rc == -ENOENT && !path)
		rc = 0;
	for (int i = 0; rc == 0 && i < n_overrides; i++)
		rc = conf_set(keys, n, overrides[i], dst, err);
	if (rc < 0)
		conf_free(keys, n, dst);
	return rc;
}
