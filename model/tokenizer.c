/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokenizer.c - byte-level BPE encoding and decoding over the tables tokenizer_load.c builds
 * from a HuggingFace tokenizer.json (tokenizer-internal.h).
 *
 * Pipeline of model_tokenizer_encode(), the same as HF tokenizers / transformers.js:
 *   1. invalid UTF-8 is replaced (see below);
 *   2. added tokens (special or not) are cut out first, leftmost-longest match over all of
 *      them (a byte trie), lstrip/rstrip eating the JS whitespace next to them;
 *   3. every other section goes through the normalizer (only the identity is supported:
 *      null or an empty Sequence), the pre-tokenizer (a Sequence of Split steps ending in
 *      ByteLevel) and BPE over raw bytes (the ByteLevel alphabet is only a spelling of bytes,
 *      so vocab and merges are translated to bytes once at load).
 *
 * Invalid UTF-8: each maximal invalid subpart becomes U+FFFD, exactly as the WHATWG decoder
 * (JS `new TextDecoder()`, ignoreBOM) does, and the result is encoded. The reference encoder
 * sees those same strings, so ids agree; decode() of such ids gives EF BF BD where the bad
 * bytes were. Decoding returns raw bytes (no replacement), so ids that split a character
 * give a partial UTF-8 sequence, which is what a streaming caller wants.
 *
 * Split behaviours follow HF tokenizers (Isolated, Removed, MergedWithPrevious,
 * MergedWithNext, Contiguous; invert). add_special adds the prefix/suffix ids the loader
 * chose (see tokenizer_load.c for BOS/EOS).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer-internal.h"

/* ---- helpers ---------------------------------------------------------------------------- */

int tk__buf_reserve(struct tk_buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

int tk__buf_add(struct tk_buf *b, const void *s, size_t n)
{
	if (tk__buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

struct tk_ids {
	int32_t *p;
	size_t n, cap;
};

static int ids_push(struct tk_ids *v, int32_t id)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? 2 * v->cap : 64;
		int32_t *p = realloc(v->p, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		v->p = p;
		v->cap = cap;
	}
	v->p[v->n++] = id;
	return 0;
}

/* Returns 0 with *ret NULL if text is valid UTF-8, else a heap copy with every maximal
 * invalid subpart replaced by U+FFFD. */
static int utf8_sanitize(const char *text, size_t len, char **ret, size_t *ret_len)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0, bad = 0;

	*ret = NULL;
	while (i < len) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t k = fr_utf8_decode(s + i, len - i, NULL, NULL, NULL);
		if (!k)
			break;
		i += k;
	}
	if (i == len)
		return 0;

	struct tk_buf b = { 0 };
	if (tk__buf_add(&b, text, i) < 0)
		return -ENOMEM;
	while (i < len) {
		size_t k = fr_utf8_decode(s + i, len - i, NULL, &bad, NULL);
		if (k) {
			if (tk__buf_add(&b, s + i, k) < 0)
				goto oom;
			i += k;
		} else {
			if (tk__buf_add(&b, "\xEF\xBF\xBD", 3) < 0)
				goto oom;
			i += bad;
		}
	}
	*ret = b.p;
	*ret_len = b.len;
	return 0;
oom:
	free(b.p);
	return -ENOMEM;
}

