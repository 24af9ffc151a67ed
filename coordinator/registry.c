/* SPDX-License-Identifier: Apache-2.0 */
/*
 * registry.c - the Internal service: the workers' Challenge and Join (authenticated by the
 * cluster secret, bound to a single-use challenge), then their session-signed Heartbeat,
 * GetAssignment, LoadExperts, UnloadExperts and ReportStats (internal.proto, rpc/auth.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/server-internal.h"
#include "rpc/internal.pb-c.h"

#define LOG_COMP "coordinator"

/* ---- Internal service --------------------------------------------------------------------- */

/* Whether the cluster takes no more workers; *st is then the refusal. Called with s->mu
 * held: once before the checkpoint checks (a full cluster says so first), once where the
 * worker is added. */
static bool join_full(struct co_server *s, struct rpc_call *call, grpc_status_code *st)
{
	if (s->status == S_STARTING && s->n_joined < s->o.workers)
		return false;
	/* While serving, a new worker joins (the placement grows by one worker between two
	 * steps), but not while a rebalance runs: it asks again. */
	if (s->status == S_SERVING && s->n_joined < s->workers_cap) {
		if (!s->rebalancing)
			return false;
		*st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "a rebalance is running; "
				    "join again when it is done");
		return true;
	}
	*st = rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
			    "cluster is full (%d of %d workers joined, %s)", s->n_joined,
			    s->o.workers, co__status_name(s->status));
	return true;
}

/* A worker of this name that died while the cluster serves: it may come back (same index,
 * a new session and endpoint). -1 if none. Called with s->mu held. */
