/* SPDX-License-Identifier: Apache-2.0 */
/*
 * agent.c - ferry-worker: control plane (Join, GetAssignment, LoadExperts, Heartbeat,
 * ReportStats over gRPC) around the data-plane server (moe/serve.c).
 *
 * Threads: the caller of wk_agent_run() owns the transport and serves frames; a control
 * thread heartbeats and reports load every heartbeat interval, and stops the server when
 * the coordinator asks to drain or stops answering for long.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "rpc/auth.h"
#include "rpc/internal.pb-c.h"
#include "rpc/rpc.h"
#include "worker/worker.h"
#include "moe/gpu.h"
#include "moe/moe.h"
#include "metrics/prom.h"

#define LOG_COMP "worker"
#define RPC_TIMEOUT_MS 5000
#define UNLOAD_TIMEOUT_MS 15000 /* waits for the step in flight on the coordinator */

struct wk_agent {
	struct wk_agent_opts o;
	char *name, *coordinator, *model_path;
	uint8_t *secret;
	struct model_ckpt *ck;
	const struct model_config *cfg;
	struct tp_context *tp;
	struct tp_mem *recv;
	struct tp_ep *ep;
	/* [compute] frames = device: the combine ring there too (the server's), and on a GPU
	 * the two rings' device memory and dma-bufs (recv's [0], dev_send's [1]) */
	struct tp_mem *dev_send;
	void *ring_dev[2];
	int ring_fd[2];
	struct fp_ring ring;
	struct rpc_channel *ch;
	struct moe_slots *slots;
	struct moe_server *srv;
	const struct moe_gpu_module *gpu_mod; /* [compute] device = cuda:N: the module */
	struct moe_gpu *gpu;                  /* ... and its device; NULL on the CPU */
	void *twin;                           /* [compute] device = twin: its context */
	void *pinned[MOE_SERVER_HOST_REGIONS]; /* the server's host regions pinned for it */
	int n_pinned;

	uint32_t index;
	uint8_t session_key[RPC_AUTH_KEY_LEN]; /* signs every call after Join */
	uint64_t epoch;
	uint32_t heartbeat_ms;
	enum fp_dtype wire;

	Ferry__V1__GetAssignmentResponse *assign; /* the slots we hold */
	uint64_t *fp;                  /* [moe layers][experts] checkpoint fingerprint */
	size_t n_fp;

	pthread_t ctl;
	bool ctl_started;
	atomic_bool ctl_quit;
	atomic_bool graceful;   /* the control thread handles stop (hands the slots back first) */
	atomic_bool drained;
	atomic_bool fenced;            /* the coordinator gave up on us: leave, to rejoin */
	volatile sig_atomic_t stop;
	/* For /metrics (another thread): the server once serving, the slots held, the epoch. */
	_Atomic(struct moe_server *) srv_pub;
	atomic_uint_fast64_t m_slots, m_epoch, t_start_ns;
};

#define DMABUF_ALIGN (2u << 20) /* GPU memory exported as a dma-buf: whole 2 MiB pages */

/* A ring of bytes in GPU memory, registered with the RDMA device through its dma-buf
 * (GPUDirect RDMA): ring i of a->ring_dev / a->ring_fd. why says what failed. */
static int gpu_ring(struct wk_agent *a, int i, size_t bytes, struct tp_mem **ret, char *why,
		    size_t why_len)
{
	struct fr_error err = { { 0 } };
	size_t len = (bytes + DMABUF_ALIGN - 1) / DMABUF_ALIGN * DMABUF_ALIGN;
	int rc;

	if ((rc = a->gpu_mod->dmabuf_alloc(a->gpu, len, &a->ring_dev[i], &a->ring_fd[i], &err)) < 0) {
		snprintf(why, why_len, "%s", err.msg);
		return rc;
	}
	if ((rc = tp_mem_register_dmabuf(a->tp, a->ring_fd[i], 0, len, a->ring_dev[i], ret)) < 0)
		snprintf(why, why_len, "the RDMA device cannot register GPU memory "
			 "(ibv_reg_dmabuf_mr: %s)", strerror(-rc));
	return rc;
}

/* Both rings in device memory: on a GPU through GPUDirect RDMA (verbs only), on the twin
 * in host memory that only the device ops touch. */
static int device_rings(struct wk_agent *a, size_t recv_bytes, size_t send_bytes, char *why,
			size_t why_len)
{
	if (a->twin) {
		int rc = tp_mem_alloc(a->tp, recv_bytes, &a->recv);
		if (rc == 0)
			rc = tp_mem_alloc(a->tp, send_bytes, &a->dev_send);
		if (rc < 0)
			snprintf(why, why_len, "%s", strerror(-rc));
		return rc;
	}
	enum tp_backend b = tp_context_backend(a->tp);
	if (b != TP_BACKEND_VERBS) {
		snprintf(why, why_len, "the %s transport has no GPUDirect RDMA (verbs has)",
			 tp_backend_name(b));
		return -EOPNOTSUPP;
	}
	int rc = gpu_ring(a, 0, recv_bytes, &a->recv, why, why_len);
	return rc < 0 ? rc : gpu_ring(a, 1, send_bytes, &a->dev_send, why, why_len);
}

/* The rings, in host or device memory, and the GPU memory behind them (after the endpoint
 * is gone). */
static void rings_free(struct wk_agent *a)
{
	tp_mem_free(a->recv);
	tp_mem_free(a->dev_send);
	a->recv = a->dev_send = NULL;
	for (int i = 0; i < 2; i++) {
		if (a->ring_dev[i])
			a->gpu_mod->dmabuf_free(a->gpu, a->ring_dev[i], a->ring_fd[i]);
		a->ring_dev[i] = NULL;
		a->ring_fd[i] = -1;
	}
}

