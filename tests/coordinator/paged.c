/* SPDX-License-Identifier: Apache-2.0 */
/*
 * paged.c - the paged KV cache gives the same bits as one contiguous block per sequence.
 *
 * A random schedule of requests (chunked prefills mixed with decodes, several forward calls
 * larger than max_batch) runs through a few sequence ids that are reset and reused as
 * requests end. The reference is block_size = max_ctx (each sequence one contiguous block,
 * the old layout); then block sizes 1, 16 and 64 with a pool of exactly the peak the schedule
 * needs, so blocks are freed and handed out again all along, must give identical logits for
 * every row, with 1 and 3 micro-batches. Along the way a "blocker" sequence takes just enough
 * blocks that the next call cannot fit: that call must fail with -ENOSPC and leave everything
 * as it was (free count, blocks needed, logits, and - through the final comparison - the
 * cache), and succeed once the blocker is reset. Also: the query API, option errors, a pool
 * smaller than one sequence. The reference runs on one thread and the paged runs on three
 * with every block threaded; a decode step opens one parallel region per block.
 *
 * Usage: paged [SET ...]   (default: every set under $FERRY_GOLDEN); $FERRY_SEED replays.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "coordinator/coordinator.h"

#define N_SLOTS 4    /* sequence ids the schedule uses; id N_SLOTS is the blocker */
#define N_REQ 14
#define MAX_CTX 80
#define MAX_BATCH 32 /* below the largest steps: one call, several chunks */

static int failures;
static uint64_t rng;

#define CHECK(cond, ...)                                                                    \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
			fprintf(stderr, __VA_ARGS__);                                       \
			fprintf(stderr, "\n");                                              \
			failures++;                                                         \
		}                                                                           \
	} while (0)

static int randint(int lo, int hi) /* [lo, hi] */
{
	return lo + (int)(fr_splitmix64(&rng) % (uint64_t)(hi - lo + 1));
}

static int div_up(int a, int b)
{
	return (a + b - 1) / b;
}

/* One forward call: rows [r0, r0 + n) of the schedule; then the slots in done[] end. */
struct step {
	int r0, n;
	int n_done, done[N_SLOTS];
};

struct sched {
	int n_steps, n_rows;
	struct step *steps;
	int32_t *tok, *seq, *pos;    /* [n_rows] */
	int32_t *req_len;            /* [N_REQ] prompt + generated positions */
};

static void sched_free(struct sched *S)
{
	free(S->steps);
	free(S->tok);
	free(S->seq);
	free(S->pos);
	free(S->req_len);
}

/* Requests of 1..40 prompt and 1..30 decode positions (teacher-forced random tokens),
 * admitted into free slots (at most two a step), prefilled in chunks of 1..24 rows. */
