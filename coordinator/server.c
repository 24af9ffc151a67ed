/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server.c - ferry-coordinator: worker registry, placement, engine over remote experts and
 * the gRPC services (see server.h for the life cycle).
 *
 * Threads. The thread that calls co_server_start() owns the transport while the cluster
 * forms: gRPC Join handlers only queue a worker and wait for that thread to create its
 * endpoint, so the transport contexts (one per device, workers spread over them) are never
 * used from two threads at once. Once serving, every forward pass (and so every use of the
 * transport) runs under engine_mu, from the Generate handlers' threads; a request takes the
 * lock per step, so concurrent requests interleave step by step. Cluster state (workers,
 * placement, status) is under mu.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "coordinator/server.h"
#include "coordinator/inference.h"
#include "coordinator/serving.h"
#include "placement/placement.h"
#include "rpc/admin.pb-c.h"
#include "rpc/auth.h"
#include "rpc/inference.pb-c.h"
#include "rpc/internal.pb-c.h"
#include "rpc/rpc.h"
#include "worker/worker.h"

#define LOG_COMP "coordinator"
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
	uint64_t last_heartbeat_ns;
	bool told_place_err;           /* got the impossible-placement answer */
	/* Its session (internal.proto): every request after Join is signed with this key. */
	uint8_t session_key[RPC_AUTH_KEY_LEN];
	struct rpc_auth_replay *replay; /* nonces seen in this session */
};

enum srv_status { S_STARTING, S_SERVING, S_DRAINING, S_FAILED };

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
	uint8_t boot_id[16];
	struct tp_context *tp[TP_WAIT_MANY_MAX]; /* [n_tp] one per device: worker i on i % n_tp */
	char *tp_dev[TP_WAIT_MANY_MAX];          /* [n_tp] their device names, NULL: auto */
	int n_tp;
	struct wk_ring ring;           /* the geometry of the first worker; all must match */
	bool ring_set;

	pthread_mutex_t mu;            /* everything below up to engine_mu */
	pthread_cond_t cv;
	enum srv_status status;
	struct srv_worker *workers;    /* [o.workers] */
	int n_joined;
	uint64_t epoch;
	struct co_placement *place;
	char place_err[512];           /* set when the placement is impossible */
	struct co_serving serving;     /* Generate/Score context */
	struct co_inference_info info; /* Tokenize/Detokenize/ModelInfo context */
	char fail[512];                /* why S_FAILED */

	pthread_mutex_t engine_mu;     /* engine, moe, load, the transport while serving */
	struct co_engine *engine;
	struct co_sched *sched;
	struct model_tokenizer *tok;   /* NULL without tokenizer.json */
	struct co_moe moe;
	struct co_load *load;
	int max_ctx;

	volatile sig_atomic_t stop;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *status_name(enum srv_status st)
{
	static const char *const n[] = { "starting", "serving", "draining", "failed" };
	return n[st];
}

/* Marks the whole cluster failed (under mu). */
static void fail_cluster_locked(struct co_server *s, const char *why)
{
	if (s->status == S_FAILED)
		return;
	fr_err(LOG_COMP, "cluster failed: %s", why);
	snprintf(s->fail, sizeof(s->fail), "%s", why);
	s->status = S_FAILED;
	pthread_cond_broadcast(&s->cv);
}

/* ---- Internal service --------------------------------------------------------------------- */

static grpc_status_code on_join(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	const Ferry__V1__JoinRequest *r = (const Ferry__V1__JoinRequest *)req;
	Ferry__V1__JoinResponse resp = FERRY__V1__JOIN_RESPONSE__INIT;
	Ferry__V1__TransportAddress ta = FERRY__V1__TRANSPORT_ADDRESS__INIT, *tap = &ta;
	struct co_server *s = arg;
	struct fr_error err = { { 0 } };
	const char *backend = tp_backend_name(s->o.tp.backend);
	const char *name = r->worker_name && r->worker_name[0] ? r->worker_name : "(unnamed)";
	struct srv_worker *w;
	struct timespec dl;
	grpc_status_code st;
	int idx;

	/* The HMAC first (it covers the challenge), then the challenge: a forged Join cannot
	 * use up challenges others were given. */
	if (rpc_auth_join_verify(r, s->secret, s->o.secret_len, s->replay, rpc_auth_now_ms(),
				 (uint64_t)s->o.max_skew_ms, &err) < 0 ||
	    rpc_auth_challenge_take(s->challenges, r->challenge.data, r->challenge.len,
				    fr_now_ns() / 1000000, &err) < 0) {
		char peer[128];
		rpc_call_peer(call, peer, sizeof(peer));
		fr_warn(LOG_COMP, "refused join of worker '%.64s' from %s: %s", name, peer, err.msg);
		return rpc_call_fail(call, GRPC_STATUS_UNAUTHENTICATED, "join refused: %s", err.msg);
	}
	if (strlen(name) > NAME_MAX_LEN)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "worker_name longer than %d bytes", NAME_MAX_LEN);
	if (r->hidden_size != (uint32_t)s->cfg->hidden_size ||
	    r->n_routed_experts != (uint32_t)s->cfg->n_routed_experts) {
		fr_warn(LOG_COMP, "refused join of worker '%s': checkpoint shape differs", name);
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "worker checkpoint has hidden_size %u and %u routed experts, the "
				     "coordinator's has %d and %d",
				     r->hidden_size, r->n_routed_experts, s->cfg->hidden_size,
				     s->cfg->n_routed_experts);
	}
	if (r->n_transport_addresses != 1 || !r->transport_addresses[0]->backend ||
	    strcmp(r->transport_addresses[0]->backend, backend) != 0 ||
	    r->transport_addresses[0]->blob.len > TP_ADDR_MAX)
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "the cluster's data plane is %s: send exactly one %s address",
				     backend, backend);
	uint32_t per_mb = (uint32_t)FR_DIV_ROUND_UP(s->o.max_batch, s->o.micro_batches);
	if (r->ring_slots < (uint32_t)s->o.micro_batches || r->ring_tokens < per_mb)
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "worker ring of %u slots x %u tokens is too small: the coordinator "
				     "runs %d micro-batches of up to %u tokens",
				     r->ring_slots, r->ring_tokens, s->o.micro_batches, per_mb);
	if (r->slot_capacity == 0 || r->slot_capacity > CO_PLACE_MAX_EXPERTS)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "slot_capacity %u out of range", r->slot_capacity);

	pthread_mutex_lock(&s->mu);
	if (s->ring_set && (r->ring_slots != s->ring.slots || r->ring_tokens != s->ring.tokens)) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "worker ring %u x %u differs from the cluster's %u x %u",
				   r->ring_slots, r->ring_tokens, s->ring.slots, s->ring.tokens);
		goto unlock;
	}
	if (s->status != S_STARTING || s->n_joined >= s->o.workers) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
				   "cluster is full (%d of %d workers joined, %s)", s->n_joined,
				   s->o.workers, status_name(s->status));
		goto unlock;
	}
	for (int i = 0; i < s->n_joined; i++)
		if (strcmp(s->workers[i].name, name) == 0) {
			st = rpc_call_fail(call, GRPC_STATUS_ALREADY_EXISTS,
					   "a worker named '%s' already joined", name);
			goto unlock;
		}
	/* The session: its key signs every later request of this worker. */
	uint8_t session_id[RPC_AUTH_SESSION_ID_LEN], key[RPC_AUTH_KEY_LEN];
	struct rpc_auth_replay *replay = NULL;
	if (rpc_auth_random(session_id, sizeof(session_id)) < 0 ||
	    rpc_auth_session_key(s->secret, s->o.secret_len, r->challenge.data, r->challenge.len,
				 session_id, sizeof(session_id), key, &err) < 0) {
		st = rpc_call_fail(call, GRPC_STATUS_INTERNAL, "cannot make a session key: %s",
				   err.msg[0] ? err.msg : "getrandom failed");
		goto unlock;
	}
	if (rpc_auth_replay_create(0, &replay) < 0) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto unlock;
	}
	if (!s->ring_set) {
		s->ring = (struct wk_ring){ .slots = r->ring_slots, .tokens = r->ring_tokens,
					    .hidden = (uint32_t)s->cfg->hidden_size,
					    .max_pairs = (uint32_t)s->cfg->n_routed_experts };
		s->ring_set = true;
	}
	idx = s->n_joined++;
	w = &s->workers[idx];
	memset(w, 0, sizeof(*w));
	w->index = idx;
	snprintf(w->name, sizeof(w->name), "%s", name);
	w->state = W_JOINING;
	w->slot_capacity = r->slot_capacity;
	w->blob_len = r->transport_addresses[0]->blob.len;
	memcpy(w->blob, r->transport_addresses[0]->blob.data, w->blob_len);
	w->last_heartbeat_ns = fr_now_ns();
	memcpy(w->session_key, key, sizeof(key));
	w->replay = replay;
	pthread_cond_broadcast(&s->cv);
	fr_deadline_ms(&dl, 10000);
	while (w->state == W_JOINING && s->status == S_STARTING && !fr_deadline_passed(&dl))
		pthread_cond_timedwait(&s->cv, &s->mu, &dl);
	if (w->state != W_READY) {
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "join of '%s' failed: %s", name,
				   w->state == W_FAILED ? w->fail : "coordinator did not set it up");
		goto unlock;
	}
	resp.worker_index = (uint32_t)idx;
	resp.epoch = s->epoch;
	resp.heartbeat_interval_ms = (uint32_t)s->o.heartbeat_ms;
	ta.backend = (char *)backend;
	ta.blob.data = w->my_blob;
	ta.blob.len = w->my_blob_len;
	resp.n_transport_addresses = 1;
	resp.transport_addresses = &tap;
	resp.wire_dtype = (char *)(s->o.wire == FP_DTYPE_F32 ? "f32" : "bf16");
	resp.session_id.data = session_id;
	resp.session_id.len = sizeof(session_id);
	fr_info(LOG_COMP, "worker %d '%s' joined: %u slots per layer, ring %u x %u", idx, w->name,
		w->slot_capacity, r->ring_slots, r->ring_tokens);
	rpc_call_send(call, &resp.base);
	st = GRPC_STATUS_OK;
