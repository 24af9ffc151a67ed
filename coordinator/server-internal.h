/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server-internal.h - ferry-coordinator's state, shared by the files of the daemon library:
 *   server.c    life cycle (create, start, wait, stop), Health, the engine and the
 *               scheduler over it, workers found dead between steps
 *   cluster.c   cluster formation: transport contexts, the endpoints of joining workers,
 *               the first placement, waiting for every worker to load its slots
 *   registry.c  the Internal service that workers call (Challenge, Join, Heartbeat,
 *               GetAssignment, LoadExperts, UnloadExperts, ReportStats)
 *   admin.c     the Admin service (GetLoad, BenchEngine)
 * serving.c (Generate, Score) and inference.c (Tokenize, Detokenize, ModelInfo) register
 * the Inference service; each service registers its own methods.
 *
 */
#ifndef FERRY_COORDINATOR_SERVER_INTERNAL_H
#define FERRY_COORDINATOR_SERVER_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "coordinator/coordinator.h"
#include "coordinator/engine_dev.h"
#include "coordinator/inference.h"
#include "placement/placement.h"
#include "coordinator/scheduler.h"
#include "coordinator/server.h"
#include "coordinator/serving.h"
#include "coordinator/openai.h"
#include "moe/gpu.h"
#include "moe/moe.h"
#include "metrics/httpd.h"
#include "metrics/prom.h"
#include "rpc/auth.h"
#include "rpc/rpc.h"

#define MAX_WORKERS 1024
#define NAME_MAX_LEN 64

enum worker_state {
	W_JOINING,   /* Join handler waits for the endpoint */
	W_READY,     /* endpoint created, handler answered; connect pending */
	W_CONNECTED,
	W_LOADED,    /* acknowledged its slots */
	W_RELEASED,  /* unloaded every slot: nothing routes to it, it may leave */
	W_FAILED,
};

struct srv_worker {
	int index;
	char name[NAME_MAX_LEN + 1];
	enum worker_state state;
	uint32_t slot_capacity;
	uint8_t blob[TP_ADDR_MAX];     /* the worker's address */
	size_t blob_len;
	uint8_t my_blob[TP_ADDR_MAX];  /* ours for it */
	size_t my_blob_len;
	char fail[256];                /* why W_FAILED */
	struct tp_mem *recv;
	struct tp_ep *ep;
	char addr[128];                /* where its Join came from (gRPC peer), for Status */
	uint64_t memory_bytes;         /* host memory it announced (0: none) */
	int32_t staging_room;          /* expert copies it loads beside those serving in one
	                                * rebalance wave; -1: no limit */
	uint64_t last_heartbeat_ns;
	uint64_t hb_warned_ns;         /* when its silence was last logged */
	/* Compute time per MoE layer it reported while a step held engine_mu, for the next
	 * step to fold into the load (co__fold_stats); NULL until first needed. */
	uint64_t *stats_ns;
	bool stats_due;
	uint64_t acked_epoch;          /* the newest epoch whose slots it acknowledged */
	bool drained;                  /* Admin.Drain: no slot in service, it may be stopped */
	bool rejoin;                   /* joined while serving: set up by co__join_tick */
	bool grow;                     /* ... as a new worker (not a returning one) */
	bool fresh;                    /* it joined new while serving (for the undrain's why) */
	bool undrain_due;              /* came back: the next automatic step gives it slots */
	uint64_t undrain_not_before_ns; /* after a failed try */
	bool told_place_err;           /* got the impossible-placement answer */
	/* Its session (internal.proto): every request after Join is signed with this key. */
	uint8_t session_key[RPC_AUTH_KEY_LEN];
	struct rpc_auth_replay *replay; /* nonces seen in this session */
};

enum srv_status { S_STARTING, S_SERVING, S_DRAINING, S_FAILED };

/* Counters only /metrics reads (metrics.c). */
enum { CO_RB_COMPLETED, CO_RB_UNCHANGED, CO_RB_FAILED };
enum { CO_FO_REROUTED, CO_FO_HEALED, CO_FO_LOST };
struct co_metrics {
	struct co_serve_metrics serve;  /* Generate / Score (serving.c) */
	struct fr_histo step;           /* co__engine_step(), seconds */
	struct fr_histo *dispatch;      /* [MoE layers] dispatch -> combine, seconds */
	int n_dispatch;
	_Atomic uint64_t rebalances[3]; /* CO_RB_* */
	_Atomic uint64_t failovers[3];  /* CO_FO_* */
	_Atomic uint64_t bytes_moved;
};

