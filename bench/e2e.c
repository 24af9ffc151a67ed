/* SPDX-License-Identifier: Apache-2.0 */
/*
 * e2e - end-to-end single-process throughput: prefill and decode tokens/s on a checkpoint,
 * peak RSS, the share of time per kernel, and both against this machine's roofline measured
 * in the same run: for a step of B tokens, min(read bandwidth x B / bytes the step must
 * stream, compute peak / FLOPs per token). The bytes count every weight the step touches:
 * attention, dense and shared FFNs, routers and lm_head once, and of each MoE layer's
 * routed experts the expected number B tokens reach (E (1 - (1 - k/E)^B)). FLOPs are 2 per
 * weight a token uses (its k experts). The peak is the fp32 FMA one, or the bf16 dot
 * product's under FERRY_PRECISION=fast (bench/peak.h).
 *
 * The prefill computes the logits of the prompt's last token, as serving does; with
 * --all-logits it computes every token's (llama.cpp's perplexity shape), and its roofline
 * counts the lm_head that many times. It also prints how many parallel regions (kernel-
 * thread wake-ups, kn_regions()) a decode step opens.
 *
 * --device cuda:N|twin runs the engine's device path ([engine] device); on a GPU its
 * products are fast (bf16 activations) unless FERRY_PRECISION=exact, as [engine]
 * precision = auto.
 *
 * Usage: e2e --model DIR [--prompt N] [--gen N] [--batch B] [--threads N] [--reps R]
 *            [--all-logits] [--device cpu|twin|cuda:N]
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench/peak.h"
#include "coordinator/config.h"
#include "coordinator/coordinator.h"
#include "coordinator/engine_dev.h"

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static size_t mat_bytes(const struct kn_mat *m)
{
	return (size_t)m->rows * m->cols * kn_dtype_size(m->dtype);
}

/* A step's weight traffic and arithmetic per kernel category (co_prof): B tokens reaching
 * `experts` routed experts per MoE layer, lm_rows of them wanting logits. */
struct phase_cost {
	double bytes[CO_PROF__COUNT], flops[CO_PROF__COUNT];
};

static void add_mat(struct phase_cost *pc, enum co_prof cat, const struct kn_mat *m, int rows_in)
{
	pc->bytes[cat] += (double)mat_bytes(m);
	pc->flops[cat] += 2.0 * m->rows * m->cols * rows_in;
}

static void phase_cost(const struct model_weights *w, int B, double experts, int lm_rows,
		       struct phase_cost *pc)
{
	const struct model_config *c = w->cfg;
	double expert_w = 3.0 * c->hidden_size * c->moe_intermediate_size;

	memset(pc, 0, sizeof(*pc));
	add_mat(pc, CO_PROF_LMHEAD, &w->lm_head, lm_rows);
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const struct model_layer *L = &w->layers[l];
		add_mat(pc, CO_PROF_QKV, &L->q, B);
		add_mat(pc, CO_PROF_QKV, &L->k, B);
		add_mat(pc, CO_PROF_QKV, &L->v, B);
		add_mat(pc, CO_PROF_O, &L->o, B);
		if (!L->moe) {
			add_mat(pc, CO_PROF_DENSE, &L->dense.gate, B);
			add_mat(pc, CO_PROF_DENSE, &L->dense.up, B);
			add_mat(pc, CO_PROF_DENSE, &L->dense.down, B);
			continue;
		}
		add_mat(pc, CO_PROF_ROUTER, &L->router, B);
		if (L->has_shared) {
			add_mat(pc, CO_PROF_SHARED, &L->shared.gate, B);
			add_mat(pc, CO_PROF_SHARED, &L->shared.up, B);
			add_mat(pc, CO_PROF_SHARED, &L->shared.down, B);
		}
		pc->bytes[CO_PROF_EXPERTS] += experts * expert_w * (double)kn_dtype_size(L->q.dtype);
		pc->flops[CO_PROF_EXPERTS] += 2.0 * B * c->num_experts_per_tok * expert_w;
	}
}

/* Weight bytes of a step whose tokens reach `experts` routed experts per MoE layer (k per
 * token: what one token touches; fractional: an expectation): every category's. */
