/* SPDX-License-Identifier: Apache-2.0 */
/*
 * scheduler.c - continuous batching (see scheduler.h).
 *
 * Locking: s->mu guards the queue, the running set and every request's state; the
 * scheduler thread drops it around the forward passes, working on its own copy of the
 * batch, so owners can read results, cancel and submit while the engine runs.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator/scheduler.h"

#define LOG_COMP "sched"

enum req_state { R_QUEUED, R_RUNNING, R_DONE };

#define STEP_RING 8192

struct co_req {
	struct co_sched *s;
	int refs;                    /* owner + scheduler; under s->mu */
	struct co_req_spec spec;     /* prompt/stop_ids point at our copies */
	enum req_state state;
	bool cancel;
	uint64_t order;              /* arrival order */
	int seq;                     /* engine sequence slot while running */
	int reserved;                /* KV blocks reserved */

	int32_t *ids;                /* [n_prompt + max_new]: prompt, then generated */
	int n_gen, n_read;
	int prefilled;               /* prompt positions computed */
	uint64_t rng;
	void *scratch;               /* sampler */

	float *rows;                 /* return_logits, not yet taken: [rows_cap][vocab] */
	int n_rows, rows_cap;
	bool throttled;              /* skipped by the last step: stream buffer full */
	float *logprobs;             /* SCORE: [n_prompt - 1] */

	enum co_finish finish;
	int err;
	char errmsg[256];
	uint64_t t_arrive, t_admit, t_first, t_last, itl_sum;

	pthread_cond_t cv;
	struct co_req *next;         /* queue or running list */
};

struct co_sched {
	struct co_sched_opts o;
	struct co_sched_engine eng;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;           /* work arrived / stop */
	bool stop;
	int paused;                  /* co_sched_pause() depth: no admissions while > 0 */
	pthread_cond_t idle_cv;      /* the running set became empty */

	struct co_req *queue;        /* waiting, arrival order */
	int n_queued;
	struct co_req *running;      /* admission order */
	int n_running;
	bool *seq_used;              /* [max_seqs] */
	int blocks_reserved;
	uint64_t next_order;
	struct co_sched_stats st;

	/* Batch of one step (scheduler thread only). */
	int32_t *b_tok, *b_seq, *b_pos;
	bool *b_want;
	struct co_req **b_req;       /* [max_batch] request of each row */
	float *logits;               /* [max_batch][vocab] */
	int32_t *b_drawn;            /* [max_batch] the token drawn from a row (presample) */
	int *b_draw;                 /* [max_batch] the rows presample draws from */
	bool *b_has_drawn;           /* [max_batch] b_drawn holds the row's token */

	/* The last STEP_RING steps: when each ended and how long its forward passes took
	 * (under mu), for co_sched_step_times(). */
	uint64_t step_end[STEP_RING], step_ns[STEP_RING];
	unsigned step_head, step_n;
};

/* ---- requests --------------------------------------------------------------------------- */

static void req_free(struct co_req *r)
{
	free((void *)r->spec.stop_ids);
	free(r->ids);
	free(r->scratch);
	free(r->rows);
	free(r->logprobs);
	pthread_cond_destroy(&r->cv);
	free(r);
}

/* Under s->mu. */
static void req_unref(struct co_req *r)
{
	if (--r->refs == 0)
		req_free(r);
}

static int blocks_for(const struct co_sched *s, int len)
{
	return FR_DIV_ROUND_UP(len, s->o.block_size);
}

static int req_len(const struct co_req *r)
{
	return r->spec.kind == CO_REQ_SCORE ? r->spec.n_prompt : r->spec.n_prompt + r->spec.max_new;
}