/* JS String.prototype.trim() whitespace, the set lstrip/rstrip eat. */
static bool js_space(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

/* ---- encoding -------------------------------------------------------------------------------- */

struct tk_piece {
	uint32_t start, end;        /* byte range of the text */
	bool prefix;                /* a ByteLevel prefix space goes before it */
};

struct tk_span {
	uint32_t start, end;
	bool delim;
};

struct tk_sym {
	int32_t id, prev, next;
};

struct tk_heap_ent {
	int32_t rank, pos, a, b;
};

struct tk_run {
	const struct model_tokenizer *tk;
	const char *text;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	struct tk_piece *pa, *pb;
	size_t na, nb, cap_a, cap_b;
	struct tk_span *spans;
	size_t nspans, cap_spans;
	struct tk_sym *sym;
	size_t cap_sym;
	struct tk_heap_ent *heap;
	size_t nheap, cap_heap;
	struct tk_buf word;
	struct tk_ids out;
};

#define GROW(ptr, cap, need)                                                                 \
	do {                                                                                 \
		if ((need) > (cap)) {                                                        \
			size_t nc__ = (cap) ? (cap) : 16;                                    \
			while (nc__ < (need))                                                \
				nc__ *= 2;                                                   \
			void *np__ = realloc((ptr), nc__ * sizeof(*(ptr)));                  \
			if (!np__)                                                           \
				return -ENOMEM;                                              \
			(ptr) = np__;                                                        \
			(cap) = nc__;                                                        \
		}                                                                            \
	} while (0)

static int span_push(struct tk_run *r, uint32_t s, uint32_t e, bool delim)
{
	GROW(r->spans, r->cap_spans, r->nspans + 1);
	r->spans[r->nspans++] = (struct tk_span){ s, e, delim };
	return 0;
}

static int piece_push(struct tk_run *r, uint32_t s, uint32_t e, bool prefix)
{
	GROW(r->pb, r->cap_b, r->nb + 1);
	r->pb[r->nb++] = (struct tk_piece){ s, e, prefix };
	return 0;
}

/* Splits subj[0..n) at the matches of re into spans covering it all (HF find_matches). */
static int regex_spans(struct tk_run *r, const pcre2_code *re, const char *subj, size_t n)
{
	size_t off = 0, prev = 0;
	int rc;

	r->nspans = 0;
	while (off <= n) {
		uint32_t opts = PCRE2_NO_UTF_CHECK;
		rc = pcre2_match(re, (PCRE2_SPTR)subj, n, off, opts, r->md, r->mctx);
		if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
			rc = pcre2_match(re, (PCRE2_SPTR)subj, n, off, opts | PCRE2_NO_JIT, r->md, r->mctx);
		if (rc < 0)
			break; /* no match, or a limit hit: the rest is one unmatched span */
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
		size_t ms = ov[0], me = ov[1];
		if (ms < off || me < ms || me > n)
			break;
		if (ms > prev && span_push(r, (uint32_t)prev, (uint32_t)ms, false) < 0)
			return -ENOMEM;
		if (me > ms) {
			if (span_push(r, (uint32_t)ms, (uint32_t)me, true) < 0)
				return -ENOMEM;
			off = me;
		} else {
			/* empty match: a boundary; step over one character */
			if (ms >= n)
				break;
			off = ms + 1;
			while (off < n && ((unsigned char)subj[off] & 0xC0) == 0x80)
				off++;
		}
		prev = ms == me ? ms : me;
	}
	if (prev < n && span_push(r, (uint32_t)prev, (uint32_t)n, false) < 0)
		return -ENOMEM;
	return 0;
}

/* Applies a split behaviour to r->spans, appending pieces (offset by base) to r->pb. */
static int apply_behavior(struct tk_run *r, enum tk_behavior beh, bool invert, uint32_t base,
			  bool first_prefix, uint32_t prefix_shift)
{
	struct tk_span *s = r->spans;
	size_t n = r->nspans, m = 0;

	if (invert)
		for (size_t i = 0; i < n; i++)
			s[i].delim = !s[i].delim;
	switch (beh) {
	case TK_ISOLATED:
		m = n;
		break;
	case TK_REMOVED:
		for (size_t i = 0; i < n; i++)
			if (!s[i].delim)
				s[m++] = s[i];
		break;
	case TK_MERGED_PREV: {
		bool prev_match = false;
		for (size_t i = 0; i < n; i++) {
			if (s[i].delim && !prev_match && m > 0)
				s[m - 1].end = s[i].end;
			else
				s[m++] = s[i];
			prev_match = s[i].delim;
		}
		break;
	}
	case TK_MERGED_NEXT: {
		bool prev_match = false;
		size_t w = n;
		for (size_t k = n; k-- > 0;) {
			struct tk_span cur = s[k];
			if (cur.delim && !prev_match && w < n)
				s[w].start = cur.start;
			else
				s[--w] = cur;
			prev_match = cur.delim;
		}
		memmove(s, s + w, (n - w) * sizeof(*s));
		m = n - w;
		break;
	}
	case TK_CONTIGUOUS: {
		bool prev_match = false;
		for (size_t i = 0; i < n; i++) {
			bool d = s[i].delim;
			if (d && prev_match && m > 0)
				s[m - 1].end = s[i].end;
			else
				s[m++] = s[i];
			prev_match = d;
		}
		break;
	}
	}
	for (size_t i = 0; i < m; i++) {
		uint32_t a = s[i].start, b = s[i].end;
		bool pre = false;
		if (a == b)
			continue;
		if (prefix_shift) {
			/* spans of " " + piece: the leading virtual space belongs to the first span */
			if (a == 0) {
				pre = first_prefix;
				a = 0;
			} else {
				a -= prefix_shift;
			}
			b -= prefix_shift;
		}
		if (piece_push(r, base + a, base + b, pre) < 0)
			return -ENOMEM;
	}
	return 0;
}

static int heap_push(struct tk_run *r, struct tk_heap_ent e)
{
	GROW(r->heap, r->cap_heap, r->nheap + 1);
	size_t i = r->nheap++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		struct tk_heap_ent *q = &r->heap[p];
		if (q->rank < e.rank || (q->rank == e.rank && q->pos < e.pos))
			break;
		r->heap[i] = *q;
		i = p;
	}
	r->heap[i] = e;
	return 0;
}

