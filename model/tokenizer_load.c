/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokenizer_load.c - reading a HuggingFace tokenizer.json into the tables of
 * tokenizer-internal.h: vocab and merges (translated from the ByteLevel alphabet to bytes
 * once, here), added tokens (a byte trie), the normalizer and pre-tokenizer steps (regexes
 * compiled with PCRE2), the post-processor's BOS/EOS and the ByteLevel decoder.
 *
 * Regexes follow the reference encoder (ECMAScript with the u flag): \s \S \d \D \w \W are
 * rewritten to the JS sets before PCRE2 (UTF + UCP) compiles them, and the two rewrites
 * transformers.js applies to known HF patterns are applied too. Unicode property tables are
 * PCRE2's (10.42: Unicode 14), so characters assigned after Unicode 14 may be classified
 * differently from a newer JS engine.
 *
 * BOS/EOS: a TemplateProcessing / Bert / Roberta post-processor says what add_special adds;
 * with a ByteLevel or null post-processor (the DeepSeek files, where transformers'
 * LlamaTokenizerFast adds BOS from tokenizer_config.json) model_tokenizer_load() reads
 * tokenizer_config.json beside the file (bos_token, eos_token, add_bos_token,
 * add_eos_token), and without one the BOS/EOS are the special added tokens with a well-known
 * name ("<｜begin▁of▁sentence｜>", "<s>", "<|begin_of_text|>", ...), and add_special prepends
 * the BOS.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/json.h"
#include "model/tokenizer-internal.h"

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
		if (tk__buf_add(&o, p, (size_t)(hit - p)) < 0 || tk__buf_add(&o, to, tl) < 0)
			goto oom;
		p = hit + fl;
		hit = strstr(p, from);
	}
	if (tk__buf_add(&o, p, strlen(p)) < 0)
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

	if (tk__buf_add(&b, pat, len) < 0)
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
				if (tk__buf_add(out, "\\x{", 3) < 0 || tk__buf_add(out, hex, nh) < 0 ||
				    tk__buf_add(out, "}", 1) < 0)
					goto out;
				continue;
			}
			default: {
				char two[2] = { '\\', e };
				if (tk__buf_add(out, two, 2) < 0)
					goto out;
				continue;
			}
			}
			if (tk__buf_add(out, rep, strlen(rep)) < 0)
				goto out;
			continue;
		}
		if (c == '[' && !in_class) {
			in_class = true;
			if (tk__buf_add(out, "[", 1) < 0)
				goto out;
			if (i + 1 < b.len && b.p[i + 1] == '^') {
				i++;
				if (tk__buf_add(out, "^", 1) < 0)
					goto out;
			}
			continue;
		}
		if (c == ']' && in_class)
			in_class = false;
		if (tk__buf_add(out, &c, 1) < 0)
			goto out;
	}
	if (!out->p && tk__buf_add(out, "", 0) < 0)
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
		if (tk__buf_add(&p, pat, len) < 0)
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

/* ---- parsing ---------------------------------------------------------------------------- */

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
				    where, key, fr_json_kind(v));
	*ret = json_is_true(v);
	return 0;
}

static int get_type(const json_t *obj, const char *where, const char **ret, struct fr_error *err)
{
	const json_t *t;
	if (!json_is_object(obj))
		return fr_error_set(err, -EINVAL, "tokenizer.json: %s: expected an object, got %s",
				    where, fr_json_kind(obj));
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
		tk->byte_id[b] = tk_vmap_find(tk, &c, 1, tk_hash(&c, 1));
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
				  fr_json_kind(merges));
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
				ia = tk_vmap_find(tk, tmp, (size_t)an, tk_hash(tmp, (size_t)an));
				ib = tk_vmap_find(tk, tmp + an, (size_t)bn, tk_hash(tmp + an, (size_t)bn));
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
			im = tk_vmap_find(tk, tmp, (size_t)(an + bn), tk_hash(tmp, (size_t)(an + bn)));
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
				    fr_json_kind(added));
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
	int32_t slot = n ? tk_trie_match(tk, name, n, &len) : -1;
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
				  fr_json_kind(root));
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