/* Ends a request (under s->mu): frees its slot and blocks, wakes its owner. */
static void req_finish(struct co_sched *s, struct co_req *r, enum co_finish f, int err,
		       const char *msg)
{
	if (r->state == R_DONE)
		return;
	if (r->state == R_RUNNING) {
		s->seq_used[r->seq] = false;
		s->blocks_reserved -= r->reserved;
		s->eng.release(s->eng.ctx, r->seq);
	}
	r->state = R_DONE;
	r->finish = f;
	r->err = err;
	if (msg)
		snprintf(r->errmsg, sizeof(r->errmsg), "%s", msg);
	uint64_t now = fr_now_ns();
	r->t_last = r->t_last ? r->t_last : now;
	s->st.finished++;
	pthread_cond_broadcast(&r->cv);
}

static void list_remove(struct co_req **head, struct co_req *r)
{
	for (struct co_req **p = head; *p; p = &(*p)->next)
		if (*p == r) {
			*p = r->next;
			r->next = NULL;
			return;
		}
}

static int check_spec(const struct co_sched *s, const struct co_req_spec *sp,
		      struct fr_error *err)
{
	const struct co_sample_params *p = &sp->sample;

	if (sp->n_prompt < (sp->kind == CO_REQ_SCORE ? 2 : 1))
		return fr_error_set(err, -EINVAL, sp->kind == CO_REQ_SCORE ?
				    "scoring needs at least 2 tokens" : "empty prompt");
	for (int i = 0; i < sp->n_prompt; i++)
		if (sp->prompt[i] < 0 || sp->prompt[i] >= s->o.vocab)
			return fr_error_set(err, -EINVAL, "prompt token %d is %d, not in [0, %d)", i,
					    sp->prompt[i], s->o.vocab);
	for (int i = 0; i < sp->n_stop_ids; i++)
		if (sp->stop_ids[i] < 0 || sp->stop_ids[i] >= s->o.vocab)
			return fr_error_set(err, -EINVAL, "stop token %d is %d, not in [0, %d)", i,
					    sp->stop_ids[i], s->o.vocab);
	if (sp->kind == CO_REQ_GENERATE && sp->max_new < 1)
		return fr_error_set(err, -EINVAL, "max_tokens must be at least 1");
	if (!isfinite(p->temperature) || p->temperature < 0)
		return fr_error_set(err, -EINVAL, "temperature must be finite and >= 0");
	if (!(p->top_p > 0 && p->top_p <= 1))
		return fr_error_set(err, -EINVAL, "top_p must be in (0, 1]");
	if (p->top_k < 0 || p->top_k > s->o.vocab)
		return fr_error_set(err, -EINVAL, "top_k must be in [0, %d]", s->o.vocab);
	if (!isfinite(p->rep_penalty) || p->rep_penalty < 0 || p->rep_penalty > 10)
		return fr_error_set(err, -EINVAL, "repetition_penalty must be in (0, 10] (0 = off)");
	if (sp->priority < 0 || sp->priority > 9)
		return fr_error_set(err, -EINVAL, "priority must be in [0, 9]");
	long len = (long)sp->n_prompt + (sp->kind == CO_REQ_SCORE ? 0 : sp->max_new);
	if (len > s->o.max_ctx)
		return fr_error_set(err, -EINVAL, sp->kind == CO_REQ_SCORE ?
				    "%d tokens exceed the context of %d" :
				    "prompt (%d) + max_tokens (%d) exceed the context of %d",
				    sp->n_prompt, sp->kind == CO_REQ_SCORE ? s->o.max_ctx : sp->max_new,
				    s->o.max_ctx);
	if (blocks_for(s, (int)len) > s->o.kv_blocks)
		return fr_error_set(err, -EINVAL, "the request needs %d KV blocks, the pool has %d",
				    blocks_for(s, (int)len), s->o.kv_blocks);
	return 0;
}

int co_sched_submit(struct co_sched *s, const struct co_req_spec *spec, struct co_req **ret,
		    struct fr_error *err)
{
	struct co_req *r;
	int rc;

