/* SPDX-License-Identifier: Apache-2.0 */
/* tcp.c - the tcp backend: puts as framed messages on one TCP stream per endpoint.
 *
 * Wire (little-endian): a 24-byte header {u32 type, u32 imm, u64 a, u64 len} followed, for
 * a put, by len payload bytes; a = remote offset for puts, the cumulative released count
 * for credit messages. Sends are zero-copy from the caller's memory through a bounded
 * ring of send_depth descriptors and writev (sendmsg); small arrivals are parsed out of a
 * 64 KiB staging buffer, large payloads are received straight into the receive region. */
#include "transport/transport-internal.h"

#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define HDR 24
#define RBUF (64u << 10)
#define DIRECT_MIN 4096 /* payload left that is worth a recv() straight into place */
#define MSG_PUT 0x46540001u
#define MSG_CREDIT 0x46540002u

struct tcp_sqe {
	const uint8_t *src;
	uint64_t len;
	uint64_t cookie;
	unsigned flags;
	uint8_t hdr[HDR];
};

struct tcp_arrival {
	uint32_t imm;
	uint64_t len;
};

struct tcp_ep {
	struct tp_ep e;
	int fd;
	bool want_out;
	struct tcp_sqe *sq; /* [send_depth] */
	uint64_t sq_tail, sq_sent, sq_done;
	uint64_t wr_off; /* bytes of sq[sq_sent] (header + payload) already written */
	uint8_t cred_hdr[HDR];
	uint32_t cred_off;
	bool cred_active;
	uint8_t *rbuf; /* [RBUF] staging */
	size_t rpos, rlen;
	uint8_t hbuf[HDR];
	uint32_t hgot;
	bool in_payload;
	uint8_t *dst;
	uint64_t dst_left;
	uint32_t cur_imm;
	uint64_t cur_len;
	struct tcp_arrival *arr; /* [recv_depth], indexed by arrival count */
};

#define TCP_EP(e) ((struct tcp_ep *)(e))

static void pack_hdr(uint8_t *h, uint32_t type, uint32_t imm, uint64_t a, uint64_t len)
{
	uint32_t t = htole32(type), i = htole32(imm);
	uint64_t aa = htole64(a), l = htole64(len);
	memcpy(h, &t, 4);
	memcpy(h + 4, &i, 4);
	memcpy(h + 8, &aa, 8);
	memcpy(h + 16, &l, 8);
}

static void tcp_fail(struct tcp_ep *ep, int rc, const char *what)
{
	if (ep->e.status == 0 && ep->fd >= 0)
		epoll_ctl(ep->e.ctx->epfd, EPOLL_CTL_DEL, ep->fd, NULL);
	tp__ep_fail(&ep->e, rc, "%s", what);
}

static int tcp_ctx_init(struct tp_context *c)
{
	return 0;
}

static void tcp_ctx_fini(struct tp_context *c)
{
}

static int tcp_ep_init(struct tp_ep *e)
{
	struct tcp_ep *ep = TCP_EP(e);
	ep->fd = -1;
	ep->sq = calloc(e->ctx->cfg.send_depth, sizeof(*ep->sq));
	ep->arr = calloc(e->ctx->cfg.recv_depth, sizeof(*ep->arr));
	ep->rbuf = malloc(RBUF);
	if (!ep->sq || !ep->arr || !ep->rbuf) {
		free(ep->sq);
		free(ep->arr);
		free(ep->rbuf);
		return -ENOMEM;
	}
	return 0;
}

static void tcp_ep_fini(struct tp_ep *e)
{
	struct tcp_ep *ep = TCP_EP(e);
	if (ep->fd >= 0) {
		if (e->status == 0)
			epoll_ctl(e->ctx->epfd, EPOLL_CTL_DEL, ep->fd, NULL);
		close(ep->fd);
	}
	free(ep->sq);
	free(ep->arr);
	free(ep->rbuf);
}

static int tcp_ep_pack(const struct tp_ep *e, uint8_t *extra, size_t cap, size_t *ret_len)
{
	*ret_len = 0;
	return 0;
}

static int tcp_ep_connect(struct tp_ep *e, int fd, const uint8_t *extra, size_t extra_len)
{
	struct tcp_ep *ep = TCP_EP(e);
	int one = 1;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = ep };

	ep->fd = fd;
	/* A vanished host is noticed by keepalive (idle) or the user timeout (unacked data). */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    tp__sock_liveness(fd, e->ctx->cfg.peer_timeout_ms) < 0 ||
	    epoll_ctl(e->ctx->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int rc = -errno;
		fr_err("tp.tcp", "peer=%s: socket setup: %s", e->peer, strerror(-rc));
		return rc;
	}
	return 0;
}

