/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.c - ferry-worker's key table and the checks that span several keys. The doc
 * strings are what `conf_write_doc()` prints, so they are written for an operator.
 */
#include "worker/config.h"
#include "worker/worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(enum fr_log_level) == sizeof(int), "enum fr_log_level is not int-sized");

/* In the order of enum tp_backend / fr_log_level. */
static const char *const level_names[] = { "error", "warn", "info", "debug", NULL };
static const char *const frames_names[] = { "auto", "host", "device", NULL }; /* wk_frames */
static const char *const precision_names[] = KN_PRECISION_CONF_NAMES;

#define OFF(f) offsetof(struct wk_config, f)
#define DAY_MS (24 * 3600 * 1000LL)

const struct conf_key wk_config_keys[] = {
	{ "worker", "name", CONF_STR, OFF(worker.name),
	  .doc = "Stable name of this worker in logs, metrics and ferryctl (at most 64 "
		 "letters, digits, '.', '_' or '-'). Unset: the host name." },
	{ "worker", "coordinator", CONF_HOSTPORT, OFF(worker.coordinator), .def = "127.0.0.1:7400",
	  .doc = "The coordinator's gRPC address (its [server] listen)." },
	{ "worker", "slots", CONF_INT, OFF(worker.slots), 0, 65536, .def = "0",
	  .doc = "Expert slots per MoE layer this worker offers. 0: as many as fit in "
		 "memory_limit." },
	{ "worker", "memory_limit", CONF_SIZE, OFF(worker.memory_limit), .def = "0",
	  .doc = "Memory for expert weights. 0: 90% of the host's RAM." },
	{ "worker", "staging_slots", CONF_INT, OFF(worker.staging_slots), -1, 1 << 30,
	  .def = "-1",
	  .doc = "Expert copies ((MoE layer, slot) pairs) this worker can load beside the slots "
		 "serving during a live rebalance: the coordinator moves its slots in waves of at "
		 "most this many. -1: what memory_limit leaves after the slots (no limit when "
		 "memory_limit is 0: the weights are mapped from the checkpoint copy). 0: none, "
		 "its slots cannot change live." },
	{ "worker", "threads", CONF_INT, OFF(worker.threads), 0, 4096, .def = "0",
	  .doc = "CPU threads for expert compute. 0: all CPUs." },
	{ "worker", "precision", CONF_ENUM, OFF(worker.precision), .enum_names = precision_names,
	  .def = "auto",
	  .doc = "Arithmetic of the expert products (bf16 weights). exact: weights widened to fp32, "
		 "fp32 FMAs (on a GPU: f32 activations on the CUDA cores, several times slower "
		 "than fast, for checking). fast: activations rounded to bf16 and multiplied with "
		 "fp32 sums, by the CPU's bf16 dot-product instruction (AVX512_BF16), about twice "
		 "the throughput when many tokens reach an expert, or by a GPU's tensor cores "
		 "(grouped cuBLAS products). Set it like the coordinator's [engine] precision. On "
		 "CPUs without AVX512_BF16, fast computes exactly. auto: exact on the CPU, fast on "
		 "a GPU ([compute] device)." },

	{ "compute", "device", CONF_STR, OFF(compute.device), .def = "cpu",
	  .doc = "Where the expert slots live and compute: cpu, or cuda:N for the N-th NVIDIA GPU "
		 "the driver lists, through the GPU module libferry-gpu.so (built where CUDA is, "
		 "installed beside ferry-worker; FERRY_GPU_MODULE names another). On a GPU the "
		 "experts are copied into device memory when they are loaded (bf16; f32 and "
		 "f16 weights as f32, computed exactly) (a live "
		 "rebalance copies on its own stream while the old slots serve) and the layer runs "
		 "as cuBLAS products with fp32 sums, grouped (one per expert) or padded to one "
		 "batch, whichever this GPU runs faster for the shape (timed on the first "
		 "layers) ([worker] precision: fast by "
		 "default there); where the frames land: [compute] frames. [worker] threads then "
		 "apply to nothing. twin: the same device path on the CPU's arithmetic, for "
		 "testing it without a GPU." },
	{ "compute", "frames", CONF_ENUM, OFF(compute.frames), .enum_names = frames_names,
	  .def = "auto",
	  .doc = "Where the data plane's rings (the dispatch frames coming in, the combine frames "
		 "going out) live when [compute] device is not cpu. device: in the device's "
		 "memory, the RDMA device reading and writing it directly (GPUDirect RDMA: the "
		 "GPU's memory exported as a dma-buf and registered with ibv_reg_dmabuf_mr; needs "
		 "the verbs transport and a NIC and driver that can, else the worker does not "
		 "start); only each frame's head (counts, rows, pairs) crosses to the host. "
		 "host: in host memory, pinned for the device where the driver allows, the "
		 "vectors copied to the device and the partials back (host staging). auto: "
		 "device where GPUDirect RDMA works, else host; the log says which, and why. "
		 "With device = twin the \"device memory\" is host memory that only the "
		 "device ops touch (device must be asked for: auto is host)." },

	{ "model", "path", CONF_STR, OFF(model.path),
	  .doc = "This worker's own copy of the checkpoint directory (the same checkpoint as "
		 "the coordinator's). Required." },

	{ "cluster", "secret_file", CONF_STR, OFF(cluster.secret_file),
	  .doc = "File holding the cluster secret (the coordinator's [cluster] secret_file; "
		 "at least 16 bytes, mode 0600 or stricter): signs the Join and every later call "
		 "to the coordinator. Required." },
	{ "cluster", "insecure", CONF_BOOL, OFF(cluster.insecure), .def = "false",
	  .doc = "Removed: true is refused. Internal calls are always authenticated." },
	{ "cluster", "tls_ca", CONF_STR, OFF(cluster.tls_ca),
	  .doc = "PEM CA certificate(s) that the coordinator's certificate must chain to (for "
		 "a publicly signed one, the system bundle /etc/ssl/certs/ca-certificates.crt). "
		 "Set, or tls_cert set: the worker talks TLS to [worker] coordinator, whose "
		 "host must be named by the certificate. Unset with tls_cert unset: plaintext." },
	{ "cluster", "tls_cert", CONF_STR, OFF(cluster.tls_cert),
	  .doc = "PEM client certificate this worker presents, for a coordinator that requires "
		 "one ([cluster] tls_client_ca, or [server] tls_client_ca when Internal shares "
		 "its listener). Needs tls_key." },
	{ "cluster", "tls_key", CONF_STR, OFF(cluster.tls_key),
	  .doc = "PEM private key of tls_cert (unencrypted; keep it mode 0600)." },

	TP_CONF_KEYS(struct wk_config, transport.tp, "coordinator",
		     "verbs: RDMA device name (\"mlx5_0\", \"rxe0\"). Unset: the first usable one."),
	{ "transport", "ring_slots", CONF_INT, OFF(transport.ring_slots), 1, 64, .def = "4",
	  .doc = "Micro-batches that may be in flight to this worker at once; at least the "
		 "coordinator's [engine] micro_batches." },
	{ "transport", "ring_tokens", CONF_INT, OFF(transport.ring_tokens), 1, 1 << 20,
	  .def = "512",
	  .doc = "Largest micro-batch this worker accepts, in tokens; at least the "
		 "coordinator's [engine] max_batch divided by its micro_batches." },

	{ "metrics", "listen", CONF_HOSTPORT, OFF(metrics.listen), 0, 65535, .def = "",
	  .doc = "Serve Prometheus metrics at http://ADDR/metrics (host:port; port 0 picks a "
		 "free one, logged). Unauthenticated plain HTTP on a port of its own: bind it "
		 "where only the monitoring system reaches. Unset: off." },
	{ "log", "level", CONF_ENUM, OFF(log.level), .enum_names = level_names, .def = "info",
	  .doc = "Log level of every component. $FERRY_LOG, when set, takes precedence and "
		 "can also set levels per component (\"info,tp.verbs=debug\")." },
};

