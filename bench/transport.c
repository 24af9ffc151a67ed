/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench/transport.c - latency and bandwidth of each transport backend against a ceiling
 * measured in the same run:
 *   shm    bandwidth: memcpy into a hot 16-slot ring in one process; latency: a bare
 *          cross-process ping-pong over shared memory (copy the message into the peer's
 *          mapping, store a sequence number, the peer spins on it and answers the same way):
 *          the least any shared-memory transport can take, with no rings, credits or
 *          doorbells
 *   tcp    a plain blocking TCP stream over loopback (ping-pong for latency)
 *   verbs  perftest ib_write_lat / ib_write_bw (when found; run inside ../shared/rdma-vm)
 *
 *   bench_transport [--backend shm|tcp|verbs|all] [--reps N] [--quick]
 *
 * Latency is a ping-pong of put_imm + arrival each way (RTT/2); bandwidth is a stream of
 * puts through 16 ring slots with credits. Each size is measured --reps times (default 5),
 * ours and the ceiling back to back each time, and every column is the median over the
 * repetitions (ratios are medians of the paired ratios): these machines are small and
 * noisy. Columns: p50/p99 one-way latency (us), the ceiling's latency, bandwidth (GB/s),
 * the ceiling's bandwidth and the ratios. The last lines check the targets: bw_x >= 0.9
 * at >= 256 KiB and lat_x <= 1.5 at <= 4 KiB.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "transport/transport.h"

#define SLOTS 16
#define REGION ((size_t)SLOTS << 22) /* 16 slots of up to 4 MiB */
#define MAX_REPS 21

static const size_t sizes[] = { 4096, 16384, 65536, 262144, 1048576, 4194304 };
static bool quick;
static int reps = 5;

struct side {
	struct tp_context *ctx;
	struct tp_mem *recv, *send;
	struct tp_ep *ep;
	int ctl;
};

static void die(const char *what, int rc)
{
	fprintf(stderr, "bench_transport: %s: %s\n", what, strerror(rc < 0 ? -rc : rc));
	exit(1);
}

static void xwrite(int fd, const void *b, size_t n)
{
	const char *p = b;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			die("write", errno);
		p += w;
		n -= (size_t)w;
	}
}

static void xread(int fd, void *b, size_t n)
{
	char *p = b;
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r <= 0)
			die("read", r ? errno : ECONNRESET);
		p += r;
		n -= (size_t)r;
	}
}

static int side_open(struct side *s, enum tp_backend b, const char *dev)
{
	struct tp_config cfg = { .backend = b, .device = dev, .gid_index = -1,
				 .recv_depth = SLOTS, .send_depth = 64 };
	uint8_t blob[TP_ADDR_MAX], peer[TP_ADDR_MAX];
	size_t len = 0;
	uint32_t l;
	int rc = tp_context_create(&cfg, &s->ctx);
	if (rc < 0)
		return rc;
	if ((rc = tp_mem_alloc(s->ctx, REGION, &s->recv)) < 0 ||
	    (rc = tp_mem_alloc(s->ctx, 4u << 20, &s->send)) < 0 ||
	    (rc = tp_ep_create(s->ctx, s->recv, NULL, &s->ep)) < 0 ||
	    (rc = tp_ep_address(s->ep, blob, sizeof(blob), &len)) < 0)
		die("setup", rc);
	memset(tp_mem_ptr(s->send), 0x5a, 4u << 20);
	l = (uint32_t)len;
	xwrite(s->ctl, &l, 4);
	xwrite(s->ctl, blob, len);
	xread(s->ctl, &l, 4);
	if (l > sizeof(peer))
		die("blob", EPROTO);
	xread(s->ctl, peer, l);
	rc = tp_ep_connect(s->ep, peer, l);
	if (rc < 0)
		die("connect", rc);
	return 0;
}

static void side_close(struct side *s)
{
	tp_ep_destroy(s->ep);
	tp_mem_free(s->recv);
	tp_mem_free(s->send);
	tp_context_destroy(s->ctx);
}

static struct tp_event wait_arrival(struct side *s)
{
	struct tp_event ev[8];
	for (;;) {
		int n = tp_wait(s->ctx, ev, 1, 1000);
		if (n < 0)
			die("wait", n);
		if (n && ev[0].type == TP_EV_EP_ERROR)
			die("endpoint", ev[0].status);
		if (n && ev[0].type == TP_EV_ARRIVAL)
			return ev[0];
	}
}

