/* SPDX-License-Identifier: Apache-2.0 */
/* prom.c - Prometheus text exposition and histograms (prom.h). */
#include "metrics/prom.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

const double fr_prom_latency_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
					   0.5, 1, 2.5, 5, 10, 20, 40, 80, 120 };
const int fr_prom_latency_n = sizeof(fr_prom_latency_buckets) / sizeof(double);
const double fr_prom_step_buckets[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
					0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10 };
const int fr_prom_step_n = sizeof(fr_prom_step_buckets) / sizeof(double);

int fr_histo_init(struct fr_histo *h, const double *le, int n)
{
	memset(h, 0, sizeof(*h));
	if (!le || n < 1)
		return -EINVAL;
	for (int i = 1; i < n; i++)
		if (!(le[i] > le[i - 1]))
			return -EINVAL;
	h->count = calloc((size_t)n + 1, sizeof(*h->count));
	if (!h->count)
		return -ENOMEM;
	h->le = le;
	h->n = n;
	pthread_mutex_init(&h->mu, NULL);
	return 0;
}

void fr_histo_fini(struct fr_histo *h)
{
	if (!h->count)
		return;
	pthread_mutex_destroy(&h->mu);
	free(h->count);
	h->count = NULL;
}

void fr_histo_observe_n(struct fr_histo *h, double v, uint64_t times)
{
	int lo = 0, hi = h->n; /* first bound >= v, or n for +Inf */

	if (isnan(v) || !times || !h->count)
		return;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		if (h->le[mid] >= v)
			hi = mid;
		else
			lo = mid + 1;
	}
	pthread_mutex_lock(&h->mu);
	h->count[lo] += times;
	h->total += times;
	h->sum += v * (double)times;
	pthread_mutex_unlock(&h->mu);
}

void fr_histo_observe(struct fr_histo *h, double v)
{
	fr_histo_observe_n(h, v, 1);
}

void fr_prom_family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s ", name);
	for (const char *p = help; *p; p++) { /* HELP escapes backslash and newline only */
		if (*p == '\\')
			fputs("\\\\", f);
		else if (*p == '\n')
			fputs("\\n", f);
		else
			fputc(*p, f);
	}
	fprintf(f, "\n# TYPE %s %s\n", name, type);
}

/* The shortest %g form that reads back as v (what Prometheus' own clients print). */
static char *fr_prom_fmt_double(double v, char *buf, size_t n)
{
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, n, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
}

static void put_value(FILE *f, double v)
{
	if (isnan(v))
		fputs("NaN", f);
	else if (isinf(v))
		fputs(v > 0 ? "+Inf" : "-Inf", f);
	else if (v == floor(v) && fabs(v) < 9007199254740992.0) /* 2^53: exact integers */
		fprintf(f, "%.0f", v);
	else
		fprintf(f, "%s", fr_prom_fmt_double(v, (char[32]){ 0 }, 32));
}

void fr_prom_sample(FILE *f, const char *name, const char *labels, double v)
{
	if (labels && *labels)
		fprintf(f, "%s{%s} ", name, labels);
	else
		fprintf(f, "%s ", name);
	put_value(f, v);
	fputc('\n', f);
}

void fr_prom_histo(FILE *f, const char *name, const char *labels, struct fr_histo *h)
{
	const char *sep = labels && *labels ? "," : "";
	uint64_t *c, total, cum = 0;
	double sum;

	if (!h->count)
		return;
	c = malloc(sizeof(*c) * ((size_t)h->n + 1));
	if (!c)
		return;
	pthread_mutex_lock(&h->mu); /* one consistent snapshot: buckets add up to count */
	memcpy(c, h->count, sizeof(*c) * ((size_t)h->n + 1));
	total = h->total;
	sum = h->sum;
	pthread_mutex_unlock(&h->mu);
	for (int i = 0; i <= h->n; i++) {
		cum += c[i];
		fprintf(f, "%s_bucket{%s%sle=\"", name, labels ? labels : "", sep);
		put_value(f, i < h->n ? h->le[i] : INFINITY);
		fprintf(f, "\"} %llu\n", (unsigned long long)cum);
	}
	fprintf(f, "%s_sum%s%s%s ", name, *sep ? "{" : "", *sep ? labels : "", *sep ? "}" : "");
	put_value(f, sum);
	fprintf(f, "\n%s_count%s%s%s %llu\n", name, *sep ? "{" : "", *sep ? labels : "",
		*sep ? "}" : "", (unsigned long long)total);
	free(c);
}

char *fr_prom_labels(char *buf, size_t size, ...)
{
	va_list ap;
	size_t n = 0, done = 0; /* done: the end of the last pair that fit */
	bool over = false;

	if (!size)
		return buf;
	buf[0] = '\0';
#define PUT(ch)                                                                             \
	do {                                                                                \
		if (n + 1 < size)                                                           \
			buf[n++] = (ch);                                                    \
		else                                                                        \
			over = true;                                                        \
	} while (0)
	va_start(ap, size);
	for (int i = 0;; i++) {
		const char *k = va_arg(ap, const char *), *v;
		if (!k)
			break;
		v = va_arg(ap, const char *);
		if (i)
			PUT(',');
		for (; *k; k++)
			PUT(*k);
		PUT('=');
		PUT('"');
		for (; v && *v; v++) {
			if (*v == '\\' || *v == '"') {
				PUT('\\');
				PUT(*v);
			} else if (*v == '\n') {
				PUT('\\');
				PUT('n');
			} else {
				PUT(*v);
			}
		}
		PUT('"');
		if (over)
			break;
		done = n;
	}
	va_end(ap);
#undef PUT
	buf[done] = '\0'; /* whole pairs only: a cut value would not parse */
	return buf;
}
