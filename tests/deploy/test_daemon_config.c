/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_daemon_config.c - the coordinator's and worker's key tables against the examples in
 * deploy/: every key conf_write_doc() documents must appear in deploy/<daemon>.conf (set, or
 * commented out as "#key = value"), every commented value must be valid for its key, no
 * commented key may be stale, and the file must load and validate. Then co_config_load()
 * and wk_config_load(): overrides, the default path, and each cross-key check.
 *
 *   test_daemon_config --print-doc coordinator|worker   writes the generated example
 *   (conf_write_doc) to stdout: the starting point when a key is added.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/config.h"
#include "tests/test.h"
#include "worker/config.h"
#include "worker/worker.h"

struct table {
	const char *name;          /* "coordinator": deploy/<name>.conf */
	const struct conf_key *keys;
	size_t n;
	size_t size;               /* sizeof the config struct */
};

static char *src_path(const char *rel)
{
	const char *src = getenv("FERRY_SRC");
	char *p;
	if (asprintf(&p, "%s/%s", src ? src : ".", rel) < 0)
		abort();
	return p;
}

/* "#key = value" or "key = value" (leading whitespace allowed): the key and where its value
 * starts; NULL when the line is not of that form (prose comments have "# " and a space). */
static const char *key_line(const char *line, char *key, size_t cap, bool *commented)
{
	size_t n = 0;

	while (*line == ' ' || *line == '\t')
		line++;
	*commented = *line == '#' || *line == ';';
	if (*commented)
		line++;
	while ((line[n] >= 'a' && line[n] <= 'z') || line[n] == '_' ||
	       (line[n] >= '0' && line[n] <= '9'))
		n++;
	if (n == 0 || n >= cap)
		return NULL;
	memcpy(key, line, n);
	key[n] = '\0';
	line += n;
	while (*line == ' ')
		line++;
	if (*line != '=')
		return NULL;
	line++;
	while (*line == ' ')
		line++;
	return line;
}

struct seen {
	char section[64], key[64];
	bool commented;
	char value[200];
};

/* The (section, key) lines of an INI text, set or commented out. */
static size_t scan(const char *text, struct seen *out, size_t cap)
{
	char section[64] = "";
	size_t n = 0;
	const char *p = text;

	while (*p) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		char line[256], key[64];
		const char *v;
		bool commented;

		snprintf(line, sizeof(line), "%.*s", (int)len, p);
		p += len + (e ? 1 : 0);
		if (line[0] == '[') {
			char *close = strchr(line, ']');
			if (close)
				snprintf(section, sizeof(section), "%.*s", (int)(close - line - 1), line + 1);
			continue;
		}
		if (!(v = key_line(line, key, sizeof(key), &commented)) || n == cap)
			continue;
		snprintf(out[n].section, sizeof(out[n].section), "%s", section);
		snprintf(out[n].key, sizeof(out[n].key), "%s", key);
		snprintf(out[n].value, sizeof(out[n].value), "%s", v);
		/* an inline comment is not part of the value */
		char *semi = strstr(out[n].value, " ;");
		if (semi)
			*semi = '\0';
		for (size_t l = strlen(out[n].value); l && out[n].value[l - 1] == ' ';)
			out[n].value[--l] = '\0';
		out[n].commented = commented;
		n++;
	}
	return n;
}

