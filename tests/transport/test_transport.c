/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_transport.c - the transport suite, unchanged over every backend.
 *
 *   test_transport --backend shm|tcp|verbs [--case NAME|all] [--seed N]
 *
 * Each case forks: the parent is side A, the child side B, each with its own context.
 * Address blobs and barriers travel over a socketpair (the "out of band" channel).
 * Payloads are random from a printed seed and checked by regenerating them.
 * verbs: side A uses $TP_TEST_DEV_A (else $RDMA_VM_DEV0, else auto), side B likewise.
 * Exit 0 pass, 1 fail, 77 skipped (reason printed).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/udmabuf.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "transport/transport.h"

#define REGION (9u << 20)
#define DEPTH 16
#define SDEPTH 32
#define CASE_TIMEOUT_S 90

static enum tp_backend g_backend;
static uint64_t g_seed;
static int g_ctl = -1;
static char g_side = '?';

#define FAIL(...)                                                                           \
	do {                                                                                \
		fprintf(stderr, "FAIL side %c %s:%d: ", g_side, __func__, __LINE__);        \
		fprintf(stderr, __VA_ARGS__);                                               \
		fprintf(stderr, "\n");                                                      \
		_exit(1);                                                                   \
	} while (0)
#define CHECK(c)                                                                            \
	do {                                                                                \
		if (!(c))                                                                   \
			FAIL("check failed: %s", #c);                                       \
	} while (0)
#define CHECK_RC(expr)                                                                      \
	do {                                                                                \
		int rc_ = (expr);                                                           \
		if (rc_ < 0)                                                                \
			FAIL("%s: %s", #expr, strerror(-rc_));                              \
	} while (0)

struct side {
	struct tp_context *ctx;
	struct tp_mem *recv, *send;
	struct tp_ep *ep;
};

/* ---- payloads ---- */

static void gen(uint8_t *p, size_t len, uint64_t stream, uint64_t idx)
{
	uint64_t st = g_seed ^ (stream * 0x9E3779B97F4A7C15ull) ^ (idx * 0xD1B54A32D192ED03ull);
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t v = fr_splitmix64(&st);
		memcpy(p + i, &v, 8);
	}
	uint64_t v = fr_splitmix64(&st);
	for (; i < len; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static int verify(const uint8_t *p, size_t len, uint64_t stream, uint64_t idx)
{
	static uint8_t *tmp;
	if (!tmp)
		tmp = malloc(REGION);
	gen(tmp, len, stream, idx);
	return memcmp(p, tmp, len) == 0;
}

/* ---- out-of-band channel ---- */

static void fd_write(int fd, const void *b, size_t n)
{
	if (write(fd, b, n) != (ssize_t)n)
		FAIL("ctl write: %s", strerror(errno));
}

static void fd_read(int fd, void *b, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)b + got, n - got);
		if (r <= 0)
			FAIL("ctl read: %s", r ? strerror(errno) : "peer gone");
		got += (size_t)r;
	}
}

static void ctl_write(const void *b, size_t n)
{
	fd_write(g_ctl, b, n);
}

static void ctl_read(void *b, size_t n)
{
	fd_read(g_ctl, b, n);
}

/* Sends ep's address blob over fd. */
static void blob_send(int fd, const struct tp_ep *ep)
{
	uint8_t blob[TP_ADDR_MAX];
	size_t len;
	uint32_t plen;

	CHECK_RC(tp_ep_address(ep, blob, sizeof(blob), &len));
	plen = (uint32_t)len;
	fd_write(fd, &plen, 4);
	fd_write(fd, blob, len);
}

/* Reads the peer's address blob from fd into peer[TP_ADDR_MAX]; returns its length. */
static uint32_t blob_recv(int fd, uint8_t *peer)
{
	uint32_t plen;

	fd_read(fd, &plen, 4);
	CHECK(plen <= TP_ADDR_MAX);
	fd_read(fd, peer, plen);
	return plen;
}

static void barrier(void)
{
	char c = 'b';
	ctl_write(&c, 1);
	ctl_read(&c, 1);
}

static const char *dev_for_side(char side)
{
	const char *d = getenv(side == 'A' ? "TP_TEST_DEV_A" : "TP_TEST_DEV_B");
	if (!d)
		d = getenv(side == 'A' ? "RDMA_VM_DEV0" : "RDMA_VM_DEV1");
	return d;
}

static struct tp_config test_config(const char *dev, uint32_t peer_timeout_ms)
{
	return (struct tp_config){
		.backend = g_backend,
		.device = dev,
		.gid_index = -1,
		.send_depth = SDEPTH,
		.recv_depth = DEPTH,
		.peer_timeout_ms = peer_timeout_ms,
		.connect_timeout_ms = 30000,
	};
}

/* Exits 77 when the backend cannot run here (verbs without a device). */
static void skip_unavailable(int rc)
{
	if (rc == -EOPNOTSUPP || rc == -ENODEV) {
		printf("SKIP: backend %s unavailable here: %s\n", tp_backend_name(g_backend),
		       strerror(-rc));
		fflush(stdout);
		_exit(77);
	}
}

/* Opens a context on dev with one endpoint, connected to the peer at the end of g_ctl. */
static void side_open_dev(struct side *s, uint32_t peer_timeout_ms, const char *dev)
{
	struct tp_config cfg = test_config(dev, peer_timeout_ms);
	uint8_t peer[TP_ADDR_MAX];

	int rc = tp_context_create(&cfg, &s->ctx);
	skip_unavailable(rc);
	CHECK_RC(rc);
	CHECK_RC(tp_mem_alloc(s->ctx, REGION, &s->recv));
	CHECK_RC(tp_mem_alloc(s->ctx, REGION, &s->send));
	CHECK_RC(tp_ep_create(s->ctx, s->recv, s, &s->ep));
	CHECK(tp_ep_context(s->ep) == s->ctx);
	blob_send(g_ctl, s->ep);
	uint32_t plen = blob_recv(g_ctl, peer);
	CHECK_RC(tp_ep_connect(s->ep, peer, plen));
}

static void side_open(struct side *s, uint32_t peer_timeout_ms)
{
	side_open_dev(s, peer_timeout_ms, dev_for_side(g_side));
	CHECK(tp_ep_remote_len(s->ep) == REGION);
}

static void side_close(struct side *s)
{
	tp_ep_destroy(s->ep);
	tp_mem_free(s->recv);
	tp_mem_free(s->send);
	tp_context_destroy(s->ctx);
}

/* Waits for the next event (any type) up to timeout_s. */
static struct tp_event next_event(struct side *s, int timeout_s)
{
	struct tp_event ev;
	uint64_t end = fr_now_ns() + (uint64_t)timeout_s * 1000000000ull;
	while (fr_now_ns() < end) {
		int n = tp_wait(s->ctx, &ev, 1, 200);
		CHECK_RC(n);
		if (n == 1)
			return ev;
	}
	FAIL("no event within %d s", timeout_s);
}