/* The data-plane rings and the endpoint over the receive ring: in device memory when
 * [compute] frames asks for it (device) or allows it and it works (auto), else in host
 * memory; the log says which, and why not device memory. */
static int rings_create(struct wk_agent *a, size_t recv_bytes, size_t send_bytes,
			struct fr_error *err)
{
	bool on_dev = a->gpu || a->twin;
	char why[300] = "";
	int rc;

	if (on_dev && a->o.frames != WK_FRAMES_HOST &&
	    (a->o.frames == WK_FRAMES_DEVICE || a->gpu)) { /* twin: device only when asked */
		if ((rc = device_rings(a, recv_bytes, send_bytes, why, sizeof(why))) == 0) {
			fr_info("worker", "frames: in %s: the transport writes the tokens there "
				"and sends the partials from there; only frame heads cross to the "
				"host", a->gpu ? "GPU memory (GPUDirect RDMA)"
					       : "the twin's device memory (host memory, reached "
						 "only through the device ops)");
			goto ep;
		}
		rings_free(a);
		if (a->o.frames == WK_FRAMES_DEVICE)
			return fr_error_set(err, rc, "[compute] frames = device: %s", why);
	}
	if ((rc = tp_mem_alloc(a->tp, recv_bytes, &a->recv)) < 0)
		return fr_error_set(err, rc, "cannot allocate the %zu MiB receive ring: %s",
				    recv_bytes >> 20, strerror(-rc));
	if (a->gpu)
		fr_info("worker", "frames: host staging (receive ring in host memory, pinned "
			"below where the driver allows)%s%s", why[0] ? "; GPUDirect RDMA "
			"unavailable: " : "", why);
ep:
	if ((rc = tp_ep_create(a->tp, a->recv, a, &a->ep)) < 0)
		return fr_error_set(err, rc, "cannot create the data-plane endpoint (%zu MiB "
				    "ring): %s", recv_bytes >> 20, strerror(-rc));
	return 0;
}

