/* SPDX-License-Identifier: Apache-2.0 */
/* transport.c - the backend-independent half: config, memory, endpoint lifetimes, the
 * address blob, credits, error events and the blocking wait. */
#include "transport/transport-internal.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define BLOB_MAGIC 0x41505446u /* "FTPA" */
#define BLOB_VERSION 1
#define BLOB_COMMON 80

static const char *const backend_names[] = {
	[TP_BACKEND_SHM] = "shm",
	[TP_BACKEND_TCP] = "tcp",
	[TP_BACKEND_VERBS] = "verbs",
};

int tp_backend_parse(const char *name, enum tp_backend *ret)
{
	for (size_t i = 0; i < FR_ARRAY_SIZE(backend_names); i++)
		if (name && !strcmp(name, backend_names[i])) {
			*ret = (enum tp_backend)i;
			return 0;
		}
	return -EINVAL;
}

const char *tp_backend_name(enum tp_backend b)
{
	return (unsigned)b < FR_ARRAY_SIZE(backend_names) ? backend_names[b] : "?";
}

static const struct tp_ops *ops_of(enum tp_backend b)
{
	switch (b) {
	case TP_BACKEND_SHM:
		return &tp_shm_ops;
	case TP_BACKEND_TCP:
		return &tp_tcp_ops;
	case TP_BACKEND_VERBS:
#ifdef FERRY_HAVE_RDMA
		return &tp_verbs_ops;
#else
		return NULL;
#endif
	}
	return NULL;
}

