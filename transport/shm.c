/* SPDX-License-Identifier: Apache-2.0 */
/* shm.c - the shm backend: puts between processes on one host.
 *
 * Each endpoint's receive region is a memfd the peer maps read-write; a put is the single
 * memcpy into that mapping followed by a slot in the receiver's arrival ring (also a
 * memfd, SPSC). A slot is one cache line whose seq the producer stores last: the
 * consumer polls the next slot's seq alone, so an arrival costs it one cache-line transfer.
 * head (released) is the credit window; the producer reads it only when a put finds the
 * window full, so it does not bounce between the processes on every put.
 * Doorbells are per-context eventfds, written only when the other side said it is about to
 * sleep (Dekker-style flag + seq_cst fence on both sides). The Unix socket that carried the
 * descriptors stays open: the kernel closes it when the peer dies, which is how death is
 * noticed (polled once a millisecond, or at once by tp_wait's epoll). */
#include "transport/transport-internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

struct shm_slot {
	_Alignas(64) _Atomic uint64_t seq; /* n + 1 once arrival n (0-based) is in this slot */
	uint32_t imm;
	uint32_t zero;
	uint64_t len;
};

struct shm_ring {
	_Alignas(64) _Atomic uint64_t head;      /* arrivals released by the consumer */
	_Alignas(64) _Atomic uint32_t cons_sleeping;
	_Alignas(64) _Atomic uint32_t prod_sleeping; /* asleep waiting for credits */
	_Alignas(64) struct shm_slot slots[];    /* [depth] */
};

struct shm_ctx {
	struct tp_context c;
	int doorbell; /* eventfd the peers write to wake this context */
	uint64_t last_tick;
	uint32_t polls; /* the clock is read for the liveness tick every 32 polls only */
};

struct shm_ep {
	struct tp_ep e;
	int sock;
	int in_fd;
	struct shm_ring *in; /* arrivals for us; we consume */
	size_t in_map;
	struct shm_ring *out; /* the peer's arrival ring; we produce */
	size_t out_map;
	uint8_t *peer_region;
	size_t peer_map;
	int peer_doorbell;
	uint64_t *comp; /* [send_depth] cookies of signalled puts not yet reported */
	uint32_t comp_head, comp_tail;
};

struct shm_hello {
	uint64_t region_map, ring_map;
	uint32_t depth, zero;
};

#define SHM_CTX(c) ((struct shm_ctx *)(c))
#define SHM_EP(e) ((struct shm_ep *)(e))

static size_t ring_bytes(uint32_t depth)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t n = sizeof(struct shm_ring) + (size_t)depth * sizeof(struct shm_slot);
	return (n + page - 1) / page * page;
}

static void ring_doorbell(int fd)
{
	uint64_t one = 1;
	/* EAGAIN means the counter is already non-zero: the sleeper will wake anyway. */
	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		fr_dbg("tp.shm", "doorbell write: %s", strerror(errno));
}

static int shm_ctx_init(struct tp_context *c)
{
	struct shm_ctx *ctx = SHM_CTX(c);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	ctx->doorbell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ctx->doorbell < 0)
		return -errno;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, ctx->doorbell, &ev) < 0) {
		int rc = -errno;
		close(ctx->doorbell);
		return rc;
	}
	return 0;
}

static void shm_ctx_fini(struct tp_context *c)
{
	close(SHM_CTX(c)->doorbell);
}

