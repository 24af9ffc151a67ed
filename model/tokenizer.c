/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokenizer.c - byte-level BPE from a HuggingFace tokenizer.json.
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
 * Regexes follow the reference encoder (ECMAScript with the u flag): \s \S \d \D \w \W are
 * rewritten to the JS sets before PCRE2 (UTF + UCP) compiles them, and the two rewrites
 * transformers.js applies to known HF patterns are applied too. Unicode property tables are
 * PCRE2's (10.42: Unicode 14), so characters assigned after Unicode 14 may be classified
 * differently from a newer JS engine.
 *
 * Split behaviours follow HF tokenizers (Isolated, Removed, MergedWithPrevious,
 * MergedWithNext, Contiguous; invert). BOS/EOS: a TemplateProcessing / Bert / Roberta
 * post-processor says what add_special adds; with a ByteLevel or null post-processor (the
 * DeepSeek files, where transformers' LlamaTokenizerFast adds BOS from tokenizer_config.json)
 * model_tokenizer_load() reads tokenizer_config.json beside the file (bos_token, eos_token,
 * add_bos_token, add_eos_token), and without one the BOS/EOS are the special added tokens
 * with a well-known name ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", ...), and
 * add_special prepends the BOS.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

#include "model/model.h"

#define TK_MAX_ID (1 << 21)          /* ids from here on are refused as malformed */
#define TK_MAX_TOKEN_BYTES (1 << 16)
#define TK_MAX_FILE_BYTES (512u << 20)
#define TK_MAX_PATTERN 8192
#define TK_MATCH_LIMIT 1000000
#define TK_CACHE_SLOTS 8192
#define TK_CACHE_KEY 30
#define TK_CACHE_IDS 10
#define TK_HEAP_MIN 24               /* words this long or longer merge with a heap */

enum tk_flags {
	TK_PRESENT = 1 << 0, /* the id names a token */
	TK_ADDED = 1 << 1,
	TK_SPECIAL = 1 << 2,
	TK_BYTELEVEL = 1 << 3, /* a vocab entry spelled in the ByteLevel alphabet (in vmap) */
};

struct tk_token {
	char *bytes;        /* decode output; owned */
	uint32_t len;
	uint8_t flags;
};

struct tk_vslot {
	uint32_t hash;
	int32_t id;         /* -1 = empty */
};

struct tk_mslot {
	uint64_t key;       /* (left id << 32) | right id; ~0 = empty */
	int32_t rank;
	int32_t id;         /* merged token */
};

enum tk_behavior {
	TK_ISOLATED = 0,
	TK_REMOVED,
	TK_MERGED_PREV,
	TK_MERGED_NEXT,
	TK_CONTIGUOUS,
};

enum tk_step_type {
	TK_STEP_SPLIT = 0,
	TK_STEP_BYTELEVEL,
};

struct tk_step {
	enum tk_step_type type;
	pcre2_code *re;     /* Split, or ByteLevel with use_regex; owned */
	enum tk_behavior behavior;
	bool invert;
	bool add_prefix_space;
};

struct tk_trie_node {
	int32_t child;      /* first child, -1 none */
	int32_t sibling;    /* next sibling, -1 none */
	int32_t id;         /* token ending here, -1 none */
	uint8_t byte;
};

struct tk_added {
	int32_t id;
	bool lstrip, rstrip;
};

struct tk_cache_slot {
	uint64_t hash;
	uint8_t klen;       /* 0 = empty */
	uint8_t nids;
	char key[TK_CACHE_KEY];
	int32_t ids[TK_CACHE_IDS];
};

struct model_tokenizer {
	int32_t n_ids;
	struct tk_token *tok;           /* [n_ids] */
	struct tk_vslot *vmap;          /* bytes -> id, ByteLevel vocab entries */
	uint32_t vmask;
	struct tk_mslot *mmap;          /* (left, right) -> rank, merged */
	uint32_t mmask;
	int32_t byte_id[256];           /* the one-byte token per byte, -1 none */
	int32_t unk_id;
	bool ignore_merges;
	struct tk_step *steps;
	int n_steps;
	struct tk_trie_node *trie;      /* [0] is the root */
	int32_t n_trie, cap_trie;
	bool trie_first[256];
	struct tk_added *added;         /* indexed by trie id slot */
	int32_t n_added;
	int32_t bos, eos;
	int32_t *prefix, *suffix;       /* add_special ids; owned */
	int n_prefix, n_suffix;
	bool template_pp;               /* post-processor fixed prefix/suffix */
	atomic_flag cache_busy;
	struct tk_cache_slot *cache;    /* [TK_CACHE_SLOTS]; owned */
};

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t tk_hash(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, s, 8);
		h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
		h ^= h >> 31;
		s += 8;
		n -= 8;
	}
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)s[i] << (8 * i);
	h = (h ^ v) * 0x94d049bb133111ebull;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	return h ^ (h >> 32);
}

static uint64_t tk_pair_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return k;
}

struct tk_buf {
	char *p;
	size_t len, cap;
};

static int buf_reserve(struct tk_buf *b, size_t extra)
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

