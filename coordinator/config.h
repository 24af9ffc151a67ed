/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.h - ferry-coordinator's configuration: /etc/ferry/coordinator.conf plus --set
 * overrides (ARCHITECTURE §7). Every key is described once in co_config_keys[]; the example
 * deploy/coordinator.conf documents all of them (a test keeps it complete).
 *
 * The struct mirrors the file: cfg.cluster.workers is "[cluster] workers". Durations are in
 * milliseconds (fields named *_ms), strings are owned by the struct (NULL = not set).
 */
#ifndef FERRY_COORDINATOR_CONFIG_H
#define FERRY_COORDINATOR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "common/conf.h"
#include "kernels/kernels.h"
#include "kernels/kn_dev.h"
#include "transport/conf.h"
#include "transport/transport.h"

#define CO_CONFIG_DEFAULT_PATH "/etc/ferry/coordinator.conf"

/* [transport] wire_dtype: activations on the data plane. */
enum co_wire_dtype {
	CO_WIRE_BF16 = 0,
	CO_WIRE_F32,
};

struct co_config {
	struct {
		char *path;                  /* checkpoint directory; required */
	} model;
	struct {
		char *listen;                /* gRPC "host:port" (default 127.0.0.1:7400) */
		char *admin_token_file;      /* bearer token for Admin calls; NULL: no token */
		uint64_t stream_buffer;      /* bytes of logits rows per stream (default 4 MiB) */
		uint64_t stall_timeout_ms;   /* cancel a stream not read this long (0: never) */
		char *tls_cert;              /* PEM certificate chain; NULL: plaintext */
		char *tls_key;               /* its PEM private key (with tls_cert) */
		char *tls_client_ca;         /* PEM CA client certificates must chain to (mTLS) */
	} server;
	struct {
		char *listen;                /* Internal's own "host:port"; NULL: on server.listen */
		char *tls_cert;              /* listen's PEM certificate chain; NULL: plaintext */
		char *tls_key;               /* its PEM private key (with tls_cert) */
		char *tls_client_ca;         /* PEM CA worker certificates must chain to (mTLS) */
		char *secret_file;           /* the cluster secret; required */
		bool insecure;               /* removed: true is refused at load */
		int workers;                 /* workers to wait for before serving (1..1024) */
		uint64_t join_timeout_ms;    /* how long to wait for them (default 60 s) */
		uint64_t heartbeat_interval_ms; /* told to workers in JoinResponse (default 1 s) */
		uint64_t max_skew_ms;        /* Join timestamp tolerance (default 30 s) */
	} cluster;
	struct {
		char *load_profile;          /* JSON load profile for the first placement; NULL: uniform */
		int min_distinct;            /* >= 2: every expert on that many workers; 0: no guarantee */
		int rebalance;               /* 0 off, 1 auto (default) */
		uint64_t rebalance_window_ms;
		double rebalance_threshold;
		uint64_t rebalance_min_interval_ms;
		int rebalance_max_moves;
		uint64_t rebalance_load_timeout_ms;
	} placement;
	struct {
		int micro_batches;           /* ping-pong micro-batches per step (1..8, default 2) */
		int max_batch;               /* tokens per forward step (default 256) */
		int max_seqs;                /* sequences batched at once; 0: from the KV pool */
		int prefill_chunk;           /* prompt tokens per request per step; 0: max_batch / 2 */
		int queue_max;               /* waiting requests before RESOURCE_EXHAUSTED (256) */
		int kv_blocks;               /* KV pool in blocks; 0: max_seqs x max_ctx */
		int max_ctx;                 /* context length cap; 0: the model's */
		int threads;                 /* CPU threads; 0: all CPUs */
		int precision; /* enum kn_precision, or KN_PRECISION_AUTO (default) */
		char *device;                /* cpu | cuda:N | twin (default cpu) */
	} engine;
	struct {
		struct tp_conf tp;           /* the keys both daemons share (transport/conf.h);
		                              * device may be a comma-separated list */
		enum co_wire_dtype wire_dtype; /* bf16 | f32 (default bf16) */
		uint64_t expert_timeout_ms;  /* a worker's answer to a dispatch (default 30 s) */
		uint64_t suspect_after_ms;   /* step-deadline floor of a suspect worker; 0: off */
	} transport;
	struct {
		char *listen;                /* /metrics "host:port"; NULL: off */
		bool per_expert;             /* per (layer, expert) token counters */
	} metrics;
	struct {
		char *listen;                /* OpenAI-compatible API "host:port"; NULL: off */
		char *api_key_file;          /* its bearer key; NULL: none */
	} http;
	struct {
		enum fr_log_level level;     /* error | warn | info | debug (default info) */
	} log;
};

/* The key table behind co_config (for conf_dump(), conf_write_doc() and tests). */
extern const struct conf_key co_config_keys[];
extern const size_t co_config_n_keys;

/*
 * Loads the configuration: defaults, then the file, then each override
 * ("section.key=value", as given to --set) in order, then co_config_validate().
 * path NULL means CO_CONFIG_DEFAULT_PATH, which may be missing (defaults and overrides
 * only); a path given explicitly must exist. overrides may be NULL when n_overrides is 0.
 * On success *ret owns its strings (co_config_free()); on error *ret is untouched.
 * Errors (err set): -ENOENT/-EACCES/... (the file), -EINVAL (see conf_load_file(),
 * conf_set() and co_config_validate()), -ENOMEM.
 */
int co_config_load(const char *path, char *const *overrides, int n_overrides,
		   struct co_config *ret, struct fr_error *err);

/* Cross-key checks: model.path set; cluster.secret_file set, cluster.insecure not;
 * server.listen, cluster.listen (when set) and transport.bind_addr well-formed; cluster.listen
 * not server.listen; in [server] and in [cluster], tls_cert and tls_key both set or neither,
 * tls_client_ca only with them; [cluster] tls_* only with cluster.listen (without it
 * Internal is served on server.listen, with [server]'s TLS); transport.mtu 0 or a power of two in
 * [256, 4096]; transport.device a well-formed list (co_config_devices()), of more than one
 * device only with the verbs backend; engine.max_batch >= engine.micro_batches;
 * placement.min_distinct <= cluster.workers. Returns 0 or -EINVAL naming the keys. */
int co_config_validate(const struct co_config *cfg, struct fr_error *err);

/* [engine] device: KN_DEV_NONE (cpu), KN_DEV_TWIN (twin) or N >= 0 for cuda:N. Errors:
 * -EINVAL naming the key and the forms it takes. */
int co_config_engine_device(const char *device, int *ret, struct fr_error *err);

/* [transport] device as a list of device names, blanks around each name dropped: *ret_v
 * (owned by the caller, fr_strv_free()) holds *ret_n names, none when the key is unset or
 * empty (auto). Errors: -EINVAL (an empty name, a name listed twice, more than
 * TP_WAIT_MANY_MAX names, more than one name with a backend other than verbs; err names
 * the key), -ENOMEM. */
int co_config_devices(const struct co_config *cfg, char ***ret_v, int *ret_n,
		      struct fr_error *err);

/* Frees the strings. Accepts a zeroed struct. */
void co_config_free(struct co_config *cfg);

/* The effective configuration, as INI (--print-config). */
void co_config_dump(const struct co_config *cfg, FILE *f);

#endif /* FERRY_COORDINATOR_CONFIG_H */
