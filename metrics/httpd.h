/* SPDX-License-Identifier: Apache-2.0 */
/*
 * httpd.h - the daemons' small HTTP endpoint ([metrics] listen): libmicrohttpd with its own
 * polling thread, GET and HEAD only, answers written by a callback into a memory stream.
 * It is a separate port from gRPC, off by default, and unauthenticated: bind it to an
 * address only the monitoring system reaches.
 */
#ifndef FERRY_METRICS_HTTPD_H
#define FERRY_METRICS_HTTPD_H

#include <stdio.h>

#include "common/common.h"

struct fr_httpd;

/* Writes the answer to GET path into out and returns the HTTP status (200, 404...);
 * *content_type may be set (default "text/plain; charset=utf-8"). Called on the server's
 * thread, one request at a time. */
typedef int (*fr_httpd_fn)(void *ctx, const char *path, FILE *out, const char **content_type);

/* Listens on "host:port" (port 0: any free one; host may be an IPv4 or IPv6 address or a
 * name) or "unix:/path" (a Unix socket, for a local scraper or proxy; port 0). Errors:
 * -EINVAL (address), -EADDRINUSE and other -errno from binding, with err naming the
 * address. */
int fr_httpd_start(const char *listen, fr_httpd_fn fn, void *ctx, struct fr_httpd **ret,
		   struct fr_error *err);
/* A listening socket for MHD_OPTION_LISTEN_SOCKET (both daemons' HTTP endpoints): on
 * "host:port" (port 0: any free one; *ret_port the one bound) or "unix:/path" (an old
 * socket file there is replaced; *ret_port 0). Returns the fd, or -errno with err naming
 * the address. */
int fr_httpd_listen_socket(const char *listen, int *ret_port, struct fr_error *err);
/* The port it listens on (0 on a Unix socket). */
int fr_httpd_port(const struct fr_httpd *h);
/* Stops it (waits for a request in progress). Accepts NULL. */
void fr_httpd_stop(struct fr_httpd *h);

#endif /* FERRY_METRICS_HTTPD_H */