static int buf_add(struct tk_buf *b, const void *s, size_t n)
{
	if (buf_reserve(b, n) < 0)
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
	if (buf_add(&b, text, i) < 0)
		return -ENOMEM;
	while (i < len) {
		size_t k = fr_utf8_decode(s + i, len - i, NULL, &bad, NULL);
		if (k) {
			if (buf_add(&b, s + i, k) < 0)
				goto oom;
			i += k;
		} else {
			if (buf_add(&b, "\xEF\xBF\xBD", 3) < 0)
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

/* ---- ByteLevel alphabet ------------------------------------------------------------------ */

static uint16_t bl_char_of_byte[256];
static int16_t bl_byte_of_char[324];
static atomic_int bl_ready;

static void bl_init(void)
{
	if (atomic_load(&bl_ready))
		return;
	int n = 0;
	for (int i = 0; i < 324; i++)
		bl_byte_of_char[i] = -1;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
		uint16_t c = keep ? (uint16_t)b : (uint16_t)(256 + n++);
		bl_char_of_byte[b] = c;
		bl_byte_of_char[c] = (int16_t)b;
	}
	atomic_store(&bl_ready, 1);
}

/* ByteLevel spelling -> bytes. Returns the byte count, or -1 when s is not in the alphabet
 * (or not valid UTF-8). out must hold len bytes. */
static long bl_decode(const char *s, size_t len, char *out)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, o = 0;
	while (i < len) {
		uint32_t c;
		size_t k = fr_utf8_decode(u + i, len - i, &c, NULL, NULL);
		if (!k)
			return -1;
		if (c >= 324 || bl_byte_of_char[c] < 0)
			return -1;
		out[o++] = (char)bl_byte_of_char[c];
		i += k;
	}
	return (long)o;
}

/* ---- vocab and merge maps ---------------------------------------------------------------- */

static int32_t vmap_find(const struct model_tokenizer *tk, const char *s, size_t n, uint64_t h)
{
	uint32_t i = (uint32_t)h & tk->vmask;
	for (;;) {
		const struct tk_vslot *v = &tk->vmap[i];
		if (v->id < 0)
			return -1;
		if (v->hash == (uint32_t)(h >> 32) && tk->tok[v->id].len == n &&
		    memcmp(tk->tok[v->id].bytes, s, n) == 0)
			return v->id;
		i = (i + 1) & tk->vmask;
	}
}

static void vmap_insert(struct model_tokenizer *tk, int32_t id)
{
	const struct tk_token *t = &tk->tok[id];
	uint64_t h = tk_hash(t->bytes, t->len);
	uint32_t i = (uint32_t)h & tk->vmask;
	while (tk->vmap[i].id >= 0) {
		const struct tk_token *o = &tk->tok[tk->vmap[i].id];
		if (o->len == t->len && memcmp(o->bytes, t->bytes, t->len) == 0)
			return; /* two spellings of one byte string cannot happen; keep the first */
		i = (i + 1) & tk->vmask;
	}
	tk->vmap[i].hash = (uint32_t)(h >> 32);
	tk->vmap[i].id = id;
}

static const struct tk_mslot *mmap_find(const struct model_tokenizer *tk, int32_t a, int32_t b)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
	uint32_t i = (uint32_t)tk_pair_hash(key) & tk->mmask;
	for (;;) {
		const struct tk_mslot *m = &tk->mmap[i];
		if (m->key == key)
			return m;
		if (m->key == UINT64_MAX)
			return NULL;
		i = (i + 1) & tk->mmask;
	}
}

static void mmap_insert(struct model_tokenizer *tk, int32_t a, int32_t b, int32_t rank, int32_t id)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
	uint32_t i = (uint32_t)tk_pair_hash(key) & tk->mmask;
	while (tk->mmap[i].key != UINT64_MAX && tk->mmap[i].key != key)
		i = (i + 1) & tk->mmask;
	/* a repeated pair: the later line wins, as in HF and transformers.js */
	tk->mmap[i].key = key;
	tk->mmap[i].rank = rank;
	tk->mmap[i].id = id;
}

static uint32_t pow2_at_least(size_t n)
{
	uint32_t c = 16;
	while (c < n)
		c *= 2;
	return c;
}

/* ---- regex --------------------------------------------------------------------------------- */

#define JS_WS_CLASS "\\t\\n\\x{0B}\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"

static int str_replace_all(struct tk_buf *b, const char *from, const char *to)
{
	size_t fl = strlen(from), tl = strlen(to);
	char *hit = strstr(b->p, from);
	if (!hit)
		return 0;
	struct tk_buf o = { 0 };
	const char *p = b->p;
	while (hit) {
		if (buf_add(&o, p, (size_t)(hit - p)) < 0 || buf_add(&o, to, tl) < 0)
			goto oom;
		p = hit + fl;
		hit = strstr(p, from);
	}
	if (buf_add(&o, p, strlen(p)) < 0)
		goto oom;
	free(b->p);
	*b = o;
	return 0;
oom:
	free(o.p);
	return -ENOMEM;
}

