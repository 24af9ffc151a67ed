/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cmd_tokenize.c - `ferryctl tokenize` (text -> ids) and `ferryctl detokenize` (ids -> text)
 * with a model's tokenizer.json. Plain mode reads all of stdin; --jsonl works line by line
 * (one JSON string <-> one JSON array of ids), for scripting and tests.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "model/model.h"

struct tok_opts {
	bool detok;
	const char *tokenizer;      /* borrowed from argv */
	const char *model_dir;      /* borrowed from argv */
	bool add_special;
	bool skip_special;
	bool jsonl;
	bool help;
};

static void tok_usage(FILE *f, bool detok)
{
	if (!detok)
		fprintf(f,
			"Usage: ferryctl tokenize (--tokenizer FILE | --model DIR) [--add-special] [--jsonl]\n\n"
			"Reads UTF-8 text on stdin and prints its token ids, space-separated, on one line.\n"
			"Invalid UTF-8 is encoded as U+FFFD per maximal invalid subpart.\n\n"
			"  --tokenizer FILE  a HuggingFace tokenizer.json\n"
			"  --model DIR       a model directory (uses DIR/tokenizer.json)\n"
			"  --add-special     add the special tokens of the post-processor (BOS)\n"
			"  --jsonl           one JSON string per input line -> one JSON array of ids per line\n"
			"  -h, --help        this text\n\n"
			"Exit codes: 0 success, 1 failure (bad tokenizer, bad input line), 2 usage error.\n");
	else
		fprintf(f,
			"Usage: ferryctl detokenize (--tokenizer FILE | --model DIR) [--skip-special] [--jsonl]\n\n"
			"Reads token ids (space or comma separated) on stdin and writes the decoded bytes.\n\n"
			"  --tokenizer FILE  a HuggingFace tokenizer.json\n"
			"  --model DIR       a model directory (uses DIR/tokenizer.json)\n"
			"  --skip-special    drop special tokens (BOS, EOS, ...) from the output\n"
			"  --jsonl           one JSON array of ids per input line -> one JSON string per line\n"
			"                    (bytes that are not valid UTF-8 are written as U+FFFD)\n"
			"  -h, --help        this text\n\n"
			"Exit codes: 0 success, 1 failure (bad tokenizer, bad id, bad input line), 2 usage error.\n");
}

