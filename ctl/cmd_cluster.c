/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_cluster.c - `ferryctl up` (a local cluster: one ferry-coordinator and N ferry-workers
 * on this host) and `ferryctl load` (the device-level load a coordinator measured).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ctl/ctl.h"
#include "ctl/serve-internal.h"
#include "model/model.h"
#include "rpc/admin.pb-c.h"
#include "rpc/auth.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"
#include "transport/transport.h"

/* ==== ferryctl up ============================================================================ */

#define UP_MAX_WORKERS 64

struct up_opts {
	const char *model;
	const char *listen;
	const char *transport;
	const char *wire;
	const char *precision; /* --precision: [engine] and [worker] precision; NULL: default */
	int workers;
	int replicas;        /* extra slots per worker beyond ceil(experts / workers) */
	int micro_batches;
	int threads;         /* coordinator kernel threads (0: all CPUs) */
	int worker_threads;  /* kernel threads per worker (0: CPUs / workers, at least 1) */
	int timeout_s;
	char **sets;         /* --set, passed to the coordinator */
	int n_sets;
	char **wsets;        /* --worker-set, passed to every worker */
	int n_wsets;
	struct ctl_tls tls;  /* --tls-*: how ferryctl and the workers connect */
};

static const char up_usage[] =
	"Usage: ferryctl up --model DIR [--workers N] [OPTIONS]\n"
	"\n"
	"Starts a local cluster on this host: one ferry-coordinator and N ferry-workers, each\n"
	"worker holding ceil(experts / N) (+ --replicas) slots of every MoE layer. Prints\n"
	"the coordinator's address once it serves, then stays in the foreground until\n"
	"SIGINT/SIGTERM, which drains and stops every process: the coordinator first, which\n"
	"tells the workers to leave. The daemons run in process groups of their own (a\n"
	"Ctrl-C reaches ferryctl alone) and get SIGTERM if ferryctl dies without stopping\n"
	"them. Process logs go to stderr.\n"
	"The processes share the cores: unless OMP_WAIT_POLICY is set, their kernel threads\n"
	"wait passively (sleep rather than spin) so that one side's waiting does not take\n"
	"the core the other computes on.\n"
	"\n"
	"  -m, --model DIR          HF model directory (every process maps it)\n"
	"  -w, --workers N          expert workers (default 2)\n"
	"  -l, --listen ADDR        coordinator address (default 127.0.0.1:7400; port 0 picks one)\n"
	"  -t, --transport NAME     data plane: shm (default), tcp or verbs\n"
	"      --replicas R         extra slots per worker for replicas of hot experts (default 0)\n"
	"      --micro-batches M    ping-pong micro-batches (default 1: the processes of a\n"
	"                           local cluster share the cores, so there is no transfer\n"
	"                           for a second micro-batch to hide; 2 is the coordinator's\n"
	"                           default for workers on other hosts)\n"
	"      --wire DTYPE         activations on the wire: bf16 (default) or f32\n"
	"      --precision P        exact or fast: bf16 activations for bf16 weights, in the\n"
	"                           coordinator and every worker (default: exact on the\n"
	"                           CPU, fast on a GPU)\n"
	"      --threads N          kernel threads of the coordinator (default: all CPUs) and,\n"
	"                           unless --worker-threads says otherwise, of each worker\n"
	"      --worker-threads N   kernel threads per worker (default: CPUs / workers, at\n"
	"                           least 1, so the processes do not oversubscribe the host)\n"
	"      --set SECTION.KEY=VALUE  extra coordinator configuration (repeatable)\n"
	"      --worker-set SECTION.KEY=VALUE  extra configuration of every worker\n"
	"                           (repeatable), e.g. worker.staging_slots=4\n"
	"      --timeout S          give up when not serving after S seconds (default 120)\n"
	CTL_TLS_USAGE("      ")
	"                           (for ferryctl and the workers, which get them as\n"
	"                           [cluster] tls_ca, tls_cert, tls_key; the coordinator's\n"
	"                           side is --set server.tls_cert=... and friends)\n"
	"  -h, --help               this text\n"
	"\n"
	"Exit status: 0 after a clean stop, 1 when the cluster failed to start or a process\n"
	"died, 2 for bad arguments. The daemons are looked up next to ferryctl (or in\n"
	"$FERRY_BIN_DIR).\n";

