/* SPDX-License-Identifier: Apache-2.0 */
/*
 * kn_cuda.h - Ferry's kernels on an NVIDIA GPU: the routed experts of one worker and layer
 * (permute, grouped GEMMs through cuBLAS, SwiGLU, weighted un-permute) and the row ops
 * around them. The CPU kernels (kernels/kernels.h) are the reference each op is tested
 * against (tests/gpu/).
 *
 * Conventions: a struct kn_cuda is one device, one stream and one cuBLAS handle; every op
 * is queued on that stream and returns 0 or a negative errno (CUDA and cuBLAS statuses are
 * converted once, in context.cu: -ENODEV no device or driver, -ENOMEM out of device memory,
 * -EINVAL a bad argument, -EOPNOTSUPP not supported on this device or platform, -EIO
 * anything else), with the CUDA message kept for
 * kn_cuda_error(). Pointers marked "device" are device memory; "host" ones are read before
 * the call returns. Weights are bf16 (uint16_t), activations f32 unless said otherwise.
 */
#ifndef FERRY_KN_CUDA_H
#define FERRY_KN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kn_cuda;

/* GPUs the driver sees: 0 and *ret_n, or -ENODEV (no driver, no device) with the reason
 * in why[why_len] when why is not NULL. */
int kn_cuda_device_count(int *ret_n, char *why, size_t why_len);

int kn_cuda_create(int device, struct kn_cuda **ret);
void kn_cuda_destroy(struct kn_cuda *c); /* NULL is fine */
/* The last failure's message ("" when none). */
const char *kn_cuda_error(const struct kn_cuda *c);
/* Device name and memory, for logs ("NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB"). */
int kn_cuda_describe(struct kn_cuda *c, char *buf, size_t len);

int kn_cuda_alloc(struct kn_cuda *c, size_t bytes, void **ret);
void kn_cuda_free(struct kn_cuda *c, void *p);
int kn_cuda_upload(struct kn_cuda *c, void *dst, const void *src, size_t bytes);
/* Copies back and waits for everything queued before it. */
int kn_cuda_download(struct kn_cuda *c, void *dst, const void *src, size_t bytes);
int kn_cuda_sync(struct kn_cuda *c);
/* Page-locks host memory [p, p + bytes) (cudaHostRegister, portable to every context):
 * copies between it and the device then go straight by DMA, without the driver's staging
 * copy through a pinned bounce buffer, and can overlap compute. Errors: -EINVAL (already
 * registered, or not memory the driver can lock), -ENOMEM (the driver could not lock it),
 * -EOPNOTSUPP (the platform cannot register host memory), -EIO; kn_cuda_error() says why.
 * kn_cuda_host_unregister() undoes it (p as registered); the memory must stay mapped until
 * then. */
int kn_cuda_host_register(struct kn_cuda *c, void *p, size_t bytes);
int kn_cuda_host_unregister(struct kn_cuda *c, void *p);
/* GPUDirect RDMA: device memory [p, p + bytes) (from kn_cuda_alloc, page-aligned, bytes a
 * multiple of 4096) exported as a dma-buf, whose fd (*ret_fd, the caller's to close) a NIC
 * registers (ibv_reg_dmabuf_mr, tp_mem_register_dmabuf) to read and write it without the
 * host. Through the driver's cuMemGetHandleForAddressRange, found at run time. Errors:
 * -EOPNOTSUPP (the driver, GPU or kernel cannot: kn_cuda_error() says which), -EINVAL,
 * -EIO. */
int kn_cuda_dmabuf_export(struct kn_cuda *c, void *p, size_t bytes, int *ret_fd);
/* dst = src, bytes of device memory, queued. */
int kn_cuda_copy(struct kn_cuda *c, void *dst, const void *src, size_t bytes);
/* Device time between a mark and the next: kn_cuda_mark(c) queues an event;
 * kn_cuda_elapsed_ms(c, &ms) queues a second, waits for it and gives the time between. */
int kn_cuda_mark(struct kn_cuda *c);
int kn_cuda_elapsed_ms(struct kn_cuda *c, double *ret_ms);

/* ---- row ops (one .cu each) --------------------------------------------------------------- */

/* y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * g, t < n rows of dim. y may be x. */
int kn_cuda_rmsnorm(struct kn_cuda *c, float *y, const float *x, const float *g, int n,
		    int dim, float eps);
/* out[i] = silu(gate[i]) * up[i], i < n (f32 out; out may be gate). */
int kn_cuda_swiglu(struct kn_cuda *c, float *out, const float *gate, const float *up, size_t n);
/* The same, rounded to bf16 for the next GEMM. */
int kn_cuda_swiglu_bf16(struct kn_cuda *c, uint16_t *out, const float *gate, const float *up,
			size_t n);
/* dst[i] = bf16(src[i]), round to nearest even (kn_f32_to_bf16). */
int kn_cuda_f32_to_bf16(struct kn_cuda *c, uint16_t *dst, const float *src, size_t n);
/* dst[i] = src[i] widened (exact). */
int kn_cuda_bf16_to_f32(struct kn_cuda *c, float *dst, const uint16_t *src, size_t n);
/* GPUDirect RDMA: makes what a NIC wrote into this device's memory, and that the host saw
 * complete, visible to the work queued after (cudaDeviceFlushGPUDirectRDMAWrites). */