/* ---- cases ---- */

static const size_t sizes[] = { 1,	   2,	   3,	  7,	    63,	     64,     65,
				255,	   4095,   4096,  4097,	    65535,   65536,  65537,
				131071,	   262147, 1048579, 4194303, 8388608, 0 };

static uint64_t size_roff(size_t i)
{
	return (i * 977) % 4096;
}

/* Every size from 1 B to 8 MiB (odd ones included), one at a time, checked at B. */
static void case_sizes(char side)
{
	struct side s;
	side_open(&s, 5000);
	size_t n = FR_ARRAY_SIZE(sizes);
	if (side == 'A') {
		uint8_t *src = tp_mem_ptr(s.send);
		for (size_t i = 0; i < n; i++) {
			size_t loff = i % 13;
			gen(src + loff, sizes[i], 1, i);
			int rc;
			while ((rc = tp_put_imm(s.ep, s.send, loff, size_roff(i), sizes[i],
						(uint32_t)i, TP_PUT_SIGNAL, i)) == -EAGAIN)
				FAIL("unexpected back-pressure with nothing in flight");
			CHECK_RC(rc);
			struct tp_event ev = next_event(&s, 60);
			CHECK(ev.type == TP_EV_SEND_DONE && ev.status == 0 && ev.cookie == i);
			char ack;
			ctl_read(&ack, 1); /* the ranges overlap: wait until B has checked */
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			struct tp_event ev = next_event(&s, 60);
			CHECK(ev.type == TP_EV_ARRIVAL);
			if (ev.imm != i || ev.len != sizes[i])
				FAIL("arrival %zu: imm %u len %llu, want len %zu", i, ev.imm,
				     (unsigned long long)ev.len, sizes[i]);
			if (!verify((uint8_t *)tp_mem_ptr(s.recv) + size_roff(i), sizes[i], 1, i))
			{
				const uint8_t *q = (uint8_t *)tp_mem_ptr(s.recv) + size_roff(i);
				FAIL("arrival %zu (%zu bytes at %llu): payload corrupt (%02x %02x)", i,
				     sizes[i], (unsigned long long)size_roff(i), q[0], sizes[i] > 1 ? q[1] : 0);
			}
			CHECK_RC(tp_ep_release(s.ep, 1));
			ctl_write("k", 1);
		}
	}
	barrier();
	side_close(&s);
}

#define STREAM_N 600
#define SLOT (64u << 10)

static size_t stream_len(char from, uint64_t i)
{
	uint64_t st = g_seed ^ (uint64_t)from ^ (i << 8);
	uint64_t r = fr_splitmix64(&st);
	switch (r % 4) {
	case 0:
		return (size_t)(r >> 8) % 64; /* tiny (inline), 0 included */
	case 1:
		return 1 + (size_t)(r >> 8) % 1024;
	default:
		return 1 + (size_t)(r >> 8) % SLOT;
	}
}

/* Both sides stream STREAM_N puts at each other through DEPTH ring slots (wrap-around,
 * many in flight, selective signalling), checking order and payloads, releasing lazily. */
static void case_stream(char side)
{
	struct side s;
	char peer_side = side == 'A' ? 'B' : 'A';
	uint64_t sent = 0, done_upto = 0, recvd = 0, held = 0, hold_max = 0, eagain = 0;
	uint64_t st = g_seed ^ (uint64_t)side;
	uint8_t *src, *dst;

	side_open(&s, 5000);
	src = tp_mem_ptr(s.send);
	dst = tp_mem_ptr(s.recv);
	uint64_t end = fr_now_ns() + 60000000000ull;
	while (sent < STREAM_N || recvd < STREAM_N || done_upto < STREAM_N) {
		if (fr_now_ns() > end)
			FAIL("stuck: sent %llu done %llu recvd %llu", (unsigned long long)sent,
			     (unsigned long long)done_upto, (unsigned long long)recvd);
		while (sent < STREAM_N && sent - done_upto < SDEPTH) {
			size_t len = stream_len(side, sent);
			size_t loff = (size_t)(sent % SDEPTH) * SLOT;
			gen(src + loff, len, (uint64_t)side, sent);
			bool sig = sent % 4 == 3 || sent == STREAM_N - 1;
			int rc = tp_put_imm(s.ep, s.send, loff, (sent % DEPTH) * SLOT, len,
					    (uint32_t)sent, sig ? TP_PUT_SIGNAL : 0, sent);
			if (rc == -EAGAIN) {
				eagain++;
				break;
			}
			CHECK_RC(rc);
			sent++;
		}
		struct tp_event evs[8];
		int n = tp_wait(s.ctx, evs, 8, 100);
		CHECK_RC(n);
		for (int i = 0; i < n; i++) {
			struct tp_event *ev = &evs[i];
			CHECK(ev->ep == s.ep && ev->ep_user == &s);
			if (ev->type == TP_EV_SEND_DONE) {
				CHECK(ev->status == 0 && ev->cookie + 1 > done_upto);
				done_upto = ev->cookie + 1;
			} else if (ev->type == TP_EV_ARRIVAL) {
				if (ev->imm != recvd)
					FAIL("out of order: imm %u, expected %llu", ev->imm,
					     (unsigned long long)recvd);
				size_t len = stream_len(peer_side, recvd);
				CHECK(ev->len == len);
				if (!verify(dst + (recvd % DEPTH) * SLOT, len, (uint64_t)peer_side,
					    recvd))
					FAIL("arrival %llu corrupt", (unsigned long long)recvd);
				recvd++;
				held++;
			} else {
				FAIL("unexpected event %d status %d", ev->type, ev->status);
			}
		}
		/* Hold a few arrivals back at random before releasing them (lazy consumer). */
		if (held && (n == 0 || held > hold_max)) {
			CHECK_RC(tp_ep_release(s.ep, (uint32_t)held));
			held = 0;
			hold_max = fr_splitmix64(&st) % 4;
		}
	}
	if (held)
		CHECK_RC(tp_ep_release(s.ep, (uint32_t)held));
	CHECK(tp_ep_release(s.ep, 1) == -EINVAL);
	fprintf(stderr, "side %c: stream done, %llu EAGAIN\n", side, (unsigned long long)eagain);
	barrier();
	side_close(&s);
}

/* Two endpoints between the same two contexts (one CQ / epoll set serving both): streams
 * on both at once; every arrival names its endpoint and keeps per-endpoint order. */