static struct tk_heap_ent heap_pop(struct tk_run *r)
{
	struct tk_heap_ent top = r->heap[0], last = r->heap[--r->nheap];
	size_t i = 0, n = r->nheap;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && (r->heap[c + 1].rank < r->heap[c].rank ||
				  (r->heap[c + 1].rank == r->heap[c].rank && r->heap[c + 1].pos < r->heap[c].pos)))
			c++;
		if (last.rank < r->heap[c].rank || (last.rank == r->heap[c].rank && last.pos < r->heap[c].pos))
			break;
		r->heap[i] = r->heap[c];
		i = c;
	}
	if (n)
		r->heap[i] = last;
	return top;
}

static int heap_pair(struct tk_run *r, int32_t pos)
{
	int32_t nx = r->sym[pos].next;
	if (nx < 0)
		return 0;
	const struct tk_mslot *m = tk_mmap_find(r->tk, r->sym[pos].id, r->sym[nx].id);
	if (!m)
		return 0;
	return heap_push(r, (struct tk_heap_ent){ m->rank, pos, r->sym[pos].id, r->sym[nx].id });
}

/* BPE over one pre-token's bytes; appends the ids to r->out. */
static int bpe_word(struct tk_run *r, const char *w, size_t n)
{
	const struct model_tokenizer *tk = r->tk;
	uint64_t h = tk_hash(w, n);
	struct tk_cache_slot *slot = NULL;
	int32_t head = -1;
	size_t ns = 0, first_out = r->out.n;

	if (tk->ignore_merges) {
		int32_t id = tk_vmap_find(tk, w, n, h);
		if (id >= 0)
			return ids_push(&r->out, id);
	}
	if (n <= TK_CACHE_KEY) {
		struct model_tokenizer *mtk = (struct model_tokenizer *)tk; /* the cache is interior-mutable */
		if (!atomic_flag_test_and_set_explicit(&mtk->cache_busy, memory_order_acquire)) {
			struct tk_cache_slot *c = &mtk->cache[h & (TK_CACHE_SLOTS - 1)];
			if (c->klen == n && c->hash == h && memcmp(c->key, w, n) == 0) {
				int32_t ids[TK_CACHE_IDS];
				uint8_t k = c->nids;
				memcpy(ids, c->ids, k * sizeof(*ids));
				atomic_flag_clear_explicit(&mtk->cache_busy, memory_order_release);
				for (uint8_t i = 0; i < k; i++)
					if (ids_push(&r->out, ids[i]) < 0)
						return -ENOMEM;
				return 0;
			}
			atomic_flag_clear_explicit(&mtk->cache_busy, memory_order_release);
			slot = c;
		}
	}

	GROW(r->sym, r->cap_sym, n);
	for (size_t i = 0; i < n; i++) {
		int32_t id = tk->byte_id[(unsigned char)w[i]];
		if (id < 0)
			id = tk->unk_id;
		if (id < 0)
			continue; /* a byte with no token and no unk: dropped */
		r->sym[ns] = (struct tk_sym){ id, (int32_t)ns - 1, (int32_t)ns + 1 };
		ns++;
	}
	if (!ns)
		return 0;
	r->sym[ns - 1].next = -1;
	head = 0;

	if (ns < TK_HEAP_MIN) {
		for (;;) {
			int32_t best = -1, best_rank = INT32_MAX, best_id = -1;
			for (int32_t i = head; i >= 0 && r->sym[i].next >= 0; i = r->sym[i].next) {
				const struct tk_mslot *m = tk_mmap_find(tk, r->sym[i].id, r->sym[r->sym[i].next].id);
				if (m && m->rank < best_rank) {
					best = i;
					best_rank = m->rank;
					best_id = m->id;
				}
			}
			if (best < 0)
				break;
			int32_t nx = r->sym[best].next;
			r->sym[best].id = best_id;
			r->sym[best].next = r->sym[nx].next;
			if (r->sym[nx].next >= 0)
				r->sym[r->sym[nx].next].prev = best;
		}
	} else {
		r->nheap = 0;
		for (int32_t i = 0; i < (int32_t)ns - 1; i++)
			if (heap_pair(r, i) < 0)
				return -ENOMEM;
		while (r->nheap) {
			struct tk_heap_ent e = heap_pop(r);
			int32_t nx = r->sym[e.pos].next;
			if (r->sym[e.pos].id != e.a || nx < 0 || r->sym[nx].id != e.b ||
			    r->sym[e.pos].prev == -2)
				continue;
			const struct tk_mslot *m = tk_mmap_find(tk, e.a, e.b);
			r->sym[e.pos].id = m->id;
			r->sym[e.pos].next = r->sym[nx].next;
			if (r->sym[nx].next >= 0)
				r->sym[r->sym[nx].next].prev = e.pos;
			r->sym[nx].prev = -2; /* dead */
			r->sym[nx].id = -1;
			if (r->sym[e.pos].prev >= 0 && heap_pair(r, r->sym[e.pos].prev) < 0)
				return -ENOMEM;
			if (heap_pair(r, e.pos) < 0)
				return -ENOMEM;
		}
	}
	for (int32_t i = head; i >= 0; i = r->sym[i].next)
		if (ids_push(&r->out, r->sym[i].id) < 0)
			return -ENOMEM;

	size_t nout = r->out.n - first_out;
	if (slot && nout <= TK_CACHE_IDS) {
		struct model_tokenizer *mtk = (struct model_tokenizer *)tk;
		if (!atomic_flag_test_and_set_explicit(&mtk->cache_busy, memory_order_acquire)) {
			slot->klen = 0;
			slot->hash = h;
			memcpy(slot->key, w, n);
			memcpy(slot->ids, r->out.p + first_out, nout * sizeof(int32_t));
			slot->nids = (uint8_t)nout;
			slot->klen = (uint8_t)n;
			atomic_flag_clear_explicit(&mtk->cache_busy, memory_order_release);
		}
	}
	return 0;
}