unlock:
	pthread_mutex_unlock(&s->mu);
	return st;
}

static grpc_status_code on_challenge(struct rpc_call *call, const ProtobufCMessage *req,
				     void *arg)
{
	Ferry__V1__ChallengeResponse resp = FERRY__V1__CHALLENGE_RESPONSE__INIT;
	struct co_server *s = arg;
	uint8_t c[RPC_AUTH_CHALLENGE_LEN];

	if (rpc_auth_challenge_issue(s->challenges, fr_now_ns() / 1000000, c) < 0)
		return rpc_call_fail(call, GRPC_STATUS_INTERNAL, "getrandom failed");
	resp.challenge.data = c;
	resp.challenge.len = sizeof(c);
	resp.ttl_ms = (uint32_t)rpc_auth_challenge_ttl(s->challenges);
	resp.boot_id.data = s->boot_id;
	resp.boot_id.len = sizeof(s->boot_id);
	rpc_call_send(call, &resp.base);
	return GRPC_STATUS_OK;
}

/* The worker a signed request speaks for, or NULL (the call has failed: no such worker, or
 * the signature is not that worker's session's). Under s->mu. A refusal is logged with the
 * caller's address and changes nothing. */
static struct srv_worker *authed_worker(struct co_server *s, struct rpc_call *call,
					const ProtobufCMessage *msg, uint32_t index,
					grpc_status_code *st)
{
	struct fr_error err = { { 0 } };
	const char *what = strrchr(rpc_call_method(call), '/') + 1;
	char peer[128];
	int rc = -EACCES;

	if (index < (uint32_t)s->n_joined && s->workers[index].replay &&
	    (rc = rpc_auth_verify(msg, s->workers[index].session_key, RPC_AUTH_KEY_LEN,
				  s->workers[index].replay, rpc_auth_now_ms(),
				  (uint64_t)s->o.max_skew_ms, &err)) == 0)
		return &s->workers[index];
	if (index >= (uint32_t)s->n_joined || !s->workers[index].replay)
		fr_error_set(&err, -EACCES, "worker %u has no session here (join first)", index);
	rpc_call_peer(call, peer, sizeof(peer));
	fr_warn(LOG_COMP, "refused %s for worker %u from %s: %s", what, index, peer, err.msg);
	*st = rpc_call_fail(call, rc == -EAGAIN ? GRPC_STATUS_RESOURCE_EXHAUSTED :
			    GRPC_STATUS_UNAUTHENTICATED, "%s refused: %s", what, err.msg);
	return NULL;
}

static grpc_status_code on_heartbeat(struct rpc_call *call, const ProtobufCMessage *req,
				     void *arg)
{
	const Ferry__V1__HeartbeatRequest *r = (const Ferry__V1__HeartbeatRequest *)req;
	Ferry__V1__HeartbeatResponse resp = FERRY__V1__HEARTBEAT_RESPONSE__INIT;
	struct co_server *s = arg;
	grpc_status_code st = GRPC_STATUS_OK;
	struct srv_worker *w;

	pthread_mutex_lock(&s->mu);
	if ((w = authed_worker(s, call, &r->base, r->worker_index, &st))) {
		w->last_heartbeat_ns = fr_now_ns();
		resp.epoch = s->epoch;
		resp.drain = s->status == S_DRAINING || s->status == S_FAILED || s->stop;
		rpc_call_send(call, &resp.base);
	}
	pthread_mutex_unlock(&s->mu);
	return st;
}

static grpc_status_code on_get_assignment(struct rpc_call *call, const ProtobufCMessage *req,
					  void *arg)
{
	const Ferry__V1__GetAssignmentRequest *r = (const Ferry__V1__GetAssignmentRequest *)req;
	Ferry__V1__GetAssignmentResponse resp = FERRY__V1__GET_ASSIGNMENT_RESPONSE__INIT;
	struct co_server *s = arg;
	grpc_status_code st = GRPC_STATUS_OK;
	Ferry__V1__SlotAssignment *sa = NULL, **sap = NULL;
	struct srv_worker *w;
	struct timespec dl;

	pthread_mutex_lock(&s->mu);
	if (!(w = authed_worker(s, call, &r->base, r->worker_index, &st)))
		goto unlock;
	/* Long poll: the placement exists once every worker joined. It ends a little before
	 * the caller's deadline, so that an answer given at the last moment (the impossible
	 * placement, which the coordinator counts as told) still reaches the worker. */
	int64_t wait_ms = FR_MIN(rpc_call_remaining_ms(call) - 250, (int64_t)s->o.join_timeout_ms);
	fr_deadline_ms(&dl, (int)FR_MAX(wait_ms, 0));
	while (!s->place && !s->place_err[0] && s->status == S_STARTING && !fr_deadline_passed(&dl) &&
	       !rpc_call_cancelled(call))
		pthread_cond_timedwait(&s->cv, &s->mu, &dl);
	if (s->place_err[0]) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s", s->place_err);
		/* Told only if the worker is still there to hear it: a handler that ran late
		 * (a starved host) may answer a call its client gave up on; it asks again. */
		if (!rpc_call_cancelled(call) && rpc_call_remaining_ms(call) > 100)
			w->told_place_err = true;
		pthread_cond_broadcast(&s->cv);
		goto unlock;
	}
	if (!s->place) {
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "placement not ready (%s, %d of %d "
				   "workers joined)", status_name(s->status), s->n_joined, s->o.workers);
		goto unlock;
	}
	const struct co_placement *p = s->place;
	size_t n = (size_t)p->n_layers * (size_t)p->slots[w->index];
	sa = calloc(n ? n : 1, sizeof(*sa));
	sap = calloc(n ? n : 1, sizeof(*sap));
	if (!sa || !sap) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto unlock;
	}
	size_t k = 0;
	for (int l = 0; l < p->n_layers; l++)
		for (int j = 0; j < p->slots[w->index]; j++) {
			int e = co_place_expert_at(p, l, w->index, j);
			if (e == CO_PLACE_EMPTY)
				continue; /* unloaded: not part of the assignment any more */
			ferry__v1__slot_assignment__init(&sa[k]);
			sa[k].layer = (uint32_t)l;
			sa[k].slot = (uint32_t)j;
			sa[k].expert = (uint32_t)e;
			sap[k] = &sa[k];
			k++;
		}
	resp.epoch = s->epoch;
	resp.n_slots = k;
	resp.slots = sap;
	rpc_call_send(call, &resp.base);
unlock:
	pthread_mutex_unlock(&s->mu);
	free(sa);
	free(sap);
	return st;
}

/* Every (layer, slot, expert) of a Load/Unload request is what p has worker wi hold. */
static grpc_status_code check_slots(struct rpc_call *call, const struct co_placement *p, int wi,
				    Ferry__V1__SlotAssignment *const *slots, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const Ferry__V1__SlotAssignment *a = slots[i];
		int have = co_place_expert_at(p, (int)a->layer, wi, (int)a->slot);
		if (have == (int)a->expert)
			continue;
		if (a->layer >= (uint32_t)p->n_layers || a->slot >= (uint32_t)p->slots[wi])
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "slot (layer %u, slot %u) out of range (%d layers, %d "
					     "slots)", a->layer, a->slot, p->n_layers, p->slots[wi]);
		if (have == CO_PLACE_EMPTY)
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "slot (layer %u, slot %u) is not in service",
					     a->layer, a->slot);
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "slot (layer %u, slot %u) holds expert %d, not %u", a->layer,
				     a->slot, have, a->expert);
	}
	return GRPC_STATUS_OK;
}

