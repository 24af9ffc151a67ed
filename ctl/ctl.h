/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl.h - ferryctl subcommands. Each command has a parse step (argv -> options, no side
 * effects, fuzzed) and an exec step. Exit codes (documented in `ferryctl --help`):
 *   0 success, 1 runtime failure (bad model, I/O, server error), 2 usage error.
 */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include "common/common.h"

enum {
	CTL_EXIT_OK = 0,
	CTL_EXIT_FAIL = 1,
	CTL_EXIT_USAGE = 2,
};

/* A subcommand: `ferryctl NAME ...`. main() is given argv starting at NAME. */
struct ctl_cmd {
	const char *name;
	const char *summary;
	int (*main)(int argc, char **argv);
	/* Parses argv into a private options struct and frees it again: no side effects.
	 * Returns 0, or -EINVAL with err naming the bad argument (used by the CLI fuzz target). */
	int (*parse_only)(int argc, char **argv, struct fr_error *err);
};

extern const struct ctl_cmd ctl_cmd_run;
extern const struct ctl_cmd ctl_cmd_model;
extern const struct ctl_cmd ctl_cmd_tokenize;
extern const struct ctl_cmd ctl_cmd_detokenize;
extern const struct ctl_cmd ctl_cmd_up;     /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_load;   /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_generate;    /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_score;       /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_eval;        /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_bench_serve; /* with gRPC only */

/* All commands, NULL-terminated. */
extern const struct ctl_cmd *const ctl_cmds[];

/* --NAME's integer in [min, max]. Returns 0 or -EINVAL with err naming the option. */
int ctl_arg_i64(const char *name, const char *s, int64_t min, int64_t max, int64_t *ret,
		struct fr_error *err);
/* The same into an int (min and max must fit one). */
int ctl_arg_int(const char *name, const char *s, int min, int max, int *ret, struct fr_error *err);

/* What a command's main does with its parser's result rc: 1 (--help) prints usage and
 * gives CTL_EXIT_OK; a negative rc prints "ferryctl CMD: <err>" and a pointer to --help and
 * gives CTL_EXIT_USAGE. Returns -1 when the options are good and the command should run. */
int ctl_parsed(const char *cmd, const char *usage, int rc, const struct fr_error *err);

/* Resets getopt state so a parser can run more than once in a process. */
void ctl_getopt_reset(void);

#endif