/* Normal (non-added-token) text [start, end): pre-tokenizer steps, then BPE. */
static int encode_section(struct tk_run *r, uint32_t start, uint32_t end)
{
	const struct model_tokenizer *tk = r->tk;
	int rc;

	if (start >= end)
		return 0;
	r->na = 0;
	GROW(r->pa, r->cap_a, 1);
	r->pa[r->na++] = (struct tk_piece){ start, end, false };

	for (int s = 0; s < tk->n_steps; s++) {
		const struct tk_step *st = &tk->steps[s];
		r->nb = 0;
		for (size_t i = 0; i < r->na; i++) {
			const struct tk_piece *p = &r->pa[i];
			if (st->type == TK_STEP_SPLIT) {
				if ((rc = regex_spans(r, st->re, r->text + p->start, p->end - p->start)) < 0 ||
				    (rc = apply_behavior(r, st->behavior, st->invert, p->start, false, 0)) < 0)
					return rc;
				continue;
			}
			/* ByteLevel */
			bool pre = st->add_prefix_space && r->text[p->start] != ' ';
			if (!st->re) {
				if ((rc = piece_push(r, p->start, p->end, pre)) < 0)
					return rc;
				continue;
			}
			const char *subj = r->text + p->start;
			size_t n = p->end - p->start;
			if (pre) {
				r->word.len = 0;
				if (tk__buf_add(&r->word, " ", 1) < 0 || tk__buf_add(&r->word, subj, n) < 0)
					return -ENOMEM;
				subj = r->word.p;
				n++;
			}
			if ((rc = regex_spans(r, st->re, subj, n)) < 0 ||
			    (rc = apply_behavior(r, TK_ISOLATED, false, p->start, pre, pre ? 1 : 0)) < 0)
				return rc;
		}
		struct tk_piece *t = r->pa;
		size_t tc = r->cap_a;
		r->pa = r->pb;
		r->cap_a = r->cap_b;
		r->na = r->nb;
		r->pb = t;
		r->cap_b = tc;
	}

	for (size_t i = 0; i < r->na; i++) {
		const struct tk_piece *p = &r->pa[i];
		const char *w = r->text + p->start;
		size_t n = p->end - p->start;
		if (p->prefix) {
			r->word.len = 0;
			if (tk__buf_add(&r->word, " ", 1) < 0 || tk__buf_add(&r->word, w, n) < 0)
				return -ENOMEM;
			w = r->word.p;
			n++;
		}
		if ((rc = bpe_word(r, w, n)) < 0)
			return rc;
	}
	return 0;
}