#define TWO_N 200
static void case_two_eps(char side)
{
	struct tp_config cfg = { .backend = g_backend, .device = dev_for_side(side),
				 .gid_index = -1, .send_depth = SDEPTH, .recv_depth = DEPTH,
				 .connect_timeout_ms = 30000 };
	struct tp_context *ctx;
	struct tp_mem *recv[2], *send;
	struct tp_ep *ep[2];
	uint8_t blob[TP_ADDR_MAX];
	size_t len;
	uint32_t plen;
	char peer_side = side == 'A' ? 'B' : 'A';
	uint64_t sent[2] = { 0 }, recvd[2] = { 0 }, done[2] = { 0 };

	CHECK_RC(tp_context_create(&cfg, &ctx));
	CHECK_RC(tp_mem_alloc(ctx, (size_t)SDEPTH * SLOT, &send)); /* SDEPTH/2 slots per ep */
	for (int k = 0; k < 2; k++) {
		CHECK_RC(tp_mem_alloc(ctx, (size_t)DEPTH * SLOT, &recv[k]));
		CHECK_RC(tp_ep_create(ctx, recv[k], (void *)(uintptr_t)(k + 1), &ep[k]));
		CHECK_RC(tp_ep_address(ep[k], blob, sizeof(blob), &len));
		plen = (uint32_t)len;
		ctl_write(&plen, 4);
		ctl_write(blob, len);
	}
	for (int k = 0; k < 2; k++) {
		ctl_read(&plen, 4);
		CHECK(plen <= sizeof(blob));
		ctl_read(blob, plen);
		CHECK_RC(tp_ep_connect(ep[k], blob, plen));
	}
	uint8_t *src = tp_mem_ptr(send);
	uint64_t end = fr_now_ns() + 60000000000ull;
	while (sent[0] + sent[1] + recvd[0] + recvd[1] + done[0] + done[1] < 6 * TWO_N) {
		CHECK(fr_now_ns() < end);
		for (int k = 0; k < 2; k++) {
			while (sent[k] < TWO_N && sent[k] - done[k] < SDEPTH / 2) {
				uint64_t i = sent[k];
				size_t l = stream_len(side + k, i), loff = (size_t)(i % (SDEPTH / 2)) * SLOT +
									   (size_t)k * (SDEPTH / 2) * SLOT;
				gen(src + loff, l, (uint64_t)side + (uint64_t)k * 256, i);
				int rc = tp_put_imm(ep[k], send, loff, (i % DEPTH) * SLOT, l,
						    (uint32_t)(k << 16 | i), TP_PUT_SIGNAL, i);
				if (rc == -EAGAIN)
					break;
				CHECK_RC(rc);
				sent[k]++;
			}
		}
		struct tp_event evs[8];
		int n = tp_wait(ctx, evs, 8, 100);
		CHECK_RC(n);
		for (int j = 0; j < n; j++) {
			int k = (int)(uintptr_t)evs[j].ep_user - 1;
			CHECK((k == 0 || k == 1) && evs[j].ep == ep[k]);
			if (evs[j].type == TP_EV_SEND_DONE) {
				CHECK(evs[j].status == 0 && evs[j].cookie == done[k]);
				done[k]++;
				continue;
			}
			CHECK(evs[j].type == TP_EV_ARRIVAL);
			uint64_t i = recvd[k];
			CHECK(evs[j].imm == (uint32_t)(k << 16 | i));
			size_t l = stream_len(peer_side + k, i);
			CHECK(evs[j].len == l);
			if (!verify((uint8_t *)tp_mem_ptr(recv[k]) + (i % DEPTH) * SLOT, evs[j].len,
				    (uint64_t)peer_side + (uint64_t)k * 256, i))
				FAIL("ep %d arrival %llu corrupt", k, (unsigned long long)i);
			recvd[k]++;
			CHECK_RC(tp_ep_release(ep[k], 1));
		}
	}
	barrier();
	for (int k = 0; k < 2; k++) {
		tp_ep_destroy(ep[k]);
		tp_mem_free(recv[k]);
	}
	tp_mem_free(send);
	tp_context_destroy(ctx);
}

/* Back-pressure: DEPTH puts fill the peer's window; the next one is -EAGAIN for as long
 * as the peer holds them, and goes through once it releases. */
static void case_backpressure(char side)
{
	struct side s;
	struct tp_event evs[8];
	side_open(&s, 5000);
	if (side == 'A') {
		uint8_t *src = tp_mem_ptr(s.send);
		gen(src, 4096, 3, 0);
		for (uint32_t i = 0; i < DEPTH; i++) {
			int rc;
			while ((rc = tp_put_imm(s.ep, s.send, 0, i * 4096u, 4096, i, 0, 0)) ==
			       -EAGAIN)
				CHECK_RC(tp_wait(s.ctx, evs, 8, 10)); /* send queue */
			CHECK_RC(rc);
		}
		CHECK(tp_put_imm(s.ep, s.send, 0, REGION - 10, 11, 0, 0, 0) == -EINVAL);
		CHECK(tp_put_imm(s.ep, s.send, REGION - 10, 0, 11, 0, 0, 0) == -EINVAL);
		uint64_t end = fr_now_ns() + 300000000ull;
		while (fr_now_ns() < end) {
			CHECK(tp_put_imm(s.ep, s.send, 0, DEPTH * 4096u, 4096, DEPTH, 0, 0) ==
			      -EAGAIN);
			CHECK_RC(tp_wait(s.ctx, evs, 8, 20));
		}
		char go = 'g';
		ctl_write(&go, 1);
		end = fr_now_ns() + 30000000000ull;
		int rc;
		while ((rc = tp_put_imm(s.ep, s.send, 0, DEPTH * 4096u, 4096, DEPTH, TP_PUT_SIGNAL,
					7)) == -EAGAIN) {
			CHECK(fr_now_ns() < end);
			CHECK_RC(tp_wait(s.ctx, evs, 8, 50));
		}
		CHECK_RC(rc);
		struct tp_event ev = next_event(&s, 30);
		CHECK(ev.type == TP_EV_SEND_DONE && ev.cookie == 7);
	} else {
		for (uint32_t i = 0; i < DEPTH; i++) {
			struct tp_event ev = next_event(&s, 30);
			CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == i && ev.len == 4096);
		}
		CHECK(tp_ep_release(s.ep, DEPTH + 1) == -EINVAL);
		char go;
		ctl_read(&go, 1);
		for (uint32_t i = 0; i < DEPTH; i++)
			CHECK(verify((uint8_t *)tp_mem_ptr(s.recv) + i * 4096u, 4096, 3, 0));
		CHECK_RC(tp_ep_release(s.ep, DEPTH));
		struct tp_event ev = next_event(&s, 30);
		CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == DEPTH);
		CHECK_RC(tp_ep_release(s.ep, 1));
	}
	barrier();
	side_close(&s);
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* An idle tp_wait sleeps (no busy loop), and wakes for a put. */
static void case_idle(char side)
{
	struct side s;
	struct tp_event ev;
	side_open(&s, 5000);
	if (side == 'B') {
		double c0 = cpu_s();
		uint64_t t0 = fr_now_ns();
		while (fr_now_ns() - t0 < 400000000ull)
			CHECK(tp_wait(s.ctx, &ev, 1, 400) == 0);
		double used = cpu_s() - c0;
		fprintf(stderr, "idle wait: %.1f ms CPU over 400 ms\n", used * 1e3);
		CHECK(used < 0.06);
		char go = 'g';
		ctl_write(&go, 1);
		ev = next_event(&s, 30); /* sleeps in epoll; the put must wake it */
		CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == 42 && ev.len == 5);
		CHECK_RC(tp_ep_release(s.ep, 1));
	} else {
		char go;
		ctl_read(&go, 1);
		usleep(100000);
		CHECK_RC(tp_put_imm(s.ep, s.send, 0, 0, 5, 42, 0, 0));
		(void)tp_poll(s.ctx, &ev, 1);
	}
	barrier();
	side_close(&s);
}