	if ((rc = check_spec(s, spec, err)) < 0)
		return rc;
	r = calloc(1, sizeof(*r));
	if (!r)
		return fr_error_set(err, -ENOMEM, "out of memory");
	pthread_cond_init(&r->cv, NULL);
	r->s = s;
	r->spec = *spec;
	int cap = req_len(r);
	r->ids = malloc((size_t)cap * sizeof(*r->ids));
	r->scratch = malloc(co_sample_scratch_size(s->o.vocab));
	if (spec->n_stop_ids && (r->spec.stop_ids = malloc((size_t)spec->n_stop_ids *
							   sizeof(int32_t))))
		memcpy((void *)r->spec.stop_ids, spec->stop_ids,
		       (size_t)spec->n_stop_ids * sizeof(int32_t));
	if (spec->kind == CO_REQ_SCORE)
		r->logprobs = malloc((size_t)spec->n_prompt * sizeof(*r->logprobs));
	if (!r->ids || !r->scratch || (spec->n_stop_ids && !r->spec.stop_ids) ||
	    (spec->kind == CO_REQ_SCORE && !r->logprobs)) {
		req_free(r);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	memcpy(r->ids, spec->prompt, (size_t)spec->n_prompt * sizeof(*r->ids));
	r->spec.prompt = r->ids;
	r->rng = spec->sample.seed;
	r->t_arrive = fr_now_ns();
	r->refs = 2;
	r->seq = -1;

	pthread_mutex_lock(&s->mu);
	if (s->stop) {
		pthread_mutex_unlock(&s->mu);
		req_free(r);
		return fr_error_set(err, -ESHUTDOWN, "the server is stopping");
	}
	if (s->n_queued >= s->o.queue_max) {
		s->st.refused++;
		pthread_mutex_unlock(&s->mu);
		req_free(r);
		return fr_error_set(err, -EAGAIN, "the admission queue is full (%d requests "
				    "waiting): retry later", s->o.queue_max);
	}
	r->order = s->next_order++;
	struct co_req **tail = &s->queue;
	while (*tail)
		tail = &(*tail)->next;
	*tail = r;
	s->n_queued++;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	*ret = r;
	return 0;
}

int co_req_next(struct co_req *r, int timeout_ms, struct co_req_out *out)
{
	struct co_sched *s = r->s;
	struct timespec dl;
	int news = 0;

	if (timeout_ms >= 0)
		fr_deadline_ms(&dl, timeout_ms);
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&s->mu);
	for (;;) {
		bool more = r->n_read < r->n_gen || r->n_rows > 0;
		if (more || r->state == R_DONE)
			break;
		if (timeout_ms < 0)
			pthread_cond_wait(&r->cv, &s->mu);
		else if (pthread_cond_timedwait(&r->cv, &s->mu, &dl) == ETIMEDOUT)
			break;
	}
	/* Tokens live in a buffer that never moves (ids); rows change hands: the scheduler
	 * starts a new buffer for the rows that follow. */
	if (r->n_read < r->n_gen) {
		out->tokens = r->ids + r->spec.n_prompt + r->n_read;
		out->n_tokens = r->n_gen - r->n_read;
		out->offset = r->n_read;
		r->n_read = r->n_gen;
		news = 1;
	}
	if (r->n_rows > 0) {
		out->logits = r->rows;
		out->n_rows = r->n_rows;
		r->rows = NULL;
		r->n_rows = r->rows_cap = 0;
		if (r->throttled)
			pthread_cond_broadcast(&s->cv); /* room again: schedule it */
		news = 1;
	}
	out->n_prompt = r->spec.n_prompt;
	if (r->state == R_DONE && !news) {
		out->finish = r->finish;
		out->err = r->err;
		out->errmsg = r->errmsg;
		if (r->spec.kind == CO_REQ_SCORE && r->finish == CO_FINISH_LENGTH) {
			out->logprobs = r->logprobs;
			out->n_logprobs = r->spec.n_prompt - 1;
		}
		news = 1;
	}
	if (r->t_admit)
		out->queue_ns = r->t_admit - r->t_arrive;
	if (r->t_first)
		out->first_token_ns = r->t_first - r->t_arrive;
	if (r->state == R_DONE) {
		out->total_ns = r->t_last - r->t_arrive;
		out->inter_token_ns_sum = r->itl_sum;
	}
	pthread_mutex_unlock(&s->mu);
	return news;
}

