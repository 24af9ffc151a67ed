/* SPDX-License-Identifier: Apache-2.0 */
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int fr_error_set(struct fr_error *err, int rc, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return rc;
}

int fr_error_prefix(struct fr_error *err, int rc, const char *fmt, ...)
{
	if (err) {
		char prefix[256], old[sizeof(err->msg)];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(prefix, sizeof(prefix), fmt, ap);
		va_end(ap);
		memcpy(old, err->msg, sizeof(old));
		snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, old);
	}
	return rc;
}

void fr_error_clear(struct fr_error *err)
{
	if (err)
		err->msg[0] = '\0';
}

/* ---- logging ---------------------------------------------------------------------------- */

#define LOG_MAX_RULES 16

static struct {
	pthread_once_t once;
	enum fr_log_level def;
	int n_rules;
	struct {
		char comp[32];
		enum fr_log_level lvl;
	} rules[LOG_MAX_RULES];
	bool syslog_prefix;
	fr_log_sink_fn sink;
} g_log = { .once = PTHREAD_ONCE_INIT, .def = FR_LOG_INFO };

void fr_log_set_sink(fr_log_sink_fn fn)
{
	g_log.sink = fn;
}

static const char *const level_names[] = { "error", "warn", "info", "debug" };

static int parse_level(const char *s, size_t n, enum fr_log_level *ret)
{
	for (size_t i = 0; i < FR_ARRAY_SIZE(level_names); i++) {
		if (strlen(level_names[i]) == n && strncmp(s, level_names[i], n) == 0) {
			*ret = (enum fr_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

static int log_apply(const char *spec)
{
	enum fr_log_level def = g_log.def;
	int n_rules = 0;
	__typeof__(g_log.rules) rules;

	for (const char *p = spec; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		enum fr_log_level lvl;

		if (!eq) {
			if (parse_level(p, len, &lvl) < 0)
				return -EINVAL;
			def = lvl;
		} else {
			size_t clen = (size_t)(eq - p);
			if (clen == 0 || clen >= sizeof(rules[0].comp) || n_rules >= LOG_MAX_RULES)
				return -EINVAL;
			if (parse_level(eq + 1, len - clen - 1, &lvl) < 0)
				return -EINVAL;
			memcpy(rules[n_rules].comp, p, clen);
			rules[n_rules].comp[clen] = '\0';
			rules[n_rules].lvl = lvl;
			n_rules++;
		}
		p += len;
		if (*p == ',')
			p++;
	}
	g_log.def = def;
	memcpy(g_log.rules, rules, sizeof(rules));
	g_log.n_rules = n_rules;
	return 0;
}

static void log_init_once(void)
{
	const char *env = getenv("FERRY_LOG");
	const char *pfx = getenv("FERRY_LOG_PREFIX");
	if (env && log_apply(env) < 0)
		fprintf(stderr, "ferry: ignoring bad FERRY_LOG=%s\n", env);
	g_log.syslog_prefix = pfx && strcmp(pfx, "syslog") == 0;
}

const char *fr_log_level_name(enum fr_log_level lvl)
{
	return (unsigned)lvl < FR_ARRAY_SIZE(level_names) ? level_names[lvl] : "?";
}

int fr_log_set_levels(const char *spec)
{
	pthread_once(&g_log.once, log_init_once);
	return log_apply(spec);
}

bool fr_log_enabled(enum fr_log_level lvl, const char *comp)
{
	pthread_once(&g_log.once, log_init_once);
	enum fr_log_level limit = g_log.def;
	size_t best = 0;
	for (int i = 0; i < g_log.n_rules; i++) {
		size_t n = strlen(g_log.rules[i].comp);
		/* "tp" matches "tp" and "tp.verbs"; the longest match wins. */
		if (strncmp(comp, g_log.rules[i].comp, n) == 0 && (comp[n] == '\0' || comp[n] == '.') &&
		    n > best) {
			best = n;
			limit = g_log.rules[i].lvl;
		}
	}
	return lvl <= limit;
}

void fr_log(enum fr_log_level lvl, const char *comp, const char *fmt, ...)
{
	static const int syslog_pri[] = { 3, 4, 6, 7 };
	char line[1024];
	va_list ap;
	int n;

	if (!fr_log_enabled(lvl, comp))
		return;
	if (g_log.sink) {
		va_start(ap, fmt);
		vsnprintf(line, sizeof(line), fmt, ap);
		va_end(ap);
		g_log.sink(lvl, comp, line);
		return;
	}
	if (g_log.syslog_prefix)
		n = snprintf(line, sizeof(line), "<%d>%s: ", syslog_pri[lvl], comp);
	else
		n = snprintf(line, sizeof(line), "%s %s: ", level_names[lvl], comp);
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s\n", line);
}

/* ---- helpers ----------------------------------------------------------------------------- */

uint64_t fr_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int fr_read_file(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len,
		 struct fr_error *err)
{
	struct stat st;
	char *buf = NULL;
	size_t got = 0;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = fr_error_set(err, -EINVAL, "%s: not a regular file", path);
		goto out;
	}
	if ((uint64_t)st.st_size > max_bytes) {
		rc = fr_error_set(err, -EFBIG, "%s: %lld bytes, more than the limit of %zu", path,
				  (long long)st.st_size, max_bytes);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		rc = fr_error_set(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = fr_error_set(err, -errno, "%s: read: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	buf[got] = '\0';
	*ret_buf = buf;
	*ret_len = got;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	close(fd);
	return rc;
}

int fr_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
	char *end;
	long long v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (*end != '\0' || end == s)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

int fr_parse_double(const char *s, double *ret)
{
	char *end;
	double v;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno == ERANGE)
		return -ERANGE;
	if (*end != '\0' || end == s || !isfinite(v))
		return -EINVAL;
	*ret = v;
	return 0;
}

int fr_parse_ids(const char *s, int64_t max_id, int32_t **ret_ids, size_t *ret_n,
		 struct fr_error *err)
{
	size_t n = 0, cap = 16;
	int32_t *ids = malloc(cap * sizeof(*ids));
	const char *p = s;

	if (!ids)
		return fr_error_set(err, -ENOMEM, "out of memory");
	for (;;) {
		char tok[32];
		size_t len;
		int64_t v;

		while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n' || *p == '\r')
			p++;
		if (!*p)
			break;
		len = strcspn(p, " ,\t\n\r");
		if (len >= sizeof(tok)) {
			free(ids);
			return fr_error_set(err, -EINVAL, "token id '%.*s...' is too long", 16, p);
		}
		memcpy(tok, p, len);
		tok[len] = '\0';
		if (fr_parse_i64(tok, 0, max_id - 1, &v) < 0) {
			free(ids);
			return fr_error_set(err, -EINVAL, "bad token id '%s' (expected an integer in [0, %lld))",
					    tok, (long long)max_id);
		}
		if (n == cap) {
			int32_t *nids = realloc(ids, 2 * cap * sizeof(*ids));
			if (!nids) {
				free(ids);
				return fr_error_set(err, -ENOMEM, "out of memory");
			}
			ids = nids;
			cap *= 2;
		}
		ids[n++] = (int32_t)v;
		p += len;
	}
	*ret_ids = ids;
	*ret_n = n;
	return 0;
}

int fr_strv_push(char ***v, int *n, const char *fmt, ...)
{
	char *s, **p = realloc(*v, (size_t)(*n + 1) * sizeof(**v));
	va_list ap;
	int rc;

	if (!p)
		return -ENOMEM;
	*v = p;
	va_start(ap, fmt);
	rc = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return -ENOMEM;
	p[(*n)++] = s;
	return 0;
}

void fr_strv_free(char **v, int n)
{
	for (int i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

void fr_deadline_ms(struct timespec *ret, int ms)
{
	clock_gettime(CLOCK_REALTIME, ret);
	ret->tv_sec += ms / 1000;
	ret->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ret->tv_nsec >= 1000000000L) {
		ret->tv_sec++;
		ret->tv_nsec -= 1000000000L;
	}
}

bool fr_deadline_passed(const struct timespec *ts)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return now.tv_sec > ts->tv_sec || (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}