/* ECMAScript (u flag) regex -> PCRE2 pattern with the same meaning for what HF files use. */
static int regex_from_js(const char *pat, size_t len, struct tk_buf *out)
{
	struct tk_buf b = { 0 };
	bool in_class = false;
	int rc = -ENOMEM;

	if (buf_add(&b, pat, len) < 0)
		return -ENOMEM;
	/* transformers.js rewrites these two HF patterns that JS cannot parse as intended */
	if (str_replace_all(&b, "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
			    "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))") < 0 ||
	    str_replace_all(&b, " ?[^(\\s|[.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C])]+",
			    " ?[^\\s.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C]+") < 0)
		goto out;
	for (size_t i = 0; i < b.len; i++) {
		char c = b.p[i];
		const char *rep = NULL;
		if (c == '\\' && i + 1 < b.len) {
			char e = b.p[++i];
			switch (e) {
			case 's': rep = in_class ? JS_WS_CLASS : "[" JS_WS_CLASS "]"; break;
			case 'S': rep = in_class ? "\\S" : "[^" JS_WS_CLASS "]"; break;
			case 'd': rep = in_class ? "0-9" : "[0-9]"; break;
			case 'D': rep = in_class ? "\\x{0}-/:-\\x{10FFFF}" : "[^0-9]"; break;
			case 'w': rep = in_class ? "A-Za-z0-9_" : "[A-Za-z0-9_]"; break;
			case 'W': rep = in_class ? "\\W" : "[^A-Za-z0-9_]"; break;
			case 'u': {
				/* \uXXXX or \u{X...} -> \x{...} */
				size_t j = i + 1, k;
				char hex[9];
				size_t nh = 0;
				if (j < b.len && b.p[j] == '{') {
					for (k = j + 1; k < b.len && b.p[k] != '}' && nh < 8; k++)
						hex[nh++] = b.p[k];
					if (k >= b.len || b.p[k] != '}') {
						rc = -EINVAL;
						goto out;
					}
					i = k;
				} else {
					for (k = j; k < b.len && k < j + 4; k++)
						hex[nh++] = b.p[k];
					if (nh != 4) {
						rc = -EINVAL;
						goto out;
					}
					i = k - 1;
				}
				hex[nh] = '\0';
				if (buf_add(out, "\\x{", 3) < 0 || buf_add(out, hex, nh) < 0 ||
				    buf_add(out, "}", 1) < 0)
					goto out;
				continue;
			}
			default: {
				char two[2] = { '\\', e };
				if (buf_add(out, two, 2) < 0)
					goto out;
				continue;
			}
			}
			if (buf_add(out, rep, strlen(rep)) < 0)
				goto out;
			continue;
		}
		if (c == '[' && !in_class) {
			in_class = true;
			if (buf_add(out, "[", 1) < 0)
				goto out;
			if (i + 1 < b.len && b.p[i + 1] == '^') {
				i++;
				if (buf_add(out, "^", 1) < 0)
					goto out;
			}
			continue;
		}
		if (c == ']' && in_class)
			in_class = false;
		if (buf_add(out, &c, 1) < 0)
			goto out;
	}
	if (!out->p && buf_add(out, "", 0) < 0)
		goto out;
	rc = 0;
out:
	free(b.p);
	return rc;
}

static int regex_compile(const char *pat, size_t len, bool literal, const char *what,
			 pcre2_code **ret, struct fr_error *err)
{
	struct tk_buf p = { 0 };
	int ec, rc;
	PCRE2_SIZE eo;
	pcre2_code *re;

	if (len > TK_MAX_PATTERN)
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s: pattern of %zu bytes is too long", what, len);
	if (literal) {
		if (buf_add(&p, pat, len) < 0)
			return fr_error_set(err, -ENOMEM, "out of memory");
	} else {
		rc = regex_from_js(pat, len, &p);
		if (rc < 0) {
			free(p.p);
			return fr_error_set(err, rc, "tokenizer.json: %s: bad regex '%.*s'", what, (int)FR_MIN(len, 200), pat);
		}
	}
	re = pcre2_compile((PCRE2_SPTR)p.p, p.len,
			   literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C,
			   &ec, &eo, NULL);
	if (!re) {
		PCRE2_UCHAR msg[160];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		rc = fr_error_set(err, -EINVAL, "tokenizer.json: %s: bad regex '%.*s' at offset %zu: %s", what,
				  (int)FR_MIN(len, 200), pat, (size_t)eo, (const char *)msg);
		free(p.p);
		return rc;
	}
	free(p.p);
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: the interpreter is the fallback */
	*ret = re;
	return 0;
}

/* ---- added tokens: byte trie, leftmost longest ------------------------------------------- */

static int trie_add(struct model_tokenizer *tk, const char *s, size_t n, int32_t slot)
{
	int32_t node = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)s[i];
		int32_t ch = tk->trie[node].child;
		while (ch >= 0 && tk->trie[ch].byte != c)
			ch = tk->trie[ch].sibling;
		if (ch < 0) {
			if (tk->n_trie == tk->cap_trie) {
				int32_t cap = tk->cap_trie ? 2 * tk->cap_trie : 256;
				struct tk_trie_node *t = realloc(tk->trie, (size_t)cap * sizeof(*t));
				if (!t)
					return -ENOMEM;
				tk->trie = t;
				tk->cap_trie = cap;
			}
			ch = tk->n_trie++;
			tk->trie[ch] = (struct tk_trie_node){ -1, tk->trie[node].child, -1, c };
			tk->trie[node].child = ch;
		}
		node = ch;
	}
	tk->trie[node].id = slot;
	tk->trie_first[(uint8_t)s[0]] = true;
	return 0;
}

/* Longest added token starting at s: its slot and length, or -1. */
static int32_t trie_match(const struct model_tokenizer *tk, const char *s, size_t n, size_t *ret_len)
{
	int32_t node = 0, best = -1;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)s[i];
		int32_t ch = tk->trie[node].child;
		while (ch >= 0 && tk->trie[ch].byte != c)
			ch = tk->trie[ch].sibling;
		if (ch < 0)
			break;
		node = ch;
		if (tk->trie[node].id >= 0) {
			best = tk->trie[node].id;
			*ret_len = i + 1;
		}
	}
	return best;
}

/* ---- parsing ---------------------------------------------------------------------------- */

static const char *json_type_name(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/* Optional boolean field: absent or null -> def. */
static int get_bool(const json_t *obj, const char *key, bool def, const char *where, bool *ret,
		    struct fr_error *err)
{
	const json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v)) {
		*ret = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s.%s: expected a boolean, got %s",
				    where, key, json_type_name(v));
	*ret = json_is_true(v);
	return 0;
}

static int get_type(const json_t *obj, const char *where, const char **ret, struct fr_error *err)
{
	const json_t *t;
	if (!json_is_object(obj))
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s: expected an object, got %s",
				    where, json_type_name(obj));
	t = json_object_get(obj, "type");
	if (!json_is_string(t))
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s.type: missing or not a string", where);
	*ret = json_string_value(t);
	return 0;
}

static int set_token(struct model_tokenizer *tk, int32_t id, const char *s, size_t n, uint8_t flags)
{
	char *c = malloc(n + 1);
	if (!c)
		return -ENOMEM;
	memcpy(c, s, n);
	c[n] = '\0';
	free(tk->tok[id].bytes);
	tk->tok[id].bytes = c;
	tk->tok[id].len = (uint32_t)n;
	tk->tok[id].flags = flags;
	return 0;
}