enum { UP_REPLICAS = 256, UP_MB, UP_WIRE, UP_THREADS, UP_SET, UP_TIMEOUT, UP_WTHREADS,
       UP_WSET, UP_PRECISION };

static const struct option up_longopts[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "workers", required_argument, NULL, 'w' },
	{ "listen", required_argument, NULL, 'l' },
	{ "transport", required_argument, NULL, 't' },
	{ "replicas", required_argument, NULL, UP_REPLICAS },
	{ "micro-batches", required_argument, NULL, UP_MB },
	{ "wire", required_argument, NULL, UP_WIRE },
	{ "precision", required_argument, NULL, UP_PRECISION },
	{ "threads", required_argument, NULL, UP_THREADS },
	{ "worker-threads", required_argument, NULL, UP_WTHREADS },
	{ "set", required_argument, NULL, UP_SET },
	{ "worker-set", required_argument, NULL, UP_WSET },
	{ "timeout", required_argument, NULL, UP_TIMEOUT },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int push_sets(char ***av, int *n_av, char *const *sets, int n)
{
	for (int i = 0; i < n; i++)
		if (fr_strv_push(av, n_av, "--set=%s", sets[i]) < 0)
			return -ENOMEM;
	return 0;
}

static void up_free(struct up_opts *o)
{
	fr_strv_free(o->sets, o->n_sets);
	o->sets = NULL;
	o->n_sets = 0;
	fr_strv_free(o->wsets, o->n_wsets);
	o->wsets = NULL;
	o->n_wsets = 0;
}

/* Returns 0, 1 for --help, or -EINVAL. */
static int up_parse(int argc, char **argv, struct up_opts *o, struct fr_error *err)
{
	enum tp_backend b;
	int c;

	memset(o, 0, sizeof(*o));
	o->workers = 2;
	o->listen = "127.0.0.1:7400";
	o->transport = "shm";
	o->wire = "bf16";
	o->micro_batches = 1;
	o->timeout_s = 120;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":m:w:l:t:h", up_longopts, NULL)) != -1) {
		switch (c) {
		case 'm': o->model = optarg; break;
		case 'w':
			if (ctl_arg_int("workers", optarg, 1, UP_MAX_WORKERS, &o->workers, err) < 0)
				return -EINVAL;
			break;
		case 'l': o->listen = optarg; break;
		case 't':
			if (tp_backend_parse(optarg, &b) < 0)
				return fr_error_set(err, -EINVAL, "--transport: '%s' is not shm, tcp or verbs",
						    optarg);
			o->transport = optarg;
			break;
		case UP_REPLICAS:
			if (ctl_arg_int("replicas", optarg, 0, MODEL_MAX_EXPERTS, &o->replicas, err) < 0)
				return -EINVAL;
			break;
		case UP_MB:
			if (ctl_arg_int("micro-batches", optarg, 1, 8, &o->micro_batches, err) < 0)
				return -EINVAL;
			break;
		case UP_WIRE:
			if (strcmp(optarg, "bf16") != 0 && strcmp(optarg, "f32") != 0)
				return fr_error_set(err, -EINVAL, "--wire: '%s' is not bf16 or f32", optarg);
			o->wire = optarg;
			break;
		case UP_PRECISION: {
			enum kn_precision pr;
			if (kn_precision_parse(optarg, &pr) < 0)
				return fr_error_set(err, -EINVAL, "--precision: '%s' is not exact or "
						    "fast", optarg);
			o->precision = optarg;
			break;
		}
		case UP_THREADS:
			if (ctl_arg_int("threads", optarg, 1, 1024, &o->threads, err) < 0)
				return -EINVAL;
			break;
		case UP_WTHREADS:
			if (ctl_arg_int("worker-threads", optarg, 1, 1024, &o->worker_threads, err) < 0)
				return -EINVAL;
			break;
		case UP_SET:
			if (!strchr(optarg, '=') || fr_strv_push(&o->sets, &o->n_sets, "%s", optarg) < 0)
				return fr_error_set(err, -EINVAL, "--set: '%s' is not SECTION.KEY=VALUE",
						    optarg);
			break;
		case UP_WSET:
			if (!strchr(optarg, '=') ||
			    fr_strv_push(&o->wsets, &o->n_wsets, "%s", optarg) < 0)
				return fr_error_set(err, -EINVAL, "--worker-set: '%s' is not "
						    "SECTION.KEY=VALUE", optarg);
			break;
		case UP_TIMEOUT:
			if (ctl_arg_int("timeout", optarg, 1, 3600, &o->timeout_s, err) < 0)
				return -EINVAL;
			break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->model)
		return fr_error_set(err, -EINVAL, "--model DIR is required");
	return ctl_tls_finish(&o->tls, err);
}