static void set_want_out(struct tcp_ep *ep, bool on)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0),
				  .data.ptr = ep };
	if (ep->want_out == on || ep->e.status < 0)
		return;
	if (epoll_ctl(ep->e.ctx->epfd, EPOLL_CTL_MOD, ep->fd, &ev) == 0)
		ep->want_out = on;
}

/* Writes as much of the queue (and a pending credit message) as the socket takes. */
static void tcp_flush(struct tcp_ep *ep)
{
	struct tp_ep *e = &ep->e;
	uint32_t sd = e->ctx->cfg.send_depth;

	while (e->status == 0) {
		struct iovec iov[64];
		int k = 0;

		if (!ep->cred_active && ep->wr_off == 0 && tp__should_return_credits(e)) {
			pack_hdr(ep->cred_hdr, MSG_CREDIT, 0, e->released, 0);
			e->released_sent = e->released;
			ep->cred_active = true;
			ep->cred_off = 0;
		}
		if (ep->cred_active)
			iov[k++] = (struct iovec){ ep->cred_hdr + ep->cred_off, HDR - ep->cred_off };
		uint64_t off = ep->wr_off;
		for (uint64_t i = ep->sq_sent; i < ep->sq_tail && k < 62; i++, off = 0) {
			struct tcp_sqe *s = &ep->sq[i % sd];
			if (off < HDR)
				iov[k++] = (struct iovec){ s->hdr + off, HDR - off };
			uint64_t poff = off > HDR ? off - HDR : 0;
			if (s->len > poff)
				iov[k++] = (struct iovec){ (void *)(s->src + poff), s->len - poff };
		}
		if (!k)
			break;
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)k };
		ssize_t n = sendmsg(ep->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				set_want_out(ep, true);
				return;
			}
			tcp_fail(ep, -errno, "send failed");
			return;
		}
		uint64_t left = (uint64_t)n;
		if (ep->cred_active) {
			uint32_t t = (uint32_t)FR_MIN(left, (uint64_t)(HDR - ep->cred_off));
			ep->cred_off += t;
			left -= t;
			if (ep->cred_off == HDR)
				ep->cred_active = false;
		}
		while (left) {
			struct tcp_sqe *s = &ep->sq[ep->sq_sent % sd];
			uint64_t rem = HDR + s->len - ep->wr_off;
			if (left >= rem) {
				left -= rem;
				ep->wr_off = 0;
				ep->sq_sent++;
			} else {
				ep->wr_off += left;
				left = 0;
			}
		}
	}
	set_want_out(ep, false);
}

static int tcp_put(struct tp_ep *e, const struct tp_mem *local, size_t local_off,
		   uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie)
{
	struct tcp_ep *ep = TCP_EP(e);
	uint32_t sd = e->ctx->cfg.send_depth;

	if (ep->sq_tail - ep->sq_done >= sd)
		return -EAGAIN;
	struct tcp_sqe *s = &ep->sq[ep->sq_tail % sd];
	s->src = (const uint8_t *)local->ptr + local_off;
	s->len = len;
	s->cookie = cookie;
	s->flags = flags;
	pack_hdr(s->hdr, MSG_PUT, imm, remote_off, len);
	ep->sq_tail++;
	if (!ep->want_out) /* socket not known to be full: try now */
		tcp_flush(ep);
	return 0;
}

static void tcp_credits_released(struct tp_ep *e)
{
	struct tcp_ep *ep = TCP_EP(e);
	if (tp__should_return_credits(e) && !ep->want_out)
		tcp_flush(ep);
}

static void finish_arrival(struct tcp_ep *ep)
{
	struct tp_ep *e = &ep->e;
	ep->arr[e->arrivals % e->ctx->cfg.recv_depth] =
		(struct tcp_arrival){ .imm = ep->cur_imm, .len = ep->cur_len };
	e->arrivals++;
	ep->in_payload = false;
}

static int handle_hdr(struct tcp_ep *ep)
{
	struct tp_ep *e = &ep->e;
	uint32_t type, imm;
	uint64_t a, len;

	memcpy(&type, ep->hbuf, 4);
	memcpy(&imm, ep->hbuf + 4, 4);
	memcpy(&a, ep->hbuf + 8, 8);
	memcpy(&len, ep->hbuf + 16, 8);
	type = le32toh(type);
	a = le64toh(a);
	len = le64toh(len);
	if (type == MSG_CREDIT) {
		if (a > e->puts)
			return -EPROTO;
		tp__credits_in(e, a);
		return 0;
	}
	if (type != MSG_PUT || a > e->recv->len || len > e->recv->len - a ||
	    e->arrivals - e->released >= e->ctx->cfg.recv_depth)
		return -EPROTO;
	ep->cur_imm = le32toh(imm);
	ep->cur_len = len;
	ep->in_payload = true;
	ep->dst = (uint8_t *)e->recv->ptr + a;
	ep->dst_left = len;
	if (!len)
		finish_arrival(ep);
	return 0;
}

