/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conf.h - the [transport] keys both daemons share, declared once: their fields (struct
 * tp_conf), their rows in a daemon's key table (TP_CONF_KEYS, over common/conf.h), their
 * cross-key checks and their mapping to struct tp_config. Each daemon adds its own
 * [transport] keys after these (the coordinator's wire_dtype and expert_timeout, the
 * worker's ring_slots and ring_tokens).
 */
#ifndef FERRY_TRANSPORT_CONF_H
#define FERRY_TRANSPORT_CONF_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "common/conf.h"
#include "transport/transport.h"

struct tp_conf {
	enum tp_backend backend;     /* shm | tcp | verbs (default shm) */
	char *bind_addr;             /* data-plane bootstrap IPv4 address (default 127.0.0.1) */
	char *device;                /* verbs device; the coordinator also takes a comma-separated
	                              * list (one context each); NULL: auto */
	int port;                    /* verbs port; 0: first active */
	int gid_index;               /* verbs GID index; -1: auto (the RoCEv2 IPv4-mapped GID) */
	int mtu;                     /* verbs path MTU cap in bytes; 0: the port's */
	uint64_t peer_timeout_ms;    /* dead-peer detection (default 5 s) */
};

/* "shm", "tcp", "verbs", NULL: in the order of enum tp_backend. */
extern const char *const tp_conf_backend_names[];

/*
 * The shared rows of a daemon's key table, for a config struct TYPE whose [transport]
 * section holds a struct tp_conf at MEMBER (e.g. co_config, transport.tp). PEER names the
 * other side in the docs ("workers", "coordinator"); DEVICE_DOC is the daemon's text for
 * device (the coordinator's takes a list).
 */
#define TP_CONF_KEYS(TYPE, MEMBER, PEER, DEVICE_DOC)                                         \
	{ "transport", "backend", CONF_ENUM, offsetof(TYPE, MEMBER.backend),                 \
	  .enum_names = tp_conf_backend_names, .def = "shm",                                 \
	  .doc = "Data plane to the " PEER ": shm (same host), tcp, or verbs (RDMA)." },     \
	{ "transport", "bind_addr", CONF_IPV4, offsetof(TYPE, MEMBER.bind_addr),             \
	  .def = "127.0.0.1",                                                                \
	  .doc = "Local address the data plane listens on and connects from (tcp and "      \
		 "verbs); an address the " PEER " can reach." },                             \
	{ "transport", "device", CONF_STR, offsetof(TYPE, MEMBER.device), .doc = DEVICE_DOC }, \
	{ "transport", "port", CONF_INT, offsetof(TYPE, MEMBER.port), 0, 255, .def = "0",    \
	  .doc = "verbs: port number of the device. 0: the first active port." },            \
	{ "transport", "gid_index", CONF_INT, offsetof(TYPE, MEMBER.gid_index), -1, 1023,    \
	  .def = "-1", .doc = "verbs: GID index. -1: auto (the RoCEv2 IPv4-mapped GID)." },  \
	{ "transport", "mtu", CONF_INT, offsetof(TYPE, MEMBER.mtu), 0, 4096, .def = "0",     \
	  .doc = "verbs: path MTU cap in bytes (256, 512, 1024, 2048 or 4096). 0: the "      \
		 "port's active MTU." },                                                     \
	{ "transport", "peer_timeout", CONF_DURATION_MS,                                     \
	  offsetof(TYPE, MEMBER.peer_timeout_ms), 1, 24 * 3600 * 1000LL, .def = "5s",        \
	  .doc = "How quickly a dead peer host is detected on the data plane." }

/* Cross-key checks: bind_addr set and an IPv4 address peers can connect to
 * (conf_check_ipv4()); mtu 0 or a power of two in [256, 4096]. Returns 0 or -EINVAL with
 * err naming the key ("[transport] mtu: 1000 is not 0, 256, ..."). */
int tp_conf_check(const struct tp_conf *c, struct fr_error *err);

/* The struct tp_config these keys describe (strings borrowed from c; every field the keys
 * do not cover is zero: the transport's defaults). */
struct tp_config tp_conf_config(const struct tp_conf *c);

#endif /* FERRY_TRANSPORT_CONF_H */
