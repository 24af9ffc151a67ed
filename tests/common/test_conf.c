/* SPDX-License-Identifier: Apache-2.0 */
/* test_conf.c - common/conf: every value type, every refusal (message text checked),
 * overrides, all-or-nothing loading, and dump -> reload giving the same struct. */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"
#include "tests/test.h"

struct tcfg {
	char *name;
	char *opt;
	int count;
	int neg;
	uint64_t big;
	double ratio;
	bool flag;
	int color;
	uint64_t mem;
	uint64_t wait;
};

static const char *const colors[] = { "red", "green", "blue", NULL };

#define OFF(f) offsetof(struct tcfg, f)
static const struct conf_key keys[] = {
	{ "main", "name", CONF_STR, OFF(name), .def = "ferry", .doc = "A name." },
	{ "main", "opt", CONF_STR, OFF(opt), .doc = "An optional string." },
	{ "main", "count", CONF_INT, OFF(count), 1, 100, .def = "4", .doc = "A bounded count." },
	{ "main", "neg", CONF_INT, OFF(neg), .def = "-5", .doc = "Any int." },
	{ "num", "big", CONF_U64, OFF(big), .def = "18446744073709551615" },
	{ "num", "ratio", CONF_DOUBLE, OFF(ratio), 0, 1, .def = "0.5" },
	{ "num", "flag", CONF_BOOL, OFF(flag), .def = "yes" },
	{ "num", "color", CONF_ENUM, OFF(color), .enum_names = colors, .def = "green" },
	{ "res", "mem", CONF_SIZE, OFF(mem), 0, 1LL << 40, .def = "64M" },
	{ "res", "wait", CONF_DURATION_MS, OFF(wait), 1, 3600000, .def = "5s" },
};
#define N FR_ARRAY_SIZE(keys)

static void fresh(struct tcfg *c)
{
	struct fr_error err = { { 0 } };
	memset(c, 0xa5, sizeof(*c)); /* conf_defaults must write every field */
	if (conf_defaults(keys, N, c, &err) < 0) {
		fprintf(stderr, "conf_defaults: %s\n", err.msg);
		exit(1);
	}
}

static int load(struct tcfg *c, const char *text, struct fr_error *err)
{
	fr_error_clear(err);
	return conf_load_string(keys, N, "t.conf", text, strlen(text), c, err);
}

static bool str_eq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static bool same(const struct tcfg *a, const struct tcfg *b)
{
	return str_eq(a->name, b->name) && str_eq(a->opt, b->opt) && a->count == b->count &&
	       a->neg == b->neg && a->big == b->big && a->ratio == b->ratio && a->flag == b->flag &&
	       a->color == b->color && a->mem == b->mem && a->wait == b->wait;
}

static void test_defaults(void)
{
	struct tcfg c;
	fresh(&c);
	CHECK(str_eq(c.name, "ferry"));
	CHECK(c.opt == NULL);
	CHECK(c.count == 4 && c.neg == -5);
	CHECK(c.big == UINT64_MAX);
	CHECK(c.ratio == 0.5);
	CHECK(c.flag == true);
	CHECK(c.color == 1);
	CHECK(c.mem == 64u << 20);
	CHECK(c.wait == 5000);
	conf_free(keys, N, &c);
	CHECK(c.name == NULL);
	conf_free(keys, N, &c); /* twice is fine */

	/* a table default that does not parse is reported, naming the key */
	static const struct conf_key bad[] = {
		{ "a", "x", CONF_INT, 0, 1, 10, .def = "11" },
	};
	int x = 7;
	struct fr_error err = { { 0 } };
	t_expect_err("bad default", conf_defaults(bad, 1, &x, &err), -EINVAL, &err,
		     "default of [a] x: ", "out of range [1, 10]");
	CHECK(x == 7);
}

