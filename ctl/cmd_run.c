/* SPDX-License-Identifier: Apache-2.0 */
#include <stdio.h>

#include "ctl/ctl.h"

static int run_main(int argc, char **argv)
{
	fprintf(stderr, "ferryctl run: not built yet\n");
	return CTL_EXIT_FAIL;
}

static int run_parse_only(int argc, char **argv, struct fr_error *err)
{
	return 0;
}

const struct ctl_cmd ctl_cmd_run = { "run", "run a model in this process", run_main,
				     run_parse_only };