static int rejoin_index(const struct co_server *s, const char *name)
{
	if (s->status != S_SERVING)
		return -1;
	for (int i = 0; i < s->n_joined; i++)
		if (s->workers[i].state == W_FAILED && strcmp(s->workers[i].name, name) == 0)
			return i;
	return -1;
}

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
	pthread_mutex_lock(&s->mu);
	bool full = rejoin_index(s, name) < 0 && join_full(s, call, &st);
	pthread_mutex_unlock(&s->mu);
	if (full)
		return st;
	if (r->hidden_size != (uint32_t)s->cfg->hidden_size ||
	    r->n_routed_experts != (uint32_t)s->cfg->n_routed_experts) {
		fr_warn(LOG_COMP, "refused join of worker '%s': checkpoint shape differs", name);
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "worker checkpoint has hidden_size %u and %u routed experts, the "
				     "coordinator's has %d and %d",
				     r->hidden_size, r->n_routed_experts, s->cfg->hidden_size,
				     s->cfg->n_routed_experts);
	}
	if (s->n_fp && r->n_expert_fingerprints != s->n_fp)
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "worker checkpoint fingerprint has %zu experts, the "
				     "coordinator's %zu", r->n_expert_fingerprints, s->n_fp);
	for (size_t i = 0; i < s->n_fp && r->n_expert_fingerprints == s->n_fp; i++) {
		if (r->expert_fingerprints[i] == s->fp[i])
			continue;
		int E = s->cfg->n_routed_experts, layer = model_moe_layer(s->cfg, (int)(i / (size_t)E));
		fr_warn(LOG_COMP, "refused join of worker '%s': its checkpoint differs at "
			"model.layers.%d.mlp.experts.%d", name, layer, (int)(i % (size_t)E));
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     "worker checkpoint differs from the coordinator's: tensors of "
				     "model.layers.%d.mlp.experts.%d (gate/up/down_proj) have the same "
				     "shape but other weights; every worker needs a copy of the same "
				     "checkpoint", layer, (int)(i % (size_t)E));
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
	int back = rejoin_index(s, name);
	if (back < 0 && join_full(s, call, &st))
		goto unlock;
	if (back >= 0 && r->slot_capacity != s->workers[back].slot_capacity) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "worker '%s' comes back with %u slots per layer, it had %u: "
				   "start it with --slots %u", name, r->slot_capacity,
				   s->workers[back].slot_capacity, s->workers[back].slot_capacity);
		goto unlock;
	}
	for (int i = 0; i < s->n_joined; i++)
		if (i != back && strcmp(s->workers[i].name, name) == 0) {
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
		s->ring = (struct fp_ring){ .slots = r->ring_slots, .tokens = r->ring_tokens,
					    .hidden = (uint32_t)s->cfg->hidden_size,
					    .max_pairs = (uint32_t)s->cfg->n_routed_experts };
		s->ring_set = true;
	}
	if (back >= 0) {
		/* Its old endpoint stays until the new one replaces it (co__join_tick). */
		idx = back;
		w = &s->workers[idx];
		rpc_auth_replay_destroy(w->replay);
		w->replay = NULL;
		w->rejoin = true;
		w->grow = !s->place || idx >= s->place->n_workers; /* it never got that far */
		w->acked_epoch = 0;
		w->fail[0] = '\0';
		fr_info(LOG_COMP, "worker %d '%s' is back: joining again", idx, name);
	} else {
		idx = s->n_joined++;
		w = &s->workers[idx];
		memset(w, 0, sizeof(*w));
		w->index = idx;
		snprintf(w->name, sizeof(w->name), "%s", name);
		if (s->status == S_SERVING) {
			w->rejoin = w->grow = true;
			fr_info(LOG_COMP, "worker %d '%s' joins the serving cluster", idx, name);
		}
	}
	w->state = W_JOINING;
	w->slot_capacity = r->slot_capacity;
	w->blob_len = r->transport_addresses[0]->blob.len;
	memcpy(w->blob, r->transport_addresses[0]->blob.data, w->blob_len);
	w->last_heartbeat_ns = fr_now_ns();
	rpc_call_peer(call, w->addr, sizeof(w->addr));
	w->memory_bytes = r->host_memory_bytes;
	w->staging_room = r->staging_limited ? (int32_t)FR_MIN(r->staging_slots, INT32_MAX) : -1;
	memcpy(w->session_key, key, sizeof(key));
	w->replay = replay;
	pthread_cond_broadcast(&s->cv);
	fr_deadline_ms(&dl, 10000);
	while (w->state == W_JOINING && (s->status == S_STARTING || w->rejoin) &&
	       s->status != S_FAILED && !s->stop && !fr_deadline_passed(&dl))
		pthread_cond_timedwait(&s->cv, &s->mu, &dl);
	if (w->state != W_READY) {
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "join of '%s' failed: %s", name,
				   w->state == W_FAILED ? w->fail : "coordinator did not set it up");
		if (w->rejoin && w->state == W_JOINING) { /* it may try again */
			w->state = W_FAILED;
			w->rejoin = false;
			snprintf(w->fail, sizeof(w->fail), "its join timed out");
		}
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
	char room[64] = "";
	if (w->staging_room >= 0)
		snprintf(room, sizeof(room), ", staging room %d expert copies", w->staging_room);
	fr_info(LOG_COMP, "worker %d '%s' joined: %u slots per layer, ring %u x %u%s", idx,
		w->name, w->slot_capacity, r->ring_slots, r->ring_tokens, room);
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
		/* A newer epoch while a rebalance loads: the worker fetches and stages it. */
		resp.epoch = s->pending ? s->pending_epoch : s->epoch;
		resp.drain = s->status == S_DRAINING || s->status == S_FAILED || s->stop;
		resp.fenced = w->state == W_FAILED && !w->rejoin;
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
				   "workers joined)", co__status_name(s->status), s->n_joined, s->o.workers);
		goto unlock;
	}
	/* While a rebalance loads, the slots of the coming epoch. */
	const struct co_placement *p = s->pending ? s->pending : s->place;
	if (w->index >= p->n_workers) { /* joined while serving: the placement grows first */
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "placement not ready for worker "
				   "%d yet", w->index);
		goto unlock;
	}
	uint64_t epoch = s->pending ? s->pending_epoch : s->epoch;
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
	resp.epoch = epoch;
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
	bool staging = s->pending && r->epoch == s->pending_epoch;
	if (!s->place || (r->epoch != s->epoch && !staging)) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				   "epoch %llu is not the one in force (%llu)%s",
				   (unsigned long long)r->epoch, (unsigned long long)s->epoch,
				   s->pending ? " nor the one being loaded" : "");
		goto unlock;
	}
	const struct co_placement *p = staging ? s->pending : s->place;
	if (w->index >= p->n_workers) {
		st = rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "no slots for worker %d "
				   "in epoch %llu", w->index, (unsigned long long)r->epoch);
		goto unlock;
	}
	size_t want = (size_t)co_place_filled(p, w->index); /* a drained worker holds none */
	if (r->n_slots != want) {
		st = rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				   "loaded %zu slots, the assignment has %zu", r->n_slots, want);
		goto unlock;
	}
	if ((st = check_slots(call, p, w->index, r->slots, r->n_slots)) != GRPC_STATUS_OK)
		goto unlock;
	if (w->state == W_CONNECTED) {
		w->state = W_LOADED;
		w->last_heartbeat_ns = fr_now_ns(); /* its heartbeats start now */
	}
	w->acked_epoch = FR_MAX(w->acked_epoch, r->epoch);
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
	co__engine_lock(s);
	pthread_mutex_lock(&s->mu);
	if (!(w = authed_worker(s, call, &r->base, r->worker_index, &st)))
		goto unlock;
	if (s->stop) { /* the whole cluster is going: nothing to hand back to */
		st = rpc_call_fail(call, GRPC_STATUS_ABORTED, "the coordinator is stopping");
		goto unlock;
	}
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
	/* Steps hold engine_mu back to back (Admin.BenchEngine, a busy scheduler) and a mutex
	 * is not fair: waiting for it held a report, and the heartbeat its worker sends next,
	 * for seconds. So a report that finds a step running is staged for that step to fold
	 * in (co__fold_stats), and the answer goes out at once. */
	if (pthread_mutex_trylock(&s->engine_mu) == 0) {
		co__fold_stats(s);
		if (s->load)
			for (size_t i = 0; i < r->n_layers; i++)
				co_load_record_time(s->load, w->index, (int)r->layers[i]->layer,
						    r->layers[i]->busy_ns);
		pthread_mutex_unlock(&s->engine_mu);
	} else {
		pthread_mutex_lock(&s->mu);
		if (!w->stats_ns)
			w->stats_ns = calloc((size_t)n_moe, sizeof(*w->stats_ns));
		if (w->stats_ns) { /* else this report is lost: load figures, not state */
			for (size_t i = 0; i < r->n_layers; i++) {
				uint64_t *t = &w->stats_ns[r->layers[i]->layer];
				*t += FR_MIN(r->layers[i]->busy_ns, UINT64_MAX - *t); /* as the load */
			}
			w->stats_due = true;
			atomic_store(&s->stats_staged, true);
		}
		pthread_mutex_unlock(&s->mu);
	}
	rpc_call_send(call, &resp.base);
	return st;
}