const size_t wk_config_n_keys = FR_ARRAY_SIZE(wk_config_keys);

int wk_config_validate(const struct wk_config *cfg, struct fr_error *err)
{
	const char *name = cfg->worker.name;
	int rc;

	if (!cfg->model.path)
		return fr_error_set(err, -EINVAL, "[model] path: not set (the worker's checkpoint "
				    "directory is required)");
	if (cfg->cluster.insecure)
		return fr_error_set(err, -EINVAL, "%s", CONF_INSECURE_REMOVED);
	if (!cfg->cluster.secret_file)
		return fr_error_set(err, -EINVAL, "[cluster] secret_file: not set (required: it "
				    "authenticates this worker to the coordinator)");
	if (!name || !*name)
		return fr_error_set(err, -EINVAL, "[worker] name: not set");
	if (strlen(name) > WK_CONFIG_NAME_MAX)
		return fr_error_set(err, -EINVAL, "[worker] name: %zu bytes, more than %d",
				    strlen(name), WK_CONFIG_NAME_MAX);
	for (const char *p = name; *p; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return fr_error_set(err, -EINVAL, "[worker] name: \"%s\" may hold only "
					    "letters, digits, '.', '_' and '-'", name);
	}
	if ((rc = conf_check_hostport(cfg->worker.coordinator, err)) < 0)
		return fr_error_prefix(err, rc, "[worker] coordinator");
	if (cfg->cluster.tls_cert && !cfg->cluster.tls_key)
		return fr_error_set(err, -EINVAL, "[cluster] tls_cert: set without [cluster] "
				    "tls_key (the certificate's private key)");
	if (cfg->cluster.tls_key && !cfg->cluster.tls_cert)
		return fr_error_set(err, -EINVAL, "[cluster] tls_key: set without [cluster] "
				    "tls_cert");
	if ((rc = tp_conf_check(&cfg->transport.tp, err)) < 0)
		return rc;
	int dev;
	if ((rc = wk_config_device(cfg->compute.device, &dev, err)) < 0)
		return rc;
	if (cfg->compute.frames == WK_FRAMES_DEVICE && dev == WK_DEVICE_CPU)
		return fr_error_set(err, -EINVAL, "[compute] frames = device: needs a device "
				    "([compute] device = cuda:N or twin), not cpu");
	return 0;
}

