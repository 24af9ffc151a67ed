/* SPDX-License-Identifier: Apache-2.0 */
/* ferryctl - Ferry's admin and client CLI. */
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"

static void usage(FILE *f)
{
	fprintf(f, "Usage: ferryctl COMMAND [OPTIONS]\n\nCommands:\n");
	for (const struct ctl_cmd *const *c = ctl_cmds; *c; c++)
		fprintf(f, "  %-12s %s\n", (*c)->name, (*c)->summary);
	fprintf(f, "\n`ferryctl COMMAND --help` describes a command.\n"
		   "Exit codes: 0 success, 1 failure (bad model, I/O, server error), 2 usage error.\n"
		   "Environment: FERRY_LOG=info|debug|comp=level,... FERRY_ISA=scalar|avx2|avx512,\n"
		   "FERRY_THREADS=N (kernel threads); FERRY_CLUSTER=ADDR and FERRY_TLS_CA,\n"
		   "FERRY_TLS_CERT, FERRY_TLS_KEY=FILE for the commands that talk to a cluster\n"
		   "(their --cluster and --tls-ca, --tls-cert, --tls-key).\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return CTL_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return CTL_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("ferryctl %s\n", FERRY_VERSION);
		return CTL_EXIT_OK;
	}
	for (const struct ctl_cmd *const *c = ctl_cmds; *c; c++)
		if (strcmp(argv[1], (*c)->name) == 0)
			return (*c)->main(argc - 1, argv + 1);
	fprintf(stderr, "ferryctl: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return CTL_EXIT_USAGE;
}
