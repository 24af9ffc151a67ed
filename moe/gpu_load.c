/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu_load.c - finds and loads libferry-gpu.so (gpu.h) at run time, so that the daemons link
 * no CUDA library and a build with CUDA still runs where no CUDA runtime is installed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/gpu.h"

static int try_load(const char *path, const struct moe_gpu_module **ret, char *tried,
		    size_t tried_len, struct fr_error *err)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	size_t n = strlen(tried);

	if (!h) {
		snprintf(tried + n, tried_len - n, "%s%s", n ? "; " : "", dlerror());
		return -ENOENT;
	}
	const struct moe_gpu_module *(*entry)(void) =
		(const struct moe_gpu_module *(*)(void))dlsym(h, "ferry_gpu_module");
	const struct moe_gpu_module *m = entry ? entry() : NULL;
	if (!m || m->abi != MOE_GPU_ABI) {
		int abi = m ? m->abi : -1;
		dlclose(h);
		return fr_error_set(err, -EPROTO, "%s: not a Ferry GPU module of ABI %d (%s %d)",
				    path, MOE_GPU_ABI, m ? "it has" : "no ferry_gpu_module, ABI",
				    abi);
	}
	*ret = m; /* loaded for good: tables may call into it until exit */
	return 0;
}

int moe_gpu_module_load(const struct moe_gpu_module **ret, struct fr_error *err)
{
	char tried[1024] = "", exe[PATH_MAX], path[PATH_MAX + 64];
	const char *env = getenv("FERRY_GPU_MODULE");
	int rc;

	if (env && *env) {
		rc = try_load(env, ret, tried, sizeof(tried), err);
		if (rc == -ENOENT)
			fr_error_set(err, rc, "FERRY_GPU_MODULE: %s", tried);
		return rc;
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		const char *dir = dirname(exe);
		static const char *const rel[] = { "../moe/", "../lib/ferry/", "" };
		for (size_t i = 0; i < FR_ARRAY_SIZE(rel); i++) {
			snprintf(path, sizeof(path), "%s/%s%s", dir, rel[i], MOE_GPU_MODULE_NAME);
			if (access(path, F_OK) == 0)
				return (rc = try_load(path, ret, tried, sizeof(tried), err)) == -ENOENT
					       ? fr_error_set(err, rc, "%s", tried)
					       : rc;
		}
	}
	if ((rc = try_load(MOE_GPU_MODULE_NAME, ret, tried, sizeof(tried), err)) == -ENOENT)
		return fr_error_set(err, rc, "no GPU module (%s: built with -Dcuda=enabled and "
				    "installed beside ferry-worker, or set FERRY_GPU_MODULE): %s",
				    MOE_GPU_MODULE_NAME, tried);
	return rc;
}

int moe_gpu_pin_regions(const struct moe_gpu_module *m, struct moe_gpu *g,
			const struct moe_host_region *v, int n, void **pinned, const char *comp,
			const char *who)
{
	size_t bytes = 0;
	int k = 0;

	for (int i = 0; i < n; i++) {
		struct fr_error err = { { 0 } };
		if (m->pin(g, v[i].p, v[i].bytes, &err) < 0) {
			fr_warn(comp, "%s: the %s (%zu KiB) go through host staging: cannot pin them: "
				"%s", who, v[i].what, v[i].bytes >> 10, err.msg);
			continue;
		}
		pinned[k++] = v[i].p;
		bytes += v[i].bytes;
	}
	if (k)
		fr_info(comp, "%s: %d of %d host regions pinned for %s (%zu KiB): their copies to "
			"and from the device go by DMA", who, k, n, m->describe(g), bytes >> 10);
	return k;
}

void moe_gpu_unpin_regions(const struct moe_gpu_module *m, struct moe_gpu *g, void **pinned,
			   int *n)
{
	while (*n > 0)
		m->unpin(g, pinned[--*n]);
}
