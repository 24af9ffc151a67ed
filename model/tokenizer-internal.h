/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tokenizer-internal.h - the tables a loaded tokenizer is made of, shared by the loader
 * (tokenizer_load.c: tokenizer.json -> these tables) and the encoder/decoder (tokenizer.c).
 * Not part of the model library's API: model/model.h is.
 *
 * The lookups both halves use are static inline here so the encoder's hot loops keep them
 * inlined; the byte buffer's functions live in tokenizer.c.
 */
#ifndef FERRY_MODEL_TOKENIZER_INTERNAL_H
#define FERRY_MODEL_TOKENIZER_INTERNAL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
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

/* ---- lookups and buffers ------------------------------------------------------------------ */

/* Hash of a byte string: the vocab map (bytes -> id) and the encoder's word cache. */
static inline uint64_t tk_hash(const void *p, size_t n)
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

/* Hash of a merge key (left id << 32 | right id). */
static inline uint64_t tk_pair_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return k;
}

/* A growable byte buffer, kept NUL-terminated. */
struct tk_buf {
	char *p;
	size_t len, cap;
};

/* Makes room for extra more bytes and the NUL. Returns 0 or -ENOMEM. */
int tk__buf_reserve(struct tk_buf *b, size_t extra);
/* Appends s[n] (keeping the NUL). Returns 0 or -ENOMEM. */
int tk__buf_add(struct tk_buf *b, const void *s, size_t n);

/* The ByteLevel vocab entry whose bytes are s[n] (h = tk_hash(s, n)), or -1. */
static inline int32_t tk_vmap_find(const struct model_tokenizer *tk, const char *s, size_t n,
				   uint64_t h)
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

/* The merge of the pair (a, b), or NULL when there is none. */
static inline const struct tk_mslot *tk_mmap_find(const struct model_tokenizer *tk, int32_t a,
						  int32_t b)
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

/* Longest added token starting at s: its slot and length, or -1. */
static inline int32_t tk_trie_match(const struct model_tokenizer *tk, const char *s, size_t n,
				    size_t *ret_len)
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

#endif /* FERRY_MODEL_TOKENIZER_INTERNAL_H */