int kn_cuda_flush_rdma_writes(struct kn_cuda *c);
/* Permute: dst[row[p]] = bf16(src[tok[p]]), p < n_pairs, rows of dim (device arrays). */
int kn_cuda_permute(struct kn_cuda *c, uint16_t *dst, const float *src, const int32_t *tok,
		    const int32_t *row, int n_pairs, int dim);
/* The same with the rows kept f32 (dst[row[p]] = src[tok[p]]): for the exact products. */
int kn_cuda_permute_f32(struct kn_cuda *c, float *dst, const float *src, const int32_t *tok,
			const int32_t *row, int n_pairs, int dim);
/* Weighted un-permute: out[t] = sum over p in [pair_off[t], pair_off[t + 1]) of
 * weight[p] * part[row[p]], in p order (deterministic; no atomics), t < n_tok. */
int kn_cuda_unpermute(struct kn_cuda *c, float *out, const float *part, const int32_t *pair_off,
		      const int32_t *row, const float *weight, int n_tok, int dim);

/* x[n][dim] in place, each row (kn_ops softmax). */
int kn_cuda_softmax(struct kn_cuda *c, float *x, int n, int dim);
/* kn_rope() on x [n][n_heads][head_dim] in place, pos [n] (device). */
int kn_cuda_rope(struct kn_cuda *c, float *x, int n, int n_heads, int head_dim,
		 const int32_t *pos, float theta);
/* out[t] = table[ids[t]], table [vocab][dim] of dtype dt (BF16 or F32), out f32 [n][dim],
 * ids [n] (device); an id out of range gives a row of NaN (the caller validates ids). */
int kn_cuda_embed(struct kn_cuda *c, float *out, const void *table, enum kn_dtype dt, int vocab,
		  int dim, const int32_t *ids, int n);
/* kn_gate() for n tokens: logits [n][o->n_experts] (device), the choice into ret_idx and
 * ret_w [n][o->k] (device). o is read on the host; its bias pointer is ignored: pass the
 * device copy as bias (or NULL). At most 6144 experts. */
int kn_cuda_gate(struct kn_cuda *c, const float *logits, int n, const struct kn_gate_opts *o,
		 const float *bias, int32_t *ret_idx, float *ret_w);
/* kn_attention_paged() on the device: out, q [n][n_heads][hd]; kp, vp [n_blocks][block_size]
 * [n_kv_heads][hd]; blocks, pos (device); every pos[t] < max_ctx. Scores go to scratch that
 * c keeps (n * n_heads * max_ctx floats). */
int kn_cuda_attention_paged(struct kn_cuda *c, float *out, const float *q, const float *kp,
			    const float *vp, const int32_t *blocks, int block_size, int n,
			    const int32_t *pos, int n_heads, int n_kv_heads, int head_dim,
			    int max_ctx);
/* The same for n rows of several sequences (the coordinator's batch): row t belongs to
 * sequence seq[t], whose blocks are table[seq[t] * max_blocks ...] (all device). */
int kn_cuda_attention_rows(struct kn_cuda *c, float *out, const float *q, const float *kp,
			   const float *vp, const int32_t *table, int max_blocks,
			   const int32_t *seq, int block_size, int n, const int32_t *pos,
			   int n_heads, int n_kv_heads, int head_dim, int max_ctx);
/* The new rows' keys and values into the paged cache before attending: row t (k, v
 * [n][kv_dim]) to row pos[t] % block_size of block table[seq[t] * max_blocks + pos[t] /
 * block_size] of kp, vp [n_blocks][block_size][kv_dim] (all device). */
int kn_cuda_kv_write(struct kn_cuda *c, float *kp, float *vp, const float *k, const float *v,
		     const int32_t *table, int max_blocks, const int32_t *seq, const int32_t *pos,
		     int n, int block_size, int kv_dim);
/* y[i] += x[i], i < n: the residual connections. */
int kn_cuda_add(struct kn_cuda *c, float *y, const float *x, size_t n);
/* out[t] = the index of row t's largest value, x [n][dim], out [n] (device): greedy
 * sampling without copying the logits back. The first of equal maxima, as kn_argmax();
 * rows with NaN may differ from it. */
int kn_cuda_argmax(struct kn_cuda *c, int32_t *out, const float *x, int n, int dim);

/* ---- grouped GEMM (cuBLAS) ---------------------------------------------------------------- */

enum kn_cuda_gemm {
	KN_CUDA_GEMM_GROUPED = 0, /* cublasGemmGroupedBatchedEx: one problem per expert */
	KN_CUDA_GEMM_PADDED,      /* cublasGemmBatchedEx: every expert padded to the largest */
	KN_CUDA_GEMM_AUTO,        /* kn_cuda_moe() only: the faster of the two for the shape,
				   * measured on this device (kn_cuda_gemm_pick) */
};

