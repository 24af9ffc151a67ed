/* SPDX-License-Identifier: Apache-2.0 */
/* replay.c - main() for fuzz targets built without libFuzzer: feeds every file named on the
 * command line (directories: every file inside) to LLVMFuzzerTestOneInput once. A crash,
 * sanitizer report or hang here is a failed test. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
	char *buf;
	size_t len;
	struct fr_error err = { { 0 } };
	if (fr_read_file(path, 64u << 20, &buf, &len, &err) < 0) {
		fprintf(stderr, "replay: %s\n", err.msg);
		return -1;
	}
	LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int n = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			perror(argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			if (run_file(argv[i]) < 0)
				return 1;
			n++;
			continue;
		}
		struct dirent **ents;
		int m = scandir(argv[i], &ents, NULL, alphasort);
		if (m < 0) {
			perror(argv[i]);
			return 1;
		}
		for (int j = 0; j < m; j++) {
			char path[4096];
			if (ents[j]->d_name[0] != '.') {
				snprintf(path, sizeof(path), "%s/%s", argv[i], ents[j]->d_name);
				if (run_file(path) < 0)
					return 1;
				n++;
			}
			free(ents[j]);
		}
		free(ents);
	}
	printf("replayed %d inputs\n", n);
	return n > 0 ? 0 : 1;
}