/* A tears everything down with large puts in flight; B sees an endpoint error, never a
 * hang, and every arrival it did see is intact. */
static void case_teardown(char side)
{
	struct side s;
	side_open(&s, 3000);
	if (side == 'A') {
		uint8_t *src = tp_mem_ptr(s.send);
		for (uint32_t i = 0; i < 8; i++)
			gen(src + (size_t)i * (1u << 20), 1u << 20, 4, i);
		barrier();
		for (uint32_t i = 0; i < 64; i++) {
			int rc = tp_put_imm(s.ep, s.send, (size_t)(i % 8) << 20, (i % 8) << 20,
					    1u << 20, i, i % 4 == 3 ? TP_PUT_SIGNAL : 0, i);
			if (rc == -EAGAIN)
				break;
			CHECK_RC(rc);
		}
		side_close(&s); /* puts still in flight */
	} else {
		barrier();
		uint32_t got = 0;
		for (;;) {
			struct tp_event ev = next_event(&s, 60);
			if (ev.type == TP_EV_EP_ERROR) {
				CHECK(ev.status < 0 && tp_ep_status(s.ep) == ev.status);
				break;
			}
			CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == got && ev.len == 1u << 20);
			if (!verify((uint8_t *)tp_mem_ptr(s.recv) + ((size_t)(got % 8) << 20),
				    1u << 20, 4, got % 8))
				FAIL("arrival %u corrupt", got);
			got++;
			CHECK_RC(tp_ep_release(s.ep, 1));
		}
		fprintf(stderr, "teardown: %u arrivals before the error\n", got);
		CHECK(tp_put_imm(s.ep, s.send, 0, 0, 1, 0, 0, 0) < 0);
		side_close(&s);
	}
}

/* Peer death mid-transfer: the survivor (A, the parent) kills B with SIGKILL while a
 * stream is running in the direction given, and must get TP_EV_EP_ERROR. */
static void netem(const char *op)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "tc qdisc %s dev %s root%s", op, getenv("RDMA_VM_NETDEV0"),
		 strcmp(op, "add") ? "" : " netem loss 100%");
	if (system(cmd) != 0)
		FAIL("%s failed", cmd);
}

/* link_loss: instead of killing B, A's link goes silent (verbs in the VM): the QP must
 * fail on its own (retry exceeded) within about peer_timeout_ms. */
static void death_mode(char side, pid_t child, bool a_sends, bool link_loss)
{
	struct side s;
	struct tp_event evs[8];
	side_open(&s, link_loss ? 2000 : 3000);
	bool sender = (side == 'A') == a_sends;
	uint64_t sent = 0, recvd = 0, done = 0;
	uint64_t t_kill = 0;
	uint8_t *src = tp_mem_ptr(s.send);
	gen(src, 8 * SLOT, 5, 0);
	for (;;) {
		if (sender) {
			for (;;) {
				int rc = tp_put_imm(s.ep, s.send, (sent % 8) * SLOT,
						    (sent % DEPTH) * SLOT, SLOT, (uint32_t)sent,
						    TP_PUT_SIGNAL, sent);
				if (rc == -EAGAIN)
					break;
				if (rc < 0) {
					CHECK(side == 'A' && t_kill);
					break;
				}
				sent++;
			}
		}
		int n = tp_wait(s.ctx, evs, 8, 100);
		CHECK_RC(n);
		for (int i = 0; i < n; i++) {
			if (evs[i].type == TP_EV_EP_ERROR) {
				if (side == 'B' && link_loss)
					pause(); /* A kills us once it saw its own error */
				CHECK(side == 'A' && t_kill);
				double dt = (double)(fr_now_ns() - t_kill) * 1e-9;
				fprintf(stderr, "peer death noticed after %.3f s (%s), %llu sent, "
						"%llu received\n",
					dt, strerror(-evs[i].status), (unsigned long long)sent,
					(unsigned long long)recvd);
				CHECK(tp_put_imm(s.ep, s.send, 0, 0, 1, 0, 0, 0) < 0);
				/* drain: completions with errors may follow; nothing may hang */
				while (tp_poll(s.ctx, evs, 8) > 0)
					;
				if (link_loss) {
					CHECK(dt < 20);
					netem("del");
					kill(child, SIGKILL);
				}
				side_close(&s);
				return;
			}
			if (evs[i].type == TP_EV_SEND_DONE) {
				if (evs[i].status == 0)
					done++;
				else
					CHECK(t_kill);
			} else if (evs[i].type == TP_EV_ARRIVAL) {
				recvd++;
				CHECK_RC(tp_ep_release(s.ep, 1));
			}
		}
		if (side == 'A' && !t_kill && (sender ? done : recvd) >= 40) {
			if (link_loss)
				netem("add");
			else
				CHECK(kill(child, SIGKILL) == 0);
			t_kill = fr_now_ns();
		}
		if (t_kill && fr_now_ns() - t_kill > 30000000000ull)
			FAIL("peer death not reported within 30 s");
	}
}

static void case_death_receiver(char side, pid_t child)
{
	death_mode(side, child, true, false);
}

static void case_death_sender(char side, pid_t child)
{
	death_mode(side, child, false, false);
}

static void case_link_loss(char side, pid_t child)
{
	death_mode(side, child, true, true);
}

/* ---- wait-many: one process, two contexts (one endpoint per device pair) ---- */

#define WM_N 200    /* puts each way on each endpoint, per stream phase */
#define WM_BURST 8  /* puts of each peer in the fairness check */
#define WM_NEXT_SLOT ((size_t)(WM_N % DEPTH) * SLOT) /* the ring slot after a stream's */

