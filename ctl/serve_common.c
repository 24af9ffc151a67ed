/* SPDX-License-Identifier: Apache-2.0 */
/* serve_common.c - helpers shared by the Inference clients (see serve-internal.h). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

/* ==== parsing ================================================================================ */

const char *ctl_default_cluster(void)
{
	const char *env = getenv("FERRY_CLUSTER");
	return env && *env ? env : CTL_DEFAULT_CLUSTER;
}

int ctl_arg_double(const char *name, const char *s, double min, double max, double *ret,
		   struct fr_error *err)
{
	double d;
	if (fr_parse_double(s, &d) < 0 || !isfinite(d) || d < min || d > max)
		return fr_error_set(err, -EINVAL, "--%s: '%s' is not a number in [%g, %g]", name, s,
				    min, max);
	*ret = d;
	return 0;
}

int ctl_arg_i64_list(const char *name, const char *s, int64_t min, int64_t max, int64_t *ret,
		     size_t cap, size_t *ret_n, struct fr_error *err)
{
	size_t n = 0;
	const char *p = s;

	for (;;) {
		char item[32];
		size_t len;

		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		if (!*p)
			break;
		len = strcspn(p, ", \t");
		if (len >= sizeof(item))
			return fr_error_set(err, -EINVAL, "--%s: '%.16s...' is too long", name, p);
		memcpy(item, p, len);
		item[len] = '\0';
		if (n == cap)
			return fr_error_set(err, -EINVAL, "--%s: at most %zu values", name, cap);
		if (fr_parse_i64(item, min, max, &ret[n]) < 0)
			return fr_error_set(err, -EINVAL, "--%s: '%s' is not an integer in [%lld, %lld]",
					    name, item, (long long)min, (long long)max);
		n++;
		p += len;
	}
	if (n == 0)
		return fr_error_set(err, -EINVAL, "--%s: the list is empty", name);
	*ret_n = n;
	return 0;
}

int ctl_arg_len_dist(const char *name, const char *s, int64_t min, int64_t max,
		     struct ctl_len_dist *ret, struct fr_error *err)
{
	char a[32], b[32];
	int64_t lo, hi;
	const char *p = s;

	if (strncmp(p, "fixed:", 6) == 0)
		p += 6;
	if (strncmp(s, "uniform:", 8) == 0) {
		const char *colon = strchr(s + 8, ':');
		size_t la = colon ? (size_t)(colon - (s + 8)) : 0;
		if (!colon || la == 0 || la >= sizeof(a) || strlen(colon + 1) >= sizeof(b))
			return fr_error_set(err, -EINVAL, "--%s: '%s' is not uniform:MIN:MAX", name, s);
		memcpy(a, s + 8, la);
		a[la] = '\0';
		strcpy(b, colon + 1);
		if (fr_parse_i64(a, min, max, &lo) < 0 || fr_parse_i64(b, min, max, &hi) < 0 || lo > hi)
			return fr_error_set(err, -EINVAL, "--%s: '%s': want uniform:MIN:MAX with "
					    "%lld <= MIN <= MAX <= %lld", name, s, (long long)min,
					    (long long)max);
	} else {
		if (fr_parse_i64(p, min, max, &lo) < 0)
			return fr_error_set(err, -EINVAL, "--%s: '%s' is not fixed:N or uniform:MIN:MAX "
					    "with values in [%lld, %lld]", name, s, (long long)min,
					    (long long)max);
		hi = lo;
	}
	ret->lo = lo;
	ret->hi = hi;
	return 0;
}

int64_t ctl_len_draw(const struct ctl_len_dist *d, uint64_t *rng)
{
	if (d->lo >= d->hi)
		return d->lo;
	return d->lo + (int64_t)(fr_splitmix64(rng) % (uint64_t)(d->hi - d->lo + 1));
}

int ctl_read_all(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len,
		 struct fr_error *err)
{
	bool is_stdin = strcmp(path, "-") == 0;
	FILE *f = is_stdin ? stdin : fopen(path, "rb");
	size_t len = 0, cap = 1 << 16;
	char *buf = NULL;

	if (!f)
		return fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
	for (;;) {
		if (!buf || len + 1 == cap) {
			if (buf)
				cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				if (!is_stdin)
					fclose(f);
				return fr_error_set(err, -ENOMEM, "%s: out of memory", path);
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - 1 - len, f);
		len += n;
		if (len > max_bytes) {
			free(buf);
			if (!is_stdin)
				fclose(f);
			return fr_error_set(err, -EFBIG, "%s: larger than %zu bytes",
					    is_stdin ? "stdin" : path, max_bytes);
		}
		if (n == 0)
			break;
	}
	int bad = ferror(f);
	if (!is_stdin)
		fclose(f);
	if (bad) {
		free(buf);
		return fr_error_set(err, -EIO, "%s: read error", is_stdin ? "stdin" : path);
	}
	buf[len] = '\0';
	*ret_buf = buf;
	*ret_len = len;
	return 0;
}

/* ==== output ================================================================================= */

void ctl_json_str(FILE *f, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	for (size_t i = 0; i < len;) {
		unsigned char c = p[i];
		if (c == '"' || c == '\\') {
			fputc('\\', f);
			fputc(c, f);
			i++;
		} else if (c == '\n') {
			fputs("\\n", f);
			i++;
		} else if (c == '\t') {
			fputs("\\t", f);
			i++;
		} else if (c == '\r') {
			fputs("\\r", f);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			fprintf(f, "\\u%04x", c);
			i++;
		} else {
			size_t l = fr_utf8_decode(p + i, len - i, NULL, NULL, NULL);
			if (l == 0) {
				fputs("\\ufffd", f);
				i++;
			} else {
				fwrite(p + i, 1, l, f);
				i += l;
			}
		}
	}
	fputc('"', f);
}

