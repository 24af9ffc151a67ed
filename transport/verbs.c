/* SPDX-License-Identifier: Apache-2.0 */
/* verbs.c - the verbs backend; the only file that calls ibv_*.
 *
 * Lifetimes: per context one device, PD, completion channel and CQ (one CQ per poller);
 * per endpoint one RC QP with its own small control MR (credit receive buffers).
 * Data: RDMA_WRITE_WITH_IMM into the peer's receive region (rkey + address from the blob),
 * inline up to inline_max, selectively signalled (every send_depth/2 WRs, or on request).
 * Receives are pre-posted: a write-with-imm consumes one and is an arrival; a SEND with an
 * 8-byte cumulative released count is a credit return. wr_ids carry (endpoint id, slot),
 * not pointers, so completions of a destroyed endpoint are recognised and dropped.
 * Bootstrap: the TCP socket from boot.c syncs RTR/RTS and stays open for liveness.
 * Conversions: ibv_* return NULL+errno, -1+errno or a positive errno; each call site turns
 * that into -errno once. */
#include "transport/transport-internal.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define VCOMP "tp.verbs"
#define CREDIT_RECVS 4
#define CQ_DEPTH 8192
#define STASH 64
#define WR_RECV (1ull << 31)

struct vb_ctx {
	struct tp_context c;
	struct ibv_context *dev;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *cq;
	uint8_t port;
	int gid_index;
	union ibv_gid gid;
	uint16_t lid;
	bool ib_link;
	enum ibv_mtu active_mtu;
	uint32_t max_inline;
	char name[IBV_SYSFS_NAME_MAX];
	uint32_t next_id, cq_used;
	uint64_t last_tick;
	bool armed;
	struct ibv_wc stash[STASH]; /* completions polled while arming */
	int n_stash, stash_pos;
};

struct vb_sqe {
	uint64_t seq, cookie;
	bool user_signal;
};

struct vb_ep {
	struct tp_ep e;
	uint32_t id;
	struct ibv_qp *qp;
	struct ibv_mr *ctrl_mr;
	uint64_t *ctrl; /* [rq_size] credit receive buffers, LE */
	int sock;
	struct vb_sqe *sq;
	uint32_t sq_size, rq_size, since_signal;
	uint64_t sq_posted, sq_done;
	uint64_t sig_seq;     /* 1 + seq of the last signalled WR (a completion is owed) */
	uint64_t progress_ns; /* when sq_done last moved, or a completion became owed */
	uint32_t psn, peer_qpn, peer_psn, peer_rkey;
	uint64_t peer_addr;
	uint16_t peer_lid;
	union ibv_gid peer_gid;
	enum ibv_mtu mtu;
};

struct vb_blob { /* LE on the wire, 40 bytes */
	uint8_t gid[16];
	uint32_t qpn, psn, rkey;
	uint16_t lid;
	uint8_t mtu, zero;
	uint64_t addr;
};

#define VB_CTX(c) ((struct vb_ctx *)(c))
#define VB_EP(e) ((struct vb_ep *)(e))