/* Waits for arrivals, releases all of them at once and returns how many came. */
static uint32_t wait_arrivals(struct side *s)
{
	struct tp_event ev[SLOTS];
	uint32_t got = 0;
	while (!got) {
		int n = tp_wait(s->ctx, ev, SLOTS, 1000);
		if (n < 0)
			die("wait", n);
		for (int i = 0; i < n; i++) {
			if (ev[i].type == TP_EV_EP_ERROR)
				die("endpoint", ev[i].status);
			got += ev[i].type == TP_EV_ARRIVAL;
		}
	}
	tp_ep_release(s->ep, got);
	return got;
}

static void put_retry(struct side *s, uint64_t roff, size_t len, uint32_t imm, unsigned flags)
{
	struct tp_event ev[16];
	int rc;
	while ((rc = tp_put_imm(s->ep, s->send, 0, roff, len, imm, flags, 0)) == -EAGAIN) {
		int n = tp_wait(s->ctx, ev, 16, 100); /* sleeps when the socket/ring is full */
		if (n < 0)
			die("wait", n);
		for (int i = 0; i < n; i++)
			if (ev[i].type == TP_EV_EP_ERROR)
				die("endpoint", ev[i].status);
	}
	if (rc < 0)
		die("put", rc);
}

static int iters_for(size_t size, size_t budget)
{
	size_t n = budget / size;
	if (quick)
		n /= 8;
	return (int)FR_MAX((size_t)20, FR_MIN(n, (size_t)2000));
}

/* ---- responder (child) ---- */

struct cmd {
	char op; /* 'L' ping-pong, 'B' sink, 'Q' quit */
	uint32_t size, iters;
};

static void responder(struct side *s)
{
	struct cmd c;
	for (;;) {
		xread(s->ctl, &c, sizeof(c));
		if (c.op == 'Q')
			return;
		if (c.op == 'L') {
			for (uint32_t i = 0; i < c.iters; i++) {
				wait_arrival(s);
				tp_ep_release(s->ep, 1);
				put_retry(s, 0, c.size, i, i + 1 == c.iters ? TP_PUT_SIGNAL : 0);
			}
		} else {
			/* A sink consumes what has arrived in one go, as a real receiver does. */
			for (uint32_t got = 0; got < c.iters;)
				got += wait_arrivals(s);
		}
		if (c.op == 'B')
			put_retry(s, 0, 8, 0, TP_PUT_SIGNAL); /* "all arrived" */
		/* Puts progress only inside poll/wait: see the last one out before idling. */
		for (;;) {
			struct tp_event ev;
			int n = tp_wait(s->ctx, &ev, 1, 1000);
			if (n < 0 || (n == 1 && ev.type == TP_EV_EP_ERROR))
				die("responder", n < 0 ? n : ev.status);
			if (n == 1 && ev.type == TP_EV_SEND_DONE)
				break;
		}
		char ok = 'k';
		xwrite(s->ctl, &ok, 1);
	}
}

