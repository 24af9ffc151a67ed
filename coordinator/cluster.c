/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cluster.c - cluster formation: the transport contexts (one per device), an endpoint for
 * each worker that joins (created and connected on the thread that calls
 * co_server_start(), never on a gRPC handler's), the first placement over the workers'
 * slots, and the wait for every worker to load its slots; while serving, the workers that
 * join later (co__join_tick: returning ones and new ones).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/server-internal.h"

#define LOG_COMP "coordinator"

int co__open_transport(struct co_server *s, const struct co_server_opts *o,
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

const char *co__worker_device(const struct co_server *s, int i)
{
	const char *d = s->tp_dev[i % s->n_tp];
	return d ? d : "auto";
}

/* Creates the endpoint of a joining worker (this thread owns the transport). */
int co__setup_endpoint(struct co_server *s, struct srv_worker *w, struct fr_error *err)
{
	size_t slot = fp_ring_combine_slot(&s->ring);
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
		rc = co__setup_endpoint(s, w, err);
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
				w->index, w->name, co__worker_device(s, w->index));
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

int co__form_cluster(struct co_server *s, struct fr_error *err)
{
	int rc;

	if ((rc = wait_joins(s, err)) < 0 || (rc = solve_placement(s, err)) < 0)
		return rc;
	return wait_loaded(s, err);
}

/* A new worker joined while serving (its endpoint made): the placement, the load accounting
 * and the data path grow by one worker, whose slots are all out of service. Under
 * engine_mu. */
static int grow(struct co_server *s, struct srv_worker *w, struct fr_error *err)
{
	struct co_placement *q = NULL, *old = NULL;
	struct co_load *nl = NULL, *old_load = NULL;
	int rc;

	if (w->index != s->place->n_workers)
		return fr_error_set(err, -EINVAL, "worker %d joins, the placement has %d workers",
				    w->index, s->place->n_workers);
	if ((rc = co_place_add_worker(s->place, (int)w->slot_capacity, &q, err)) < 0)
		return rc;
	if ((rc = co_load_create(model_n_moe_layers(s->cfg), s->cfg->n_routed_experts,
				 q->n_workers, q->slots, s->o.load_window, &nl, err)) < 0)
		goto fail;
	if ((rc = moe_remote_add_worker(&s->moe, w->ep, w->recv, w->name, nl)) != w->index) {
		rc = fr_error_set(err, rc < 0 ? rc : -EINVAL, "the data path cannot take it: %s",
				  strerror(rc < 0 ? -rc : EINVAL));
		goto fail;
	}
	if ((rc = moe_remote_set_placement(&s->moe, q, (uint32_t)s->epoch)) < 0) {
		/* cannot happen (same epoch, one more worker): the cluster is inconsistent */
		fr_error_set(err, rc, "the data path refused the grown placement: %s",
			     strerror(-rc));
		pthread_mutex_lock(&s->mu);
		co__fail_cluster_locked(s, err->msg);
		pthread_mutex_unlock(&s->mu);
		return rc; /* q and nl are referenced by the data path now */
	}
	pthread_mutex_lock(&s->mu);
	old = s->place;
	s->place = q;
	old_load = s->load;
	(void)co_load_carry_totals(nl, old_load); /* same shape, one more worker */
	s->load = nl;
	pthread_mutex_unlock(&s->mu);
	co_place_destroy(old);
	co_load_destroy(old_load);
	w->grow = false;
	fr_info(LOG_COMP, "worker %d '%s': the placement has %d workers now", w->index, w->name,
		q->n_workers);
	return 0;
fail:
	co_place_destroy(q);
	co_load_destroy(nl);
	return rc;
}

void co__join_tick(struct co_server *s)
{
	struct fr_error err = { { 0 } };
	struct srv_worker *w = NULL;

	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n_joined && !w; i++)
		if (s->workers[i].state == W_JOINING && s->workers[i].rejoin)
			w = &s->workers[i];
	pthread_mutex_unlock(&s->mu);
	if (!w)
		return;
	/* The transport belongs to whoever holds engine_mu: between two steps. */
	co__engine_lock(s);
	struct tp_ep *old_ep = w->ep;
	struct tp_mem *old_recv = w->recv;
	bool fresh = w->grow;
	int rc = co__setup_endpoint(s, w, &err);
	pthread_mutex_lock(&s->mu);
	w->state = rc < 0 ? W_FAILED : W_READY; /* the Join answers with our address */
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	if (rc == 0 && (rc = tp_ep_connect(w->ep, w->blob, w->blob_len)) < 0)
		fr_error_set(&err, rc, "data-plane connect failed: %s", strerror(-rc));
	if (rc == 0 && w->grow)
		rc = grow(s, w, &err); /* a new worker: its endpoint's region is known now */
	else if (rc == 0 && (rc = moe_remote_replace_worker(&s->moe, w->index, w->ep,
							      w->recv)) < 0)
		fr_error_set(&err, rc, "the data path cannot take it back: %s", strerror(-rc));
	if (rc < 0 && !old_ep && w->ep && w->index < s->place->n_workers) {
		/* a new worker the data path holds already: it stays there, fenced (its
		 * slots are out of service) */
		moe_remote_fence(&s->moe, w->index);
	} else if (rc < 0) {
		if (w->ep != old_ep)
			tp_ep_destroy(w->ep);
		if (w->recv != old_recv)
			tp_mem_free(w->recv);
		w->ep = old_ep;
		w->recv = old_recv;
	} else if (old_ep) {
		tp_ep_destroy(old_ep);
		tp_mem_free(old_recv);
	}
	pthread_mutex_lock(&s->mu);
	w->rejoin = false;
	if (rc < 0) {
		w->state = W_FAILED;
		snprintf(w->fail, sizeof(w->fail), "rejoin failed: %s", err.msg);
		fr_warn(LOG_COMP, "worker %d '%s': rejoin failed: %s", w->index, w->name, err.msg);
	} else {
		/* Its slots left service when it died: it starts drained, and the next
		 * automatic step gives it slots back (co__rebalance with undrain). */
		/* It may have loaded (its empty table) while we connected. */
		w->state = w->acked_epoch > 0 ? W_LOADED : W_CONNECTED;
		/* With its slots still in the table (it held the only copy of some experts) it
		 * loads them again; with none, it is undrained. */
		w->drained = co_place_filled(s->place, w->index) == 0;
		w->undrain_due = w->drained;
		w->fresh = fresh;
		fr_info(LOG_COMP, "worker %d '%s': %s endpoint connected%s", w->index, w->name,
			tp_backend_name(s->o.tp.backend), fresh ? "" : " again");
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_unlock(&s->engine_mu);
}