struct co_server {
	struct co_server_opts o;
	char *model_path, *listen, *load_profile;
	uint8_t *secret;
	uint8_t *admin_token;
	struct model_ckpt *ck;
	const struct model_config *cfg;
	struct model_weights *w;
	struct rpc_server *rpc;         /* listen: Inference, Admin (and Internal without rpc_cluster) */
	struct rpc_server *rpc_cluster; /* cluster_listen: Internal and Health; NULL when not set */
	struct rpc_auth_replay *replay;          /* Join nonces */
	struct rpc_auth_challenges *challenges;  /* issued for Joins */
	uint64_t t_start_ns;                     /* co_server_create(), for uptime */
	uint64_t *fp;                            /* [moe layers][experts] our checkpoint's
						  * fingerprint: workers must match it */
	size_t n_fp;
	uint8_t boot_id[16];
	struct tp_context *tp[TP_WAIT_MANY_MAX]; /* [n_tp] one per device: worker i on i % n_tp */
	char *tp_dev[TP_WAIT_MANY_MAX];          /* [n_tp] their device names, NULL: auto */
	int n_tp;
	struct fp_ring ring;           /* the geometry of the first worker; all must match */
	bool ring_set;

	pthread_mutex_t mu;            /* everything below up to engine_mu */
	pthread_cond_t cv;
	enum srv_status status;
	struct srv_worker *workers;    /* [o.workers] */
	int n_joined;
	int workers_cap;               /* entries of workers[]: [cluster] workers + room to grow */
	uint64_t epoch;
	/* Live rebalance (admin.c): the placement being loaded and the epoch it becomes; NULL
	 * when none. Workers fetch it (GetAssignment), stage it and acknowledge (LoadExperts);
	 * the swap makes it s->place. Epochs are never reused: last_epoch only grows. */
	struct co_placement *pending;
	uint64_t pending_epoch;
	uint64_t last_epoch;
	bool rebalancing;
	int redundancy;                /* SetRedundancy: spare slots per layer in use, -1 all */
	/* The automatic policy (server.c): when a layer went below the threshold, the last
	 * automatic rebalance, and the thread running one. */
	uint64_t auto_below_since_ns, auto_last_ns;
	pthread_t auto_thread;
	bool auto_running, auto_joinable;
	char auto_why[128];
	int auto_undrain;              /* the automatic step undrains this worker (-1: none) */
	struct co_rebalance_record {
		bool done;
		double when_unix_s, duration_s, before, after;
		uint32_t moves;
		char why[128];
	} last_rebalance;
#define CO_RB_HISTORY 8
	struct co_rebalance_record rb_history[CO_RB_HISTORY]; /* the last ones, for the status
							     * page; rb_next is the oldest */
	int rb_next;
	struct co_placement *place;
	char place_err[512];           /* set when the placement is impossible */
	struct co_serving serving;     /* Generate/Score context */
	struct co_inference_info info; /* Tokenize/Detokenize/ModelInfo context */
	char fail[512];                /* why S_FAILED */
	/* Serving but with experts lost: dead workers held their only copies and the others
	 * have no room for them. Requests are refused with this text until those workers come
	 * back (co__lost_locked() recomputes it). */
	char lost[512];

	pthread_mutex_t engine_mu;     /* engine, moe, load, the transport while serving */
	atomic_int engine_waiting;     /* co__engine_lock() callers not yet holding it */
	struct co_engine *engine;
	struct co_device dev; /* [engine] device; closed after the engine */
	void *pinned[CO_ENGINE_HOST_REGIONS]; /* the engine's host regions pinned for dev.gpu */
	int n_pinned;
	struct co_sched *sched;
	struct model_tokenizer *tok;   /* NULL without tokenizer.json */
	struct moe moe;
	struct co_load *load;
	int max_ctx;

	volatile sig_atomic_t stop;
	/* Some worker's stats_due is set (written under mu): lets a step skip co__fold_stats'
	 * lock when nothing is staged, the usual case. */
	atomic_bool stats_staged;

	struct co_metrics metrics;
	struct fr_httpd *httpd;        /* [metrics] listen; NULL: off */
	struct co_openai *openai;      /* [http] listen; NULL: off */
	bool per_expert;               /* [metrics] per_expert */
};

/* metrics.c: the histograms and counters (before the rpc servers start), the /metrics
 * endpoint on listen (NULL or "": none), stopping it, freeing them. */
int co__metrics_init(struct co_server *s, struct fr_error *err);
int co__metrics_listen(struct co_server *s, const char *listen, struct fr_error *err);
void co__metrics_stop(struct co_server *s);
void co__metrics_fini(struct co_server *s);
/* moe_remote_opts.on_combine: one layer's dispatch -> combine time. */
void co__metrics_on_combine(void *ctx, int moe_layer, uint64_t ns);
/* The Prometheus text of everything. */
void co__metrics_write(struct co_server *s, FILE *f);
/* status_page.c: GET / (HTML) and /status.json on the metrics port; returns the HTTP
 * status, or 0 for a path that is not its own. */
int co__status_page(struct co_server *s, const char *path, FILE *f, const char **ctype);
/* A worker's state as Status, /metrics and the status page report it (under mu): suspect is
 * a serving worker without a heartbeat for three intervals. */