void ctl_json_num(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, "%.6g", v);
	else
		fputs("null", f);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

double ctl_quantile(double *v, size_t n, double q)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	size_t rank = (size_t)ceil(q * (double)n);
	return v[rank ? FR_MIN(rank, n) - 1 : 0];
}

/* ==== Ctrl-C ================================================================================= */

#define SIG_MAX_STREAMS 1024

static struct {
	pthread_mutex_t mu;
	pthread_t thread;
	bool running;
	atomic_int stopping;
	atomic_int interrupted;
	sigset_t set, old;
	struct rpc_stream *streams[SIG_MAX_STREAMS];
} g_sig = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void *sig_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int sig;
		if (sigwait(&g_sig.set, &sig) != 0)
			continue;
		if (atomic_load(&g_sig.stopping))
			return NULL;
		if (atomic_exchange(&g_sig.interrupted, 1)) {
			static const char msg[] = "\nferryctl: interrupted again: exiting\n";
			ssize_t FR_UNUSED n = write(STDERR_FILENO, msg, sizeof(msg) - 1);
			_exit(CTL_EXIT_INTERRUPTED);
		}
		pthread_mutex_lock(&g_sig.mu);
		for (size_t i = 0; i < SIG_MAX_STREAMS; i++)
			if (g_sig.streams[i])
				rpc_stream_cancel(g_sig.streams[i]);
		pthread_mutex_unlock(&g_sig.mu);
	}
}

int ctl_sig_start(struct fr_error *err)
{
	int rc;

	sigemptyset(&g_sig.set);
	sigaddset(&g_sig.set, SIGINT);
	sigaddset(&g_sig.set, SIGTERM);
	if ((rc = pthread_sigmask(SIG_BLOCK, &g_sig.set, &g_sig.old)) != 0)
		return fr_error_set(err, -rc, "pthread_sigmask: %s", strerror(rc));
	atomic_store(&g_sig.stopping, 0);
	atomic_store(&g_sig.interrupted, 0);
	if ((rc = pthread_create(&g_sig.thread, NULL, sig_thread, NULL)) != 0) {
		pthread_sigmask(SIG_SETMASK, &g_sig.old, NULL);
		return fr_error_set(err, -rc, "pthread_create: %s", strerror(rc));
	}
	g_sig.running = true;
	return 0;
}

void ctl_sig_stop(void)
{
	if (!g_sig.running)
		return;
	atomic_store(&g_sig.stopping, 1);
	/* SIGTERM is blocked everywhere, so this one reaches the sigwait() of that thread. */
	pthread_kill(g_sig.thread, SIGTERM);
	pthread_join(g_sig.thread, NULL);
	g_sig.running = false;
	pthread_sigmask(SIG_SETMASK, &g_sig.old, NULL);
}

bool ctl_sig_interrupted(void)
{
	return atomic_load(&g_sig.interrupted) != 0;
}

void ctl_sig_register(struct rpc_stream *st)
{
	pthread_mutex_lock(&g_sig.mu);
	for (size_t i = 0; i < SIG_MAX_STREAMS; i++)
		if (!g_sig.streams[i]) {
			g_sig.streams[i] = st;
			break;
		}
	/* Registered after the signal came: cancel it now. */
	if (atomic_load(&g_sig.interrupted))
		rpc_stream_cancel(st);
	pthread_mutex_unlock(&g_sig.mu);
}

void ctl_sig_unregister(struct rpc_stream *st)
{
	pthread_mutex_lock(&g_sig.mu);
	for (size_t i = 0; i < SIG_MAX_STREAMS; i++)
		if (g_sig.streams[i] == st)
			g_sig.streams[i] = NULL;
	pthread_mutex_unlock(&g_sig.mu);
}

/* ==== ModelInfo ============================================================================== */

int ctl_model_info(struct rpc_channel *ch, struct ctl_model_info *ret, struct fr_error *err)
{
	Ferry__V1__ModelInfoRequest req = FERRY__V1__MODEL_INFO_REQUEST__INIT;
	Ferry__V1__ModelInfoResponse *r = NULL;
	int rc;

	rc = rpc_unary(ch, RPC_M_MODEL_INFO, &req.base, &ferry__v1__model_info_response__descriptor,
		       10000, (ProtobufCMessage **)&r, err);
	if (rc < 0)
		return rc;
	memset(ret, 0, sizeof(*ret));
	ret->vocab_size = (int)FR_MIN(r->vocab_size, (uint32_t)INT32_MAX);
	ret->max_context = (int)FR_MIN(r->max_context, (uint32_t)INT32_MAX);
	ret->n_routed_experts = (int)FR_MIN(r->n_routed_experts, (uint32_t)INT32_MAX);
	ret->num_experts_per_tok = (int)FR_MIN(r->num_experts_per_tok, (uint32_t)INT32_MAX);
	ret->n_shared_experts = (int)FR_MIN(r->n_shared_experts, (uint32_t)INT32_MAX);
	ret->has_tokenizer = r->has_tokenizer;
	snprintf(ret->preset, sizeof(ret->preset), "%s", r->preset ? r->preset : "");
	snprintf(ret->model_type, sizeof(ret->model_type), "%s", r->model_type ? r->model_type : "");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	return 0;
}

int ctl_channel_create(const char *target, const struct ctl_tls *t, struct rpc_channel **ret,
		       struct fr_error *err)
{
	struct rpc_creds c = { .kind = RPC_CREDS_INSECURE };

	if (t && (t->ca || t->cert))
		c = (struct rpc_creds){ .kind = RPC_CREDS_TLS, .ca_file = t->ca,
					.cert_file = t->cert, .key_file = t->key };
	return rpc_channel_create(target, &c, ret, err);
}