static int parse(struct tcp_ep *ep)
{
	while (ep->rpos < ep->rlen) {
		size_t avail = ep->rlen - ep->rpos;
		if (ep->in_payload) {
			size_t k = (size_t)FR_MIN((uint64_t)avail, ep->dst_left);
			memcpy(ep->dst, ep->rbuf + ep->rpos, k);
			ep->dst += k;
			ep->dst_left -= k;
			ep->rpos += k;
			if (!ep->dst_left)
				finish_arrival(ep);
			continue;
		}
		size_t k = FR_MIN(avail, (size_t)(HDR - ep->hgot));
		memcpy(ep->hbuf + ep->hgot, ep->rbuf + ep->rpos, k);
		ep->hgot += (uint32_t)k;
		ep->rpos += k;
		if (ep->hgot < HDR)
			break;
		ep->hgot = 0;
		if (handle_hdr(ep) < 0)
			return -EPROTO;
	}
	return 0;
}

static void tcp_read(struct tcp_ep *ep)
{
	for (int iter = 0; iter < 256 && ep->e.status == 0; iter++) {
		ssize_t n;
		if (ep->in_payload && ep->rpos == ep->rlen && ep->dst_left >= DIRECT_MIN) {
			n = recv(ep->fd, ep->dst, ep->dst_left, MSG_DONTWAIT);
			if (n > 0) {
				ep->dst += n;
				ep->dst_left -= (uint64_t)n;
				if (!ep->dst_left)
					finish_arrival(ep);
				continue;
			}
		} else {
			n = recv(ep->fd, ep->rbuf, RBUF, MSG_DONTWAIT);
			if (n > 0) {
				ep->rpos = 0;
				ep->rlen = (size_t)n;
				if (parse(ep) < 0)
					tcp_fail(ep, -EPROTO, "malformed or over-credit message");
				continue;
			}
		}
		if (n == 0) {
			tcp_fail(ep, -ECONNRESET, "peer closed the connection");
		} else if (errno == EINTR) {
			continue;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
			tcp_fail(ep, -errno, "recv failed");
		}
		return;
	}
}

static int tcp_poll(struct tp_context *c, struct tp_event *evs, int max)
{
	struct epoll_event ee[64];
	uint32_t sd = c->cfg.send_depth, rd = c->cfg.recv_depth;
	int n = 0;
	int k = epoll_wait(c->epfd, ee, FR_ARRAY_SIZE(ee), 0);

	for (int i = 0; i < k; i++) {
		struct tcp_ep *ep = ee[i].data.ptr;
		if (ee[i].events & ~(uint32_t)EPOLLOUT)
			tcp_read(ep);
		if ((ee[i].events & EPOLLOUT) || tp__should_return_credits(&ep->e))
			tcp_flush(ep);
	}
	for (struct tp_ep *e = c->eps; e && n < max; e = e->next) {
		struct tcp_ep *ep = TCP_EP(e);
		/* After a failure, every put still queued completes with the error. */
		uint64_t end = e->status < 0 ? ep->sq_tail : ep->sq_sent;
		while (ep->sq_done < end && n < max) {
			struct tcp_sqe *s = &ep->sq[ep->sq_done % sd];
			int st = ep->sq_done >= ep->sq_sent ? e->status : 0;
			ep->sq_done++;
			if (s->flags & TP_PUT_SIGNAL)
				evs[n++] = (struct tp_event){ .type = TP_EV_SEND_DONE, .status = st,
							      .ep = e, .ep_user = e->user,
							      .cookie = s->cookie };
		}
		while (e->delivered < e->arrivals && n < max) {
			struct tcp_arrival *a = &ep->arr[e->delivered++ % rd];
			evs[n++] = (struct tp_event){ .type = TP_EV_ARRIVAL, .ep = e,
						      .ep_user = e->user, .imm = a->imm,
						      .len = a->len };
		}
	}
	return n;
}

static int tcp_arm(struct tp_context *c)
{
	for (struct tp_ep *e = c->eps; e; e = e->next) {
		struct tcp_ep *ep = TCP_EP(e);
		if (e->delivered < e->arrivals || ep->sq_done < ep->sq_sent ||
		    (e->status < 0 && ep->sq_done < ep->sq_tail))
			return 1;
	}
	return 0;
}

const struct tp_ops tp_tcp_ops = {
	.name = "tcp",
	.ctx_size = sizeof(struct tp_context),
	.ep_size = sizeof(struct tcp_ep),
	.ctx_init = tcp_ctx_init,
	.ctx_fini = tcp_ctx_fini,
	.ep_init = tcp_ep_init,
	.ep_pack = tcp_ep_pack,
	.ep_connect = tcp_ep_connect,
	.ep_fini = tcp_ep_fini,
	.put = tcp_put,
	.credits_released = tcp_credits_released,
	.poll = tcp_poll,
	.arm = tcp_arm,
};