/* Each valid spelling of each type, loaded into a fresh struct. */
static void test_values(void)
{
	static const struct {
		const char *text;
		size_t off;
		enum conf_type type;
		int64_t want_i;
		uint64_t want_u;
		double want_d;
	} cases[] = {
		{ "[main]\ncount = 1", OFF(count), CONF_INT, 1, 0, 0 },
		{ "[main]\ncount=100", OFF(count), CONF_INT, 100, 0, 0 },
		{ "[main]\ncount = +7", OFF(count), CONF_INT, 7, 0, 0 },
		{ "[main]\nneg = -2147483648", OFF(neg), CONF_INT, INT_MIN, 0, 0 },
		{ "[main]\nneg = 2147483647", OFF(neg), CONF_INT, INT_MAX, 0, 0 },
		{ "[num]\nbig = 0", OFF(big), CONF_U64, 0, 0, 0 },
		{ "[num]\nbig = 18446744073709551615", OFF(big), CONF_U64, 0, UINT64_MAX, 0 },
		{ "[num]\nratio = 1e-3", OFF(ratio), CONF_DOUBLE, 0, 0, 1e-3 },
		{ "[num]\nratio = 1", OFF(ratio), CONF_DOUBLE, 0, 0, 1.0 },
		{ "[num]\nratio = 0", OFF(ratio), CONF_DOUBLE, 0, 0, 0.0 },
		{ "[num]\nflag = false", OFF(flag), CONF_BOOL, 0, 0, 0 },
		{ "[num]\nflag = TRUE", OFF(flag), CONF_BOOL, 1, 0, 0 },
		{ "[num]\nflag = no", OFF(flag), CONF_BOOL, 0, 0, 0 },
		{ "[num]\nflag = On", OFF(flag), CONF_BOOL, 1, 0, 0 },
		{ "[num]\nflag = off", OFF(flag), CONF_BOOL, 0, 0, 0 },
		{ "[num]\nflag = 1", OFF(flag), CONF_BOOL, 1, 0, 0 },
		{ "[num]\nflag = 0", OFF(flag), CONF_BOOL, 0, 0, 0 },
		{ "[num]\ncolor = red", OFF(color), CONF_ENUM, 0, 0, 0 },
		{ "[num]\ncolor = BLUE", OFF(color), CONF_ENUM, 2, 0, 0 },
		{ "[res]\nmem = 0", OFF(mem), CONF_SIZE, 0, 0, 0 },
		{ "[res]\nmem = 4096", OFF(mem), CONF_SIZE, 0, 4096, 0 },
		{ "[res]\nmem = 4096B", OFF(mem), CONF_SIZE, 0, 4096, 0 },
		{ "[res]\nmem = 512K", OFF(mem), CONF_SIZE, 0, 512u << 10, 0 },
		{ "[res]\nmem = 64m", OFF(mem), CONF_SIZE, 0, 64u << 20, 0 },
		{ "[res]\nmem = 64MiB", OFF(mem), CONF_SIZE, 0, 64u << 20, 0 },
		{ "[res]\nmem = 2G", OFF(mem), CONF_SIZE, 0, 2ull << 30, 0 },
		{ "[res]\nmem = 3gb", OFF(mem), CONF_SIZE, 0, 3ull << 30, 0 },
		{ "[res]\nmem = 1T", OFF(mem), CONF_SIZE, 0, 1ull << 40, 0 },
		{ "[res]\nwait = 1", OFF(wait), CONF_DURATION_MS, 0, 1, 0 },
		{ "[res]\nwait = 250", OFF(wait), CONF_DURATION_MS, 0, 250, 0 },
		{ "[res]\nwait = 500ms", OFF(wait), CONF_DURATION_MS, 0, 500, 0 },
		{ "[res]\nwait = 5s", OFF(wait), CONF_DURATION_MS, 0, 5000, 0 },
		{ "[res]\nwait = 2m", OFF(wait), CONF_DURATION_MS, 0, 120000, 0 },
		{ "[res]\nwait = 1h", OFF(wait), CONF_DURATION_MS, 0, 3600000, 0 },
	};
	for (size_t i = 0; i < FR_ARRAY_SIZE(cases); i++) {
		struct tcfg c;
		struct fr_error err = { { 0 } };
		const char *f;
		bool ok;
		fresh(&c);
		int rc = load(&c, cases[i].text, &err);
		f = (const char *)&c + cases[i].off;
		switch (cases[i].type) {
		case CONF_INT:
		case CONF_ENUM: ok = *(const int *)(const void *)f == cases[i].want_i; break;
		case CONF_BOOL: ok = *(const bool *)(const void *)f == (cases[i].want_i != 0); break;
		case CONF_DOUBLE: ok = *(const double *)(const void *)f == cases[i].want_d; break;
		default: ok = *(const uint64_t *)(const void *)f == cases[i].want_u; break;
		}
		if (rc != 0 || !ok) {
			fprintf(stderr, "FAIL value %zu (%s): rc %d %s\n", i, cases[i].text, rc, err.msg);
			t_failures++;
		}
		conf_free(keys, N, &c);
	}
}

static void test_syntax(void)
{
	struct tcfg c;
	struct fr_error err = { { 0 } };
	char bom[] = "\xEF\xBB\xBF[main]\ncount = 9\n";

	fresh(&c);
	/* comments of both kinds, inline comments, indentation, CRLF, empty sections, "key:" */
	CHECK(load(&c, "; comment\n# comment\n\n[num]\n[main]\r\n  count = 5 ; five\r\n"
		       "\tname = a b;c\n[main]\nneg: -1\n[res]\n", &err) == 0);
	CHECK(c.count == 5 && c.neg == -1 && str_eq(c.name, "a b;c"));
	/* a UTF-8 BOM before the first line */
	CHECK(load(&c, bom, &err) == 0 && c.count == 9);
	/* strings: '#', '=', ':' and '[' inside a value are kept */
	CHECK(load(&c, "[main]\nname = #x=y:z[1]\n", &err) == 0 && str_eq(c.name, "#x=y:z[1]"));
	/* an empty string value unsets; a later load can set it again */
	CHECK(load(&c, "[main]\nname =\nopt = o\n", &err) == 0 && c.name == NULL &&
	      str_eq(c.opt, "o"));
	CHECK(load(&c, "[main]\nname = n2\n", &err) == 0 && str_eq(c.name, "n2") &&
	      str_eq(c.opt, "o"));
	/* empty input changes nothing */
	CHECK(conf_load_string(keys, N, "t.conf", "", 0, &c, &err) == 0 && c.count == 9);
	/* text need not be NUL-terminated */
	CHECK(conf_load_string(keys, N, "t.conf", "[main]\ncount = 12345", 17, &c, &err) == 0 &&
	      c.count == 12);
	conf_free(keys, N, &c);
}

