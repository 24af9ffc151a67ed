/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu.h - a worker's experts on an NVIDIA GPU: the moe_device_ops (moe.h) that a slot table
 * calls, over kernels/cuda; and the coordinator's engine ops (kernels/kn_dev.h) there. Built only with CUDA (-Dcuda) as a module, libferry-gpu.so, that
 * ferry-worker loads when [compute] device names a GPU: the daemons link no CUDA library,
 * so one build runs on hosts with and without the CUDA runtime.
 */
#ifndef FERRY_MOE_GPU_H
#define FERRY_MOE_GPU_H

#include "common/common.h"
#include "kernels/kn_dev.h"
#include "moe/moe.h"

struct moe_gpu;

/* The module's functions (libferry-gpu.so exports ferry_gpu_module() returning them). */
struct moe_gpu_module {
	int abi; /* MOE_GPU_ABI */
	/* Opens CUDA device `device` with two streams: one that computes, one that loads
	 * experts (a table loading during a live rebalance does not stall the one serving).
	 * Errors: -ENODEV (no such device or driver), -ENOMEM, -EIO; err says which. */
	int (*open)(int device, struct moe_gpu **ret, struct fr_error *err);
	void (*close)(struct moe_gpu *g); /* NULL is fine; after every table using it */
	/* "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB)" */
	const char *(*describe)(const struct moe_gpu *g);
	/* For moe_slots_use_device(table, ops, g). Bf16 weights are copied as they are and
	 * the layer's products take bf16 inputs with fp32 sums on the tensor cores, or f32
	 * inputs on the CUDA cores in the exact precision; f32 and f16 weights are held as
	 * f32 and compute exactly in both precisions (as on the CPU). */
	const struct moe_device_ops *ops;
	/* Page-locks host memory that the device ops copy from or to (the frames' vectors,
	 * moe_server_host_regions()), so that those copies go by DMA. Errors: -EINVAL,
	 * -ENOMEM (the driver could not lock it), -EOPNOTSUPP, -EIO; err says which region and why. The
	 * caller then goes on with host staging (the driver's bounce buffer). unpin() takes
	 * back a pin() that succeeded, before the memory goes and before close(). */
	int (*pin)(struct moe_gpu *g, void *p, size_t bytes, struct fr_error *err);
	void (*unpin)(struct moe_gpu *g, void *p);
	/* GPUDirect RDMA: bytes (a multiple of 2 MiB) of device memory exported as a dma-buf
	 * (kn_cuda_dmabuf_export) for the NIC to register (tp_mem_register_dmabuf): its
	 * device address and the dma-buf's fd. Errors: -EOPNOTSUPP (the driver, GPU or kernel
	 * cannot), -EINVAL, -ENOMEM, -EIO; err says why. dmabuf_free() closes the fd and
	 * frees the memory, after the NIC's registration is gone. */
	int (*dmabuf_alloc)(struct moe_gpu *g, size_t bytes, void **ret_dev, int *ret_fd,
			    struct fr_error *err);
	void (*dmabuf_free)(struct moe_gpu *g, void *dev, int fd);
	/* The coordinator's engine on this device ([engine] device = cuda:N): the ops of
	 * kernels/kn_dev.h with the struct moe_gpu as their ctx, on its compute stream. */
	const struct kn_dev_ops *engine_ops;
};

#define MOE_GPU_ABI 4
#define MOE_GPU_MODULE_NAME "libferry-gpu.so"

/* The module's entry point, in libferry-gpu.so. */
const struct moe_gpu_module *ferry_gpu_module(void);

/* Loads the GPU module (gpu_load.c; no CUDA needed to call it): $FERRY_GPU_MODULE if set,
 * else beside the executable (../moe/ in a build tree, ../lib/ferry/ once installed), else
 * wherever the dynamic loader finds libferry-gpu.so. The module stays loaded. Errors:
 * -ENOENT (not found: a build without CUDA, or not installed) and -EPROTO (another ABI),
 * err saying what was tried. */
int moe_gpu_module_load(const struct moe_gpu_module **ret, struct fr_error *err);

/* Pins v[0..n) for g with m->pin, logging (component comp, prefix who) each region that
 * goes through host staging instead and a summary of those pinned; their addresses go into
 * pinned[] (room for n). Returns how many. moe_gpu_unpin_regions() takes them back. */
int moe_gpu_pin_regions(const struct moe_gpu_module *m, struct moe_gpu *g,
			const struct moe_host_region *v, int n, void **pinned, const char *comp,
			const char *who);
void moe_gpu_unpin_regions(const struct moe_gpu_module *m, struct moe_gpu *g, void **pinned,
			   int *n);

#endif /* FERRY_MOE_GPU_H */
