/* SPDX-License-Identifier: Apache-2.0 */
/*
 * gpu.h - a worker's experts on an NVIDIA GPU: the moe_device_ops (moe.h) that a slot table
 * calls, over kernels/cuda. Built only with CUDA (-Dcuda), in its own library, so that what
 * does not use a GPU links no device code.
 */
#ifndef FERRY_MOE_GPU_H
#define FERRY_MOE_GPU_H

#include "common/common.h"
#include "moe/moe.h"

struct moe_gpu;

/* Opens CUDA device `device` with two streams: one that computes, one that loads experts
 * (a table loading during a live rebalance does not stall the one serving). Errors: -ENODEV
 * (no such device or driver), -ENOMEM, -EIO; err says which and why. */
int moe_gpu_open(int device, struct moe_gpu **ret, struct fr_error *err);
void moe_gpu_close(struct moe_gpu *g); /* NULL is fine; after every table using it */
/* "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB)" */
const char *moe_gpu_describe(const struct moe_gpu *g);

/* For moe_slots_use_device(table, &moe_gpu_ops, g). Weights in other dtypes than bf16 are
 * rounded to bf16 as they are copied; the layer's products take bf16 inputs with fp32 sums. */
extern const struct moe_device_ops moe_gpu_ops;

#endif /* FERRY_MOE_GPU_H */