static void expect_load_err(const char *what, const char *text, size_t len, const char *n1,
			    const char *n2)
{
	struct tcfg c, before;
	struct fr_error err = { { 0 } };
	int rc;

	fresh(&c);
	before = c;
	rc = conf_load_string(keys, N, "t.conf", text, len ? len : strlen(text), &c, &err);
	t_expect_err(what, rc, -EINVAL, &err, n1, n2);
	/* all or nothing: nothing of the file was applied, strings not freed */
	if (!same(&c, &before) || c.name != before.name) {
		fprintf(stderr, "FAIL %s: dst changed on error\n", what);
		t_failures++;
	}
	conf_free(keys, N, &c);
}

static void test_errors(void)
{
	char longline[400];
	memset(longline, 'x', sizeof(longline));
	memcpy(longline, "[main]\nname = ", 14);
	longline[sizeof(longline) - 1] = '\0';

	expect_load_err("unknown section", "[main]\ncount = 2\n[bogus]\n", 0,
			"t.conf:3: [bogus]: unknown section (sections: main, num, res)", NULL);
	expect_load_err("unknown key", "[main]\nnmae = x\n", 0,
			"t.conf:2: [main] nmae: unknown key (keys of [main]: name, opt, count, neg)",
			NULL);
	expect_load_err("key in wrong section", "[num]\ncount = 2\n", 0,
			"t.conf:2: [num] count: unknown key", NULL);
	expect_load_err("duplicate", "[main]\ncount = 1\n\n[num]\n[main]\ncount = 1\n", 0,
			"t.conf:6: [main] count: duplicate key (first set on line 2)", NULL);
	expect_load_err("outside section", "count = 1\n", 0,
			"t.conf:1: count: key outside any [section]", NULL);
	expect_load_err("empty key", "[main]\n= 1\n", 0, "t.conf:2: [main]: empty key name", NULL);
	expect_load_err("empty value", "[main]\ncount =\n", 0,
			"t.conf:2: [main] count: empty value", NULL);
	expect_load_err("not int", "[main]\ncount = 3x\n", 0,
			"t.conf:2: [main] count: \"3x\" is not an integer", NULL);
	expect_load_err("int range", "[main]\ncount = 101\n", 0,
			"[main] count: \"101\" is out of range [1, 100]", NULL);
	expect_load_err("int range low", "[main]\ncount = 0\n", 0,
			"\"0\" is out of range [1, 100]", NULL);
	expect_load_err("int overflow", "[main]\nneg = 2147483648\n", 0,
			"\"2147483648\" is out of range [-2147483648, 2147483647]", NULL);
	expect_load_err("i64 overflow", "[main]\nneg = 99999999999999999999\n", 0,
			"is out of range [-2147483648, 2147483647]", NULL);
	expect_load_err("u64 negative", "[num]\nbig = -1\n", 0,
			"[num] big: \"-1\" is not a non-negative integer", NULL);
	expect_load_err("u64 overflow", "[num]\nbig = 18446744073709551616\n", 0,
			"\"18446744073709551616\" is out of range [0, 18446744073709551615]", NULL);
	expect_load_err("double", "[num]\nratio = half\n", 0,
			"[num] ratio: \"half\" is not a finite number", NULL);
	expect_load_err("double nan", "[num]\nratio = nan\n", 0, "is not a finite number", NULL);
	expect_load_err("double range", "[num]\nratio = 1.5\n", 0,
			"\"1.5\" is out of range [0, 1]", NULL);
	expect_load_err("bool", "[num]\nflag = maybe\n", 0,
			"[num] flag: \"maybe\" is not a boolean (true/false, yes/no, on/off, 1/0)",
			NULL);
	expect_load_err("enum", "[num]\ncolor = purple\n", 0,
			"[num] color: \"purple\" is not one of: red, green, blue", NULL);
	expect_load_err("size unit", "[res]\nmem = 12Q\n", 0,
			"[res] mem: \"12Q\" is not a size", NULL);
	expect_load_err("size fraction", "[res]\nmem = 1.5G\n", 0, "is not a size", NULL);
	expect_load_err("size space", "[res]\nmem = 64 M\n", 0, "is not a size", NULL);
	expect_load_err("size range", "[res]\nmem = 2T\n", 0,
			"[res] mem: \"2T\" is out of range [0, 1T]", NULL);
	expect_load_err("size overflow", "[res]\nmem = 99999999999T\n", 0,
			"is out of range [0, 1T]", NULL);
	expect_load_err("duration unit", "[res]\nwait = 5x\n", 0,
			"[res] wait: \"5x\" is not a duration", NULL);
	expect_load_err("duration negative", "[res]\nwait = -1s\n", 0, "is not a duration", NULL);
	expect_load_err("duration uppercase", "[res]\nwait = 5S\n", 0, "is not a duration", NULL);
	expect_load_err("duration range", "[res]\nwait = 0\n", 0,
			"[res] wait: \"0\" is out of range [1ms, 1h]", NULL);
	expect_load_err("duration range high", "[res]\nwait = 61m\n", 0,
			"\"61m\" is out of range [1ms, 1h]", NULL);
	expect_load_err("control char", "[main]\nname = a\x01z\n", 0,
			"[main] name: \"a\\x01z\": control character 0x01", NULL);
	expect_load_err("leading semicolon", "[main]\nname =;x\n", 0,
			"a ';' at the start of a value", NULL);
	expect_load_err("syntax", "[main]\ncount = 2\njunk\n", 0,
			"t.conf:3: syntax error in \"junk\": expected \"key = value\", \"[section]\" "
			"or a comment", NULL);
	expect_load_err("unclosed section", "[main\ncount = 2\n", 0,
			"t.conf:1: syntax error in \"[main\": a section header needs a closing ']'",
			NULL);
	expect_load_err("long line", longline, 0, "t.conf:2: line longer than 199 bytes", NULL);
	expect_load_err("NUL byte", "[main]\ncount = 2\0 junk\n", 20, "t.conf:2: NUL byte", NULL);
	/* the first problem in file order is the one reported */
	expect_load_err("first error wins", "[main]\njunk\ncount = 0\n", 0, "t.conf:2: syntax",
			NULL);
	expect_load_err("first error wins 2", "[main]\ncount = 0\njunk\n", 0,
			"t.conf:2: [main] count", NULL);
	/* a late error still undoes early good keys */
	expect_load_err("all or nothing", "[main]\nname = changed\ncount = 50\n[num]\nflag = x\n",
			0, "t.conf:5: [num] flag", NULL);

	/* size limit */
	{
		size_t big = CONF_MAX_BYTES + 1;
		char *buf = malloc(big);
		struct tcfg c;
		struct fr_error err = { { 0 } };
		memset(buf, '\n', big);
		fresh(&c);
		t_expect_err("too big", conf_load_string(keys, N, "t.conf", buf, big, &c, &err),
			     -EFBIG, &err, "t.conf: 1048577 bytes, more than the limit", NULL);
		conf_free(keys, N, &c);
		free(buf);
	}
}

