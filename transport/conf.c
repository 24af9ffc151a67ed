/* SPDX-License-Identifier: Apache-2.0 */
/* conf.c - the [transport] keys both daemons share (see conf.h). */
#include "transport/conf.h"

#include <errno.h>

/* CONF_ENUM stores an int. */
_Static_assert(sizeof(enum tp_backend) == sizeof(int), "enum tp_backend is not int-sized");

const char *const tp_conf_backend_names[] = { "shm", "tcp", "verbs", NULL };

int tp_conf_check(const struct tp_conf *c, struct fr_error *err)
{
	int rc, mtu = c->mtu;

	if (!c->bind_addr)
		return fr_error_set(err, -EINVAL, "[transport] bind_addr: not set");
	if ((rc = conf_check_ipv4(c->bind_addr, err)) < 0)
		return fr_error_prefix(err, rc, "[transport] bind_addr");
	if (mtu != 0 && (mtu < 256 || (mtu & (mtu - 1)) != 0))
		return fr_error_set(err, -EINVAL, "[transport] mtu: %d is not 0, 256, 512, 1024, "
				    "2048 or 4096", mtu);
	return 0;
}

struct tp_config tp_conf_config(const struct tp_conf *c)
{
	return (struct tp_config){
		.backend = c->backend,
		.device = c->device,
		.port = c->port,
		.gid_index = c->gid_index,
		.gid_index_set = c->gid_index >= 0,
		.mtu = (uint32_t)c->mtu,
		.peer_timeout_ms = (uint32_t)c->peer_timeout_ms,
		.bind_addr = c->bind_addr,
	};
}