static grpc_status_code on_load_experts(struct rpc_call *call, const ProtobufCMessage *req,
					void *arg)
{
	const Ferry__V1__LoadExpertsRequest *r = (const Ferry__V1__LoadExpertsRequest *)req;
	Ferry__V1__LoadExpertsResponse resp = FERRY__V1__LOAD_EXPERTS_RESPONSE__INIT;
	struct co_server *s = arg;
	grpc_status_code st = GRPC_STATUS_OK;
	struct srv_worker *w;

	pthread_mutex_lock(&s->mu);
	if (!(w = authed_worker(s, call, &r->base, r->worker_index, &st)))
		goto unlock;
	if (!s->place || r->epoch != s->epoch) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "epoch %llu is not the one in force (%llu)",
				   (unsigned long long)r->epoch, (unsigned long long)s->epoch);
		goto unlock;
	}
	const struct co_placement *p = s->place;
	size_t want = (size_t)p->n_layers * (size_t)p->slots[w->index];
	if (r->n_slots != want) {
		st = rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				   "loaded %zu slots, the assignment has %zu", r->n_slots, want);
		goto unlock;
	}
	if ((st = check_slots(call, p, w->index, r->slots, r->n_slots)) != GRPC_STATUS_OK)
		goto unlock;
	if (w->state == W_CONNECTED)
		w->state = W_LOADED;
	fr_info(LOG_COMP, "worker %d '%s' loaded %zu slots (epoch %llu)", w->index, w->name,
		r->n_slots, (unsigned long long)r->epoch);
	pthread_cond_broadcast(&s->cv);
	resp.loaded = (uint32_t)r->n_slots;
	rpc_call_send(call, &resp.base);
unlock:
	pthread_mutex_unlock(&s->mu);
	return st;
}

/* A worker gives slots up (it is leaving): they leave the routing table between two steps,
 * so when this answers no step can still send there. */
static grpc_status_code on_unload_experts(struct rpc_call *call, const ProtobufCMessage *req,
					  void *arg)
{
	const Ferry__V1__UnloadExpertsRequest *r = (const Ferry__V1__UnloadExpertsRequest *)req;
	Ferry__V1__UnloadExpertsResponse resp = FERRY__V1__UNLOAD_EXPERTS_RESPONSE__INIT;
	struct co_server *s = arg;
	struct fr_error err = { { 0 } };
	grpc_status_code st = GRPC_STATUS_OK;
	int32_t *layer = NULL, *slot = NULL;
	struct srv_worker *w;
	int rc;

	if (r->n_slots > (size_t)INT32_MAX)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "too many slots");
	layer = malloc(sizeof(*layer) * (r->n_slots + 1));
	slot = malloc(sizeof(*slot) * (r->n_slots + 1));
	if (!layer || !slot) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	/* engine_mu first: no forward pass is choosing replicas while the table changes. */
	pthread_mutex_lock(&s->engine_mu);
	pthread_mutex_lock(&s->mu);
	if (!(w = authed_worker(s, call, &r->base, r->worker_index, &st)))
		goto unlock;
	if (s->status != S_SERVING || !s->place) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "the cluster is not serving: nothing to unload from");
		goto unlock;
	}
	if (r->epoch != s->epoch) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "epoch %llu is not the one in force (%llu)",
				   (unsigned long long)r->epoch, (unsigned long long)s->epoch);
		goto unlock;
	}
	if ((st = check_slots(call, s->place, w->index, r->slots, r->n_slots)) != GRPC_STATUS_OK)
		goto unlock;
	for (size_t i = 0; i < r->n_slots; i++) {
		layer[i] = (int32_t)r->slots[i]->layer;
		slot[i] = (int32_t)r->slots[i]->slot;
	}
	rc = co_place_unload(s->place, w->index, (int)r->n_slots, layer, slot, &err);
	if (rc < 0) {
		fr_warn(LOG_COMP, "worker %d '%s' asked to unload %zu slots: refused: %s", w->index,
			w->name, r->n_slots, err.msg);
		st = rpc_call_fail(call, rc == -EBUSY ? GRPC_STATUS_FAILED_PRECONDITION :
				   rpc_status_from_errno(rc), "%s", err.msg);
		goto unlock;
	}
	resp.unloaded = (uint32_t)rc;
	resp.remaining = (uint32_t)co_place_filled(s->place, w->index);
	if (resp.remaining == 0)
		w->state = W_RELEASED;
	fr_info(LOG_COMP, "worker %d '%s' unloaded %u slots, %u still in service%s", w->index,
		w->name, resp.unloaded, resp.remaining,
		resp.remaining ? "" : ": nothing routes to it any more, it may leave");
	rpc_call_send(call, &resp.base);
unlock:
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
out:
	free(layer);
	free(slot);
	return st;
}

static grpc_status_code on_report_stats(struct rpc_call *call, const ProtobufCMessage *req,
					void *arg)
{
	const Ferry__V1__ReportStatsRequest *r = (const Ferry__V1__ReportStatsRequest *)req;
	Ferry__V1__ReportStatsResponse resp = FERRY__V1__REPORT_STATS_RESPONSE__INIT;
	struct co_server *s = arg;
	grpc_status_code st = GRPC_STATUS_OK;

	pthread_mutex_lock(&s->mu);
	struct srv_worker *w = authed_worker(s, call, &r->base, r->worker_index, &st);
	pthread_mutex_unlock(&s->mu);
	if (!w)
		return st;
	int n_moe = model_n_moe_layers(s->cfg);
	for (size_t i = 0; i < r->n_layers; i++)
		if (r->layers[i]->layer >= (uint32_t)n_moe)
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "layers[%zu]: MoE layer %u out of range (%d)", i,
					     r->layers[i]->layer, n_moe);
	pthread_mutex_lock(&s->engine_mu);
	if (s->load)
		for (size_t i = 0; i < r->n_layers; i++)
			co_load_record_time(s->load, w->index, (int)r->layers[i]->layer,
					    r->layers[i]->busy_ns);
	pthread_mutex_unlock(&s->engine_mu);
	rpc_call_send(call, &resp.base);
	return st;
}

/* ---- Inference service -------------------------------------------------------------------- */

static grpc_status_code on_health(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	Ferry__V1__HealthResponse resp = FERRY__V1__HEALTH_RESPONSE__INIT;
	struct co_server *s = arg;

	pthread_mutex_lock(&s->mu);
	switch (s->status) {
	case S_SERVING:
		resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
		break;
	case S_DRAINING:
		resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_DRAINING;
		break;
	default:
		resp.status = FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_NOT_SERVING;
	}
	resp.version = (char *)FERRY_VERSION;
	resp.workers = (uint32_t)s->n_joined;
	resp.epoch = s->epoch;
	struct co_sched *sched = s->status == S_SERVING ? s->sched : NULL;
	pthread_mutex_unlock(&s->mu);
	if (sched) {
		struct co_sched_stats st;
		co_sched_stats(sched, &st);
		resp.running = (uint32_t)st.running;
		resp.queued = (uint32_t)st.queued;
		resp.kv_blocks_free = (uint32_t)st.free_blocks;
		resp.kv_blocks_total = (uint32_t)st.total_blocks;
	}
	rpc_call_send(call, &resp.base);
	return GRPC_STATUS_OK;
}

/* One forward pass under the engine lock, with its step's load accounting. */
static int engine_step(struct co_server *s, int n, const int32_t *tok, const int32_t *seq,
		       const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
		       float *logits, char *why, size_t why_cap)
{
	int rc;

	pthread_mutex_lock(&s->engine_mu);
	rc = co_engine_forward(s->engine, n, tok, seq, pos, want, kb, logits);
	if (rc < 0)
		snprintf(why, why_cap, "%s", co_moe_remote_error(&s->moe)[0] ?
			 co_moe_remote_error(&s->moe) : strerror(-rc));
	co_load_next_step(s->load);
	pthread_mutex_unlock(&s->engine_mu);
	if (rc < 0 && rc != -EINVAL) {
		pthread_mutex_lock(&s->mu);
		fail_cluster_locked(s, why);
		pthread_mutex_unlock(&s->mu);
	}
	return rc;
}

/* The scheduler's view of the engine: a forward pass under the engine lock. */
static int sched_forward(void *ctx, int n, const int32_t *tok, const int32_t *seq,
			 const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
			 float *logits, struct fr_error *err)
{
	char why[512];
	int rc = engine_step(ctx, n, tok, seq, pos, want, kb, logits, why, sizeof(why));
	if (rc < 0)
		fr_error_set(err, rc, "%s", why);
	return rc;
}