static int mtu_bytes(enum ibv_mtu m)
{
	return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

static enum ibv_mtu mtu_enum(uint32_t bytes)
{
	enum ibv_mtu m = IBV_MTU_256;
	while (m < IBV_MTU_4096 && (uint32_t)mtu_bytes(m + 1) <= bytes)
		m++;
	return m;
}

/* RoCEv2 with an IPv4-mapped address (::ffff:a.b.c.d) is the GID that routes. */
static int pick_gid(struct ibv_context *dev, uint8_t port, int tbl_len, bool *v4_ret)
{
	int best = -1;
	for (int i = 0; i < tbl_len; i++) {
		struct ibv_gid_entry ent;
		if (ibv_query_gid_ex(dev, port, (uint32_t)i, &ent, 0))
			continue;
		if (ent.gid_type != IBV_GID_TYPE_ROCE_V2)
			continue;
		const uint8_t *r = ent.gid.raw;
		bool v4 = !memcmp(r, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12);
		if (v4) {
			*v4_ret = true;
			return i;
		}
		if (best < 0)
			best = i;
	}
	*v4_ret = false;
	return best;
}

/* Finds a usable (device, port): the configured ones, else the first ACTIVE port. */
static int open_device(struct vb_ctx *ctx)
{
	const struct tp_config *cfg = &ctx->c.cfg;
	struct ibv_device **list;
	int num = 0, rc = -ENODEV;

	list = ibv_get_device_list(&num);
	if (!list || !num) {
		fr_warn(VCOMP, "no RDMA devices found");
		if (list)
			ibv_free_device_list(list);
		return -ENODEV;
	}
	for (int d = 0; d < num && !ctx->dev; d++) {
		const char *name = ibv_get_device_name(list[d]);
		if (cfg->device && strcmp(cfg->device, name))
			continue;
		struct ibv_context *dev = ibv_open_device(list[d]);
		struct ibv_device_attr da;
		if (!dev) {
			fr_warn(VCOMP, "device %s: open failed: %s", name, strerror(errno));
			continue;
		}
		if (ibv_query_device(dev, &da)) {
			ibv_close_device(dev);
			continue;
		}
		for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
			struct ibv_port_attr pa;
			bool v4 = false;
			if (cfg->port && cfg->port != p)
				continue;
			if (ibv_query_port(dev, p, &pa) || pa.state != IBV_PORT_ACTIVE) {
				if (cfg->port)
					fr_err(VCOMP, "device %s port %u: not ACTIVE", name, p);
				continue;
			}
			int gi;
			if (cfg->gid_index_set)
				gi = cfg->gid_index;
			else if (pa.link_layer == IBV_LINK_LAYER_INFINIBAND)
				gi = 0;
			else
				gi = pick_gid(dev, p, pa.gid_tbl_len, &v4);
			if (gi < 0 || gi >= pa.gid_tbl_len ||
			    ibv_query_gid(dev, p, gi, &ctx->gid)) {
				fr_warn(VCOMP, "device %s port %u: no usable GID (index %d)", name, p,
					gi);
				continue;
			}
			ctx->dev = dev;
			ctx->port = p;
			ctx->gid_index = gi;
			ctx->lid = pa.lid;
			ctx->ib_link = pa.link_layer == IBV_LINK_LAYER_INFINIBAND;
			ctx->active_mtu = pa.active_mtu;
			snprintf(ctx->name, sizeof(ctx->name), "%s", name);
			char gs[INET6_ADDRSTRLEN] = "?";
			inet_ntop(AF_INET6, ctx->gid.raw, gs, sizeof(gs));
			fr_info(VCOMP,
				"picked device=%s port=%u gid_index=%d gid=%s%s link=%s "
				"active_mtu=%d%s",
				name, p, gi, gs, v4 ? " (RoCEv2 IPv4)" : "",
				ctx->ib_link ? "ib" : "eth", mtu_bytes(pa.active_mtu),
				cfg->device || cfg->port || cfg->gid_index_set ? " (configured)"
									       : " (auto)");
			break;
		}
		if (!ctx->dev)
			ibv_close_device(dev);
	}
	if (!ctx->dev)
		fr_warn(VCOMP, "no ACTIVE port%s%s", cfg->device ? " on device " : "",
			cfg->device ? cfg->device : "");
	else
		rc = 0;
	ibv_free_device_list(list);
	return rc;
}

static int vb_ctx_init(struct tp_context *c)
{
	struct vb_ctx *ctx = VB_CTX(c);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	int rc;

	rc = open_device(ctx);
	if (rc < 0)
		return rc;
	ctx->pd = ibv_alloc_pd(ctx->dev);
	if (!ctx->pd)
		goto fail_errno;
	ctx->ch = ibv_create_comp_channel(ctx->dev);
	if (!ctx->ch)
		goto fail_errno;
	if (tp__set_nonblock(ctx->ch->fd) < 0)
		goto fail_errno;
	ctx->cq = ibv_create_cq(ctx->dev, CQ_DEPTH, ctx, ctx->ch, 0);
	if (!ctx->cq)
		goto fail_errno;
	if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, ctx->ch->fd, &ev) < 0)
		goto fail_errno;
	ctx->next_id = 1;
	return 0;