/* Path of a daemon: $FERRY_BIN_DIR/NAME, next to ferryctl, or in the build tree's
 * ../coordinator/ and ../worker/ folders. */
static int find_daemon(const char *name, const char *subdir, char *buf, size_t cap,
		       struct fr_error *err)
{
	char self[PATH_MAX];
	const char *env = getenv("FERRY_BIN_DIR");
	ssize_t n;

	if (env) {
		snprintf(buf, cap, "%s/%s", env, name);
		if (access(buf, X_OK) == 0)
			return 0;
		return fr_error_set(err, -ENOENT, "%s: not an executable (FERRY_BIN_DIR)", buf);
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return fr_error_set(err, -errno, "cannot locate ferryctl itself");
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	snprintf(buf, cap, "%s/%s", self, name);
	if (access(buf, X_OK) == 0)
		return 0;
	snprintf(buf, cap, "%s/../%s/%s", self, subdir, name);
	if (access(buf, X_OK) == 0)
		return 0;
	return fr_error_set(err, -ENOENT, "%s not found next to ferryctl (%s); set FERRY_BIN_DIR",
			    name, self);
}

static volatile sig_atomic_t g_up_stop;

static void up_on_signal(int sig)
{
	(void)sig;
	g_up_stop = 1;
}

/* A daemon of the cluster, in a process group of its own: a Ctrl-C at the terminal (SIGINT
 * to the foreground group) reaches ferryctl alone, which stops the processes in order
 * (stop_all: the coordinator drains and tells the workers to leave). Otherwise every worker
 * would take the signal as its own drain at the same moment and ask to hand its experts
 * back to a coordinator that is itself going. If ferryctl dies without stopping them
 * (SIGKILL), the kernel sends each SIGTERM (PR_SET_PDEATHSIG). */
static pid_t spawn(char **argv, int stdout_fd)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
			_exit(127); /* ferryctl already gone: nobody would stop this one */
		if (stdout_fd >= 0)
			dup2(stdout_fd, STDOUT_FILENO);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		execv(argv[0], argv);
		fprintf(stderr, "ferryctl up: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (pid > 0)
		setpgid(pid, pid); /* (both sides set it: no window where it is in ours) */
	return pid;
}

/* Reads "... listening on port N[, cluster port M]" from the coordinator's stdout: returns
 * N, with *ret_cluster_port M (0 without a cluster listener). */
static int read_port(int fd, int timeout_ms, int *ret_cluster_port)
{
	char buf[512];
	size_t len = 0;
	uint64_t end = fr_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	while (fr_now_ns() < end && !g_up_stop) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			return -EPIPE;
		len += (size_t)n;
		buf[len] = '\0';
		char *s = strstr(buf, "listening on port ");
		if (s && strchr(s, '\n')) {
			char *cp = strstr(s, ", cluster port ");
			*ret_cluster_port = cp ? atoi(cp + strlen(", cluster port ")) : 0;
			return atoi(s + strlen("listening on port "));
		}
		if (len == sizeof(buf) - 1)
			return -EBADMSG;
	}
	return -ETIMEDOUT;
}