const char *kn_cuda_gemm_name(enum kn_cuda_gemm g); /* "grouped", "padded", "auto" */

/* KN_CUDA_GEMM_AUTO's choice for layers whose busiest expert has max_tokens tokens (shapes
 * are told apart by the bit length of that count): each method is timed on the first
 * KN_CUDA_TUNE_TRIALS layers of the shape that come (device events around the layer; the
 * results are the same either way), then the faster one is kept for c's life. 0 with the
 * pick and both best times (ms[2], may be NULL) once decided; -EAGAIN while still trying. */
#define KN_CUDA_TUNE_TRIALS 3
int kn_cuda_gemm_pick(const struct kn_cuda *c, int max_tokens, enum kn_cuda_gemm *ret,
		      float *ms);

/* For e < n: y[e][0..m[e])[rows] = x[e][0..m[e])[cols] . w[e]^T, w[e] bf16 [rows][cols],
 * x[e] bf16, y[e] f32 (all device pointers, held in host arrays). Experts with m[e] = 0 are
 * skipped. KN_CUDA_GEMM_PADDED computes max(m) rows for every expert: each x[e] and y[e]
 * must then have room for that many rows (the rows past m[e] are computed and ignored). */
int kn_cuda_gemm_bf16(struct kn_cuda *c, enum kn_cuda_gemm how, int n, const int *m, int rows,
		      int cols, const uint16_t *const *w, const uint16_t *const *x,
		      float *const *y);

/* One dense product, y[n][rows] = x[n][cols] . W^T (W bf16 [rows][cols], x bf16, y f32): the
 * lm_head's shape, and the ceiling bench/gpu compares the grouped products with. */
int kn_cuda_matmul_bf16(struct kn_cuda *c, float *y, const uint16_t *x, const uint16_t *w, int n,
			int rows, int cols);

/* ---- the exact precision (exact.cu): f32 activations, CUDA cores ------------------------- */

/* y[n][rows] = x[n][cols] . W^T with x f32 and W [rows][cols] of dtype wdt (BF16, widened
 * exactly, or F32), fp32 FMAs without tensor cores: kn_matmul() in KN_PRECISION_EXACT up
 * to the order of the sums (relative 1e-6). For checking ([engine] precision = exact), the
 * routers, and weights a checkpoint has in f32. */
int kn_cuda_matmul_f32(struct kn_cuda *c, float *y, const float *x, const void *w,
		       enum kn_dtype wdt, int n, int rows, int cols);
/* The experts' products in that arithmetic: for e < n, y[e][0..m[e])[rows] =
 * x[e][0..m[e])[cols] . w[e]^T, x[e] f32, w[e] of dtype wdt (device pointers in host
 * arrays); experts with m[e] = 0 are skipped. */
int kn_cuda_gemm_f32(struct kn_cuda *c, enum kn_dtype wdt, int n, const int *m, int rows,
		     int cols, const void *const *w, const float *const *x, float *const *y);

/* ---- the routed experts of one worker and layer (moe.cu) ---------------------------------- */

struct kn_cuda_expert {
	const void *gate; /* [inter][hidden], device */
	const void *up;   /* [inter][hidden], device */
	const void *down; /* [hidden][inter], device */
	enum kn_dtype dtype; /* KN_DTYPE_BF16, or KN_DTYPE_F32 (a checkpoint's f32 weights) */
};

/* What moe_compute() (moe/moe.h) takes: each token's (slot, weight) pairs. */
struct kn_cuda_moe_batch {
	int n_tok;
	const float *x;          /* [n_tok][hidden] f32, device */
	const int32_t *pair_off; /* [n_tok + 1], host */
	const int32_t *slot;     /* [n_pairs] slot index, host */
	const float *weight;     /* [n_pairs] routing weight, host */
};

/* out[t] = sum over t's pairs of weight * FFN_slot(x[t]) (SwiGLU), out [n_tok][hidden] f32,
 * device, overwritten: permute (gather each slot's tokens) -> GEMM gate and up -> SwiGLU ->
 * GEMM down -> weighted un-permute. prec KN_PRECISION_FAST: the tokens and the SwiGLU
 * rounded to bf16, products on the tensor cores through cuBLAS as `how` says (AUTO: the
 * faster per shape, kn_cuda_gemm_pick; a layer timed for it waits for the stream);
 * KN_PRECISION_EXACT: everything f32, the products kn_cuda_gemm_f32's (how is then not
 * used): the CPU worker's exact arithmetic. Every slot with weights must have the same
 * dtype; F32 weights compute exactly in both precisions (as on the CPU). Scratch is owned by c and grows to the largest
 * batch seen. Errors: -EINVAL (a slot out of range or without weights), -ENOMEM, -EIO. */
int kn_cuda_moe(struct kn_cuda *c, enum kn_cuda_gemm how, enum kn_precision prec,
		const struct kn_cuda_expert *slots, int n_slots, int hidden, int inter,
		const struct kn_cuda_moe_batch *b, float *out);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_KN_CUDA_H */
