/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server.h - ferry-coordinator as a library: the gRPC services (Inference, Internal, Admin),
 * the worker registry, placement and the engine over remote experts. coordinator/main.c is
 * a thin daemon over it (configuration, signals, sd_notify).
 *
 * Life of a server:
 *   co_server_create()  opens the checkpoint (everything but the routed experts), starts
 *                       the gRPC server; workers may join from here on.
 *   co_server_start()   waits for opts.workers joins (each gets its transport endpoint
 *                       created and connected by this thread), solves the placement from the
 *                       workers' slot capacities, publishes it (epoch 1), waits for every
 *                       worker to load its slots, then builds the engine: Health says
 *                       SERVING from here on.
 *   co_server_wait()    returns when a stop was asked (co_server_stop(), signal-safe) or the
 *                       cluster failed (a worker's endpoint died: no replacement yet).
 *   co_server_destroy() drains: refuses new requests, lets running ones finish (bounded),
 *                       tells workers to drain through their heartbeats, then releases
 *                       everything (endpoints, registrations, the gRPC server).
 */
#ifndef FERRY_COORDINATOR_SERVER_H
#define FERRY_COORDINATOR_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "kernels/kn_dev.h"
#include "proto/frames.h"
#include "rpc/rpc.h"
#include "transport/transport.h"

struct co_server_opts {
	const char *model_path;        /* checkpoint directory */
	const char *listen;            /* gRPC address ("127.0.0.1:7400", port 0 = any) */
	const struct rpc_creds *creds; /* listen's credentials (NULL: plaintext) */
	const char *cluster_listen;    /* NULL: Internal is served on listen; else on this
	                                * address only (with Health), and not on listen */
	const struct rpc_creds *cluster_creds; /* cluster_listen's (NULL: plaintext) */
	const uint8_t *secret;         /* cluster secret: authenticates every Internal call */
	size_t secret_len;
	const uint8_t *admin_token;    /* Admin calls need "authorization: Bearer <token>";
	                                * NULL: no check */
	size_t admin_token_len;
	int workers;                   /* workers to wait for before serving */
	int join_timeout_ms;           /* co_server_start() bound for joins and loads */
	int heartbeat_ms;              /* interval told to workers */
	int max_skew_ms;               /* join timestamp tolerance */
	const char *load_profile;      /* NULL = uniform placement */
	int min_distinct;              /* placement: replicas of every expert on >= k workers */
	bool auto_rebalance;           /* [placement] rebalance = auto (acts with spare slots) */
	int64_t rebalance_window_ms;   /* balancedness below the threshold this long */
	double rebalance_threshold;
	int64_t rebalance_min_interval_ms;
	int rebalance_max_moves;       /* 0: no cap */
	int64_t rebalance_load_timeout_ms; /* 0: 120 s */
	int micro_batches;             /* ping-pong micro-batches (>= 1) */
	int engine_device;             /* KN_DEV_NONE: the CPU; KN_DEV_TWIN: the CPU twin of a
	                                * device (tests); N >= 0: cuda:N */
	int max_batch;                 /* rows per forward pass */
	int max_seqs;                  /* concurrent sequences; 0: min(max_batch, kv_blocks) */
	int prefill_chunk;             /* prompt rows per request per step (0: max_batch / 2) */
	int queue_max;                 /* waiting requests before RESOURCE_EXHAUSTED (0: 256) */
	int max_ctx;                   /* positions per sequence (0 = the model's) */
	int kv_blocks;                 /* KV pool in 16-position blocks (0: max_seqs, or 16 when
	                                * max_seqs is 0, sequences of max_ctx) */
	size_t stream_buffer;          /* logits bytes a stream may hold unread (0: 4 MiB) */
	int64_t stall_ms;              /* cancel a stream whose client reads nothing this long
	                                * (<= 0: never) */
	int load_window;               /* load accounting window, forward steps */
	struct tp_config tp;           /* data-plane transport */
	const char *const *tp_devices; /* [n_tp_devices] verbs devices (copied): one context on
	                                * each (tp's settings, tp.device ignored), worker i
	                                * served by device i % n_tp_devices. 0: one context
	                                * on tp.device. More than one needs the verbs backend. */
	int n_tp_devices;
	enum fp_dtype wire;            /* activations on the wire */
	int expert_timeout_ms;         /* combine deadline */
	int suspect_ms;                /* step-deadline floor of a suspect worker; 0: off */
	const char *metrics_listen;    /* /metrics on this "host:port"; NULL or "": off */
	const char *http_listen;       /* the OpenAI-compatible API; NULL or "": off */
	const uint8_t *http_api_key;   /* its bearer key; NULL: no check */
	size_t http_api_key_len;
	bool metrics_per_expert;       /* per (layer, expert) token counters too */
};

struct co_server;

/* The credentials and addresses of o are only read during the call. Errors: -EINVAL (options
 * out of range, a bad model), rpc_server_create()'s for listen ("listen ADDR: address in
 * use") and cluster_listen ("cluster listen ADDR: ..."), the model's and transport's. */
int co_server_create(const struct co_server_opts *o, struct co_server **ret,
		     struct fr_error *err);
/* The port the gRPC server listens on. */
int co_server_port(const struct co_server *s);
/* The port of the cluster listener; 0 without one (Internal is on co_server_port()). */
int co_server_cluster_port(const struct co_server *s);
/* Errors: -ETIMEDOUT (workers did not join or load in time, err says which), -EINVAL
 * (impossible placement: fewer slots than experts, named), -EIO (a transport endpoint
 * could not connect), -ECANCELED (stopped meanwhile). */
int co_server_start(struct co_server *s, struct fr_error *err);
/* Blocks until co_server_stop() or a failure. Returns 0 (stopped) or the failure. */
int co_server_wait(struct co_server *s, struct fr_error *err);
/* Async-signal-safe. */
void co_server_stop(struct co_server *s);

/* One forward pass of the serving engine (co_engine_forward() under the engine lock, with
 * the step's load accounting), for callers that batch themselves (benchmarks, the
 * scheduler). Sequence ids must not collide with running Generate calls: use them only
 * when no request is running. Errors: -EAGAIN (not serving), co_engine_forward()'s. */
int co_server_forward(struct co_server *s, int n, const int32_t *tokens, const int32_t *seq,
		      const int32_t *pos, const bool *want_logits, float *logits);
/* The engine's per-kernel time since the last call (then reset). */
void co_server_prof(struct co_server *s, uint64_t ret_ns[]);
void co_server_destroy(struct co_server *s);

#endif /* FERRY_COORDINATOR_SERVER_H */