static void sched_make(struct sched *S, int vocab)
{
	int slot_req[N_SLOTS], slot_len[N_SLOTS], prompt[N_REQ], next = 0, cap = 4096;

	memset(S, 0, sizeof(*S));
	S->steps = calloc(1024, sizeof(*S->steps));
	S->tok = malloc(cap * sizeof(int32_t));
	S->seq = malloc(cap * sizeof(int32_t));
	S->pos = malloc(cap * sizeof(int32_t));
	S->req_len = malloc(N_REQ * sizeof(int32_t));
	for (int r = 0; r < N_REQ; r++) {
		prompt[r] = randint(1, 40);
		S->req_len[r] = prompt[r] + randint(1, 30);
	}
	for (int s = 0; s < N_SLOTS; s++)
		slot_req[s] = -1;
	for (;;) {
		int active = 0, admitted = 0, order[N_SLOTS];
		for (int s = 0; s < N_SLOTS; s++)
			active += slot_req[s] >= 0;
		for (int s = 0; s < N_SLOTS && next < N_REQ && admitted < 2; s++)
			if (slot_req[s] < 0 && (!active || randint(0, 1))) {
				slot_req[s] = next++;
				slot_len[s] = 0;
				admitted++;
				active++;
			}
		if (!active)
			break;
		/* Every step runs a row: at most N_REQ * 70 of either. */
		assert(S->n_steps < 1024 && S->n_rows + 4 * 24 <= cap);
		struct step *st = &S->steps[S->n_steps++];
		st->r0 = S->n_rows;
		for (int s = 0; s < N_SLOTS; s++)
			order[s] = s;
		for (int s = N_SLOTS - 1; s > 0; s--) {
			int j = randint(0, s), t = order[s];
			order[s] = order[j];
			order[j] = t;
		}
		for (int o = 0; o < N_SLOTS; o++) {
			int s = order[o], r = slot_req[s];
			if (r < 0)
				continue;
			int chunk = randint(1, 24); /* not inside FR_MIN: it evaluates twice */
			int k = slot_len[s] < prompt[r] ? FR_MIN(prompt[r] - slot_len[s], chunk) : 1;
			for (int i = 0; i < k; i++, S->n_rows++) {
				S->tok[S->n_rows] = randint(0, vocab - 1);
				S->seq[S->n_rows] = s;
				S->pos[S->n_rows] = slot_len[s]++;
			}
			if (slot_len[s] == S->req_len[r]) {
				st->done[st->n_done++] = s;
				slot_req[s] = -1;
			}
		}
		st->n = S->n_rows - st->r0;
	}
}

/* Blocks the schedule holds at its peak (a step's blocks are taken before it runs, a
 * finished request's after), and how many it takes in all. */
static int sched_peak(const struct sched *S, int bs, int *ret_total)
{
	int len[N_SLOTS] = { 0 }, peak = 0, total = 0;

	for (int k = 0; k < S->n_steps; k++) {
		const struct step *st = &S->steps[k];
		int held = 0;
		for (int i = st->r0; i < st->r0 + st->n; i++)
			len[S->seq[i]] = S->pos[i] + 1;
		for (int s = 0; s < N_SLOTS; s++)
			held += div_up(len[s], bs);
		peak = FR_MAX(peak, held);
		for (int d = 0; d < st->n_done; d++)
			len[st->done[d]] = 0;
	}
	for (int r = 0; r < N_REQ; r++)
		total += div_up(S->req_len[r], bs);
	*ret_total = total;
	return peak;
}

struct model {
	struct model_ckpt *ck;
	struct model_weights *w;
	struct moe moe;
	int vocab;
};

/* Runs the schedule; logits: [n_rows][vocab]. With blockers, provokes -ENOSPC where it
 * can. Returns the number of -ENOSPC rounds, or -1 if the run could not start. */