/* One endpoint's traffic both ways: puts of stream tx out, arrivals of stream rx in. */
struct wm_stream {
	struct tp_ep *ep;
	struct tp_mem *send, *recv;
	char tx, rx;
	uint64_t sent, done, recvd;
};

static void wm_send(struct wm_stream *m)
{
	uint8_t *src = tp_mem_ptr(m->send);
	while (m->sent < WM_N && m->sent - m->done < SDEPTH) {
		uint64_t i = m->sent;
		size_t len = stream_len(m->tx, i), loff = (size_t)(i % SDEPTH) * SLOT;
		gen(src + loff, len, (uint64_t)m->tx, i);
		bool sig = i % 4 == 3 || i == WM_N - 1;
		int rc = tp_put_imm(m->ep, m->send, loff, (i % DEPTH) * SLOT, len, (uint32_t)i,
				    sig ? TP_PUT_SIGNAL : 0, i);
		if (rc == -EAGAIN)
			return;
		CHECK_RC(rc);
		m->sent++;
	}
}

static void wm_event(struct wm_stream *m, const struct tp_event *ev)
{
	CHECK(ev->ep == m->ep);
	if (ev->type == TP_EV_SEND_DONE) {
		CHECK(ev->status == 0 && ev->cookie + 1 > m->done);
		m->done = ev->cookie + 1;
		return;
	}
	if (ev->type != TP_EV_ARRIVAL)
		FAIL("stream %c: unexpected event %d status %d", m->rx, ev->type, ev->status);
	uint64_t i = m->recvd;
	size_t len = stream_len(m->rx, i);
	if (ev->imm != (uint32_t)i || ev->len != len)
		FAIL("stream %c: arrival imm %u len %llu, want %llu len %zu", m->rx, ev->imm,
		     (unsigned long long)ev->len, (unsigned long long)i, len);
	if (!verify((uint8_t *)tp_mem_ptr(m->recv) + (i % DEPTH) * SLOT, len, (uint64_t)m->rx, i))
		FAIL("stream %c: arrival %llu corrupt", m->rx, (unsigned long long)i);
	m->recvd++;
	CHECK_RC(tp_ep_release(m->ep, 1));
}

static bool wm_finished(const struct wm_stream *m)
{
	return m->done == WM_N && m->recvd == WM_N;
}

/* Puts send[off, +len) at off, cookie imm, retrying back-pressure. No signalled put may be
 * in flight: no event is owed to us meanwhile. */
static void wm_put(struct side *s, size_t off, size_t len, uint32_t imm, unsigned flags)
{
	uint64_t end = fr_now_ns() + 30000000000ull;
	struct tp_event ev;
	int rc;

	while ((rc = tp_put_imm(s->ep, s->send, off, off, len, imm, flags, imm)) == -EAGAIN) {
		CHECK(fr_now_ns() < end);
		CHECK(tp_wait(s->ctx, &ev, 1, 50) == 0);
	}
	CHECK_RC(rc);
}

static void wm_wait_done(struct side *s, uint32_t imm)
{
	struct tp_event ev = next_event(s, 30);
	CHECK(ev.type == TP_EV_SEND_DONE && ev.status == 0 && ev.cookie == imm);
}

/* The peer of A's context k, in its own process: B (k 1) or C (k 0), on the device A's
 * other context uses, so that verbs traffic crosses between the two devices both ways. */
static void wm_peer(int k)
{
	struct side s;
	struct tp_event evs[8];
	char cmd;

	side_open_dev(&s, 3000, dev_for_side(k ? 'A' : 'B'));
	CHECK(tp_ep_remote_len(s.ep) == (size_t)DEPTH * SLOT);
	struct wm_stream m = { .ep = s.ep, .send = s.send, .recv = s.recv,
			       .tx = (char)('p' + k), .rx = (char)('a' + k) };
	for (int phase = 0; phase < 2; phase++) {
		uint64_t end = fr_now_ns() + 60000000000ull;
		while (!wm_finished(&m)) {
			CHECK(fr_now_ns() < end);
			wm_send(&m);
			int n = tp_wait(s.ctx, evs, 8, 100);
			CHECK_RC(n);
			for (int i = 0; i < n; i++)
				wm_event(&m, &evs[i]);
		}
		ctl_write("s", 1);
		if (phase == 1)
			break;

		/* fairness: a burst, complete before A looks */
		ctl_read(&cmd, 1);
		CHECK(cmd == 'f');
		for (uint32_t i = 0; i < WM_BURST; i++) {
			gen((uint8_t *)tp_mem_ptr(s.send) + i * 64u, 64, 0x40u + (uint64_t)k, i);
			wm_put(&s, i * 64u, 64, 0x1000 + i, i == WM_BURST - 1 ? TP_PUT_SIGNAL : 0);
		}
		wm_wait_done(&s, 0x1000 + WM_BURST - 1); /* and every earlier one */
		ctl_write("d", 1);

		/* One put each, carrying its send time, well after A went to sleep: B's, then C's.
		 * The delays keep each put far from A's 250 ms watchdog wake-ups, so a context
		 * whose fd A does not sleep on shows ~200 ms of latency. */
		ctl_read(&cmd, 1);
		CHECK(cmd == 'w');
		usleep(k ? 260000 : 560000);
		uint64_t now = fr_now_ns();
		memcpy(tp_mem_ptr(s.send), &now, 8);
		wm_put(&s, 0, 8, 0x2000u + (uint32_t)k, TP_PUT_SIGNAL);
		wm_wait_done(&s, 0x2000u + (uint32_t)k);
		ctl_write("w", 1);

		/* C waits here for its SIGKILL; B streams again while A sees C's death */
		ctl_read(&cmd, 1);
		CHECK(cmd == 'x' && k == 1);
		m = (struct wm_stream){ .ep = s.ep, .send = s.send, .recv = s.recv,
					.tx = (char)('P' + k), .rx = (char)('A' + k) };
	}
	/* After A saw C's death: one round trip more, A first, each put into the ring slot
	 * that follows the stream's (the peer may still be reading the ones before). */
	struct tp_event ev = next_event(&s, 30);
	CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == 0x3000 && ev.len == 16);
	CHECK(verify((uint8_t *)tp_mem_ptr(s.recv) + WM_NEXT_SLOT, 16, 0x60, 0));
	CHECK_RC(tp_ep_release(s.ep, 1));
	gen((uint8_t *)tp_mem_ptr(s.send) + WM_NEXT_SLOT, 16, 0x61, 0);
	wm_put(&s, WM_NEXT_SLOT, 16, 0x3001, TP_PUT_SIGNAL);
	wm_wait_done(&s, 0x3001);
	barrier();
	side_close(&s);
}