/* ---- measurements ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void pct(double *v, int n, double *p50, double *p99)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	*p50 = v[n / 2];
	*p99 = v[FR_MIN(n - 1, (int)(n * 0.99))];
}

static void tp_latency(struct side *s, size_t size, double *p50, double *p99)
{
	int n = iters_for(size, 256u << 20);
	struct cmd c = { 'L', (uint32_t)size, (uint32_t)n };
	double *v = malloc(sizeof(double) * (size_t)n);
	char ok;
	xwrite(s->ctl, &c, sizeof(c));
	for (int i = 0; i < n; i++) {
		uint64_t t0 = fr_now_ns();
		put_retry(s, 0, size, (uint32_t)i, 0);
		wait_arrival(s);
		v[i] = (double)(fr_now_ns() - t0) / 2e3;
		tp_ep_release(s->ep, 1);
	}
	xread(s->ctl, &ok, 1);
	pct(v, n, p50, p99);
	free(v);
}

static double tp_bandwidth(struct side *s, size_t size)
{
	int n = iters_for(size, 1u << 30);
	struct cmd c = { 'B', (uint32_t)size, (uint32_t)n };
	char ok;
	xwrite(s->ctl, &c, sizeof(c));
	uint64_t t0 = fr_now_ns();
	for (int i = 0; i < n; i++)
		put_retry(s, (uint64_t)(i % SLOTS) * size, size, (uint32_t)i, 0);
	wait_arrival(s);
	double dt = (double)(fr_now_ns() - t0) * 1e-9;
	tp_ep_release(s->ep, 1);
	xread(s->ctl, &ok, 1);
	return (double)size * n / dt / 1e9;
}

/* memcpy into a hot ring of SLOTS slots: the bandwidth ceiling of one put's single copy. */
static double memcpy_ceiling(size_t size)
{
	uint8_t *src = malloc(size), *dst = malloc(size * SLOTS);
	int n = iters_for(size, 1u << 30);
	memset(src, 1, size);
	memset(dst, 0, size * SLOTS);
	for (int i = 0; i < SLOTS; i++) /* warm: fault in and cache like a hot ring */
		memcpy(dst + (size_t)i * size, src, size);
	uint64_t t0 = fr_now_ns();
	for (int i = 0; i < n; i++) {
		memcpy(dst + (size_t)(i % SLOTS) * size, src, size);
		__asm__ volatile("" ::: "memory");
	}
	double gbps = (double)size * n / ((double)(fr_now_ns() - t0) * 1e-9) / 1e9;
	free(src);
	free(dst);
	return gbps;
}

/* Spins until *flag reaches want; yields now and then so a busy host still makes progress. */
static void spin_until(_Atomic uint64_t *flag, uint64_t want)
{
	for (unsigned i = 1; atomic_load_explicit(flag, memory_order_acquire) < want; i++) {
		__builtin_ia32_pause();
		if (!(i & 15))
			sched_yield(); /* as tp_wait does: the peer may need this core */
	}
}

/* The bare shared-memory ping-pong: the latency ceiling of any shm transport. */
static double shm_pingpong_ceiling(size_t size)
{
	int n = iters_for(size, 256u << 20);
	size_t map = 128 + 2 * size;
	uint8_t *m = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	uint8_t *src = malloc(size);
	double *v = malloc(sizeof(double) * (size_t)n), p50, p99;
	if (m == MAP_FAILED || !src || !v)
		die("ping-pong ceiling", ENOMEM);
	memset(m, 0, map);
	memset(src, 3, size);
	_Atomic uint64_t *ping = (_Atomic uint64_t *)m, *pong = (_Atomic uint64_t *)(m + 64);
	uint8_t *to_child = m + 128, *to_parent = m + 128 + size;
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		for (int i = 1; i <= n; i++) {
			spin_until(ping, (uint64_t)i);
			memcpy(to_parent, src, size);
			atomic_store_explicit(pong, (uint64_t)i, memory_order_release);
		}
		_exit(0);
	}
	if (pid < 0)
		die("fork", errno);
	for (int i = 1; i <= n; i++) {
		uint64_t t0 = fr_now_ns();
		memcpy(to_child, src, size);
		atomic_store_explicit(ping, (uint64_t)i, memory_order_release);
		spin_until(pong, (uint64_t)i);
		v[i - 1] = (double)(fr_now_ns() - t0) / 2e3;
	}
	waitpid(pid, NULL, 0);
	pct(v, n, &p50, &p99);
	munmap(m, map);
	free(src);
	free(v);
	return p50;
}

/* A plain blocking TCP stream over loopback between two processes. */
static void tcp_ceiling(size_t size, double *lat_us, double *gbps)
{
	int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	int nl = iters_for(size, 256u << 20), nb = iters_for(size, 1u << 30);
	char *buf = malloc(size);
	memset(buf, 7, size);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    getsockname(ls, (struct sockaddr *)&sin, &sl) < 0 || listen(ls, 1) < 0)
		die("tcp ceiling", errno);
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = accept(ls, NULL, NULL);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		for (int i = 0; i < nl; i++) {
			xread(fd, buf, size);
			xwrite(fd, buf, size);
		}
		for (int i = 0; i < nb; i++)
			xread(fd, buf, size);
		xwrite(fd, "k", 1);
		_exit(0);
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
		die("tcp ceiling connect", errno);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	double *v = malloc(sizeof(double) * (size_t)nl), p99;
	for (int i = 0; i < nl; i++) {
		uint64_t t0 = fr_now_ns();
		xwrite(fd, buf, size);
		xread(fd, buf, size);
		v[i] = (double)(fr_now_ns() - t0) / 2e3;
	}
	pct(v, nl, lat_us, &p99);
	uint64_t t0 = fr_now_ns();
	for (int i = 0; i < nb; i++)
		xwrite(fd, buf, size);
	xread(fd, buf, 1);
	*gbps = (double)size * nb / ((double)(fr_now_ns() - t0) * 1e-9) / 1e9;
	close(fd);
	close(ls);
	waitpid(pid, NULL, 0);
	free(v);
	free(buf);
}