static bool serving(struct rpc_channel *ch, int *workers)
{
	Ferry__V1__HealthRequest req = FERRY__V1__HEALTH_REQUEST__INIT;
	Ferry__V1__HealthResponse *resp = NULL;
	struct fr_error err = { { 0 } };
	bool ok = false;

	if (rpc_unary(ch, RPC_M_HEALTH, &req.base, &ferry__v1__health_response__descriptor, 1000,
		      (ProtobufCMessage **)&resp, &err) == 0) {
		ok = resp->status == FERRY__V1__HEALTH_RESPONSE__STATUS__STATUS_SERVING;
		*workers = (int)resp->workers;
		protobuf_c_message_free_unpacked(&resp->base, NULL);
	}
	return ok;
}

/* Writes 32 random bytes, hex, to dir/secret with mode 0600. */
static int write_secret(const char *path, struct fr_error *err)
{
	uint8_t raw[32];
	char hex[65];
	int fd;

	if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
		return fr_error_set(err, -EIO, "getrandom failed");
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return fr_error_set(err, -errno, "%s: %s", path, strerror(errno));
	bool ok = write(fd, hex, 64) == 64 && write(fd, "\n", 1) == 1;
	close(fd);
	return ok ? 0 : fr_error_set(err, -EIO, "%s: write failed", path);
}

static void stop_all(pid_t *pids, int n, int grace_ms)
{
	/* Coordinator first: it drains and tells the workers to leave. */
	if (n > 0 && pids[0] > 0)
		kill(pids[0], SIGTERM);
	uint64_t end = fr_now_ns() + (uint64_t)grace_ms * 1000000ull;
	int live;
	do {
		live = 0;
		for (int i = 0; i < n; i++) {
			if (pids[i] <= 0)
				continue;
			if (waitpid(pids[i], NULL, WNOHANG) == pids[i])
				pids[i] = 0;
			else
				live++;
		}
		if (live)
			usleep(20000);
	} while (live && fr_now_ns() < end);
	for (int i = 1; i < n; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGTERM);
	for (int i = 0; i < n; i++)
		if (pids[i] > 0) {
			waitpid(pids[i], NULL, 0);
			pids[i] = 0;
		}
}