void co_req_cancel(struct co_req *r)
{
	struct co_sched *s = r->s;

	pthread_mutex_lock(&s->mu);
	if (r->state == R_QUEUED) {
		list_remove(&s->queue, r);
		s->n_queued--;
		req_finish(s, r, CO_FINISH_CANCELLED, 0, NULL);
		req_unref(r); /* the scheduler's reference */
	} else if (r->state == R_RUNNING) {
		r->cancel = true;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
}

void co_req_put(struct co_req *r)
{
	struct co_sched *s;

	if (!r)
		return;
	co_req_cancel(r);
	s = r->s;
	pthread_mutex_lock(&s->mu);
	req_unref(r);
	pthread_mutex_unlock(&s->mu);
}

int co_sched_pause(struct co_sched *s, int timeout_ms)
{
	struct timespec dl;
	int rc = 0;

	fr_deadline_ms(&dl, timeout_ms);
	pthread_mutex_lock(&s->mu);
	s->paused++;
	while (s->n_running > 0 && rc == 0)
		if (pthread_cond_timedwait(&s->idle_cv, &s->mu, &dl) == ETIMEDOUT)
			rc = -ETIMEDOUT;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void co_sched_resume(struct co_sched *s)
{
	pthread_mutex_lock(&s->mu);
	if (s->paused > 0)
		s->paused--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

void co_sched_stats(struct co_sched *s, struct co_sched_stats *ret)
{
	pthread_mutex_lock(&s->mu);
	*ret = s->st;
	ret->running = s->n_running;
	ret->queued = s->n_queued;
	ret->free_blocks = s->o.kv_blocks - s->blocks_reserved;
	ret->total_blocks = s->o.kv_blocks;
	ret->throttled = 0;
	for (const struct co_req *r = s->running; r; r = r->next)
		ret->throttled += r->throttled;
	pthread_mutex_unlock(&s->mu);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int co_sched_step_times(struct co_sched *s, uint64_t from_ns, uint64_t to_ns,
			uint64_t *ret_median_ns, uint64_t *ret_max_ns)
{
	uint64_t *v = malloc(STEP_RING * sizeof(*v));
	int n = 0;

	if (!v)
		return -ENOMEM;
	pthread_mutex_lock(&s->mu);
	for (unsigned k = 0; k < s->step_n; k++) {
		unsigned i = (s->step_head + STEP_RING - 1 - k) % STEP_RING;
		if (s->step_end[i] >= from_ns && s->step_end[i] < to_ns)
			v[n++] = s->step_ns[i];
	}
	pthread_mutex_unlock(&s->mu);
	qsort(v, (size_t)n, sizeof(*v), cmp_u64);
	*ret_median_ns = n ? v[n / 2] : 0;
	*ret_max_ns = n ? v[n - 1] : 0;
	free(v);
	return n;
}

/* ---- the scheduler thread --------------------------------------------------------------- */

/* Admits from the queue while the best waiting request fits (under s->mu). */
static void admit(struct co_sched *s)
{
	uint64_t now = fr_now_ns();

	while (s->queue && s->n_running < s->o.max_seqs && !s->paused) {
		struct co_req *best = NULL;
		double best_p = -1;
		for (struct co_req *r = s->queue; r; r = r->next) {
			double p = r->spec.priority +
				   (double)(now - r->t_arrive) / 1e6 / (double)s->o.aging_ms;
			/* Arrival order breaks ties (the queue is in arrival order). */
			if (p > best_p) {
				best_p = p;
				best = r;
			}
		}
		int need = blocks_for(s, req_len(best));
		if (s->blocks_reserved + need > s->o.kv_blocks)
			return; /* the head waits; nobody overtakes it */
		int seq = 0;
		while (s->seq_used[seq])
			seq++;
		list_remove(&s->queue, best);
		s->n_queued--;
		s->seq_used[seq] = true;
		s->blocks_reserved += need;
		best->reserved = need;
		best->seq = seq;
		best->state = R_RUNNING;
		best->t_admit = now;
		struct co_req **tail = &s->running;
		while (*tail)
			tail = &(*tail)->next;
		*tail = best;
		s->n_running++;
	}
}

/* Drops finished and cancelled requests from the running list (under s->mu). */
static void reap(struct co_sched *s)
{
	for (struct co_req **p = &s->running; *p;) {
		struct co_req *r = *p;
		if (r->cancel && r->state == R_RUNNING)
			req_finish(s, r, CO_FINISH_CANCELLED, 0, NULL);
		if (r->state == R_DONE) {
			*p = r->next;
			r->next = NULL;
			s->n_running--;
			req_unref(r);
			continue;
		}
		p = &r->next;
	}
}

static bool knobs_eq(const struct co_route_knobs *a, const struct co_route_knobs *b)
{
	return a->top_k == b->top_k && a->mask_top == b->mask_top && a->no_shared == b->no_shared;
}

/* Rows request r may add before its stream buffer is full (under s->mu). */
static int rows_room(const struct co_sched *s, const struct co_req *r)
{
	if (!r->spec.return_logits)
		return INT_MAX;
	size_t row = (size_t)s->o.vocab * sizeof(float);
	size_t max_rows = FR_MAX(s->o.stream_buffer / row, (size_t)1);
	return max_rows > (size_t)r->n_rows ? (int)FR_MIN(max_rows - (size_t)r->n_rows,
							  (size_t)INT_MAX) : 0;
}

/* Appends a request's rows for this step: its decode row, or its next prompt chunk.
 * A request whose owner has not taken its logits rows (a client that does not read) is
 * held back, keeping its KV blocks, until the rows are taken. */
static int add_rows(struct co_sched *s, struct co_req *r, int n, int budget)
{
	int np = r->spec.n_prompt;
	int room = rows_room(s, r);

	r->throttled = room <= 0;
	if (r->throttled)
		return 0;
	budget = FR_MIN(budget, room);

	if (r->prefilled == np) {
		int p = np + r->n_gen - 1;
		s->b_tok[n] = r->ids[p];
		s->b_seq[n] = r->seq;
		s->b_pos[n] = p;
		s->b_want[n] = true;
		s->b_req[n] = r;
		return 1;
	}
	int k = FR_MIN(FR_MIN(np - r->prefilled, s->o.prefill_chunk), budget);
	for (int i = 0; i < k; i++) {
		int p = r->prefilled + i;
		s->b_tok[n + i] = r->ids[p];
		s->b_seq[n + i] = r->seq;
		s->b_pos[n + i] = p;
		/* Logits of every prompt row for scoring and return_logits; else the last. */
		s->b_want[n + i] = r->spec.kind == CO_REQ_SCORE || r->spec.return_logits ||
				   p == np - 1;
		s->b_req[n + i] = r;
	}
	return k;
}

static int grow_rows(struct co_sched *s, struct co_req *r, int add)
{
	if (r->n_rows + add <= r->rows_cap)
		return 0;
	int cap = FR_MAX(r->rows_cap * 2, r->n_rows + add);
	float *p = realloc(r->rows, (size_t)cap * s->o.vocab * sizeof(float));
	if (!p)
		return -ENOMEM;
	r->rows = p;
	r->rows_cap = cap;
	return 0;
}

/* Takes the step's results for rows [a, b) of request r (under s->mu). */
static void take(struct co_sched *s, struct co_req *r, int a, int b, uint64_t now)
{
	int np = r->spec.n_prompt, V = s->o.vocab;

	if (r->state != R_RUNNING)
		return;
	for (int i = a; i < b; i++) {
		int p = s->b_pos[i];
		float *row = s->logits + (size_t)i * V;
		if (r->spec.kind == CO_REQ_SCORE) {
			if (p + 1 < np)
				r->logprobs[p] = (float)co_logprob(row, V, r->ids[p + 1]);
			continue;
		}
		if (r->spec.return_logits) {
			if (grow_rows(s, r, 1) < 0) {
				req_finish(s, r, CO_FINISH_ERROR, -ENOMEM, "out of memory for logits");
				return;
			}
			memcpy(r->rows + (size_t)r->n_rows++ * V, row, (size_t)V * sizeof(float));
		}
	}
	if (r->prefilled < np) {
		r->prefilled += b - a;
		if (r->spec.kind == CO_REQ_SCORE) {
			if (r->prefilled == np) {
				r->t_last = now;
				req_finish(s, r, CO_FINISH_LENGTH, 0, NULL);
			}
			return;
		}
		if (r->prefilled < np)
			return;
	}
	/* The last row sampled the next token (drawn by presample(), or here). */
	float *row = s->logits + (size_t)(b - 1) * V;
	int32_t tok = s->b_has_drawn[b - 1]
			      ? s->b_drawn[b - 1]
			      : co_sample_full(&r->spec.sample, &r->rng, row, V, r->ids,
					       np + r->n_gen, r->scratch);
	int p = np + r->n_gen;
	r->ids[p] = tok;
	r->n_gen++;
	if (!r->t_first)
		r->t_first = now;
	else
		r->itl_sum += now - r->t_last;
	r->t_last = now;
	bool stop = !r->spec.ignore_eos && tok == s->o.eos;
	for (int j = 0; j < r->spec.n_stop_ids && !stop; j++)
		stop = tok == r->spec.stop_ids[j];
	if (stop)
		req_finish(s, r, CO_FINISH_STOP, 0, NULL);
	else if (r->n_gen == r->spec.max_new)
		req_finish(s, r, p + 1 >= s->o.max_ctx ? CO_FINISH_CONTEXT : CO_FINISH_LENGTH, 0,
			   NULL);
	pthread_cond_broadcast(&r->cv);
}

/* Draws the step's next tokens before take(), outside s->mu, in parallel when any of them
 * samples with a temperature (about 0.4 ms for a 100k vocabulary; greedy is an argmax of
 * microseconds, cheaper than waking threads). Each request keeps its own generator, so the
 * tokens do not depend on the threads. A request draws from its last row once its prompt
 * is in; one that returns logits draws in take(), after their copy, because the repetition
 * penalty changes the row in place. Running requests change on this thread only, so their
 * state is read here unlocked. */
static void presample(struct co_sched *s, int n)
{
	int nd = 0, V = s->o.vocab;
	bool heavy = false;

	for (int i = 0; i < n;) {
		int j = i + 1;
		while (j < n && s->b_req[j] == s->b_req[i])
			j++;
		const struct co_req *r = s->b_req[i];
		for (int k = i; k < j; k++)
			s->b_has_drawn[k] = false;
		if (r->state == R_RUNNING && r->spec.kind == CO_REQ_GENERATE &&
		    !r->spec.return_logits && r->prefilled + (j - i) >= r->spec.n_prompt) {
			s->b_draw[nd++] = j - 1;
			heavy = heavy || r->spec.sample.temperature > 0.0f;
		}
		i = j;
	}
	int nth = heavy && nd > 1 ? kn_threads() : 1;
	kn_team_opened(nth);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nth)
	for (int q = 0; q < nd; q++) {
		int row = s->b_draw[q];
		struct co_req *r = s->b_req[row];
		s->b_drawn[row] = co_sample_full(&r->spec.sample, &r->rng,
						 s->logits + (size_t)row * V, V, r->ids,
						 r->spec.n_prompt + r->n_gen, r->scratch);
		s->b_has_drawn[row] = true;
	}
}

/* Stable regrouping of the batch's request runs by routing knobs (rows of one knob set
 * contiguous). Returns 0 or -ENOMEM. */
static int group_by_knobs(struct co_sched *s, int n)
{
	bool mixed = false;
	for (int i = 1; i < n && !mixed; i++)
		mixed = !knobs_eq(&s->b_req[i]->spec.knobs, &s->b_req[0]->spec.knobs);
	if (!mixed)
		return 0;
	int32_t *tok = malloc((size_t)n * sizeof(*tok)), *seq = malloc((size_t)n * sizeof(*seq));
	int32_t *pos = malloc((size_t)n * sizeof(*pos));
	bool *want = malloc((size_t)n * sizeof(*want)), *moved = calloc((size_t)n, sizeof(bool));
	struct co_req **req = malloc((size_t)n * sizeof(*req));
	int rc = -ENOMEM, m = 0;
	if (!tok || !seq || !pos || !want || !moved || !req)
		goto out;
	for (int i = 0; i < n; i++) {
		if (moved[i])
			continue;
		for (int j = i; j < n; j++) {
			if (moved[j] || !knobs_eq(&s->b_req[j]->spec.knobs, &s->b_req[i]->spec.knobs))
				continue;
			tok[m] = s->b_tok[j];
			seq[m] = s->b_seq[j];
			pos[m] = s->b_pos[j];
			want[m] = s->b_want[j];
			req[m] = s->b_req[j];
			moved[j] = true;
			m++;
		}
	}
	memcpy(s->b_tok, tok, (size_t)n * sizeof(*tok));
	memcpy(s->b_seq, seq, (size_t)n * sizeof(*seq));
	memcpy(s->b_pos, pos, (size_t)n * sizeof(*pos));
	memcpy(s->b_want, want, (size_t)n * sizeof(*want));
	memcpy(s->b_req, req, (size_t)n * sizeof(*req));
	rc = 0;
out:
	free(tok);
	free(seq);
	free(pos);
	free(want);
	free(moved);
	free(req);
	return rc;
}

static void *sched_main(void *arg)
{
	struct co_sched *s = arg;
	struct fr_error err = { { 0 } };

	pthread_mutex_lock(&s->mu);
	for (;;) {
		reap(s);
		if (s->stop)
			break;
		admit(s);
		if (!s->running) {
			pthread_cond_broadcast(&s->idle_cv);
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		/* The batch: decode rows first (they are latency-bound), then prompt chunks. */
		int n = 0;
		for (struct co_req *r = s->running; r && n < s->o.max_batch; r = r->next)
			if (r->prefilled == r->spec.n_prompt && r->spec.kind == CO_REQ_GENERATE)
				n += add_rows(s, r, n, s->o.max_batch - n);
		for (struct co_req *r = s->running; r && n < s->o.max_batch; r = r->next)
			if (r->prefilled < r->spec.n_prompt)
				n += add_rows(s, r, n, s->o.max_batch - n);
		if (n == 0) {
			/* Every running request waits for its owner to take rows: sleep until
			 * co_req_next(), a cancellation or a new request wakes us. */
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		/* The scheduler holds a reference on every running request, so they outlive
		 * the unlocked forward passes even if their owners go. */
		pthread_mutex_unlock(&s->mu);
		uint64_t t_step = fr_now_ns();

		/* One forward pass per distinct set of routing knobs (usually one): the batch is
		 * regrouped so each set's rows are contiguous, keeping every request's rows
		 * together and in position order. */
		int rc = group_by_knobs(s, n);
		for (int i = 0; i < n && rc == 0;) {
			int j = i + 1;
			while (j < n && knobs_eq(&s->b_req[j]->spec.knobs, &s->b_req[i]->spec.knobs))
				j++;
			rc = s->eng.forward(s->eng.ctx, j - i, s->b_tok + i, s->b_seq + i, s->b_pos + i,
					    s->b_want + i, &s->b_req[i]->spec.knobs,
					    s->logits + (size_t)i * s->o.vocab, &err);
			i = j;
		}
		if (rc == -ENOMEM)
			fr_error_set(&err, rc, "out of memory grouping the batch");
		if (rc == 0)
			presample(s, n);

		uint64_t now = fr_now_ns();
		pthread_mutex_lock(&s->mu);
		s->st.steps++;
		s->step_end[s->step_head] = now;
		s->step_ns[s->step_head] = now - t_step;
		s->step_head = (s->step_head + 1) % STEP_RING;
		s->step_n = FR_MIN(s->step_n + 1, STEP_RING);
		s->st.rows += (uint64_t)n;
		if (rc < 0) {
			fr_err(LOG_COMP, "step of %d rows failed: %s", n, err.msg);
			for (int i = 0; i < n; i++)
				req_finish(s, s->b_req[i], CO_FINISH_ERROR, rc, err.msg);
			continue;
		}
		for (int i = 0; i < n;) {
			int j = i + 1;
			while (j < n && s->b_req[j] == s->b_req[i])
				j++;
			take(s, s->b_req[i], i, j, now);
			i = j;
		}
	}
	/* Stopping: everyone still here is cancelled. */
	while (s->queue) {
		struct co_req *r = s->queue;
		s->queue = r->next;
		s->n_queued--;
		req_finish(s, r, CO_FINISH_CANCELLED, 0, NULL);
		req_unref(r);
	}
	for (struct co_req *r = s->running; r; r = r->next)
		r->cancel = true;
	reap(s);
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int co_sched_create(const struct co_sched_opts *o, const struct co_sched_engine *eng,
		    struct co_sched **ret, struct fr_error *err)
{
	struct co_sched *s;
	int rc;

	if (o->max_seqs < 1 || o->max_batch < 1 || o->max_ctx < 1 || o->kv_blocks < 1 ||
	    o->block_size < 1 || o->vocab < 1 || !eng->forward || !eng->release)
		return fr_error_set(err, -EINVAL, "scheduler options out of range");
	s = calloc(1, sizeof(*s));
	if (!s)
		return fr_error_set(err, -ENOMEM, "out of memory");
	s->o = *o;
	s->eng = *eng;
	if (s->o.prefill_chunk <= 0)
		s->o.prefill_chunk = FR_MAX(1, o->max_batch / 2);
	if (s->o.queue_max <= 0)
		s->o.queue_max = 256;
	if (s->o.aging_ms <= 0)
		s->o.aging_ms = 1000;
	if (s->o.stream_buffer == 0)
		s->o.stream_buffer = CO_SCHED_STREAM_BUFFER_DEFAULT;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_cond_init(&s->idle_cv, NULL);
	size_t B = (size_t)o->max_batch;
	s->seq_used = calloc((size_t)o->max_seqs, sizeof(*s->seq_used));
	s->b_tok = malloc(B * sizeof(*s->b_tok));
	s->b_seq = malloc(B * sizeof(*s->b_seq));
	s->b_pos = malloc(B * sizeof(*s->b_pos));
	s->b_want = malloc(B * sizeof(*s->b_want));
	s->b_req = malloc(B * sizeof(*s->b_req));
	s->logits = malloc(B * (size_t)o->vocab * sizeof(float));
	s->b_drawn = malloc(B * sizeof(*s->b_drawn));
	s->b_draw = malloc(B * sizeof(*s->b_draw));
	s->b_has_drawn = calloc(B, sizeof(*s->b_has_drawn));
	if (!s->seq_used || !s->b_tok || !s->b_seq || !s->b_pos || !s->b_want || !s->b_req ||
	    !s->logits || !s->b_drawn || !s->b_draw || !s->b_has_drawn) {
		rc = fr_error_set(err, -ENOMEM, "out of memory (%zu MiB of logits for %d rows)",
				  B * (size_t)o->vocab * sizeof(float) >> 20, o->max_batch);
		goto fail;
	}
	if ((rc = -pthread_create(&s->thread, NULL, sched_main, s)) < 0) {
		fr_error_set(err, rc, "cannot start the scheduler thread");
		goto fail;
	}
	*ret = s;
	return 0;
fail:
	free(s->seq_used);
	free(s->b_tok);
	free(s->b_seq);
	free(s->b_pos);
	free(s->b_want);
	free(s->b_req);
	free(s->logits);
	free(s->b_drawn);
	free(s->b_draw);
	free(s->b_has_drawn);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
	return rc;
}

void co_sched_destroy(struct co_sched *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	free(s->seq_used);
	free(s->b_tok);
	free(s->b_seq);
	free(s->b_pos);
	free(s->b_want);
	free(s->b_req);
	free(s->logits);
	free(s->b_drawn);
	free(s->b_draw);
	free(s->b_has_drawn);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->idle_cv);
	free(s);
}
