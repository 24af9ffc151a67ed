/* SPDX-License-Identifier: Apache-2.0 */
/* httpd.c - the metrics endpoint over libmicrohttpd (httpd.h). */
#include "metrics/httpd.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

struct fr_httpd {
	struct MHD_Daemon *d;
	fr_httpd_fn fn;
	void *ctx;
	int port;
};

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_size, void **req_cls)
{
	struct fr_httpd *h = cls;
	const char *ctype = "text/plain; charset=utf-8";
	struct MHD_Response *resp;
	char *body = NULL;
	size_t len = 0;
	int status;
	FILE *out;
	enum MHD_Result ret;

	(void)version;
	(void)upload_data;
	if (!*req_cls) { /* first call: headers only; answer on the next */
		*req_cls = h;
		return MHD_YES;
	}
	if (*upload_size) { /* a body to a GET: ignore it */
		*upload_size = 0;
		return MHD_YES;
	}
	out = open_memstream(&body, &len);
	if (!out)
		return MHD_NO;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		fprintf(out, "%s: only GET and HEAD\n", method);
		status = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else {
		status = h->fn(h->ctx, url, out, &ctype);
	}
	if (fclose(out) != 0) {
		free(body);
		return MHD_NO;
	}
	resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ret = MHD_queue_response(conn, (unsigned int)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* "host:port" or "[v6]:port" -> host, port; -EINVAL when not of that form. */
static int split(const char *listen, char *host, size_t n, const char **port)
{
	const char *colon;
	size_t hl;

	if (listen[0] == '[') {
		const char *end = strchr(listen, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		hl = (size_t)(end - listen - 1);
		if (hl >= n)
			return -EINVAL;
		memcpy(host, listen + 1, hl);
		*port = end + 2;
	} else {
		colon = strrchr(listen, ':');
		if (!colon || colon == listen)
			return -EINVAL;
		hl = (size_t)(colon - listen);
		if (hl >= n)
			return -EINVAL;
		memcpy(host, listen, hl);
		*port = colon + 1;
	}
	host[hl] = '\0';
	return **port ? 0 : -EINVAL;
}

/* Binds fd to sa and listens (fd is closed on failure); -errno with err naming addr. */
static int bind_listen(int fd, const struct sockaddr *sa, socklen_t len, const char *addr,
		       struct fr_error *err)
{
	int one = 1, rc;

	if (sa->sa_family != AF_UNIX)
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, sa, len) < 0 || listen(fd, 64) < 0) {
		rc = -errno;
		close(fd);
		return fr_error_set(err, rc, "cannot listen on %s: %s", addr, strerror(-rc));
	}
	return fd;
}

int fr_httpd_listen_socket(const char *listen, int *ret_port, struct fr_error *err)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256];
	const char *port;
	int fd, rc;

	*ret_port = 0;
	if (listen && strncmp(listen, "unix:", 5) == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		const char *path = listen + 5;
		if (!path[0] || strlen(path) >= sizeof(sa.sun_path))
			return fr_error_set(err, -EINVAL, "unix socket path '%s' is empty or too "
					    "long", path);
		memcpy(sa.sun_path, path, strlen(path));
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			return fr_error_set(err, -errno, "socket: %s", strerror(errno));
		(void)unlink(path);
		return bind_listen(fd, (struct sockaddr *)&sa, sizeof(sa), listen, err);
	}
	if (!listen || split(listen, host, sizeof(host), &port) < 0)
		return fr_error_set(err, -EINVAL, "listen address '%s' is not host:port",
				    listen ? listen : "(null)");
	if ((rc = getaddrinfo(host, port, &hints, &ai)) != 0)
		return fr_error_set(err, -EINVAL, "listen address '%s': %s", listen,
				    gai_strerror(rc));
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = fr_error_set(err, -errno, "socket: %s", strerror(errno));
		freeaddrinfo(ai);
		return rc;
	}
	fd = bind_listen(fd, ai->ai_addr, ai->ai_addrlen, listen, err);
	freeaddrinfo(ai);
	if (fd >= 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		*ret_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
							   : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

int fr_httpd_start(const char *listen, fr_httpd_fn fn, void *ctx, struct fr_httpd **ret,
		   struct fr_error *err)
{
	struct fr_httpd *h;
	int fd, port;

	if (!fn)
		return fr_error_set(err, -EINVAL, "metrics: no handler");
	if ((fd = fr_httpd_listen_socket(listen, &port, err)) < 0)
		return fr_error_prefix(err, fd, "metrics");
	if (!(h = calloc(1, sizeof(*h)))) {
		close(fd);
		return fr_error_set(err, -ENOMEM, "metrics: out of memory");
	}
	h->fn = fn;
	h->ctx = ctx;
	h->port = port;
	h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL,
				answer, h, MHD_OPTION_LISTEN_SOCKET, fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30, MHD_OPTION_END);
	if (!h->d) {
		close(fd);
		free(h);
		return fr_error_set(err, -EIO, "metrics: cannot serve on %s", listen);
	}
	*ret = h;
	return 0;
}

int fr_httpd_port(const struct fr_httpd *h)
{
	return h->port;
}

void fr_httpd_stop(struct fr_httpd *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->d);
	free(h);
}