/* A: two contexts (verbs: $RDMA_VM_DEV0 and $RDMA_VM_DEV1), one endpoint each, to peers in
 * two processes, all driven through tp_wait_many(): streams both ways on both at once with
 * max 2, a fairness check with max 1, wake-ups from sleep for each context, and the death
 * of context 0's peer, reported while context 1 streams and works on after it. */
static void case_wait_many(char side, pid_t child)
{
	(void)child;
	if (side == 'B') {
		wm_peer(1);
		return;
	}
	/* C, the peer of context 0, is forked before anything is opened (verbs and fork). */
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	fflush(NULL);
	pid_t c = fork();
	CHECK(c >= 0);
	if (c == 0) {
		close(sv[0]);
		close(g_ctl);
		g_ctl = sv[1];
		g_side = 'C';
		alarm(CASE_TIMEOUT_S);
		wm_peer(0);
		fflush(NULL);
		_exit(0);
	}
	close(sv[1]);
	int fd[2] = { sv[0], g_ctl }; /* to the peer of context k */

	struct tp_context *ctxs[2];
	struct tp_mem *send[2], *recv[2];
	struct tp_ep *ep[2];
	struct wm_stream m[2];
	uint8_t peer[2][TP_ADDR_MAX];
	uint32_t plen[2];
	for (int k = 0; k < 2; k++) {
		struct tp_config cfg = test_config(dev_for_side(k ? 'B' : 'A'), 3000);
		int rc = tp_context_create(&cfg, &ctxs[k]);
		if (rc == -EOPNOTSUPP || rc == -ENODEV) {
			kill(c, SIGKILL);
			waitpid(c, NULL, 0);
		}
		skip_unavailable(rc);
		CHECK_RC(rc);
		CHECK_RC(tp_mem_alloc(ctxs[k], (size_t)SDEPTH * SLOT, &send[k]));
		CHECK_RC(tp_mem_alloc(ctxs[k], (size_t)DEPTH * SLOT, &recv[k]));
		CHECK_RC(tp_ep_create(ctxs[k], recv[k], &m[k], &ep[k]));
		CHECK(tp_ep_context(ep[k]) == ctxs[k]);
		blob_send(fd[k], ep[k]);
		m[k] = (struct wm_stream){ .ep = ep[k], .send = send[k], .recv = recv[k],
					   .tx = (char)('a' + k), .rx = (char)('p' + k) };
	}
	if (g_backend == TP_BACKEND_VERBS)
		fprintf(stderr, "wait-many: contexts on %s and %s\n",
			dev_for_side('A') ? dev_for_side('A') : "auto",
			dev_for_side('B') ? dev_for_side('B') : "auto");
	for (int k = 0; k < 2; k++)
		plen[k] = blob_recv(fd[k], peer[k]);
	for (int k = 0; k < 2; k++)
		CHECK_RC(tp_ep_connect(ep[k], peer[k], plen[k]));
	CHECK(tp_wait_many(ctxs, 0, NULL, 1, 0) == -EINVAL);
	CHECK(tp_wait_many(ctxs, 2, NULL, 0, 0) == -EINVAL);
	CHECK(tp_wait_many(ctxs, TP_WAIT_MANY_MAX + 1, NULL, 1, 0) == -EINVAL);

	/* 1. Both ways on both endpoints at once; two events per call. */
	struct tp_event evs[4];
	uint64_t end = fr_now_ns() + 60000000000ull;
	while (!wm_finished(&m[0]) || !wm_finished(&m[1])) {
		CHECK(fr_now_ns() < end);
		wm_send(&m[0]);
		wm_send(&m[1]);
		int n = tp_wait_many(ctxs, 2, evs, 2, 100);
		CHECK_RC(n);
		CHECK(n <= 2);
		for (int i = 0; i < n; i++) {
			CHECK(evs[i].ep_user == &m[0] || evs[i].ep_user == &m[1]);
			wm_event(evs[i].ep_user, &evs[i]);
		}
	}
	char cmd;
	for (int k = 0; k < 2; k++) {
		fd_read(fd[k], &cmd, 1);
		CHECK(cmd == 's');
	}

	/* 2. Fairness: both contexts hold a burst; one event per call must alternate. */
	for (int k = 0; k < 2; k++)
		fd_write(fd[k], "f", 1);
	for (int k = 0; k < 2; k++) {
		fd_read(fd[k], &cmd, 1);
		CHECK(cmd == 'd');
	}
	usleep(100000); /* tcp: the bytes are written; let them reach our socket */
	uint32_t got[2] = { 0, 0 };
	int prev = -1, run = 0, longest = 0;
	end = fr_now_ns() + 30000000000ull;
	while (got[0] + got[1] < 2 * WM_BURST) {
		CHECK(fr_now_ns() < end);
		int n = tp_wait_many(ctxs, 2, evs, 1, 100);
		CHECK_RC(n);
		if (n == 0)
			continue;
		int k = evs[0].ep == ep[0] ? 0 : 1;
		CHECK(evs[0].ep == ep[k] && evs[0].type == TP_EV_ARRIVAL);
		if (evs[0].imm != 0x1000 + got[k] || evs[0].len != 64)
			FAIL("context %d: arrival imm 0x%x len %llu, want 0x%x", k, evs[0].imm,
			     (unsigned long long)evs[0].len, 0x1000 + got[k]);
		CHECK(verify((uint8_t *)tp_mem_ptr(recv[k]) + got[k] * 64u, 64, 0x40u + (uint64_t)k,
			     got[k]));
		got[k]++;
		CHECK_RC(tp_ep_release(ep[k], 1));
		run = k == prev ? run + 1 : 1;
		prev = k;
		longest = FR_MAX(longest, run);
	}
	fprintf(stderr, "wait-many: longest run of one context: %d of %d events\n", longest,
		2 * WM_BURST);
	CHECK(longest <= 2);

	/* 3. Asleep in both epoll sets at once: each peer's put wakes us at once. */
	double c0 = cpu_s();
	uint64_t t0 = fr_now_ns(), woke_ns[2] = { 0, 0 }, lat_ns[2] = { 0, 0 };
	for (int k = 0; k < 2; k++)
		fd_write(fd[k], "w", 1);
	while (!woke_ns[0] || !woke_ns[1]) {
		CHECK(fr_now_ns() - t0 < 30000000000ull);
		int n = tp_wait_many(ctxs, 2, evs, 4, 1000);
		CHECK_RC(n);
		for (int i = 0; i < n; i++) {
			int k = evs[i].ep == ep[0] ? 0 : 1;
			CHECK(evs[i].ep == ep[k] && evs[i].type == TP_EV_ARRIVAL && !woke_ns[k]);
			CHECK(evs[i].imm == 0x2000u + (uint32_t)k && evs[i].len == 8);
			uint64_t put_ns;
			memcpy(&put_ns, tp_mem_ptr(recv[k]), 8);
			woke_ns[k] = fr_now_ns();
			CHECK(put_ns > t0 && put_ns <= woke_ns[k]);
			lat_ns[k] = woke_ns[k] - put_ns;
			CHECK_RC(tp_ep_release(ep[k], 1));
		}
	}
	double used = cpu_s() - c0;
	fprintf(stderr, "wait-many: woken for context 1 at %.0f ms (%.1f ms after its put), "
		"context 0 at %.0f ms (%.1f ms after), %.1f ms CPU\n",
		(double)(woke_ns[1] - t0) * 1e-6, (double)lat_ns[1] * 1e-6,
		(double)(woke_ns[0] - t0) * 1e-6, (double)lat_ns[0] * 1e-6, used * 1e3);
	CHECK(used < 0.1);
	CHECK(lat_ns[0] < 100000000ull && lat_ns[1] < 100000000ull);
	for (int k = 0; k < 2; k++) {
		fd_read(fd[k], &cmd, 1); /* its put completed: no event is owed to it but ours */
		CHECK(cmd == 'w');
	}

	/* 4. C dies: context 0 reports it once while context 1 streams both ways. */
	CHECK(kill(c, SIGKILL) == 0);
	uint64_t t_kill = fr_now_ns(), t_err = 0;
	fd_write(fd[1], "x", 1);
	m[1] = (struct wm_stream){ .ep = ep[1], .send = send[1], .recv = recv[1], .tx = 'B',
				   .rx = 'Q' };
	end = fr_now_ns() + 60000000000ull;
	uint64_t after_err = 0;
	while (!t_err || !wm_finished(&m[1])) {
		CHECK(fr_now_ns() < end);
		wm_send(&m[1]);
		int n = tp_wait_many(ctxs, 2, evs, 4, 100);
		CHECK_RC(n);
		for (int i = 0; i < n; i++) {
			if (evs[i].ep == ep[0]) {
				CHECK(evs[i].type == TP_EV_EP_ERROR && evs[i].status < 0 && !t_err);
				t_err = fr_now_ns();
				continue;
			}
			after_err += t_err != 0;
			wm_event(&m[1], &evs[i]);
		}
	}
	fprintf(stderr, "wait-many: context 0's peer death noticed after %.3f s; context 1 had "
		"%llu events after it\n", (double)(t_err - t_kill) * 1e-9,
		(unsigned long long)after_err);
	CHECK(tp_ep_status(ep[0]) < 0);
	CHECK(tp_put_imm(ep[0], send[0], 0, 0, 1, 0, 0, 0) < 0);
	/* Context 1 still works now that context 0's failure was reported: a round trip, once
	 * B is done with the stream. */
	fd_read(fd[1], &cmd, 1);
	CHECK(cmd == 's');
	gen((uint8_t *)tp_mem_ptr(send[1]) + WM_NEXT_SLOT, 16, 0x60, 0);
	int rc;
	end = fr_now_ns() + 30000000000ull;
	while ((rc = tp_put_imm(ep[1], send[1], WM_NEXT_SLOT, WM_NEXT_SLOT, 16, 0x3000,
				TP_PUT_SIGNAL, 0x3000)) == -EAGAIN) {
		CHECK(fr_now_ns() < end);
		CHECK(tp_wait_many(ctxs, 2, evs, 4, 50) == 0); /* nothing else is owed to us */
	}
	CHECK_RC(rc);
	bool put_done = false, reply = false;
	while (!put_done || !reply) {
		CHECK(fr_now_ns() < end);
		int n = tp_wait_many(ctxs, 2, evs, 4, 100);
		CHECK_RC(n);
		for (int i = 0; i < n; i++) {
			CHECK(evs[i].ep == ep[1]);
			if (evs[i].type == TP_EV_SEND_DONE) {
				CHECK(evs[i].status == 0 && evs[i].cookie == 0x3000 && !put_done);
				put_done = true;
				continue;
			}
			CHECK(evs[i].type == TP_EV_ARRIVAL && evs[i].imm == 0x3001 && !reply);
			const uint8_t *q = (uint8_t *)tp_mem_ptr(recv[1]) + WM_NEXT_SLOT;
			CHECK(evs[i].len == 16 && verify(q, 16, 0x61, 0));
			CHECK_RC(tp_ep_release(ep[1], 1));
			reply = true;
		}
	}
	int st;
	CHECK(waitpid(c, &st, 0) == c && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	close(fd[0]);
	barrier();
	for (int k = 0; k < 2; k++) {
		tp_ep_destroy(ep[k]);
		tp_mem_free(send[k]);
		tp_mem_free(recv[k]);
		tp_context_destroy(ctxs[k]);
	}
}

struct tcase {
	const char *name;
	void (*fn)(char side);
	void (*fn_pid)(char side, pid_t child);
	bool vm_only; /* verbs inside ../shared/rdma-vm (root, tc, netem) */
};

/* A dma-buf over host memory (/dev/udmabuf, the kernel's exporter of memfd pages), standing
 * in for a GPU's exported memory: its fd, and the same pages mapped for the CPU in *map
 * (len bytes). -errno when the kernel has no udmabuf. */
static int udmabuf_make(size_t len, void **map, int *memfd)
{
	int dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC), mfd = -1, fd = -1, rc = 0;
	if (dev < 0)
		return -errno;
	mfd = memfd_create("ferry-test-dmabuf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, (off_t)len) < 0 ||
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) {
		rc = -errno;
		goto out;
	}
	struct udmabuf_create c = { .memfd = (uint32_t)mfd, .flags = UDMABUF_FLAGS_CLOEXEC,
				    .offset = 0, .size = len };
	if ((fd = ioctl(dev, UDMABUF_CREATE, &c)) < 0 ||
	    (*map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0)) == MAP_FAILED) {
		rc = -errno;
		goto out;
	}
	*memfd = mfd;
	close(dev);
	return fd;