fail_errno:
	rc = errno ? -errno : -EIO;
	fr_err(VCOMP, "device %s: context setup failed: %s", ctx->name, strerror(-rc));
	if (ctx->cq)
		ibv_destroy_cq(ctx->cq);
	if (ctx->ch)
		ibv_destroy_comp_channel(ctx->ch);
	if (ctx->pd)
		ibv_dealloc_pd(ctx->pd);
	ibv_close_device(ctx->dev);
	return rc;
}

static void vb_ctx_fini(struct tp_context *c)
{
	struct vb_ctx *ctx = VB_CTX(c);
	if (ctx->armed) { /* consume a pending event so destroy_cq does not wait on it */
		struct ibv_cq *cq;
		void *cctx;
		if (ibv_get_cq_event(ctx->ch, &cq, &cctx) == 0)
			ibv_ack_cq_events(cq, 1);
	}
	ibv_destroy_cq(ctx->cq);
	ibv_destroy_comp_channel(ctx->ch);
	ibv_dealloc_pd(ctx->pd);
	ibv_close_device(ctx->dev);
}

static int vb_mem_reg(struct tp_context *c, struct tp_mem *mem)
{
	struct ibv_mr *mr = ibv_reg_mr(VB_CTX(c)->pd, mem->ptr, mem->len,
				       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!mr) {
		int rc = errno ? -errno : -EIO;
		fr_err(VCOMP, "device %s: ibv_reg_mr(%zu bytes): %s (ulimit -l?)",
		       VB_CTX(c)->name, mem->len, strerror(-rc));
		return rc;
	}
	mem->priv = mr;
	return 0;
}