int tp_context_create(const struct tp_config *cfg, struct tp_context **ret_ctx)
{
	const struct tp_ops *ops = ops_of(cfg->backend);
	struct tp_context *ctx;
	int rc;

	if ((unsigned)cfg->backend >= FR_ARRAY_SIZE(backend_names))
		return -EINVAL;
	if (!ops) {
		fr_err(TP_COMP, "backend %s: not built (rdma-core missing at build time)",
		       tp_backend_name(cfg->backend));
		return -EOPNOTSUPP;
	}
	ctx = calloc(1, ops->ctx_size);
	if (!ctx)
		return -ENOMEM;
	ctx->ops = ops;
	ctx->epfd = -1;
	ctx->cfg = *cfg;
	struct tp_config *c = &ctx->cfg;
	c->send_depth = c->send_depth ? c->send_depth : 64;
	c->recv_depth = c->recv_depth ? c->recv_depth : 64;
	c->inline_max = c->inline_max ? c->inline_max : 128;
	c->peer_timeout_ms = c->peer_timeout_ms ? c->peer_timeout_ms : 5000;
	c->connect_timeout_ms = c->connect_timeout_ms ? c->connect_timeout_ms : 10000;
	c->spin_us = c->spin_us ? c->spin_us : 50;
	c->spin_max_us = c->spin_max_us ? FR_MAX(c->spin_max_us, c->spin_us) :
					  FR_MAX(250u, c->spin_us);
	ctx->spin_cur_us = c->spin_us;
	if (c->send_depth > 65536 || c->recv_depth > 65536) {
		rc = -EINVAL;
		goto fail;
	}
	ctx->device_copy = cfg->device ? strdup(cfg->device) : NULL;
	ctx->bind_copy = strdup(cfg->bind_addr ? cfg->bind_addr : "127.0.0.1");
	if ((cfg->device && !ctx->device_copy) || !ctx->bind_copy) {
		rc = -ENOMEM;
		goto fail;
	}
	c->device = ctx->device_copy;
	c->bind_addr = ctx->bind_copy;
	ctx->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (ctx->epfd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = ops->ctx_init(ctx);
	if (rc < 0)
		goto fail;
	*ret_ctx = ctx;
	return 0;
fail:
	if (ctx->epfd >= 0)
		close(ctx->epfd);
	free(ctx->device_copy);
	free(ctx->bind_copy);
	free(ctx);
	return rc;
}

void tp_context_destroy(struct tp_context *ctx)
{
	if (!ctx)
		return;
	while (ctx->eps)
		tp_ep_destroy(ctx->eps);
	ctx->ops->ctx_fini(ctx);
	close(ctx->epfd);
	free(ctx->device_copy);
	free(ctx->bind_copy);
	free(ctx);
}

int tp_context_fd(const struct tp_context *ctx)
{
	return ctx->epfd;
}

enum tp_backend tp_context_backend(const struct tp_context *ctx)
{
	return ctx->cfg.backend;
}

/* ---- memory ---------------------------------------------------------------------------- */

static int mem_finish(struct tp_context *ctx, struct tp_mem *mem, struct tp_mem **ret_mem)
{
	int rc = ctx->ops->mem_reg ? ctx->ops->mem_reg(ctx, mem) : 0;
	if (rc < 0)
		return rc;
	*ret_mem = mem;
	return 0;
}

int tp_mem_alloc(struct tp_context *ctx, size_t len, struct tp_mem **ret_mem)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	struct tp_mem *mem;
	int rc;

	if (!len)
		return -EINVAL;
	mem = calloc(1, sizeof(*mem));
	if (!mem)
		return -ENOMEM;
	mem->ctx = ctx;
	mem->len = len;
	mem->map_len = (len + page - 1) / page * page;
	mem->ptr = MAP_FAILED;
	/* memfd for every backend: shm hands it to the peer, the others simply map it. */
	mem->fd = memfd_create("ferry-tp", MFD_CLOEXEC);
	if (mem->fd < 0 || ftruncate(mem->fd, (off_t)mem->map_len) < 0) {
		rc = -errno;
		goto fail;
	}
	/* populated: no page faults on the data path */
	mem->ptr = mmap(NULL, mem->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			mem->fd, 0);
	if (mem->ptr == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	rc = mem_finish(ctx, mem, ret_mem);
	if (rc < 0)
		goto fail;
	return 0;
fail:
	if (mem->ptr != MAP_FAILED)
		munmap(mem->ptr, mem->map_len);
	if (mem->fd >= 0)
		close(mem->fd);
	free(mem);
	return rc;
}

int tp_mem_register(struct tp_context *ctx, void *ptr, size_t len, struct tp_mem **ret_mem)
{
	struct tp_mem *mem;
	int rc;

	if (!ptr || !len)
		return -EINVAL;
	mem = calloc(1, sizeof(*mem));
	if (!mem)
		return -ENOMEM;
	*mem = (struct tp_mem){ .ctx = ctx, .ptr = ptr, .len = len, .fd = -1 };
	rc = mem_finish(ctx, mem, ret_mem);
	if (rc < 0)
		free(mem);
	return rc;
}

int tp_mem_register_dmabuf(struct tp_context *ctx, int fd, uint64_t offset, size_t len,
			   void *addr, struct tp_mem **ret_mem)
{
	struct tp_mem *mem;
	int rc;

	if (fd < 0 || !len || !addr)
		return -EINVAL;
	if (!ctx->ops->mem_reg_dmabuf)
		return -EOPNOTSUPP;
	mem = calloc(1, sizeof(*mem));
	if (!mem)
		return -ENOMEM;
	*mem = (struct tp_mem){ .ctx = ctx, .ptr = addr, .len = len, .fd = -1, .device = true };
	if ((rc = ctx->ops->mem_reg_dmabuf(ctx, mem, fd, offset)) < 0) {
		free(mem);
		return rc;
	}
	*ret_mem = mem;
	return 0;
}

int tp_mem_is_device(const struct tp_mem *mem)
{
	return mem->device;
}

void *tp_mem_ptr(const struct tp_mem *mem)
{
	return mem->ptr;
}

size_t tp_mem_len(const struct tp_mem *mem)
{
	return mem->len;
}

void tp_mem_free(struct tp_mem *mem)
{
	if (!mem)
		return;
	if (mem->ctx->ops->mem_dereg)
		mem->ctx->ops->mem_dereg(mem->ctx, mem);
	if (mem->map_len)
		munmap(mem->ptr, mem->map_len);
	if (mem->fd >= 0)
		close(mem->fd);
	free(mem);
}

/* ---- endpoints ----------------------------------------------------------------------- */

int tp__ep_fail(struct tp_ep *ep, int rc, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (ep->status < 0)
		return rc;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ep->status = rc;
	ep->ctx->n_failed_unreported++;
	fr_warn(TP_COMP, "backend=%s peer=%s: endpoint failed: %s (%s)", ep->ctx->ops->name,
		ep->peer, msg, strerror(-rc));
	return rc;
}

bool tp__tick(uint64_t *last_ns)
{
	uint64_t now = fr_now_ns();
	if (now - *last_ns < 1000000)
		return false;
	*last_ns = now;
	return true;
}

int tp_ep_create(struct tp_context *ctx, struct tp_mem *recv, void *user, struct tp_ep **ret_ep)
{
	struct tp_ep *ep;
	int rc;

	if (!recv || recv->ctx != ctx)
		return -EINVAL;
	ep = calloc(1, ctx->ops->ep_size);
	if (!ep)
		return -ENOMEM;
	ep->ctx = ctx;
	ep->recv = recv;
	ep->user = user;
	ep->listen_fd = -1;
	snprintf(ep->peer, sizeof(ep->peer), "(unconnected)");
	if (getrandom(&ep->nonce, sizeof(ep->nonce), 0) != sizeof(ep->nonce)) {
		rc = -errno;
		goto fail;
	}
	rc = tp__boot_listen(ep, ctx->cfg.backend == TP_BACKEND_SHM);
	if (rc < 0)
		goto fail;
	rc = ctx->ops->ep_init(ep);
	if (rc < 0)
		goto fail;
	ep->next = ctx->eps;
	if (ctx->eps)
		ctx->eps->prev = ep;
	ctx->eps = ep;
	*ret_ep = ep;
	return 0;
fail:
	if (ep->listen_fd >= 0)
		close(ep->listen_fd);
	free(ep);
	return rc;
}

void tp_ep_destroy(struct tp_ep *ep)
{
	if (!ep)
		return;
	struct tp_context *ctx = ep->ctx;
	if (ep->status < 0 && !ep->error_reported)
		ctx->n_failed_unreported--;
	ctx->ops->ep_fini(ep);
	if (ep->listen_fd >= 0)
		close(ep->listen_fd);
	if (ep->prev)
		ep->prev->next = ep->next;
	else
		ctx->eps = ep->next;
	if (ep->next)
		ep->next->prev = ep->prev;
	free(ep);
}

int tp_ep_status(const struct tp_ep *ep)
{
	return ep->status;
}

size_t tp_ep_remote_len(const struct tp_ep *ep)
{
	return (size_t)ep->remote_len;
}

struct tp_context *tp_ep_context(const struct tp_ep *ep)
{
	return ep->ctx;
}

int tp_ep_address(const struct tp_ep *ep, void *buf, size_t cap, size_t *ret_len)
{
	uint8_t b[TP_ADDR_MAX] = { 0 };
	size_t extra = 0;
	uint32_t u32;
	uint64_t u64;
	uint16_t u16;
	int rc;

	rc = ep->ctx->ops->ep_pack(ep, b + BLOB_COMMON, sizeof(b) - BLOB_COMMON, &extra);
	if (rc < 0)
		return rc;
	size_t len = BLOB_COMMON + extra;
	if (cap < len)
		return -ENOBUFS;
	u32 = htole32(BLOB_MAGIC);
	memcpy(b, &u32, 4);
	b[4] = (uint8_t)ep->ctx->cfg.backend;
	b[5] = BLOB_VERSION;
	u16 = htole16((uint16_t)len);
	memcpy(b + 6, &u16, 2);
	u64 = htole64(ep->nonce);
	memcpy(b + 8, &u64, 8);
	u32 = htole32(ep->ctx->cfg.recv_depth);
	memcpy(b + 16, &u32, 4);
	u64 = htole64(ep->recv->len);
	memcpy(b + 24, &u64, 8);
	b[32] = ep->boot.family;
	u16 = htole16(ep->boot.port);
	memcpy(b + 34, &u16, 2);
	memcpy(b + 36, &ep->boot.ip4, 4);
	memcpy(b + 40, ep->boot.path, sizeof(ep->boot.path));
	memcpy(buf, b, len);
	*ret_len = len;
	return 0;
}

int tp_ep_connect(struct tp_ep *ep, const void *blob, size_t len)
{
	struct tp_context *ctx = ep->ctx;
	const uint8_t *b = blob;
	struct tp_boot_addr peer = { 0 };
	uint32_t u32;
	uint64_t u64;
	uint16_t u16;
	int fd, rc;

	if (ep->connected || ep->listen_fd < 0)
		return -EISCONN;
	if (len < BLOB_COMMON || len > TP_ADDR_MAX)
		return -EBADMSG;
	memcpy(&u32, b, 4);
	memcpy(&u16, b + 6, 2);
	if (le32toh(u32) != BLOB_MAGIC || b[5] != BLOB_VERSION || le16toh(u16) != len ||
	    b[4] != (uint8_t)ctx->cfg.backend) {
		fr_err(TP_COMP, "backend=%s: peer address blob malformed or for backend %s",
		       ctx->ops->name, tp_backend_name((enum tp_backend)b[4]));
		return -EBADMSG;
	}
	memcpy(&u64, b + 8, 8);
	ep->peer_nonce = le64toh(u64);
	memcpy(&u32, b + 16, 4);
	ep->peer_recv_depth = le32toh(u32);
	memcpy(&u64, b + 24, 8);
	ep->remote_len = le64toh(u64);
	peer.family = b[32];
	memcpy(&u16, b + 34, 2);
	peer.port = le16toh(u16);
	memcpy(&peer.ip4, b + 36, 4);
	memcpy(peer.path, b + 40, sizeof(peer.path));
	peer.path[sizeof(peer.path) - 1] = 0;
	if (ep->peer_nonce == ep->nonce || !ep->peer_recv_depth)
		return -EBADMSG;
	tp__boot_addr_str(&peer, ep->peer, sizeof(ep->peer));

	uint64_t deadline = fr_now_ns() + (uint64_t)ctx->cfg.connect_timeout_ms * 1000000;
	fd = tp__boot_connect(ep, &peer, deadline);
	if (fd < 0) {
		fr_err(TP_COMP, "backend=%s peer=%s: bootstrap failed: %s", ctx->ops->name,
		       ep->peer, strerror(-fd));
		return fd;
	}
	close(ep->listen_fd);
	ep->listen_fd = -1;
	rc = ctx->ops->ep_connect(ep, fd, b + BLOB_COMMON, len - BLOB_COMMON);
	if (rc < 0)
		return rc;
	ep->connected = true;
	fr_dbg(TP_COMP, "backend=%s peer=%s: connected", ctx->ops->name, ep->peer);
	return 0;
}

/* ---- data path ------------------------------------------------------------------------ */

int tp__check_put(const struct tp_ep *ep, const struct tp_mem *local, size_t local_off,
		  uint64_t remote_off, size_t len)
{
	if (ep->status < 0)
		return ep->status;
	if (!ep->connected)
		return -ENOTCONN;
	if (local_off > local->len || len > local->len - local_off || remote_off > ep->remote_len ||
	    len > ep->remote_len - remote_off || local->ctx != ep->ctx)
		return -EINVAL;
	return 0;
}

int tp_put_imm(struct tp_ep *ep, const struct tp_mem *local, size_t local_off,
	       uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie)
{
	int rc = tp__check_put(ep, local, local_off, remote_off, len);
	if (rc < 0)
		return rc;
	if (!tp__have_credit(ep) && ep->ctx->ops->refresh_credits)
		ep->ctx->ops->refresh_credits(ep);
	if (!tp__have_credit(ep))
		return -EAGAIN;
	rc = ep->ctx->ops->put(ep, local, local_off, remote_off, len, imm, flags, cookie);
	if (rc == 0)
		ep->puts++;
	return rc;
}

int tp_ep_release(struct tp_ep *ep, uint32_t n)
{
	if (n > ep->delivered - ep->released)
		return -EINVAL;
	ep->released += n;
	if (ep->status == 0 && ep->connected)
		ep->ctx->ops->credits_released(ep);
	return 0;
}

static int report_failures(struct tp_context *ctx, struct tp_event *evs, int n, int max)
{
	for (struct tp_ep *ep = ctx->eps; ep && ctx->n_failed_unreported && n < max; ep = ep->next) {
		if (ep->status == 0 || ep->error_reported)
			continue;
		ep->error_reported = true;
		ctx->n_failed_unreported--;
		evs[n++] = (struct tp_event){ .type = TP_EV_EP_ERROR, .status = ep->status,
					      .ep = ep, .ep_user = ep->user };
	}
	return n;
}

int tp_poll(struct tp_context *ctx, struct tp_event *evs, int max)
{
	if (max <= 0)
		return -EINVAL;
	int n = ctx->ops->poll(ctx, evs, max);
	if (n < 0)
		return n;
	/* Error events come after the arrivals and completions that preceded the failure. */
	if (ctx->n_failed_unreported)
		n = report_failures(ctx, evs, n, max);
	return n;
}

/* One tp_poll() of each context until max events, from ctxs[0]->wait_next on. The next call
 * starts after the context that filled evs (at the one that failed, to report it), so with a
 * small max a busy context cannot keep the others' events waiting. */
static int poll_many(struct tp_context *const *ctxs, int n, struct tp_event *evs, int max)
{
	if (n == 1)
		return tp_poll(ctxs[0], evs, max);
	uint32_t start = ctxs[0]->wait_next % (uint32_t)n;
	int got = 0;
	for (int k = 0; k < n; k++) {
		uint32_t i = (start + (uint32_t)k) % (uint32_t)n;
		int r = tp_poll(ctxs[i], evs + got, max - got);
		if (r < 0) {
			ctxs[0]->wait_next = i;
			return got ? got : r;
		}
		got += r;
		if (got == max) {
			ctxs[0]->wait_next = i + 1;
			return got;
		}
	}
	ctxs[0]->wait_next = start + 1;
	return got;
}

/* Credit epochs only grow: their sum moves exactly when one of them did. */
static uint64_t credit_epochs(struct tp_context *const *ctxs, int n)
{
	uint64_t sum = 0;
	for (int i = 0; i < n; i++)
		sum += ctxs[i]->credit_epoch;
	return sum;
}

/* Sleeps until one context's epoll set is ready or t ms passed (EINTR counts as a wake). */
static int sleep_many(struct tp_context *const *ctxs, int n, int t)
{
	if (n == 1) {
		struct epoll_event ee[16];
		if (epoll_wait(ctxs[0]->epfd, ee, FR_ARRAY_SIZE(ee), t) < 0 && errno != EINTR)
			return -errno;
		return 0;
	}
	/* An epoll fd polls readable while its (level-triggered) set has a ready fd. */
	struct pollfd pfd[TP_WAIT_MANY_MAX];
	for (int i = 0; i < n; i++)
		pfd[i] = (struct pollfd){ .fd = ctxs[i]->epfd, .events = POLLIN };
	if (poll(pfd, (nfds_t)n, t) < 0 && errno != EINTR)
		return -errno;
	return 0;
}

/* After a wait that slept: something came waited_us after the start (woke), or not. An
 * arrival that a slightly longer spin would have caught sets the spin to that (plus a
 * quarter); a long or empty wait drops it back to spin_us. */
static void adapt_spin(struct tp_context *const *ctxs, int n, bool woke, uint64_t waited_us)
{
	for (int i = 0; i < n; i++) {
		struct tp_context *c = ctxs[i];
		if (woke && waited_us <= c->cfg.spin_max_us)
			c->spin_cur_us = (uint32_t)FR_MIN((uint64_t)c->cfg.spin_max_us,
							  FR_MAX((uint64_t)c->spin_cur_us,
								 waited_us + waited_us / 4));
		else
			c->spin_cur_us = c->cfg.spin_us;
	}
}

int tp_wait_many(struct tp_context *const *ctxs, int n, struct tp_event *evs, int max,
		 int timeout_ms)
{
	uint64_t start = fr_now_ns(), epoch;
	uint32_t spin_us = 0;
	bool pending = false;
	int got, armed, rc = 0;

	if (n < 1 || n > TP_WAIT_MANY_MAX || max <= 0)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		spin_us = FR_MAX(spin_us, ctxs[i]->spin_cur_us);
	epoch = credit_epochs(ctxs, n);
	uint64_t spin_end = start + (uint64_t)spin_us * 1000;
	for (unsigned i = 0;; i++) {
		got = poll_many(ctxs, n, evs, max);
		if (got != 0 || credit_epochs(ctxs, n) != epoch)
			return got; /* an event, or credits came back (a blocked put may retry) */
		if ((i & 7) != 7) /* polls go back to back, the clock is read every 8th */
			continue;
		uint64_t now = fr_now_ns();
		if (now >= spin_end)
			break;
		/* Past a few microseconds the peer may need this core (oversubscribed hosts,
		 * rxe): a yield costs a syscall, so not before. */
		if (now - start > 4000)
			sched_yield();
	}

	/* Every context must be armed before sleeping: one with work pending means no sleep. */
	for (armed = 0; armed < n && !pending; armed++)
		pending = ctxs[armed]->ops->arm(ctxs[armed]) != 0 ||
			  ctxs[armed]->n_failed_unreported != 0;
	if (!pending) {
		int t = timeout_ms;
		if (t > 0) {
			uint64_t spent = (fr_now_ns() - start) / 1000000;
			t = spent >= (uint64_t)t ? 0 : t - (int)spent;
		}
		/* Wake a few times a second even when idle: liveness watchdogs run in poll. */
		if (t < 0 || t > 250)
			t = 250;
		rc = sleep_many(ctxs, n, t);
	}
	for (int i = 0; i < armed; i++)
		if (ctxs[i]->ops->disarm)
			ctxs[i]->ops->disarm(ctxs[i]);
	if (rc < 0)
		return rc;
	got = poll_many(ctxs, n, evs, max);
	adapt_spin(ctxs, n, got != 0 || credit_epochs(ctxs, n) != epoch,
		   (fr_now_ns() - start) / 1000);
	return got;
}

int tp_wait(struct tp_context *ctx, struct tp_event *evs, int max, int timeout_ms)
{
	return tp_wait_many(&ctx, 1, evs, max, timeout_ms);
}
