/* SPDX-License-Identifier: Apache-2.0 */
/*
 * transport/transport.h - one-sided puts with immediates between processes, in the spirit
 * of UCX's UCT. Three backends fill one ops table each: verbs (RDMA RC queue pairs),
 * tcp (sockets) and shm (memfd regions between processes on one host).
 *
 * Model
 *   context   one per poller thread (and, for verbs, per device/port). Owns the completion
 *             queue, the epoll set and every endpoint created from it. Not thread-safe: a
 *             context and its endpoints are used from one thread at a time. A thread that
 *             drives several devices (one endpoint per device pair) opens one context per
 *             device and waits on all of them with tp_wait_many().
 *   memory    tp_mem_alloc() gives transport-owned memory usable everywhere (for shm it is
 *             a memfd the peer maps); tp_mem_register() wraps caller memory, usable as the
 *             source of puts on every backend and as a receive region on tcp and verbs.
 *   endpoint  one per (local context, remote context) pair, created over a receive region:
 *             the peer's puts land there, at remote_offset. tp_ep_address() returns a blob
 *             (the region's key, sizes, the bootstrap address) that the caller exchanges out
 *             of band; both sides then call tp_ep_connect() with the other's blob.
 *   put       tp_put_imm() copies len bytes from local memory into the peer's receive region
 *             and raises exactly one TP_EV_ARRIVAL carrying (imm, len) at the peer once all
 *             bytes are visible there. Arrivals are delivered in put order per endpoint.
 *   credits   every endpoint allows recv_depth arrivals that the receiver has not released
 *             (tp_ep_release()); a put beyond that returns -EAGAIN, so a sender can never
 *             overwrite a ring slot the receiver is still reading. Credits flow back on
 *             their own; nothing is dropped and nothing queues without bound.
 *   completion a put with TP_PUT_SIGNAL raises one TP_EV_SEND_DONE when its local buffer may
 *             be reused; its completion implies that of every earlier put on the endpoint.
 *             Unsignalled puts keep their local buffer busy until a later signalled one
 *             completes (selective signalling). At most send_depth puts are in flight per
 *             endpoint; beyond that tp_put_imm() returns -EAGAIN until tp_poll() reaps.
 *   progress  puts that do not fit the socket at once (tcp) and credit returns move only
 *             inside tp_poll()/tp_wait(): keep polling until a signalled put's
 *             TP_EV_SEND_DONE before idling elsewhere (e.g. blocking on another fd).
 *   failure   a peer that dies (process killed, QP in error, socket closed) puts the
 *             endpoint in error: one TP_EV_EP_ERROR is raised (within peer_timeout_ms
 *             for hosts that vanish; at once when the kernel reports the close), signalled
 *             puts in flight complete with a negative status, and later puts fail.
 *
 * Bootstrap: all backends connect through a socket the endpoint listens on from
 * tp_ep_create() (TCP for tcp and verbs, an abstract Unix socket for shm); the side with the
 * smaller random nonce connects, the other accepts. For verbs the blob already holds the QP
 * number, GID, MTU, rkey and region address; the TCP socket then only synchronises the
 * RTR/RTS transitions and stays open as a liveness channel (process death closes it at
 * once). Set tp_config.bind_addr to an address the peer can reach for multi-host use.
 */
#ifndef FERRY_TRANSPORT_H
#define FERRY_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

enum tp_backend {
	TP_BACKEND_SHM = 0,
	TP_BACKEND_TCP,
	TP_BACKEND_VERBS,
};

/* Zero means "default" for every numeric field. */
struct tp_config {
	enum tp_backend backend;
	const char *device;        /* verbs: device name ("mlx5_0", "rxe0"); NULL: auto */
	int port;                  /* verbs: port number; 0: first ACTIVE port */
	int gid_index;             /* verbs: GID index; -1: auto (RoCEv2 IPv4-mapped), 0 is a
	                            * valid explicit index only when gid_index_set is 1 */
	int gid_index_set;         /* verbs: 1 to force gid_index */
	uint32_t mtu;              /* verbs: path MTU cap in bytes (256..4096); 0: active MTU */
	uint32_t send_depth;       /* in-flight puts per endpoint (default 64) */
	uint32_t recv_depth;       /* unreleased arrivals per endpoint (default 64) */
	uint32_t inline_max;       /* verbs: bytes sent inline (default 128, capped by device) */
	uint32_t peer_timeout_ms;  /* detection bound for a dead peer host (default 5000) */
	uint32_t connect_timeout_ms; /* tp_ep_connect() bound (default 10000) */
	uint32_t spin_us;          /* tp_wait() busy-poll before sleeping (default 50) */
	uint32_t spin_max_us;      /* the busy-poll adapts up to this while arrivals keep coming
	                            * just after it ends (default 250; <= spin_us: fixed) */
	const char *bind_addr;     /* tcp/verbs bootstrap listen address (default 127.0.0.1) */
};