static double step_bytes(const struct model_weights *w, double experts)
{
	struct phase_cost pc;
	double b = 0;

	phase_cost(w, 1, experts, 1, &pc);
	for (int i = 0; i < CO_PROF__COUNT; i++)
		b += pc.bytes[i];
	return b;
}

/* Experts of a layer that B tokens, k each of E, reach on average (uniform routing). */
static double experts_reached(const struct model_config *c, int B)
{
	double E = c->n_routed_experts, k = c->num_experts_per_tok;
	return E * (1.0 - pow(1.0 - k / E, B));
}

/* Weight bytes one token touches in a decode step (top-k routed experts, not all). */
static size_t active_bytes(const struct model_weights *w, int k)
{
	return (size_t)step_bytes(w, k);
}

/* A category's ceiling in seconds: its bytes at the read bandwidth or its FLOPs at the
 * peak, whichever binds (0 for work without weights: embeddings, norms, rope, attention). */
static double phase_ceiling(const struct phase_cost *pc, int cat, double bw, double peak)
{
	double t = pc->bytes[cat] / bw;
	return peak > 0 ? FR_MAX(t, pc->flops[cat] / peak) : t;
}

/* Plain streaming read of n bytes with the kernel threads: the bandwidth ceiling. Integer
 * sums in four independent lanes, so the loop is bound by memory, not by an add chain. */
static double read_bw(size_t n, int reps)
{
	uint64_t *buf = malloc(n);
	double *t = malloc((size_t)reps * sizeof(*t));
	volatile uint64_t sink = 0;
	size_t nw = n / sizeof(uint64_t) / 4 * 4;
	for (size_t i = 0; i < nw; i++)
		buf[i] = i;
	for (int r = 0; r < reps; r++) {
		uint64_t t0 = fr_now_ns();
		uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp parallel for reduction(+ : a0, a1, a2, a3) num_threads(kn_threads())
		for (size_t i = 0; i < nw; i += 4) {
			a0 += buf[i];
			a1 += buf[i + 1];
			a2 += buf[i + 2];
			a3 += buf[i + 3];
		}
		sink += a0 + a1 + a2 + a3;
		t[r] = (double)(fr_now_ns() - t0) / 1e9;
	}
	double bw = (double)(nw * sizeof(uint64_t)) / median(t, reps);
	free(buf);
	free(t);
	(void)sink;
	return bw;
}