static int shm_ep_init(struct tp_ep *e)
{
	struct shm_ep *ep = SHM_EP(e);
	uint32_t depth = e->ctx->cfg.recv_depth;
	int rc;

	ep->sock = ep->in_fd = ep->peer_doorbell = -1;
	ep->in = ep->out = MAP_FAILED;
	ep->peer_region = MAP_FAILED;
	if (e->recv->fd < 0) {
		fr_err("tp.shm", "receive region must come from tp_mem_alloc (memfd)");
		return -EINVAL;
	}
	ep->comp = calloc(e->ctx->cfg.send_depth, sizeof(*ep->comp));
	if (!ep->comp)
		return -ENOMEM;
	ep->in_map = ring_bytes(depth);
	ep->in_fd = memfd_create("ferry-tp-ring", MFD_CLOEXEC);
	if (ep->in_fd < 0 || ftruncate(ep->in_fd, (off_t)ep->in_map) < 0)
		goto fail_errno;
	ep->in = mmap(NULL, ep->in_map, PROT_READ | PROT_WRITE, MAP_SHARED, ep->in_fd, 0);
	if (ep->in == MAP_FAILED)
		goto fail_errno;
	return 0;
fail_errno:
	rc = -errno;
	if (ep->in_fd >= 0)
		close(ep->in_fd);
	ep->in_fd = -1;
	free(ep->comp);
	ep->comp = NULL;
	return rc;
}

static int shm_ep_pack(const struct tp_ep *e, uint8_t *extra, size_t cap, size_t *ret_len)
{
	*ret_len = 0;
	return 0;
}

static int shm_ep_connect(struct tp_ep *e, int fd, const uint8_t *extra, size_t extra_len)
{
	struct shm_ep *ep = SHM_EP(e);
	struct tp_context *c = e->ctx;
	struct shm_hello mine = { .region_map = e->recv->map_len, .ring_map = ep->in_map,
				  .depth = c->cfg.recv_depth },
			 theirs;
	int fds[3] = { e->recv->fd, ep->in_fd, SHM_CTX(c)->doorbell }, pfds[3] = { -1, -1, -1 };
	uint64_t deadline = fr_now_ns() + (uint64_t)c->cfg.connect_timeout_ms * 1000000;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = ep };
	int rc;

	ep->sock = fd;
	rc = tp__send_fds(fd, fds, 3, &mine, sizeof(mine));
	if (rc == 0)
		rc = tp__recv_fds(fd, pfds, 3, &theirs, sizeof(theirs), deadline);
	if (rc < 0)
		goto fail;
	if (theirs.depth != e->peer_recv_depth || theirs.region_map < e->remote_len ||
	    theirs.ring_map < ring_bytes(theirs.depth)) {
		rc = -EPROTO;
		goto fail;
	}
	ep->peer_map = theirs.region_map;
	ep->peer_region = mmap(NULL, ep->peer_map, PROT_READ | PROT_WRITE,
			       MAP_SHARED | MAP_POPULATE, pfds[0], 0);
	if (ep->peer_region == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	ep->out_map = theirs.ring_map;
	ep->out = mmap(NULL, ep->out_map, PROT_READ | PROT_WRITE, MAP_SHARED, pfds[1], 0);
	if (ep->out == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	ep->peer_doorbell = pfds[2];
	pfds[2] = -1;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		rc = -errno;
		goto fail;
	}
	close(pfds[0]);
	close(pfds[1]);
	return 0;
fail:
	fr_err("tp.shm", "peer=%s: descriptor exchange failed: %s", e->peer, strerror(-rc));
	for (int i = 0; i < 3; i++)
		if (pfds[i] >= 0)
			close(pfds[i]);
	return rc; /* the rest is undone by shm_ep_fini */
}

static void shm_ep_fini(struct tp_ep *e)
{
	struct shm_ep *ep = SHM_EP(e);
	if (ep->sock >= 0) {
		epoll_ctl(e->ctx->epfd, EPOLL_CTL_DEL, ep->sock, NULL);
		close(ep->sock);
	}
	if (ep->peer_region != MAP_FAILED)
		munmap(ep->peer_region, ep->peer_map);
	if (ep->out != MAP_FAILED)
		munmap(ep->out, ep->out_map);
	if (ep->in != MAP_FAILED)
		munmap(ep->in, ep->in_map);
	if (ep->in_fd >= 0)
		close(ep->in_fd);
	if (ep->peer_doorbell >= 0)
		close(ep->peer_doorbell);
	free(ep->comp);
}