static int run(const struct model *m, const struct sched *S, int bs, int kv_blocks, int mbs,
	       bool blockers, float *logits)
{
	struct fr_error err = { { 0 } };
	struct co_engine_opts eo = { .max_seqs = N_SLOTS + 1, .max_ctx = MAX_CTX,
				      .max_batch = MAX_BATCH, .micro_batches = mbs,
				      .kv_blocks = kv_blocks, .block_size = bs };
	struct co_engine *e;
	int len[N_SLOTS + 1] = { 0 }, enospc = 0, total;
	size_t V = (size_t)m->vocab;
	float *scratch = malloc(MAX_CTX * V * sizeof(float));
	int32_t btok[MAX_CTX], bseq[MAX_CTX], bpos[MAX_CTX];

	if (co_engine_create(m->w, m->moe, &eo, &e, &err) < 0) {
		CHECK(0, "create bs=%d kv_blocks=%d: %s", bs, kv_blocks, err.msg);
		free(scratch);
		return -1;
	}
	total = co_engine_kv_blocks(e);
	CHECK(co_engine_block_size(e) == bs, "block_size %d, asked %d", co_engine_block_size(e), bs);
	CHECK(kv_blocks == 0 || total == kv_blocks, "kv_blocks %d, asked %d", total, kv_blocks);
	for (int k = 0; k < S->n_steps; k++) {
		const struct step *st = &S->steps[k];
		const int32_t *tok = S->tok + st->r0, *seq = S->seq + st->r0, *pos = S->pos + st->r0;
		float *out = logits + (size_t)st->r0 * V;
		int new_len[N_SLOTS] = { 0 }, need = 0, rc;

		for (int i = 0; i < st->n; i++)
			new_len[seq[i]] = pos[i] + 1;
		for (int s = 0; s < N_SLOTS; s++) {
			if (!new_len[s])
				continue;
			int want = div_up(new_len[s], bs) - div_up(len[s], bs);
			int got = co_engine_blocks_needed(e, s, new_len[s]);
			CHECK(got == want, "step %d seq %d: blocks_needed(%d) = %d, want %d", k, s,
			      new_len[s], got, want);
			need += want;
		}
		int free_now = co_engine_free_blocks(e), b = free_now - need + 1;
		if (blockers && need > 0 && b >= 1 && (b - 1) * bs + 1 <= MAX_CTX &&
		    (!enospc || randint(0, 1))) {
			/* Blocker: b blocks leave need - 1 free. */
			int bl = (b - 1) * bs + 1;
			for (int i = 0; i < bl; i++) {
				btok[i] = randint(0, m->vocab - 1);
				bseq[i] = N_SLOTS;
				bpos[i] = i;
			}
			rc = co_engine_forward(e, bl, btok, bseq, bpos, NULL, NULL, scratch);
			CHECK(rc == 0, "step %d: blocker of %d positions: %d", k, bl, rc);
			CHECK(co_engine_free_blocks(e) == need - 1, "step %d: %d free after blocker, want %d",
			      k, co_engine_free_blocks(e), need - 1);
			for (size_t i = 0; i < (size_t)st->n * V; i++)
				out[i] = -12345.0f;
			rc = co_engine_forward(e, st->n, tok, seq, pos, NULL, NULL, out);
			CHECK(rc == -ENOSPC, "step %d: forward with %d of %d blocks free: %d", k, need - 1,
			      need, rc);
			enospc += rc == -ENOSPC;
			CHECK(co_engine_free_blocks(e) == need - 1, "step %d: -ENOSPC took blocks", k);
			for (int s = 0; s < N_SLOTS; s++)
				if (new_len[s])
					CHECK(co_engine_blocks_needed(e, s, new_len[s]) ==
						      div_up(new_len[s], bs) - div_up(len[s], bs),
					      "step %d: -ENOSPC changed seq %d", k, s);
			bool untouched = true;
			for (size_t i = 0; i < (size_t)st->n * V; i++)
				untouched &= out[i] == -12345.0f;
			CHECK(untouched, "step %d: -ENOSPC wrote logits", k);
			co_engine_reset_seq(e, N_SLOTS);
			CHECK(co_engine_free_blocks(e) == free_now, "step %d: blocker reset: %d free, want %d",
			      k, co_engine_free_blocks(e), free_now);
		}
		rc = co_engine_forward(e, st->n, tok, seq, pos, NULL, NULL, out);
		CHECK(rc == 0, "step %d (%d rows, bs %d, %d blocks): forward %d", k, st->n, bs, total, rc);
		int held = 0;
		for (int s = 0; s < N_SLOTS; s++) {
			if (new_len[s])
				len[s] = new_len[s];
			held += div_up(len[s], bs);
		}
		CHECK(co_engine_free_blocks(e) == total - held, "step %d: %d free, want %d - %d", k,
		      co_engine_free_blocks(e), total, held);
		for (int d = 0; d < st->n_done; d++) {
			co_engine_reset_seq(e, st->done[d]);
			len[st->done[d]] = 0;
		}
	}
	CHECK(co_engine_free_blocks(e) == total, "end: %d of %d blocks free", co_engine_free_blocks(e),
	      total);
	co_engine_destroy(e);
	free(scratch);
	return enospc;
}

