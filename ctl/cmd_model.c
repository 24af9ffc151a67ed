/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_model.c - placeholder, being written: `ferryctl model gen`. */
#include <stdio.h>

#include "ctl/ctl.h"

static int model_main(int argc, char **argv)
{
	fprintf(stderr, "ferryctl model: not built yet\n");
	return CTL_EXIT_FAIL;
}

static int model_parse_only(int argc, char **argv, struct fr_error *err)
{
	return 0;
}

const struct ctl_cmd ctl_cmd_model = { "model", "synthetic checkpoints (model gen)", model_main,
				       model_parse_only };