out:
	if (fd >= 0)
		close(fd);
	if (mfd >= 0)
		close(mfd);
	close(dev);
	return rc;
}

#define DMABUF_LEN (2u << 20)

/* Device memory through its dma-buf (tp_mem_register_dmabuf, GPUDirect RDMA's registration;
 * a udmabuf stands in for a GPU): bad arguments are refused; shm and tcp refuse it with
 * -EOPNOTSUPP; verbs registers it where the device can (then A puts from its own dma-buf,
 * small puts too, which must not go inline, into B's, and B checks the bytes through the
 * pages' CPU mapping) and otherwise refuses it with an errno, both sides going on cleanly. */
static void case_dmabuf(char side)
{
	struct tp_config cfg = test_config(dev_for_side(side), 5000);
	struct tp_context *ctx;
	struct tp_mem *mem = NULL;
	void *map = NULL;
	int memfd = -1, rc = tp_context_create(&cfg, &ctx);

	skip_unavailable(rc);
	CHECK_RC(rc);
	int fd = udmabuf_make(DMABUF_LEN, &map, &memfd);
	if (fd < 0)
		printf("  %c: no /dev/udmabuf (%s): the argument checks only\n", side, strerror(-fd));
	int probe_fd = fd >= 0 ? fd : g_ctl; /* any open fd for the checks before the driver's */
	void *addr = map ? map : (void *)&cfg;
	CHECK(tp_mem_register_dmabuf(ctx, -1, 0, 4096, addr, &mem) == -EINVAL);
	CHECK(tp_mem_register_dmabuf(ctx, probe_fd, 0, 0, addr, &mem) == -EINVAL);
	CHECK(tp_mem_register_dmabuf(ctx, probe_fd, 0, 4096, NULL, &mem) == -EINVAL);
	if (g_backend != TP_BACKEND_VERBS) {
		CHECK(tp_mem_register_dmabuf(ctx, probe_fd, 0, 4096, addr, &mem) == -EOPNOTSUPP);
	} else {
		rc = fd >= 0 ? tp_mem_register_dmabuf(ctx, fd, 0, DMABUF_LEN, map, &mem) : fd;
		char mine = rc == 0 ? 'y' : 'n', theirs;
		ctl_write(&mine, 1);
		ctl_read(&theirs, 1);
		if (rc < 0 && fd >= 0)
			printf("  %c: %s cannot register dma-buf memory: %s (refused cleanly)\n", side,
			       cfg.device ? cfg.device : "the device", strerror(-rc));
		if (mine == 'y' && theirs == 'y') {
			CHECK(tp_mem_is_device(mem) && tp_mem_ptr(mem) == map &&
			      tp_mem_len(mem) == DMABUF_LEN);
			struct side s = { .ctx = ctx };
			uint8_t peer[TP_ADDR_MAX];
			CHECK_RC(tp_ep_create(ctx, mem, &s, &s.ep));
			blob_send(g_ctl, s.ep);
			uint32_t plen = blob_recv(g_ctl, peer);
			CHECK_RC(tp_ep_connect(s.ep, peer, plen));
			static const size_t len[] = { 16, 4096, 1 << 20 };
			for (size_t i = 0; i < FR_ARRAY_SIZE(len); i++) {
				if (side == 'A') {
					gen(map, len[i], 7, i);
					CHECK_RC(tp_put_imm(s.ep, mem, 0, 4096, len[i], (uint32_t)i,
							    TP_PUT_SIGNAL, i));
					struct tp_event ev = next_event(&s, 30);
					CHECK(ev.type == TP_EV_SEND_DONE && ev.status == 0);
				} else {
					struct tp_event ev = next_event(&s, 30);
					CHECK(ev.type == TP_EV_ARRIVAL && ev.imm == i && ev.len == len[i]);
					CHECK(verify((uint8_t *)map + 4096, len[i], 7, i));
					CHECK_RC(tp_ep_release(s.ep, 1));
				}
				barrier();
			}
			printf("  %c: dma-buf memory registered, puts of 16 B to 1 MiB checked\n",
			       side);
			tp_ep_destroy(s.ep);
		}
	}
	barrier();
	tp_mem_free(mem);
	if (map)
		munmap(map, DMABUF_LEN);
	if (fd >= 0)
		close(fd);
	if (memfd >= 0)
		close(memfd);
	tp_context_destroy(ctx);
}