static int parse_id(const json_t *v, const char *where, const char *name, int32_t *ret,
		    struct fr_error *err)
{
	if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= TK_MAX_ID)
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s: token '%.80s': id must be an integer in [0, %d)",
				    where, name, TK_MAX_ID);
	*ret = (int32_t)json_integer_value(v);
	return 0;
}

static int parse_model(struct model_tokenizer *tk, const json_t *model, const json_t *added,
		       struct fr_error *err)
{
	const char *type, *key;
	const json_t *vocab, *merges, *v;
	int32_t max_id = -1;
	char *tmp = NULL;
	int rc;

	if ((rc = get_type(model, "model", &type, err)) < 0)
		return rc;
	if (strcmp(type, "BPE") != 0)
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: model.type '%.64s' is not supported (only BPE)", type);
	v = json_object_get(model, "dropout");
	if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: model.dropout is not supported");
	v = json_object_get(model, "continuing_subword_prefix");
	if (v && !json_is_null(v) && !(json_is_string(v) && !*json_string_value(v)))
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: model.continuing_subword_prefix is not supported");
	v = json_object_get(model, "end_of_word_suffix");
	if (v && !json_is_null(v) && !(json_is_string(v) && !*json_string_value(v)))
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: model.end_of_word_suffix is not supported");
	if ((rc = get_bool(model, "ignore_merges", false, "model", &tk->ignore_merges, err)) < 0)
		return rc;
	bool bf;
	if ((rc = get_bool(model, "byte_fallback", false, "model", &bf, err)) < 0)
		return rc;
	if (bf)
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: model.byte_fallback is not supported");

	vocab = json_object_get(model, "vocab");
	if (!json_is_object(vocab))
		return fr_error_set(err, -EINVAL, "tokenizer.json: model.vocab: missing or not an object");
	if (json_object_size(vocab) == 0)
		return fr_error_set(err, -EINVAL, "tokenizer.json: model.vocab is empty");
	json_object_foreach((json_t *)vocab, key, v) {
		int32_t id;
		if ((rc = parse_id(v, "model.vocab", key, &id, err)) < 0)
			return rc;
		max_id = FR_MAX(max_id, id);
	}
	if (json_is_array(added)) {
		size_t i;
		json_array_foreach(added, i, v) {
			int32_t id;
			const json_t *c = json_object_get(v, "content");
			if (!json_is_object(v))
				return fr_error_set(err, -EINVAL, "tokenizer.json: added_tokens[%zu]: expected an object", i);
			if ((rc = parse_id(json_object_get(v, "id"), "added_tokens",
					   json_is_string(c) ? json_string_value(c) : "?", &id, err)) < 0)
				return rc;
			max_id = FR_MAX(max_id, id);
		}
	}
	tk->n_ids = max_id + 1;
	tk->tok = calloc((size_t)tk->n_ids, sizeof(*tk->tok));
	tk->vmask = pow2_at_least(2 * json_object_size(vocab)) - 1;
	tk->vmap = malloc(((size_t)tk->vmask + 1) * sizeof(*tk->vmap));
	tmp = malloc(TK_MAX_TOKEN_BYTES);
	if (!tk->tok || !tk->vmap || !tmp) {
		rc = fr_error_set(err, -ENOMEM, "tokenizer.json: out of memory");
		goto out;
	}
	for (uint32_t i = 0; i <= tk->vmask; i++)
		tk->vmap[i].id = -1;