static void check_example(const struct table *t)
{
	struct seen doc[128], ex[256];
	struct fr_error err = { { 0 } };
	char rel[64], *path, *doc_text = NULL, *ex_text = NULL;
	size_t doc_len, ex_len, n_doc, n_ex;
	FILE *f = open_memstream(&doc_text, &doc_len);

	conf_write_doc(t->keys, t->n, f);
	fclose(f);
	n_doc = scan(doc_text, doc, FR_ARRAY_SIZE(doc));
	if (n_doc != t->n) {
		fprintf(stderr, "FAIL %s: conf_write_doc shows %zu keys, the table has %zu\n", t->name,
			n_doc, t->n);
		t_failures++;
	}

	snprintf(rel, sizeof(rel), "deploy/%s.conf", t->name);
	path = src_path(rel);
	if (fr_read_file(path, 1 << 20, &ex_text, &ex_len, &err) < 0) {
		fprintf(stderr, "FAIL %s\n", err.msg);
		t_failures++;
		free(path);
		free(doc_text);
		return;
	}
	n_ex = scan(ex_text, ex, FR_ARRAY_SIZE(ex));

	/* every documented key appears in the example, in its section */
	for (size_t i = 0; i < n_doc; i++) {
		bool found = false;
		for (size_t j = 0; j < n_ex && !found; j++)
			found = !strcmp(doc[i].section, ex[j].section) && !strcmp(doc[i].key, ex[j].key);
		if (!found) {
			fprintf(stderr, "FAIL %s: [%s] %s is not in %s: add it (test_daemon_config "
				"--print-doc %s shows its text)\n", t->name, doc[i].section, doc[i].key,
				rel, t->name);
			t_failures++;
		}
	}
	/* every key line of the example is a real key; commented values are valid values */
	for (size_t j = 0; j < n_ex; j++) {
		void *scratch = calloc(1, t->size);
		char assign[320];
		if (conf_find(t->keys, t->n, ex[j].section, ex[j].key) < 0) {
			fprintf(stderr, "FAIL %s: %s names [%s] %s, which is not a key\n", t->name, rel,
				ex[j].section, ex[j].key);
			t_failures++;
		} else if (ex[j].commented) {
			snprintf(assign, sizeof(assign), "%s.%s=%s", ex[j].section, ex[j].key,
				 ex[j].value);
			if (conf_defaults(t->keys, t->n, scratch, &err) < 0 ||
			    conf_set(t->keys, t->n, assign, scratch, &err) < 0) {
				fprintf(stderr, "FAIL %s: %s: commented value is not valid: %s\n",
					t->name, rel, err.msg);
				t_failures++;
			}
		}
		conf_free(t->keys, t->n, scratch);
		free(scratch);
	}
	printf("ok   %s: %zu keys documented, %zu key lines in %s\n", t->name, n_doc, n_ex, rel);
	free(path);
	free(doc_text);
	free(ex_text);
}

static void test_examples_load(void)
{
	struct co_config co;
	struct wk_config wk;
	struct fr_error err = { { 0 } };
	char *p = src_path("deploy/coordinator.conf");

	if (co_config_load(p, NULL, 0, &co, &err) < 0) {
		fprintf(stderr, "FAIL deploy/coordinator.conf: %s\n", err.msg);
		t_failures++;
	} else {
		co_config_free(&co);
	}
	free(p);
	p = src_path("deploy/worker.conf");
	if (wk_config_load(p, NULL, 0, &wk, &err) < 0) {
		fprintf(stderr, "FAIL deploy/worker.conf: %s\n", err.msg);
		t_failures++;
	} else {
		wk_config_free(&wk);
	}
	free(p);
}

static char *write_tmp(const char *dir, const char *name, const char *text)
{
	char *path;
	FILE *f;
	if (asprintf(&path, "%s/%s", dir, name) < 0 || !(f = fopen(path, "w")))
		abort();
	fputs(text, f);
	fclose(f);
	return path;
}