static void sched_release(void *ctx, int seq)
{
	struct co_server *s = ctx;
	pthread_mutex_lock(&s->engine_mu);
	co_engine_reset_seq(s->engine, seq);
	pthread_mutex_unlock(&s->engine_mu);
}

/* ModelInfo's placement summary. */
static void placement_summary(void *ctx, Ferry__V1__PlacementSummary *ret)
{
	struct co_server *s = ctx;

	pthread_mutex_lock(&s->mu);
	ret->epoch = s->epoch;
	ret->workers = (uint32_t)s->n_joined;
	if (s->place) {
		const struct co_placement *p = s->place;
		ret->worker_slots = calloc((size_t)p->n_workers, sizeof(*ret->worker_slots));
		if (ret->worker_slots) {
			ret->n_worker_slots = (size_t)p->n_workers;
			for (int w = 0; w < p->n_workers; w++)
				ret->worker_slots[w] = (uint32_t)p->slots[w];
		}
		ret->replicas = (uint32_t)(p->total_slots - p->n_experts);
	}
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&s->engine_mu);
	ret->min_balancedness = 1.0;
	for (int l = 0; s->load && l < model_n_moe_layers(s->cfg); l++) {
		double b;
		if (co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &b) == 0)
			ret->min_balancedness = FR_MIN(ret->min_balancedness, b);
	}
	pthread_mutex_unlock(&s->engine_mu);
}

/* NULL while serving, else why not (Generate/Score answer UNAVAILABLE with it). */
static const char *serving_unavailable(void *ctx, char *buf, size_t cap)
{
	struct co_server *s = ctx;
	const char *why = NULL;

	pthread_mutex_lock(&s->mu);
	if (s->status != S_SERVING) {
		snprintf(buf, cap, "%s%s%s", status_name(s->status), s->fail[0] ? ": " : "", s->fail);
		why = buf;
	}
	pthread_mutex_unlock(&s->mu);
	return why;
}

/* ---- Admin service ------------------------------------------------------------------------ */

/* Every Admin call: the bearer token, when one is configured. */
static grpc_status_code admin_auth(struct co_server *s, struct rpc_call *call)
{
	char hdr[1024];

	if (!s->admin_token)
		return GRPC_STATUS_OK;
	if (rpc_call_metadata(call, "authorization", hdr, sizeof(hdr)) < 0 ||
	    rpc_auth_bearer_check(hdr, s->admin_token, s->o.admin_token_len) < 0) {
		fr_warn(LOG_COMP, "%s: refused: missing or wrong admin bearer token",
			rpc_call_method(call));
		return rpc_call_fail(call, GRPC_STATUS_UNAUTHENTICATED,
				     "admin calls need \"authorization: Bearer <token>\" with the "
				     "coordinator's admin token");
	}
	return GRPC_STATUS_OK;
}

static grpc_status_code on_get_load(struct rpc_call *call, const ProtobufCMessage *req, void *arg)
{
	const Ferry__V1__GetLoadRequest *r = (const Ferry__V1__GetLoadRequest *)req;
	Ferry__V1__GetLoadResponse resp = FERRY__V1__GET_LOAD_RESPONSE__INIT;
	struct co_server *s = arg;
	int n_moe = model_n_moe_layers(s->cfg), n_w = s->o.workers;
	Ferry__V1__LayerWorkerLoad *lw = NULL, **lwp = NULL;
	Ferry__V1__LayerBalance *lb = NULL, **lbp = NULL;
	uint64_t *tok = NULL, *ns = NULL;
	grpc_status_code st = GRPC_STATUS_OK;
	int *layers = NULL, n_layers;

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (r->n_layers > (size_t)n_moe)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "%zu layers asked, the model has %d MoE layers", r->n_layers, n_moe);
	for (size_t i = 0; i < r->n_layers; i++)
		if (r->layers[i] >= (uint32_t)n_moe)
			return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
					     "layer %u out of range: the model has %d MoE layers",
					     r->layers[i], n_moe);
	n_layers = r->n_layers ? (int)r->n_layers : n_moe;
	layers = malloc((size_t)FR_MAX(n_layers, 1) * sizeof(*layers));
	lw = calloc((size_t)FR_MAX(n_layers * n_w, 1), sizeof(*lw));
	lwp = calloc((size_t)FR_MAX(n_layers * n_w, 1), sizeof(*lwp));
	lb = calloc((size_t)FR_MAX(n_layers, 1), sizeof(*lb));
	lbp = calloc((size_t)FR_MAX(n_layers, 1), sizeof(*lbp));
	tok = calloc((size_t)n_w, sizeof(*tok));
	ns = calloc((size_t)n_w, sizeof(*ns));
	if (!layers || !lw || !lwp || !lb || !lbp || !tok || !ns) {
		st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	for (int i = 0; i < n_layers; i++)
		layers[i] = r->n_layers ? (int)r->layers[i] : i;

	pthread_mutex_lock(&s->engine_mu);
	if (!s->load || !s->place) {
		pthread_mutex_unlock(&s->engine_mu);
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "the cluster is not serving yet");
		goto out;
	}
	for (int i = 0; i < n_layers; i++) {
		uint64_t sum = 0;
		co_load_worker_tokens(s->load, layers[i], tok);
		co_load_worker_time(s->load, layers[i], ns);
		for (int w = 0; w < n_w; w++)
			sum += tok[w];
		for (int w = 0; w < n_w; w++) {
			Ferry__V1__LayerWorkerLoad *x = &lw[i * n_w + w];
			ferry__v1__layer_worker_load__init(x);
			x->layer = (uint32_t)layers[i];
			x->worker_index = (uint32_t)w;
			x->tokens = tok[w];
			x->fraction = sum ? (double)tok[w] / (double)sum : 0.0;
			x->busy_ns = ns[w];
			x->slots = (uint32_t)s->place->slots[w];
			lwp[i * n_w + w] = x;
		}
		ferry__v1__layer_balance__init(&lb[i]);
		lb[i].layer = (uint32_t)layers[i];
		co_load_balancedness(s->load, layers[i], CO_LOAD_TOKENS, &lb[i].balancedness);
		co_load_balancedness(s->load, layers[i], CO_LOAD_TIME, &lb[i].balancedness_time);
		lbp[i] = &lb[i];
	}
	resp.window_ns = 0;
	pthread_mutex_unlock(&s->engine_mu);
	pthread_mutex_lock(&s->mu);
	resp.epoch = s->epoch;
	/* names are written once, at join, and the array lives as long as the server */
	for (int i = 0; i < n_layers * n_w; i++)
		lw[i].worker_name = s->workers[lw[i].worker_index].name;
	pthread_mutex_unlock(&s->mu);
	resp.n_loads = (size_t)n_layers * n_w;
	resp.loads = lwp;
	resp.n_layers = (size_t)n_layers;
	resp.layers = lbp;
	rpc_call_send(call, &resp.base);
out:
	free(layers);
	free(lw);
	free(lwp);
	free(lb);
	free(lbp);
	free(tok);
	free(ns);
	return st;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

