/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ctl.h - ferryctl subcommands. Each command has a parse step (argv -> options, no side
 * effects, fuzzed) and an exec step. Exit codes (documented in `ferryctl --help`):
 *   0 success, 1 runtime failure (bad model, I/O, server error), 2 usage error.
 */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include <getopt.h>
#include <stdbool.h>

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
extern const struct ctl_cmd ctl_cmd_placement;
extern const struct ctl_cmd ctl_cmd_up;     /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_load;   /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_status;      /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_rebalance;   /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_drain;       /* with gRPC only */
extern const struct ctl_cmd ctl_cmd_undrain;     /* with gRPC only */
/* `placement show` (cmd_admin.c, with gRPC only): the placement command's subcommand. */
int ctl_placement_show_main(int argc, char **argv);
int ctl_placement_show_parse_only(int argc, char **argv, struct fr_error *err);
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
/* --precision: exact or fast, as an enum kn_precision in *ret. Returns 0 or -EINVAL. */
int ctl_arg_precision(const char *s, int *ret, struct fr_error *err);

/* What a command's main does with its parser's result rc: 1 (--help) prints usage and
 * gives CTL_EXIT_OK; a negative rc prints "ferryctl CMD: <err>" and a pointer to --help and
 * gives CTL_EXIT_USAGE. Returns -1 when the options are good and the command should run. */
int ctl_parsed(const char *cmd, const char *usage, int rc, const struct fr_error *err);

/* ---- TLS options of the commands that talk to a cluster ---------------------------------- */

/* --tls-ca, --tls-cert, --tls-key: paths (argv's or the environment's), NULL when unset.
 * TLS is used when ca or cert is set. */
struct ctl_tls {
	const char *ca;    /* CA the coordinator's certificate must chain to */
	const char *cert;  /* client certificate (mTLS), with key */
	const char *key;
};

enum { CTL_OPT_TLS_CA = 0x1000, CTL_OPT_TLS_CERT, CTL_OPT_TLS_KEY };

/* Entries for a command's struct option table. */
#define CTL_TLS_LONGOPTS                                                                    \
	{ "tls-ca", required_argument, NULL, CTL_OPT_TLS_CA },                              \
	{ "tls-cert", required_argument, NULL, CTL_OPT_TLS_CERT },                          \
	{ "tls-key", required_argument, NULL, CTL_OPT_TLS_KEY }

/* Their lines in a command's --help; pad: the spaces that put the descriptions in the
 * command's column (column 21 + strlen(pad)). */
#define CTL_TLS_USAGE(pad)                                                                   \
	"      --tls-ca FILE  " pad "talk TLS to the cluster, trusting this PEM CA\n"           \
	"                     " pad "(default $FERRY_TLS_CA; with --tls-cert only: gRPC's\n"   \
	"                     " pad "default roots)\n"                                         \
	"      --tls-cert FILE" pad "PEM client certificate, for a cluster that requires\n"    \
	"                     " pad "one (mTLS; default $FERRY_TLS_CERT)\n"                    \
	"      --tls-key FILE " pad "its PEM private key (default $FERRY_TLS_KEY)\n"

/* Stores getopt's c (one of CTL_OPT_TLS_*) with its argument. */
void ctl_tls_opt(struct ctl_tls *t, int c, const char *arg);
/* After parsing: fills what argv did not give from $FERRY_TLS_CA, $FERRY_TLS_CERT and
 * $FERRY_TLS_KEY, then checks that cert and key come together. Returns 0 or -EINVAL with
 * err naming the options. No side effects. */
int ctl_tls_finish(struct ctl_tls *t, struct fr_error *err);
/* True when argv (not the environment) gave any of them. */
bool ctl_tls_given(const struct ctl_tls *t);

/* Resets getopt state so a parser can run more than once in a process. */
void ctl_getopt_reset(void);

#endif
