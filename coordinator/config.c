/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.c - ferry-coordinator's key table and the checks that span several keys. The doc
 * strings are what `conf_write_doc()` prints, so they are written for an operator.
 */
#include "coordinator/config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* CONF_ENUM stores an int; these enums are written through it. */
_Static_assert(sizeof(enum co_wire_dtype) == sizeof(int), "enum co_wire_dtype is not int-sized");
_Static_assert(sizeof(enum fr_log_level) == sizeof(int), "enum fr_log_level is not int-sized");

/* In the order of enum tp_backend / co_wire_dtype / fr_log_level. */
static const char *const wire_names[] = { "bf16", "f32", NULL };
static const char *const rebalance_names[] = { "off", "auto", NULL };
static const char *const level_names[] = { "error", "warn", "info", "debug", NULL };
static const char *const precision_names[] = KN_PRECISION_CONF_NAMES;

#define OFF(f) offsetof(struct co_config, f)
#define DAY_MS (24 * 3600 * 1000LL)

const struct conf_key co_config_keys[] = {
	{ "model", "path", CONF_STR, OFF(model.path),
	  .doc = "Checkpoint directory (config.json, *.safetensors, tokenizer). Required." },

	{ "server", "listen", CONF_HOSTPORT, OFF(server.listen), 0, 65535, .def = "127.0.0.1:7400",
	  .doc = "gRPC address for clients, ferryctl and workers. Use 0.0.0.0:7400 to accept "
		 "workers from other hosts; port 0 lets the kernel pick one (printed at start)." },
	{ "server", "admin_token_file", CONF_STR, OFF(server.admin_token_file),
	  .doc = "File holding the bearer token that Admin calls (ferryctl) must present; mode "
		 "0600 or stricter. Unset: no token is checked, so anyone who can reach listen "
		 "may call Admin methods; only sensible on a loopback address." },
	{ "server", "stream_buffer", CONF_SIZE, OFF(server.stream_buffer), 4096, 1ULL << 34,
	  .def = "4M",
	  .doc = "Bytes of return_logits rows that one Generate stream may have waiting for "
		 "its client. A client that does not read holds its request back at this mark "
		 "(its KV-cache blocks stay reserved; other requests go on), so each stream costs "
		 "the coordinator at most about three times this: the rows held back, the rows "
		 "being sent and their packed copy." },
	{ "server", "stall_timeout", CONF_DURATION_MS, OFF(server.stall_timeout_ms), 0, DAY_MS,
	  .def = "60s",
	  .doc = "A stream whose client has read nothing for this long while a message waits "
		 "is cancelled with RESOURCE_EXHAUSTED (\"the client read nothing for ...\") and "
		 "its KV-cache blocks are freed. 0: never." },
	{ "server", "tls_cert", CONF_STR, OFF(server.tls_cert),
	  .doc = "PEM certificate chain (leaf first) that listen presents: with it, the public "
		 "and Admin API (and Internal, unless [cluster] listen is set) speak TLS only. "
		 "Its subjectAltName must name the host or IP address clients connect to. "
		 "Needs tls_key. Unset: plaintext." },
	{ "server", "tls_key", CONF_STR, OFF(server.tls_key),
	  .doc = "PEM private key of tls_cert (unencrypted; keep it mode 0600)." },
	{ "server", "tls_client_ca", CONF_STR, OFF(server.tls_client_ca),
	  .doc = "PEM CA certificate(s): every client of listen must present a certificate "
		 "that chains to one of them (mutual TLS); others fail the handshake. Needs "
		 "tls_cert. Unset: client certificates are not asked for." },

	{ "cluster", "listen", CONF_STR, OFF(cluster.listen),
	  .doc = "gRPC address for the Internal service that workers call (Join, heartbeats, "
		 "assignments), when it should not share [server] listen: host:port, "
		 "[IPv6]:port or unix:/path. Set, Internal is served there only (with Health), "
		 "with tls_cert, tls_key and tls_client_ca below, and workers' [worker] "
		 "coordinator points here. Unset: Internal is served on [server] listen with "
		 "[server]'s TLS settings, and tls_* below must stay unset." },
	{ "cluster", "tls_cert", CONF_STR, OFF(cluster.tls_cert),
	  .doc = "PEM certificate chain that [cluster] listen presents to workers. Needs listen "
		 "and tls_key. Unset: [cluster] listen is plaintext." },
	{ "cluster", "tls_key", CONF_STR, OFF(cluster.tls_key),
	  .doc = "PEM private key of tls_cert (unencrypted; keep it mode 0600)." },
	{ "cluster", "tls_client_ca", CONF_STR, OFF(cluster.tls_client_ca),
	  .doc = "PEM CA certificate(s) that workers' certificates ([cluster] tls_cert of "
		 "worker.conf) must chain to (mutual TLS): a worker without one cannot join. "
		 "Needs tls_cert." },
	{ "cluster", "secret_file", CONF_STR, OFF(cluster.secret_file),
	  .doc = "File holding the cluster secret (at least 16 bytes, mode 0600 or stricter) "
		 "that authenticates workers: their Join, bound to a fresh challenge, and every "
		 "later Internal call, signed with a per-join session key derived from it. Every "
		 "worker needs the same one. Required." },
	{ "cluster", "insecure", CONF_BOOL, OFF(cluster.insecure), .def = "false",
	  .doc = "Removed: true is refused. Internal calls are always authenticated." },
	{ "cluster", "workers", CONF_INT, OFF(cluster.workers), 1, 1024, .def = "1",
	  .doc = "Number of workers to wait for before serving requests. More may join while "
		 "it serves (up to 64 more, or 1024 in all): each gets slots from the next "
		 "automatic step, as does a worker that died and comes back under its name." },
	{ "cluster", "join_timeout", CONF_DURATION_MS, OFF(cluster.join_timeout_ms), 1, DAY_MS,
	  .def = "60s",
	  .doc = "How long to wait at start-up for all workers to join before giving up." },
	{ "cluster", "heartbeat_interval", CONF_DURATION_MS, OFF(cluster.heartbeat_interval_ms),
	  10, 3600 * 1000LL, .def = "1s",
	  .doc = "How often workers send heartbeats; a worker that misses five is suspect "
		 "(see [transport] suspect_after)." },
	{ "cluster", "max_skew", CONF_DURATION_MS, OFF(cluster.max_skew_ms), 100, DAY_MS,
	  .def = "30s",
	  .doc = "Largest difference between a worker's clock and ours that a join may show. "
		 "Joins are also refused when their nonce was seen within this window." },

	{ "placement", "load_profile", CONF_STR, OFF(placement.load_profile),
	  .doc = "JSON file of expected load per (layer, expert) for the first placement "
		 "(format in placement/placement.h). Unset: uniform load." },
	{ "placement", "min_distinct", CONF_INT, OFF(placement.min_distinct), 0, 16384,
	  .def = "0",
	  .doc = "With k >= 2, every expert gets replicas on at least k different workers, so "
		 "that losing a worker never loses an expert. 0 or 1: no such guarantee." },
	{ "placement", "rebalance", CONF_ENUM, OFF(placement.rebalance),
	  .enum_names = rebalance_names, .def = "auto",
	  .doc = "auto: when the workers have spare slots (more slots than experts), re-place "
		 "the experts live once a layer's balancedness stays below rebalance_threshold "
		 "for rebalance_window (by compute time, by tokens until workers report time); "
		 "each one is logged with its before/after figures and shown by ferryctl status. "
		 "off: only ferryctl rebalance moves experts." },
	{ "placement", "rebalance_window", CONF_DURATION_MS, OFF(placement.rebalance_window_ms),
	  1000, DAY_MS, .def = "60s",
	  .doc = "How long a layer's balancedness must stay below the threshold before an "
		 "automatic rebalance." },
	{ "placement", "rebalance_threshold", CONF_DOUBLE, OFF(placement.rebalance_threshold), 0,
	  1, .def = "0.8",
	  .doc = "Balancedness (mean / max worker load, in [0, 1]) under which a layer asks for "
		 "an automatic rebalance." },
	{ "placement", "rebalance_min_interval", CONF_DURATION_MS,
	  OFF(placement.rebalance_min_interval_ms), 1000, DAY_MS, .def = "10m",
	  .doc = "Least time between two automatic rebalances (and after the start)." },
	{ "placement", "rebalance_max_moves", CONF_INT, OFF(placement.rebalance_max_moves), 0,
	  1 << 30, .def = "0",
	  .doc = "Most slots an automatic rebalance reloads (whole layers keep their layout, "
		 "those gaining least per moved slot first). 0: no cap." },

	{ "placement", "rebalance_load_timeout", CONF_DURATION_MS,
	  OFF(placement.rebalance_load_timeout_ms), 1000, DAY_MS, .def = "120s",
	  .doc = "How long a live rebalance waits for every worker to load its new slots; "
		 "past it the rebalance is abandoned, naming the workers that did not, and "
		 "the old placement serves on." },

	{ "engine", "micro_batches", CONF_INT, OFF(engine.micro_batches), 1, 8, .def = "2",
	  .doc = "Micro-batches per step: attention of one overlaps the experts of another. "
		 "Workers need [transport] ring_slots at least this large." },
	{ "engine", "max_batch", CONF_INT, OFF(engine.max_batch), 1, 65536, .def = "256",
	  .doc = "Most tokens in one forward step (prefill chunks and decode tokens together)." },
	{ "engine", "max_seqs", CONF_INT, OFF(engine.max_seqs), 0, 65536, .def = "0",
	  .doc = "Most sequences batched at once. 0: as many as the KV pool (kv_blocks) could "
		 "hold at one block each, at most max_batch: admission then depends on the "
		 "memory each request needs (prompt + max_tokens), not on a count." },
	{ "engine", "prefill_chunk", CONF_INT, OFF(engine.prefill_chunk), 0, 65536, .def = "0",
	  .doc = "Most prompt tokens of one request per step, so a long prompt is prefilled in "
		 "chunks while other requests keep decoding. 0: half of max_batch." },
	{ "engine", "queue_max", CONF_INT, OFF(engine.queue_max), 1, 1 << 20, .def = "256",
	  .doc = "Requests that may wait for admission (KV-cache blocks, a sequence slot); "
		 "beyond that new requests get RESOURCE_EXHAUSTED." },
	{ "engine", "kv_blocks", CONF_INT, OFF(engine.kv_blocks), 0, 1 << 26, .def = "0",
	  .doc = "KV-cache pool in blocks of 16 positions, allocated up front. Requests are "
		 "admitted while their whole context fits; the rest wait. 0: enough for max_seqs "
		 "sequences of max_ctx positions, or for 16 when max_seqs is 0." },
	{ "engine", "max_ctx", CONF_INT, OFF(engine.max_ctx), 0, 1 << 24, .def = "0",
	  .doc = "Cap on context length (prompt and generated tokens). 0: the model's." },
	{ "engine", "threads", CONF_INT, OFF(engine.threads), 0, 4096, .def = "0",
	  .doc = "CPU threads for the coordinator's layers. 0: all CPUs." },
	{ "engine", "precision", CONF_ENUM, OFF(engine.precision), .enum_names = precision_names,
	  .def = "auto",
	  .doc = "Arithmetic of the matrix products with bf16 weights. exact: weights widened to "
		 "fp32, fp32 FMAs; logits match an fp32 reference to ~1e-5 (on a GPU ~1e-4: f32 "
		 "activations on the CUDA cores, several times slower than fast, for checking). "
		 "fast: activations rounded to bf16 and multiplied with fp32 sums, by the CPU's "
		 "bf16 dot-product instruction (AVX512_BF16), about twice the throughput of exact "
		 "when batches are large, or by a GPU's tensor cores; logits move by about 1% of "
		 "their spread, more where a router's top-k is nearly tied, and greedy tokens "
		 "change only where the top two are nearly tied. The router always computes "
		 "exactly. On CPUs without AVX512_BF16, fast computes exactly (the log says so). "
		 "auto: exact on the CPU, fast on a GPU ([engine] device)." },
	{ "engine", "device", CONF_STR, OFF(engine.device), .def = "cpu",
	  .doc = "Where embeddings, attention, the routers, the shared experts and the lm_head "
		 "run: cpu, or cuda:N for the N-th NVIDIA GPU the driver lists, through the GPU "
		 "module libferry-gpu.so (as [compute] device of ferry-worker). On a GPU the "
		 "weights (not the routed experts) and the KV cache live in device memory, the "
		 "products take bf16 activations with fp32 sums (or f32 ones with [engine] "
		 "precision = exact; threads then apply to nothing), and per micro-batch and MoE "
		 "layer the tokens to "
		 "dispatch come back to host memory once and the experts' partials go up once. "
		 "twin: the same device path on the CPU's kernels, for testing it without a GPU." },

	TP_CONF_KEYS(struct co_config, transport.tp, "workers",
		     "verbs: RDMA device name (\"mlx5_0\", \"rxe0\"), or a comma-separated list "
		     "of them (\"mlx5_0,mlx5_1\") to spread the workers over several NICs when one "
		     "cannot carry them all: one endpoint per device pair, worker i on the device "
		     "at position i mod n (from 0); port, gid_index and mtu apply to each. A list "
		     "needs the verbs backend. Unset: the first usable one."),
	{ "transport", "wire_dtype", CONF_ENUM, OFF(transport.wire_dtype), .enum_names = wire_names,
	  .def = "bf16",
	  .doc = "Format of activations on the wire: bf16 (half the bytes) or f32." },
	{ "transport", "expert_timeout", CONF_DURATION_MS, OFF(transport.expert_timeout_ms), 1,
	  DAY_MS, .def = "30s",
	  .doc = "Longest wait for a worker's expert results (its step deadline before its speed "
		 "is known); past it the worker is fenced like a suspect one." },
	{ "transport", "suspect_after", CONF_DURATION_MS, OFF(transport.suspect_after_ms), 0,
	  DAY_MS, .def = "250ms",
	  .doc = "A worker that owes expert results longer than max(this, 10x its recent "
		 "answers) is suspect: it is fenced (its late frames dropped), its slots leave "
		 "the routing table when replicas elsewhere hold its experts, and the step runs "
		 "again on the others; it must restart to rejoin. So is a worker that misses "
		 "five heartbeats. 0: only expert_timeout." },

	{ "metrics", "listen", CONF_HOSTPORT, OFF(metrics.listen), 0, 65535, .def = "",
	  .doc = "Serve Prometheus metrics at http://ADDR/metrics (host:port; port 0 picks a "
		 "free one, logged). Unauthenticated plain HTTP on a port of its own: bind it "
		 "where only the monitoring system reaches. Unset: off." },
	{ "metrics", "per_expert", CONF_BOOL, OFF(metrics.per_expert), .def = "false",
	  .doc = "Also export ferry_expert_tokens_total per (layer, expert): MoE layers x "
		 "routed experts series (7,808 for the 145B shape), so off by default." },
	{ "http", "listen", CONF_HOSTPORT, OFF(http.listen), 0, 65535, .def = "",
	  .doc = "Serve an OpenAI-compatible HTTP API here (host:port; port 0 picks a free "
		 "one, logged): POST /v1/completions (prompt as text or token ids, max_tokens, "
		 "temperature, top_p, seed, stop, stream with server-sent events, usage) and GET "
		 "/v1/models, on the same scheduler as gRPC. Plain HTTP: put a TLS proxy in front "
		 "of it beyond a trusted network. Unset: off." },
	{ "http", "api_key_file", CONF_STR, OFF(http.api_key_file), .def = "",
	  .doc = "File holding the key HTTP clients must send as \"Authorization: Bearer "
		 "<key>\" (read like [server] admin_token_file: mode 0600 or stricter). "
		 "Unset: no key is asked for." },
	{ "log", "level", CONF_ENUM, OFF(log.level), .enum_names = level_names, .def = "info",
	  .doc = "Log level of every component. $FERRY_LOG, when set, takes precedence and "
		 "can also set levels per component (\"info,tp.verbs=debug\")." },
};