/* An empty slot table of our size, on our device. */
static int slots_create(struct wk_agent *a, struct moe_slots **ret)
{
	struct moe_slots *t;
	int rc = moe_slots_create(a->cfg, a->o.slots, &t);
	if (rc < 0)
		return rc;
	if ((a->gpu && (rc = moe_slots_use_device(t, a->gpu_mod->ops, a->gpu)) < 0) ||
	    (a->twin && (rc = moe_slots_use_device(t, &moe_dev_twin_ops, a->twin)) < 0)) {
		moe_slots_destroy(t);
		return rc;
	}
	*ret = t;
	return 0;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Bytes of one expert copy (its three matrices). */
static uint64_t expert_bytes(const struct model_config *c)
{
	return 3ull * (uint64_t)c->hidden_size * (uint64_t)c->moe_intermediate_size *
	       kn_dtype_size(c->torch_dtype);
}

/* Live-rebalance room in expert copies, -1 for no limit: the option, else what
 * memory_limit leaves after the slots. */
static int staging_room(const struct wk_agent *a)
{
	uint64_t per = expert_bytes(a->cfg), held;

	if (a->o.staging_slots >= 0)
		return a->o.staging_slots;
	if (!a->o.memory_limit || !per)
		return -1;
	held = (uint64_t)a->o.slots * (uint64_t)model_n_moe_layers(a->cfg);
	return a->o.memory_limit / per > held ?
		       (int)FR_MIN(a->o.memory_limit / per - held, (uint64_t)1 << 30) : 0;
}

/* Slots that fit memory_limit: one slot per MoE layer holds an expert's three matrices. */
static int auto_slots(const struct wk_agent *a)
{
	const struct model_config *c = a->cfg;
	uint64_t per = expert_bytes(c) * (uint64_t)model_n_moe_layers(c);
	uint64_t lim = a->o.memory_limit;

	if (!lim) {
		long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
		lim = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz / 10 * 9 : 0;
	}
	uint64_t n = per ? lim / per : 0;
	return (int)FR_MIN(n, (uint64_t)c->n_routed_experts);
}

int wk_agent_create(const struct wk_agent_opts *o, struct wk_agent **ret, struct fr_error *err)
{
	struct wk_agent *a;
	int rc;

	if (!o->name || !o->coordinator || !o->model_path || o->ring_slots < 1 ||
	    o->ring_tokens < 1 || o->slots < 0 || !o->secret || !o->secret_len)
		return fr_error_set(err, -EINVAL, "worker options out of range");
	a = calloc(1, sizeof(*a));
	if (!a)
		return fr_error_set(err, -ENOMEM, "out of memory");
	a->o = *o;
	a->ring_fd[0] = a->ring_fd[1] = -1;
	a->name = strdup(o->name);
	a->coordinator = strdup(o->coordinator);
	a->model_path = strdup(o->model_path);
	a->secret = o->secret_len ? malloc(o->secret_len) : NULL;
	if (!a->name || !a->coordinator || !a->model_path || (o->secret_len && !a->secret)) {
		wk_agent_destroy(a);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	if (o->secret_len)
		memcpy(a->secret, o->secret, o->secret_len);
	atomic_store(&a->t_start_ns, fr_now_ns());
	if ((rc = model_ckpt_open(a->model_path, &a->ck, err)) < 0)
		goto fail;
	a->cfg = model_ckpt_config(a->ck);
	if (model_n_moe_layers(a->cfg) == 0) {
		rc = fr_error_set(err, -EINVAL, "%s: the model has no MoE layers", a->model_path);
		goto fail;
	}
	if ((rc = model_expert_fingerprints(a->ck, &a->fp, &a->n_fp, err)) < 0)
		goto fail;
	if (!a->o.slots && !(a->o.slots = auto_slots(a))) {
		rc = fr_error_set(err, -EINVAL, "memory limit too small for one expert slot per layer");
		goto fail;
	}
	a->ring = (struct fp_ring){ .slots = o->ring_slots, .tokens = o->ring_tokens,
				    .hidden = (uint32_t)a->cfg->hidden_size,
				    .max_pairs = (uint32_t)a->cfg->n_routed_experts };
	size_t slot = fp_ring_dispatch_slot(&a->ring);
	if (!slot) {
		rc = fr_error_set(err, -EINVAL, "ring of %u x %u tokens is out of the frame limits",
				  o->ring_slots, o->ring_tokens);
		goto fail;
	}
	if ((rc = tp_context_create(&o->tp, &a->tp)) < 0) {
		fr_error_set(err, rc, "cannot open the %s transport: %s",
			     tp_backend_name(o->tp.backend), strerror(-rc));
		goto fail;
	}
	if (o->on_gpu) {
		if ((rc = moe_gpu_module_load(&a->gpu_mod, err)) < 0 ||
		    (rc = a->gpu_mod->open(o->gpu_device, &a->gpu, err)) < 0) {
			fr_error_prefix(err, rc, "[compute] device = cuda:%d", o->gpu_device);
			goto fail;
		}
		fr_info("worker", "experts on %s, %s products (%s)", a->gpu_mod->describe(a->gpu),
			kn_precision_name(kn_precision()),
			kn_precision() == KN_PRECISION_EXACT
				? "f32 activations on the CUDA cores, for checking"
				: "bf16 activations on the tensor cores, fp32 sums");
	} else if (o->dev_twin) {
		if ((rc = moe_dev_twin_create(a->cfg, &a->twin)) < 0) {
			fr_error_set(err, rc, "[compute] device = twin: out of memory");
			goto fail;
		}
		fr_info("worker", "experts on the CPU twin of a device (testing: the device path "
			"with the CPU's arithmetic)");
	}
	if ((rc = rings_create(a, slot * o->ring_slots,
			       fp_ring_combine_slot(&a->ring) * o->ring_slots, err)) < 0)
		goto fail;
	if ((rc = slots_create(a, &a->slots)) < 0) {
		fr_error_set(err, rc, "cannot create %d slots", a->o.slots);
		goto fail;
	}
	a->o.creds = NULL; /* borrowed: only read here */
	if ((rc = rpc_channel_create(a->coordinator, o->creds, &a->ch, err)) < 0)
		goto fail;
	*ret = a;
	return 0;
fail:
	wk_agent_destroy(a);
	return rc;
}

/* Signs a request of our session (nonce, timestamp, hmac under the session key); drops the
 * previous signature first, so a retried request is signed afresh. */
static int sign(struct wk_agent *a, ProtobufCMessage *msg, ProtobufCBinaryData *hmac,
		struct fr_error *err)
{
	free(hmac->data);
	hmac->data = NULL;
	hmac->len = 0;
	return rpc_auth_sign(msg, a->session_key, sizeof(a->session_key), err);
}

/* A fresh challenge from the coordinator, for the next Join. */
static int challenge(struct wk_agent *a, uint8_t ret[RPC_AUTH_CHALLENGE_LEN],
		     struct fr_error *err)
{
	Ferry__V1__ChallengeRequest req = FERRY__V1__CHALLENGE_REQUEST__INIT;
	Ferry__V1__ChallengeResponse *resp = NULL;
	int rc = rpc_unary(a->ch, RPC_M_CHALLENGE, &req.base,
			   &ferry__v1__challenge_response__descriptor, RPC_TIMEOUT_MS,
			   (ProtobufCMessage **)&resp, err);

	if (rc < 0)
		return rc;
	if (resp->challenge.len != RPC_AUTH_CHALLENGE_LEN)
		rc = fr_error_set(err, -EBADMSG, "challenge of %zu bytes from %s", resp->challenge.len,
				  a->coordinator);
	else
		memcpy(ret, resp->challenge.data, RPC_AUTH_CHALLENGE_LEN);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/* Join, retried while the coordinator is unreachable or not ready. On success the session
 * key is set. */
static int join(struct wk_agent *a, Ferry__V1__JoinResponse **ret, struct fr_error *err)
{
	uint8_t chal[RPC_AUTH_CHALLENGE_LEN];
	Ferry__V1__JoinRequest req = FERRY__V1__JOIN_REQUEST__INIT;
	Ferry__V1__TransportAddress ta = FERRY__V1__TRANSPORT_ADDRESS__INIT, *tap = &ta;
	uint8_t blob[TP_ADDR_MAX];
	size_t blob_len;
	uint64_t t_end = fr_now_ns() + (uint64_t)a->o.join_timeout_ms * 1000000ull;
	int rc, warned = 0;

	if ((rc = tp_ep_address(a->ep, blob, sizeof(blob), &blob_len)) < 0)
		return fr_error_set(err, rc, "endpoint address: %s", strerror(-rc));
	req.worker_name = a->name;
	req.host_memory_bytes = a->o.memory_limit;
	req.slot_capacity = (uint32_t)a->o.slots;
	int room = staging_room(a);
	req.staging_limited = room >= 0;
	req.staging_slots = room >= 0 ? (uint32_t)room : 0;
	ta.backend = (char *)tp_backend_name(a->o.tp.backend);
	ta.blob.data = blob;
	ta.blob.len = blob_len;
	req.n_transport_addresses = 1;
	req.transport_addresses = &tap;
	req.ring_slots = a->ring.slots;
	req.ring_tokens = a->ring.tokens;
	req.hidden_size = (uint32_t)a->cfg->hidden_size;
	req.n_routed_experts = (uint32_t)a->cfg->n_routed_experts;
	req.n_expert_fingerprints = a->n_fp;
	req.expert_fingerprints = a->fp;
	for (;;) {
		free(req.hmac.data); /* a fresh challenge, nonce and timestamp each try */
		req.hmac.data = NULL;
		req.hmac.len = 0;
		rc = challenge(a, chal, err);
		if (rc == 0) {
			req.challenge.data = chal;
			req.challenge.len = sizeof(chal);
			if ((rc = rpc_auth_join_sign(&req, a->secret, a->o.secret_len, err)) < 0)
				break;
			rc = rpc_unary(a->ch, RPC_M_JOIN, &req.base,
				       &ferry__v1__join_response__descriptor, RPC_TIMEOUT_MS,
				       (ProtobufCMessage **)ret, err);
		}
		/* -EAGAIN: unreachable or not ready yet; anything else is an answer. */
		if (rc != -EAGAIN && rc != -ETIMEDOUT)
			break;
		/* Said once: a TLS mismatch otherwise goes unnoticed until the timeout. */
		if (!warned++)
			fr_warn(LOG_COMP, "join: coordinator %s: %s; retrying for up to %d ms",
				a->coordinator, err->msg, a->o.join_timeout_ms);
		if (a->stop || fr_now_ns() > t_end) {
			char last[sizeof(err->msg)];
			snprintf(last, sizeof(last), "%s", err->msg);
			rc = fr_error_set(err, -ETIMEDOUT, "coordinator %s did not accept the join "
					  "within %d ms: %s", a->coordinator, a->o.join_timeout_ms, last);
			break;
		}
		sleep_ms(200);
	}
	free(req.hmac.data);
	if (rc == 0 && ((*ret)->session_id.len != RPC_AUTH_SESSION_ID_LEN ||
			(rc = rpc_auth_session_key(a->secret, a->o.secret_len, chal, sizeof(chal),
						   (*ret)->session_id.data, (*ret)->session_id.len,
						   a->session_key, err)) < 0)) {
		if (rc == 0)
			rc = fr_error_set(err, -EBADMSG, "the join answer has no session id");
		protobuf_c_message_free_unpacked(&(*ret)->base, NULL);
		*ret = NULL;
	}
	return rc;
}

/* The weights of the slots being loaded, read in on a thread of its own at the lowest CPU
 * priority: the kernels serving the current epoch keep the cores, reading takes what they
 * leave (a live rebalance loads without pausing compute). */
struct prefault_job {
	const struct model_ffn *ffn;
	size_t n, bytes;
};

static void *prefault_main(void *arg)
{
	struct prefault_job *j = arg;

	(void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
	for (size_t i = 0; i < j->n; i++)
		j->bytes += model_ffn_prefault(&j->ffn[i]);
	return NULL;
}

static size_t prefault_all(const struct model_ffn *ffn, size_t n)
{
	struct prefault_job j = { .ffn = ffn, .n = n };
	pthread_t th;

	if (pthread_create(&th, NULL, prefault_main, &j) != 0) {
		for (size_t i = 0; i < n; i++) /* no thread: here, at our priority */
			j.bytes += model_ffn_prefault(&ffn[i]);
		return j.bytes;
	}
	pthread_join(th, NULL);
	return j.bytes;
}

/* Binds every slot of an assignment into table (weights mapped from our checkpoint copy;
 * only those tensors are touched) and reads in the weights of the slots that prev (the
 * assignment in force; NULL: none) does not hold already (model_ffn_prefault()), so every
 * slot serves at full speed from its first step. *ret_new, *ret_bytes: those slots, their
 * bytes. */
static int bind_into(struct wk_agent *a, const Ferry__V1__GetAssignmentResponse *resp,
		     const Ferry__V1__GetAssignmentResponse *prev, struct moe_slots *table,
		     size_t *ret_new, size_t *ret_bytes, struct fr_error *err)
{
	const struct model_config *c = a->cfg;
	int n_moe = model_n_moe_layers(c), rc = 0;
	int *layer_of = calloc((size_t)n_moe, sizeof(*layer_of));
	struct model_ffn *bound = calloc(resp->n_slots + 1, sizeof(*bound));
	size_t n_held = (size_t)n_moe * (size_t)a->o.slots, n_new = 0;
	int32_t *held = malloc((n_held + 1) * sizeof(*held)); /* [layer][slot]: prev's expert */

	if (!layer_of || !bound || !held) {
		free(layer_of);
		free(bound);
		free(held);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < n_held; i++)
		held[i] = -1;
	for (size_t i = 0; prev && i < prev->n_slots; i++) {
		const Ferry__V1__SlotAssignment *s = prev->slots[i];
		if (s->layer < (uint32_t)n_moe && s->slot < (uint32_t)a->o.slots)
			held[(size_t)s->layer * (size_t)a->o.slots + s->slot] = (int32_t)s->expert;
	}
	/* MoE layer index -> model layer, for the tensor names. */
	for (int l = 0; l < c->num_hidden_layers; l++)
		if (model_moe_index(c, l) >= 0)
			layer_of[model_moe_index(c, l)] = l;
	for (size_t i = 0; i < resp->n_slots; i++) {
		const Ferry__V1__SlotAssignment *s = resp->slots[i];
		struct model_ffn ffn;
		if (s->layer >= (uint32_t)n_moe || s->slot >= (uint32_t)a->o.slots ||
		    s->expert >= (uint32_t)c->n_routed_experts) {
			rc = fr_error_set(err, -EBADMSG, "assignment (layer %u, slot %u, expert %u) is "
					  "out of range", s->layer, s->slot, s->expert);
			break;
		}
		if ((rc = model_expert_bind(a->ck, layer_of[s->layer], (int)s->expert, &ffn, err)) < 0) {
			fr_error_prefix(err, rc, "cannot load expert %u of layer %d into slot %u",
					s->expert, layer_of[s->layer], s->slot);
			break;
		}
		if (held[(size_t)s->layer * (size_t)a->o.slots + s->slot] != (int32_t)s->expert)
			bound[n_new++] = ffn;
		if ((rc = moe_slot_set(table, (int)s->layer, (int)s->slot, (int)s->expert, &ffn)) < 0) {
			fr_error_set(err, rc, "slot (layer %u, slot %u): cannot hold expert %u", s->layer,
				     s->slot, s->expert);
			break;
		}
	}
	if (rc == 0) {
		*ret_new = n_new;
		*ret_bytes = prefault_all(bound, n_new);
	}
	free(layer_of);
	free(bound);
	free(held);
	return rc;
}

static int load_slots(struct wk_agent *a, Ferry__V1__LoadExpertsRequest *ack,
		      struct fr_error *err)
{
	Ferry__V1__GetAssignmentRequest req = FERRY__V1__GET_ASSIGNMENT_REQUEST__INIT;
	Ferry__V1__GetAssignmentResponse *resp = NULL;
	Ferry__V1__LoadExpertsResponse *lr = NULL;
	uint64_t t_end = fr_now_ns() + (uint64_t)a->o.join_timeout_ms * 1000000ull;
	int rc;

	req.worker_index = a->index;
	for (;;) {
		if ((rc = sign(a, &req.base, &req.hmac, err)) < 0)
			break;
		rc = rpc_unary(a->ch, RPC_M_GET_ASSIGNMENT, &req.base,
			       &ferry__v1__get_assignment_response__descriptor, RPC_TIMEOUT_MS,
			       (ProtobufCMessage **)&resp, err);
		if ((rc != -EAGAIN && rc != -ETIMEDOUT) || a->stop || fr_now_ns() > t_end)
			break;
		/* A coordinator that gave up has closed our data-plane endpoint. */
		struct tp_event ev[4];
		(void)tp_poll(a->tp, ev, 4);
		if (tp_ep_status(a->ep) < 0) {
			rc = fr_error_set(err, -ECONNRESET, "the coordinator went away before "
					  "assigning slots (see its log)");
			break;
		}
		sleep_ms(100);
	}
	free(req.hmac.data);
	if (rc < 0)
		return fr_error_prefix(err, rc, "no slot assignment");
	size_t bytes = 0, n_new = 0;
	if ((rc = bind_into(a, resp, NULL, a->slots, &n_new, &bytes, err)) < 0)
		goto out;
	a->epoch = resp->epoch;
	ack->worker_index = a->index;
	ack->epoch = resp->epoch;
	ack->n_slots = resp->n_slots;
	ack->slots = resp->slots;
	if ((rc = sign(a, &ack->base, &ack->hmac, err)) == 0)
		rc = rpc_unary(a->ch, RPC_M_LOAD_EXPERTS, &ack->base,
			       &ferry__v1__load_experts_response__descriptor, RPC_TIMEOUT_MS,
			       (ProtobufCMessage **)&lr, err);
	if (rc < 0) {
		fr_error_prefix(err, rc, "load acknowledgement refused");
		goto out;
	}
	fr_info(LOG_COMP, "%s: loaded %zu slots (%d per MoE layer, %.1f MiB), epoch %llu",
		a->name, resp->n_slots, a->o.slots, (double)bytes / (1 << 20),
		(unsigned long long)a->epoch);
	a->assign = resp;
	atomic_store(&a->m_slots, resp->n_slots);
	atomic_store(&a->m_epoch, a->epoch);
	resp = NULL;
out:
	ack->n_slots = 0;
	ack->slots = NULL;
	free(ack->hmac.data);
	ack->hmac.data = NULL;
	ack->hmac.len = 0;
	if (lr)
		protobuf_c_message_free_unpacked(&lr->base, NULL);
	if (resp)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/* Live rebalance: the coordinator plans a slot map of a newer epoch (its heartbeat says
 * so). Bind that epoch's slots into a new table while the server goes on with the current
 * one, stage it (the server switches at the first frame of that epoch) and acknowledge.
 * A plan that changed meanwhile is taken at the next heartbeat. Control thread only. */
static int restage(struct wk_agent *a, uint64_t epoch, struct fr_error *err)
{
	Ferry__V1__GetAssignmentRequest req = FERRY__V1__GET_ASSIGNMENT_REQUEST__INIT;
	Ferry__V1__GetAssignmentResponse *resp = NULL;
	Ferry__V1__LoadExpertsRequest ack = FERRY__V1__LOAD_EXPERTS_REQUEST__INIT;
	Ferry__V1__LoadExpertsResponse *lr = NULL;
	struct moe_slots *table = NULL;
	uint64_t t0 = fr_now_ns();
	int rc;

	req.worker_index = a->index;
	if ((rc = sign(a, &req.base, &req.hmac, err)) == 0)
		rc = rpc_unary(a->ch, RPC_M_GET_ASSIGNMENT, &req.base,
			       &ferry__v1__get_assignment_response__descriptor, RPC_TIMEOUT_MS,
			       (ProtobufCMessage **)&resp, err);
	free(req.hmac.data);
	if (rc < 0)
		return fr_error_prefix(err, rc, "epoch %llu: no assignment",
				       (unsigned long long)epoch);
	if (resp->epoch != epoch) {
		rc = 0; /* the plan moved on; the next heartbeat says where */
		goto out;
	}
	if ((rc = slots_create(a, &table)) < 0) {
		fr_error_set(err, rc, "cannot create a slot table");
		goto out;
	}
	size_t bytes = 0, n_new = 0;
	if ((rc = bind_into(a, resp, a->assign, table, &n_new, &bytes, err)) < 0)
		goto out;
	if ((rc = moe_server_stage(a->srv, table, (uint32_t)epoch)) < 0) {
		fr_error_set(err, rc, "the new slot table does not fit the server");
		goto out;
	}
	table = NULL; /* the server's now */
	ack.worker_index = a->index;
	ack.epoch = epoch;
	ack.n_slots = resp->n_slots;
	ack.slots = resp->slots;
	if ((rc = sign(a, &ack.base, &ack.hmac, err)) == 0)
		rc = rpc_unary(a->ch, RPC_M_LOAD_EXPERTS, &ack.base,
			       &ferry__v1__load_experts_response__descriptor, RPC_TIMEOUT_MS,
			       (ProtobufCMessage **)&lr, err);
	ack.n_slots = 0;
	ack.slots = NULL;
	free(ack.hmac.data);
	if (rc < 0) {
		fr_error_prefix(err, rc, "epoch %llu: acknowledgement refused",
				(unsigned long long)epoch);
		goto out;
	}
	fr_info(LOG_COMP, "%s: epoch %llu staged: %zu new slots of %zu (%.1f MiB) loaded in "
		"%.1f ms, serving on until the coordinator swaps", a->name,
		(unsigned long long)epoch, n_new, resp->n_slots, (double)bytes / (1 << 20),
		(double)(fr_now_ns() - t0) / 1e6);
	a->epoch = epoch;
	if (a->assign)
		protobuf_c_message_free_unpacked(&a->assign->base, NULL);
	a->assign = resp;
	atomic_store(&a->m_slots, resp->n_slots);
	atomic_store(&a->m_epoch, a->epoch);
	resp = NULL;
out:
	moe_slots_destroy(table);
	if (lr)
		protobuf_c_message_free_unpacked(&lr->base, NULL);
	if (resp)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	return rc;
}

/* Stopped while serving: hand every slot back. The coordinator takes them out of its
 * routing table between two steps when other workers hold replicas of all of them, and
 * then no frame can come any more: the cluster goes on without us. When it refuses (some
 * expert lives only here, or it is not serving), we leave anyway and say so; when it is
 * stopping itself (ABORTED), there is nothing to hand back to. */
static void release_slots(struct wk_agent *a)
{
	Ferry__V1__UnloadExpertsRequest req = FERRY__V1__UNLOAD_EXPERTS_REQUEST__INIT;
	Ferry__V1__UnloadExpertsResponse *resp = NULL;
	struct fr_error err = { { 0 } };
	int rc;

	req.worker_index = a->index;
	req.epoch = a->epoch;
	req.n_slots = a->assign->n_slots;
	req.slots = a->assign->slots;
	rc = sign(a, &req.base, &req.hmac, &err);
	if (rc == 0)
		rc = rpc_unary(a->ch, RPC_M_UNLOAD_EXPERTS, &req.base,
			       &ferry__v1__unload_experts_response__descriptor, UNLOAD_TIMEOUT_MS,
			       (ProtobufCMessage **)&resp, &err);
	if (rc == -ECONNABORTED) /* ABORTED: the coordinator is stopping too */
		fr_info(LOG_COMP, "%s: leaving with the coordinator (%s)", a->name, err.msg);
	else if (rc < 0)
		fr_warn(LOG_COMP, "%s: leaving without handing our %zu slots back (requests that "
			"need them will fail): %s", a->name, req.n_slots, err.msg);
	else
		fr_info(LOG_COMP, "%s: the coordinator took our %u slots out of service; leaving",
			a->name, resp->unloaded);
	if (resp)
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	free(req.hmac.data);
}

/* Control thread: heartbeat + stats every interval; stops the server on drain or when
 * the coordinator has been unreachable for three intervals. */
static void *ctl_main(void *arg)
{
	struct wk_agent *a = arg;
	int n_moe = model_n_moe_layers(a->cfg), misses = 0;
	uint64_t *tok = calloc((size_t)n_moe, sizeof(*tok));
	uint64_t *ns = calloc((size_t)n_moe, sizeof(*ns));
	Ferry__V1__LayerStats *ls = calloc((size_t)n_moe, sizeof(*ls));
	Ferry__V1__LayerStats **lsp = calloc((size_t)n_moe, sizeof(*lsp));
	uint64_t t_last = fr_now_ns();

	while (!atomic_load(&a->ctl_quit) && tok && ns && ls && lsp) {
		struct fr_error err = { { 0 } };
		Ferry__V1__HeartbeatRequest hb = FERRY__V1__HEARTBEAT_REQUEST__INIT;
		Ferry__V1__HeartbeatResponse *hr = NULL;
		Ferry__V1__ReportStatsRequest sr = FERRY__V1__REPORT_STATS_REQUEST__INIT;
		Ferry__V1__ReportStatsResponse *srr = NULL;
		uint64_t frames = 0, now;
		int rc;

		for (uint32_t slept = 0; slept < a->heartbeat_ms && !atomic_load(&a->ctl_quit) &&
					 !a->stop;
		     slept += 50)
			sleep_ms(50);
		if (atomic_load(&a->ctl_quit))
			break;
		if (a->stop) {
			if (!atomic_load(&a->drained))
				release_slots(a);
			moe_server_stop(a->srv);
			break;
		}
		hb.worker_index = a->index;
		hb.epoch = a->epoch;
		if ((rc = sign(a, &hb.base, &hb.hmac, &err)) == 0)
			rc = rpc_unary(a->ch, RPC_M_HEARTBEAT, &hb.base,
				       &ferry__v1__heartbeat_response__descriptor, RPC_TIMEOUT_MS,
				       (ProtobufCMessage **)&hr, &err);
		free(hb.hmac.data);
		if (rc < 0) {
			if (++misses == 3)
				fr_warn(LOG_COMP, "%s: coordinator unreachable: %s", a->name, err.msg);
			continue;
		}
		misses = 0;
		uint64_t new_epoch = hr->epoch;
		if (hr->drain) {
			fr_info(LOG_COMP, "%s: coordinator asks to drain", a->name);
			atomic_store(&a->drained, true);
			moe_server_stop(a->srv);
		}
		if (hr->fenced && !atomic_load(&a->fenced)) {
			atomic_store(&a->fenced, true);
			moe_server_stop(a->srv);
		}
		protobuf_c_message_free_unpacked(&hr->base, NULL);
		if (new_epoch > a->epoch && !atomic_load(&a->drained) &&
		    restage(a, new_epoch, &err) < 0)
			fr_warn(LOG_COMP, "%s: %s", a->name, err.msg);

		moe_server_take_stats(a->srv, tok, ns, &frames);
		now = fr_now_ns();
		for (int l = 0; l < n_moe; l++) {
			ferry__v1__layer_stats__init(&ls[l]);
			ls[l].layer = (uint32_t)l;
			ls[l].tokens = tok[l];
			ls[l].busy_ns = ns[l];
			lsp[l] = &ls[l];
		}
		sr.worker_index = a->index;
		sr.epoch = a->epoch;
		sr.window_ns = now - t_last;
		sr.n_layers = (size_t)n_moe;
		sr.layers = lsp;
		sr.frames = frames;
		t_last = now;
		if (sign(a, &sr.base, &sr.hmac, &err) == 0 &&
		    rpc_unary(a->ch, RPC_M_REPORT_STATS, &sr.base,
			      &ferry__v1__report_stats_response__descriptor, RPC_TIMEOUT_MS,
			      (ProtobufCMessage **)&srr, &err) == 0)
			protobuf_c_message_free_unpacked(&srr->base, NULL);
		free(sr.hmac.data);
	}
	free(tok);
	free(ns);
	free(ls);
	free(lsp);
	return NULL;
}

int wk_agent_run(struct wk_agent *a, struct fr_error *err)
{
	Ferry__V1__JoinResponse *jr = NULL;
	Ferry__V1__LoadExpertsRequest ack = FERRY__V1__LOAD_EXPERTS_REQUEST__INIT;
	int rc;

	if ((rc = join(a, &jr, err)) < 0) {
		fr_error_prefix(err, rc, "join refused by %s", a->coordinator);
		goto out;
	}
	if (jr->n_transport_addresses != 1 || jr->transport_addresses[0]->blob.len > TP_ADDR_MAX ||
	    (strcmp(jr->wire_dtype, "bf16") != 0 && strcmp(jr->wire_dtype, "f32") != 0)) {
		rc = fr_error_set(err, -EBADMSG, "malformed join response");
		goto out;
	}
	a->index = jr->worker_index;
	a->epoch = jr->epoch;
	a->heartbeat_ms = jr->heartbeat_interval_ms ? jr->heartbeat_interval_ms : 1000;
	a->wire = strcmp(jr->wire_dtype, "f32") == 0 ? FP_DTYPE_F32 : FP_DTYPE_BF16;
	fr_info(LOG_COMP, "%s: joined %s as worker %u (%s wire)", a->name, a->coordinator, a->index,
		jr->wire_dtype);
	rc = tp_ep_connect(a->ep, jr->transport_addresses[0]->blob.data,
			   jr->transport_addresses[0]->blob.len);
	if (rc < 0) {
		rc = fr_error_set(err, -EIO, "data-plane connect to the coordinator failed: %s",
				  strerror(-rc));
		goto out;
	}
	if ((rc = load_slots(a, &ack, err)) < 0)
		goto out;
	struct moe_server_opts so = { .ring = a->ring, .name = a->name,
				      .epoch = (uint32_t)a->epoch, .dev_send = a->dev_send };
	if ((rc = moe_server_create(a->slots, a->tp, a->ep, a->recv, &so, &a->srv, err)) < 0)
		goto out;
	if (a->gpu && !a->dev_send) { /* frames in host memory: pinned, their copies to and
				       * from the device go by DMA */
		struct moe_host_region v[MOE_SERVER_HOST_REGIONS];
		int n = moe_server_host_regions(a->srv, v, MOE_SERVER_HOST_REGIONS);
		a->n_pinned = moe_gpu_pin_regions(a->gpu_mod, a->gpu, v, n, a->pinned, LOG_COMP,
						  a->name);
	}
	atomic_store(&a->srv_pub, a->srv);
	if ((rc = pthread_create(&a->ctl, NULL, ctl_main, a)) != 0) {
		rc = fr_error_set(err, -rc, "cannot start the control thread");
		goto out;
	}
	a->ctl_started = true;
	/* From here a stop goes through the control thread (see wk_agent_stop). */
	atomic_store(&a->graceful, true);
	rc = moe_server_run(a->srv, -1, err);
	if (rc == -ECONNRESET && atomic_load(&a->drained))
		rc = 0; /* the coordinator closed the data plane after asking us to drain */
	if (atomic_load(&a->fenced))
		rc = fr_error_set(err, -ECONNABORTED, "the coordinator fenced this worker (it did "
				  "not answer within its step deadline, or missed heartbeats): it "
				  "is out of the routing table; start it again to rejoin");
out:
	if (a->ctl_started) {
		atomic_store(&a->ctl_quit, true);
		pthread_join(a->ctl, NULL);
		a->ctl_started = false;
	}
	if (jr)
		protobuf_c_message_free_unpacked(&jr->base, NULL);
	return rc;
}

void wk_agent_stop(struct wk_agent *a)
{
	a->stop = 1;
	/* Serving: the control thread hands the slots back, then stops the server. */
	if (a->srv && !atomic_load(&a->graceful))
		moe_server_stop(a->srv);
}

void wk_agent_metrics_write(struct wk_agent *a, FILE *f)
{
	struct moe_server *srv = atomic_load(&a->srv_pub);
	struct moe_server_totals t = { 0 };
	int n_moe = model_n_moe_layers(a->cfg);
	uint64_t *tok = calloc((size_t)n_moe, sizeof(*tok));
	uint64_t *ns = calloc((size_t)n_moe, sizeof(*ns));
	char lb[160], layer[16];

	if (!tok || !ns)
		goto out;
	if (srv)
		moe_server_totals(srv, &t, tok, ns);
	fr_prom_family(f, "ferry_worker_layer_tokens_total", "counter",
		       "Routed (token, expert) pairs computed, per MoE layer.");
	for (int l = 0; l < n_moe; l++) {
		snprintf(layer, sizeof(layer), "%d", l);
		fr_prom_sample(f, "ferry_worker_layer_tokens_total",
			       fr_prom_labels(lb, sizeof(lb), "layer", layer, NULL), (double)tok[l]);
	}
	fr_prom_family(f, "ferry_worker_layer_compute_seconds_total", "counter",
		       "Time spent computing routed experts, per MoE layer.");
	for (int l = 0; l < n_moe; l++) {
		snprintf(layer, sizeof(layer), "%d", l);
		fr_prom_sample(f, "ferry_worker_layer_compute_seconds_total",
			       fr_prom_labels(lb, sizeof(lb), "layer", layer, NULL),
			       (double)ns[l] / 1e9);
	}
	fr_prom_family(f, "ferry_worker_frames_total", "counter",
		       "Data-plane frames: dispatch frames in, combine frames out.");
	fr_prom_sample(f, "ferry_worker_frames_total",
		       fr_prom_labels(lb, sizeof(lb), "direction", "in", NULL), (double)t.frames);
	fr_prom_sample(f, "ferry_worker_frames_total",
		       fr_prom_labels(lb, sizeof(lb), "direction", "out", NULL), (double)t.frames);
	fr_prom_family(f, "ferry_worker_bytes_total", "counter",
		       "Data-plane bytes: dispatch frames in, combine frames out.");
	fr_prom_sample(f, "ferry_worker_bytes_total",
		       fr_prom_labels(lb, sizeof(lb), "direction", "in", NULL), (double)t.bytes_in);
	fr_prom_sample(f, "ferry_worker_bytes_total",
		       fr_prom_labels(lb, sizeof(lb), "direction", "out", NULL),
		       (double)t.bytes_out);
	uint64_t slots = atomic_load(&a->m_slots);
	fr_prom_family(f, "ferry_worker_slots_loaded", "gauge",
		       "Expert copies ((MoE layer, slot) pairs) this worker holds.");
	fr_prom_sample(f, "ferry_worker_slots_loaded", NULL, (double)slots);
	fr_prom_family(f, "ferry_worker_slot_capacity", "gauge",
		       "Expert slots per MoE layer ([worker] slots).");
	fr_prom_sample(f, "ferry_worker_slot_capacity", NULL, a->o.slots);
	fr_prom_family(f, "ferry_worker_memory_used_bytes", "gauge",
		       "Bytes of expert weights held (slots loaded x one expert's matrices).");
	fr_prom_sample(f, "ferry_worker_memory_used_bytes", NULL,
		       (double)(slots * expert_bytes(a->cfg)));
	fr_prom_family(f, "ferry_worker_memory_limit_bytes", "gauge",
		       "[worker] memory_limit (0: none).");
	fr_prom_sample(f, "ferry_worker_memory_limit_bytes", NULL, (double)a->o.memory_limit);
	fr_prom_family(f, "ferry_worker_epoch", "gauge", "The slot-map epoch of its slots.");
	fr_prom_sample(f, "ferry_worker_epoch", NULL, (double)atomic_load(&a->m_epoch));
	char dev[24];
	snprintf(dev, sizeof(dev), a->gpu ? "cuda:%d" : a->twin ? "twin" : "cpu",
		 a->o.gpu_device);
	fr_prom_family(f, "ferry_worker_compute_info", "gauge",
		       "Where the experts compute ([compute] device), in which arithmetic "
		       "([worker] precision as resolved) and where the frames land ([compute] "
		       "frames as resolved); always 1.");
	fr_prom_sample(f, "ferry_worker_compute_info",
		       fr_prom_labels(lb, sizeof(lb), "device", dev, "precision",
				      kn_precision_name(kn_precision()), "frames",
				      a->dev_send ? "device" : "host", NULL),
		       1);
	fr_prom_family(f, "ferry_worker_uptime_seconds", "gauge",
		       "Seconds since the worker started.");
	fr_prom_sample(f, "ferry_worker_uptime_seconds", NULL,
		       (double)(fr_now_ns() - atomic_load(&a->t_start_ns)) / 1e9);
out:
	free(tok);
	free(ns);
}

void wk_agent_destroy(struct wk_agent *a)
{
	if (!a)
		return;
	if (a->gpu) /* before the memory and the device go */
		moe_gpu_unpin_regions(a->gpu_mod, a->gpu, a->pinned, &a->n_pinned);
	moe_server_destroy(a->srv);
	if (a->assign)
		protobuf_c_message_free_unpacked(&a->assign->base, NULL);
	rpc_channel_destroy(a->ch);
	tp_ep_destroy(a->ep);
	rings_free(a); /* the rings, in host or device memory */
	tp_context_destroy(a->tp);
	moe_slots_destroy(a->slots);
	if (a->gpu)
		a->gpu_mod->close(a->gpu); /* after every table that used it */
	moe_dev_twin_destroy(a->twin);
	model_ckpt_close(a->ck);
	free(a->name);
	free(a->coordinator);
	free(a->model_path);
	free(a->secret);
	free(a->fp);
	OPENSSL_cleanse(a->session_key, sizeof(a->session_key));
	free(a);
}
