/* SPDX-License-Identifier: Apache-2.0 */
/*
 * worker.h - ferry-worker as a library: joins a coordinator over gRPC, connects the data
 * plane, loads the slots it is assigned from its own checkpoint copy (mmap: only those
 * tensors are touched), serves dispatch frames, and heartbeats and reports its measured
 * load from a second thread. worker/main.c is the daemon over it.
 */
#ifndef FERRY_WORKER_H
#define FERRY_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "rpc/rpc.h"
#include "transport/transport.h"

struct wk_agent_opts {
	const char *name;              /* worker name (unique in the cluster) */
	const char *coordinator;       /* gRPC address of the coordinator */
	const struct rpc_creds *creds; /* to the coordinator (NULL: plaintext); only read by
	                                * wk_agent_create() */
	const char *model_path;        /* this worker's checkpoint copy */
	const uint8_t *secret;         /* cluster secret (signs the Join; derives the session key) */
	size_t secret_len;
	int slots;                     /* slots per MoE layer; 0 = as many as memory_limit fits,
	                                * at most the routed experts */
	uint64_t memory_limit;         /* bytes for expert weights (used when slots is 0) */
	int staging_slots;             /* expert copies loadable beside those serving; -1: what
	                                * memory_limit leaves (no limit when it is 0) */
	struct tp_config tp;
	uint32_t ring_slots;           /* micro-batches in flight (>= the coordinator's m) */
	uint32_t ring_tokens;          /* tokens per micro-batch frame */
	int join_timeout_ms;           /* retry Join/GetAssignment this long */
	bool on_gpu;                   /* experts on CUDA device gpu_device ([compute] device),
	                                * through moe/'s GPU module; false: on the CPU */
	int gpu_device;
	bool dev_twin;                 /* [compute] device = twin: the device path on the
	                                * CPU (moe_dev_twin_ops), for testing it */
	int frames;                    /* enum wk_frames ([compute] frames) */
};

/* [compute] frames: where a worker on a device keeps its data-plane rings. */
enum wk_frames {
	WK_FRAMES_AUTO = 0, /* device memory where GPUDirect RDMA works, else host */
	WK_FRAMES_HOST,
	WK_FRAMES_DEVICE,
};

struct wk_agent;

/* Opens the checkpoint and the transport. Errors: -EINVAL, -ENOMEM, checkpoint and
 * transport errors (err says which). */
int wk_agent_create(const struct wk_agent_opts *o, struct wk_agent **ret, struct fr_error *err);
/* Joins, connects, loads and serves until wk_agent_stop(), a drain request from the
 * coordinator, or a failure. Returns 0 after a stop or drain; -EACCES (join refused: bad
 * secret), -ESTALE (refused: shapes or ring, err says why), -ENOENT (a slot's tensor is
 * missing from the checkpoint, err names it), -ETIMEDOUT (coordinator unreachable),
 * -ECONNRESET (the coordinator went away). */
int wk_agent_run(struct wk_agent *a, struct fr_error *err);
/* Async-signal-safe. While serving, the stop first hands every slot back to the
 * coordinator (Internal.UnloadExperts, up to 15 s): when other workers hold replicas of all
 * of them, the cluster stops routing here and goes on without this worker. */
void wk_agent_stop(struct wk_agent *a);
void wk_agent_destroy(struct wk_agent *a);
/* The worker's /metrics text (Prometheus). Thread-safe against wk_agent_run(). */
void wk_agent_metrics_write(struct wk_agent *a, FILE *f);

#endif /* FERRY_WORKER_H */
