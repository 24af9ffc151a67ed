/* SPDX-License-Identifier: Apache-2.0 */
/*
 * serve-internal.h - what the Inference clients of ferryctl share (generate, score, eval,
 * bench-serve): option parsing helpers, the cluster address default, ModelInfo, JSON text,
 * and Ctrl-C handling that cancels streams from a signal-safe place.
 *
 * Built only with gRPC. The parsing helpers are side-effect free (they run under the CLI
 * fuzzer); everything below "runtime" talks to a cluster or changes the signal mask.
 */
#ifndef FERRY_CTL_SERVE_INTERNAL_H
#define FERRY_CTL_SERVE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

/* Exit status after Ctrl-C / SIGTERM: the calls in flight were cancelled (128 + SIGINT). */
#define CTL_EXIT_INTERRUPTED 130

/* Where the clients connect without --cluster: $FERRY_CLUSTER, else this. */
#define CTL_DEFAULT_CLUSTER "127.0.0.1:7400"

/* ---- parsing (no side effects) ------------------------------------------------------------ */

/* $FERRY_CLUSTER or CTL_DEFAULT_CLUSTER. */
const char *ctl_default_cluster(void);

/* --NAME's finite number in [min, max] (a NaN or infinity is refused). */
int ctl_arg_double(const char *name, const char *s, double min, double max, double *ret,
		   struct fr_error *err);
/* A list of integers in [min, max] separated by commas or spaces ("0,1,2" or "1 8 32"),
 * at most cap of them, not empty. Returns 0 or -EINVAL naming the option and the item. */
int ctl_arg_i64_list(const char *name, const char *s, int64_t min, int64_t max, int64_t *ret,
		     size_t cap, size_t *ret_n, struct fr_error *err);

/* A length distribution: "fixed:N" (or just "N"), "uniform:A:B" (inclusive). */
struct ctl_len_dist {
	int64_t lo, hi;    /* lo == hi for fixed */
};
int ctl_arg_len_dist(const char *name, const char *s, int64_t min, int64_t max,
		     struct ctl_len_dist *ret, struct fr_error *err);
/* Draws one length from d with the splitmix64 state. */
int64_t ctl_len_draw(const struct ctl_len_dist *d, uint64_t *rng);

/* Reads a whole file ("-" = stdin) into a NUL-terminated heap buffer the caller frees.
 * Returns 0, -EFBIG (over max_bytes), -ENOMEM or -errno, with err naming the file. */
int ctl_read_all(const char *path, size_t max_bytes, char **ret_buf, size_t *ret_len,
		 struct fr_error *err);

/* ---- output ------------------------------------------------------------------------------ */

/* Writes s[len] as a JSON string, quotes included (invalid UTF-8 bytes become U+FFFD). */
void ctl_json_str(FILE *f, const char *s, size_t len);
/* A double as JSON (NaN and infinities become null). */
void ctl_json_num(FILE *f, double v);

/* Value at quantile q in [0, 1] of v[n] (nearest rank); sorts v. 0 when n == 0. */
double ctl_quantile(double *v, size_t n, double q);

/* ---- runtime ----------------------------------------------------------------------------- */

struct rpc_channel;
struct rpc_stream;
struct ctl_tls;

/* rpc_channel_create() to target, over TLS when t->ca or t->cert is set (see struct
 * ctl_tls), plaintext otherwise. Returns rpc_channel_create()'s errors, with err naming a
 * TLS file that cannot be used. */
/* An Admin channel: ctl_channel_create() plus the bearer token read from token_file (NULL:
 * none sent). Errors name the option ("--token-file: ..."). */
int ctl_admin_channel(const char *cluster, const struct ctl_tls *tls, const char *token_file,
		      struct rpc_channel **ret, struct fr_error *err);
int ctl_channel_create(const char *target, const struct ctl_tls *t, struct rpc_channel **ret,
		       struct fr_error *err);

/*
 * Ctrl-C: ctl_sig_start() blocks SIGINT and SIGTERM in the calling thread (call it before
 * creating channels or threads, which inherit the mask) and starts a thread that sigwait()s
 * for them. The first signal sets ctl_sig_interrupted() and cancels every registered stream
 * (rpc_stream_cancel() is thread-safe); a second one exits at once with status 130.
 * ctl_sig_stop() joins the thread and restores the mask. Register a stream right after
 * rpc_stream_open() and unregister it before rpc_stream_destroy().
 */
int ctl_sig_start(struct fr_error *err);
void ctl_sig_stop(void);
bool ctl_sig_interrupted(void);
void ctl_sig_register(struct rpc_stream *st);
void ctl_sig_unregister(struct rpc_stream *st);

/* What the clients need from Inference.ModelInfo. */
struct ctl_model_info {
	int vocab_size;
	int max_context;
	int n_routed_experts;
	int num_experts_per_tok;
	int n_shared_experts;
	bool has_tokenizer;
	char preset[16];
	char model_type[32];
};

/* Calls ModelInfo (10 s deadline). Returns 0, -ENOSYS when the server does not implement it,
 * or the call's mapped status with err set. */
int ctl_model_info(struct rpc_channel *ch, struct ctl_model_info *ret, struct fr_error *err);

#endif /* FERRY_CTL_SERVE_INTERNAL_H */