	json_object_foreach((json_t *)vocab, key, v) {
		int32_t id = (int32_t)json_integer_value(v);
		size_t n = strlen(key);
		long bn;
		if (tk->tok[id].flags & TK_PRESENT) {
			rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.vocab: id %d is used by '%.80s' and '%.80s'",
					  id, tk->tok[id].bytes, key);
			goto out;
		}
		if (n == 0 || n >= TK_MAX_TOKEN_BYTES) {
			rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.vocab: token %d has length %zu", id, n);
			goto out;
		}
		bn = bl_decode(key, n, tmp);
		if (bn > 0)
			rc = set_token(tk, id, tmp, (size_t)bn, TK_PRESENT | TK_BYTELEVEL);
		else
			rc = set_token(tk, id, key, n, TK_PRESENT);
		if (rc < 0) {
			rc = fr_error_set(err, -ENOMEM, "tokenizer.json: out of memory");
			goto out;
		}
		if (bn > 0)
			vmap_insert(tk, id);
	}
	for (int b = 0; b < 256; b++) {
		char c = (char)b;
		tk->byte_id[b] = vmap_find(tk, &c, 1, tk_hash(&c, 1));
	}

	tk->unk_id = -1;
	v = json_object_get(model, "unk_token");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v)) {
			rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.unk_token: expected a string");
			goto out;
		}
		const json_t *u = json_object_get(vocab, json_string_value(v));
		if (!u) {
			rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.unk_token '%.80s' is not in the vocab",
					  json_string_value(v));
			goto out;
		}
		tk->unk_id = (int32_t)json_integer_value(u);
	}

	merges = json_object_get(model, "merges");
	if (!merges || json_is_null(merges))
		merges = NULL;
	else if (!json_is_array(merges)) {
		rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges: expected an array, got %s",
				  json_type_name(merges));
		goto out;
	}
	tk->mmask = pow2_at_least(2 * (merges ? json_array_size(merges) : 0) + 2) - 1;
	tk->mmap = malloc(((size_t)tk->mmask + 1) * sizeof(*tk->mmap));
	if (!tk->mmap) {
		rc = fr_error_set(err, -ENOMEM, "tokenizer.json: out of memory");
		goto out;
	}
	for (uint32_t i = 0; i <= tk->mmask; i++)
		tk->mmap[i].key = UINT64_MAX;
	if (merges) {
		size_t i;
		json_array_foreach(merges, i, v) {
			const char *a, *b;
			size_t al, bl;
			const char *sp;
			if (i >= (size_t)INT32_MAX) {
				rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges: too many merges");
				goto out;
			}
			if (json_is_string(v)) {
				a = json_string_value(v);
				sp = strchr(a, ' ');
				if (!sp || strchr(sp + 1, ' ')) {
					rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges[%zu] '%.80s': expected two tokens separated by one space",
							  i, a);
					goto out;
				}
				al = (size_t)(sp - a);
				b = sp + 1;
				bl = strlen(b);
			} else if (json_is_array(v) && json_array_size(v) == 2 &&
				   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
				a = json_string_value(json_array_get(v, 0));
				al = json_string_length(json_array_get(v, 0));
				b = json_string_value(json_array_get(v, 1));
				bl = json_string_length(json_array_get(v, 1));
			} else {
				rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
				goto out;
			}
			if (al == 0 || bl == 0 || al + bl >= TK_MAX_TOKEN_BYTES) {
				rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges[%zu]: empty or oversized token", i);
				goto out;
			}
			long an = bl_decode(a, al, tmp), bn = an > 0 ? bl_decode(b, bl, tmp + an) : -1;
			int32_t ia = -1, ib = -1, im;
			if (an > 0 && bn > 0) {
				ia = vmap_find(tk, tmp, (size_t)an, tk_hash(tmp, (size_t)an));
				ib = vmap_find(tk, tmp + an, (size_t)bn, tk_hash(tmp + an, (size_t)bn));
			}
			if (ia < 0 || ib < 0) {
				/* a token outside the ByteLevel alphabet can never be a BPE symbol here, so
				 * such a merge is inert if the vocab has it; anything else is an error */
				char *x = strndup(a, al), *y = strndup(b, bl);
				bool known = x && y && json_object_get(vocab, x) && json_object_get(vocab, y);
				if (!known)
					rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges[%zu]: token '%.80s' is not in the vocab",
							  i, !x || !json_object_get(vocab, x) ? (x ? x : "?") : (y ? y : "?"));
				free(x);
				free(y);
				if (!known)
					goto out;
				continue;
			}
			im = vmap_find(tk, tmp, (size_t)(an + bn), tk_hash(tmp, (size_t)(an + bn)));
			if (im < 0) {
				rc = fr_error_set(err, -EINVAL, "tokenizer.json: model.merges[%zu] '%.*s %.*s': the merged token is not in the vocab",
						  i, (int)FR_MIN(al, 80), a, (int)FR_MIN(bl, 80), b);
				goto out;
			}
			mmap_insert(tk, ia, ib, (int32_t)i, im);
		}
	}
	rc = 0;
out:
	free(tmp);
	return rc;
}

static int parse_added(struct model_tokenizer *tk, const json_t *added, struct fr_error *err)
{
	size_t i;
	const json_t *v;
	int rc;

	tk->trie = malloc(256 * sizeof(*tk->trie));
	if (!tk->trie)
		return fr_error_set(err, -ENOMEM, "out of memory");
	tk->cap_trie = 256;
	tk->n_trie = 1;
	tk->trie[0] = (struct tk_trie_node){ -1, -1, -1, 0 };
	if (!added || json_is_null(added))
		return 0;
	if (!json_is_array(added))
		return fr_error_set(err, -EINVAL, "tokenizer.json: added_tokens: expected an array, got %s",
				    json_type_name(added));
	tk->added = calloc(json_array_size(added) + 1, sizeof(*tk->added));
	if (!tk->added)
		return fr_error_set(err, -ENOMEM, "out of memory");
	json_array_foreach(added, i, v) {
		const json_t *c = json_object_get(v, "content");
		int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
		bool special, lstrip, rstrip, single;
		char where[48];

		snprintf(where, sizeof(where), "added_tokens[%zu]", i);
		if (!json_is_string(c) || json_string_length(c) == 0 ||
		    json_string_length(c) >= TK_MAX_TOKEN_BYTES)
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.content: missing, empty or not a string", where);
		if ((rc = get_bool(v, "special", false, where, &special, err)) < 0 ||
		    (rc = get_bool(v, "lstrip", false, where, &lstrip, err)) < 0 ||
		    (rc = get_bool(v, "rstrip", false, where, &rstrip, err)) < 0 ||
		    (rc = get_bool(v, "single_word", false, where, &single, err)) < 0)
			return rc;
		if (single)
			return fr_error_set(err, -ENOTSUP, "tokenizer.json: %s '%.80s': single_word is not supported",
					    where, json_string_value(c));
		if (set_token(tk, id, json_string_value(c), json_string_length(c),
			      (uint8_t)(TK_PRESENT | TK_ADDED | (special ? TK_SPECIAL : 0) |
					(tk->tok[id].flags & TK_BYTELEVEL))) < 0)
			return fr_error_set(err, -ENOMEM, "out of memory");
		tk->added[tk->n_added] = (struct tk_added){ id, lstrip, rstrip };
		if (trie_add(tk, json_string_value(c), json_string_length(c), tk->n_added) < 0)
			return fr_error_set(err, -ENOMEM, "out of memory");
		tk->n_added++;
	}
	return 0;
}

static int parse_normalizer(const json_t *n, const char *where, struct fr_error *err)
{
	const char *type;
	int rc;
	if (!n || json_is_null(n))
		return 0;
	if ((rc = get_type(n, where, &type, err)) < 0)
		return rc;
	if (strcmp(type, "Sequence") == 0) {
		const json_t *list = json_object_get(n, "normalizers"), *v;
		size_t i;
		if (!json_is_array(list))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.normalizers: missing or not an array", where);
		json_array_foreach(list, i, v) {
			char w[64];
			snprintf(w, sizeof(w), "%s.normalizers[%zu]", where, i);
			if ((rc = parse_normalizer(v, w, err)) < 0)
				return rc;
		}
		return 0;
	}
	return fr_error_set(err, -ENOTSUP, "tokenizer.json: %s: normalizer type '%.64s' is not supported",
			    where, type);
}