static int tok_parse(int argc, char **argv, bool detok, struct tok_opts *o, struct fr_error *err)
{
	enum { OPT_TOKENIZER = 256, OPT_MODEL, OPT_ADD, OPT_SKIP, OPT_JSONL };
	static const struct option lopts[] = {
		{ "tokenizer", required_argument, NULL, OPT_TOKENIZER },
		{ "model", required_argument, NULL, OPT_MODEL },
		{ "add-special", no_argument, NULL, OPT_ADD },
		{ "skip-special", no_argument, NULL, OPT_SKIP },
		{ "jsonl", no_argument, NULL, OPT_JSONL },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->detok = detok;
	ctl_getopt_reset();
	while ((c = getopt_long(argc, argv, "+:h", lopts, NULL)) != -1) {
		switch (c) {
		case OPT_TOKENIZER:
			o->tokenizer = optarg;
			break;
		case OPT_MODEL:
			o->model_dir = optarg;
			break;
		case OPT_ADD:
			if (detok)
				return fr_error_set(err, -EINVAL, "--add-special is a tokenize option");
			o->add_special = true;
			break;
		case OPT_SKIP:
			if (!detok)
				return fr_error_set(err, -EINVAL, "--skip-special is a detokenize option");
			o->skip_special = true;
			break;
		case OPT_JSONL:
			o->jsonl = true;
			break;
		case 'h':
			o->help = true;
			return 0;
		case ':':
			return fr_error_set(err, -EINVAL, "option '%s' needs an argument",
					    argv[optind - 1] ? argv[optind - 1] : "?");
		default:
			return fr_error_set(err, -EINVAL, "unknown option '%s'",
					    optind > 0 && optind <= argc && argv[optind - 1] ? argv[optind - 1] : "?");
		}
	}
	if (optind < argc)
		return fr_error_set(err, -EINVAL, "unexpected argument '%s'", argv[optind]);
	if (!o->tokenizer && !o->model_dir)
		return fr_error_set(err, -EINVAL, "one of --tokenizer FILE or --model DIR is required");
	if (o->tokenizer && o->model_dir)
		return fr_error_set(err, -EINVAL, "--tokenizer and --model are mutually exclusive");
	if ((o->tokenizer && !*o->tokenizer) || (o->model_dir && !*o->model_dir))
		return fr_error_set(err, -EINVAL, "empty path");
	return 0;
}

static int read_all(FILE *f, char **ret, size_t *ret_len)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		size_t got = fread(buf + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		free(buf);
		return -EIO;
	}
	buf[len] = '\0';
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* JSON strings must be valid UTF-8: each invalid byte becomes U+FFFD (decoded text from ids
 * that split a character). Returns a heap copy. */
static char *utf8_lossy(const char *s, size_t n, size_t *ret_len)
{
	const unsigned char *u = (const unsigned char *)s;
	char *o = malloc(3 * n + 1);
	size_t i = 0, w = 0;
	if (!o)
		return NULL;
	while (i < n) {
		size_t k = fr_utf8_decode(u + i, n - i, NULL, NULL, NULL);
		if (k) {
			memcpy(o + w, s + i, k);
			w += k;
			i += k;
		} else {
			memcpy(o + w, "\xEF\xBF\xBD", 3);
			w += 3;
			i++;
		}
	}
	o[w] = '\0';
	*ret_len = w;
	return o;
}

static void print_ids(FILE *f, const int32_t *ids, size_t n, bool json)
{
	if (json)
		fputc('[', f);
	for (size_t i = 0; i < n; i++)
		fprintf(f, i ? (json ? ",%d" : " %d") : "%d", ids[i]);
	fputs(json ? "]\n" : "\n", f);
}

static int run_tokenize(const struct tok_opts *o, const struct model_tokenizer *tk)
{
	int32_t *ids = NULL;
	size_t n;
	int rc;

	if (!o->jsonl) {
		char *text;
		size_t len;
		if ((rc = read_all(stdin, &text, &len)) < 0) {
			fprintf(stderr, "ferryctl tokenize: reading stdin: %s\n", strerror(-rc));
			return CTL_EXIT_FAIL;
		}
		rc = model_tokenizer_encode(tk, text, len, o->add_special, &ids, &n);
		free(text);
		if (rc < 0) {
			fprintf(stderr, "ferryctl tokenize: %s\n", strerror(-rc));
			return CTL_EXIT_FAIL;
		}
		print_ids(stdout, ids, n, false);
		free(ids);
		return CTL_EXIT_OK;
	}

	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	long lineno = 0;
	int ret = CTL_EXIT_OK;
	while ((got = getline(&line, &cap, stdin)) >= 0) {
		json_error_t jerr;
		json_t *j;
		lineno++;
		while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
			line[--got] = '\0';
		j = json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
		if (!json_is_string(j)) {
			fprintf(stderr, "ferryctl tokenize: stdin line %ld: expected a JSON string%s%s\n",
				lineno, j ? "" : ": ", j ? "" : jerr.text);
			json_decref(j);
			ret = CTL_EXIT_FAIL;
			break;
		}
		rc = model_tokenizer_encode(tk, json_string_value(j), json_string_length(j),
					    o->add_special, &ids, &n);
		json_decref(j);
		if (rc < 0) {
			fprintf(stderr, "ferryctl tokenize: stdin line %ld: %s\n", lineno, strerror(-rc));
			ret = CTL_EXIT_FAIL;
			break;
		}
		print_ids(stdout, ids, n, true);
		free(ids);
	}
	free(line);
	return ret;
}

static int run_detokenize(const struct tok_opts *o, const struct model_tokenizer *tk)
{
	int vocab = model_tokenizer_vocab_size(tk);
	char *text;
	size_t len;
	int rc;

	if (!o->jsonl) {
		char *in;
		size_t inlen;
		int32_t *ids;
		size_t n;
		struct fr_error err = { { 0 } };
		if ((rc = read_all(stdin, &in, &inlen)) < 0) {
			fprintf(stderr, "ferryctl detokenize: reading stdin: %s\n", strerror(-rc));
			return CTL_EXIT_FAIL;
		}
		if (strlen(in) != inlen) {
			free(in);
			fprintf(stderr, "ferryctl detokenize: stdin: NUL byte in the input\n");
			return CTL_EXIT_FAIL;
		}
		rc = fr_parse_ids(in, vocab, &ids, &n, &err);
		free(in);
		if (rc < 0) {
			fprintf(stderr, "ferryctl detokenize: stdin: %s\n", err.msg);
			return CTL_EXIT_FAIL;
		}
		rc = model_tokenizer_decode(tk, ids, n, o->skip_special, &text, &len);
		free(ids);
		if (rc < 0) {
			fprintf(stderr, "ferryctl detokenize: %s\n",
				rc == -EINVAL ? "an id has no token" : strerror(-rc));
			return CTL_EXIT_FAIL;
		}
		fwrite(text, 1, len, stdout);
		free(text);
		return CTL_EXIT_OK;
	}

	char *line = NULL;
	size_t cap = 0;
	ssize_t got;
	long lineno = 0;
	int ret = CTL_EXIT_OK;
	while ((got = getline(&line, &cap, stdin)) >= 0) {
		json_error_t jerr;
		json_t *j, *v;
		int32_t *ids = NULL;
		size_t n, i;
		const char *bad = NULL;
		lineno++;
		while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
			line[--got] = '\0';
		j = json_loadb(line, (size_t)got, JSON_DECODE_ANY, &jerr);
		if (!json_is_array(j)) {
			fprintf(stderr, "ferryctl detokenize: stdin line %ld: expected a JSON array of ids%s%s\n",
				lineno, j ? "" : ": ", j ? "" : jerr.text);
			json_decref(j);
			ret = CTL_EXIT_FAIL;
			break;
		}
		n = json_array_size(j);
		ids = malloc((n ? n : 1) * sizeof(*ids));
		if (!ids)
			bad = "out of memory";
		json_array_foreach(j, i, v) {
			if (bad)
				break;
			if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
				bad = "an element is not a token id";
			else
				ids[i] = (int32_t)json_integer_value(v);
		}
		json_decref(j);
		if (!bad) {
			rc = model_tokenizer_decode(tk, ids, n, o->skip_special, &text, &len);
			if (rc < 0)
				bad = rc == -EINVAL ? "an id has no token" : strerror(-rc);
		}
		free(ids);
		if (bad) {
			fprintf(stderr, "ferryctl detokenize: stdin line %ld: %s\n", lineno, bad);
			ret = CTL_EXIT_FAIL;
			break;
		}
		size_t ol;
		char *ok = utf8_lossy(text, len, &ol);
		json_t *s = ok ? json_stringn(ok, ol) : NULL;
		char *dump = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
		free(text);
		free(ok);
		json_decref(s);
		if (!dump) {
			fprintf(stderr, "ferryctl detokenize: stdin line %ld: out of memory\n", lineno);
			ret = CTL_EXIT_FAIL;
			break;
		}
		fputs(dump, stdout);
		fputc('\n', stdout);
		free(dump);
	}
	free(line);
	return ret;
}

static int tok_run(int argc, char **argv, bool detok)
{
	const char *name = detok ? "detokenize" : "tokenize";
	struct tok_opts o;
	struct fr_error err = { { 0 } };
	struct model_tokenizer *tk = NULL;
	char path[4096];
	int ret;

	if (tok_parse(argc, argv, detok, &o, &err) < 0) {
		fprintf(stderr, "ferryctl %s: %s\nTry 'ferryctl %s --help'.\n", name, err.msg, name);
		return CTL_EXIT_USAGE;
	}
	if (o.help) {
		tok_usage(stdout, detok);
		return CTL_EXIT_OK;
	}
	if (o.model_dir)
		snprintf(path, sizeof(path), "%s/tokenizer.json", o.model_dir);
	else
		snprintf(path, sizeof(path), "%s", o.tokenizer);
	if (model_tokenizer_load(path, &tk, &err) < 0) {
		fprintf(stderr, "ferryctl %s: %s\n", name, err.msg);
		return CTL_EXIT_FAIL;
	}
	ret = detok ? run_detokenize(&o, tk) : run_tokenize(&o, tk);
	model_tokenizer_free(tk);
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "ferryctl %s: writing stdout: %s\n", name, strerror(errno));
		return CTL_EXIT_FAIL;
	}
	return ret;
}

static int tokenize_main(int argc, char **argv)
{
	return tok_run(argc, argv, false);
}

static int detokenize_main(int argc, char **argv)
{
	return tok_run(argc, argv, true);
}

static int tokenize_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct tok_opts o;
	return tok_parse(argc, argv, false, &o, err);
}

static int detokenize_parse_only(int argc, char **argv, struct fr_error *err)
{
	struct tok_opts o;
	return tok_parse(argc, argv, true, &o, err);
}

const struct ctl_cmd ctl_cmd_tokenize = { "tokenize", "text -> token ids", tokenize_main,
					  tokenize_parse_only };
const struct ctl_cmd ctl_cmd_detokenize = { "detokenize", "token ids -> text", detokenize_main,
					    detokenize_parse_only };