static void test_files(void)
{
	char dir[] = "/tmp/ferry-test-conf-XXXXXX", path[128];
	struct tcfg c;
	struct fr_error err = { { 0 } };
	FILE *f;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		t_failures++;
		return;
	}
	snprintf(path, sizeof(path), "%s/a.conf", dir);
	fresh(&c);
	t_expect_err("missing file", conf_load_file(keys, N, path, &c, &err), -ENOENT, &err, path,
		     "No such file or directory");
	f = fopen(path, "w");
	fputs("[main]\ncount = 33\n\n[res]\nwait = 1x\n", f);
	fclose(f);
	t_expect_err("file error has path:line", conf_load_file(keys, N, path, &c, &err), -EINVAL,
		     &err, path, ":5: [res] wait: \"1x\" is not a duration");
	CHECK(c.count == 4);
	f = fopen(path, "w");
	fputs("[main]\ncount = 33\n", f);
	fclose(f);
	CHECK(conf_load_file(keys, N, path, &c, &err) == 0 && c.count == 33);
	t_expect_err("directory", conf_load_file(keys, N, dir, &c, &err), -EINVAL, &err,
		     "not a regular file", NULL);
	conf_free(keys, N, &c);
	unlink(path);
	rmdir(dir);
}

static void test_set(void)
{
	struct tcfg c;
	struct fr_error err = { { 0 } };
	char long_set[300];

	fresh(&c);
	CHECK(conf_set(keys, N, "main.count=7", &c, &err) == 0 && c.count == 7);
	CHECK(conf_set(keys, N, "  main.count  =  8  ", &c, &err) == 0 && c.count == 8);
	CHECK(conf_set(keys, N, "main.name=hello world", &c, &err) == 0 &&
	      str_eq(c.name, "hello world"));
	CHECK(conf_set(keys, N, "main.name=", &c, &err) == 0 && c.name == NULL);
	CHECK(conf_set(keys, N, "main.opt=a=b", &c, &err) == 0 && str_eq(c.opt, "a=b"));
	CHECK(conf_set(keys, N, "res.mem=1G", &c, &err) == 0 && c.mem == 1ull << 30);
	CHECK(conf_set(keys, N, "num.color=blue", &c, &err) == 0 && c.color == 2);
	/* after a file: the override wins, the file's other keys stay */
	CHECK(load(&c, "[main]\ncount = 3\nneg = 9\n", &err) == 0);
	CHECK(conf_set(keys, N, "main.count=4", &c, &err) == 0 && c.count == 4 && c.neg == 9);

	t_expect_err("set no =", conf_set(keys, N, "main.count", &c, &err), -EINVAL, &err,
		     "override \"main.count\": expected section.key=value", NULL);
	t_expect_err("set no .", conf_set(keys, N, "count=1", &c, &err), -EINVAL, &err,
		     "expected section.key=value", NULL);
	t_expect_err("set empty key", conf_set(keys, N, "main.=1", &c, &err), -EINVAL, &err,
		     "expected section.key=value", NULL);
	t_expect_err("set unknown section", conf_set(keys, N, "mian.count=1", &c, &err), -EINVAL,
		     &err, "unknown section [mian] (sections: main, num, res)", NULL);
	t_expect_err("set unknown key", conf_set(keys, N, "main.cnt=1", &c, &err), -EINVAL, &err,
		     "unknown key [main] cnt (keys of [main]: name, opt, count, neg)", NULL);
	t_expect_err("set bad value", conf_set(keys, N, "main.count=0", &c, &err), -EINVAL, &err,
		     "override \"main.count=0\": [main] count: \"0\" is out of range [1, 100]", NULL);
	t_expect_err("set comment", conf_set(keys, N, "main.name=a ;b", &c, &err), -EINVAL, &err,
		     "after a space would start a comment", NULL);
	t_expect_err("set control", conf_set(keys, N, "main.name=a\tb", &c, &err), -EINVAL, &err,
		     "control character 0x09", NULL);
	memset(long_set, 'y', sizeof(long_set));
	memcpy(long_set, "main.name=", 10);
	long_set[sizeof(long_set) - 1] = '\0';
	t_expect_err("set too long", conf_set(keys, N, long_set, &c, &err), -EINVAL, &err,
		     "too long for a config line (199 bytes)", NULL);
	CHECK(c.count == 4 && str_eq(c.opt, "a=b"));
	conf_free(keys, N, &c);
}