int co__registry_register(struct co_server *s, struct rpc_server *srv, struct fr_error *err)
{
	static const struct {
		const char *path;
		const ProtobufCMessageDescriptor *desc;
		rpc_handler_fn fn;
	} m[] = {
		{ RPC_M_CHALLENGE, &ferry__v1__challenge_request__descriptor, on_challenge },
		{ RPC_M_JOIN, &ferry__v1__join_request__descriptor, on_join },
		{ RPC_M_HEARTBEAT, &ferry__v1__heartbeat_request__descriptor, on_heartbeat },
		{ RPC_M_GET_ASSIGNMENT, &ferry__v1__get_assignment_request__descriptor,
		  on_get_assignment },
		{ RPC_M_LOAD_EXPERTS, &ferry__v1__load_experts_request__descriptor, on_load_experts },
		{ RPC_M_UNLOAD_EXPERTS, &ferry__v1__unload_experts_request__descriptor,
		  on_unload_experts },
		{ RPC_M_REPORT_STATS, &ferry__v1__report_stats_request__descriptor, on_report_stats },
	};
	int rc;

	for (size_t i = 0; i < FR_ARRAY_SIZE(m); i++)
		if ((rc = rpc_server_add_method(srv, m[i].path, RPC_METHOD_UNARY, m[i].desc,
						m[i].fn, s, err)) < 0)
			return rc;
	return 0;
}
