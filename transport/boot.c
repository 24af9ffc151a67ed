/* SPDX-License-Identifier: Apache-2.0 */
/* boot.c - the socket bootstrap every backend connects through: each endpoint listens on
 * its own socket (TCP, or an abstract Unix socket for shm); the side with the smaller nonce
 * connects, the other accepts, and a hello naming both nonces authenticates the pair. */
#include "transport/transport-internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HELLO_MAGIC 0x4f4c4548u /* "HELO" */

struct hello {
	uint32_t magic;
	uint32_t zero;
	uint64_t from, to; /* nonces, host order: both ends run the same build */
};

int tp__set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int tp__sock_liveness(int fd, uint32_t timeout_ms)
{
	int one = 1, idle = (int)FR_MAX(1u, timeout_ms / 3000), cnt = 2;
	unsigned int utmo = timeout_ms;
	if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &utmo, sizeof(utmo)) < 0)
		return -errno;
	return 0;
}

static int remaining_ms(uint64_t deadline_ns)
{
	uint64_t now = fr_now_ns();
	if (now >= deadline_ns)
		return 0;
	uint64_t ms = (deadline_ns - now + 999999) / 1000000;
	return ms > 1000000 ? 1000000 : (int)ms;
}

static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int t = remaining_ms(deadline_ns);
		int rc = poll(&p, 1, t);
		if (rc > 0)
			return 0;
		if (rc == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

void tp__boot_addr_str(const struct tp_boot_addr *a, char *buf, size_t cap)
{
	if (a->family == AF_UNIX) {
		snprintf(buf, cap, "unix:@%s", a->path);
	} else {
		char ip[INET_ADDRSTRLEN] = "?";
		inet_ntop(AF_INET, &a->ip4, ip, sizeof(ip));
		snprintf(buf, cap, "%s:%u", ip, a->port);
	}
}

static socklen_t unix_addr(const struct tp_boot_addr *a, struct sockaddr_un *sun)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	size_t n = strnlen(a->path, sizeof(a->path));
	memcpy(sun->sun_path + 1, a->path, n); /* abstract: leading NUL, no file to clean up */
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

int tp__boot_listen(struct tp_ep *ep, bool unix_socket)
{
	struct tp_boot_addr *a = &ep->boot;
	int fd, rc;

	memset(a, 0, sizeof(*a));
	if (unix_socket) {
		struct sockaddr_un sun;
		a->family = AF_UNIX;
		snprintf(a->path, sizeof(a->path), "ferry-tp-%d-%016llx", (int)getpid(),
			 (unsigned long long)ep->nonce);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		if (bind(fd, (struct sockaddr *)&sun, unix_addr(a, &sun)) < 0)
			goto fail_errno;
	} else {
		struct sockaddr_in sin = { .sin_family = AF_INET };
		socklen_t sl = sizeof(sin);
		a->family = AF_INET;
		if (inet_pton(AF_INET, ep->ctx->cfg.bind_addr, &sin.sin_addr) != 1) {
			fr_err(TP_COMP, "bind_addr '%s' is not an IPv4 address",
			       ep->ctx->cfg.bind_addr);
			return -EINVAL;
		}
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0)
			return -errno;
		if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
		    getsockname(fd, (struct sockaddr *)&sin, &sl) < 0)
			goto fail_errno;
		a->ip4 = sin.sin_addr.s_addr;
		a->port = ntohs(sin.sin_port);
	}
	if (listen(fd, 8) < 0)
		goto fail_errno;
	ep->listen_fd = fd;
	return 0;
fail_errno:
	rc = -errno;
	close(fd);
	return rc;
}

int tp__io_full(int fd, void *buf, size_t len, bool wr, uint64_t deadline_ns)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = wr ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		int rc = wait_fd(fd, wr ? POLLOUT : POLLIN, deadline_ns);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int connect_once(const struct tp_boot_addr *peer, uint64_t deadline_ns)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd, rc, err = 0;
	socklen_t el = sizeof(err);

	if (peer->family == AF_UNIX) {
		sl = unix_addr(peer, (struct sockaddr_un *)&ss);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		memset(sin, 0, sizeof(*sin));
		sin->sin_family = AF_INET;
		sin->sin_port = htons(peer->port);
		sin->sin_addr.s_addr = peer->ip4;
		sl = sizeof(*sin);
	}
	fd = socket(peer->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&ss, sl) < 0) {
		if (errno != EINPROGRESS && errno != EAGAIN) {
			rc = -errno;
			goto fail;
		}
		rc = wait_fd(fd, POLLOUT, deadline_ns);
		if (rc < 0)
			goto fail;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
			rc = err ? -err : -errno;
			goto fail;
		}
	}
	return fd;