static const char usage[] = "usage: e2e --model DIR [--prompt N] [--gen N] [--batch B] "
			    "[--threads N] [--reps R] [--all-logits] [--device cpu|twin|cuda:N]\n";

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' }, { "prompt", required_argument, NULL, 'p' },
		{ "gen", required_argument, NULL, 'g' },   { "batch", required_argument, NULL, 'b' },
		{ "threads", required_argument, NULL, 't' }, { "reps", required_argument, NULL, 'r' },
		{ "all-logits", no_argument, NULL, 'a' },    { "device", required_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *device = "cpu";
	int n_prompt = 256, n_gen = 16, batch = 1, reps = 3, c;
	bool all_logits = false;
	struct fr_error err = { { 0 } };

	while ((c = getopt_long(argc, argv, "m:p:g:b:t:r:", opts, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'p': n_prompt = atoi(optarg); break;
		case 'g': n_gen = atoi(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 't': kn_set_threads(atoi(optarg)); break;
		case 'r': reps = atoi(optarg); break;
		case 'a': all_logits = true; break;
		case 'd': device = optarg; break;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (!model || n_prompt < 1 || n_gen < 1 || batch < 1 || reps < 1) {
		fputs(usage, stderr);
		return 2;
	}
	int dev_no;
	if (co_config_engine_device(device, &dev_no, &err) < 0) {
		fprintf(stderr, "e2e: --device: %s\n", err.msg);
		return 2;
	}
	if (dev_no >= 0 && !getenv("FERRY_PRECISION")) /* [engine] precision = auto on a GPU */
		kn_set_precision(KN_PRECISION_FAST);

	struct model_ckpt *ck;
	struct model_weights *w;
	struct moe moe = { 0 };
	struct co_engine *e;
	if (model_ckpt_open(model, &ck, &err) < 0 || model_weights_bind(ck, MODEL_BIND_NO_ROUTED, &w, &err) < 0 ||
	    moe_local_create(ck, 1, &moe, &err) < 0) {
		fprintf(stderr, "e2e: %s\n", err.msg);
		return 1;
	}
	const struct model_config *cfg = model_ckpt_config(ck);
	int ctx = n_prompt + n_gen + 1;
	struct co_engine_opts eo = { .max_seqs = batch, .max_ctx = ctx, .max_batch = FR_MAX(n_prompt, batch) };
	struct co_device dev;
	int rc = co_device_open(dev_no, ctx, &dev, &err);
	if (rc == -ENODEV) {
		printf("e2e: %s\n", err.msg);
		return 77;
	}
	if (rc < 0) {
		fprintf(stderr, "e2e: --device %s: %s\n", device, err.msg);
		return 1;
	}
	eo.dev_ops = dev.ops;
	eo.dev_ctx = dev.ctx;
	if (co_engine_create(w, moe, &eo, &e, &err) < 0) {
		fprintf(stderr, "e2e: %s\n", err.msg);
		return 1;
	}

	size_t rows = (size_t)FR_MAX(n_prompt, batch);
	int32_t *tok = malloc(rows * sizeof(*tok)), *seq = calloc(rows, sizeof(*seq)),
		*pos = malloc(rows * sizeof(*pos));
	bool *want = calloc(rows, sizeof(*want));
	float *logits = malloc(rows * (size_t)cfg->vocab_size * sizeof(float));
	double *t_pre = malloc((size_t)reps * sizeof(double)), *t_dec = malloc((size_t)reps * sizeof(double));
	double dec_regions = 0.0; /* parallel regions per decode step, last rep */
	uint64_t prof[CO_PROF__COUNT], prof_total[CO_PROF__COUNT] = { 0 },
		 prof_pre[CO_PROF__COUNT] = { 0 };
	uint64_t rng = 42;

	/* Round -1 warms up (page faults on the mapped weights, the threads) and is not counted. */
	for (int r = -1; r < reps; r++) {
		/* Prefill: one sequence of n_prompt tokens, logits of the last one (or all). */
		for (int i = 0; i < n_prompt; i++) {
			tok[i] = (int32_t)(fr_splitmix64(&rng) % (uint64_t)cfg->vocab_size);
			seq[i] = 0;
			pos[i] = i;
			want[i] = all_logits || i == n_prompt - 1;
		}
		for (int s = 0; s < batch; s++)
			co_engine_reset_seq(e, s);
		co_engine_prof_reset(e);
		uint64_t t0 = fr_now_ns();
		if (co_engine_forward(e, n_prompt, tok, seq, pos, want, NULL, logits) < 0)
			return 1;
		if (r >= 0)
			t_pre[r] = (double)(fr_now_ns() - t0) / 1e9;
		/* the last prompt token's logits are row n_prompt - 1; sequence 0 decodes from row 0 */
		memmove(logits, logits + (size_t)(n_prompt - 1) * cfg->vocab_size,
			sizeof(float) * (size_t)cfg->vocab_size);
		co_engine_prof(e, prof);
		for (int i = 0; i < CO_PROF__COUNT; i++)
			prof_pre[i] += r >= 0 ? prof[i] : 0;
		/* The other sequences of the batch get a 1-token prompt each, a random token of
		 * their own: with the same token they would decode the same tokens, route alike
		 * and reach far fewer experts than a real batch does. Their logits land in their
		 * own rows, where the decode's argmax reads them. */
		for (int s = 1; s < batch; s++) {
			int32_t s32 = s, p0 = 0;
			int32_t t1 = (int32_t)(fr_splitmix64(&rng) % (uint64_t)cfg->vocab_size);
			co_engine_forward(e, 1, &t1, &s32, &p0, NULL, NULL,
					  logits + (size_t)s * cfg->vocab_size);
		}
		/* Decode: batch sequences, one token each per step. */
		co_engine_prof_reset(e);
		uint64_t reg0 = kn_regions();
		t0 = fr_now_ns();
		for (int g = 0; g < n_gen; g++) {
			for (int s = 0; s < batch; s++) {
				tok[s] = co_argmax(logits + (size_t)s * cfg->vocab_size, cfg->vocab_size);
				seq[s] = s;
				pos[s] = (s == 0 ? n_prompt : 1) + g;
			}
			if (co_engine_forward(e, batch, tok, seq, pos, NULL, NULL, logits) < 0)
				return 1;
		}
		if (r >= 0)
			t_dec[r] = (double)(fr_now_ns() - t0) / 1e9;
		dec_regions = (double)(kn_regions() - reg0) / n_gen;
		co_engine_prof(e, prof);
		for (int i = 0; i < CO_PROF__COUNT; i++)
			prof_total[i] += r >= 0 ? prof[i] : 0;
	}

	double pre = median(t_pre, reps), dec = median(t_dec, reps);
	double dec_tps = (double)n_gen * batch / dec;
	size_t act = active_bytes(w, cfg->num_experts_per_tok);
	double bw = read_bw((size_t)512 << 20, 5);
	double ceil_tps = bw / (double)act;
	/* The roofline of a decode step of `batch` tokens and of the prefill of n_prompt. */
	bool fast = kn_fast_active() && w->embed.dtype == KN_DTYPE_BF16;
	double peak = bench_peak_gflops(kn_threads(), fast) * 1e9;
	double flop_tok = 2.0 * (double)act / (double)kn_dtype_size(w->embed.dtype);
	double dec_bw = bw * batch / step_bytes(w, experts_reached(cfg, batch));
	double dec_roof = peak > 0 ? FR_MIN(dec_bw, peak / flop_tok) : dec_bw;
	/* the prefill runs the lm_head for its wanted rows only */
	double lm_flop = 2.0 * (double)w->lm_head.rows * w->lm_head.cols;
	double pre_flop = n_prompt * (flop_tok - lm_flop) + (all_logits ? n_prompt : 1) * lm_flop;
	double pre_bw = bw * n_prompt / step_bytes(w, experts_reached(cfg, n_prompt));
	double pre_roof = peak > 0 ? FR_MIN(pre_bw, peak * n_prompt / pre_flop) : pre_bw;
	const char *prec = fast ? "fast"
			   : kn_precision() != KN_PRECISION_FAST ? "exact"
			   : !kn_fast_active() ? "exact (fast asked: this CPU has no bf16 dot product)"
					       : "exact (fast asked: the weights are not bf16)";
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);

	printf("model %s: %d layers, hidden %d, %d routed (top-%d), dtype %s; isa=%s threads=%d "
	       "precision=%s batch=%d%s\n", model, cfg->num_hidden_layers, cfg->hidden_size,
	       cfg->n_routed_experts, cfg->num_experts_per_tok, kn_dtype_name(w->embed.dtype),
	       kn_ops()->name, kn_threads(), prec, batch,
	       all_logits ? " all-logits" : "");
	printf("engine (embeddings, attention, routers, shared experts, lm_head) on %s; routed "
	       "experts on the CPU%s\n", dev.where, dev_no != KN_DEV_NONE ?
	       "; the ceilings below are the CPU's" : "");
	printf("%-34s %12s\n", "metric", "value");
	printf("%-34s %12.1f\n", "prefill tokens/s (median)", n_prompt / pre);
	printf("%-34s %12.2f\n", "decode tokens/s (median)", dec_tps);
	printf("%-34s %12.1f\n", "decode weight bytes/token (MB)", (double)act / 1e6);
	printf("%-34s %12.2f\n", "read bandwidth ceiling (GB/s)", bw / 1e9);
	printf("%-34s %12.2f\n", "decode tokens/s ceiling (batch 1)", ceil_tps);
	if (batch == 1)
		printf("%-34s %12.2f\n", "decode ratio (ours / ceiling)", dec_tps / ceil_tps);
	printf("%-34s %12.1f\n", fast ? "bf16 dot-product peak (GFLOP/s)" : "fp32 FMA peak (GFLOP/s)",
	       peak / 1e9);
	printf("%-34s %12.1f  (%s-bound)\n", "decode roofline tokens/s", dec_roof,
	       dec_roof < dec_bw ? "compute" : "bandwidth");
	printf("%-34s %12.2f\n", "decode / roofline", dec_tps / dec_roof);
	printf("%-34s %12.1f  (%s-bound)\n", "prefill roofline tokens/s", pre_roof,
	       pre_roof < pre_bw ? "compute" : "bandwidth");
	printf("%-34s %12.2f\n", "prefill / roofline", n_prompt / pre / pre_roof);
	printf("%-34s %12.0f\n", "peak RSS (MiB)", (double)ru.ru_maxrss / 1024.0);
	printf("%-34s %12.1f\n", "parallel regions per decode step", dec_regions);
	/* Each kernel against its own ceiling, and their sum: the bound for phases that run one
	 * after another (a memory-bound one cannot hide a compute-bound one), which the roofline
	 * above - all bytes against all FLOPs - does not assume. */
	struct phase_cost pc_dec, pc_pre;
	phase_cost(w, batch, experts_reached(cfg, batch), batch, &pc_dec);
	phase_cost(w, n_prompt, experts_reached(cfg, n_prompt), all_logits ? n_prompt : 1, &pc_pre);
	double steps = (double)reps * n_gen, sum_ceil_dec = 0, sum_ceil_pre = 0;
	for (int i = 0; i < CO_PROF__COUNT; i++) {
		sum_ceil_dec += phase_ceiling(&pc_dec, i, bw, peak);
		sum_ceil_pre += phase_ceiling(&pc_pre, i, bw, peak);
	}
	printf("%-34s %12.1f\n", "decode phase-sum bound tokens/s", batch / sum_ceil_dec);
	printf("%-34s %12.2f\n", "decode / phase-sum bound", dec_tps * sum_ceil_dec / batch);
	printf("%-34s %12.1f\n", "prefill phase-sum bound tokens/s", n_prompt / sum_ceil_pre);
	printf("%-34s %12.2f\n", "prefill / phase-sum bound", n_prompt / pre * sum_ceil_pre / n_prompt);

	uint64_t sum = 0, sum_pre = 0;
	for (int i = 0; i < CO_PROF__COUNT; i++)
		sum += prof_total[i], sum_pre += prof_pre[i];
	/* what the coordinator itself spends per step (compare --device runs by this line) */
	printf("%-34s %12.3f\n", "coordinator ms per decode step",
	       (double)(sum - prof_total[CO_PROF_EXPERTS]) / 1e6 / steps);
	printf("\ntime per kernel: share of the pass, ms per pass, the kernel's own ceiling (ms) "
	       "and ceiling / measured\n");
	printf("  %-16s %8s %9s %9s %6s %8s %9s %9s %6s\n", "", "prefill", "ms", "ceil ms",
	       "ratio", "decode", "ms/step", "ceil ms", "ratio");
	for (int i = 0; i < CO_PROF__COUNT; i++) {
		if (!prof_total[i] && !prof_pre[i])
			continue;
		double ms_pre = (double)prof_pre[i] / 1e6 / reps, ms_dec = (double)prof_total[i] / 1e6 / steps;
		double c_pre = phase_ceiling(&pc_pre, i, bw, peak) * 1e3;
		double c_dec = phase_ceiling(&pc_dec, i, bw, peak) * 1e3;
		printf("  %-16s %7.1f%% %9.2f %9.2f %6.2f %7.1f%% %9.2f %9.2f %6.2f\n",
		       co_prof_name(i), 100.0 * (double)prof_pre[i] / (double)FR_MAX(sum_pre, 1),
		       ms_pre, c_pre, ms_pre > 0 ? c_pre / ms_pre : 0.0,
		       100.0 * (double)prof_total[i] / (double)FR_MAX(sum, 1), ms_dec, c_dec,
		       ms_dec > 0 ? c_dec / ms_dec : 0.0);
	}

	co_engine_destroy(e);
	co_device_close(&dev);
	moe_destroy(&moe);
	model_weights_free(w);
	model_ckpt_close(ck);
	free(tok); free(seq); free(pos); free(want); free(logits); free(t_pre); free(t_dec);
	return 0;
}
