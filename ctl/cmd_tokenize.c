/* SPDX-License-Identifier: Apache-2.0 */
/* cmd_tokenize.c - placeholder, being written: `ferryctl tokenize|detokenize`. */
#include <stdio.h>

#include "ctl/ctl.h"

static int tok_main(int argc, char **argv)
{
	fprintf(stderr, "ferryctl tokenize: not built yet\n");
	return CTL_EXIT_FAIL;
}

static int tok_parse_only(int argc, char **argv, struct fr_error *err)
{
	return 0;
}

const struct ctl_cmd ctl_cmd_tokenize = { "tokenize", "text -> token ids", tok_main,
					  tok_parse_only };
const struct ctl_cmd ctl_cmd_detokenize = { "detokenize", "token ids -> text", tok_main,
					    tok_parse_only };
