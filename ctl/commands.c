/* SPDX-License-Identifier: Apache-2.0 */
#include <getopt.h>

#include "ctl/ctl.h"

const struct ctl_cmd *const ctl_cmds[] = {
	&ctl_cmd_run,
	&ctl_cmd_model,
	&ctl_cmd_tokenize,
	&ctl_cmd_detokenize,
#ifdef FERRY_HAVE_GRPC
	&ctl_cmd_up,
	&ctl_cmd_load,
	&ctl_cmd_generate,
	&ctl_cmd_score,
	&ctl_cmd_eval,
	&ctl_cmd_bench_serve,
#endif
	NULL,
};

void ctl_getopt_reset(void)
{
	/* glibc: optind = 0 re-initialises getopt completely. */
	optind = 0;
	opterr = 0;
}
