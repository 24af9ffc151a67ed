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
/* Where log lines go instead of stderr (NULL: stderr again): the daemons send them to
 * journald with the component and level as fields when stderr is the journal. msg is the
 * formatted message without the level and component. Set before threads log. */
typedef void (*fr_log_sink_fn)(enum fr_log_level lvl, const char *comp, const char *msg);
void fr_log_set_sink(fr_log_sink_fn fn);
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

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* U+FFFD REPLACEMENT CHARACTER in UTF-8: what decoders write for invalid input. */
#define FR_UTF8_REPLACEMENT "\xEF\xBF\xBD"

/*
 * Decodes the UTF-8 sequence at the start of s[0..n), n >= 1, as the WHATWG Encoding
 * Standard's decoder does (JS `new TextDecoder()`; Unicode's "maximal subpart" practice for
 * U+FFFD substitution). Never reads past s[n - 1].
 *
 * A well-formed sequence (RFC 3629: no overlong form, no surrogate U+D800..U+DFFF, nothing
 * past U+10FFFF): returns its length, 1 to 4, and writes its code point to *ret_cp.
 *
 * Anything else: returns 0 and writes to *ret_bad the length of the maximal invalid subpart
 * at s, the bytes a decoder replaces with one U+FFFD before resuming at s[*ret_bad]:
 *   - 1 for a byte that starts no sequence: 80..BF (a stray continuation byte), C0 and C1
 *     (all their 2-byte forms are overlong), F5..FF (past U+10FFFF);
 *   - k, 1 to 3, when byte k is outside the range its position allows. Continuation bytes
 *     are 80..BF, but the lead narrows the first one: E0 needs A0..BF (overlong otherwise),
 *     ED 80..9F (surrogates otherwise), F0 90..BF (overlong), F4 80..8F (past U+10FFFF). So
 *     an overlong 3- or 4-byte form (E0 80 80, F0 80 80 80), an encoded surrogate (ED A0 80)
 *     or U+110000 (F4 90 80 80) each give 1 (and decode as one U+FFFD per byte), and
 *     E2 82 41 gives 2 (one U+FFFD, then "A");
 *   - n when s ends inside a sequence that is valid so far (E2 82 at the end gives 2). Only
 *     then is *ret_truncated true (it is false for the two cases above), so a streaming
 *     caller can wait for more bytes instead of replacing them.
 *
 * Every output pointer may be NULL. *ret_cp is written only for a valid sequence; *ret_bad
 * and *ret_truncated only for an invalid one.
 */
size_t fr_utf8_decode(const void *s, size_t n, uint32_t *ret_cp, size_t *ret_bad,
		      bool *ret_truncated);

/* ---- hashing ----------------------------------------------------------------------------- */

/* FNV-1a 64 of n bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3): "" gives
 * 0xcbf29ce484222325, "a" 0xaf63dc4c8601ec8c. Fixed forever: the synthetic checkpoint
 * generator seeds every tensor's values from it, so a change would change the weights. */
uint64_t fr_fnv1a64(const void *p, size_t n);

/* A hash-table hash of the NUL-terminated string s: its FNV-1a 64 finished with a mixer
 * (h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33), because FNV's low bits, the ones a
 * power-of-two table is indexed by, are weak. */
uint64_t fr_hash64(const char *s);

/* A CLOCK_REALTIME deadline ms milliseconds from now (for pthread_cond_timedwait), and
 * whether it has passed. */
void fr_deadline_ms(struct timespec *ret, int ms);
bool fr_deadline_passed(const struct timespec *ts);

/* Appends a formatted string to a heap vector of n strings. Returns 0 or -ENOMEM. */
int fr_strv_push(char ***v, int *n, const char *fmt, ...) FR_PRINTF(3, 4);
/* Frees the n strings and the vector. Accepts NULL. */
void fr_strv_free(char **v, int n);

#endif /* FERRY_COMMON_H */
