/* SPDX-License-Identifier: Apache-2.0 */
/* fuzz_cli.c - every ferryctl command's argument parser on arbitrary argv. The first byte
 * picks the command; the rest splits on NUL or newline into arguments. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum { MAX_ARGS = 32 };
	struct fr_error err = { { 0 } };
	char *argv[MAX_ARGS + 2];
	size_t n_cmds = 0;
	int argc = 1;

	if (size == 0 || size > 4096)
		return 0;
	while (ctl_cmds[n_cmds])
		n_cmds++;
	const struct ctl_cmd *cmd = ctl_cmds[data[0] % n_cmds];
	char *buf = malloc(size);
	if (!buf)
		return 0;
	memcpy(buf, data + 1, size - 1);
	buf[size - 1] = '\0';
	argv[0] = (char *)cmd->name;
	for (char *p = buf; argc < MAX_ARGS && p < buf + size - 1;) {
		size_t len = strcspn(p, "\n");
		argv[argc++] = p;
		if (p + len >= buf + size - 1)
			break;
		p[len] = '\0';
		p += len + 1;
	}
	argv[argc] = NULL;
	cmd->parse_only(argc, argv, &err);
	free(buf);
	return 0;
}