/* perftest inside the VM: server on rxe1, client on rxe0. Returns false if unavailable. */
static bool perftest_ceiling(const char *tool, size_t size, double *val)
{
	const char *d0 = getenv("RDMA_VM_DEV0"), *d1 = getenv("RDMA_VM_DEV1");
	const char *ip1 = getenv("RDMA_VM_IP1"), *gi = getenv("RDMA_VM_GID_INDEX");
	char cmd[768];
	if (!d0 || !d1 || !ip1 || !gi)
		return false;
	bool lat = strstr(tool, "lat") != NULL;
	snprintf(cmd, sizeof(cmd),
		 "(%s -d %s -x %s -s %zu -n %d >/dev/null 2>&1 &) ; sleep 1; "
		 "%s -d %s -x %s -s %zu -n %d %s 2>/dev/null",
		 tool, d1, gi, size, lat ? 200 : 100, tool, d0, gi, size, lat ? 200 : 100, ip1);
	FILE *f = popen(cmd, "r");
	char line[512];
	bool got = false;
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		double a[8];
		int k = sscanf(line, " %lf %lf %lf %lf %lf %lf %lf", &a[0], &a[1], &a[2], &a[3],
			       &a[4], &a[5], &a[6]);
		if (k >= 4 && a[0] == (double)size) {
			/* ib_write_bw: bytes iters peak avg(MB/s) ...; ib_write_lat: bytes iters
			 * min max typical avg ... (usec) */
			*val = lat ? a[4] : a[3] * 1e6 / 1e9 * 1.048576;
			got = true;
		}
	}
	pclose(f);
	return got;
}

static double median(const double *v)
{
	double t[MAX_REPS];
	memcpy(t, v, sizeof(double) * (size_t)reps);
	qsort(t, (size_t)reps, sizeof(*t), cmp_double);
	return reps % 2 ? t[reps / 2] : (t[reps / 2 - 1] + t[reps / 2]) / 2;
}

