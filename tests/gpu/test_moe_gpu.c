/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_moe_gpu - a worker's slot table on a GPU (moe_slots_use_device with the ops of the
 * GPU module, libferry-gpu.so, loaded as ferry-worker loads it) against the same table on
 * the CPU: a generated tiny checkpoint in f32 and in bf16 (the GPU keeps f32 weights f32
 * and computes them exactly), every expert of every MoE layer in a slot,
 * random tokens and routing, a token with no pairs, a batch of none, a slot replaced. In
 * the fast precision the GPU multiplies bf16 inputs with fp32 sums: outputs within 1e-2
 * (relative norm) of the CPU's exact ones; in the exact one (f32 activations), and for
 * the f32 checkpoint in both, within 1e-5. Without a CUDA device this exits 77 and says why.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kn_cuda.h"
#include "model/model.h"
#include "moe/gpu.h"
#include "moe/moe.h"
#include "tests/test.h"
#include "tests/gpu/gpu_test.h"

static const struct moe_gpu_module *mod;

static void run(struct moe_gpu *g, enum kn_dtype dt, const char *dir)
{
	struct model_gen_opts go = { .preset = MODEL_PRESET_TINY, .dtype = dt, .seed = 7, .shards = 1 };
	struct fr_error err = { { 0 } };
	struct model_config cfg;
	struct model_ckpt *ck = NULL;
	struct moe_slots *cpu = NULL, *gpu = NULL;

	if (model_gen(&go, dir, &err) < 0 || model_config_load(dir, &cfg, &err) < 0 ||
	    model_ckpt_open(dir, &ck, &err) < 0) {
		fprintf(stderr, "FAIL checkpoint: %s\n", err.msg);
		t_failures++;
		return;
	}
	int E = cfg.n_routed_experts, h = cfg.hidden_size, k = cfg.num_experts_per_tok;
	CHECK(moe_slots_create(&cfg, E, &cpu) == 0);
	CHECK(moe_slots_create(&cfg, E, &gpu) == 0);
	CHECK(moe_slots_use_device(gpu, mod->ops, g) == 0);
	for (int l = 0; l < cfg.num_hidden_layers; l++) {
		int ml = model_moe_index(&cfg, l);
		if (ml < 0)
			continue;
		for (int e = 0; e < E; e++) {
			struct model_ffn ffn;
			/* slots in reverse order of experts: slot s holds expert E-1-s */
			CHECK(model_expert_bind(ck, l, e, &ffn, &err) == 0);
			CHECK(moe_slot_set(cpu, ml, E - 1 - e, e, &ffn) == 0);
			CHECK(moe_slot_set(gpu, ml, E - 1 - e, e, &ffn) == 0);
		}
	}
	CHECK(moe_slots_use_device(gpu, mod->ops, g) == -EBUSY);
	enum { T = 9 };
	int32_t poff[T + 1], *slot = xcalloc((size_t)T * k, 4);
	float *wt = xcalloc((size_t)T * k, 4), *x = xcalloc((size_t)T * h, 4);
	float *a = xcalloc((size_t)T * h, 4), *b = xcalloc((size_t)T * h, 4);
	poff[0] = 0;
	for (int t = 0; t < T; t++) {
		int n = t == 3 ? 0 : k; /* token 3 has no pairs */
		for (int j = 0; j < n; j++) {
			slot[poff[t] + j] = (int)((t * 7 + j * 3) % E);
			wt[poff[t] + j] = 0.2f + 0.8f * (float)fr_rand_unit(&rng);
		}
		poff[t + 1] = poff[t] + n;
	}
	for (size_t i = 0; i < (size_t)T * h; i++)
		x[i] = (float)fr_rand_unit(&rng) * 2 - 1;
	struct moe_batch mb = { T, x, poff, slot, wt };
	int n_moe = model_n_moe_layers(&cfg);
	for (int ml = 0; ml < n_moe; ml++) {
		kn_set_precision(KN_PRECISION_EXACT); /* the reference */
		CHECK(moe_compute(cpu, ml, &mb, a) == 0);
		for (int p = KN_PRECISION_EXACT; p <= KN_PRECISION_FAST; p++) {
			/* exact, and f32 weights in both precisions: f32 activations */
			double tol = p == KN_PRECISION_FAST && dt == KN_DTYPE_BF16 ? 1e-2 : 1e-5;
			for (size_t i = 0; i < (size_t)T * h; i++)
				b[i] = NAN;
			kn_set_precision((enum kn_precision)p);
			CHECK(moe_compute(gpu, ml, &mb, b) == 0);
			double e = rel_err(b, a, (size_t)T * h);
			printf("%s %s checkpoint, %s, MoE layer %d, %d tokens x top-%d over %d slots: "
			       "rel err %.2e (tolerance %.0e)\n", e <= tol ? "ok  " : "FAIL",
			       kn_dtype_name(dt), kn_precision_name((enum kn_precision)p), ml, T, k,
			       E, e, tol);
			CHECK(e <= tol);
		}
		kn_set_precision(KN_PRECISION_EXACT);
	}
	/* frames in device memory (GPUDirect RDMA): the tokens already on the GPU in the
	 * wire's dtype, the partials written there (moe_compute_dev), against the host path
	 * (up to the GEMM method AUTO picks while it times both: 1e-5; a bf16 wire also up to
	 * a rounding flip of the narrowed partials: 5e-3) */
	{
		struct kn_cuda *cu = NULL;
		size_t nv = (size_t)T * h;
		uint16_t *x16 = xcalloc(nv, 2), *o16 = xcalloc(nv, 2);
		float *got = xcalloc(nv, 4), *ref16 = xcalloc(nv, 4);
		void *dx = NULL, *dout = NULL;
		CHECK(kn_cuda_create(0, &cu) == 0 && kn_cuda_alloc(cu, nv * 4, &dx) == 0 &&
		      kn_cuda_alloc(cu, nv * 4, &dout) == 0);
		kn_set_precision(KN_PRECISION_FAST);
		CHECK(moe_compute(gpu, 0, &mb, b) == 0); /* the host path, for the same bits */
		CHECK(kn_cuda_upload(cu, dx, x, nv * 4) == 0 && kn_cuda_sync(cu) == 0);
		struct moe_batch db = mb;
		db.x = dx;
		CHECK(moe_compute_dev(gpu, 0, &db, KN_DTYPE_F32, dout, KN_DTYPE_F32) == 0);
		CHECK(kn_cuda_download(cu, got, dout, nv * 4) == 0);
		double e = rel_err(got, b, nv);
		printf("%s frames in device memory, f32 wire: rel err %.2e to the host path\n",
		       e <= 1e-5 ? "ok  " : "FAIL", e);
		CHECK(e <= 1e-5);
		/* bf16 wire: the host path widens the tokens and narrows the partials */
		kn_from_f32(x16, KN_DTYPE_BF16, x, nv);
		kn_to_f32(ref16, x16, KN_DTYPE_BF16, nv);
		struct moe_batch hb = mb;
		hb.x = ref16;
		CHECK(moe_compute(gpu, 0, &hb, b) == 0);
		CHECK(kn_cuda_upload(cu, dx, x16, nv * 2) == 0 && kn_cuda_sync(cu) == 0);
		CHECK(moe_compute_dev(gpu, 0, &db, KN_DTYPE_BF16, dout, KN_DTYPE_BF16) == 0);
		CHECK(kn_cuda_download(cu, o16, dout, nv * 2) == 0);
		kn_to_f32(got, o16, KN_DTYPE_BF16, nv);
		kn_from_f32(o16, KN_DTYPE_BF16, b, nv);
		kn_to_f32(ref16, o16, KN_DTYPE_BF16, nv);
		e = rel_err(got, ref16, nv);
		printf("%s frames in device memory, bf16 wire: rel err %.2e to the host path\n",
		       e <= 5e-3 ? "ok  " : "FAIL", e);
		CHECK(e <= 5e-3);
		kn_set_precision(KN_PRECISION_EXACT);
		kn_cuda_free(cu, dx);
		kn_cuda_free(cu, dout);
		kn_cuda_destroy(cu);
		free(x16);
		free(o16);
		free(got);
		free(ref16);
	}
	/* the same from and to pinned host memory (as a worker pins its frame buffers): the
	 * same bits as through the driver's staging; pinning twice is refused */
	{
		struct fr_error perr = { { 0 } };
		size_t bytes = (size_t)T * h * sizeof(float);
		float *px = xcalloc((size_t)T * h, 4), *pb = xcalloc((size_t)T * h, 4);
		memcpy(px, x, bytes);
		CHECK(mod->pin(g, px, bytes, &perr) == 0);
		CHECK(mod->pin(g, pb, bytes, &perr) == 0);
		CHECK(mod->pin(g, pb, bytes, &perr) == -EINVAL && perr.msg[0]);
		struct moe_batch pmb = { T, px, poff, slot, wt };
		CHECK(moe_compute(gpu, 0, &mb, b) == 0);
		CHECK(moe_compute(gpu, 0, &pmb, pb) == 0);
		bool same = memcmp(pb, b, bytes) == 0;
		printf("%s pinned host memory: the same bits as staged copies\n",
		       same ? "ok  " : "FAIL");
		CHECK(same);
		mod->unpin(g, px);
		mod->unpin(g, pb);
		free(px);
		free(pb);
	}
	/* replacing a slot's expert: the GPU table computes with the new one */
	struct model_ffn f0;
	int l0 = model_moe_layer(&cfg, 0);
	CHECK(model_expert_bind(ck, l0, 0, &f0, &err) == 0);
	CHECK(moe_slot_set(cpu, 0, 1, 0, &f0) == 0);
	CHECK(moe_slot_set(gpu, 0, 1, 0, &f0) == 0);
	CHECK(moe_compute(cpu, 0, &mb, a) == 0);
	CHECK(moe_compute(gpu, 0, &mb, b) == 0);
	double e = rel_err(b, a, (size_t)T * h);
	printf("%s slot replaced: rel err %.2e\n", e <= 1e-2 ? "ok  " : "FAIL", e);
	CHECK(e <= 1e-2);
	struct moe_batch none = { 0, x, poff, slot, wt };
	CHECK(moe_compute(gpu, 0, &none, b) == 0);
	moe_slots_destroy(cpu);
	moe_slots_destroy(gpu);
	model_ckpt_close(ck);
	free(slot);
	free(wt);
	free(x);
	free(a);
	free(b);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int main(void)
{
	char dir[] = "/tmp/ferry-moe-gpu-XXXXXX";
	struct fr_error err = { { 0 } };
	struct moe_gpu *g = NULL;
	int n = 0, rc;

	if ((rc = gpu_test_start(&n)) != 0)
		return rc;
	if (moe_gpu_module_load(&mod, &err) < 0 || mod->open(0, &g, &err) < 0) {
		fprintf(stderr, "FAIL %s\n", err.msg);
		return 1;
	}
	printf("%s\n", mod->describe(g));
	CHECK(mod->open(n, &(struct moe_gpu *){ NULL }, &err) == -ENODEV);
	printf("ok   a device past the last: %s\n", err.msg);
	if (!mkdtemp(dir))
		return 1;
	run(g, KN_DTYPE_F32, dir);
	run(g, KN_DTYPE_BF16, dir);
	mod->close(g);
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return t_failures != 0;
}
