/* SPDX-License-Identifier: Apache-2.0 */
/*
 * text.h - generated token ids to streamed text: UTF-8 repair, an incremental detokenizer
 * and a stop-string matcher.
 *
 * A streaming Generate chains the two per response message:
 *
 *	co_detok_feed(d, ids, n, &t, &tl);      new whole characters of these ids
 *	m = co_stop_push(s, t, tl, &out, &ol);  out: text safe to send; m == 1: a stop string
 *	                                        completed, send out and finish (STOP)
 *	...at the end of the generation (no match):
 *	co_detok_flush(d, &t, &tl); co_stop_push(s, t, tl, ...); co_stop_flush(s, &out, &ol);
 *
 * The concatenation of everything the detokenizer returns equals co_utf8_lossy() of
 * model_tokenizer_decode() of all the ids fed (co_utf8_proto() with CO_DETOK_NO_NUL),
 * however the ids are split into feeds.
 *
 * Text here is bytes with a length (may hold NUL). Output pointers point into the object
 * and stay valid until the next call on it.
 */
#ifndef FERRY_COORDINATOR_TEXT_H
#define FERRY_COORDINATOR_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "model/model.h"

/* ==== UTF-8 repair =========================================================================== */

/* Copies s[len] with each maximal invalid subpart replaced by U+FFFD (EF BF BD), exactly as
 * the WHATWG decoder (JS `new TextDecoder()`) and model_tokenizer_encode()'s input repair
 * do; a truncated sequence at the end is one subpart. *ret_text is heap (caller frees),
 * NUL-terminated. Returns 0 or -ENOMEM. */
int co_utf8_lossy(const char *s, size_t len, char **ret_text, size_t *ret_len);

/* co_utf8_lossy() that also turns NUL bytes into U+FFFD: text for a protobuf-c string field
 * (a NUL-terminated char *, which would cut the text at the first NUL). */
int co_utf8_proto(const char *s, size_t len, char **ret_text, size_t *ret_len);

/* True if s[len] is valid UTF-8 (no surrogates, overlongs or code points past U+10FFFF). */
bool co_utf8_valid(const char *s, size_t len);

/* ==== incremental detokenizer ================================================================ */

enum co_detok_flags {
	CO_DETOK_SKIP_SPECIAL = 1 << 0, /* special tokens (BOS, EOS, ...) give no text */
	CO_DETOK_SKIP_UNKNOWN = 1 << 1, /* ids the tokenizer has no token for (a model vocab
	                                 * padded past the tokenizer's) give no text instead of
	                                 * -EINVAL */
	CO_DETOK_NO_NUL = 1 << 2,       /* NUL bytes become U+FFFD (co_utf8_proto), for text
	                                 * that goes into protobuf-c string fields */
};

struct co_detok;

/* tk is borrowed and must outlive the detokenizer. flags: enum co_detok_flags.
 * Returns 0, -EINVAL (tk NULL, unknown flag), -ENOMEM. *ret set on success only. */
int co_detok_create(const struct model_tokenizer *tk, unsigned flags, struct co_detok **ret);
/* Accepts NULL. */
void co_detok_destroy(struct co_detok *d);

/*
 * Feeds ids[n] (n >= 0) and returns in *ret_text, *ret_len the text they completed: whole
 * UTF-8 characters only. The bytes of a character split across tokens are held back until
 * the token that completes it (or until they can no longer complete: then U+FFFD). The
 * text is found by decoding the window of ids from the first one with bytes not yet
 * returned, never token by token, so a decoder that joins tokens is decoded right.
 * *ret_text (not NUL-terminated; may be empty) is owned by d, valid until the next call.
 * Errors: -EINVAL (an id is not a token of the tokenizer and CO_DETOK_SKIP_UNKNOWN is off;
 * nothing of this call is taken, d is unchanged), -ENOMEM (d unchanged).
 */
int co_detok_feed(struct co_detok *d, const int32_t *ids, size_t n, const char **ret_text,
		  size_t *ret_len);

/* End of the stream: returns what is held back (an incomplete character: one U+FFFD) and
 * resets d for a new stream. Errors: -ENOMEM (d unchanged). */
int co_detok_flush(struct co_detok *d, const char **ret_text, size_t *ret_len);

/* ==== stop strings ============================================================================ */

#define CO_STOP_MAX 16          /* stop strings per request */
#define CO_STOP_MAX_LEN 256     /* bytes per stop string */

struct co_stop;

/*
 * A matcher for n stop strings stops[i] of lens[i] bytes (lens NULL: NUL-terminated
 * strings); the strings are copied. n may be 0 (text passes straight through).
 * Errors (err names the string: "stop[2] is 300 bytes, over the 256-byte limit"):
 * -EINVAL (more than CO_STOP_MAX strings, an empty one or one over CO_STOP_MAX_LEN bytes),
 * -ENOMEM. *ret set on success only.
 */
int co_stop_create(const char *const *stops, const size_t *lens, int n, struct co_stop **ret,
		   struct fr_error *err);
/* Accepts NULL. */
void co_stop_destroy(struct co_stop *s);

/*
 * Appends text[len] to the stream. Returns 0: *ret_text, *ret_len is the text that can no
 * longer be part of a stop string (a suffix that could still become one is held back);
 * 1: a stop string completed: *ret_text is the text before it, and neither the stop string
 * nor anything after it is ever returned (later pushes return 1 with empty text). Of the
 * stop strings completing earliest in the stream, the one starting earliest is taken
 * (co_stop_matched() tells which). *ret_text is owned by s, valid until the next call.
 * Errors: -ENOMEM (s unchanged).
 */
int co_stop_push(struct co_stop *s, const char *text, size_t len, const char **ret_text,
		 size_t *ret_len);

/* End of the stream: returns the held-back text (empty after a match). */
void co_stop_flush(struct co_stop *s, const char **ret_text, size_t *ret_len);

/* Index (into the create call's stops) of the stop string that matched, or -1. */
int co_stop_matched(const struct co_stop *s);

#endif /* FERRY_COORDINATOR_TEXT_H */
