/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prom.h - Prometheus metrics: the text exposition format (version 0.0.4) and histograms
 * that threads observe into without blocking each other for long.
 *
 * Daemons keep their own counters (atomics, or the numbers they already track) and write
 * them out when /metrics is scraped: fr_prom_family() once per metric, then one
 * fr_prom_sample() per series, or fr_prom_histo() for a histogram. Names follow the
 * Prometheus conventions: a ferry_ prefix, base units (seconds, bytes), counters ending in
 * _total. Label values are escaped here (backslash, double quote, newline).
 *
 *   char lb[256];
 *   fr_prom_family(f, "ferry_requests_total", "counter", "Finished requests.");
 *   fr_prom_labels(lb, sizeof(lb), "method", "Generate", "code", "OK", NULL);
 *   fr_prom_sample(f, "ferry_requests_total", lb, 12);
 */
#ifndef FERRY_METRICS_PROM_H
#define FERRY_METRICS_PROM_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

/* Bucket upper bounds (seconds) for latencies from 1 ms to 2 min: what vLLM and SGLang
 * use for time to first token and end-to-end latency, give or take. */
extern const double fr_prom_latency_buckets[];
extern const int fr_prom_latency_n;
/* Finer ones, 0.1 ms to 10 s: step times, inter-token latency, a layer's dispatch. */
extern const double fr_prom_step_buckets[];
extern const int fr_prom_step_n;

/* A histogram with fixed bucket bounds (ascending; +Inf is implicit). */
struct fr_histo {
	const double *le;     /* [n] */
	int n;
	pthread_mutex_t mu;
	uint64_t *count;      /* [n + 1], non-cumulative; the last is (le[n-1], +Inf) */
	uint64_t total;
	double sum;
};

/* Errors: -EINVAL (bounds not ascending or n < 1), -ENOMEM. le is borrowed. */
int fr_histo_init(struct fr_histo *h, const double *le, int n);
void fr_histo_fini(struct fr_histo *h);
/* One observation of v (NaN is ignored). Thread-safe. */
void fr_histo_observe(struct fr_histo *h, double v);
/* times observations of v. */
void fr_histo_observe_n(struct fr_histo *h, double v, uint64_t times);

/* "# HELP name help" and "# TYPE name type" (type: counter, gauge, histogram). */
void fr_prom_family(FILE *f, const char *name, const char *type, const char *help);
/* "name{labels} value"; labels as fr_prom_labels() made them, or NULL / "" for none.
 * Integers print exactly, NaN and infinities as Prometheus spells them. */
void fr_prom_sample(FILE *f, const char *name, const char *labels, double v);
/* The _bucket (cumulative, with le), _sum and _count series of h, labels added to each. */
void fr_prom_histo(FILE *f, const char *name, const char *labels, struct fr_histo *h);
/* buf <- k1="v1",k2="v2"... from NULL-terminated key, value pairs, values escaped. Only
 * the pairs that fit whole in size are kept (always terminated); returns buf. */
char *fr_prom_labels(char *buf, size_t size, ...) __attribute__((sentinel));

#endif /* FERRY_METRICS_PROM_H */