static void test_co_load(const char *dir)
{
	struct co_config c;
	struct fr_error err = { { 0 } };
	char *good = write_tmp(dir, "co.conf",
			       "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
			       "workers = 4\n[transport]\nbackend = tcp\n");
	char *missing = write_tmp(dir, "co-nopath.conf", "[cluster]\ninsecure = true\n");
	char *nofile;
	char *ov[] = { "cluster.workers=8", "transport.wire_dtype=f32", "log.level=debug" };

	if (asprintf(&nofile, "%s/none.conf", dir) < 0)
		abort();
	memset(&c, 0x5a, sizeof(c));
	CHECK(co_config_load(good, ov, 3, &c, &err) == 0);
	CHECK(!strcmp(c.model.path, "/srv/model") && !strcmp(c.cluster.secret_file, "/etc/s"));
	CHECK(c.cluster.workers == 8 && c.transport.tp.backend == TP_BACKEND_TCP);
	CHECK(c.transport.wire_dtype == CO_WIRE_F32 && c.log.level == FR_LOG_DEBUG);
	/* defaults of what the file does not set */
	CHECK(!strcmp(c.server.listen, "127.0.0.1:7400") && c.server.admin_token_file == NULL);
	CHECK(!c.cluster.insecure && c.cluster.join_timeout_ms == 60000 &&
	      c.cluster.heartbeat_interval_ms == 1000 && c.cluster.max_skew_ms == 30000);
	CHECK(c.placement.load_profile == NULL && c.placement.min_distinct == 0);
	CHECK(c.engine.micro_batches == 2 && c.engine.max_batch == 256 && c.engine.max_seqs == 0 &&
	      c.engine.max_ctx == 0 && c.engine.threads == 0 && !strcmp(c.engine.device, "cpu"));
	CHECK(c.engine.precision == KN_PRECISION_AUTO); /* kn_precision_resolve: test_kn_ops */
	CHECK(!strcmp(c.transport.tp.bind_addr, "127.0.0.1") && c.transport.tp.device == NULL &&
	      c.transport.tp.port == 0 && c.transport.tp.gid_index == -1 && c.transport.tp.mtu == 0);
	CHECK(c.transport.expert_timeout_ms == 30000 && c.transport.tp.peer_timeout_ms == 5000);
	co_config_free(&c);
	CHECK(c.model.path == NULL);

	memset(&c, 0x5a, sizeof(c));
	t_expect_err("co explicit missing file", co_config_load(nofile, NULL, 0, &c, &err), -ENOENT,
		     &err, nofile, "No such file");
	t_expect_err("co model.path required", co_config_load(missing, NULL, 0, &c, &err), -EINVAL,
		     &err, "[model] path: not set", NULL);
	{
		char *o1[] = { "model.path=/m", "cluster.insecure=false" };
		t_expect_err("co secret required", co_config_load(missing, o1, 2, &c, &err), -EINVAL,
			     &err, "[cluster] secret_file: not set (required: it authenticates "
			     "the workers)", NULL);
		/* insecure is gone: every Internal call is authenticated. */
		char *o2[] = { "model.path=/m" };
		t_expect_err("co insecure refused", co_config_load(missing, o2, 1, &c, &err), -EINVAL,
			     &err, "[cluster] insecure: no longer supported", "secret_file");
		char *o3[] = { "transport.mtu=1000" };
		t_expect_err("co mtu", co_config_load(good, o3, 1, &c, &err), -EINVAL, &err,
			     "[transport] mtu: 1000 is not 0, 256", NULL);
		char *o4[] = { "placement.min_distinct=5" };
		t_expect_err("co min_distinct", co_config_load(good, o4, 1, &c, &err), -EINVAL, &err,
			     "[placement] min_distinct: 5 is more than [cluster] workers (4)", NULL);
		char *o5[] = { "server.listen=localhost" };
		t_expect_err("co listen", co_config_load(good, o5, 1, &c, &err), -EINVAL, &err,
			     "[server] listen: \"localhost\" is not host:port", NULL);
		char *o6[] = { "engine.micro_batches=8", "engine.max_batch=4" };
		t_expect_err("co max_batch", co_config_load(good, o6, 2, &c, &err), -EINVAL, &err,
			     "[engine] max_batch: 4 is less than [engine] micro_batches (8)", NULL);
		/* [engine] device: cpu (default), twin or cuda:N */
		int dev = 7;
		CHECK(co_config_engine_device(NULL, &dev, &err) == 0 && dev == KN_DEV_NONE);
		CHECK(co_config_engine_device("twin", &dev, &err) == 0 && dev == KN_DEV_TWIN);
		CHECK(co_config_engine_device("cuda:2", &dev, &err) == 0 && dev == 2);
		static const char *const bad_edev[] = { "engine.device=gpu", "engine.device=cuda:",
							"engine.device=cuda:-1",
							"engine.device=Twin",
							"engine.device=cuda:1024" };
		for (size_t i = 0; i < FR_ARRAY_SIZE(bad_edev); i++) {
			char *o[] = { (char *)bad_edev[i] };
			t_expect_err("co engine device", co_config_load(good, o, 1, &c, &err), -EINVAL,
				     &err, "[engine] device: '", "' is not cpu, cuda:N");
		}
		char *o7[] = { "cluster.workers=0" };
		t_expect_err("co bad override", co_config_load(good, o7, 1, &c, &err), -EINVAL, &err,
			     "override \"cluster.workers=0\": [cluster] workers: \"0\" is out of "
			     "range [1, 1024]", NULL);
		char *o8[] = { "transport.bind_addr=" };
		t_expect_err("co bind_addr", co_config_load(good, o8, 1, &c, &err), -EINVAL, &err,
			     "[transport] bind_addr: not set", NULL);
		char *o9[] = { "transport.bind_addr=not-an-ip" };
		t_expect_err("co bind_addr override", co_config_load(good, o9, 1, &c, &err), -EINVAL,
			     &err, "override \"transport.bind_addr=not-an-ip\": [transport] "
			     "bind_addr: \"not-an-ip\" is not an IPv4 address", NULL);
		char *o10[] = { "server.listen=[::1]:70000" };
		t_expect_err("co listen port", co_config_load(good, o10, 1, &c, &err), -EINVAL, &err,
			     "override \"server.listen=[::1]:70000\": [server] listen: "
			     "\"[::1]:70000\": the port must be a number in [0, 65535]", NULL);
	}
	/* addresses are checked where the file says them, not at join time */
	{
		char *bad = write_tmp(dir, "co-addr.conf",
				      "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
				      "[transport]\nbackend = tcp\nbind_addr = not-an-ip\n");
		char *bad_listen = write_tmp(dir, "co-listen.conf",
					     "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
					     "[server]\nlisten = ::1:7400\n");
		char *addrs = write_tmp(dir, "co-addrs.conf",
					"[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
					"[server]\nlisten = [::]:0\n[transport]\nbind_addr = 10.0.0.5\n");
		char want[256];
		snprintf(want, sizeof(want), "%s:7: [transport] bind_addr: \"not-an-ip\" is not an "
			 "IPv4 address", bad);
		t_expect_err("co bind_addr file", co_config_load(bad, NULL, 0, &c, &err), -EINVAL,
			     &err, want, NULL);
		snprintf(want, sizeof(want), "%s:6: [server] listen: \"::1:7400\": an IPv6 host "
			 "needs brackets, as in [::1]:7400", bad_listen);
		t_expect_err("co listen file", co_config_load(bad_listen, NULL, 0, &c, &err), -EINVAL,
			     &err, want, NULL);
		CHECK(co_config_load(addrs, NULL, 0, &c, &err) == 0);
		CHECK(!strcmp(c.server.listen, "[::]:0") && !strcmp(c.transport.tp.bind_addr, "10.0.0.5"));
		co_config_free(&c);
		unlink(bad);
		unlink(bad_listen);
		unlink(addrs);
		free(bad);
		free(bad_listen);
		free(addrs);
	}
	/* TLS: cert and key together, a client CA only with them, [cluster] tls_* only with
	 * [cluster] listen (the files themselves are checked at start: rpc_tls). */
	{
		char *o1[] = { "server.tls_cert=/c.pem", "server.tls_key=/k.pem",
			       "server.tls_client_ca=/ca.pem", "cluster.listen=0.0.0.0:7401",
			       "cluster.tls_cert=/c2.pem", "cluster.tls_key=/k2.pem",
			       "cluster.tls_client_ca=/ca2.pem" };
		CHECK(co_config_load(good, o1, 7, &c, &err) == 0);
		CHECK(!strcmp(c.server.tls_client_ca, "/ca.pem") &&
		      !strcmp(c.cluster.listen, "0.0.0.0:7401") &&
		      !strcmp(c.cluster.tls_key, "/k2.pem"));
		co_config_free(&c);
		char *o2[] = { "server.tls_cert=/c.pem" };
		t_expect_err("co tls cert without key", co_config_load(good, o2, 1, &c, &err),
			     -EINVAL, &err, "[server] tls_cert: set without [server] tls_key", NULL);
		char *o3[] = { "server.tls_key=/k.pem" };
		t_expect_err("co tls key without cert", co_config_load(good, o3, 1, &c, &err),
			     -EINVAL, &err, "[server] tls_key: set without [server] tls_cert", NULL);
		char *o4[] = { "server.tls_client_ca=/ca.pem" };
		t_expect_err("co tls client ca alone", co_config_load(good, o4, 1, &c, &err),
			     -EINVAL, &err, "[server] tls_client_ca: set without [server] tls_cert",
			     NULL);
		char *o5[] = { "cluster.tls_cert=/c.pem", "cluster.tls_key=/k.pem" };
		t_expect_err("co cluster tls without listen", co_config_load(good, o5, 2, &c, &err),
			     -EINVAL, &err, "[cluster] tls_cert: set without [cluster] listen", NULL);
		char *o6[] = { "cluster.listen=0.0.0.0:7401", "cluster.tls_key=/k.pem" };
		t_expect_err("co cluster tls key without cert", co_config_load(good, o6, 2, &c, &err),
			     -EINVAL, &err, "[cluster] tls_key: set without [cluster] tls_cert", NULL);
		char *o7[] = { "cluster.listen=7401" };
		t_expect_err("co cluster listen", co_config_load(good, o7, 1, &c, &err), -EINVAL,
			     &err, "[cluster] listen: ", NULL);
		char *o8[] = { "server.listen=127.0.0.1:7400", "cluster.listen=127.0.0.1:7400" };
		t_expect_err("co cluster listen = server listen", co_config_load(good, o8, 2, &c, &err),
			     -EINVAL, &err, "[cluster] listen: 127.0.0.1:7400 is [server] listen too",
			     NULL);
	}
	/* [transport] device: one name on any backend, a list only with verbs */
	{
		char **v;
		int n;
		CHECK(co_config_load(good, NULL, 0, &c, &err) == 0);
		CHECK(co_config_devices(&c, &v, &n, &err) == 0 && n == 0);
		fr_strv_free(v, n);
		co_config_free(&c);
		char *o1[] = { "transport.device=mlx5_0" };
		CHECK(co_config_load(good, o1, 1, &c, &err) == 0);
		CHECK(co_config_devices(&c, &v, &n, &err) == 0 && n == 1 &&
		      !strcmp(v[0], "mlx5_0"));
		fr_strv_free(v, n);
		co_config_free(&c);
		char *o2[] = { "transport.backend=verbs", "transport.device=mlx5_0, mlx5_1 ,rxe0" };
		CHECK(co_config_load(good, o2, 2, &c, &err) == 0);
		CHECK(co_config_devices(&c, &v, &n, &err) == 0 && n == 3 &&
		      !strcmp(v[0], "mlx5_0") && !strcmp(v[1], "mlx5_1") && !strcmp(v[2], "rxe0"));
		fr_strv_free(v, n);
		co_config_free(&c);
		char *o3[] = { "transport.device=mlx5_0,mlx5_1" };
		t_expect_err("co device list on tcp", co_config_load(good, o3, 1, &c, &err),
			     -EINVAL, &err, "[transport] device: 'mlx5_0,mlx5_1' lists 2 devices; "
			     "only [transport] backend = verbs uses more than one (backend is tcp)",
			     NULL);
		char *o4[] = { "transport.backend=shm", "transport.device=a,b" };
		t_expect_err("co device list on shm", co_config_load(good, o4, 2, &c, &err),
			     -EINVAL, &err, "[transport] device:", "backend is shm");
		char *o5[] = { "transport.backend=verbs", "transport.device=mlx5_0,,mlx5_1" };
		t_expect_err("co device empty name", co_config_load(good, o5, 2, &c, &err), -EINVAL,
			     &err, "[transport] device: 'mlx5_0,,mlx5_1' has an empty device name",
			     NULL);
		char *o6[] = { "transport.backend=verbs", "transport.device=mlx5_0," };
		t_expect_err("co device trailing comma", co_config_load(good, o6, 2, &c, &err),
			     -EINVAL, &err, "has an empty device name", NULL);
		char *o7[] = { "transport.backend=verbs", "transport.device=rxe0,rxe1,rxe0" };
		t_expect_err("co device twice", co_config_load(good, o7, 2, &c, &err), -EINVAL,
			     &err, "[transport] device: 'rxe0,rxe1,rxe0' lists rxe0 twice", NULL);
		char many[512] = "transport.device=";
		for (int i = 0; i <= TP_WAIT_MANY_MAX; i++)
			snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sd%d",
				 i ? "," : "", i);
		char *o8[] = { "transport.backend=verbs", many };
		t_expect_err("co device too many", co_config_load(good, o8, 2, &c, &err), -EINVAL,
			     &err, "[transport] device:", "lists more than");
	}
	/* no --config: a missing default file is fine */
	if (access(CO_CONFIG_DEFAULT_PATH, F_OK) < 0 && errno == ENOENT) {
		char *o[] = { "model.path=/m", "cluster.secret_file=/s" };
		CHECK(co_config_load(NULL, o, 2, &c, &err) == 0 && !strcmp(c.model.path, "/m"));
		co_config_free(&c);
	} else {
		printf("skip co default path: %s exists here\n", CO_CONFIG_DEFAULT_PATH);
	}
	unlink(good);
	unlink(missing);
	free(good);
	free(missing);
	free(nofile);
}