/* Options, the query API and a pool smaller than one sequence. */
static void test_api(const struct model *m)
{
	struct fr_error err = { { 0 } };
	struct co_engine *e = NULL;
	struct co_engine_opts eo = { .max_seqs = 3, .max_ctx = 33 };
	int32_t tok[16], seq[16] = { 0 }, pos[16];
	float *lg = malloc(16 * (size_t)m->vocab * sizeof(float));

	for (int i = 0; i < 16; i++) {
		tok[i] = randint(0, m->vocab - 1);
		pos[i] = i;
	}
	eo.block_size = -1;
	CHECK(co_engine_create(m->w, m->moe, &eo, &e, &err) == -EINVAL, "block_size -1 accepted");
	eo.block_size = 0;
	eo.kv_blocks = -1;
	CHECK(co_engine_create(m->w, m->moe, &eo, &e, &err) == -EINVAL, "kv_blocks -1 accepted");
	eo.kv_blocks = 0;
	if (co_engine_create(m->w, m->moe, &eo, &e, &err) < 0) {
		CHECK(0, "create: %s", err.msg);
		goto out;
	}
	/* Defaults: blocks of CO_KV_BLOCK_SIZE, enough for every sequence to reach max_ctx. */
	CHECK(co_engine_block_size(e) == CO_KV_BLOCK_SIZE, "default block_size %d",
	      co_engine_block_size(e));
	CHECK(co_engine_kv_blocks(e) == 3 * div_up(33, CO_KV_BLOCK_SIZE), "default kv_blocks %d",
	      co_engine_kv_blocks(e));
	CHECK(co_engine_free_blocks(e) == co_engine_kv_blocks(e), "fresh engine has blocks in use");
	CHECK(co_engine_blocks_needed(e, -1, 1) == -EINVAL, "blocks_needed seq -1");
	CHECK(co_engine_blocks_needed(e, 3, 1) == -EINVAL, "blocks_needed seq 3");
	CHECK(co_engine_blocks_needed(e, 0, -1) == -EINVAL, "blocks_needed len -1");
	CHECK(co_engine_blocks_needed(e, 0, 34) == -EINVAL, "blocks_needed len past max_ctx");
	CHECK(co_engine_blocks_needed(e, 0, 0) == 0, "blocks_needed len 0");
	CHECK(co_engine_blocks_needed(e, 0, 33) == 3, "blocks_needed len 33: %d",
	      co_engine_blocks_needed(e, 0, 33));
	CHECK(co_engine_forward(e, 16, tok, seq, pos, NULL, NULL, lg) == 0, "prefill 16");
	CHECK(co_engine_blocks_needed(e, 0, 16) == 0 && co_engine_blocks_needed(e, 0, 17) == 1,
	      "blocks_needed after 16 positions");
	/* -EINVAL is found before blocks are counted, and takes none. */
	tok[15] = m->vocab;
	pos[0] = 16;
	CHECK(co_engine_forward(e, 1, tok + 15, seq, pos, NULL, NULL, lg) == -EINVAL, "bad token");
	CHECK(co_engine_free_blocks(e) == co_engine_kv_blocks(e) - 1, "-EINVAL took blocks");
	co_engine_reset_seq(e, 0);
	co_engine_reset_seq(e, 99); /* ignored */
	CHECK(co_engine_free_blocks(e) == co_engine_kv_blocks(e), "reset kept blocks");
	co_engine_destroy(e);
	e = NULL;

	/* Two blocks of 4: a sequence can grow to 8 positions, no further. */
	for (int i = 0; i < 16; i++) {
		tok[i] = randint(0, m->vocab - 1);
		pos[i] = i;
	}
	eo = (struct co_engine_opts){ .max_seqs = 2, .max_ctx = 33, .kv_blocks = 2, .block_size = 4 };
	if (co_engine_create(m->w, m->moe, &eo, &e, &err) < 0) {
		CHECK(0, "create: %s", err.msg);
		goto out;
	}
	CHECK(co_engine_forward(e, 9, tok, seq, pos, NULL, NULL, lg) == -ENOSPC, "9 positions fit 2x4");
	CHECK(co_engine_free_blocks(e) == 2, "-ENOSPC took blocks");
	CHECK(co_engine_forward(e, 8, tok, seq, pos, NULL, NULL, lg) == 0, "8 positions");
	CHECK(co_engine_free_blocks(e) == 0, "8 positions: %d blocks free", co_engine_free_blocks(e));
	CHECK(co_engine_forward(e, 1, tok + 8, seq, pos + 8, NULL, NULL, lg) == -ENOSPC, "9th position");
	int32_t s1 = 1;
	CHECK(co_engine_forward(e, 1, tok, &s1, pos, NULL, NULL, lg) == -ENOSPC, "second sequence");
	co_engine_reset_seq(e, 0);
	CHECK(co_engine_forward(e, 1, tok, &s1, pos, NULL, NULL, lg) == 0, "second sequence after reset");
out:
	co_engine_destroy(e);
	free(lg);
}

