/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_gpu_module - finding and loading the GPU module (moe/gpu_load.c) as ferry-worker does
 * for [compute] device = cuda:N, on any machine: the module named by FERRY_GPU_MODULE loads
 * and has this ABI; a missing file and a library that is not the module are refused with
 * messages that say so; opening a device works where the driver sees one and fails with
 * -ENODEV and the driver's reason where it does not (as on a build machine).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "moe/gpu.h"
#include "tests/test.h"

int main(void)
{
	const char *path = getenv("FERRY_GPU_MODULE");
	const struct moe_gpu_module *m = NULL;
	struct fr_error err = { { 0 } };
	struct moe_gpu *g = NULL;

	if (!path) {
		fprintf(stderr, "FERRY_GPU_MODULE is not set (meson test sets it)\n");
		return 1;
	}
	setenv("FERRY_GPU_MODULE", "/nonexistent/libferry-gpu.so", 1);
	t_expect_err("missing module", moe_gpu_module_load(&m, &err), -ENOENT, &err,
		     "FERRY_GPU_MODULE: ", "/nonexistent/libferry-gpu.so");
	setenv("FERRY_GPU_MODULE", "libm.so.6", 1);
	t_expect_err("not a module", moe_gpu_module_load(&m, &err), -EPROTO, &err,
		     "libm.so.6: not a Ferry GPU module", NULL);
	setenv("FERRY_GPU_MODULE", path, 1);
	CHECK(moe_gpu_module_load(&m, &err) == 0);
	if (!m) {
		fprintf(stderr, "FAIL load %s: %s\n", path, err.msg);
		return 1;
	}
	CHECK(m->abi == MOE_GPU_ABI && m->open && m->close && m->describe && m->ops &&
	      m->ops->load && m->ops->unload && m->ops->compute && m->pin && m->unpin &&
	      m->engine_ops && m->engine_ops->matmul && m->engine_ops->attention &&
	      m->dmabuf_alloc && m->dmabuf_free && m->ops->compute_dev && m->ops->to_host &&
	      m->ops->to_dev);
	printf("ok   %s: ABI %d, device ops \"%s\"\n", path, m->abi, m->ops->name);
	int rc = m->open(0, &g, &err);
	if (rc == 0) {
		printf("ok   cuda:0: %s\n", m->describe(g));
		/* GPUDirect RDMA's export: a dma-buf of 2 MiB, or a refusal that says why */
		void *d = NULL;
		int fd = -1;
		CHECK(m->dmabuf_alloc(g, 4096, &d, &fd, &err) == -EINVAL);
		rc = m->dmabuf_alloc(g, 2u << 20, &d, &fd, &err);
		CHECK(rc == 0 ? fd >= 0 && d != NULL : rc == -EOPNOTSUPP && err.msg[0]);
		printf("%s cuda:0 dma-buf export: %s\n", rc == 0 || rc == -EOPNOTSUPP ? "ok  " : "FAIL",
		       rc == 0 ? "a dma-buf of 2 MiB" : err.msg);
		if (rc == 0)
			m->dmabuf_free(g, d, fd);
		m->close(g);
	} else {
		t_expect_err("no device here", rc, -ENODEV, &err, "cuda:0: ", NULL);
	}
	return t_failures != 0;
}