struct tp_context;
struct tp_mem;
struct tp_ep;

#define TP_ADDR_MAX 128 /* bytes an address blob may need */

enum tp_put_flags {
	TP_PUT_SIGNAL = 1u << 0, /* raise TP_EV_SEND_DONE when the local buffer is free */
};

enum tp_event_type {
	TP_EV_SEND_DONE = 1, /* a signalled put completed locally (status 0 or -errno) */
	TP_EV_ARRIVAL,       /* the peer's put landed in this endpoint's receive region */
	TP_EV_EP_ERROR,      /* the endpoint failed (status says why); raised once */
};

struct tp_event {
	enum tp_event_type type;
	int status;        /* 0 or a negative errno */
	struct tp_ep *ep;  /* borrowed */
	void *ep_user;     /* the endpoint's user pointer (tp_ep_create) */
	uint32_t imm;      /* ARRIVAL: the sender's immediate */
	uint64_t len;      /* ARRIVAL: bytes put */
	uint64_t cookie;   /* SEND_DONE: the put's cookie */
};

/* Parses "shm", "tcp" or "verbs". Returns 0 or -EINVAL. */
int tp_backend_parse(const char *name, enum tp_backend *ret);
const char *tp_backend_name(enum tp_backend b);

/* Opens a context. cfg is copied (strings too). Errors: -EINVAL (bad config),
 * -EOPNOTSUPP (backend not built, e.g. verbs without rdma-core), -ENODEV (no usable device
 * or port), -ENOMEM, other -errno from the system. The picked device/port/GID/MTU is
 * logged at info level (component tp.verbs). */
int tp_context_create(const struct tp_config *cfg, struct tp_context **ret_ctx);
/* Destroys endpoints still open (puts in flight are abandoned), then the context.
 * Memory regions must be freed first. Accepts NULL. */
void tp_context_destroy(struct tp_context *ctx);
/* An fd that becomes readable when tp_wait() would not sleep (for external event loops). */
int tp_context_fd(const struct tp_context *ctx);
enum tp_backend tp_context_backend(const struct tp_context *ctx);

/* Allocates len bytes (page aligned, zeroed) registered for puts in both directions.
 * Errors: -EINVAL (len 0), -ENOMEM, -errno from memfd/mmap/ibv_reg_mr. */
int tp_mem_alloc(struct tp_context *ctx, size_t len, struct tp_mem **ret_mem);
/* Registers caller memory [ptr, ptr+len), which stays owned by the caller and must outlive
 * the tp_mem. shm can use it only as a put source (as a receive region: -EINVAL). */
int tp_mem_register(struct tp_context *ctx, void *ptr, size_t len, struct tp_mem **ret_mem);
/* Registers device memory exported as a dma-buf (GPUDirect RDMA: the NIC reads and writes
 * a GPU's memory without the host): len bytes at offset in dma-buf fd (the caller's; keep
 * it open until tp_mem_free), which the process addresses as addr (a GPU's virtual
 * address: what puts name as their local buffer, what tp_mem_ptr() returns; the CPU never
 * reads it). Usable as a put source and as a receive region. verbs only, through
 * ibv_reg_dmabuf_mr(): puts from it are never sent inline. Errors: -EINVAL (fd < 0, len
 * 0, addr NULL), -EOPNOTSUPP (shm, tcp, an rdma-core without ibv_reg_dmabuf_mr, or a
 * device or driver that cannot register dma-buf memory: soft-RoCE, no peer-memory
 * support), -ENOMEM, other -errno from the driver. */
int tp_mem_register_dmabuf(struct tp_context *ctx, int fd, uint64_t offset, size_t len,
			   void *addr, struct tp_mem **ret_mem);
/* Whether mem is device memory (tp_mem_register_dmabuf). */
int tp_mem_is_device(const struct tp_mem *mem);
void *tp_mem_ptr(const struct tp_mem *mem);
size_t tp_mem_len(const struct tp_mem *mem);
/* Frees or deregisters. No endpoint or put in flight may still use it. Accepts NULL. */
void tp_mem_free(struct tp_mem *mem);