const size_t co_config_n_keys = FR_ARRAY_SIZE(co_config_keys);

int co_config_devices(const struct co_config *cfg, char ***ret_v, int *ret_n,
		      struct fr_error *err)
{
	const char *list = cfg->transport.tp.device, *p = list;
	char **v = NULL;
	int n = 0, rc;

	while (p && *p) {
		size_t len = strcspn(p, ","), b = 0, e = len;
		while (b < e && (p[b] == ' ' || p[b] == '\t'))
			b++;
		while (e > b && (p[e - 1] == ' ' || p[e - 1] == '\t'))
			e--;
		if (b == e) {
			rc = fr_error_set(err, -EINVAL, "[transport] device: '%s' has an empty "
					  "device name", list);
			goto fail;
		}
		for (int i = 0; i < n; i++)
			if (strlen(v[i]) == e - b && !strncmp(v[i], p + b, e - b)) {
				rc = fr_error_set(err, -EINVAL, "[transport] device: '%s' lists "
						  "%s twice", list, v[i]);
				goto fail;
			}
		if (n == TP_WAIT_MANY_MAX) {
			rc = fr_error_set(err, -EINVAL, "[transport] device: '%s' lists more than "
					  "%d devices", list, TP_WAIT_MANY_MAX);
			goto fail;
		}
		if (fr_strv_push(&v, &n, "%.*s", (int)(e - b), p + b) < 0) {
			rc = fr_error_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		p += len;
		if (*p == ',' && !p[1]) {
			rc = fr_error_set(err, -EINVAL, "[transport] device: '%s' has an empty "
					  "device name", list);
			goto fail;
		}
		p += *p == ',';
	}
	if (n > 1 && cfg->transport.tp.backend != TP_BACKEND_VERBS) {
		unsigned bi = (unsigned)cfg->transport.tp.backend;
		rc = fr_error_set(err, -EINVAL, "[transport] device: '%s' lists %d devices; only "
				  "[transport] backend = verbs uses more than one (backend is %s)",
				  list, n, bi < 3 ? tp_conf_backend_names[bi] : "?");
		goto fail;
	}
	*ret_v = v;
	*ret_n = n;
	return 0;
fail:
	fr_strv_free(v, n);
	return rc;
}

/* tls_cert and tls_key go together; tls_client_ca needs them. */
static int check_tls(const char *sec, const char *cert, const char *key, const char *ca,
		     struct fr_error *err)
{
	if (cert && !key)
		return fr_error_set(err, -EINVAL, "[%s] tls_cert: set without [%s] tls_key (the "
				    "certificate's private key)", sec, sec);
	if (key && !cert)
		return fr_error_set(err, -EINVAL, "[%s] tls_key: set without [%s] tls_cert", sec,
				    sec);
	if (ca && !cert)
		return fr_error_set(err, -EINVAL, "[%s] tls_client_ca: set without [%s] tls_cert "
				    "and tls_key (client certificates are asked for over TLS only)",
				    sec, sec);
	return 0;
}

static bool str_ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcmp(s + n - m, suffix);
}

