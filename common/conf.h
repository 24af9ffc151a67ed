/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conf.h - table-driven INI configuration (ARCHITECTURE §7): a daemon describes every key
 * once, as a const array of struct conf_key pointing into its own config struct, and gets
 * defaults, file parsing, command-line overrides, --print-config and a documented example
 * file from that one table.
 *
 * File syntax (inih underneath): "[section]" headers, "key = value" lines, comments on
 * lines starting with ';' or '#', and inline comments after whitespace and ';'
 * ("workers = 4 ; one per host"). Leading whitespace is ignored (there are no continuation
 * lines). A line may hold at most CONF_MAX_LINE bytes. Every key belongs to a section; an
 * unknown section or key, a key given twice, a bad value or a syntax error refuses the
 * whole file, naming "path:line: [section] key: problem".
 *
 * Value syntax and the C type each conf_type writes at `offset` into the caller's struct:
 *   CONF_STR          char *     any text without control characters; empty = NULL (unset)
 *   CONF_INT          int        decimal integer
 *   CONF_U64          uint64_t   decimal integer >= 0
 *   CONF_DOUBLE       double     finite decimal number ("0.5", "1e-3")
 *   CONF_BOOL         bool       true/false, yes/no, on/off, 1/0 (any case)
 *   CONF_ENUM         int        one of enum_names (exact match); stored as its index
 *   CONF_SIZE         uint64_t   bytes: "4096", or a number with K, M, G or T (powers of
 *                                1024; "64M", "2G", also "64MiB", "2GB")
 *   CONF_DURATION_MS  uint64_t   milliseconds: "500ms", "5s", "2m", "1h", a plain number is ms
 *   CONF_IPV4         char *     a numeric IPv4 address a peer can connect to ("10.0.0.5"):
 *                                dotted quad (inet_pton), not 0.0.0.0, never a host name
 *   CONF_HOSTPORT     char *     "host:port" (host a DNS name, a dotted-quad IPv4 address or
 *                                "[IPv6]", as in "[::1]:7400") or gRPC's "unix:/path"
 * Numeric values are checked against [min, max] (for CONF_SIZE in bytes, for
 * CONF_DURATION_MS in milliseconds); min == max == 0 means the C type's whole range. For
 * CONF_HOSTPORT [min, max] is the range of the port, within [0, 65535]; 0, 0 means
 * [1, 65535] (min 0 suits a listen address, where port 0 lets the kernel pick one).
 * An empty value unsets any of the three string types (the daemons' checks then say "not
 * set" where a key is required).
 *
 * Loading is all or nothing: on any error dst is left exactly as it was.
 */
#ifndef FERRY_COMMON_CONF_H
#define FERRY_COMMON_CONF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

/* Longest line a config file may hold, newline included (inih's line buffer less the NUL). */
#define CONF_MAX_LINE 199
/* Both daemons' answer to [cluster] insecure = true (the key stays so old files parse). */
#define CONF_INSECURE_REMOVED                                                               \
	"[cluster] insecure: no longer supported: every Internal call is authenticated with " \
	"the cluster secret; set [cluster] secret_file (ferryctl up writes one)"
/* Largest config file or string accepted. */
#define CONF_MAX_BYTES (1u << 20)

enum conf_type {
	CONF_STR = 0,
	CONF_INT,
	CONF_U64,
	CONF_DOUBLE,
	CONF_BOOL,
	CONF_ENUM,
	CONF_SIZE,
	CONF_DURATION_MS,
	CONF_IPV4,
	CONF_HOSTPORT,
};

struct conf_key {
	const char *section;            /* "cluster"; letters, digits, '_' and '-' */
	const char *key;                /* "workers"; same alphabet, unique within its section */
	enum conf_type type;
	size_t offset;                  /* offsetof(struct my_config, field) */
	int64_t min, max;               /* inclusive range of numeric types; 0, 0: unbounded */
	const char *const *enum_names;  /* CONF_ENUM: NULL-terminated list of names */
	const char *def;                /* default, in file syntax; NULL: zero / NULL string */
	const char *doc;                /* one or more sentences for conf_write_doc() */
};

/*
 * Writes every key's default into dst (NULL / 0 where def is NULL). dst's previous
 * contents are overwritten, not freed: call it on a fresh struct or after conf_free().
 * Errors: -EINVAL when a table default does not parse (a bug in the table; err names the
 * key), -ENOMEM. On error dst is unchanged.
 */
int conf_defaults(const struct conf_key *keys, size_t n, void *dst, struct fr_error *err);

/*
 * Parses the INI file at path and applies every value it sets on top of dst (which must
 * have been initialised by conf_defaults(); strings it replaces are freed). Keys the file
 * does not mention keep their value.
 * Errors (err set, dst unchanged): -ENOENT and other open/read errors ("path: No such
 * file or directory"), -EFBIG (over CONF_MAX_BYTES), -EINVAL ("path:line: [section] key:
 * problem" for an unknown section or key, a duplicate key, a bad or out-of-range value, a
 * syntax error, an over-long line or a NUL byte), -ENOMEM.
 */
int conf_load_file(const struct conf_key *keys, size_t n, const char *path, void *dst,
		   struct fr_error *err);

/* The same from memory: text[len] need not be NUL-terminated and may hold any bytes.
 * name is what messages call it in place of a path ("<string>"). */
int conf_load_string(const struct conf_key *keys, size_t n, const char *name, const char *text,
		     size_t len, void *dst, struct fr_error *err);

/*
 * Applies one override "section.key=value" (whitespace around the parts is ignored; an
 * empty value unsets a string). For command-line --set. dst as for conf_load_file().
 * Errors (err set, dst unchanged): -EINVAL (no '=' or '.', unknown section or key, bad or
 * out-of-range value, a string the INI syntax could not write back), -ENOMEM.
 */
int conf_set(const struct conf_key *keys, size_t n, const char *assignment, void *dst,
	     struct fr_error *err);

/* Writes the effective configuration of src as an INI file (--print-config): every key,
 * grouped by section in table order, in a form conf_load_file() reads back to the same
 * values. Unset strings are written as "key =". */
void conf_dump(const struct conf_key *keys, size_t n, const void *src, FILE *f);

/* A daemon's configuration: defaults, then the file at path (NULL: default_path, which may
 * be missing: defaults and overrides only), then the overrides ("section.key=value", as
 * given to --set) in order. All or nothing: on an error dst holds no allocation.
 * Errors: conf_load_file()'s and conf_set()'s. */
int conf_load(const struct conf_key *keys, size_t n, const char *path, const char *default_path,
	      char *const *overrides, int n_overrides, void *dst, struct fr_error *err);

/* Writes an example INI file documenting every key: its doc text, type, range and default,
 * then the key itself commented out with its default ("#workers = 1"). The file parses
 * as-is and sets nothing. */
void conf_write_doc(const struct conf_key *keys, size_t n, FILE *f);

/* Frees every string (CONF_STR and the address types) of dst and sets it to NULL. Accepts
 * a dst never loaded. */
void conf_free(const struct conf_key *keys, size_t n, void *dst);

/* Index of (section, key) in keys, or -1. */
int conf_find(const struct conf_key *keys, size_t n, const char *section, const char *key);

/* Checks an address of the form "host:port" (host a DNS name, a dotted-quad IPv4 address or
 * "[IPv6]"; port 1..65535) or "unix:/path" (gRPC's Unix socket form): CONF_HOSTPORT's check,
 * for an address that did not come through a config file. Returns 0 or -EINVAL with err
 * saying what is wrong and quoting addr (the caller names the key); NULL is "not set". */
int conf_check_hostport(const char *addr, struct fr_error *err);
/* The same for a listen address, where port 0 (the kernel picks one) is allowed too. */
int conf_check_listen(const char *addr, struct fr_error *err);
/* CONF_IPV4's check: a dotted-quad IPv4 address other than 0.0.0.0. Returns 0 or -EINVAL
 * as conf_check_hostport() does. */
int conf_check_ipv4(const char *addr, struct fr_error *err);

/* A device key's value ([engine] device, [compute] device): "cpu" (or NULL) gives
 * CONF_DEVICE_CPU, "twin" (a device path run on the CPU, for testing) CONF_DEVICE_TWIN,
 * "cuda:N" N in [0, 1023]. Anything else: -EINVAL, err naming key ("[engine] device"). */
#define CONF_DEVICE_CPU (-1)
#define CONF_DEVICE_TWIN (-2)
int conf_parse_device(const char *key, const char *value, int *ret, struct fr_error *err);

#endif /* FERRY_COMMON_CONF_H */