static grpc_status_code on_bench_engine(struct rpc_call *call, const ProtobufCMessage *req,
					void *arg)
{
	const Ferry__V1__BenchEngineRequest *r = (const Ferry__V1__BenchEngineRequest *)req;
	Ferry__V1__BenchEngineResponse resp = FERRY__V1__BENCH_ENGINE_RESPONSE__INIT;
	struct co_server *s = arg;
	int B = (int)r->batch, steps = r->steps ? (int)FR_MIN(r->steps, 4096u) : 16;
	int plen = r->prompt_len ? (int)FR_MIN(r->prompt_len, 65536u) : 16, V = s->cfg->vocab_size;
	grpc_status_code st;
	char why[512];

	if ((st = admin_auth(s, call)) != GRPC_STATUS_OK)
		return st;
	if (B < 1 || B > s->o.max_seqs)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "batch must be in [1, %d] (engine.max_seqs)", s->o.max_seqs);
	if (plen + steps + 2 > s->max_ctx || (int64_t)B * plen > 1 << 22)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "prompt_len %d + steps %d exceed the context of %d", plen, steps,
				     s->max_ctx);
	pthread_mutex_lock(&s->mu);
	bool ok = s->status == S_SERVING;
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "the cluster is not serving");
	if (co_sched_pause(s->sched, 60000) < 0) {
		co_sched_resume(s->sched);
		return rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE,
				     "requests kept running for 60 s: cannot measure");
	}
	size_t rows = (size_t)B * plen;
	/* Prompt rows, then one decode row per sequence. */
	int32_t *tok = malloc((rows + B) * sizeof(*tok)), *seq = malloc((rows + B) * sizeof(*seq));
	int32_t *pos = malloc((rows + B) * sizeof(*pos));
	bool *want = calloc(rows, sizeof(*want));
	/* The engine writes row i's logits at row i of the call. */
	float *logits = malloc((size_t)FR_MAX(B, s->o.max_batch) * V * sizeof(float));
	uint64_t *t = malloc((size_t)(steps + 2) * sizeof(*t)), rng = r->seed;
	int rc = -ENOMEM;
	if (!tok || !seq || !pos || !want || !logits || !t)
		goto out;
	/* The same work a served batch does, with perfect batching: every prompt prefilled
	 * (all sequences in one pass, max_batch rows at a time; only the last row of each
	 * wants logits), then `steps` decode steps of all sequences together. One untimed
	 * round warms the caches first. */
	for (int b = 0; b < B; b++)
		for (int p = 0; p < plen; p++) {
			size_t i = (size_t)b * plen + p;
			tok[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)V);
			seq[i] = b;
			pos[i] = p;
			want[i] = p == plen - 1;
		}
	uint64_t t0 = 0, t_end = 0;
	for (int round = 0; round < 2; round++) {
		for (int b = 0; b < B; b++) {
			pthread_mutex_lock(&s->engine_mu);
			co_engine_reset_seq(s->engine, b);
			pthread_mutex_unlock(&s->engine_mu);
		}
		t0 = fr_now_ns();
		/* Whole sequences per pass (as many as max_batch holds) keep their rows
		 * together; a prompt longer than max_batch goes alone. */
		size_t per = (size_t)FR_MAX(1, s->o.max_batch / plen) * plen;
		for (size_t off = 0, n; off < rows; off += n) {
			n = FR_MIN(rows - off, per);
			rc = engine_step(s, (int)n, tok + off, seq + off, pos + off, want + off, NULL,
					 logits, why, sizeof(why));
			if (rc < 0)
				goto out;
		}
		int32_t *dt = tok + rows, *ds = seq + rows, *dp = pos + rows;
		for (int k = 0; k < steps; k++) {
			for (int b = 0; b < B; b++) {
				dt[b] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)V);
				ds[b] = b;
				dp[b] = plen + k;
			}
			uint64_t a = fr_now_ns();
			rc = engine_step(s, B, dt, ds, dp, NULL, NULL, logits, why, sizeof(why));
			if (rc < 0)
				goto out;
			t[k] = fr_now_ns() - a;
		}
		t_end = fr_now_ns();
	}
	qsort(t, (size_t)steps, sizeof(*t), cmp_u64);
	resp.tokens_per_s = (double)B * steps / ((double)(t_end - t0) / 1e9);
	resp.step_ms_p50 = (double)t[steps / 2] / 1e6;
	rc = 0;
out:
	for (int b = 0; b < B; b++) {
		pthread_mutex_lock(&s->engine_mu);
		co_engine_reset_seq(s->engine, b);
		pthread_mutex_unlock(&s->engine_mu);
	}
	co_sched_resume(s->sched);
	free(tok);
	free(seq);
	free(pos);
	free(want);
	free(logits);
	free(t);
	if (rc < 0)
		return rpc_call_fail(call, rc == -ENOMEM ? GRPC_STATUS_RESOURCE_EXHAUSTED :
				     GRPC_STATUS_UNAVAILABLE, "engine benchmark failed: %s",
				     rc == -ENOMEM ? "out of memory" : why);
	rpc_call_send(call, &resp.base);
	return GRPC_STATUS_OK;
}

/* ---- life cycle --------------------------------------------------------------------------- */

static int add_methods(struct co_server *s, struct fr_error *err)
{
	static const struct {
		const char *path;
		enum rpc_method_kind kind;
		const ProtobufCMessageDescriptor *desc;
		rpc_handler_fn fn;
	} m[] = {
		{ RPC_M_CHALLENGE, RPC_METHOD_UNARY, &ferry__v1__challenge_request__descriptor,
		  on_challenge },
		{ RPC_M_JOIN, RPC_METHOD_UNARY, &ferry__v1__join_request__descriptor, on_join },
		{ RPC_M_HEARTBEAT, RPC_METHOD_UNARY, &ferry__v1__heartbeat_request__descriptor,
		  on_heartbeat },
		{ RPC_M_GET_ASSIGNMENT, RPC_METHOD_UNARY,
		  &ferry__v1__get_assignment_request__descriptor, on_get_assignment },
		{ RPC_M_LOAD_EXPERTS, RPC_METHOD_UNARY, &ferry__v1__load_experts_request__descriptor,
		  on_load_experts },
		{ RPC_M_UNLOAD_EXPERTS, RPC_METHOD_UNARY,
		  &ferry__v1__unload_experts_request__descriptor, on_unload_experts },
		{ RPC_M_REPORT_STATS, RPC_METHOD_UNARY, &ferry__v1__report_stats_request__descriptor,
		  on_report_stats },
		{ RPC_M_HEALTH, RPC_METHOD_UNARY, &ferry__v1__health_request__descriptor, on_health },
		{ RPC_M_GENERATE, RPC_METHOD_SERVER_STREAMING,
		  &ferry__v1__generate_request__descriptor, co_handle_generate },
		{ RPC_M_SCORE, RPC_METHOD_UNARY, &ferry__v1__score_request__descriptor,
		  co_handle_score },
		{ RPC_M_TOKENIZE, RPC_METHOD_UNARY, &ferry__v1__tokenize_request__descriptor,
		  co_handle_tokenize },
		{ RPC_M_DETOKENIZE, RPC_METHOD_UNARY, &ferry__v1__detokenize_request__descriptor,
		  co_handle_detokenize },
		{ RPC_M_MODEL_INFO, RPC_METHOD_UNARY, &ferry__v1__model_info_request__descriptor,
		  co_handle_model_info },
		{ RPC_M_GET_LOAD, RPC_METHOD_UNARY, &ferry__v1__get_load_request__descriptor,
		  on_get_load },
		{ RPC_M_BENCH_ENGINE, RPC_METHOD_UNARY, &ferry__v1__bench_engine_request__descriptor,
		  on_bench_engine },
	};
	int rc;

	for (size_t i = 0; i < FR_ARRAY_SIZE(m); i++) {
		void *arg = m[i].fn == co_handle_generate || m[i].fn == co_handle_score ?
			(void *)&s->serving : (void *)s;
		if (m[i].fn == co_handle_tokenize || m[i].fn == co_handle_detokenize ||
		    m[i].fn == co_handle_model_info)
			arg = &s->info;
		/* With a cluster listener of its own, Internal is served there only (with
		 * its own credentials); Health on both, for probes. */
		bool internal = strncmp(m[i].path, "/ferry.v1.Internal/", 19) == 0;
		bool health = m[i].fn == on_health;
		if ((!s->rpc_cluster || !internal) &&
		    (rc = rpc_server_add_method(s->rpc, m[i].path, m[i].kind, m[i].desc, m[i].fn,
						arg, err)) < 0)
			return rc;
		if (s->rpc_cluster && (internal || health) &&
		    (rc = rpc_server_add_method(s->rpc_cluster, m[i].path, m[i].kind, m[i].desc,
						m[i].fn, arg, err)) < 0)
			return rc;
	}
	return 0;
}

/* One transport context per device of o->tp_devices (or one on o->tp.device). */
static int open_transport(struct co_server *s, const struct co_server_opts *o,
			  struct fr_error *err)
{
	const char *backend = tp_backend_name(o->tp.backend);
	int n = o->n_tp_devices > 0 ? o->n_tp_devices : 1, rc;

	if (o->n_tp_devices > TP_WAIT_MANY_MAX || (o->n_tp_devices > 0 && !o->tp_devices))
		return fr_error_set(err, -EINVAL, "%d transport devices (at most %d)",
				    o->n_tp_devices, TP_WAIT_MANY_MAX);
	if (n > 1 && o->tp.backend != TP_BACKEND_VERBS)
		return fr_error_set(err, -EINVAL, "%d transport devices: only the verbs backend "
				    "uses more than one (backend is %s)", n, backend);
	for (int d = 0; d < n; d++) {
		const char *dev = o->n_tp_devices > 0 ? o->tp_devices[d] : o->tp.device;
		struct tp_config cfg = o->tp;
		cfg.device = dev;
		if (dev && !(s->tp_dev[d] = strdup(dev)))
			return fr_error_set(err, -ENOMEM, "out of memory");
		if ((rc = tp_context_create(&cfg, &s->tp[d])) < 0)
			return fr_error_set(err, rc, "cannot open the %s transport%s%s: %s",
					    backend, dev ? " on device " : "", dev ? dev : "",
					    strerror(-rc));
		s->n_tp = d + 1;
	}
	if (n > 1)
		fr_info(LOG_COMP, "%s transport over %d devices: worker i is served by device "
			"i %% %d", backend, n, n);
	return 0;
}