/* Backs over JS whitespace ending at text[end) (lstrip of the next added token). */
static uint32_t trim_end(const char *text, uint32_t start, uint32_t end)
{
	const unsigned char *s = (const unsigned char *)text;
	while (end > start) {
		uint32_t k = end - 1;
		while (k > start && (s[k] & 0xC0) == 0x80)
			k--;
		uint32_t c;
		if (!fr_utf8_decode(s + k, end - k, &c, NULL, NULL) || !js_space(c))
			break;
		end = k;
	}
	return end;
}

static uint32_t trim_start(const char *text, uint32_t start, uint32_t end)
{
	const unsigned char *s = (const unsigned char *)text;
	while (start < end) {
		uint32_t c;
		size_t k = fr_utf8_decode(s + start, end - start, &c, NULL, NULL);
		if (!k || !js_space(c))
			break;
		start += (uint32_t)k;
	}
	return start;
}

int model_tokenizer_encode(const struct model_tokenizer *tk, const char *text, size_t len,
			   bool add_special, int32_t **ret_ids, size_t *ret_n)
{
	struct tk_run r = { .tk = tk };
	char *clean = NULL;
	size_t clen = len;
	uint32_t sec = 0, i = 0;
	int rc = -ENOMEM;

	if (len > UINT32_MAX / 2)
		return -E2BIG;
	if (utf8_sanitize(text, len, &clean, &clen) < 0)
		return -ENOMEM;
	if (clean)
		text = clean;
	if (clen > UINT32_MAX / 2) {
		rc = -E2BIG;
		goto out;
	}
	r.text = text;
	r.md = pcre2_match_data_create(4, NULL);
	r.mctx = pcre2_match_context_create(NULL);
	if (!r.md || !r.mctx)
		goto out;
	pcre2_set_match_limit(r.mctx, TK_MATCH_LIMIT);
	pcre2_set_depth_limit(r.mctx, 10000);
	pcre2_set_heap_limit(r.mctx, 64 * 1024);

	if (add_special)
		for (int k = 0; k < tk->n_prefix; k++)
			if (ids_push(&r.out, tk->prefix[k]) < 0)
				goto out;

	/* cut out added tokens; sections in between are normal text */
	bool rstrip_pending = false;
	while (i < clen) {
		size_t mlen = 0;
		int32_t slot = -1;
		if (tk->trie_first[(unsigned char)text[i]])
			slot = tk_trie_match(tk, text + i, clen - i, &mlen);
		if (slot < 0) {
			i++;
			continue;
		}
		uint32_t end = i;
		if (rstrip_pending)
			sec = trim_start(text, sec, end);
		if (tk->added[slot].lstrip)
			end = trim_end(text, sec, end);
		if ((rc = encode_section(&r, sec, end)) < 0 || (rc = ids_push(&r.out, tk->added[slot].id)) < 0)
			goto out;
		rc = -ENOMEM;
		i += (uint32_t)mlen;
		sec = i;
		rstrip_pending = tk->added[slot].rstrip;
	}
	if (rstrip_pending)
		sec = trim_start(text, sec, (uint32_t)clen);
	if ((rc = encode_section(&r, sec, (uint32_t)clen)) < 0)
		goto out;
	rc = -ENOMEM;
	if (add_special)
		for (int k = 0; k < tk->n_suffix; k++)
			if (ids_push(&r.out, tk->suffix[k]) < 0)
				goto out;
	if (!r.out.p && !(r.out.p = malloc(sizeof(int32_t))))
		goto out;
	*ret_ids = r.out.p;
	*ret_n = r.out.n;
	r.out.p = NULL;
	rc = 0;
out:
	pcre2_match_data_free(r.md);
	pcre2_match_context_free(r.mctx);
	free(r.pa);
	free(r.pb);
	free(r.spans);
	free(r.sym);
	free(r.heap);
	free(r.word.p);
	free(r.out.p);
	free(clean);
	return rc;
}

int model_tokenizer_decode(const struct model_tokenizer *tk, const int32_t *ids, size_t n,
			   bool skip_special, char **ret_text, size_t *ret_len)
{
	struct tk_buf b = { 0 };

	for (size_t i = 0; i < n; i++) {
		int32_t id = ids[i];
		if (id < 0 || id >= tk->n_ids || !(tk->tok[id].flags & TK_PRESENT)) {
			free(b.p);
			return -EINVAL;
		}
		if (skip_special && (tk->tok[id].flags & TK_SPECIAL))
			continue;
		if (tk__buf_add(&b, tk->tok[id].bytes, tk->tok[id].len) < 0) {
			free(b.p);
			return -ENOMEM;
		}
	}
	if (!b.p && tk__buf_reserve(&b, 0) < 0)
		return -ENOMEM;
	b.p[b.len] = '\0';
	*ret_text = b.p;
	*ret_len = b.len;
	return 0;
}

