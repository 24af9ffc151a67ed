/* SPDX-License-Identifier: Apache-2.0 */
/*
 * context.cu - a device, its stream and cuBLAS handle; memory and copies; the conversion of
 * CUDA and cuBLAS statuses to negative errnos.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h> /* the driver API's types only: its functions come through the runtime */

#include "kernels/cuda/cuda-internal.h"

int kn_cuda__status(struct kn_cuda *c, cudaError_t st, const char *what)
{
	if (st == cudaSuccess)
		return 0;
	/* The runtime also keeps a failed call's status as the thread's last error, which
	 * the next launch check (kn_cuda__launched) would report again as that launch's:
	 * reported here, it is taken back (a sticky error stays, as it should). */
	(void)cudaGetLastError();
	if (c)
		snprintf(c->err, sizeof(c->err), "%s: %s (%s)", what, cudaGetErrorString(st),
			 cudaGetErrorName(st));
	switch (st) {
	case cudaErrorMemoryAllocation:
		return -ENOMEM;
	case cudaErrorNoDevice:
	case cudaErrorInsufficientDriver:
	case cudaErrorInvalidDevice:
		return -ENODEV;
	case cudaErrorInvalidValue:
	case cudaErrorHostMemoryAlreadyRegistered:
		return -EINVAL;
	case cudaErrorNotSupported:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

int kn_cuda__blas_status(struct kn_cuda *c, cublasStatus_t st, const char *what)
{
	if (st == CUBLAS_STATUS_SUCCESS)
		return 0;
	if (c)
		snprintf(c->err, sizeof(c->err), "%s: %s (%s)", what, cublasGetStatusString(st),
			 cublasGetStatusName(st));
	switch (st) {
	case CUBLAS_STATUS_ALLOC_FAILED:
		return -ENOMEM;
	case CUBLAS_STATUS_INVALID_VALUE:
		return -EINVAL;
	case CUBLAS_STATUS_NOT_SUPPORTED:
	case CUBLAS_STATUS_ARCH_MISMATCH:
		return -EOPNOTSUPP;
	default:
		return -EIO;
	}
}

int kn_cuda__reserve(struct kn_cuda *c, struct kn_cuda_buf *b, size_t need, const char *what)
{
	if (need <= b->bytes)
		return 0;
	/* a failure here shows again at the cudaMalloc below, or stays sticky */
	cudaError_t s1 = cudaStreamSynchronize(c->stream), s2 = cudaFree(b->p);
	if (s1 != cudaSuccess || s2 != cudaSuccess)
		(void)cudaGetLastError();
	b->p = NULL;
	b->bytes = 0;
	int rc = kn_cuda__status(c, cudaMalloc(&b->p, need), what);
	if (rc == 0)
		b->bytes = need;
	return rc;
}

int kn_cuda__invalid(struct kn_cuda *c, const char *what)
{
	if (c)
		snprintf(c->err, sizeof(c->err), "%s", what);
	return -EINVAL;
}

int kn_cuda_device_count(int *ret_n, char *why, size_t why_len)
{
	int n = 0;
	cudaError_t st = cudaGetDeviceCount(&n);

	if (st != cudaSuccess || n <= 0) {
		if (why && why_len)
			snprintf(why, why_len, "%s",
				 st != cudaSuccess ? cudaGetErrorString(st)
						   : "the driver sees no CUDA device");
		return -ENODEV;
	}
	*ret_n = n;
	return 0;
}

int kn_cuda_create(int device, struct kn_cuda **ret)
{
	struct kn_cuda *c = (struct kn_cuda *)calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return -ENOMEM;
	c->device = device;
	if ((rc = kn_cuda__status(c, cudaSetDevice(device), "cudaSetDevice")) < 0 ||
	    (rc = kn_cuda__status(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
				  "cudaStreamCreate")) < 0)
		goto fail;
	if ((rc = kn_cuda__blas_status(c, cublasCreate(&c->blas), "cublasCreate")) < 0) {
		c->blas = NULL;
		goto fail;
	}
	if ((rc = kn_cuda__blas_status(c, cublasSetStream(c->blas, c->stream),
				       "cublasSetStream")) < 0)
		goto fail;
	for (int i = 0; i < 2; i++)
		if ((rc = kn_cuda__status(c, cudaEventCreate(&c->ev[i]), "cudaEventCreate")) < 0 ||
		    (rc = kn_cuda__status(c, cudaEventCreate(&c->tune_ev[i]),
					  "cudaEventCreate")) < 0)
			goto fail;
	for (int b = 0; b < KN_CUDA_TUNE_BUCKETS; b++)
		c->tune[b].pick = -1;
	*ret = c;
	return 0;
fail:
	fprintf(stderr, "kn_cuda: device %d: %s\n", device, c->err);
	kn_cuda_destroy(c);
	return rc;
}

void kn_cuda_destroy(struct kn_cuda *c)
{
	if (!c)
		return;
	cudaSetDevice(c->device);
	if (c->stream)
		cudaStreamSynchronize(c->stream);
	cudaFree(c->scratch.p);
	cudaFree(c->ptrs.p);
	cudaFree(c->attn.p);
	free(c->host_idx);
	for (int i = 0; i < 2; i++) {
		if (c->ev[i])
			cudaEventDestroy(c->ev[i]);
		if (c->tune_ev[i])
			cudaEventDestroy(c->tune_ev[i]);
	}
	if (c->blas)
		cublasDestroy(c->blas);
	if (c->stream)
		cudaStreamDestroy(c->stream);
	free(c);
}

const char *kn_cuda_error(const struct kn_cuda *c)
{
	return c ? c->err : "no CUDA context";
}

int kn_cuda_describe(struct kn_cuda *c, char *buf, size_t len)
{
	struct cudaDeviceProp p;
	kn_cuda__enter(c);
	int rc = kn_cuda__status(c, cudaGetDeviceProperties(&p, c->device),
				 "cudaGetDeviceProperties");
	if (rc < 0)
		return rc;
	snprintf(buf, len, "%s, sm_%d%d, %d SMs, %.1f GiB", p.name, p.major, p.minor,
		 p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30));
	return 0;
}

int kn_cuda_alloc(struct kn_cuda *c, size_t bytes, void **ret)
{
	void *p = NULL;
	kn_cuda__enter(c);
	int rc = kn_cuda__status(c, cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
	if (rc < 0)
		return rc;
	*ret = p;
	return 0;
}

void kn_cuda_free(struct kn_cuda *c, void *p)
{
	if (!p)
		return;
	kn_cuda__enter(c);
	if (cudaFree(p) != cudaSuccess) /* nothing to do about it; not the next launch's error */
		(void)cudaGetLastError();
}

int kn_cuda_upload(struct kn_cuda *c, void *dst, const void *src, size_t bytes)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
						  c->stream), "upload");
}