/* One parallel region per block, not per product: a decode step of three sequences (their
 * rows not contiguous in what wants logits, so lm_head goes in chunks) wakes the kernel
 * threads at most 3 times a layer on the coordinator and once for lm_head, plus once per
 * MoE layer in each local expert worker, with every block on the team (no minimum work).
 * Its logits are those of one thread, bit for bit. */
static void test_regions(const struct model *m)
{
	struct fr_error err = { { 0 } };
	struct co_engine_opts eo = { .max_seqs = 3, .max_ctx = 33, .max_batch = 16,
				      .micro_batches = 1 };
	const struct model_config *c = model_ckpt_config(m->ck);
	int layers = c->num_hidden_layers, moe_layers = layers - c->first_k_dense_replace;
	int32_t tok[15], seq[15], pos[15];
	bool want[3] = { true, false, true };
	size_t V = (size_t)m->vocab;
	float *lg = calloc(15 * V, sizeof(float)), *one = calloc(3 * V, sizeof(float));
	uint64_t regions = 0;

	for (int i = 0; i < 15; i++) {
		tok[i] = randint(0, m->vocab - 1);
		seq[i] = i / 5;
		pos[i] = i % 5;
	}
	kn_set_min_parallel_work(0);
	for (int nth = 1; nth <= 2; nth++) {
		struct co_engine *e;
		int32_t dtok[3] = { tok[4], tok[9], tok[14] }, dseq[3] = { 0, 1, 2 };
		int32_t dpos[3] = { 5, 5, 5 };
		kn_set_threads(nth);
		if (co_engine_create(m->w, m->moe, &eo, &e, &err) < 0) {
			CHECK(0, "create: %s", err.msg);
			break;
		}
		CHECK(co_engine_forward(e, 15, tok, seq, pos, NULL, NULL, lg) == 0, "prefill 3 x 5");
		uint64_t r0 = kn_regions();
		CHECK(co_engine_forward(e, 3, dtok, dseq, dpos, want, NULL, nth == 1 ? one : lg) == 0,
		      "decode 3");
		regions = kn_regions() - r0;
		if (nth == 2) {
			/* Coordinator: attention, router, dense or shared FFN per layer, and
			 * lm_head; each of the 2 local expert workers: one per MoE layer. */
			uint64_t bound = 3 * (uint64_t)layers + 1 + 2 * (uint64_t)moe_layers;
			CHECK(regions >= 1 && regions <= bound,
			      "a decode step of %d layers opened %" PRIu64 " parallel regions (at most %"
			      PRIu64 ")", layers, regions, bound);
			for (int r = 0; r < 3; r++)
				CHECK(!want[r] || memcmp(lg + r * V, one + r * V, V * sizeof(float)) == 0,
				      "decode row %d: 2 threads differ from 1", r);
		}
		co_engine_destroy(e);
	}
	printf("decode step, %d layers, 2 threads: %" PRIu64 " parallel regions\n", layers, regions);
	kn_set_min_parallel_work(32768);
	kn_set_threads(1);
	free(lg);
	free(one);
}