int co_config_validate(const struct co_config *cfg, struct fr_error *err)
{
	int rc;

	if (!cfg->model.path)
		return fr_error_set(err, -EINVAL, "[model] path: not set (the checkpoint directory "
				    "is required)");
	if (cfg->cluster.insecure)
		return fr_error_set(err, -EINVAL, "%s", CONF_INSECURE_REMOVED);
	if (!cfg->cluster.secret_file)
		return fr_error_set(err, -EINVAL, "[cluster] secret_file: not set (required: it "
				    "authenticates the workers)");
	if ((rc = conf_check_listen(cfg->server.listen, err)) < 0)
		return fr_error_prefix(err, rc, "[server] listen");
	if (cfg->cluster.listen) {
		if ((rc = conf_check_listen(cfg->cluster.listen, err)) < 0)
			return fr_error_prefix(err, rc, "[cluster] listen");
		if (!strcmp(cfg->cluster.listen, cfg->server.listen) &&
		    !str_ends_with(cfg->cluster.listen, ":0"))
			return fr_error_set(err, -EINVAL, "[cluster] listen: %s is [server] listen "
					    "too; unset it to serve Internal there",
					    cfg->cluster.listen);
	}
	if ((rc = check_tls("server", cfg->server.tls_cert, cfg->server.tls_key,
			    cfg->server.tls_client_ca, err)) < 0 ||
	    (rc = check_tls("cluster", cfg->cluster.tls_cert, cfg->cluster.tls_key,
			    cfg->cluster.tls_client_ca, err)) < 0)
		return rc;
	if (!cfg->cluster.listen && (cfg->cluster.tls_cert || cfg->cluster.tls_client_ca))
		return fr_error_set(err, -EINVAL, "[cluster] %s: set without [cluster] listen: "
				    "Internal is then served on [server] listen with [server] "
				    "tls_*; set [cluster] listen to give it a listener and TLS of its "
				    "own, or unset [cluster] tls_*",
				    cfg->cluster.tls_cert ? "tls_cert" : "tls_client_ca");
	if ((rc = tp_conf_check(&cfg->transport.tp, err)) < 0)
		return rc;
	char **devs;
	int n_devs;
	if ((rc = co_config_devices(cfg, &devs, &n_devs, err)) < 0)
		return rc;
	fr_strv_free(devs, n_devs);
	int dev;
	if ((rc = co_config_engine_device(cfg->engine.device, &dev, err)) < 0)
		return rc;
	if (cfg->engine.max_batch < cfg->engine.micro_batches)
		return fr_error_set(err, -EINVAL, "[engine] max_batch: %d is less than [engine] "
				    "micro_batches (%d): every micro-batch needs a token",
				    cfg->engine.max_batch, cfg->engine.micro_batches);
	if (cfg->placement.min_distinct > cfg->cluster.workers)
		return fr_error_set(err, -EINVAL, "[placement] min_distinct: %d is more than "
				    "[cluster] workers (%d)", cfg->placement.min_distinct,
				    cfg->cluster.workers);
	return 0;
}

int co_config_load(const char *path, char *const *overrides, int n_overrides,
		   struct co_config *ret, struct fr_error *err)
{
	struct co_config cfg;
	int rc;

	if ((rc = conf_load(co_config_keys, co_config_n_keys, path, CO_CONFIG_DEFAULT_PATH,
			    overrides, n_overrides, &cfg, err)) < 0)
		return rc;
	rc = co_config_validate(&cfg, err);
	if (rc < 0) {
		co_config_free(&cfg);
		return rc;
	}
	*ret = cfg;
	return 0;
}

_Static_assert(KN_DEV_NONE == CONF_DEVICE_CPU && KN_DEV_TWIN == CONF_DEVICE_TWIN,
	       "[engine] device's numbers are kn_dev.h's");

int co_config_engine_device(const char *device, int *ret, struct fr_error *err)
{
	return conf_parse_device("[engine] device", device, ret, err);
}

void co_config_free(struct co_config *cfg)
{
	if (cfg)
		conf_free(co_config_keys, co_config_n_keys, cfg);
}

void co_config_dump(const struct co_config *cfg, FILE *f)
{
	conf_dump(co_config_keys, co_config_n_keys, cfg, f);
}