/* Measures backend b; writes its target verdict into verdict. */
static void run_backend(enum tp_backend b, char *verdict, size_t vcap)
{
	char miss_bw[128] = "", miss_lat[128] = "";
	bool no_ceiling = false;
	int sv[2];
	struct side s = { 0 };
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		die("socketpair", errno);
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		s.ctl = sv[1];
		close(sv[0]);
		if (side_open(&s, b, getenv("RDMA_VM_DEV1")) < 0)
			_exit(77);
		responder(&s);
		side_close(&s);
		_exit(0);
	}
	close(sv[1]);
	s.ctl = sv[0];
	int rc = side_open(&s, b, getenv("RDMA_VM_DEV0"));
	if (rc < 0) {
		printf("%-6s unavailable: %s\n", tp_backend_name(b), strerror(-rc));
		snprintf(verdict, vcap, "%s: unavailable (%s)", tp_backend_name(b), strerror(-rc));
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(sv[0]);
		return;
	}
	/* Warm-up, not reported: page faults, caches, the scheduler's first placement. */
	{
		double w50, w99;
		tp_latency(&s, sizes[0], &w50, &w99);
		(void)tp_bandwidth(&s, sizes[0]);
	}
	for (size_t i = 0; i < FR_ARRAY_SIZE(sizes); i++) {
		size_t sz = sizes[i];
		double p50[MAX_REPS], p99[MAX_REPS], clat[MAX_REPS], bw[MAX_REPS], cbw[MAX_REPS];
		double lx[MAX_REPS], bx[MAX_REPS];
		bool have = true;
		for (int r = 0; r < reps; r++) {
			tp_latency(&s, sz, &p50[r], &p99[r]);
			bw[r] = tp_bandwidth(&s, sz);
			if (b == TP_BACKEND_SHM) {
				clat[r] = shm_pingpong_ceiling(sz);
				cbw[r] = memcpy_ceiling(sz);
			} else if (b == TP_BACKEND_TCP) {
				tcp_ceiling(sz, &clat[r], &cbw[r]);
			} else {
				have = have && perftest_ceiling("ib_write_lat", sz, &clat[r]) &&
				       perftest_ceiling("ib_write_bw", sz, &cbw[r]);
			}
			have = have && isfinite(clat[r]) && isfinite(cbw[r]) && clat[r] > 0 &&
			       cbw[r] > 0;
			lx[r] = have ? p50[r] / clat[r] : 0;
			bx[r] = have ? bw[r] / cbw[r] : 0;
		}
		double mp50 = median(p50), mp99 = median(p99), mbw = median(bw);
		if (have) {
			double mlx = median(lx), mbx = median(bx);
			printf("%-6s %8zu %9.1f %9.1f %9.1f %6.2f %8.2f %8.2f %6.2f\n",
			       tp_backend_name(b), sz, mp50, mp99, median(clat), mlx, mbw,
			       median(cbw), mbx);
			if (sz >= (256u << 10) && mbx < 0.9)
				snprintf(miss_bw + strlen(miss_bw), sizeof(miss_bw) - strlen(miss_bw),
					 " %zu", sz);
			if (sz <= 4096 && mlx > 1.5)
				snprintf(miss_lat + strlen(miss_lat),
					 sizeof(miss_lat) - strlen(miss_lat), " %zu", sz);
		} else {
			printf("%-6s %8zu %9.1f %9.1f %9s %6s %8.2f %8s %6s\n", tp_backend_name(b),
			       sz, mp50, mp99, "n/a", "-", mbw, "n/a", "-");
			no_ceiling = true;
		}
		fflush(stdout);
	}
	if (no_ceiling)
		snprintf(verdict, vcap, "%s: no ceiling measured (perftest missing?)",
			 tp_backend_name(b));
	else
		snprintf(verdict, vcap, "%s: bandwidth >= 0.9x at >= 256 KiB: %s%s; "
			 "latency <= 1.5x at <= 4 KiB: %s%s", tp_backend_name(b),
			 miss_bw[0] ? "MISSED at" : "met", miss_bw, miss_lat[0] ? "MISSED at" : "met",
			 miss_lat);
	struct cmd q = { 'Q', 0, 0 };
	xwrite(s.ctl, &q, sizeof(q));
	waitpid(pid, NULL, 0);
	side_close(&s);
	close(sv[0]);
}

int main(int argc, char **argv)
{
	const char *which = "all";
	char verdicts[3][320] = { "", "", "" };
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
			which = argv[++i];
		} else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < 1 || v > MAX_REPS) {
				fprintf(stderr, "bench_transport: --reps must be 1..%d, got '%s'\n",
					MAX_REPS, argv[i]);
				return 2;
			}
			reps = (int)v;
		} else if (!strcmp(argv[i], "--quick")) {
			quick = true;
		} else {
			fprintf(stderr, "usage: %s [--backend shm|tcp|verbs|all] [--reps N] [--quick]\n",
				argv[0]);
			return 2;
		}
	}
	if (strcmp(which, "all") && strcmp(which, "shm") && strcmp(which, "tcp") &&
	    strcmp(which, "verbs")) {
		fprintf(stderr, "bench_transport: unknown backend '%s' (shm, tcp, verbs, all)\n",
			which);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("medians of %d paired runs per row\n", reps);
	printf("%-6s %8s %9s %9s %9s %6s %8s %8s %6s\n", "backend", "bytes", "p50_us", "p99_us",
	       "ceil_us", "lat_x", "GB/s", "ceil", "bw_x");
	for (int b = TP_BACKEND_SHM; b <= TP_BACKEND_VERBS; b++)
		if (!strcmp(which, "all") || !strcmp(which, tp_backend_name((enum tp_backend)b)))
			run_backend((enum tp_backend)b, verdicts[b], sizeof(verdicts[b]));
	for (int b = 0; b < 3; b++)
		if (verdicts[b][0])
			printf("target %s\n", verdicts[b]);
	return 0;
}
