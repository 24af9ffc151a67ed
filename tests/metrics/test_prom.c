/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_prom.c - the Prometheus text writer: label escaping, value formatting, histogram
 * buckets (cumulative, +Inf, _sum, _count) under concurrent observers, and bad bounds.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/prom.h"

static int failures;

#define CHECK(cond, ...)                                                                    \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
			fprintf(stderr, __VA_ARGS__);                                       \
			fprintf(stderr, "\n");                                              \
			failures++;                                                         \
		}                                                                           \
	} while (0)

/* Runs fn into a memory stream and returns the text (caller frees). */
static char *capture(void (*fn)(FILE *, void *), void *arg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		exit(1);
	fn(f, arg);
	fclose(f);
	return buf;
}

static void write_samples(FILE *f, void *arg)
{
	char lb[128];
	(void)arg;
	fr_prom_family(f, "ferry_x_total", "counter", "A \\ help\nline.");
	fr_prom_sample(f, "ferry_x_total",
		       fr_prom_labels(lb, sizeof(lb), "worker", "a\"b\\c\nd", "layer", "3", NULL),
		       12);
	fr_prom_sample(f, "ferry_x_total", NULL, 0.1);
	fr_prom_sample(f, "ferry_x_total", "", 1e300 * 1e10);
	fr_prom_sample(f, "ferry_x_total", NULL, 123456789012345.0);
}

struct obs {
	struct fr_histo *h;
	double v;
	int n;
};

static void *observer(void *p)
{
	struct obs *o = p;
	for (int i = 0; i < o->n; i++)
		fr_histo_observe(o->h, o->v);
	return NULL;
}

static void write_histo(FILE *f, void *arg)
{
	char lb[64];
	fr_prom_family(f, "ferry_t_seconds", "histogram", "Times.");
	fr_prom_histo(f, "ferry_t_seconds", fr_prom_labels(lb, sizeof(lb), "k", "v", NULL), arg);
	fr_prom_histo(f, "ferry_t_seconds", NULL, arg);
}

int main(void)
{
	static const double le[] = { 0.1, 1, 10 };
	static const double bad[] = { 1, 1 };
	struct fr_histo h;
	char *t;

	t = capture(write_samples, NULL);
	CHECK(strstr(t, "# HELP ferry_x_total A \\\\ help\\nline.\n# TYPE ferry_x_total counter\n"),
	      "HELP/TYPE: %s", t);
	CHECK(strstr(t, "ferry_x_total{worker=\"a\\\"b\\\\c\\nd\",layer=\"3\"} 12\n"),
	      "escaped labels: %s", t);
	CHECK(strstr(t, "\nferry_x_total 0.1\n"), "0.1 in its shortest form: %s", t);
	CHECK(strstr(t, "\nferry_x_total +Inf\n"), "+Inf: %s", t);
	CHECK(strstr(t, "\nferry_x_total 123456789012345\n"), "integers exact: %s", t);
	free(t);

	char small[16];
	fr_prom_labels(small, sizeof(small), "a", "1", "worker", "longer than sixteen", NULL);
	CHECK(strcmp(small, "a=\"1\"") == 0, "only whole pairs kept: '%s'", small);
	fr_prom_labels(small, sizeof(small), "worker", "longer than sixteen", NULL);
	CHECK(small[0] == '\0', "nothing that does not fit: '%s'", small);

	CHECK(fr_histo_init(&h, bad, 2) == -EINVAL, "bounds that do not ascend are refused");
	CHECK(fr_histo_init(&h, le, 0) == -EINVAL, "no bounds are refused");
	CHECK(fr_histo_init(&h, le, 3) == 0, "init");
	/* 4 threads x 1000: 0.0625 (first bucket; exact in binary, and so is the sum), 1
	 * (le=1 is inclusive), 5, 50 (+Inf) */
	struct obs o[4] = { { &h, 0.0625, 1000 }, { &h, 1, 1000 }, { &h, 5, 1000 },
			    { &h, 50, 1000 } };
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, observer, &o[i]);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	fr_histo_observe(&h, 0.0 / 0.0); /* NaN: ignored */
	fr_histo_observe_n(&h, 0.5, 0);  /* nothing */
	t = capture(write_histo, &h);
	CHECK(strstr(t, "ferry_t_seconds_bucket{k=\"v\",le=\"0.1\"} 1000\n"), "le 0.1: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_bucket{k=\"v\",le=\"1\"} 2000\n"), "le 1: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_bucket{k=\"v\",le=\"10\"} 3000\n"), "le 10: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_bucket{k=\"v\",le=\"+Inf\"} 4000\n"), "+Inf: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_sum{k=\"v\"} 56062.5\n"), "sum: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_count{k=\"v\"} 4000\n"), "count: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_bucket{le=\"+Inf\"} 4000\n"), "unlabelled: %s", t);
	CHECK(strstr(t, "ferry_t_seconds_count 4000\n"), "unlabelled count: %s", t);
	free(t);
	fr_histo_fini(&h);
	fr_histo_fini(&h); /* twice is harmless */
	printf("test_prom: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