static int add_step(struct model_tokenizer *tk, const json_t *p, const char *where, bool last,
		    struct fr_error *err)
{
	const char *type;
	struct tk_step st = { 0 };
	int rc;

	if ((rc = get_type(p, where, &type, err)) < 0)
		return rc;
	if (tk->n_steps > 0 && tk->steps[tk->n_steps - 1].type == TK_STEP_BYTELEVEL)
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: %s: a step after ByteLevel is not supported", where);
	if (strcmp(type, "Split") == 0) {
		const json_t *pat = json_object_get(p, "pattern"), *beh = json_object_get(p, "behavior"), *re, *s;
		const char *b;
		st.type = TK_STEP_SPLIT;
		if (!json_is_object(pat))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.pattern: missing or not an object", where);
		re = json_object_get(pat, "Regex");
		s = json_object_get(pat, "String");
		if (!json_is_string(re) && !json_is_string(s))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", where);
		if (json_is_string(s) && json_string_length(s) == 0)
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.pattern.String is empty", where);
		if (!json_is_string(beh))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.behavior: missing or not a string", where);
		b = json_string_value(beh);
		if (strcmp(b, "Isolated") == 0)
			st.behavior = TK_ISOLATED;
		else if (strcmp(b, "Removed") == 0)
			st.behavior = TK_REMOVED;
		else if (strcmp(b, "MergedWithPrevious") == 0)
			st.behavior = TK_MERGED_PREV;
		else if (strcmp(b, "MergedWithNext") == 0)
			st.behavior = TK_MERGED_NEXT;
		else if (strcmp(b, "Contiguous") == 0)
			st.behavior = TK_CONTIGUOUS;
		else
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.behavior: unknown value '%.64s'", where, b);
		if ((rc = get_bool(p, "invert", false, where, &st.invert, err)) < 0)
			return rc;
		if (json_is_string(re))
			rc = regex_compile(json_string_value(re), json_string_length(re), false, where, &st.re, err);
		else
			rc = regex_compile(json_string_value(s), json_string_length(s), true, where, &st.re, err);
		if (rc < 0)
			return rc;
	} else if (strcmp(type, "ByteLevel") == 0) {
		bool use_regex;
		st.type = TK_STEP_BYTELEVEL;
		if ((rc = get_bool(p, "add_prefix_space", true, where, &st.add_prefix_space, err)) < 0 ||
		    (rc = get_bool(p, "use_regex", true, where, &use_regex, err)) < 0)
			return rc;
		if (use_regex) {
			static const char gpt2[] =
				"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
			if ((rc = regex_compile(gpt2, sizeof(gpt2) - 1, false, where, &st.re, err)) < 0)
				return rc;
		}
	} else {
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: %s: pre_tokenizer type '%.64s' is not supported",
				    where, type);
	}
	(void)last;
	struct tk_step *ns = realloc(tk->steps, (size_t)(tk->n_steps + 1) * sizeof(*ns));
	if (!ns) {
		pcre2_code_free(st.re);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	tk->steps = ns;
	tk->steps[tk->n_steps++] = st;
	return 0;
}

static int parse_pretok(struct model_tokenizer *tk, const json_t *p, struct fr_error *err)
{
	const char *type;
	int rc;

	if (!p || json_is_null(p))
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: pre_tokenizer: null is not supported (byte-level BPE needs ByteLevel)");
	if ((rc = get_type(p, "pre_tokenizer", &type, err)) < 0)
		return rc;
	if (strcmp(type, "Sequence") == 0) {
		const json_t *list = json_object_get(p, "pretokenizers"), *v;
		size_t i, n;
		if (!json_is_array(list))
			return fr_error_set(err, -EINVAL, "tokenizer.json: pre_tokenizer.pretokenizers: missing or not an array");
		n = json_array_size(list);
		json_array_foreach(list, i, v) {
			char w[64];
			snprintf(w, sizeof(w), "pre_tokenizer.pretokenizers[%zu]", i);
			if ((rc = add_step(tk, v, w, i + 1 == n, err)) < 0)
				return rc;
		}
	} else if ((rc = add_step(tk, p, "pre_tokenizer", true, err)) < 0) {
		return rc;
	}
	if (tk->n_steps == 0 || tk->steps[tk->n_steps - 1].type != TK_STEP_BYTELEVEL)
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: pre_tokenizer: byte-level BPE needs a ByteLevel step (last)");
	return 0;
}

static int32_t added_id_by_name(const struct model_tokenizer *tk, const char *name)
{
	size_t n = strlen(name), len = 0;
	int32_t slot = n ? trie_match(tk, name, n, &len) : -1;
	return slot >= 0 && len == n ? tk->added[slot].id : -1;
}