int wk_config_device(const char *device, int *ret, struct fr_error *err)
{
	return conf_parse_device("[compute] device", device, ret, err);
}

/* worker.name defaults to the host name, cut at the first '.' (a short name reads better
 * in logs and still tells hosts apart within a cluster). */
static int default_name(struct wk_config *cfg, struct fr_error *err)
{
	char host[256];
	size_t n;

	if (cfg->worker.name)
		return 0;
	if (gethostname(host, sizeof(host)) < 0)
		return fr_error_set(err, -errno, "[worker] name: not set and gethostname() failed: "
				    "%s", strerror(errno));
	host[sizeof(host) - 1] = '\0';
	n = strcspn(host, ".");
	host[n] = '\0';
	if (!(cfg->worker.name = strdup(host)))
		return fr_error_set(err, -ENOMEM, "out of memory");
	return 0;
}

int wk_config_load(const char *path, char *const *overrides, int n_overrides,
		   struct wk_config *ret, struct fr_error *err)
{
	struct wk_config cfg;
	int rc;

	if ((rc = conf_load(wk_config_keys, wk_config_n_keys, path, WK_CONFIG_DEFAULT_PATH,
			    overrides, n_overrides, &cfg, err)) < 0)
		return rc;
	rc = default_name(&cfg, err);
	if (rc == 0)
		rc = wk_config_validate(&cfg, err);
	if (rc < 0) {
		wk_config_free(&cfg);
		return rc;
	}
	*ret = cfg;
	return 0;
}

void wk_config_free(struct wk_config *cfg)
{
	if (cfg)
		conf_free(wk_config_keys, wk_config_n_keys, cfg);
}

void wk_config_dump(const struct wk_config *cfg, FILE *f)
{
	conf_dump(wk_config_keys, wk_config_n_keys, cfg, f);
}