fail:
	close(fd);
	return rc;
}

int tp__boot_connect(struct tp_ep *ep, const struct tp_boot_addr *peer, uint64_t deadline_ns)
{
	struct hello mine = { HELLO_MAGIC, 0, ep->nonce, ep->peer_nonce }, theirs;
	int fd = -1, rc;

	if (ep->nonce < ep->peer_nonce) {
		for (;;) {
			fd = connect_once(peer, deadline_ns);
			if (fd >= 0)
				break;
			if ((fd != -ECONNREFUSED && fd != -EAGAIN) || fr_now_ns() >= deadline_ns)
				return fd == -EAGAIN ? -ETIMEDOUT : fd;
			nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
		}
		rc = tp__io_full(fd, &mine, sizeof(mine), true, deadline_ns);
		if (rc == 0)
			rc = tp__io_full(fd, &theirs, sizeof(theirs), false, deadline_ns);
		if (rc == 0 && (theirs.magic != HELLO_MAGIC || theirs.from != ep->peer_nonce ||
				theirs.to != ep->nonce))
			rc = -EPROTO;
		if (rc < 0) {
			close(fd);
			return rc;
		}
		return fd;
	}
	/* Passive: accept until the right peer says hello; strays are dropped. */
	for (;;) {
		rc = wait_fd(ep->listen_fd, POLLIN, deadline_ns);
		if (rc < 0)
			return rc;
		fd = accept4(ep->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
				continue;
			return -errno;
		}
		uint64_t hello_deadline = FR_MIN(deadline_ns, fr_now_ns() + 2000000000ull);
		rc = tp__io_full(fd, &theirs, sizeof(theirs), false, hello_deadline);
		if (rc == 0 && theirs.magic == HELLO_MAGIC && theirs.from == ep->peer_nonce &&
		    theirs.to == ep->nonce) {
			rc = tp__io_full(fd, &mine, sizeof(mine), true, deadline_ns);
			if (rc == 0)
				return fd;
		}
		fr_warn(TP_COMP, "listener %s: dropped a connection that is not peer %016llx",
			ep->peer, (unsigned long long)ep->peer_nonce);
		close(fd);
	}
}

int tp__send_fds(int sock, const int *fds, int nfds, const void *data, size_t len)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} u;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds) };
	if (nfds > 8)
		return -EINVAL;
	memset(&u, 0, sizeof(u));
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	for (;;) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n == (ssize_t)len)
			return 0;
		if (n >= 0)
			return -EPROTO;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		int rc = wait_fd(sock, POLLOUT, fr_now_ns() + 5000000000ull);
		if (rc < 0)
			return rc;
	}
}

int tp__recv_fds(int sock, int *fds, int nfds, void *data, size_t len, uint64_t deadline_ns)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} u;
	struct iovec iov = { .iov_base = data, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof(u.buf) };
	ssize_t n;

	if (nfds > 8)
		return -EINVAL;
	for (;;) {
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
		if (n >= 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		int rc = wait_fd(sock, POLLIN, deadline_ns);
		if (rc < 0)
			return rc;
	}
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	int got = 0;
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
		got = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
	if (n == 0)
		return -ECONNRESET;
	if (got != nfds || (size_t)n != len || (mh.msg_flags & MSG_CTRUNC)) {
		int tmp[8];
		if (got > 0 && got <= 8) {
			memcpy(tmp, CMSG_DATA(c), sizeof(int) * (size_t)got);
			for (int i = 0; i < got; i++)
				close(tmp[i]);
		}
		return -EPROTO;
	}
	memcpy(fds, CMSG_DATA(c), sizeof(int) * (size_t)nfds);
	return 0;
}