static int up_exec(const struct up_opts *o)
{
	struct fr_error err = { { 0 } };
	struct model_config cfg;
	char co_bin[PATH_MAX], wk_bin[PATH_MAX], dir[] = "/tmp/ferry-up.XXXXXX";
	char secret[PATH_MAX] = "", conf[PATH_MAX] = "", addr[300], wk_addr[300], host[256];
	pid_t pids[1 + UP_MAX_WORKERS] = { 0 };
	struct rpc_channel *ch = NULL;
	int pipefd[2] = { -1, -1 }, ret = CTL_EXIT_FAIL, port, cluster_port = 0, n_ready = 0;
	char **av = NULL;
	int n_av = 0;

	if (model_config_load(o->model, &cfg, &err) < 0)
		goto out;
	if (find_daemon("ferry-coordinator", "coordinator", co_bin, sizeof(co_bin), &err) < 0 ||
	    find_daemon("ferry-worker", "worker", wk_bin, sizeof(wk_bin), &err) < 0)
		goto out;
	if (!mkdtemp(dir)) {
		fr_error_set(&err, -errno, "mkdtemp: %s", strerror(errno));
		goto out;
	}
	snprintf(secret, sizeof(secret), "%s/secret", dir);
	snprintf(conf, sizeof(conf), "%s/empty.conf", dir);
	if (write_secret(secret, &err) < 0)
		goto out;
	FILE *f = fopen(conf, "w");
	if (!f || fclose(f) != 0) {
		fr_error_set(&err, -errno, "%s: %s", conf, strerror(errno));
		goto out;
	}
	const char *colon = strrchr(o->listen, ':');
	if (!colon || colon == o->listen || (size_t)(colon - o->listen) >= sizeof(host)) {
		fr_error_set(&err, -EINVAL, "--listen: '%s' is not HOST:PORT", o->listen);
		goto out;
	}
	snprintf(host, sizeof(host), "%.*s", (int)(colon - o->listen), o->listen);

	struct sigaction sa = { .sa_handler = up_on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* The processes share this host's cores: a kernel thread that waits for work sleeps
	 * instead of spinning (OpenMP's default spins for a while, stealing the core the other
	 * process needs; this alone took one stream from 20 to 32 tok/s on 2 cores). */
	setenv("OMP_WAIT_POLICY", "passive", 0);

	/* The coordinator. */
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		fr_error_set(&err, -errno, "pipe: %s", strerror(errno));
		goto out;
	}
	if (fr_strv_push(&av, &n_av, "%s", co_bin) < 0 ||
	    fr_strv_push(&av, &n_av, "--config=%s", conf) < 0 ||
	    fr_strv_push(&av, &n_av, "--model=%s", o->model) < 0 ||
	    fr_strv_push(&av, &n_av, "--listen=%s", o->listen) < 0 ||
	    fr_strv_push(&av, &n_av, "--workers=%d", o->workers) < 0 ||
	    fr_strv_push(&av, &n_av, "--transport=%s", o->transport) < 0 ||
	    fr_strv_push(&av, &n_av, "--secret-file=%s", secret) < 0 ||
	    fr_strv_push(&av, &n_av, "--set=engine.micro_batches=%d", o->micro_batches) < 0 ||
	    fr_strv_push(&av, &n_av, "--set=transport.wire_dtype=%s", o->wire) < 0 ||
	    (o->threads && fr_strv_push(&av, &n_av, "--set=engine.threads=%d", o->threads) < 0) ||
	    (o->precision &&
	     fr_strv_push(&av, &n_av, "--set=engine.precision=%s", o->precision) < 0))
		goto oom;
	for (int i = 0; i < o->n_sets; i++)
		if (fr_strv_push(&av, &n_av, "--set=%s", o->sets[i]) < 0)
			goto oom;
	if (fr_strv_push(&av, &n_av, "%s", "") < 0)
		goto oom;
	free(av[n_av - 1]);
	av[n_av - 1] = NULL;
	pids[0] = spawn(av, pipefd[1]);
	fr_strv_free(av, n_av);
	av = NULL;
	n_av = 0;
	close(pipefd[1]);
	pipefd[1] = -1;
	if (pids[0] < 0) {
		fr_error_set(&err, -errno, "fork: %s", strerror(errno));
		goto out;
	}
	port = read_port(pipefd[0], 30000, &cluster_port);
	if (port <= 0) {
		fr_error_set(&err, port ? port : -EBADMSG, "ferry-coordinator did not start (see its "
			     "log above)");
		goto out;
	}
	snprintf(addr, sizeof(addr), "%s:%d", host, port);
	/* Workers join on the cluster listener when --set cluster.listen made one (on the
	 * same host name as --listen: up is one host). */
	snprintf(wk_addr, sizeof(wk_addr), "%s:%d", host, cluster_port ? cluster_port : port);

	/* The workers. */
	int slots = FR_DIV_ROUND_UP(cfg.n_routed_experts, o->workers) + o->replicas;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int wthreads = o->worker_threads ? o->worker_threads : o->threads ? o->threads :
		       (int)FR_MAX(1, (ncpu > 0 ? ncpu : 1) / o->workers);
	for (int w = 0; w < o->workers; w++) {
		if (fr_strv_push(&av, &n_av, "%s", wk_bin) < 0 ||
		    fr_strv_push(&av, &n_av, "--config=%s", conf) < 0 ||
		    fr_strv_push(&av, &n_av, "--model=%s", o->model) < 0 ||
		    fr_strv_push(&av, &n_av, "--coordinator=%s", wk_addr) < 0 ||
		    fr_strv_push(&av, &n_av, "--name=w%d", w) < 0 ||
		    fr_strv_push(&av, &n_av, "--slots=%d", FR_MIN(slots, cfg.n_routed_experts)) < 0 ||
		    fr_strv_push(&av, &n_av, "--transport=%s", o->transport) < 0 ||
		    fr_strv_push(&av, &n_av, "--secret-file=%s", secret) < 0 ||
		    fr_strv_push(&av, &n_av, "--set=worker.threads=%d", wthreads) < 0 ||
		    (o->precision &&
		     fr_strv_push(&av, &n_av, "--set=worker.precision=%s", o->precision) < 0) ||
		    push_sets(&av, &n_av, o->wsets, o->n_wsets) < 0 ||
		    (o->tls.ca &&
		     fr_strv_push(&av, &n_av, "--set=cluster.tls_ca=%s", o->tls.ca) < 0) ||
		    (o->tls.cert &&
		     fr_strv_push(&av, &n_av, "--set=cluster.tls_cert=%s", o->tls.cert) < 0) ||
		    (o->tls.key &&
		     fr_strv_push(&av, &n_av, "--set=cluster.tls_key=%s", o->tls.key) < 0) ||
		    fr_strv_push(&av, &n_av, "%s", "") < 0)
			goto oom;
		free(av[n_av - 1]);
		av[n_av - 1] = NULL;
		pids[1 + w] = spawn(av, -1);
		fr_strv_free(av, n_av);
		av = NULL;
		n_av = 0;
		if (pids[1 + w] < 0) {
			fr_error_set(&err, -errno, "fork: %s", strerror(errno));
			goto out;
		}
	}

	/* Wait for SERVING, watching for a process that dies. */
	if (ctl_channel_create(addr, &o->tls, &ch, &err) < 0)
		goto out;
	uint64_t end = fr_now_ns() + (uint64_t)o->timeout_s * 1000000000ull;
	while (!serving(ch, &n_ready)) {
		for (int i = 0; i <= o->workers; i++) {
			int st;
			if (waitpid(pids[i], &st, WNOHANG) == pids[i]) {
				pids[i] = 0;
				fr_error_set(&err, -ECHILD, "%s %d exited (status %d) before the cluster "
					     "served: see its log above", i ? "worker" : "coordinator",
					     i - 1, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
				goto out;
			}
		}
		if (g_up_stop || fr_now_ns() > end) {
			fr_error_set(&err, -ETIMEDOUT, "%s", g_up_stop ? "interrupted" :
				     "the cluster did not serve in time");
			goto out;
		}
		usleep(100000);
	}
	printf("ferry cluster up: %d worker(s), %s transport, %s wire\naddress: %s\npids: %d",
	       o->workers, o->transport, o->wire, addr, (int)pids[0]);
	for (int i = 1; i <= o->workers; i++)
		printf(" %d", (int)pids[i]);
	printf("\n");
	fflush(stdout);

	/* Foreground until a signal or a death. */
	while (!g_up_stop) {
		int st;
		pid_t p = waitpid(-1, &st, 0);
		if (p < 0 && errno == EINTR)
			continue;
		if (p <= 0)
			break;
		for (int i = 0; i <= o->workers; i++)
			if (pids[i] == p) {
				pids[i] = 0;
				fr_error_set(&err, -ECHILD, "%s %d exited (status %d): stopping the cluster",
					     i ? "worker" : "coordinator", i - 1,
					     WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
				goto out;
			}
	}
	ret = CTL_EXIT_OK;
	goto out;
oom:
	fr_error_set(&err, -ENOMEM, "out of memory");
out:
	stop_all(pids, 1 + o->workers, 15000);
	rpc_channel_destroy(ch);
	fr_strv_free(av, n_av);
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	if (secret[0])
		unlink(secret);
	if (conf[0])
		unlink(conf);
	rmdir(dir);
	if (ret != CTL_EXIT_OK)
		fprintf(stderr, "ferryctl up: %s\n", err.msg[0] ? err.msg : "failed");
	else
		fprintf(stderr, "ferryctl up: stopped\n");
	return ret;
}

static int up_main(int argc, char **argv)
{
	struct fr_error err = { { 0 } };
	struct up_opts o;
	int rc = ctl_parsed("up", up_usage, up_parse(argc, argv, &o, &err), &err);

	if (rc < 0)
		rc = up_exec(&o);
	up_free(&o);
	return rc;
}

static int up_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct up_opts o;
	int rc = up_parse(argc, argv, &o, err);
	up_free(&o);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_up = { "up", "start a local cluster (coordinator + N workers)",
				    up_main, up_parse_only };

/* ==== ferryctl load ========================================================================== */

struct load_opts {
	const char *cluster;
	struct ctl_tls tls;
	const char *token_file;
	bool json;
	uint32_t layers[64];
	size_t n_layers;
};

static const char load_usage[] =
	"Usage: ferryctl load --cluster ADDR [--layer L]... [--json]\n"
	"\n"
	"Shows the expert load a coordinator measured over its sliding window: per MoE layer\n"
	"and worker (its name, and its index in join order) the token-expert pairs routed\n"
	"there, their share, the compute time the worker reported (device-level load), and\n"
	"each layer's balancedness (mean / max of the per-worker load; 1 is perfect) by\n"
	"tokens and by time.\n"
	"\n"
	"  -c, --cluster ADDR   coordinator's gRPC address\n"
	"      --token-file F   admin bearer token (the coordinator's [server] admin_token_file;\n"
	"                       default $FERRY_ADMIN_TOKEN_FILE; none: no token sent)\n"
	"  -l, --layer L        only this MoE layer (repeatable; default all)\n"
	"      --json           one JSON object instead of the table\n"
	CTL_TLS_USAGE("  ")
	"  -h, --help           this text\n";

enum { LOAD_JSON = 256, LOAD_TOKEN };

static const struct option load_longopts[] = {
	{ "cluster", required_argument, NULL, 'c' },
	{ "layer", required_argument, NULL, 'l' },
	{ "json", no_argument, NULL, LOAD_JSON },
	{ "token-file", required_argument, NULL, LOAD_TOKEN },
	CTL_TLS_LONGOPTS,
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static int load_parse(int argc, char **argv, struct load_opts *o, struct fr_error *err)
{
	int c, v = 0;

	memset(o, 0, sizeof(*o));
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, ":c:l:h", load_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->cluster = optarg; break;
		case 'l':
			if (ctl_arg_int("layer", optarg, 0, 65535, &v, err) < 0)
				return -EINVAL;
			if (o->n_layers == FR_ARRAY_SIZE(o->layers))
				return fr_error_set(err, -EINVAL, "--layer: at most %zu",
						    FR_ARRAY_SIZE(o->layers));
			o->layers[o->n_layers++] = (uint32_t)v;
			break;
		case LOAD_JSON: o->json = true; break;
		case LOAD_TOKEN: o->token_file = optarg; break;
		case CTL_OPT_TLS_CA: case CTL_OPT_TLS_CERT: case CTL_OPT_TLS_KEY:
			ctl_tls_opt(&o->tls, c, optarg);
			break;
		case 'h': return 1;
		case ':': return fr_error_set(err, -EINVAL, "option %s needs a value", argv[optind - 1]);
		default: return fr_error_set(err, -EINVAL, "unknown option %s", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->cluster)
		return fr_error_set(err, -EINVAL, "--cluster ADDR is required");
	if (!o->token_file && getenv("FERRY_ADMIN_TOKEN_FILE") && *getenv("FERRY_ADMIN_TOKEN_FILE"))
		o->token_file = getenv("FERRY_ADMIN_TOKEN_FILE");
	return ctl_tls_finish(&o->tls, err);
}

/* A worker's name as the coordinator gave it; "w<index>" from one that gives none. */
static const char *load_worker_name(const Ferry__V1__LayerWorkerLoad *w, char *buf, size_t cap)
{
	if (w->worker_name && *w->worker_name)
		return w->worker_name;
	snprintf(buf, cap, "w%u", w->worker_index);
	return buf;
}

/* s as a JSON string body: '"', '\\' and control bytes escaped (names are checked by the
 * worker, but this prints what the wire says). */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void load_print(const Ferry__V1__GetLoadResponse *r, bool json)
{
	char nb[32];
	int width = 6;

	if (json) {
		printf("{\"epoch\": %llu, \"layers\": [", (unsigned long long)r->epoch);
		for (size_t i = 0; i < r->n_layers; i++) {
			const Ferry__V1__LayerBalance *b = r->layers[i];
			printf("%s{\"layer\": %u, \"balancedness\": %.6f, \"balancedness_time\": %.6f, "
			       "\"workers\": [", i ? ", " : "", b->layer, b->balancedness,
			       b->balancedness_time);
			int first = 1;
			for (size_t j = 0; j < r->n_loads; j++) {
				const Ferry__V1__LayerWorkerLoad *w = r->loads[j];
				if (w->layer != b->layer)
					continue;
				printf("%s{\"worker\": %u, \"name\": ", first ? "" : ", ", w->worker_index);
				json_str(load_worker_name(w, nb, sizeof(nb)));
				printf(", \"slots\": %u, \"tokens\": %llu, \"fraction\": %.6f, "
				       "\"busy_ns\": %llu}", w->slots, (unsigned long long)w->tokens,
				       w->fraction, (unsigned long long)w->busy_ns);
				first = 0;
			}
			printf("]}");
		}
		printf("]}\n");
		return;
	}
	for (size_t j = 0; j < r->n_loads; j++)
		width = FR_MAX(width, (int)strlen(load_worker_name(r->loads[j], nb, sizeof(nb))));
	printf("slot map epoch %llu\n", (unsigned long long)r->epoch);
	printf("%-6s %-*s %6s %6s %10s %7s %10s\n", "layer", width, "worker", "index", "slots",
	       "tokens", "share", "busy_ms");
	for (size_t i = 0; i < r->n_layers; i++) {
		const Ferry__V1__LayerBalance *b = r->layers[i];
		for (size_t j = 0; j < r->n_loads; j++) {
			const Ferry__V1__LayerWorkerLoad *w = r->loads[j];
			if (w->layer != b->layer)
				continue;
			printf("%-6u %-*s %6u %6u %10llu %6.1f%% %10.2f\n", w->layer, width,
			       load_worker_name(w, nb, sizeof(nb)), w->worker_index, w->slots,
			       (unsigned long long)w->tokens, 100.0 * w->fraction,
			       (double)w->busy_ns / 1e6);
		}
		printf("%-6u balancedness %.3f by tokens, %.3f by time\n", b->layer, b->balancedness,
		       b->balancedness_time);
	}
}

static int load_main(int argc, char **argv)
{
	Ferry__V1__GetLoadRequest req = FERRY__V1__GET_LOAD_REQUEST__INIT;
	Ferry__V1__GetLoadResponse *resp = NULL;
	struct fr_error err = { { 0 } };
	struct rpc_channel *ch = NULL;
	struct load_opts o;
	int rc = ctl_parsed("load", load_usage, load_parse(argc, argv, &o, &err), &err);

	if (rc >= 0)
		return rc;
	req.n_layers = o.n_layers;
	req.layers = o.layers;
	rc = ctl_admin_channel(o.cluster, &o.tls, o.token_file, &ch, &err);
	if (rc == 0)
		rc = rpc_unary(ch, RPC_M_GET_LOAD, &req.base, &ferry__v1__get_load_response__descriptor,
			       10000, (ProtobufCMessage **)&resp, &err);
	rpc_channel_destroy(ch);
	if (rc < 0) {
		fprintf(stderr, "ferryctl load: %s\n", err.msg);
		return CTL_EXIT_FAIL;
	}
	load_print(resp, o.json);
	protobuf_c_message_free_unpacked(&resp->base, NULL);
	return CTL_EXIT_OK;
}

static int load_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct load_opts o;
	int rc = load_parse(argc, argv, &o, err);
	return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_load = { "load", "show the expert load a cluster measured",
				      load_main, load_parse_only };
