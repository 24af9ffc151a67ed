/* SPDX-License-Identifier: Apache-2.0 */
/* transport-internal.h - what the backends share: the ops table, the common parts of
 * context / memory / endpoint, the address blob, the socket bootstrap and credit rules. */
#ifndef FERRY_TRANSPORT_INTERNAL_H
#define FERRY_TRANSPORT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"
#include "transport/transport.h"

#define TP_COMP "tp"

struct tp_ops {
	const char *name;
	size_t ctx_size, ep_size; /* backends embed the common struct first */
	int (*ctx_init)(struct tp_context *ctx);
	void (*ctx_fini)(struct tp_context *ctx);
	int (*mem_reg)(struct tp_context *ctx, struct tp_mem *mem);   /* optional */
	void (*mem_dereg)(struct tp_context *ctx, struct tp_mem *mem); /* optional */
	/* tp_mem_register_dmabuf(): mem->ptr is the memory's address (not CPU-mapped), the
	 * buffer starts at offset in dma-buf fd. Optional: without it, -EOPNOTSUPP. */
	int (*mem_reg_dmabuf)(struct tp_context *ctx, struct tp_mem *mem, int fd, uint64_t offset);
	int (*ep_init)(struct tp_ep *ep);              /* after the bootstrap listener exists */
	int (*ep_pack)(const struct tp_ep *ep, uint8_t *extra, size_t cap, size_t *ret_len);
	/* fd: the bootstrap socket, connected and authenticated; the backend owns it now. */
	int (*ep_connect)(struct tp_ep *ep, int fd, const uint8_t *extra, size_t extra_len);
	void (*ep_fini)(struct tp_ep *ep);
	int (*put)(struct tp_ep *ep, const struct tp_mem *local, size_t local_off,
		   uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie);
	/* The user released arrivals (ep->released grew): publish now or when
	 * tp__should_return_credits() says so. */
	void (*credits_released)(struct tp_ep *ep);
	int (*poll)(struct tp_context *ctx, struct tp_event *evs, int max);
	/* Optional: a put found no credit; look for credits the peer returned since (backends
	 * whose credits sit in shared memory read them only when short). */
	void (*refresh_credits)(struct tp_ep *ep);
	/* Before sleeping: returns 1 if work is pending (do not sleep), else 0. */
	int (*arm)(struct tp_context *ctx);
	void (*disarm)(struct tp_context *ctx); /* after waking; optional */
};

struct tp_context {
	const struct tp_ops *ops;
	struct tp_config cfg;
	char *device_copy, *bind_copy;
	int epfd;
	struct tp_ep *eps; /* doubly linked through ep->next/prev */
	uint32_t n_failed_unreported;
	uint64_t credit_epoch; /* bumped whenever credits come back: tp_wait returns on it */
	uint32_t spin_cur_us;  /* tp_wait's current spin, spin_us .. spin_max_us */
	uint32_t wait_next;    /* tp_wait_many() with this context first: where to start */
};

struct tp_mem {
	struct tp_context *ctx;
	void *ptr;
	size_t len;
	size_t map_len; /* 0 for registered caller memory */
	int fd;         /* memfd behind tp_mem_alloc() memory, -1 otherwise */
	bool device;    /* tp_mem_register_dmabuf(): device memory, never read by the CPU */
	void *priv;     /* backend (verbs: struct ibv_mr *) */
};

/* Bootstrap address: where an endpoint listens before it is connected. */
struct tp_boot_addr {
	uint8_t family; /* AF_INET or AF_UNIX */
	uint16_t port;  /* host order */
	uint32_t ip4;   /* network order */
	char path[40];  /* AF_UNIX abstract name without the leading NUL */
};