enum co_wstate { CO_WS_JOINING, CO_WS_SERVING, CO_WS_DRAINING, CO_WS_SUSPECT, CO_WS_DEAD,
		 CO_WS__COUNT };
enum co_wstate co__worker_state(const struct co_server *s, int i, uint64_t now_ns);
/* "joining", "serving", "draining", "suspect", "dead". */
const char *co__wstate_name(enum co_wstate st);

/* "starting", "serving", "draining", "failed". */
const char *co__status_name(enum srv_status st);
/* Marks the whole cluster failed (under mu): logged once, Health and Generate say why. */
void co__fail_cluster_locked(struct co_server *s, const char *why);

/* engine_mu for anything but a forward pass (a query, a swap, a join). A mutex is not fair:
 * steps that run back to back (the scheduler, Admin.BenchEngine) would take it again before
 * a waiter woke, for seconds; the wait is marked, and the next step lets it in first. */
void co__engine_lock(struct co_server *s);

/* Folds the compute times staged by ReportStats into the load. Under engine_mu. */
void co__fold_stats(struct co_server *s);
/* One forward pass under the engine lock, with its step's load accounting; a failure other
 * than -EINVAL fails the cluster (why[] says what went wrong). */
int co__engine_step(struct co_server *s, int n, const int32_t *tok, const int32_t *seq,
		    const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
		    float *logits, char *why, size_t why_cap);

/* cluster.c: one transport context per device of o->tp_devices (or one on o->tp.device). */
int co__open_transport(struct co_server *s, const struct co_server_opts *o,
		       struct fr_error *err);
/* cluster.c: the device serving worker index i, for log lines. */
const char *co__worker_device(const struct co_server *s, int i);
/* cluster.c: waits for the workers to join (creating and connecting their endpoints on this
 * thread), solves the first placement and waits until every worker loaded its slots.
 * Errors as co_server_start()'s; s->place_err holds an impossible placement's reason. */
int co__form_cluster(struct co_server *s, struct fr_error *err);
/* server.c: recomputes s->lost (under mu): the experts whose every copy is on a worker not
 * serving (W_LOADED). Returns their number. */
int co__lost_locked(struct co_server *s);
/* cluster.c: the endpoint of a joining worker (w->recv, w->ep, w->my_blob). Under engine_mu
 * once serving. */
int co__setup_endpoint(struct co_server *s, struct srv_worker *w, struct fr_error *err);
/* cluster.c: a worker that joined while serving - one that died and came back (Join
 * reused its index: a new endpoint replaces the dead one in the data path) or a new one
 * (the placement, load accounting and data path grow by one worker) - is set up between
 * two steps; it then loads its slots and, holding none, is marked for an undrain. Called
 * from the server's monitor loop, without locks. */
void co__join_tick(struct co_server *s);

/* admin.c: one rebalance (plan, then unless dry_run the live move), for the Rebalance
 * method and the automatic policy. progress (may be NULL) is called with each phase.
 * Errors, err saying which: -ESTALE (not serving, a worker not serving, slots out of
 * service, another rebalance running, no load), -EINVAL (options, a plan that cannot be
 * made), -ECONNABORTED (a worker left or timed out while loading, or the swap failed: the
 * old placement serves on), -ENOMEM. */
struct rb_plan;
struct co_rebalance_opts {
	bool dry_run;
	uint32_t max_moves;           /* 0: no cap */
	double min_gain;              /* keep layers gaining less (0..1) */
	int min_distinct;             /* 0: the server's */
	const double *profile;        /* [moe layers][experts]; NULL: the measured window */
	const struct co_placement *to; /* apply this placement (checked against the cluster)
	                               * instead of planning one; NULL: plan */
	int drain;                    /* >= 0: empty this worker (its slots leave service) */
	int undrain;                  /* >= 0: give this drained worker slots again */
	int redundancy;               /* spare slots per layer in use: >= 0 sets it, -1 all
	                               * slots, -2 keeps the server's (SetRedundancy) */
	const char *why;              /* for Status and the logs */
	bool heal;                    /* dead workers lose their slots even where they held
	                               * the only copy: the others load those experts */
	void (*progress)(void *ctx, const struct rb_plan *pl, uint64_t epoch, int phase,
			 uint64_t t0_ns, const char *detail);
	void *ctx;
};
int co__rebalance(struct co_server *s, const struct co_rebalance_opts *o, struct fr_error *err);

/* registry.c: Internal's methods on srv (arg: s). */
int co__registry_register(struct co_server *s, struct rpc_server *srv, struct fr_error *err);
/* admin.c: Admin's methods on srv (arg: s). */
int co__admin_register(struct co_server *s, struct rpc_server *srv, struct fr_error *err);

#endif /* FERRY_COORDINATOR_SERVER_INTERNAL_H */