static void test_wk_load(const char *dir)
{
	struct wk_config c;
	struct fr_error err = { { 0 } };
	char *good = write_tmp(dir, "wk.conf",
			       "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
			       "[worker]\nmemory_limit = 48G\n[transport]\nring_slots = 8\n");
	char host[256];

	CHECK(wk_config_load(good, NULL, 0, &c, &err) == 0);
	CHECK(!strcmp(c.model.path, "/srv/model") && c.worker.memory_limit == 48ull << 30);
	CHECK(c.transport.ring_slots == 8 && c.transport.ring_tokens == 512);
	CHECK(c.worker.precision == KN_PRECISION_AUTO && !strcmp(c.compute.device, "cpu"));
	CHECK(!strcmp(c.worker.coordinator, "127.0.0.1:7400") && c.worker.slots == 0 &&
	      c.worker.threads == 0 && c.transport.tp.backend == TP_BACKEND_SHM &&
	      c.transport.tp.gid_index == -1 && c.transport.tp.peer_timeout_ms == 5000 &&
	      c.log.level == FR_LOG_INFO && !c.cluster.insecure);
	/* name defaults to the short host name */
	gethostname(host, sizeof(host));
	host[strcspn(host, ".")] = '\0';
	CHECK(c.worker.name && !strcmp(c.worker.name, host));
	wk_config_free(&c);
	{
		char *o1[] = { "worker.name=w3", "worker.coordinator=[fd00::1]:7400" };
		CHECK(wk_config_load(good, o1, 2, &c, &err) == 0 && !strcmp(c.worker.name, "w3"));
		wk_config_free(&c);
		char *o1b[] = { "worker.precision=exact", "compute.device=cuda:1" };
		CHECK(wk_config_load(good, o1b, 2, &c, &err) == 0 &&
		      c.worker.precision == KN_PRECISION_EXACT && !strcmp(c.compute.device, "cuda:1"));
		wk_config_free(&c);
		char *o1t[] = { "compute.device=twin", "compute.frames=device" };
		CHECK(wk_config_load(good, o1t, 2, &c, &err) == 0 && !strcmp(c.compute.device, "twin") &&
		      c.compute.frames == WK_FRAMES_DEVICE);
		wk_config_free(&c);
		CHECK(wk_config_load(good, NULL, 0, &c, &err) == 0 && c.compute.frames == WK_FRAMES_AUTO);
		wk_config_free(&c);
		char *o1f[] = { "compute.frames=device" };
		t_expect_err("wk frames on the cpu", wk_config_load(good, o1f, 1, &c, &err), -EINVAL,
			     &err, "[compute] frames = device: needs a device", NULL);
		char *o1h[] = { "compute.frames=gpu" };
		t_expect_err("wk frames", wk_config_load(good, o1h, 1, &c, &err), -EINVAL, &err,
			     "[compute] frames", "auto, host, device");
		char *o1g[] = { "compute.device=gpu0" };
		t_expect_err("wk device", wk_config_load(good, o1g, 1, &c, &err), -EINVAL, &err,
			     "[compute] device: 'gpu0' is not cpu, cuda:N (N in [0, 1023]) or twin",
			     NULL);
		char *o1c[] = { "worker.precision=half" };
		t_expect_err("wk precision", wk_config_load(good, o1c, 1, &c, &err), -EINVAL, &err,
			     "[worker] precision", "exact, fast, auto");
		char *o2[] = { "worker.name=w 3" };
		t_expect_err("wk name chars", wk_config_load(good, o2, 1, &c, &err), -EINVAL, &err,
			     "[worker] name: \"w 3\" may hold only letters", NULL);
		char *o3[] = { "worker.name=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
			       "xxxxxxxxxx" };
		t_expect_err("wk name length", wk_config_load(good, o3, 1, &c, &err), -EINVAL, &err,
			     "[worker] name: 68 bytes, more than 64", NULL);
		char *o4[] = { "worker.coordinator=10.0.0.1" };
		t_expect_err("wk coordinator", wk_config_load(good, o4, 1, &c, &err), -EINVAL, &err,
			     "[worker] coordinator: \"10.0.0.1\" is not host:port", NULL);
		char *o5[] = { "cluster.secret_file=" };
		t_expect_err("wk secret", wk_config_load(good, o5, 1, &c, &err), -EINVAL, &err,
			     "[cluster] secret_file: not set", NULL);
		char *o6[] = { "cluster.insecure=yes", "transport.mtu=4096" };
		t_expect_err("wk insecure refused", wk_config_load(good, o6, 2, &c, &err), -EINVAL,
			     &err, "[cluster] insecure: no longer supported", NULL);
		char *o6b[] = { "transport.mtu=4096" };
		CHECK(wk_config_load(good, o6b, 1, &c, &err) == 0 && c.transport.tp.mtu == 4096);
		wk_config_free(&c);
		char *o7[] = { "transport.mtu=128" };
		t_expect_err("wk mtu", wk_config_load(good, o7, 1, &c, &err), -EINVAL, &err,
			     "[transport] mtu: 128 is not 0, 256", NULL);
		char *o8[] = { "model.path=" };
		t_expect_err("wk model", wk_config_load(good, o8, 1, &c, &err), -EINVAL, &err,
			     "[model] path: not set", NULL);
		char *o9[] = { "worker.memory_limit=1.5G" };
		t_expect_err("wk size", wk_config_load(good, o9, 1, &c, &err), -EINVAL, &err,
			     "[worker] memory_limit: \"1.5G\" is not a size", NULL);
		char *o10[] = { "cluster.tls_ca=/ca.pem", "cluster.tls_cert=/c.pem",
				"cluster.tls_key=/k.pem" };
		CHECK(wk_config_load(good, o10, 3, &c, &err) == 0 &&
		      !strcmp(c.cluster.tls_ca, "/ca.pem") && !strcmp(c.cluster.tls_key, "/k.pem"));
		wk_config_free(&c);
		char *o11[] = { "cluster.tls_ca=/ca.pem", "cluster.tls_cert=/c.pem" };
		t_expect_err("wk tls cert without key", wk_config_load(good, o11, 2, &c, &err),
			     -EINVAL, &err, "[cluster] tls_cert: set without [cluster] tls_key", NULL);
		char *o12[] = { "cluster.tls_key=/k.pem" };
		t_expect_err("wk tls key without cert", wk_config_load(good, o12, 1, &c, &err),
			     -EINVAL, &err, "[cluster] tls_key: set without [cluster] tls_cert", NULL);
		char *o13[] = { "transport.bind_addr=fd00::2" };
		t_expect_err("wk bind_addr v6", wk_config_load(good, o13, 1, &c, &err), -EINVAL,
			     &err, "override \"transport.bind_addr=fd00::2\": [transport] bind_addr: "
			     "\"fd00::2\" is an IPv6 address", NULL);
		char *o14[] = { "worker.coordinator=coord:0" };
		t_expect_err("wk coordinator port 0", wk_config_load(good, o14, 1, &c, &err), -EINVAL,
			     &err, "[worker] coordinator: \"coord:0\": the port must be a number in "
			     "[1, 65535]", NULL);
		char *o15[] = { "transport.bind_addr=" };
		t_expect_err("wk bind_addr unset", wk_config_load(good, o15, 1, &c, &err), -EINVAL,
			     &err, "[transport] bind_addr: not set", NULL);
		/* [compute] device: cpu (default) or cuda:N */
		int dev = 7;
		CHECK(wk_config_load(good, NULL, 0, &c, &err) == 0 &&
		      !strcmp(c.compute.device, "cpu") &&
		      wk_config_device(c.compute.device, &dev, &err) == 0 && dev == -1);
		wk_config_free(&c);
		char *o16[] = { "compute.device=cuda:3" };
		CHECK(wk_config_load(good, o16, 1, &c, &err) == 0 &&
		      wk_config_device(c.compute.device, &dev, &err) == 0 && dev == 3);
		wk_config_free(&c);
		static const char *const bad_dev[] = { "compute.device=gpu", "compute.device=cuda:",
						       "compute.device=cuda:-1",
						       "compute.device=cuda:1x",
						       "compute.device=cuda:4096" };
		for (size_t i = 0; i < FR_ARRAY_SIZE(bad_dev); i++) {
			char *o[] = { (char *)bad_dev[i] };
			t_expect_err("wk device", wk_config_load(good, o, 1, &c, &err), -EINVAL, &err,
				     "[compute] device: '", "' is not cpu, cuda:N");
		}
	}
	/* addresses are checked where the file says them */
	{
		char *bad = write_tmp(dir, "wk-addr.conf",
				      "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
				      "[worker]\nname = w1\ncoordinator = 10.0.0.300:7400\n");
		char *bad_bind = write_tmp(dir, "wk-bind.conf",
					   "[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
					   "[transport]\nbackend = verbs\nbind_addr = 0.0.0.0\n");
		char *addrs = write_tmp(dir, "wk-addrs.conf",
					"[model]\npath = /srv/model\n[cluster]\nsecret_file = /etc/s\n"
					"[worker]\nname = w1\ncoordinator = coord-1.example:7400\n"
					"[transport]\nbind_addr = 10.0.0.6\n");
		char want[256];
		snprintf(want, sizeof(want), "%s:7: [worker] coordinator: \"10.0.0.300:7400\": host "
			 "10.0.0.300 is not an IPv4 address", bad);
		t_expect_err("wk coordinator file", wk_config_load(bad, NULL, 0, &c, &err), -EINVAL,
			     &err, want, NULL);
		snprintf(want, sizeof(want), "%s:7: [transport] bind_addr: \"0.0.0.0\" is not an "
			 "address peers can connect to", bad_bind);
		t_expect_err("wk bind_addr file", wk_config_load(bad_bind, NULL, 0, &c, &err), -EINVAL,
			     &err, want, NULL);
		CHECK(wk_config_load(addrs, NULL, 0, &c, &err) == 0);
		CHECK(!strcmp(c.worker.coordinator, "coord-1.example:7400") &&
		      !strcmp(c.transport.tp.bind_addr, "10.0.0.6"));
		wk_config_free(&c);
		unlink(bad);
		unlink(bad_bind);
		unlink(addrs);
		free(bad);
		free(bad_bind);
		free(addrs);
	}
	/* dump -> load gives the same config */
	{
		struct wk_config d;
		char *text = NULL, *again;
		size_t len;
		FILE *f;
		char *o[] = { "worker.name=w7", "transport.device=mlx5_0", "transport.backend=verbs" };
		CHECK(wk_config_load(good, o, 3, &c, &err) == 0);
		f = open_memstream(&text, &len);
		wk_config_dump(&c, f);
		fclose(f);
		again = write_tmp(dir, "wk-dump.conf", text);
		CHECK(wk_config_load(again, NULL, 0, &d, &err) == 0);
		CHECK(!strcmp(d.worker.name, "w7") && !strcmp(d.transport.tp.device, "mlx5_0") &&
		      d.transport.tp.backend == TP_BACKEND_VERBS && d.worker.memory_limit == 48ull << 30 &&
		      d.transport.ring_slots == 8 && !strcmp(d.model.path, "/srv/model"));
		printf("wk dump:\n%s", text);
		wk_config_free(&c);
		wk_config_free(&d);
		unlink(again);
		free(again);
		free(text);
	}
	unlink(good);
	free(good);
}

int main(int argc, char **argv)
{
	const struct table t[2] = {
		{ "coordinator", co_config_keys, co_config_n_keys, sizeof(struct co_config) },
		{ "worker", wk_config_keys, wk_config_n_keys, sizeof(struct wk_config) },
	};
	char dir[] = "/tmp/ferry-test-dconf-XXXXXX";

	if (argc == 3 && !strcmp(argv[1], "--print-doc")) {
		for (int i = 0; i < 2; i++) {
			if (!strcmp(argv[2], t[i].name)) {
				conf_write_doc(t[i].keys, t[i].n, stdout);
				return 0;
			}
		}
		fprintf(stderr, "usage: %s --print-doc coordinator|worker\n", argv[0]);
		return 2;
	}
	for (int i = 0; i < 2; i++)
		check_example(&t[i]);
	test_examples_load();
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_co_load(dir);
	test_wk_load(dir);
	rmdir(dir);
	printf("%s (%d failures)\n", t_failures ? "FAIL" : "ok", t_failures);
	return t_failures != 0;
}