static char *dump_to_string(const struct tcfg *c, size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	conf_dump(keys, N, c, f);
	fclose(f);
	return buf;
}

/* Random values through conf_set (which refuses what a file could not hold), dumped and
 * loaded back into a struct with the defaults: the two must be equal. */
static void test_roundtrip(uint64_t seed)
{
	static const char alphabet[] = "abcXYZ019_-./:=#[]; ";
	uint64_t st = seed;

	for (int iter = 0; iter < 300; iter++) {
		struct tcfg a, b;
		struct fr_error err = { { 0 } };
		char set[128], s[48];
		size_t len;
		char *text;

		fresh(&a);
		fresh(&b);
		for (int which = 0; which < 2; which++) {
			int n = (int)(fr_splitmix64(&st) % 40), rc;
			do {
				for (int i = 0; i < n; i++)
					s[i] = alphabet[fr_splitmix64(&st) % (sizeof(alphabet) - 1)];
				s[n] = '\0';
				snprintf(set, sizeof(set), "main.%s=%s", which ? "opt" : "name", s);
				rc = conf_set(keys, N, set, &a, &err);
				n = n ? n - 1 : 0; /* shorter until accepted ("" always is) */
			} while (rc < 0);
		}
		a.count = 1 + (int)(fr_splitmix64(&st) % 100);
		a.neg = (int)(int32_t)fr_splitmix64(&st);
		a.big = fr_splitmix64(&st) >> (fr_splitmix64(&st) % 64);
		a.ratio = fr_rand_unit(&st);
		a.flag = fr_splitmix64(&st) & 1;
		a.color = (int)(fr_splitmix64(&st) % 3);
		a.mem = (fr_splitmix64(&st) % (1ull << 20)) << (fr_splitmix64(&st) % 21);
		a.wait = 1 + fr_splitmix64(&st) % 3600000;
		if (iter % 7 == 0)
			a.wait = 60000 * (1 + fr_splitmix64(&st) % 60);

		text = dump_to_string(&a, &len);
		if (load(&b, text, &err) < 0 || !same(&a, &b)) {
			fprintf(stderr, "FAIL roundtrip iter %d: %s\n%s", iter, err.msg, text);
			t_failures++;
		}
		if (iter == 0)
			printf("dump example:\n%s", text);
		free(text);
		conf_free(keys, N, &a);
		conf_free(keys, N, &b);
	}
	/* the defaults themselves, with the unset string */
	{
		struct tcfg a, b;
		struct fr_error err = { { 0 } };
		size_t len;
		char *text;
		fresh(&a);
		fresh(&b);
		conf_set(keys, N, "main.name=", &b, &err); /* b differs until reloaded */
		text = dump_to_string(&a, &len);
		CHECK(strstr(text, "[main]\nname = ferry\nopt =\ncount = 4\nneg = -5\n") != NULL);
		CHECK(strstr(text, "[res]\nmem = 64M\nwait = 5s\n") != NULL);
		CHECK(load(&b, text, &err) == 0 && same(&a, &b));
		free(text);
		conf_free(keys, N, &a);
		conf_free(keys, N, &b);
	}
}

