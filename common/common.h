/* SPDX-License-Identifier: Apache-2.0 */
/*
 * common.h - what every Ferry library shares: logging, error text, small helpers.
 *
 * Errors: functions return 0 or a negative errno. Where a caller needs to know *why*
 * (a parser rejecting a file, a config naming a bad field), the function also fills a
 * struct fr_error the caller owns. Libraries never print to stdout and never exit().
 */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <time.h>
#include <stddef.h>
#include <stdint.h>

#define FR_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FR_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FR_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FR_DIV_ROUND_UP(a, b) (((a) + (b) - 1) / (b))
#define FR_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define FR_UNUSED __attribute__((unused))

/* ---- error text -------------------------------------------------------------------- */

/* A human-readable reason filled by a failing call. Owned by the caller; zero it or call
 * fr_error_clear() before use. msg is always NUL-terminated. */
struct fr_error {
	char msg[512];
};

/* Formats into err (if non-NULL) and returns rc, so a failure path reads
 * `return fr_error_set(err, -EINVAL, "tensor %s: ...", name);`. rc must be negative. */
int fr_error_set(struct fr_error *err, int rc, const char *fmt, ...) FR_PRINTF(3, 4);
/* Prepends "prefix: " to an existing message (adds context on the way up). */
int fr_error_prefix(struct fr_error *err, int rc, const char *fmt, ...) FR_PRINTF(3, 4);
void fr_error_clear(struct fr_error *err);

/* ---- logging -------------------------------------------------------------------------- */

enum fr_log_level {
	FR_LOG_ERROR = 0,
	FR_LOG_WARN,
	FR_LOG_INFO,
	FR_LOG_DEBUG,
};

/* Structured, one line per event, to stderr (journald-friendly: no colours, level as a
 * syslog-style <N> prefix when FERRY_LOG_PREFIX=syslog). `comp` names the component
 * ("model", "kn", "engine", "tp.verbs"); its level is set with fr_log_set_levels(). */
void fr_log(enum fr_log_level lvl, const char *comp, const char *fmt, ...) FR_PRINTF(3, 4);
bool fr_log_enabled(enum fr_log_level lvl, const char *comp);
/* Parses "info", "debug" or a list "warn,model=debug,tp.verbs=info". Returns 0 or -EINVAL.
 * Also read once from $FERRY_LOG at first use. */
int fr_log_set_levels(const char *spec);
/* "error", "warn", "info", "debug" ("?" out of range). */
const char *fr_log_level_name(enum fr_log_level lvl);

#define fr_err(comp, ...) fr_log(FR_LOG_ERROR, comp, __VA_ARGS__)
#define fr_warn(comp, ...) fr_log(FR_LOG_WARN, comp, __VA_ARGS__)
#define fr_info(comp, ...) fr_log(FR_LOG_INFO, comp, __VA_ARGS__)
#define fr_dbg(comp, ...)                                                                   \
	do {                                                                                \
		if (fr_log_enabled(FR_LOG_DEBUG, comp))                                     \
			fr_log(FR_LOG_DEBUG, comp, __VA_ARGS__);                            \
	} while (0)

/* ---- small helpers ---------------------------------------------------------------------- */

/* Monotonic time in nanoseconds. */
uint64_t fr_now_ns(void);

/* Reads a whole (small) file into a NUL-terminated heap buffer. Caller frees *ret_buf.
 * Refuses files larger than max_bytes with -EFBIG. Returns 0 or -errno, with err set. */
int fr_read_file(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len,
		 struct fr_error *err);

/* Strict integer / float parsing of a whole string: no trailing junk, range checked.
 * Return 0 or -EINVAL / -ERANGE. */
int fr_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret);
int fr_parse_double(const char *s, double *ret);

/* Parses a space/comma separated list of token ids in [0, max_id). *ret_ids is heap-owned
 * by the caller. Returns 0 or -EINVAL with err naming the bad item. */
int fr_parse_ids(const char *s, int64_t max_id, int32_t **ret_ids, size_t *ret_n,
		 struct fr_error *err);

/* splitmix64: deterministic seeding for generators and tests. */
static inline uint64_t fr_splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Uniform float in [0, 1) from a splitmix64 state. */
static inline double fr_rand_unit(uint64_t *state)
{
	return (double)(fr_splitmix64(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* A CLOCK_REALTIME deadline ms milliseconds from now (for pthread_cond_timedwait), and
 * whether it has passed. */
void fr_deadline_ms(struct timespec *ret, int ms);
bool fr_deadline_passed(const struct timespec *ts);

/* Appends a formatted string to a heap vector of n strings. Returns 0 or -ENOMEM. */
int fr_strv_push(char ***v, int *n, const char *fmt, ...) FR_PRINTF(3, 4);
/* Frees the n strings and the vector. Accepts NULL. */
void fr_strv_free(char **v, int n);

#endif /* FERRY_COMMON_H */
