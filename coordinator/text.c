/* SPDX-License-Identifier: Apache-2.0 */
/* text.c - UTF-8 repair, the incremental detokenizer and the stop-string matcher. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/text.h"

/* Beyond this many ids in the detokenizer's window, ids whose bytes were all returned are
 * dropped from its front (a window only grows while characters keep ending mid-token). */
#define DETOK_WINDOW 8

static const char utf8_fffd[3] = { '\xEF', '\xBF', '\xBD' };

/* ---- a growable byte buffer ------------------------------------------------------------ */

struct tx_buf {
	char *p;
	size_t len, cap;
};

static int buf_reserve(struct tx_buf *b, size_t more)
{
	size_t cap;
	char *np;

	if (b->cap - b->len >= more && b->p)
		return 0;
	if (more > SIZE_MAX / 2 - b->len)
		return -ENOMEM;
	cap = FR_MAX(b->cap * 2, FR_MAX(b->len + more, (size_t)64));
	np = realloc(b->p, cap);
	if (!np)
		return -ENOMEM;
	b->p = np;
	b->cap = cap;
	return 0;
}

/* ---- UTF-8 -------------------------------------------------------------------------------- */

/* Appends the repaired s[len] to out (NUL bytes too become U+FFFD with no_nul). Unless
 * final, a truncated sequence at the end is left out: *ret_used is the number of bytes of s
 * consumed. Returns 0 or -ENOMEM (out->len is then unchanged). */
static int utf8_repair(struct tx_buf *out, const char *s, size_t len, bool final, bool no_nul,
		       size_t *ret_used)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	/* Worst case every byte becomes U+FFFD. */
	if (len > (SIZE_MAX - 1) / 3 || buf_reserve(out, 3 * len + 1) < 0)
		return -ENOMEM;
	while (i < len) {
		size_t k, bad = 0;
		bool trunc;

		if (u[i] < 0x80 && (u[i] || !no_nul)) {
			out->p[out->len++] = s[i++];
			continue;
		}
		if (!u[i]) {
			memcpy(out->p + out->len, utf8_fffd, sizeof(utf8_fffd));
			out->len += sizeof(utf8_fffd);
			i++;
			continue;
		}
		k = fr_utf8_decode(u + i, len - i, NULL, &bad, &trunc);
		if (k) {
			memcpy(out->p + out->len, s + i, k);
			out->len += k;
			i += k;
			continue;
		}
		if (trunc && !final)
			break;
		memcpy(out->p + out->len, utf8_fffd, sizeof(utf8_fffd));
		out->len += sizeof(utf8_fffd);
		i += bad;
	}
	*ret_used = i;
	return 0;
}

static int lossy(const char *s, size_t len, bool no_nul, char **ret_text, size_t *ret_len)
{
	struct tx_buf b = { 0 };
	size_t used;

	if (utf8_repair(&b, s, len, true, no_nul, &used) < 0) {
		free(b.p);
		return -ENOMEM;
	}
	b.p[b.len] = '\0';
	*ret_text = b.p;
	*ret_len = b.len;
	return 0;
}

int co_utf8_lossy(const char *s, size_t len, char **ret_text, size_t *ret_len)
{
	return lossy(s, len, false, ret_text, ret_len);
}

int co_utf8_proto(const char *s, size_t len, char **ret_text, size_t *ret_len)
{
	return lossy(s, len, true, ret_text, ret_len);
}