static int push_special(int32_t **v, int *n, int32_t id)
{
	int32_t *p = realloc(*v, (size_t)(*n + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	p[(*n)++] = id;
	*v = p;
	return 0;
}

/* A post-processor's special token by name: TemplateProcessing's special_tokens map, else the
 * vocab / added tokens. */
static int pp_lookup(const struct model_tokenizer *tk, const json_t *specials, const char *name,
		     const char *where, int32_t **v, int *n, struct fr_error *err)
{
	const json_t *s = specials ? json_object_get(specials, name) : NULL;
	if (s) {
		const json_t *ids = json_object_get(s, "ids"), *x;
		size_t i;
		if (!json_is_array(ids))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s: special_tokens['%.80s'].ids: not an array", where, name);
		json_array_foreach(ids, i, x) {
			if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= tk->n_ids)
				return fr_error_set(err, -EINVAL, "tokenizer.json: %s: special_tokens['%.80s'].ids[%zu]: not a valid id",
						    where, name, i);
			if (push_special(v, n, (int32_t)json_integer_value(x)) < 0)
				return -ENOMEM;
		}
		return 0;
	}
	int32_t id = added_id_by_name(tk, name);
	if (id < 0)
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s: special token '%.80s' is unknown", where, name);
	return push_special(v, n, id);
}

static int parse_post(struct model_tokenizer *tk, const json_t *p, const char *where,
		      struct fr_error *err)
{
	const char *type;
	int rc;

	if (!p || json_is_null(p))
		return 0;
	if ((rc = get_type(p, where, &type, err)) < 0)
		return rc;
	if (strcmp(type, "ByteLevel") == 0)
		return 0;
	if (strcmp(type, "Sequence") == 0) {
		const json_t *list = json_object_get(p, "processors"), *v;
		size_t i;
		if (!json_is_array(list))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.processors: missing or not an array", where);
		json_array_foreach(list, i, v) {
			char w[64];
			snprintf(w, sizeof(w), "%s.processors[%zu]", where, i);
			if ((rc = parse_post(tk, v, w, err)) < 0)
				return rc;
		}
		return 0;
	}
	if (strcmp(type, "TemplateProcessing") == 0) {
		const json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens"), *v;
		bool seen_a = false;
		size_t i;
		if (!json_is_array(single))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s.single: missing or not an array", where);
		json_array_foreach(single, i, v) {
			const json_t *st = json_object_get(v, "SpecialToken"), *sq = json_object_get(v, "Sequence");
			if (json_is_object(sq)) {
				seen_a = true;
				continue;
			}
			if (!json_is_object(st) || !json_is_string(json_object_get(st, "id")))
				return fr_error_set(err, -EINVAL, "tokenizer.json: %s.single[%zu]: expected SpecialToken or Sequence", where, i);
			if (seen_a)
				rc = pp_lookup(tk, specials, json_string_value(json_object_get(st, "id")), where,
					       &tk->suffix, &tk->n_suffix, err);
			else
				rc = pp_lookup(tk, specials, json_string_value(json_object_get(st, "id")), where,
					       &tk->prefix, &tk->n_prefix, err);
			if (rc < 0)
				return rc == -ENOMEM ? fr_error_set(err, rc, "out of memory") : rc;
		}
		tk->template_pp = true;
		return 0;
	}
	if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
		const json_t *cls = json_object_get(p, "cls"), *sep = json_object_get(p, "sep");
		if (!json_is_array(cls) || !json_is_integer(json_array_get(cls, 1)) ||
		    !json_is_array(sep) || !json_is_integer(json_array_get(sep, 1)))
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s: cls/sep must be [token, id]", where);
		json_int_t c = json_integer_value(json_array_get(cls, 1)), s = json_integer_value(json_array_get(sep, 1));
		if (c < 0 || c >= tk->n_ids || s < 0 || s >= tk->n_ids)
			return fr_error_set(err, -EINVAL, "tokenizer.json: %s: cls/sep id out of range", where);
		if (push_special(&tk->prefix, &tk->n_prefix, (int32_t)c) < 0 ||
		    push_special(&tk->suffix, &tk->n_suffix, (int32_t)s) < 0)
			return fr_error_set(err, -ENOMEM, "out of memory");
		tk->template_pp = true;
		return 0;
	}
	return fr_error_set(err, -ENOTSUP, "tokenizer.json: %s: post_processor type '%.64s' is not supported",
			    where, type);
}

static int parse_decoder(const json_t *d, struct fr_error *err)
{
	const char *type;
	int rc;
	if (!d || json_is_null(d))
		return 0; /* decoded as ByteLevel, the only spelling this tokenizer knows */
	if ((rc = get_type(d, "decoder", &type, err)) < 0)
		return rc;
	if (strcmp(type, "ByteLevel") != 0)
		return fr_error_set(err, -ENOTSUP, "tokenizer.json: decoder type '%.64s' is not supported (only ByteLevel)", type);
	return 0;
}

static const char *const bos_names[] = { "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
	"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", NULL };
static const char *const eos_names[] = { "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
	"<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", NULL };

static int32_t find_named(const struct model_tokenizer *tk, const char *const *names)
{
	for (int i = 0; names[i]; i++) {
		int32_t id = added_id_by_name(tk, names[i]);
		if (id >= 0 && (tk->tok[id].flags & TK_SPECIAL))
			return id;
	}
	return -1;
}

void model_tokenizer_free(struct model_tokenizer *tk)
{
	if (!tk)
		return;
	if (tk->tok)
		for (int32_t i = 0; i < tk->n_ids; i++)
			free(tk->tok[i].bytes);
	free(tk->tok);
	free(tk->vmap);
	free(tk->mmap);
	for (int i = 0; i < tk->n_steps; i++)
		pcre2_code_free(tk->steps[i].re);
	free(tk->steps);
	free(tk->trie);
	free(tk->added);
	free(tk->prefix);
	free(tk->suffix);
	free(tk->cache);
	free(tk);
}

int model_tokenizer_parse(const char *json, size_t len, struct model_tokenizer **ret,
			  struct fr_error *err)
{
	struct model_tokenizer *tk = NULL;
	json_error_t jerr;
	json_t *root;
	const json_t *added;
	int rc;

