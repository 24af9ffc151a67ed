/* SPDX-License-Identifier: Apache-2.0 */
/* test_gen_cli.c - `ferryctl model gen|info`: usage errors exit 2, --help exits 0, parse_only
 * has no side effects, and generating `--preset 2b --layers 2` (~0.6 GB) stays within a
 * bounded peak RSS (the generator streams). argv[1] is the ferryctl binary. */
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "ctl/ctl.h"
#include "gen_test.h"

#define RSS_LIMIT_KB (64 * 1024)

static const char *ferryctl;

/* Runs ferryctl with args; stdout+stderr go to out_path. Returns the exit code (or -1),
 * the child's peak RSS in *ret_rss_kb. */
static int run(const char *out_path, long *ret_rss_kb, const char *const *args)
{
	const char *argv[32] = { ferryctl };
	struct rusage ru;
	int status, n = 1;
	pid_t pid;

	for (; args[n - 1] && n < 31; n++)
		argv[n] = args[n - 1];
	argv[n] = NULL;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(ferryctl, (char *const *)argv);
		_exit(127);
	}
	if (wait4(pid, &status, 0, &ru) != pid)
		return -1;
	if (ret_rss_kb)
		*ret_rss_kb = ru.ru_maxrss;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static bool output_has(const char *out_path, const char *needle)
{
	size_t len;
	uint8_t *buf = g_slurp(out_path, &len);
	bool found = strstr((char *)buf, needle) != NULL;
	if (!found)
		fprintf(stderr, "output lacks \"%s\":\n%s\n", needle, buf);
	free(buf);
	return found;
}

#define EXPECT(code, needle, ...)                                                           \
	do {                                                                                \
		const char *const a_[] = { __VA_ARGS__, NULL };                             \
		int rc_ = run(out, NULL, a_);                                               \
		if (rc_ != (code)) {                                                        \
			fprintf(stderr, "%s:%d: exit %d, want %d\n", __FILE__, __LINE__, rc_, \
				code);                                                      \
			g_failures++;                                                       \
		}                                                                           \
		if ((needle) && !output_has(out, needle))                                   \
			g_failures++;                                                       \
	} while (0)

static int parse_only(const char *const *args)
{
	char *argv[16];
	int n = 0;
	struct fr_error err = { { 0 } };

	for (; args[n]; n++)
		argv[n] = (char *)args[n];
	argv[n] = NULL;
	return ctl_cmd_model.parse_only(n, argv, &err);
}

int main(int argc, char **argv)
{
	char root[4096], out[4200], dir[4200], sub[4200];
	long rss = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FERRYCTL\n", argv[0]);
		return 2;
	}
	ferryctl = argv[1];
	g_mkdtemp(root, sizeof(root), "cli");
	snprintf(out, sizeof(out), "%s/out.txt", root);
	snprintf(dir, sizeof(dir), "%s/m2b", root);
	snprintf(sub, sizeof(sub), "%s/never", root);

	EXPECT(0, "Usage: ferryctl model gen", "model", "--help");
	EXPECT(0, "--preset tiny|2b|16b|145b", "model", "gen", "--help");
	EXPECT(0, "Usage: ferryctl model info", "model", "info", "--help");
	EXPECT(2, "missing subcommand", "model");
	EXPECT(2, "unknown subcommand 'frobnicate'", "model", "frobnicate");
	EXPECT(2, "--preset is required", "model", "gen", sub);
	EXPECT(2, "--preset: 'huge'", "model", "gen", "--preset", "huge", sub);
	EXPECT(2, "--layers: '0'", "model", "gen", "--preset", "tiny", "--layers", "0", sub);
	EXPECT(2, "preset tiny has 4 layers", "model", "gen", "--preset", "tiny", "--layers", "5",
	       sub);
	EXPECT(2, "--dtype: 'f16'", "model", "gen", "--preset", "tiny", "--dtype", "f16", sub);
	EXPECT(2, "--seed: '-1'", "model", "gen", "--preset", "tiny", "--seed", "-1", sub);
	EXPECT(2, "--seed: '12x'", "model", "gen", "--preset", "tiny", "--seed", "12x", sub);
	EXPECT(2, "--shards: '0'", "model", "gen", "--preset", "tiny", "--shards", "0", sub);
	EXPECT(2, "--threads: '0'", "model", "gen", "--preset", "tiny", "-j", "0", sub);
	EXPECT(2, "missing DIR", "model", "gen", "--preset", "tiny");
	EXPECT(2, "unexpected argument", "model", "gen", "--preset", "tiny", sub, "extra");
	EXPECT(2, "unknown option --bogus", "model", "gen", "--preset", "tiny", "--bogus", sub);
	EXPECT(2, "needs a value", "model", "gen", sub, "--preset");
	EXPECT(2, "missing DIR", "model", "info");
	EXPECT(1, "ferryctl model info:", "model", "info", sub);
	CHECK(!g_exists(sub));

	/* parse_only: the same verdicts, and no files. */
	CHECK(parse_only((const char *const[]){ "model", "gen", "--preset", "145b", "--layers",
						"2", "--seed", "0xffffffffffffffff", "--shards",
						"4", sub, NULL }) == 0);
	CHECK(parse_only((const char *const[]){ "model", "info", sub, NULL }) == 0);
	CHECK(parse_only((const char *const[]){ "model", "gen", sub, NULL }) == -EINVAL);
	CHECK(parse_only((const char *const[]){ "model", NULL }) == -EINVAL);
	CHECK(parse_only((const char *const[]){ "model", "gen", "--preset", "2b", "--layers",
						"10", sub, NULL }) == -EINVAL);
	CHECK(!g_exists(sub));

	/* Streaming: a 0.6 GB checkpoint in a bounded peak RSS. */
	{
		const char *const a[] = { "model", "gen", "--preset", "2b", "--layers", "2",
					  "--shards", "2", "--quiet", dir, NULL };
		int rc = run(out, &rss, a);
		printf("gen 2b --layers 2: exit %d, peak RSS %ld kB (limit %d kB)\n", rc, rss,
		       RSS_LIMIT_KB);
		CHECK(rc == 0);
		CHECK(rss > 0 && rss < RSS_LIMIT_KB);
		CHECK(output_has(out, "params"));
	}
	EXPECT(0, "layers 2 (1 dense, 1 MoE)", "model", "info", dir);
	CHECK(output_has(out, "hidden 1280"));

	g_rmtree(root);
	if (g_failures) {
		fprintf(stderr, "%d check(s) failed\n", g_failures);
		return 1;
	}
	printf("ok\n");
	return 0;
}