bool co_utf8_valid(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	while (i < len) {
		size_t k;

		if (u[i] < 0x80) {
			i++;
			continue;
		}
		k = fr_utf8_decode(u + i, len - i, NULL, NULL, NULL);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

/* ---- incremental detokenizer ------------------------------------------------------------- */

struct co_detok {
	const struct model_tokenizer *tk;
	unsigned flags;
	int32_t *win;               /* ids from the first with bytes not yet returned */
	size_t n_win, cap_win;
	size_t done;                /* bytes of decode(win) already returned */
	struct tx_buf out;          /* the last call's text */
};

int co_detok_create(const struct model_tokenizer *tk, unsigned flags, struct co_detok **ret)
{
	struct co_detok *d;

	if (!tk || (flags & ~(unsigned)(CO_DETOK_SKIP_SPECIAL | CO_DETOK_SKIP_UNKNOWN |
					 CO_DETOK_NO_NUL)))
		return -EINVAL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->tk = tk;
	d->flags = flags;
	*ret = d;
	return 0;
}

void co_detok_destroy(struct co_detok *d)
{
	if (!d)
		return;
	free(d->win);
	free(d->out.p);
	free(d);
}

/* 1 if id is a token of the tokenizer, 0 if not, -ENOMEM. */
static int detok_known(const struct co_detok *d, int32_t id)
{
	char *t;
	size_t tl;
	int rc;

	if (id < 0 || id >= model_tokenizer_vocab_size(d->tk))
		return 0;
	rc = model_tokenizer_decode(d->tk, &id, 1, false, &t, &tl);
	if (rc == -EINVAL)
		return 0;
	if (rc < 0)
		return rc;
	free(t);
	return 1;
}

static int detok_decode(const struct co_detok *d, size_t n, char **ret, size_t *ret_len)
{
	return model_tokenizer_decode(d->tk, d->win, n, d->flags & CO_DETOK_SKIP_SPECIAL, ret,
				      ret_len);
}

/* Drops ids at the window's front whose bytes were all returned. Best effort: a failed
 * decode only leaves the window longer. */
static void detok_trim(struct co_detok *d)
{
	for (size_t k = d->n_win - 1; k >= 1; k--) {
		char *t;
		size_t tl;

		if (detok_decode(d, k, &t, &tl) < 0)
			return;
		free(t);
		if (tl <= d->done) {
			memmove(d->win, d->win + k, (d->n_win - k) * sizeof(*d->win));
			d->n_win -= k;
			d->done -= tl;
			return;
		}
	}
}

int co_detok_feed(struct co_detok *d, const int32_t *ids, size_t n, const char **ret_text,
		  size_t *ret_len)
{
	size_t old = d->n_win, used, tl;
	char *text;
	int rc;

	d->out.len = 0;
	if (n > SIZE_MAX / sizeof(*d->win) / 2 - d->n_win)
		return -ENOMEM;
	if (d->cap_win - d->n_win < n) {
		size_t cap = FR_MAX(d->n_win + n, FR_MAX(d->cap_win * 2, (size_t)16));
		int32_t *nw = realloc(d->win, cap * sizeof(*nw));
		if (!nw)
			return -ENOMEM;
		d->win = nw;
		d->cap_win = cap;
	}
	for (size_t i = 0; i < n; i++) {
		rc = detok_known(d, ids[i]);
		if (rc < 0 || (rc == 0 && !(d->flags & CO_DETOK_SKIP_UNKNOWN))) {
			d->n_win = old;
			return rc < 0 ? rc : -EINVAL;
		}
		if (rc == 1)
			d->win[d->n_win++] = ids[i];
	}
	if (d->n_win == old) {
		*ret_text = "";
		*ret_len = 0;
		return 0;
	}
	if ((rc = detok_decode(d, d->n_win, &text, &tl)) < 0) {
		d->n_win = old;
		return rc == -EINVAL ? -EINVAL : -ENOMEM;
	}
	assert(tl >= d->done); /* decoding more ids never shortens the text */
	rc = utf8_repair(&d->out, text + d->done, tl - d->done, false,
			 d->flags & CO_DETOK_NO_NUL, &used);
	free(text);
	if (rc < 0) {
		d->n_win = old;
		return rc;
	}
	d->done += used;
	if (d->done == tl) {
		d->n_win = 0;
		d->done = 0;
	} else if (d->n_win > DETOK_WINDOW) {
		detok_trim(d);
	}
	*ret_text = d->out.p ? d->out.p : "";
	*ret_len = d->out.len;
	return 0;
}

int co_detok_flush(struct co_detok *d, const char **ret_text, size_t *ret_len)
{
	size_t used, tl;
	char *text;
	int rc;

	d->out.len = 0;
	if (d->n_win == 0) {
		*ret_text = "";
		*ret_len = 0;
		return 0;
	}
	if ((rc = detok_decode(d, d->n_win, &text, &tl)) < 0)
		return rc == -EINVAL ? -EINVAL : -ENOMEM;
	rc = utf8_repair(&d->out, text + d->done, tl - d->done, true,
			 d->flags & CO_DETOK_NO_NUL, &used);
	free(text);
	if (rc < 0)
		return rc;
	d->n_win = 0;
	d->done = 0;
	*ret_text = d->out.p ? d->out.p : "";
	*ret_len = d->out.len;
	return 0;
}

/* ---- stop strings -------------------------------------------------------------------------- */

struct co_stop {
	int n;
	char *str[CO_STOP_MAX];
	size_t len[CO_STOP_MAX];
	size_t max_len;
	struct tx_buf buf;          /* [0, emitted): last call's text; then the held suffix */
	size_t emitted, held;
	int matched;
};

int co_stop_create(const char *const *stops, const size_t *lens, int n, struct co_stop **ret,
		   struct fr_error *err)
{
	struct co_stop *s;

	if (n < 0 || n > CO_STOP_MAX)
		return fr_error_set(err, -EINVAL, "%d stop strings, at most %d", n, CO_STOP_MAX);
	if (n > 0 && !stops)
		return fr_error_set(err, -EINVAL, "stop strings missing");
	for (int i = 0; i < n; i++) {
		size_t l;
		if (!stops[i])
			return fr_error_set(err, -EINVAL, "stop[%d] missing", i);
		l = lens ? lens[i] : strlen(stops[i]);
		if (l == 0)
			return fr_error_set(err, -EINVAL, "stop[%d] is empty", i);
		if (l > CO_STOP_MAX_LEN)
			return fr_error_set(err, -EINVAL, "stop[%d] is %zu bytes, over the %d-byte "
					    "limit", i, l, CO_STOP_MAX_LEN);
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return fr_error_set(err, -ENOMEM, "out of memory");
	s->matched = -1;
	for (int i = 0; i < n; i++) {
		size_t l = lens ? lens[i] : strlen(stops[i]);
		s->str[i] = malloc(l);
		if (!s->str[i]) {
			co_stop_destroy(s);
			return fr_error_set(err, -ENOMEM, "out of memory");
		}
		memcpy(s->str[i], stops[i], l);
		s->len[i] = l;
		s->max_len = FR_MAX(s->max_len, l);
		s->n = i + 1;
	}
	*ret = s;
	return 0;
}

void co_stop_destroy(struct co_stop *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->n; i++)
		free(s->str[i]);
	free(s->buf.p);
	free(s);
}

/* Index of the longest stop string ending exactly at p[e] (p[0..e) is the text), or -1. */
static int stop_ending_at(const struct co_stop *s, const char *p, size_t e)
{
	int best = -1;

	for (int i = 0; i < s->n; i++) {
		size_t l = s->len[i];
		if (l > e || p[e - 1] != s->str[i][l - 1] || memcmp(p + e - l, s->str[i], l))
			continue;
		if (best < 0 || l > s->len[best])
			best = i;
	}
	return best;
}

/* True if p[0..n) is a proper prefix of a stop string. */
static bool stop_could_start(const struct co_stop *s, const char *p, size_t n)
{
	for (int i = 0; i < s->n; i++)
		if (s->len[i] > n && !memcmp(p, s->str[i], n))
			return true;
	return false;
}

int co_stop_push(struct co_stop *s, const char *text, size_t len, const char **ret_text,
		 size_t *ret_len)
{
	size_t total, e, hold;
	char *p;

	if (s->matched >= 0) {
		*ret_text = "";
		*ret_len = 0;
		return 1;
	}
	if (buf_reserve(&s->buf, len + 1) < 0)
		return -ENOMEM;
	/* What the previous call returned is the caller's no more. */
	memmove(s->buf.p, s->buf.p + s->emitted, s->held);
	s->buf.len = s->held;
	s->emitted = 0;
	if (len)
		memcpy(s->buf.p + s->buf.len, text, len);
	s->buf.len += len;
	p = s->buf.p;
	total = s->buf.len;

	/* The held suffix held no complete stop string, so a match ends in the new text. */
	for (e = s->held + 1; e <= total && s->n > 0; e++) {
		int i = stop_ending_at(s, p, e);
		if (i >= 0) {
			s->matched = i;
			s->emitted = e - s->len[i];
			s->held = 0;
			*ret_text = p;
			*ret_len = s->emitted;
			return 1;
		}
	}
	/* Hold back the longest suffix that may still grow into a stop string. */
	hold = 0;
	if (s->n > 0)
		for (size_t k = FR_MIN(total, s->max_len - 1); k > 0; k--)
			if (stop_could_start(s, p + total - k, k)) {
				hold = k;
				break;
			}
	s->emitted = total - hold;
	s->held = hold;
	*ret_text = p;
	*ret_len = s->emitted;
	return 0;
}

void co_stop_flush(struct co_stop *s, const char **ret_text, size_t *ret_len)
{
	*ret_text = "";
	*ret_len = 0;
	if (s->matched >= 0 || !s->buf.p)
		return;
	memmove(s->buf.p, s->buf.p + s->emitted, s->held);
	s->buf.len = s->held;
	s->emitted = s->held;
	s->held = 0;
	*ret_text = s->buf.p;
	*ret_len = s->emitted;
}

int co_stop_matched(const struct co_stop *s)
{
	return s->matched;
}