int kn_cuda_download(struct kn_cuda *c, void *dst, const void *src, size_t bytes)
{
	kn_cuda__enter(c);
	int rc = kn_cuda__status(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
						    c->stream), "download");
	return rc < 0 ? rc : kn_cuda_sync(c);
}

int kn_cuda_host_register(struct kn_cuda *c, void *p, size_t bytes)
{
	if (!p || !bytes)
		return kn_cuda__invalid(c, "cudaHostRegister: no memory");
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaHostRegister(p, bytes, cudaHostRegisterPortable),
			       "cudaHostRegister");
}

int kn_cuda_host_unregister(struct kn_cuda *c, void *p)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaHostUnregister(p), "cudaHostUnregister");
}

int kn_cuda_sync(struct kn_cuda *c)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
}

int kn_cuda_copy(struct kn_cuda *c, void *dst, const void *src, size_t bytes)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
						  c->stream), "device copy");
}

int kn_cuda_mark(struct kn_cuda *c)
{
	kn_cuda__enter(c);
	return kn_cuda__status(c, cudaEventRecord(c->ev[0], c->stream), "cudaEventRecord");
}

int kn_cuda__elapsed(struct kn_cuda *c, cudaEvent_t start, cudaEvent_t end, float *ret_ms)
{
	float ms = 0;
	int rc = kn_cuda__status(c, cudaEventRecord(end, c->stream), "cudaEventRecord");
	if (rc == 0)
		rc = kn_cuda__status(c, cudaEventSynchronize(end), "cudaEventSynchronize");
	if (rc == 0)
		rc = kn_cuda__status(c, cudaEventElapsedTime(&ms, start, end),
				     "cudaEventElapsedTime");
	if (rc == 0)
		*ret_ms = ms;
	return rc;
}

int kn_cuda_elapsed_ms(struct kn_cuda *c, double *ret_ms)
{
	float ms = 0;
	kn_cuda__enter(c);
	int rc = kn_cuda__elapsed(c, c->ev[0], c->ev[1], &ms);
	if (rc == 0)
		*ret_ms = ms;
	return rc;
}

/* cuMemGetHandleForAddressRange from the driver the runtime loaded (no link to libcuda). */
typedef CUresult (*get_handle_fn)(void *handle, CUdeviceptr dptr, size_t size,
				  CUmemRangeHandleType type, unsigned long long flags);

int kn_cuda_dmabuf_export(struct kn_cuda *c, void *p, size_t bytes, int *ret_fd)
{
	enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
	void *fn = NULL;
	int fd = -1;

	kn_cuda__enter(c);
	if (!p || !bytes || bytes % 4096 || (uintptr_t)p % 4096)
		return kn_cuda__invalid(c, "dma-buf export: memory not page-aligned");
	int rc = kn_cuda__status(c, cudaGetDriverEntryPointByVersion("cuMemGetHandleForAddressRange",
								      &fn, 11070, cudaEnableDefault,
								      &q),
				 "cudaGetDriverEntryPointByVersion");
	if (rc < 0)
		return rc;
	if (q != cudaDriverEntryPointSuccess || !fn) {
		snprintf(c->err, sizeof(c->err), "dma-buf export: the CUDA driver has no "
			 "cuMemGetHandleForAddressRange (driver older than CUDA 11.7)");
		return -EOPNOTSUPP;
	}
	CUresult r = ((get_handle_fn)fn)(&fd, (CUdeviceptr)(uintptr_t)p, bytes,
					 CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
	if (r != CUDA_SUCCESS) {
		snprintf(c->err, sizeof(c->err), "dma-buf export: cuMemGetHandleForAddressRange: "
			 "CUresult %d%s", (int)r,
			 r == CUDA_ERROR_NOT_SUPPORTED ? " (not supported: the GPU, its driver or "
							 "the kernel cannot export dma-bufs)" : "");
		return r == CUDA_ERROR_NOT_SUPPORTED ? -EOPNOTSUPP
		       : r == CUDA_ERROR_INVALID_VALUE ? -EINVAL : -EIO;
	}
	*ret_fd = fd;
	return 0;
}
