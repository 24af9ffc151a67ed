/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.h - ferry-worker's configuration: /etc/ferry/worker.conf (the systemd template
 * uses /etc/ferry/worker-%i.conf) plus --set overrides (ARCHITECTURE §7). Every key is
 * described once in wk_config_keys[]; deploy/worker.conf documents all of them.
 *
 * The struct mirrors the file: cfg.transport.ring_slots is "[transport] ring_slots".
 * Durations are in milliseconds (*_ms), sizes in bytes, strings owned by the struct
 * (NULL = not set).
 */
#ifndef FERRY_WORKER_CONFIG_H
#define FERRY_WORKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "common/conf.h"
#include "kernels/kernels.h"
#include "transport/conf.h"
#include "transport/transport.h"

#define WK_CONFIG_DEFAULT_PATH "/etc/ferry/worker.conf"
/* JoinRequest.worker_name is at most 64 bytes. */
#define WK_CONFIG_NAME_MAX 64

struct wk_config {
	struct {
		char *name;                  /* stable worker name; wk_config_load() fills in the
		                              * hostname when unset */
		char *coordinator;           /* coordinator's gRPC "host:port" (default 127.0.0.1:7400) */
		int slots;                   /* expert slots per MoE layer; 0: as many as fit */
		uint64_t memory_limit;       /* bytes for expert weights; 0: 90% of RAM */
		int staging_slots;           /* live-rebalance room in expert copies; -1: from
		                              * memory_limit */
		int threads;                 /* CPU threads; 0: all CPUs */
		int precision;               /* enum kn_precision, or KN_PRECISION_AUTO (default) */
	} worker;
	struct {
		char *device;                /* "cpu" (default), "cuda:N" or "twin" */
		int frames;                  /* enum wk_frames (worker.h): where the rings live */
	} compute;
	struct {
		char *path;                  /* this worker's copy of the checkpoint; required */
	} model;
	struct {
		char *secret_file;           /* the cluster secret; required */
		bool insecure;               /* removed: true is refused at load */
		char *tls_ca;                /* PEM CA the coordinator's certificate must chain to;
		                              * set (or tls_cert): TLS to the coordinator */
		char *tls_cert;              /* PEM client certificate (mTLS); with tls_key */
		char *tls_key;               /* its PEM private key */
	} cluster;
	struct {
		struct tp_conf tp;           /* the keys both daemons share (transport/conf.h) */
		int ring_slots;              /* micro-batches in flight per endpoint (default 4) */
		int ring_tokens;             /* largest micro-batch in tokens (default 512) */
	} transport;
	struct {
		char *listen;                /* /metrics "host:port"; NULL: off */
	} metrics;
	struct {
		enum fr_log_level level;     /* error | warn | info | debug (default info) */
	} log;
};

extern const struct conf_key wk_config_keys[];
extern const size_t wk_config_n_keys;

/*
 * Loads the configuration: defaults, the file, each override ("section.key=value") in
 * order, worker.name from gethostname() if still unset, then wk_config_validate().
 * path NULL means WK_CONFIG_DEFAULT_PATH, which may be missing; a path given explicitly
 * must exist. On success *ret owns its strings (wk_config_free()); on error *ret is
 * untouched. Errors (err set): the file's open/read errors, -EINVAL, -ENOMEM.
 */
int wk_config_load(const char *path, char *const *overrides, int n_overrides,
		   struct wk_config *ret, struct fr_error *err);

/* Cross-key checks: model.path set; cluster.secret_file set, cluster.insecure not;
 * worker.name 1..64 bytes of letters, digits, '.', '_' and '-'; worker.coordinator
 * host:port; cluster.tls_cert and cluster.tls_key both set or neither; transport.bind_addr
 * an IPv4 address (conf_check_ipv4()); transport.mtu 0 or a power of two in [256, 4096].
 * Returns 0 or -EINVAL naming the key. */
int wk_config_validate(const struct wk_config *cfg, struct fr_error *err);

/* [compute] device as a number: WK_DEVICE_CPU for cpu, N for cuda:N, WK_DEVICE_TWIN for
 * twin; -EINVAL (err says why) for anything else. */
#define WK_DEVICE_CPU CONF_DEVICE_CPU
#define WK_DEVICE_TWIN CONF_DEVICE_TWIN
int wk_config_device(const char *device, int *ret, struct fr_error *err);

void wk_config_free(struct wk_config *cfg);
void wk_config_dump(const struct wk_config *cfg, FILE *f);

#endif /* FERRY_WORKER_CONFIG_H */