static int vb_mem_reg_dmabuf(struct tp_context *c, struct tp_mem *mem, int fd, uint64_t offset)
{
#ifdef FERRY_HAVE_IBV_DMABUF
	struct ibv_mr *mr = ibv_reg_dmabuf_mr(VB_CTX(c)->pd, offset, mem->len,
					      (uint64_t)(uintptr_t)mem->ptr, fd,
					      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	if (!mr) {
		int rc = errno ? -errno : -EIO;
		fr_info(VCOMP, "device %s: ibv_reg_dmabuf_mr(%zu bytes): %s", VB_CTX(c)->name,
			mem->len, strerror(-rc));
		return rc; /* EOPNOTSUPP: a provider without dma-buf support */
	}
	mem->priv = mr;
	return 0;
#else
	(void)c;
	(void)mem;
	(void)fd;
	(void)offset;
	fr_info(VCOMP, "ibv_reg_dmabuf_mr: this rdma-core has none");
	return -EOPNOTSUPP;
#endif
}

static void vb_mem_dereg(struct tp_context *c, struct tp_mem *mem)
{
	if (mem->priv)
		ibv_dereg_mr(mem->priv);
}

static int post_recv(struct vb_ep *ep, uint32_t idx)
{
	struct ibv_sge sge = { .addr = (uintptr_t)&ep->ctrl[idx], .length = 8,
			       .lkey = ep->ctrl_mr->lkey };
	struct ibv_recv_wr wr = { .wr_id = ((uint64_t)ep->id << 32) | WR_RECV | idx,
				  .sg_list = &sge, .num_sge = 1 },
			   *bad;
	return -ibv_post_recv(ep->qp, &wr, &bad);
}

static int vb_ep_init(struct tp_ep *e)
{
	struct vb_ep *ep = VB_EP(e);
	struct vb_ctx *ctx = VB_CTX(e->ctx);
	const struct tp_config *cfg = &e->ctx->cfg;
	int rc;

	ep->sock = -1;
	ep->sq_size = cfg->send_depth + CREDIT_RECVS;
	ep->rq_size = cfg->recv_depth + CREDIT_RECVS;
	if (ctx->cq_used + ep->sq_size + ep->rq_size > CQ_DEPTH) {
		fr_err(VCOMP, "device %s: CQ full (%u entries in use)", ctx->name, ctx->cq_used);
		return -ENOSPC;
	}
	ep->id = ctx->next_id++;
	ep->psn = (uint32_t)(e->nonce & 0xffffff);
	ep->sq = calloc(ep->sq_size, sizeof(*ep->sq));
	ep->ctrl = calloc(ep->rq_size, sizeof(*ep->ctrl));
	if (!ep->sq || !ep->ctrl) {
		rc = -ENOMEM;
		goto fail;
	}
	ep->ctrl_mr = ibv_reg_mr(ctx->pd, ep->ctrl, ep->rq_size * sizeof(*ep->ctrl),
				 IBV_ACCESS_LOCAL_WRITE);
	if (!ep->ctrl_mr) {
		rc = errno ? -errno : -EIO;
		goto fail;
	}
	struct ibv_qp_init_attr qa = {
		.send_cq = ctx->cq,
		.recv_cq = ctx->cq,
		.cap = { .max_send_wr = ep->sq_size, .max_recv_wr = ep->rq_size,
			 .max_send_sge = 1, .max_recv_sge = 1,
			 .max_inline_data = FR_MAX(cfg->inline_max, 8u) },
		.qp_type = IBV_QPT_RC,
	};
	ep->qp = ibv_create_qp(ctx->pd, &qa);
	if (!ep->qp) {
		rc = errno ? -errno : -EIO;
		fr_err(VCOMP, "device %s: ibv_create_qp: %s", ctx->name, strerror(-rc));
		goto fail;
	}
	ctx->max_inline = FR_MIN(cfg->inline_max, qa.cap.max_inline_data);
	struct ibv_qp_attr init = { .qp_state = IBV_QPS_INIT, .pkey_index = 0,
				    .port_num = ctx->port,
				    .qp_access_flags = IBV_ACCESS_REMOTE_WRITE };
	rc = -ibv_modify_qp(ep->qp, &init,
			    IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
	if (rc < 0) {
		fr_err(VCOMP, "device %s qp 0x%x: INIT failed: %s (port %u)", ctx->name,
		       ep->qp->qp_num, strerror(-rc), ctx->port);
		goto fail;
	}
	for (uint32_t i = 0; i < ep->rq_size; i++) {
		rc = post_recv(ep, i);
		if (rc < 0)
			goto fail;
	}
	ctx->cq_used += ep->sq_size + ep->rq_size;
	return 0;
fail:
	if (ep->qp)
		ibv_destroy_qp(ep->qp);
	if (ep->ctrl_mr)
		ibv_dereg_mr(ep->ctrl_mr);
	free(ep->sq);
	free(ep->ctrl);
	return rc;
}

static void vb_ep_fini(struct tp_ep *e)
{
	struct vb_ep *ep = VB_EP(e);
	struct vb_ctx *ctx = VB_CTX(e->ctx);
	if (ep->sock >= 0) {
		epoll_ctl(e->ctx->epfd, EPOLL_CTL_DEL, ep->sock, NULL);
		close(ep->sock);
	}
	/* Completions still in the CQ carry this endpoint's id and are dropped by poll. */
	ibv_destroy_qp(ep->qp);
	ibv_dereg_mr(ep->ctrl_mr);
	free(ep->sq);
	free(ep->ctrl);
	ctx->cq_used -= ep->sq_size + ep->rq_size;
}

static int vb_ep_pack(const struct tp_ep *e, uint8_t *extra, size_t cap, size_t *ret_len)
{
	const struct vb_ep *ep = VB_EP(e);
	const struct vb_ctx *ctx = VB_CTX(e->ctx);
	struct vb_blob b = { 0 };
	if (cap < sizeof(b))
		return -ENOBUFS;
	memcpy(b.gid, ctx->gid.raw, 16);
	b.qpn = htole32(ep->qp->qp_num);
	b.psn = htole32(ep->psn);
	b.rkey = htole32(((struct ibv_mr *)e->recv->priv)->rkey);
	b.lid = htole16(ctx->lid);
	uint32_t cap_mtu = e->ctx->cfg.mtu;
	enum ibv_mtu m = ctx->active_mtu;
	if (cap_mtu && mtu_enum(cap_mtu) < m)
		m = mtu_enum(cap_mtu);
	b.mtu = (uint8_t)m;
	b.addr = htole64((uintptr_t)e->recv->ptr);
	memcpy(extra, &b, sizeof(b));
	*ret_len = sizeof(b);
	return 0;
}

static int qp_step(struct vb_ep *ep, const char *step, struct ibv_qp_attr *a, int mask)
{
	struct vb_ctx *ctx = VB_CTX(ep->e.ctx);
	int rc = -ibv_modify_qp(ep->qp, a, mask);
	if (rc < 0) {
		char gs[INET6_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET6, ep->peer_gid.raw, gs, sizeof(gs));
		fr_err(VCOMP,
		       "device %s qp 0x%x peer=%s (qpn 0x%x gid %s): %s failed: %s "
		       "(gid_index %d, mtu %d, port %u)",
		       ctx->name, ep->qp->qp_num, ep->e.peer, ep->peer_qpn, gs, step,
		       strerror(-rc), ctx->gid_index, mtu_bytes(ep->mtu), ctx->port);
		return -EIO;
	}
	return 0;
}

static uint8_t qp_timeout(uint32_t peer_timeout_ms)
{
	/* 4.096 us * 2^t per try, retry_cnt 7 => 8 tries within peer_timeout_ms */
	uint64_t per_try_us = (uint64_t)peer_timeout_ms * 1000 / 8;
	uint8_t t = 14; /* the floor: soft-RoCE under emulation needs slack */
	while (t < 24 && (4096ull << (t + 1)) / 1000 <= per_try_us)
		t++;
	return t;
}

static int vb_ep_connect(struct tp_ep *e, int fd, const uint8_t *extra, size_t extra_len)
{
	struct vb_ep *ep = VB_EP(e);
	struct vb_ctx *ctx = VB_CTX(e->ctx);
	struct vb_blob b;
	uint64_t deadline = fr_now_ns() + (uint64_t)e->ctx->cfg.connect_timeout_ms * 1000000;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = ep };
	int rc;

	ep->sock = fd;
	if (extra_len != sizeof(b))
		return -EBADMSG;
	memcpy(&b, extra, sizeof(b));
	memcpy(ep->peer_gid.raw, b.gid, 16);
	ep->peer_qpn = le32toh(b.qpn);
	ep->peer_psn = le32toh(b.psn);
	ep->peer_rkey = le32toh(b.rkey);
	ep->peer_lid = le16toh(b.lid);
	ep->peer_addr = le64toh(b.addr);
	if (b.mtu < IBV_MTU_256 || b.mtu > IBV_MTU_4096)
		return -EBADMSG;
	/* path MTU: the smaller of both sides' active (or configured) MTU */
	enum ibv_mtu m = ctx->active_mtu;
	if (e->ctx->cfg.mtu && mtu_enum(e->ctx->cfg.mtu) < m)
		m = mtu_enum(e->ctx->cfg.mtu);
	ep->mtu = FR_MIN(m, (enum ibv_mtu)b.mtu);

	struct ibv_qp_attr rtr = {
		.qp_state = IBV_QPS_RTR,
		.path_mtu = ep->mtu,
		.dest_qp_num = ep->peer_qpn,
		.rq_psn = ep->peer_psn,
		.max_dest_rd_atomic = 1,
		.min_rnr_timer = 12,
		.ah_attr = { .port_num = ctx->port, .sl = 0 },
	};
	if (ctx->ib_link && ep->peer_lid) {
		rtr.ah_attr.dlid = ep->peer_lid;
	} else {
		rtr.ah_attr.is_global = 1;
		rtr.ah_attr.grh.dgid = ep->peer_gid;
		rtr.ah_attr.grh.sgid_index = (uint8_t)ctx->gid_index;
		rtr.ah_attr.grh.hop_limit = 64;
	}
	rc = qp_step(ep, "RTR", &rtr,
		     IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
			     IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
	if (rc < 0)
		return rc;
	struct ibv_qp_attr rts = {
		.qp_state = IBV_QPS_RTS,
		.timeout = qp_timeout(e->ctx->cfg.peer_timeout_ms),
		.retry_cnt = 7,
		.rnr_retry = 7,
		.sq_psn = ep->psn,
		.max_rd_atomic = 1,
	};
	rc = qp_step(ep, "RTS", &rts,
		     IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
			     IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
	if (rc < 0)
		return rc;
	/* Neither side writes before the other's QP is in RTR: swap a byte. */
	char r = 'R';
	rc = tp__io_full(fd, &r, 1, true, deadline);
	if (rc == 0)
		rc = tp__io_full(fd, &r, 1, false, deadline);
	if (rc == 0)
		rc = tp__sock_liveness(fd, e->ctx->cfg.peer_timeout_ms);
	if (rc == 0 && epoll_ctl(e->ctx->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		rc = -errno;
	if (rc < 0) {
		fr_err(VCOMP, "peer=%s: ready handshake failed: %s", e->peer, strerror(-rc));
		return rc;
	}
	fr_info(VCOMP, "device %s qp 0x%x <-> peer=%s qp 0x%x: RTS, mtu %d, timeout %u",
		ctx->name, ep->qp->qp_num, e->peer, ep->peer_qpn, mtu_bytes(ep->mtu), rts.timeout);
	return 0;
}

static void vb_fail(struct vb_ep *ep, int rc, const char *why)
{
	if (ep->e.status == 0) {
		struct ibv_qp_attr a = { .qp_state = IBV_QPS_ERR };
		ibv_modify_qp(ep->qp, &a, IBV_QP_STATE); /* flush what is in flight */
		if (ep->sock >= 0)
			epoll_ctl(ep->e.ctx->epfd, EPOLL_CTL_DEL, ep->sock, NULL);
	}
	tp__ep_fail(&ep->e, rc, "%s", why);
}

static int post_send(struct vb_ep *ep, struct ibv_send_wr *wr, bool user_signal, uint64_t cookie)
{
	uint32_t half = FR_MAX(1u, ep->e.ctx->cfg.send_depth / 2);
	struct ibv_send_wr *bad;
	bool sig = user_signal || ++ep->since_signal >= half;
	struct vb_sqe *s = &ep->sq[ep->sq_posted % ep->sq_size];

	*s = (struct vb_sqe){ .seq = ep->sq_posted, .cookie = cookie, .user_signal = user_signal };
	wr->wr_id = ((uint64_t)ep->id << 32) | (uint32_t)(ep->sq_posted % ep->sq_size);
	if (sig) {
		wr->send_flags |= IBV_SEND_SIGNALED;
		ep->since_signal = 0;
		if (ep->sig_seq <= ep->sq_done)
			ep->progress_ns = fr_now_ns();
		ep->sig_seq = ep->sq_posted + 1;
	}
	int rc = ibv_post_send(ep->qp, wr, &bad);
	if (rc) {
		vb_fail(ep, -rc, "ibv_post_send failed");
		return -rc;
	}
	ep->sq_posted++;
	return 0;
}

static void send_credits(struct vb_ep *ep)
{
	struct tp_ep *e = &ep->e;
	if (e->status < 0 || ep->sq_posted - ep->sq_done >= ep->sq_size ||
	    !tp__should_return_credits(e))
		return;
	uint64_t v = htole64(e->released);
	struct ibv_sge sge = { .addr = (uintptr_t)&v, .length = 8, .lkey = 0 };
	struct ibv_send_wr wr = { .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
				  .send_flags = IBV_SEND_INLINE };
	if (post_send(ep, &wr, false, 0) == 0)
		e->released_sent = e->released;
}

static int vb_put(struct tp_ep *e, const struct tp_mem *local, size_t local_off,
		  uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie)
{
	struct vb_ep *ep = VB_EP(e);
	struct vb_ctx *ctx = VB_CTX(e->ctx);
	const struct ibv_mr *mr = local->priv;

	if (ep->sq_posted - ep->sq_done >= e->ctx->cfg.send_depth)
		return -EAGAIN;
	struct ibv_sge sge = { .addr = (uintptr_t)local->ptr + local_off, .length = (uint32_t)len,
			       .lkey = mr->lkey };
	struct ibv_send_wr wr = {
		.sg_list = &sge,
		.num_sge = len ? 1 : 0,
		.opcode = IBV_WR_RDMA_WRITE_WITH_IMM,
		/* inline: the CPU copies the bytes, which device memory does not allow */
		.send_flags = len <= ctx->max_inline && !local->device ? IBV_SEND_INLINE : 0,
		.imm_data = htonl(imm),
		.wr.rdma = { .remote_addr = ep->peer_addr + remote_off, .rkey = ep->peer_rkey },
	};
	if (len > UINT32_MAX)
		return -EINVAL;
	return post_send(ep, &wr, flags & TP_PUT_SIGNAL, cookie);
}

static void vb_credits_released(struct tp_ep *e)
{
	send_credits(VB_EP(e));
}

static struct vb_ep *ep_by_id(struct tp_context *c, uint32_t id)
{
	for (struct tp_ep *e = c->eps; e; e = e->next)
		if (VB_EP(e)->id == id)
			return VB_EP(e);
	return NULL;
}

/* One completion -> at most one event. Returns 1 if *ev was filled. */
static int handle_wc(struct tp_context *c, const struct ibv_wc *wc, struct tp_event *ev)
{
	struct vb_ep *ep = ep_by_id(c, (uint32_t)(wc->wr_id >> 32));
	uint32_t slot = (uint32_t)wc->wr_id & ~(uint32_t)WR_RECV;
	if (!ep)
		return 0; /* endpoint destroyed */
	struct tp_ep *e = &ep->e;

	if (wc->wr_id & WR_RECV) {
		if (wc->status != IBV_WC_SUCCESS) {
			if (wc->status != IBV_WC_WR_FLUSH_ERR)
				vb_fail(ep, -EIO, ibv_wc_status_str(wc->status));
			return 0;
		}
		int rc = post_recv(ep, slot);
		if (rc < 0)
			vb_fail(ep, rc, "ibv_post_recv failed");
		if (wc->opcode == IBV_WC_RECV) {
			uint64_t v = le64toh(ep->ctrl[slot]);
			if (v > e->puts)
				vb_fail(ep, -EPROTO, "credit beyond puts");
			else
				tp__credits_in(e, v);
			return 0;
		}
		if (e->arrivals - e->released >= c->cfg.recv_depth) {
			vb_fail(ep, -EPROTO, "peer wrote beyond its credits");
			return 0;
		}
		e->arrivals++;
		e->delivered++;
		*ev = (struct tp_event){ .type = TP_EV_ARRIVAL, .ep = e, .ep_user = e->user,
					 .imm = ntohl(wc->imm_data), .len = wc->byte_len };
		return 1;
	}
	const struct vb_sqe *s = &ep->sq[slot];
	if (s->seq + 1 > ep->sq_done) {
		ep->sq_done = s->seq + 1; /* signalled: everything before it is done too */
		ep->progress_ns = fr_now_ns();
	}
	if (wc->status != IBV_WC_SUCCESS && wc->status != IBV_WC_WR_FLUSH_ERR)
		vb_fail(ep, wc->status == IBV_WC_RETRY_EXC_ERR ? -ETIMEDOUT : -EIO,
			ibv_wc_status_str(wc->status));
	if (!s->user_signal)
		return 0;
	*ev = (struct tp_event){ .type = TP_EV_SEND_DONE, .ep = e, .ep_user = e->user,
				 .cookie = s->cookie,
				 .status = wc->status == IBV_WC_SUCCESS ? 0
									: (e->status ? e->status : -EIO) };
	return 1;
}

/* Liveness: the bootstrap socket closes when the peer process dies; a peer host that
 * vanishes shows as an owed completion that does not come (the provider's own retry
 * limit is not trusted: soft-RoCE retransmits for ever) or by TCP keepalive. */
static void check_sockets(struct vb_ctx *ctx)
{
	uint64_t now = fr_now_ns(), limit = (uint64_t)ctx->c.cfg.peer_timeout_ms * 1000000;
	for (struct tp_ep *e = ctx->c.eps; e; e = e->next) {
		struct vb_ep *ep = VB_EP(e);
		if (e->connected && e->status == 0 && ep->sig_seq > ep->sq_done &&
		    now - ep->progress_ns > limit)
			vb_fail(ep, -ETIMEDOUT, "no send completion within peer_timeout_ms");
	}
	struct epoll_event ee[16];
	int n = epoll_wait(ctx->c.epfd, ee, FR_ARRAY_SIZE(ee), 0);
	for (int i = 0; i < n; i++) {
		struct vb_ep *ep = ee[i].data.ptr;
		char b;
		if (!ep || ep->e.status < 0)
			continue;
		ssize_t r = recv(ep->sock, &b, 1, MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			vb_fail(ep, -ECONNRESET, "peer closed its bootstrap socket (process gone?)");
		else if (r > 0)
			vb_fail(ep, -EPROTO, "unexpected byte on the bootstrap socket");
	}
}

static int vb_poll(struct tp_context *c, struct tp_event *evs, int max)
{
	struct vb_ctx *ctx = VB_CTX(c);
	struct ibv_wc wc[32];
	int n = 0;

	while (ctx->stash_pos < ctx->n_stash && n < max)
		n += handle_wc(c, &ctx->stash[ctx->stash_pos++], &evs[n]);
	while (n < max) {
		int k = ibv_poll_cq(ctx->cq, FR_MIN(max - n, (int)FR_ARRAY_SIZE(wc)), wc);
		if (k < 0) {
			fr_err(VCOMP, "device %s: ibv_poll_cq failed", ctx->name);
			return -EIO;
		}
		for (int i = 0; i < k; i++)
			n += handle_wc(c, &wc[i], &evs[n]);
		if (k < FR_MIN(max - n, (int)FR_ARRAY_SIZE(wc)) || k == 0)
			break;
	}
	for (struct tp_ep *e = c->eps; e; e = e->next)
		if (e->connected && e->status == 0 && tp__should_return_credits(e))
			send_credits(VB_EP(e));
	if (tp__tick(&ctx->last_tick))
		check_sockets(ctx);
	return n;
}

static int vb_arm(struct tp_context *c)
{
	struct vb_ctx *ctx = VB_CTX(c);
	if (ctx->stash_pos < ctx->n_stash)
		return 1;
	if (!ctx->armed) {
		if (ibv_req_notify_cq(ctx->cq, 0))
			return 1; /* cannot sleep safely: let the caller poll */
		ctx->armed = true;
	}
	/* Close the race with completions that landed before the request. */
	int k = ibv_poll_cq(ctx->cq, STASH, ctx->stash);
	ctx->n_stash = k > 0 ? k : 0;
	ctx->stash_pos = 0;
	return k != 0;
}

static void vb_disarm(struct tp_context *c)
{
	struct vb_ctx *ctx = VB_CTX(c);
	struct ibv_cq *cq;
	void *cctx;
	while (ctx->armed && ibv_get_cq_event(ctx->ch, &cq, &cctx) == 0) {
		ibv_ack_cq_events(cq, 1);
		ctx->armed = false; /* the notification fired: re-arm next time */
	}
	ctx->last_tick = 0;
}

const struct tp_ops tp_verbs_ops = {
	.name = "verbs",
	.ctx_size = sizeof(struct vb_ctx),
	.ep_size = sizeof(struct vb_ep),
	.ctx_init = vb_ctx_init,
	.ctx_fini = vb_ctx_fini,
	.mem_reg = vb_mem_reg,
	.mem_dereg = vb_mem_dereg,
	.mem_reg_dmabuf = vb_mem_reg_dmabuf,
	.ep_init = vb_ep_init,
	.ep_pack = vb_ep_pack,
	.ep_connect = vb_ep_connect,
	.ep_fini = vb_ep_fini,
	.put = vb_put,
	.credits_released = vb_credits_released,
	.poll = vb_poll,
	.arm = vb_arm,
	.disarm = vb_disarm,
};