	bl_init();
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fr_error_set(err, -EINVAL, "tokenizer.json: line %d column %d: %s", jerr.line,
				    jerr.column, jerr.text);
	if (!json_is_object(root)) {
		rc = fr_error_set(err, -EINVAL, "tokenizer.json: expected a JSON object at the top, got %s",
				  json_type_name(root));
		goto fail;
	}
	tk = calloc(1, sizeof(*tk));
	if (!tk) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	atomic_flag_clear(&tk->cache_busy);
	tk->bos = tk->eos = -1;
	added = json_object_get(root, "added_tokens");
	if (!json_object_get(root, "model")) {
		rc = fr_error_set(err, -EINVAL, "tokenizer.json: 'model' is missing");
		goto fail;
	}
	if ((rc = parse_model(tk, json_object_get(root, "model"), added, err)) < 0 ||
	    (rc = parse_added(tk, added, err)) < 0 ||
	    (rc = parse_normalizer(json_object_get(root, "normalizer"), "normalizer", err)) < 0 ||
	    (rc = parse_pretok(tk, json_object_get(root, "pre_tokenizer"), err)) < 0 ||
	    (rc = parse_post(tk, json_object_get(root, "post_processor"), "post_processor", err)) < 0 ||
	    (rc = parse_decoder(json_object_get(root, "decoder"), err)) < 0)
		goto fail;
	tk->bos = find_named(tk, bos_names);
	tk->eos = find_named(tk, eos_names);
	if (tk->template_pp) {
		if (tk->bos < 0 && tk->n_prefix > 0)
			tk->bos = tk->prefix[0];
	} else if (tk->bos >= 0) {
		if (push_special(&tk->prefix, &tk->n_prefix, tk->bos) < 0) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	tk->cache = calloc(TK_CACHE_SLOTS, sizeof(*tk->cache));
	if (!tk->cache) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	json_decref(root);
	*ret = tk;
	return 0;
fail:
	model_tokenizer_free(tk);
	json_decref(root);
	return rc;
}

/* tokenizer_config.json beside a tokenizer.json: BOS/EOS for a post-processor that does not
 * name them. Best effort: a missing or odd file changes nothing. */
static void apply_tokenizer_config(struct model_tokenizer *tk, const char *path)
{
	const char *slash = strrchr(path, '/');
	char cpath[4096];
	char *buf = NULL;
	size_t len;
	struct fr_error e = { { 0 } };
	json_t *root = NULL;

	if (tk->template_pp)
		return;
	snprintf(cpath, sizeof(cpath), "%.*stokenizer_config.json", slash ? (int)(slash - path + 1) : 0, path);
	if (fr_read_file(cpath, 16u << 20, &buf, &len, &e) < 0)
		return;
	root = json_loadb(buf, len, 0, NULL);
	if (!json_is_object(root))
		goto out;
	const char *keys[2] = { "bos_token", "eos_token" };
	int32_t *dst[2] = { &tk->bos, &tk->eos };
	for (int k = 0; k < 2; k++) {
		const json_t *v = json_object_get(root, keys[k]);
		if (json_is_object(v))
			v = json_object_get(v, "content");
		if (json_is_string(v)) {
			int32_t id = added_id_by_name(tk, json_string_value(v));
			if (id >= 0)
				*dst[k] = id;
		} else if (v && json_is_null(v)) {
			*dst[k] = -1;
		}
	}
	const json_t *ab = json_object_get(root, "add_bos_token"), *ae = json_object_get(root, "add_eos_token");
	bool add_bos = ab ? json_is_true(ab) : true, add_eos = ae ? json_is_true(ae) : false;
	int32_t *np = NULL, *ns = NULL;
	int nnp = 0, nns = 0;
	if (add_bos && tk->bos >= 0 && push_special(&np, &nnp, tk->bos) < 0)
		goto out2;
	if (add_eos && tk->eos >= 0 && push_special(&ns, &nns, tk->eos) < 0)
		goto out2;
	free(tk->prefix);
	free(tk->suffix);
	tk->prefix = np;
	tk->n_prefix = nnp;
	tk->suffix = ns;
	tk->n_suffix = nns;
	np = ns = NULL;
out2:
	free(np);
	free(ns);
out:
	json_decref(root);
	free(buf);
}

int model_tokenizer_load(const char *path, struct model_tokenizer **ret, struct fr_error *err)
{
	char *buf;
	size_t len;
	int rc = fr_read_file(path, TK_MAX_FILE_BYTES, &buf, &len, err);
	if (rc < 0)
		return rc;
	rc = model_tokenizer_parse(buf, len, ret, err);
	free(buf);
	if (rc < 0)
		return fr_error_prefix(err, rc, "%s", path);
	apply_tokenizer_config(*ret, path);
	return 0;
}

int model_tokenizer_vocab_size(const struct model_tokenizer *tk)
{
	return tk->n_ids;
}

int model_tokenizer_bos(const struct model_tokenizer *tk)
{
	return tk->bos;
}

int model_tokenizer_eos(const struct model_tokenizer *tk)
{
	return tk->eos;
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
	const struct tk_mslot *m = mmap_find(r->tk, r->sym[pos].id, r->sym[nx].id);
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
		int32_t id = vmap_find(tk, w, n, h);
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
				const struct tk_mslot *m = mmap_find(tk, r->sym[i].id, r->sym[r->sym[i].next].id);
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
			const struct tk_mslot *m = mmap_find(tk, e.a, e.b);
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
				if (buf_add(&r->word, " ", 1) < 0 || buf_add(&r->word, subj, n) < 0)
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
			if (buf_add(&r->word, " ", 1) < 0 || buf_add(&r->word, w, n) < 0)
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
			slot = trie_match(tk, text + i, clen - i, &mlen);
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
		if (buf_add(&b, tk->tok[id].bytes, tk->tok[id].len) < 0) {
			free(b.p);
			return -ENOMEM;
		}
	}
	if (!b.p && buf_reserve(&b, 0) < 0)
		return -ENOMEM;
	b.p[b.len] = '\0';
	*ret_text = b.p;
	*ret_len = b.len;
	return 0;
}