static const struct tcase cases[] = {
	{ "sizes", case_sizes, NULL },
	{ "stream", case_stream, NULL },
	{ "two-eps", case_two_eps, NULL },
	{ "backpressure", case_backpressure, NULL },
	{ "idle", case_idle, NULL },
	{ "teardown", case_teardown, NULL },
	{ "death-receiver", NULL, case_death_receiver },
	{ "death-sender", NULL, case_death_sender },
	{ "link-loss", NULL, case_link_loss, true },
	{ "wait-many", NULL, case_wait_many },
	{ "dmabuf", case_dmabuf, NULL },
};

static int run_case(const struct tcase *c)
{
	int sv[2], status;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 1;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(sv[0]);
		g_ctl = sv[1];
		g_side = 'B';
		alarm(CASE_TIMEOUT_S);
		if (c->fn)
			c->fn('B');
		else
			c->fn_pid('B', 0);
		fflush(NULL);
		_exit(0);
	}
	close(sv[1]);
	g_ctl = sv[0];
	g_side = 'A';
	alarm(CASE_TIMEOUT_S);
	uint64_t t0 = fr_now_ns();
	if (c->fn)
		c->fn('A');
	else
		c->fn_pid('A', pid);
	alarm(0);
	close(g_ctl);
	if (waitpid(pid, &status, 0) < 0)
		return 1;
	bool killed_ok = !c->fn && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
	if (!killed_ok && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
			return 77;
		fprintf(stderr, "case %s: side B failed (status 0x%x)\n", c->name, status);
		return 1;
	}
	printf("ok %s/%s (%.2f s)\n", tp_backend_name(g_backend), c->name,
	       (double)(fr_now_ns() - t0) * 1e-9);
	return 0;
}

int main(int argc, char **argv)
{
	const char *backend = NULL, *which = "all";
	g_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--backend"))
			backend = argv[i + 1];
		else if (!strcmp(argv[i], "--case"))
			which = argv[i + 1];
		else if (!strcmp(argv[i], "--seed"))
			g_seed = strtoull(argv[i + 1], NULL, 0);
	}
	if (!backend || tp_backend_parse(backend, &g_backend) < 0) {
		fprintf(stderr, "usage: %s --backend shm|tcp|verbs [--case NAME|all] [--seed N]\n",
			argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("transport suite: backend %s, seed 0x%llx\n", backend, (unsigned long long)g_seed);
	int found = 0, rc = 0;
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++) {
		if (strcmp(which, "all") && strcmp(which, cases[i].name))
			continue;
		found++;
		if (cases[i].vm_only && (g_backend != TP_BACKEND_VERBS || !getenv("RDMA_VM"))) {
			printf("skip %s/%s: needs verbs inside the RDMA VM\n", backend,
			       cases[i].name);
			continue;
		}
		int r = run_case(&cases[i]);
		if (r == 77)
			return 77;
		if (r)
			rc = 1;
	}
	if (!found) {
		fprintf(stderr, "no case named %s\n", which);
		return 2;
	}
	return rc;
}