/* The device serving worker index i, for log lines. */
static const char *worker_device(const struct co_server *s, int i)
{
	const char *d = s->tp_dev[i % s->n_tp];
	return d ? d : "auto";
}

/* "listen 127.0.0.1:7400: address in use" from rpc_server_create()'s "ADDR: ..." (and
 * "listen ADDR: ..." for its messages that do not start with the address). */
static void listen_error(struct fr_error *err, int rc, const char *what, const char *addr)
{
	char msg[sizeof(err->msg)];
	size_t n = strlen(addr);

	if (!err)
		return;
	memcpy(msg, err->msg, sizeof(msg));
	if (!strncmp(msg, addr, n) && msg[n] == ':')
		fr_error_set(err, rc, "%s %s", what, msg);
	else
		fr_error_set(err, rc, "%s %s: %s", what, addr, msg);
}

/* ", TLS" / ", mTLS" / "" for the listening log lines. */
static const char *tls_note(const struct rpc_creds *c)
{
	if (!c || c->kind != RPC_CREDS_TLS)
		return "";
	return c->ca_file ? ", mTLS" : ", TLS";
}

int co_server_create(const struct co_server_opts *o, struct co_server **ret,
		     struct fr_error *err)
{
	struct co_server *s;
	int rc;

	if (!o->model_path || !o->listen || o->workers < 1 || o->workers > MAX_WORKERS ||
	    o->micro_batches < 1 || o->micro_batches > CO_MAX_MICRO_BATCHES || o->max_batch < 1 ||
	    o->max_seqs < 1 || !o->secret || o->secret_len == 0)
		return fr_error_set(err, -EINVAL, "coordinator options out of range");
	s = calloc(1, sizeof(*s));
	if (!s)
		return fr_error_set(err, -ENOMEM, "out of memory");
	s->o = *o;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_mutex_init(&s->engine_mu, NULL);
	s->model_path = strdup(o->model_path);
	s->listen = strdup(o->listen);
	s->load_profile = o->load_profile ? strdup(o->load_profile) : NULL;
	s->secret = o->secret_len ? malloc(o->secret_len) : NULL;
	s->workers = calloc((size_t)o->workers, sizeof(*s->workers));
	if (!s->model_path || !s->listen || (o->load_profile && !s->load_profile) ||
	    (o->secret_len && !s->secret) || !s->workers) {
		co_server_destroy(s);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	if (o->secret_len)
		memcpy(s->secret, o->secret, o->secret_len);
	if (o->admin_token_len) {
		if (!(s->admin_token = malloc(o->admin_token_len))) {
			co_server_destroy(s);
			return fr_error_set(err, -ENOMEM, "out of memory");
		}
		memcpy(s->admin_token, o->admin_token, o->admin_token_len);
	}
	s->o.admin_token = s->admin_token;
	s->o.model_path = s->model_path;
	s->o.listen = s->listen;
	s->o.load_profile = s->load_profile;
	s->o.secret = s->secret;
	/* Borrowed: open_transport() keeps copies of the device names. */
	s->o.tp.device = NULL;
	s->o.tp_devices = NULL;
	s->o.n_tp_devices = 0;
	s->o.creds = NULL; /* only read below */
	s->o.cluster_listen = NULL;
	s->o.cluster_creds = NULL;

	if ((rc = model_ckpt_open(s->model_path, &s->ck, err)) < 0)
		goto fail;
	s->cfg = model_ckpt_config(s->ck);
	if (model_n_moe_layers(s->cfg) == 0) {
		rc = fr_error_set(err, -EINVAL, "%s: the model has no MoE layers to distribute",
				  s->model_path);
		goto fail;
	}
	s->max_ctx = o->max_ctx > 0 ? FR_MIN(o->max_ctx, s->cfg->max_position_embeddings) :
				      s->cfg->max_position_embeddings;
	if ((rc = model_weights_bind(s->ck, MODEL_BIND_NO_ROUTED, &s->w, err)) < 0)
		goto fail;
	char tpath[4096];
	snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", s->model_path);
	if (access(tpath, F_OK) == 0) {
		if ((rc = model_tokenizer_load(tpath, &s->tok, err)) < 0)
			goto fail;
		if (model_tokenizer_vocab_size(s->tok) > s->cfg->vocab_size)
			fr_warn(LOG_COMP, "%s has %d tokens, the model's vocab_size is %d: text whose "
				"ids do not fit is refused", tpath, model_tokenizer_vocab_size(s->tok),
				s->cfg->vocab_size);
	} else {
		fr_info(LOG_COMP, "%s: no tokenizer.json: clients must send token ids", s->model_path);
	}
	s->info = (struct co_inference_info){ .cfg = s->cfg, .tok = s->tok, .max_ctx = s->max_ctx,
					      .placement = placement_summary, .placement_ctx = s };
	s->serving = (struct co_serving){ .cfg = s->cfg, .tok = s->tok, .max_ctx = s->max_ctx,
					  .default_max_tokens = 256, .stall_ms = s->o.stall_ms,
					  .unavailable = serving_unavailable, .ctx = s };
	if ((rc = rpc_auth_replay_create(0, &s->replay)) < 0 ||
	    (rc = rpc_auth_challenges_create(0, 30000, &s->challenges)) < 0) {
		fr_error_set(err, rc, "out of memory");
		goto fail;
	}
	if (rpc_auth_random(s->boot_id, sizeof(s->boot_id)) < 0) {
		rc = fr_error_set(err, -EIO, "getrandom failed");
		goto fail;
	}
	if ((rc = open_transport(s, o, err)) < 0)
		goto fail;
	if ((rc = rpc_server_create(s->listen, o->creds, &s->rpc, err)) < 0) {
		listen_error(err, rc, "listen", s->listen);
		goto fail;
	}
	if (o->cluster_listen &&
	    (rc = rpc_server_create(o->cluster_listen, o->cluster_creds, &s->rpc_cluster,
				    err)) < 0) {
		listen_error(err, rc, "cluster listen", o->cluster_listen);
		goto fail;
	}
	if ((rc = add_methods(s, err)) < 0 || (rc = rpc_server_start(s->rpc, err)) < 0 ||
	    (s->rpc_cluster && (rc = rpc_server_start(s->rpc_cluster, err)) < 0))
		goto fail;
	fr_info(LOG_COMP, "listening on %s (port %d%s), waiting for %d worker(s), %s transport",
		s->listen, rpc_server_port(s->rpc), tls_note(o->creds), o->workers,
		tp_backend_name(o->tp.backend));
	if (s->rpc_cluster)
		fr_info(LOG_COMP, "workers join on %s (port %d%s)", o->cluster_listen,
			rpc_server_port(s->rpc_cluster), tls_note(o->cluster_creds));
	*ret = s;
	return 0;
fail:
	co_server_destroy(s);
	return rc;
}

int co_server_port(const struct co_server *s)
{
	return rpc_server_port(s->rpc);
}

int co_server_cluster_port(const struct co_server *s)
{
	return s->rpc_cluster ? rpc_server_port(s->rpc_cluster) : 0;
}

/* Creates the endpoint of a joining worker (this thread owns the transport). */
static int setup_endpoint(struct co_server *s, struct srv_worker *w, struct fr_error *err)
{
	size_t slot = wk_ring_combine_slot(&s->ring);
	int rc;

	if (!slot)
		return fr_error_set(err, -EINVAL, "ring %u x %u is out of the frame limits",
				    s->ring.slots, s->ring.tokens);
	/* Workers take the devices in turn: one endpoint per device pair. */
	struct tp_context *tp = s->tp[w->index % s->n_tp];
	if ((rc = tp_mem_alloc(tp, slot * s->ring.slots, &w->recv)) < 0 ||
	    (rc = tp_ep_create(tp, w->recv, w, &w->ep)) < 0 ||
	    (rc = tp_ep_address(w->ep, w->my_blob, sizeof(w->my_blob), &w->my_blob_len)) < 0)
		return fr_error_set(err, rc, "worker %d: cannot create its endpoint: %s", w->index,
				    strerror(-rc));
	return 0;
}

static int wait_joins(struct co_server *s, struct fr_error *err)
{
	struct timespec dl;
	int connected = 0, rc;

	fr_deadline_ms(&dl, s->o.join_timeout_ms);
	pthread_mutex_lock(&s->mu);
	while (connected < s->o.workers) {
		struct srv_worker *w = NULL;
		for (int i = 0; i < s->n_joined && !w; i++)
			if (s->workers[i].state == W_JOINING)
				w = &s->workers[i];
		if (!w) {
			if (s->stop) {
				pthread_mutex_unlock(&s->mu);
				return fr_error_set(err, -ECANCELED, "stopped while workers joined");
			}
			if (fr_deadline_passed(&dl)) {
				pthread_mutex_unlock(&s->mu);
				return fr_error_set(err, -ETIMEDOUT,
						    "only %d of %d workers joined within %d ms", connected,
						    s->o.workers, s->o.join_timeout_ms);
			}
			struct timespec tick;
			fr_deadline_ms(&tick, 200);
			pthread_cond_timedwait(&s->cv, &s->mu, &tick);
			continue;
		}
		/* Endpoint creation and connect run unlocked: other joins may queue meanwhile. */
		pthread_mutex_unlock(&s->mu);
		rc = setup_endpoint(s, w, err);
		pthread_mutex_lock(&s->mu);
		if (rc < 0) {
			w->state = W_FAILED;
			snprintf(w->fail, sizeof(w->fail), "%s", err->msg);
			pthread_cond_broadcast(&s->cv);
			pthread_mutex_unlock(&s->mu);
			return rc;
		}
		w->state = W_READY;
		pthread_cond_broadcast(&s->cv);
		pthread_mutex_unlock(&s->mu);
		rc = tp_ep_connect(w->ep, w->blob, w->blob_len);
		pthread_mutex_lock(&s->mu);
		if (rc < 0) {
			w->state = W_FAILED;
			pthread_mutex_unlock(&s->mu);
			return fr_error_set(err, -EIO, "worker %d '%s': data-plane connect failed: %s",
					    w->index, w->name, strerror(-rc));
		}
		w->state = W_CONNECTED;
		connected++;
		if (s->o.tp.backend == TP_BACKEND_VERBS)
			fr_info(LOG_COMP, "worker %d '%s': verbs endpoint connected, device=%s",
				w->index, w->name, worker_device(s, w->index));
		else
			fr_info(LOG_COMP, "worker %d '%s': %s endpoint connected", w->index,
				w->name, tp_backend_name(s->o.tp.backend));
	}
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static int solve_placement(struct co_server *s, struct fr_error *err)
{
	int n_moe = model_n_moe_layers(s->cfg), n_exp = s->cfg->n_routed_experts;
	struct co_placement *p = NULL;
	double *load = NULL;
	int *slots, rc;
	long total = 0;

	slots = calloc((size_t)s->o.workers, sizeof(*slots));
	if (!slots)
		return fr_error_set(err, -ENOMEM, "out of memory");
	for (int i = 0; i < s->o.workers; i++) {
		slots[i] = (int)s->workers[i].slot_capacity;
		total += slots[i];
	}
	if (total < n_exp) {
		rc = fr_error_set(err, -EINVAL, "impossible placement: the %d workers offer %ld slots "
				  "per MoE layer, the model has %d routed experts (raise the workers' "
				  "slots or add workers)", s->o.workers, total, n_exp);
		goto out;
	}
	if (s->load_profile) {
		struct co_load_profile lp = { 0 };
		if ((rc = co_load_profile_read(s->load_profile, n_moe, n_exp, &lp, err)) < 0)
			goto out;
		load = lp.load; /* taken over: freed below */
	}
	struct co_place_problem pb = { .n_layers = n_moe, .n_experts = n_exp,
				       .n_workers = s->o.workers, .slots = slots, .load = load };
	struct co_place_opts po = { .min_distinct = s->o.min_distinct };
	if ((rc = co_place_solve(&pb, &po, NULL, &p, err)) < 0) {
		fr_error_prefix(err, rc, "impossible placement");
		goto out;
	}
	struct co_place_stats *st = calloc((size_t)n_moe, sizeof(*st));
	if (st && co_place_evaluate(p, load, st) == 0) {
		double worst = 1.0;
		for (int l = 0; l < n_moe; l++)
			worst = FR_MIN(worst, st[l].balancedness);
		fr_info(LOG_COMP, "placement: %ld slots per layer for %d experts on %d workers, "
			"worst layer balancedness %.3f (%s profile)", total, n_exp, s->o.workers, worst,
			load ? "measured" : "uniform");
	}
	free(st);
	pthread_mutex_lock(&s->mu);
	s->place = p;
	s->epoch = 1;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	p = NULL;
	rc = 0;
out:
	if (rc < 0) {
		pthread_mutex_lock(&s->mu);
		snprintf(s->place_err, sizeof(s->place_err), "%s", err->msg);
		pthread_cond_broadcast(&s->cv);
		pthread_mutex_unlock(&s->mu);
	}
	co_place_destroy(p);
	free(load);
	free(slots);
	return rc;
}

static int wait_loaded(struct co_server *s, struct fr_error *err)
{
	struct timespec dl;
	int rc = 0;

	fr_deadline_ms(&dl, s->o.join_timeout_ms);
	pthread_mutex_lock(&s->mu);
	for (;;) {
		int loaded = 0;
		for (int i = 0; i < s->o.workers; i++)
			loaded += s->workers[i].state == W_LOADED;
		if (loaded == s->o.workers)
			break;
		/* A worker that fails to load (say, its checkpoint lacks a tensor) exits, which
		 * closes its endpoint: see that instead of waiting out the timeout. */
		for (int i = 0; i < s->o.workers; i++) {
			struct srv_worker *w = &s->workers[i];
			if (w->state != W_LOADED && tp_ep_status(w->ep) < 0) {
				rc = fr_error_set(err, -ECONNRESET, "worker %d '%s' left before loading "
						  "its slots (see its log)", i, w->name);
				goto out;
			}
		}
		if (s->stop) {
			rc = fr_error_set(err, -ECANCELED, "stopped while workers loaded");
			goto out;
		}
		if (fr_deadline_passed(&dl)) {
			rc = fr_error_set(err, -ETIMEDOUT, "only %d of %d workers loaded their slots "
					  "within %d ms", loaded, s->o.workers, s->o.join_timeout_ms);
			goto out;
		}
		pthread_mutex_unlock(&s->mu);
		/* Poll the transport so endpoint failures surface (this thread owns it). */
		struct tp_event ev[8];
		(void)tp_wait_many(s->tp, s->n_tp, ev, 8, 100);
		pthread_mutex_lock(&s->mu);
	}
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int co_server_start(struct co_server *s, struct fr_error *err)
{
	int n_moe = model_n_moe_layers(s->cfg), rc;
	struct tp_ep **eps = NULL;
	struct tp_mem **recv = NULL;

	if ((rc = wait_joins(s, err)) < 0 || (rc = solve_placement(s, err)) < 0 ||
	    (rc = wait_loaded(s, err)) < 0)
		goto fail;
	eps = calloc((size_t)s->o.workers, sizeof(*eps));
	recv = calloc((size_t)s->o.workers, sizeof(*recv));
	if (!eps || !recv) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < s->o.workers; i++) {
		eps[i] = s->workers[i].ep;
		recv[i] = s->workers[i].recv;
	}
	if ((rc = co_load_create(n_moe, s->cfg->n_routed_experts, s->o.workers, s->place->slots,
				 s->o.load_window, &s->load, err)) < 0)
		goto fail;
	const char **names = calloc((size_t)s->o.workers, sizeof(*names));
	if (!names) {
		rc = fr_error_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (int i = 0; i < s->o.workers; i++)
		names[i] = s->workers[i].name;
	struct co_remote_opts ro = { .ring = s->ring, .wire = s->o.wire,
				     .timeout_ms = s->o.expert_timeout_ms, .load = s->load,
				     .epoch = (uint32_t)s->epoch, .names = names };
	rc = co_moe_remote_create(s->cfg, s->tp, s->n_tp, s->o.workers, eps, recv, s->place, &ro,
				  &s->moe, err);
	free(names);
	if (rc < 0)
		goto fail;
	struct co_engine_opts eo = { .max_seqs = s->o.max_seqs, .max_ctx = s->max_ctx,
				     .max_batch = s->o.max_batch,
				     .micro_batches = s->o.micro_batches,
				     .kv_blocks = s->o.kv_blocks };
	if ((rc = co_engine_create(s->w, s->moe, &eo, &s->engine, err)) < 0)
		goto fail;
	struct co_sched_opts so = {
		.max_seqs = s->o.max_seqs, .max_batch = s->o.max_batch,
		.prefill_chunk = s->o.prefill_chunk, .max_ctx = s->max_ctx,
		.kv_blocks = co_engine_kv_blocks(s->engine),
		.block_size = co_engine_block_size(s->engine),
		.queue_max = s->o.queue_max, .vocab = s->cfg->vocab_size,
		.eos = s->cfg->eos_token_id, .stream_buffer = s->o.stream_buffer,
	};
	struct co_sched_engine se = { .forward = sched_forward, .release = sched_release, .ctx = s };
	if ((rc = co_sched_create(&so, &se, &s->sched, err)) < 0)
		goto fail;
	s->serving.sched = s->sched;
	pthread_mutex_lock(&s->mu);
	s->status = S_SERVING;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	fr_info(LOG_COMP, "serving: %d workers, %d micro-batches of up to %d tokens, %s wire, "
		"epoch %llu; %d sequences, KV pool of %d blocks x %d positions", s->o.workers,
		s->o.micro_batches, FR_DIV_ROUND_UP(s->o.max_batch, s->o.micro_batches),
		s->o.wire == FP_DTYPE_F32 ? "f32" : "bf16", (unsigned long long)s->epoch,
		s->o.max_seqs, co_engine_kv_blocks(s->engine), co_engine_block_size(s->engine));
	free(eps);
	free(recv);
	return 0;
fail:
	free(eps);
	free(recv);
	pthread_mutex_lock(&s->mu);
	if (s->place_err[0]) {
		/* Let the workers hear why (their GetAssignment is waiting) before going. */
		struct timespec dl;
		/* generous: a worker still connecting on a loaded host asks late */
		fr_deadline_ms(&dl, 10000);
		for (;;) {
			int told = 0;
			for (int i = 0; i < s->n_joined; i++)
				told += s->workers[i].told_place_err;
			if (told == s->n_joined || fr_deadline_passed(&dl))
				break;
			pthread_cond_timedwait(&s->cv, &s->mu, &dl);
		}
	}
	fail_cluster_locked(s, err->msg);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/* Workers whose endpoint failed while no step needed them (found between steps): their
 * slots leave the routing table when the other workers hold replicas of all of them, and
 * the cluster serves on without them. Otherwise the loss is logged and left to the first
 * step that needs the worker, which fails the cluster naming it. Called without mu. */
static void check_workers(struct co_server *s)
{
	int dead[64], n;
	struct fr_error err = { { 0 } };

	pthread_mutex_lock(&s->engine_mu);
	n = co_moe_remote_check(&s->moe, 1, dead, (int)FR_ARRAY_SIZE(dead));
	if (n <= 0) {
		pthread_mutex_unlock(&s->engine_mu);
		return;
	}
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < n; i++) {
		struct srv_worker *w = &s->workers[dead[i]];
		const struct co_placement *p = s->place;
		int cnt = 0;
		if (w->state == W_RELEASED) {
			fr_info(LOG_COMP, "worker %d '%s' left (it had handed its slots back)",
				w->index, w->name);
			w->state = W_FAILED;
			continue;
		}
		int32_t *layer = malloc(sizeof(*layer) * (size_t)(p->n_layers * p->slots[w->index] + 1));
		int32_t *slot = malloc(sizeof(*slot) * (size_t)(p->n_layers * p->slots[w->index] + 1));
		if (!layer || !slot) {
			fr_err(LOG_COMP, "worker %d '%s' is gone; out of memory taking its slots out "
			       "of service", w->index, w->name);
		} else {
			for (int l = 0; l < p->n_layers; l++)
				for (int j = 0; j < p->slots[w->index]; j++)
					if (co_place_expert_at(p, l, w->index, j) != CO_PLACE_EMPTY) {
						layer[cnt] = l;
						slot[cnt++] = j;
					}
			if (co_place_unload(s->place, w->index, cnt, layer, slot, &err) >= 0) {
				fr_warn(LOG_COMP, "worker %d '%s' is gone: its %d slots are out of "
					"service, replicas on the other workers serve its experts",
					w->index, w->name, cnt);
				w->state = W_FAILED;
				snprintf(w->fail, sizeof(w->fail), "gone, slots out of service");
			} else {
				fr_err(LOG_COMP, "worker %d '%s' is gone and its slots cannot leave "
				       "service (%s): the next request that needs it fails the cluster",
				       w->index, w->name, err.msg);
			}
		}
		free(layer);
		free(slot);
	}
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
}

int co_server_wait(struct co_server *s, struct fr_error *err)
{
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	while (!s->stop && s->status != S_FAILED) {
		struct timespec tick;
		fr_deadline_ms(&tick, 200);
		pthread_cond_timedwait(&s->cv, &s->mu, &tick);
		if (s->status == S_SERVING && !s->stop) {
			pthread_mutex_unlock(&s->mu);
			check_workers(s);
			pthread_mutex_lock(&s->mu);
		}
		/* Heartbeats: a worker silent for three intervals is reported (its endpoint
		 * failure, when it comes, is handled by check_workers or fails the cluster). */
		uint64_t now = fr_now_ns();
		for (int i = 0; i < s->n_joined; i++) {
			struct srv_worker *w = &s->workers[i];
			uint64_t silent = now - w->last_heartbeat_ns;
			if (w->state == W_LOADED && silent > 3ull * s->o.heartbeat_ms * 1000000ull) {
				fr_warn(LOG_COMP, "worker %d '%s' missed heartbeats for %llu ms", i,
					w->name, (unsigned long long)(silent / 1000000));
				w->last_heartbeat_ns = now;
			}
		}
	}
	if (s->status == S_FAILED)
		rc = fr_error_set(err, -EIO, "%s", s->fail);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int co_server_forward(struct co_server *s, int n, const int32_t *tokens, const int32_t *seq,
		      const int32_t *pos, const bool *want_logits, float *logits)
{
	char why[512];

	pthread_mutex_lock(&s->mu);
	bool ok = s->status == S_SERVING;
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return -EAGAIN;
	for (int i = 0; i < n; i++)
		if (pos[i] == 0) {
			pthread_mutex_lock(&s->engine_mu);
			co_engine_reset_seq(s->engine, seq[i]);
			pthread_mutex_unlock(&s->engine_mu);
		}
	return engine_step(s, n, tokens, seq, pos, want_logits, NULL, logits, why, sizeof(why));
}

void co_server_prof(struct co_server *s, uint64_t ret_ns[])
{
	pthread_mutex_lock(&s->engine_mu);
	if (s->engine) {
		co_engine_prof(s->engine, ret_ns);
		co_engine_prof_reset(s->engine);
	}
	pthread_mutex_unlock(&s->engine_mu);
}

void co_server_stop(struct co_server *s)
{
	s->stop = 1;
}

void co_server_destroy(struct co_server *s)
{
	if (!s)
		return;
	/* Drain: no new requests; running ones finish (bounded), then the workers are told
	 * to drain by their next heartbeat. */
	pthread_mutex_lock(&s->mu);
	if (s->status == S_SERVING || s->status == S_STARTING)
		s->status = S_DRAINING;
	pthread_mutex_unlock(&s->mu);
	bool served = false;
	if (s->sched) {
		struct co_sched_stats st;
		uint64_t end = fr_now_ns() + 10000000000ull;
		for (;;) {
			co_sched_stats(s->sched, &st);
			if ((!st.running && !st.queued) || fr_now_ns() > end)
				break;
			struct timespec ts = { .tv_nsec = 20 * 1000000L };
			nanosleep(&ts, NULL);
		}
		if (st.running || st.queued)
			fr_warn(LOG_COMP, "%d request(s) still running after 10 s: cancelling them",
				st.running + st.queued);
		served = st.finished > 0;
	}
	pthread_mutex_lock(&s->mu);
	int hb = s->o.heartbeat_ms;
	bool any = s->n_joined > 0 && s->status != S_FAILED;
	pthread_mutex_unlock(&s->mu);
	if (served && s->rpc) {
		/* Handlers that just returned still have their final status in flight; let it
		 * reach the clients before the server cancels what is left. */
		struct timespec ts = { .tv_nsec = 200 * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (any && hb > 0 && s->rpc) {
		/* Give the workers one heartbeat to hear "drain" before their endpoints close. */
		struct timespec ts = { .tv_sec = (hb + 100) / 1000, .tv_nsec = (long)((hb + 100) % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	/* Handlers first (they hold requests), then the scheduler (it drives the engine). */
	rpc_server_destroy(s->rpc);
	rpc_server_destroy(s->rpc_cluster);
	co_sched_destroy(s->sched);
	co_engine_destroy(s->engine);
	co_moe_destroy(&s->moe);
	co_load_destroy(s->load);
	for (int i = 0; s->workers && i < s->n_joined; i++) {
		tp_ep_destroy(s->workers[i].ep);
		tp_mem_free(s->workers[i].recv);
		rpc_auth_replay_destroy(s->workers[i].replay);
	}
	for (int d = 0; d < s->n_tp; d++)
		tp_context_destroy(s->tp[d]);
	for (int d = 0; d < TP_WAIT_MANY_MAX; d++)
		free(s->tp_dev[d]);
	co_place_destroy(s->place);
	rpc_auth_replay_destroy(s->replay);
	rpc_auth_challenges_destroy(s->challenges);
	model_weights_free(s->w);
	model_ckpt_close(s->ck);
	free(s->workers);
	model_tokenizer_free(s->tok);
	free(s->model_path);
	free(s->listen);
	free(s->load_profile);
	free(s->secret);
	free(s->admin_token);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->engine_mu);
	free(s);
}