struct tp_ep {
	struct tp_context *ctx;
	struct tp_ep *next, *prev;
	struct tp_mem *recv; /* borrowed */
	void *user;
	int status;          /* 0 or -errno once failed */
	bool error_reported;
	bool connected;
	uint64_t nonce;
	uint64_t peer_nonce;
	int listen_fd;
	struct tp_boot_addr boot;
	char peer[64];        /* for log lines: "tcp 127.0.0.1:4242" */
	uint64_t remote_len;  /* peer's receive region */
	uint32_t peer_recv_depth;

	/* credits, all cumulative counts */
	uint64_t puts;            /* puts posted */
	uint64_t peer_released;   /* arrivals the peer has released (learned from it) */
	uint64_t arrivals;        /* arrivals received (queued or delivered) */
	uint64_t delivered;       /* arrivals handed to the user */
	uint64_t released;        /* arrivals the user released */
	uint64_t released_sent;   /* released count last told to the peer */
};

/* ---- transport.c ---- */
/* Puts ep in error (once; later calls keep the first reason) and logs why. Returns rc. */
int tp__ep_fail(struct tp_ep *ep, int rc, const char *fmt, ...) FR_PRINTF(3, 4);
/* True if the peer may take one more put. */
static inline bool tp__have_credit(const struct tp_ep *ep)
{
	return ep->puts - ep->peer_released < ep->peer_recv_depth;
}
/* The peer has released v arrivals in all (cumulative; stale values are ignored). */
static inline void tp__credits_in(struct tp_ep *ep, uint64_t v)
{
	if (v > ep->peer_released) {
		ep->peer_released = v;
		ep->ctx->credit_epoch++;
	}
}
/* True if released-but-untold credits should go back now: a quarter of the window has
 * piled up, or the sender may be running dry (more than half its window in use). */
static inline bool tp__should_return_credits(const struct tp_ep *ep)
{
	uint64_t pending = ep->released - ep->released_sent;
	uint32_t depth = ep->ctx->cfg.recv_depth;
	if (!pending)
		return false;
	return pending >= FR_MAX(1u, depth / 4) || ep->arrivals - ep->released_sent > depth / 2;
}
/* Validates the (local, remote) ranges of a put; returns 0 or -EINVAL / -ENOTCONN / status. */
int tp__check_put(const struct tp_ep *ep, const struct tp_mem *local, size_t local_off,
		  uint64_t remote_off, size_t len);
/* Rate limit for liveness checks inside poll: true at most once per millisecond. */
bool tp__tick(uint64_t *last_ns);

/* ---- boot.c: socket bootstrap shared by every backend ---- */
int tp__boot_listen(struct tp_ep *ep, bool unix_socket);
/* Connects or accepts (by nonce order) and authenticates; returns the socket (blocking
 * mode, CLOEXEC) or -errno. */
int tp__boot_connect(struct tp_ep *ep, const struct tp_boot_addr *peer, uint64_t deadline_ns);
/* Full read/write on a socket with a deadline. 0, -ETIMEDOUT, -ECONNRESET or -errno. */
int tp__io_full(int fd, void *buf, size_t len, bool wr, uint64_t deadline_ns);
/* Sends / receives nfds descriptors with a small payload (SCM_RIGHTS). */
int tp__send_fds(int sock, const int *fds, int nfds, const void *data, size_t len);
int tp__recv_fds(int sock, int *fds, int nfds, void *data, size_t len, uint64_t deadline_ns);
int tp__set_nonblock(int fd);
/* Keepalive + TCP_USER_TIMEOUT so that a vanished host (not only a dead process) is
 * noticed within about timeout_ms. */
int tp__sock_liveness(int fd, uint32_t timeout_ms);
void tp__boot_addr_str(const struct tp_boot_addr *a, char *buf, size_t cap);

extern const struct tp_ops tp_shm_ops, tp_tcp_ops;
#ifdef FERRY_HAVE_RDMA
extern const struct tp_ops tp_verbs_ops;
#endif

#endif /* FERRY_TRANSPORT_INTERNAL_H */