static void test_write_doc(void)
{
	struct tcfg a, b;
	struct fr_error err = { { 0 } };
	char *text = NULL;
	size_t len;
	FILE *f = open_memstream(&text, &len);

	conf_write_doc(keys, N, f);
	fclose(f);
	printf("write_doc:\n%s", text);
	CHECK(strstr(text, "[main]\n# A name.\n#name = ferry\n") != NULL);
	CHECK(strstr(text, "# An optional string.\n#opt =\n") != NULL);
	CHECK(strstr(text, "# A bounded count.\n# Integer in [1, 100].\n#count = 4\n") != NULL);
	CHECK(strstr(text, "# One of: red, green, blue.\n#color = green\n") != NULL);
	CHECK(strstr(text, "in [0, 1T].\n#mem = 64M\n") != NULL);
	CHECK(strstr(text, "in [1ms, 1h].\n#wait = 5s\n") != NULL);
	/* it parses and sets nothing */
	fresh(&a);
	fresh(&b);
	CHECK(load(&b, text, &err) == 0 && same(&a, &b));
	free(text);
	conf_free(keys, N, &a);
	conf_free(keys, N, &b);
}

static void test_hostport(void)
{
	static const char *const good[] = {
		"127.0.0.1:7400", "host.example:1", "[::1]:65535", "0.0.0.0:7400",
		"unix:/run/ferry.sock", "localhost:7400", "my-host.example.com.:80",
		"coordinator_1:7400", "[fe80::1]:7400", "[::ffff:10.0.0.1]:7400", "[fe80::1%lo]:7400",
		"10.0.0.1:07400",
	};
	static const struct {
		const char *addr, *want;
	} bad[] = {
		{ "", "not set" },
		{ "127.0.0.1", "\"127.0.0.1\" is not host:port (no port)" },
		{ "localhost", "\"localhost\" is not host:port (no port)" },
		{ ":7400", "\":7400\" is not host:port (no host)" },
		{ "h:0", "\"h:0\": the port must be a number in [1, 65535]" },
		{ "h:65536", "the port must be a number in [1, 65535]" },
		{ "h:-1", "the port must be a number" },
		{ "h:+80", "the port must be a number" },
		{ "h:80x", "the port must be a number" },
		{ "h:", "the port must be a number" },
		{ "::1:7400", "an IPv6 host needs brackets, as in [::1]:7400" },
		{ "::1", "an IPv6 host needs brackets" },
		{ "[]:7400", "\"[]:7400\" is not [IPv6]:port" },
		{ "[::1:7400", "is not [IPv6]:port" },
		{ "[::1]7400", "is not [IPv6]:port" },
		{ "[::1]", "is not [IPv6]:port" },
		{ "[::1]:", "\"[::1]:\": the port must be a number" },
		{ "[::g]:7400", "\"[::g]:7400\": ::g is not an IPv6 address" },
		{ "[10.0.0.1]:7400", "10.0.0.1 is not an IPv6 address" },
		{ "300.1.1.1:7400", "\"300.1.1.1:7400\": host 300.1.1.1 is not an IPv4 address" },
		{ "1.2.3:7400", "host 1.2.3 is not an IPv4 address" },
		{ "010.0.0.1:7400", "host 010.0.0.1 is not an IPv4 address" },
		{ "a b:1", "\"a b:1\": host a b is not a host name or an IP address" },
		{ "-h.example:1", "host -h.example is not a host name" },
		{ "h-.example:1", "is not a host name" },
		{ "h..example:1", "is not a host name" },
		{ "h/x:1", "is not a host name" },
		{ "unix:", "\"unix:\" without a path" },
	};
	struct fr_error err = { { 0 } };
	char label[300], unix_long[300];

	for (size_t i = 0; i < FR_ARRAY_SIZE(good); i++) {
		if (conf_check_hostport(good[i], &err) != 0) {
			fprintf(stderr, "FAIL hostport %s: %s\n", good[i], err.msg);
			t_failures++;
		}
	}
	for (size_t i = 0; i < FR_ARRAY_SIZE(bad); i++)
		t_expect_err(bad[i].addr, conf_check_hostport(bad[i].addr, &err), -EINVAL, &err,
			     bad[i].want, NULL);
	t_expect_err("NULL", conf_check_hostport(NULL, &err), -EINVAL, &err, "not set", NULL);
	/* a label of 64 bytes, a host of 254 */
	snprintf(label, sizeof(label), "%064d.example:80", 0);
	label[0] = 'x';
	t_expect_err("label 64", conf_check_hostport(label, &err), -EINVAL, &err,
		     "is not a host name", NULL);
	label[1] = '.';
	CHECK(conf_check_hostport(label, &err) == 0);
	memset(label, 'a', 254);
	for (int i = 63; i < 254; i += 64)
		label[i] = '.';
	snprintf(label + 254, sizeof(label) - 254, ":80");
	t_expect_err("host 254", conf_check_hostport(label, &err), -EINVAL, &err,
		     "is not a host name", NULL);
	snprintf(label + 253, sizeof(label) - 253, ":80");
	CHECK(conf_check_hostport(label, &err) == 0);
	memset(label, 'a', 280);
	snprintf(label + 280, sizeof(label) - 280, ":80");
	t_expect_err("host 280", conf_check_hostport(label, &err), -EINVAL, &err,
		     "the host is too long (a host name has at most 253 bytes)", NULL);
	/* gRPC's Unix socket path must fit sockaddr_un */
	memset(unix_long, 'p', sizeof(unix_long));
	memcpy(unix_long, "unix:/", 6);
	unix_long[5 + 108] = '\0';
	t_expect_err("unix path", conf_check_hostport(unix_long, &err), -EINVAL, &err,
		     "the socket path is longer than 107 bytes", NULL);
	unix_long[5 + 107] = '\0';
	CHECK(conf_check_hostport(unix_long, &err) == 0);
	/* a listen address may leave the port to the kernel */
	CHECK(conf_check_listen("0.0.0.0:0", &err) == 0 && conf_check_listen("[::]:0", &err) == 0);
	t_expect_err("listen 65536", conf_check_listen("h:65536", &err), -EINVAL, &err,
		     "the port must be a number in [0, 65535]", NULL);

	{
		static const char *const ip_good[] = { "127.0.0.1", "10.0.0.5", "255.255.255.254" };
		static const struct {
			const char *addr, *want;
		} ip_bad[] = {
			{ "not-an-ip", "\"not-an-ip\" is not an IPv4 address (four numbers, as in "
				       "10.0.0.5; host names are not resolved)" },
			{ "localhost", "\"localhost\" is not an IPv4 address" },
			{ "10.0.0.1:7400", "\"10.0.0.1:7400\" is not an IPv4 address" },
			{ "1.2.3", "is not an IPv4 address" },
			{ "256.0.0.1", "is not an IPv4 address" },
			{ "010.0.0.1", "is not an IPv4 address" },
			{ "::1", "\"::1\" is an IPv6 address; this key takes an IPv4 address" },
			{ "0.0.0.0", "\"0.0.0.0\" is not an address peers can connect to" },
			{ "", "not set (expected an IPv4 address)" },
		};
		for (size_t i = 0; i < FR_ARRAY_SIZE(ip_good); i++) {
			if (conf_check_ipv4(ip_good[i], &err) != 0) {
				fprintf(stderr, "FAIL ipv4 %s: %s\n", ip_good[i], err.msg);
				t_failures++;
			}
		}
		for (size_t i = 0; i < FR_ARRAY_SIZE(ip_bad); i++)
			t_expect_err(ip_bad[i].addr, conf_check_ipv4(ip_bad[i].addr, &err), -EINVAL,
				     &err, ip_bad[i].want, NULL);
	}
}