static void run_set(const char *dir)
{
	struct fr_error err = { { 0 } };
	struct model m = { 0 };
	struct sched S;
	static const int block_sizes[] = { 1, 16, 64 };

	if (model_ckpt_open(dir, &m.ck, &err) < 0 ||
	    model_weights_bind(m.ck, MODEL_BIND_NO_ROUTED, &m.w, &err) < 0 ||
	    moe_local_create(m.ck, 2, &m.moe, &err) < 0) {
		CHECK(0, "%s: %s", dir, err.msg);
		goto out;
	}
	m.vocab = model_ckpt_config(m.ck)->vocab_size;
	test_api(&m);
	test_regions(&m);

	sched_make(&S, m.vocab);
	size_t sz = (size_t)S.n_rows * m.vocab;
	float *ref = malloc(sz * sizeof(float)), *got = malloc(sz * sizeof(float));
	for (int mbs = 1; mbs <= 3; mbs += 2) {
		/* The reference on one thread; the paged runs on a team of 3 with every block
		 * threaded, so the team kernels' split of rows, heads and sequences must give
		 * the same bits too. */
		kn_set_threads(1);
		if (run(&m, &S, MAX_CTX, 0, mbs, false, ref) < 0)
			break;
		kn_set_threads(3);
		kn_set_min_parallel_work(0);
		for (size_t b = 0; b < FR_ARRAY_SIZE(block_sizes); b++) {
			int bs = block_sizes[b], total, peak = sched_peak(&S, bs, &total);
			CHECK(total > peak, "bs %d: the schedule never reuses a block (%d blocks, peak %d)",
			      bs, total, peak);
			int enospc = run(&m, &S, bs, peak, mbs, true, got);
			CHECK(enospc > 0, "bs %d: no -ENOSPC round", bs);
			size_t first = sz;
			for (size_t i = 0; i < sz && first == sz; i++)
				if (memcmp(&got[i], &ref[i], sizeof(float)) != 0)
					first = i;
			CHECK(first == sz, "%s bs %d mbs %d: row %zu logit %zu: %.9g, contiguous %.9g", dir,
			      bs, mbs, first / m.vocab, first % m.vocab, got[first], ref[first]);
			printf("%s: %d micro-batch(es), block_size %2d: %d steps, %d rows, pool %d blocks "
			       "(%d taken in all), %d -ENOSPC round(s), logits %s\n",
			       dir, mbs, bs, S.n_steps, S.n_rows, peak, total, enospc,
			       first == sz ? "identical" : "DIFFER");
		}
	}
	kn_set_threads(1);
	kn_set_min_parallel_work(32768);
	free(ref);
	free(got);
	sched_free(&S);
out:
	moe_destroy(&m.moe);
	model_weights_free(m.w);
	model_ckpt_close(m.ck);
}

int main(int argc, char **argv)
{
	const char *root = getenv("FERRY_GOLDEN"), *s = getenv("FERRY_SEED");
	uint64_t seed = s && *s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
	int n_sets = 0;

	printf("paged: FERRY_SEED=%" PRIu64 " isa=%s\n", seed, kn_ops()->name);
	rng = seed;
	if (argc > 1) {
		for (int i = 1; i < argc; i++, n_sets++)
			run_set(argv[i]);
	} else if (root) {
		struct dirent **ents;
		int m = scandir(root, &ents, NULL, alphasort);
		for (int i = 0; i < m; i++) {
			char dir[4096];
			struct stat st;
			snprintf(dir, sizeof(dir), "%s/%s", root, ents[i]->d_name);
			if (ents[i]->d_name[0] != '.' && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
				run_set(dir);
				n_sets++;
			}
			free(ents[i]);
		}
		free(m >= 0 ? ents : NULL);
	}
	if (n_sets == 0) {
		fprintf(stderr, "no golden sets found (FERRY_GOLDEN=%s)\n", root ? root : "");
		return 1;
	}
	printf("%d set(s), %d failure(s)\n", n_sets, failures);
	return failures ? 1 : 0;
}