static int shm_put(struct tp_ep *e, const struct tp_mem *local, size_t local_off,
		   uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie)
{
	struct shm_ep *ep = SHM_EP(e);
	uint32_t sd = e->ctx->cfg.send_depth;
	uint64_t t = e->puts;

	if ((flags & TP_PUT_SIGNAL) && ep->comp_tail - ep->comp_head >= sd)
		return -EAGAIN;
	struct shm_slot *sl = &ep->out->slots[t % e->peer_recv_depth];
	memcpy(ep->peer_region + remote_off, (const uint8_t *)local->ptr + local_off, len);
	sl->imm = imm;
	sl->len = len;
	atomic_store_explicit(&sl->seq, t + 1, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&ep->out->cons_sleeping, memory_order_relaxed))
		ring_doorbell(ep->peer_doorbell);
	if (flags & TP_PUT_SIGNAL)
		ep->comp[ep->comp_tail++ % sd] = cookie;
	return 0;
}

static void shm_credits_released(struct tp_ep *e)
{
	struct shm_ep *ep = SHM_EP(e);
	atomic_store_explicit(&ep->in->head, e->released, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	/* Wake a sleeping sender for a quarter window or when we are caught up, not for
	 * every slot: one wakeup per credit would ping-pong both processes through epoll. */
	if (atomic_load_explicit(&ep->in->prod_sleeping, memory_order_relaxed) &&
	    (e->released - e->released_sent >= FR_MAX(1u, e->ctx->cfg.recv_depth / 4) ||
	     e->released == e->delivered)) {
		ring_doorbell(ep->peer_doorbell);
		e->released_sent = e->released;
	}
}

/* The slot of arrival `delivered` does not hold it yet: it still holds the arrival one lap
 * before, or none (first lap). Anything else than that or the arrival is corruption. */
static bool slot_empty(uint64_t seq, uint64_t delivered, uint32_t depth)
{
	return seq + depth == delivered + 1 || (seq == 0 && delivered < depth);
}

static void shm_refresh_credits(struct tp_ep *e)
{
	tp__credits_in(e, atomic_load_explicit(&SHM_EP(e)->out->head, memory_order_acquire));
}

static void drain_doorbell(struct shm_ctx *ctx)
{
	uint64_t v;
	while (read(ctx->doorbell, &v, sizeof(v)) > 0)
		;
}

/* Liveness: the peer's socket turns readable (EOF) when its process dies. */
static void check_sockets(struct shm_ctx *ctx)
{
	struct epoll_event ee[16];
	int n = epoll_wait(ctx->c.epfd, ee, FR_ARRAY_SIZE(ee), 0);
	for (int i = 0; i < n; i++) {
		struct shm_ep *ep = ee[i].data.ptr;
		char b;
		if (!ep) {
			drain_doorbell(ctx);
			continue;
		}
		if (ep->e.status < 0)
			continue;
		ssize_t r = recv(ep->sock, &b, 1, MSG_DONTWAIT);
		if (r != 0 && !(r < 0 && errno != EAGAIN && errno != EINTR) && r <= 0)
			continue;
		/* failed either way: stop the level-triggered fd from waking tp_wait */
		epoll_ctl(ctx->c.epfd, EPOLL_CTL_DEL, ep->sock, NULL);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			tp__ep_fail(&ep->e, -ECONNRESET, "peer closed its socket (process gone?)");
		else if (r > 0)
			tp__ep_fail(&ep->e, -EPROTO, "unexpected byte on the shm socket");
	}
}

static int shm_poll(struct tp_context *c, struct tp_event *evs, int max)
{
	struct shm_ctx *ctx = SHM_CTX(c);
	int n = 0;

	for (struct tp_ep *e = c->eps; e && n < max; e = e->next) {
		struct shm_ep *ep = SHM_EP(e);
		if (!e->connected)
			continue;
		while (ep->comp_head != ep->comp_tail && n < max)
			evs[n++] = (struct tp_event){
				.type = TP_EV_SEND_DONE, .ep = e, .ep_user = e->user,
				.cookie = ep->comp[ep->comp_head++ % c->cfg.send_depth] };
		if (e->status < 0)
			continue;
		if (!tp__have_credit(e))
			shm_refresh_credits(e);
		while (n < max) {
			const struct shm_slot *sl = &ep->in->slots[e->delivered % c->cfg.recv_depth];
			uint64_t seq = atomic_load_explicit(&sl->seq, memory_order_acquire);
			if (seq != e->delivered + 1) {
				if (!slot_empty(seq, e->delivered, c->cfg.recv_depth))
					tp__ep_fail(e, -EPROTO, "arrival ring corrupted (slot seq "
						    "%llu, expected %llu)", (unsigned long long)seq,
						    (unsigned long long)e->delivered + 1);
				break;
			}
			if (e->delivered - e->released >= c->cfg.recv_depth) {
				tp__ep_fail(e, -EPROTO, "arrival ring overrun (arrival %llu with "
					    "%llu unreleased)", (unsigned long long)seq,
					    (unsigned long long)(e->delivered - e->released));
				break;
			}
			evs[n++] = (struct tp_event){ .type = TP_EV_ARRIVAL, .ep = e,
						      .ep_user = e->user, .imm = sl->imm,
						      .len = sl->len };
			e->arrivals = ++e->delivered;
		}
	}
	if ((++ctx->polls & 31) == 0 && tp__tick(&ctx->last_tick))
		check_sockets(ctx);
	return n;
}

static int shm_arm(struct tp_context *c)
{
	int pending = 0;
	for (struct tp_ep *e = c->eps; e; e = e->next) {
		struct shm_ep *ep = SHM_EP(e);
		if (!e->connected || e->status < 0)
			continue;
		atomic_store_explicit(&ep->in->cons_sleeping, 1, memory_order_relaxed);
		/* wake for credits only when a put is waiting for them */
		atomic_store_explicit(&ep->out->prod_sleeping, !tp__have_credit(e),
				      memory_order_relaxed);
	}
	atomic_thread_fence(memory_order_seq_cst);
	for (struct tp_ep *e = c->eps; e && !pending; e = e->next) {
		struct shm_ep *ep = SHM_EP(e);
		if (!e->connected || e->status < 0)
			continue;
		const struct shm_slot *sl = &ep->in->slots[e->delivered % c->cfg.recv_depth];
		pending = !slot_empty(atomic_load_explicit(&sl->seq, memory_order_relaxed),
				      e->delivered, c->cfg.recv_depth) ||
			  (!tp__have_credit(e) &&
			   atomic_load_explicit(&ep->out->head, memory_order_relaxed) !=
				   e->peer_released) ||
			  ep->comp_head != ep->comp_tail;
	}
	return pending;
}

static void shm_disarm(struct tp_context *c)
{
	struct shm_ctx *ctx = SHM_CTX(c);
	for (struct tp_ep *e = c->eps; e; e = e->next) {
		struct shm_ep *ep = SHM_EP(e);
		if (!e->connected)
			continue;
		atomic_store_explicit(&ep->in->cons_sleeping, 0, memory_order_relaxed);
		atomic_store_explicit(&ep->out->prod_sleeping, 0, memory_order_relaxed);
	}
	drain_doorbell(ctx);
	ctx->last_tick = 0; /* we may have woken for a closed socket: look now */
	ctx->polls = 31;
}

const struct tp_ops tp_shm_ops = {
	.name = "shm",
	.ctx_size = sizeof(struct shm_ctx),
	.ep_size = sizeof(struct shm_ep),
	.ctx_init = shm_ctx_init,
	.ctx_fini = shm_ctx_fini,
	.ep_init = shm_ep_init,
	.ep_pack = shm_ep_pack,
	.ep_connect = shm_ep_connect,
	.ep_fini = shm_ep_fini,
	.put = shm_put,
	.credits_released = shm_credits_released,
	.refresh_credits = shm_refresh_credits,
	.poll = shm_poll,
	.arm = shm_arm,
	.disarm = shm_disarm,
};