/* Creates an endpoint whose peer writes into recv (borrowed, must outlive the endpoint)
 * and starts listening for the peer. user is returned in every event of this endpoint.
 * Errors: -EINVAL, -ENOMEM, -errno from sockets / QP creation. */
int tp_ep_create(struct tp_context *ctx, struct tp_mem *recv, void *user, struct tp_ep **ret_ep);
/* Writes the endpoint's address blob (at most TP_ADDR_MAX bytes) into buf. */
int tp_ep_address(const struct tp_ep *ep, void *buf, size_t cap, size_t *ret_len);
/* Connects to the peer described by blob; blocks up to connect_timeout_ms (both sides call
 * it concurrently). Errors: -EBADMSG (blob malformed or for another backend), -ETIMEDOUT,
 * -ECONNREFUSED, -EPROTO (handshake mismatch), -EIO (verbs QP transition; the log names
 * the peer, step, GID index and MTU), other -errno. */
int tp_ep_connect(struct tp_ep *ep, const void *blob, size_t len);
/* Closes the endpoint: puts in flight are abandoned (their completions are never
 * raised), the peer sees TP_EV_EP_ERROR. Accepts NULL. */
void tp_ep_destroy(struct tp_ep *ep);
/* 0 while healthy, else the negative errno that put it in error. */
int tp_ep_status(const struct tp_ep *ep);
/* Bytes of the peer's receive region (valid after connect). */
size_t tp_ep_remote_len(const struct tp_ep *ep);
/* The context the endpoint was created on (borrowed). */
struct tp_context *tp_ep_context(const struct tp_ep *ep);

/* Puts local[local_off, +len) at remote_off of the peer's receive region and raises one
 * arrival with imm there. len may be 0. With TP_PUT_SIGNAL, one TP_EV_SEND_DONE with
 * cookie follows. Errors: -EAGAIN (no credit or send queue full: poll and retry),
 * -EINVAL (range outside local or remote region), -ENOTCONN (not connected), the
 * endpoint's error once it failed. Never blocks. */
int tp_put_imm(struct tp_ep *ep, const struct tp_mem *local, size_t local_off,
	       uint64_t remote_off, size_t len, uint32_t imm, unsigned flags, uint64_t cookie);
/* Hands n arrivals (oldest first) back to the peer as credits: the receiver is done with
 * their bytes. Errors: -EINVAL (more than delivered and unreleased). */
int tp_ep_release(struct tp_ep *ep, uint32_t n);

/* Non-blocking: makes progress and returns up to max events (0 if none) or a negative
 * errno on a context-wide failure. */
int tp_poll(struct tp_context *ctx, struct tp_event *evs, int max);
/* Like tp_poll() but blocks up to timeout_ms (-1: forever) when nothing is ready: spins for
 * spin_us, then sleeps in epoll on the context's fds (completion channel, sockets, eventfd
 * doorbells), so an idle process burns no CPU (it wakes at most 4 times a second to run
 * the liveness watchdogs). The spin adapts: when an event came after sleeping but within
 * spin_max_us of the start, later waits spin that long (a wake-up costs more than the
 * spin); a wait with nothing for longer than spin_max_us goes back to spin_us. May return 0 early when progress happened
 * without an event (credits came back): callers loop on their own deadline. */
int tp_wait(struct tp_context *ctx, struct tp_event *evs, int max, int timeout_ms);

#define TP_WAIT_MANY_MAX 32 /* contexts one tp_wait_many() call may wait on */

/* tp_wait() over n contexts (ctxs[0..n), borrowed; distinct, each used only by the calling
 * thread), for a thread that drives several devices: polls every context, spins for the
 * largest of their spin_us, then sleeps in epoll on all of them at once (up to timeout_ms,
 * -1: forever; at most 250 ms at a time so the liveness watchdogs run) and polls again.
 * Returns up to max events from any of them (0 if none; ev->ep says whose), or 0 early
 * when credits came back on any context. Fair: while several contexts have events and
 * max is small, successive calls start at different contexts, so none is starved. A
 * context-wide failure (tp_poll()'s negative errno) is returned at once when no event was
 * gathered before it in this call, else by the next call, which polls that context first.
 * Errors: -EINVAL (n outside 1..TP_WAIT_MANY_MAX, max <= 0), -errno from a context's poll
 * or from the sleep. */
int tp_wait_many(struct tp_context *const *ctxs, int n, struct tp_event *evs, int max,
		 int timeout_ms);

#endif /* FERRY_TRANSPORT_H */