/* The address types in a table: refused at load with file:line and the key, through --set
 * naming the override, stored, unset by an empty value, dumped and documented. */
struct acfg {
	char *bind, *peer, *listen;
};

#define AOFF(f) offsetof(struct acfg, f)
static const struct conf_key akeys[] = {
	{ "transport", "bind_addr", CONF_IPV4, AOFF(bind), .def = "127.0.0.1" },
	{ "worker", "coordinator", CONF_HOSTPORT, AOFF(peer), .def = "127.0.0.1:7400" },
	{ "server", "listen", CONF_HOSTPORT, AOFF(listen), 0, 65535, .def = "127.0.0.1:7400" },
};

static void test_address_keys(void)
{
	static const struct {
		const char *text, *want;
	} bad[] = {
		{ "[transport]\nbind_addr = not-an-ip\n",
		  "a.conf:2: [transport] bind_addr: \"not-an-ip\" is not an IPv4 address" },
		{ "[transport]\n\n# comment\nbind_addr = ::1 ; v6\n",
		  "a.conf:4: [transport] bind_addr: \"::1\" is an IPv6 address" },
		{ "[transport]\nbind_addr = 0.0.0.0\n",
		  "a.conf:2: [transport] bind_addr: \"0.0.0.0\" is not an address peers can" },
		{ "[worker]\ncoordinator = coord.example\n",
		  "a.conf:2: [worker] coordinator: \"coord.example\" is not host:port (no port)" },
		{ "[worker]\ncoordinator = h:0\n",
		  "a.conf:2: [worker] coordinator: \"h:0\": the port must be a number in [1, 65535]" },
		{ "[worker]\ncoordinator = fd00::1:7400\n",
		  "a.conf:2: [worker] coordinator: \"fd00::1:7400\": an IPv6 host needs brackets" },
		{ "[worker]\ncoordinator = [fd00::zz]:7400\n",
		  "a.conf:2: [worker] coordinator: \"[fd00::zz]:7400\": fd00::zz is not an IPv6" },
		{ "[server]\nlisten = 127.0.0.1:65536\n",
		  "a.conf:2: [server] listen: \"127.0.0.1:65536\": the port must be a number in "
		  "[0, 65535]" },
		{ "[server]\nlisten = 127.0.0.256:80\n",
		  "a.conf:2: [server] listen: \"127.0.0.256:80\": host 127.0.0.256 is not an IPv4" },
	};
	struct acfg c, d;
	struct fr_error err = { { 0 } };
	char *text = NULL;
	size_t len;
	FILE *f;

	if (conf_defaults(akeys, FR_ARRAY_SIZE(akeys), &c, &err) < 0) {
		fprintf(stderr, "FAIL address defaults: %s\n", err.msg);
		t_failures++;
		return;
	}
	for (size_t i = 0; i < FR_ARRAY_SIZE(bad); i++) {
		struct acfg before = c;
		t_expect_err(bad[i].want, conf_load_string(akeys, FR_ARRAY_SIZE(akeys), "a.conf",
							    bad[i].text, strlen(bad[i].text), &c, &err),
			     -EINVAL, &err, bad[i].want, NULL);
		CHECK(memcmp(&before, &c, sizeof(c)) == 0);
	}
	t_expect_err("set bind_addr", conf_set(akeys, FR_ARRAY_SIZE(akeys),
					       "transport.bind_addr=not-an-ip", &c, &err),
		     -EINVAL, &err, "override \"transport.bind_addr=not-an-ip\": [transport] "
		     "bind_addr: \"not-an-ip\" is not an IPv4 address", NULL);
	t_expect_err("set coordinator", conf_set(akeys, FR_ARRAY_SIZE(akeys),
						 "worker.coordinator=[::1]", &c, &err),
		     -EINVAL, &err, "override \"worker.coordinator=[::1]\": [worker] coordinator: "
		     "\"[::1]\" is not [IPv6]:port", NULL);
	CHECK(!strcmp(c.bind, "127.0.0.1") && !strcmp(c.peer, "127.0.0.1:7400"));

	/* good forms are stored as written */
	{
		const char *good = "[transport]\nbind_addr = 10.1.2.3\n[worker]\ncoordinator = "
				   "[::1]:7000\n[server]\nlisten = 0.0.0.0:0\n";
		CHECK(conf_load_string(akeys, FR_ARRAY_SIZE(akeys), "a.conf", good, strlen(good),
				       &c, &err) == 0);
	}
	CHECK(!strcmp(c.bind, "10.1.2.3") && !strcmp(c.peer, "[::1]:7000") &&
	      !strcmp(c.listen, "0.0.0.0:0"));
	CHECK(conf_set(akeys, FR_ARRAY_SIZE(akeys), "worker.coordinator=coord-1.example:443", &c,
		       &err) == 0 && !strcmp(c.peer, "coord-1.example:443"));
	CHECK(conf_set(akeys, FR_ARRAY_SIZE(akeys), "server.listen=unix:/run/ferry/co.sock", &c,
		       &err) == 0 && !strcmp(c.listen, "unix:/run/ferry/co.sock"));
	/* dump -> load: the same strings */
	f = open_memstream(&text, &len);
	conf_dump(akeys, FR_ARRAY_SIZE(akeys), &c, f);
	fclose(f);
	CHECK(conf_defaults(akeys, FR_ARRAY_SIZE(akeys), &d, &err) == 0);
	CHECK(conf_load_string(akeys, FR_ARRAY_SIZE(akeys), "dump", text, len, &d, &err) == 0);
	CHECK(!strcmp(d.bind, c.bind) && !strcmp(d.peer, c.peer) && !strcmp(d.listen, c.listen));
	free(text);
	/* an empty value unsets, as for any string; the daemons then say "not set" */
	CHECK(conf_set(akeys, FR_ARRAY_SIZE(akeys), "transport.bind_addr=", &d, &err) == 0 &&
	      d.bind == NULL);
	conf_free(akeys, FR_ARRAY_SIZE(akeys), &d);
	CHECK(d.peer == NULL && d.listen == NULL);
	/* the example file says what each takes */
	text = NULL;
	f = open_memstream(&text, &len);
	conf_write_doc(akeys, FR_ARRAY_SIZE(akeys), f);
	fclose(f);
	CHECK(strstr(text, "# Numeric IPv4 address, not 0.0.0.0 (host names are not resolved).\n"
			   "#bind_addr = 127.0.0.1\n") != NULL);
	CHECK(strstr(text, "port in [1, 65535]) or unix:/path.\n#coordinator = 127.0.0.1:7400\n"));
	CHECK(strstr(text, "port in [0, 65535]) or unix:/path.\n#listen = 127.0.0.1:7400\n"));
	free(text);
	conf_free(akeys, FR_ARRAY_SIZE(akeys), &c);
}

int main(void)
{
	uint64_t seed = t_seed();

	test_defaults();
	test_values();
	test_syntax();
	test_errors();
	test_files();
	test_set();
	test_roundtrip(seed);
	test_write_doc();
	test_hostport();
	test_address_keys();
	CHECK(conf_find(keys, N, "res", "wait") == 9 && conf_find(keys, N, "res", "x") == -1);
	printf("%s (%d failures)\n", t_failures ? "FAIL" : "ok", t_failures);
	return t_failures != 0;
}
