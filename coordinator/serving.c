/* SPDX-License-Identifier: Apache-2.0 */
/*
 * serving.c - Generate and Score over the scheduler (see serving.h).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/serving.h"
#include "coordinator/inference.h"
#include "coordinator/text.h"

#define LOG_COMP "serve"

/* Prompt ids from either token ids or text (tokenized: co_text_to_ids(), the Tokenize
 * method's own path; ids checked with co_check_ids()). */
static int prompt_of(const struct co_serving *sv, const int32_t *ids, size_t n_ids,
		     const char *text, bool add_bos, const char *what, struct co_req_spec *spec,
		     int32_t **ret_ids, struct fr_error *err)
{
	const struct co_inference_info info = { .cfg = sv->cfg, .tok = sv->tok };
	bool has_text = text && text[0];
	char field[32];
	size_t n;
	int rc;

	*ret_ids = NULL;
	if (has_text == (n_ids > 0))
		return fr_error_set(err, -EINVAL, "give exactly one of %s and %s_tokens%s", what,
				    what, has_text ? "" : " (both are empty)");
	if (!has_text) {
		if (n_ids > (size_t)sv->max_ctx)
			return fr_error_set(err, -EINVAL, "%zu prompt tokens exceed the context of %d",
					    n_ids, sv->max_ctx);
		snprintf(field, sizeof(field), "%s_tokens", what);
		if ((rc = co_check_ids(field, ids, n_ids, sv->cfg->vocab_size, err)) < 0)
			return rc;
		spec->prompt = ids;
		spec->n_prompt = (int)n_ids;
		return 0;
	}
	if (!sv->tok) /* -ENOTSUP, as serving.h promises (co_text_to_ids() says -ESTALE) */
		return fr_error_set(err, -ENOTSUP, CO_ERR_NO_TOKENIZER);
	if ((rc = co_text_to_ids(&info, text, strlen(text), add_bos, ret_ids, &n, err)) < 0)
		return fr_error_prefix(err, rc, "%s", what);
	if ((rc = co_check_ids("the tokenizer's ids", *ret_ids, n, sv->cfg->vocab_size, err)) < 0 ||
	    n == 0 || n > (size_t)sv->max_ctx) {
		free(*ret_ids);
		*ret_ids = NULL;
		if (rc < 0)
			return rc;
		return fr_error_set(err, -EINVAL, n ? "%s is %zu tokens, the context holds %d" :
				    "%s tokenizes to nothing", what, n, sv->max_ctx);
	}
	spec->prompt = *ret_ids;
	spec->n_prompt = (int)n;
	return 0;
}

static int knobs_of(const struct co_serving *sv, uint32_t top_k, uint32_t mask_top,
		    bool no_shared, struct co_route_knobs *ret, struct fr_error *err)
{
	const struct model_config *c = sv->cfg;
	int k = top_k ? (int)FR_MIN(top_k, (uint32_t)INT32_MAX) : c->num_experts_per_tok;

	if (top_k > (uint32_t)c->n_routed_experts || mask_top > (uint32_t)c->n_routed_experts ||
	    k + (int)mask_top > c->n_routed_experts)
		return fr_error_set(err, -EINVAL, "routed_top_k %d plus mask_top %u exceed the %d "
				    "routed experts", k, mask_top, c->n_routed_experts);
	*ret = (struct co_route_knobs){ .top_k = (int)top_k, .mask_top = (int)mask_top,
					.no_shared = no_shared };
	return 0;
}

int co_generate_validate(const struct co_serving *sv, const Ferry__V1__GenerateRequest *r,
			 struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err)
{
	int rc;

	memset(spec, 0, sizeof(*spec));
	*ret_ids = NULL;
	spec->kind = CO_REQ_GENERATE;
	if (!isfinite(r->temperature) || r->temperature < 0)
		return fr_error_set(err, -EINVAL, "temperature must be finite and >= 0");
	if (!isfinite(r->top_p) || r->top_p < 0 || r->top_p > 1)
		return fr_error_set(err, -EINVAL, "top_p must be in (0, 1]");
	if (r->top_k > (uint32_t)sv->cfg->vocab_size)
		return fr_error_set(err, -EINVAL, "top_k must be at most vocab_size %d",
				    sv->cfg->vocab_size);
	if (!isfinite(r->repetition_penalty) || r->repetition_penalty < 0 ||
	    r->repetition_penalty > 10)
		return fr_error_set(err, -EINVAL, "repetition_penalty must be in (0, 10] (0 = off)");
	if (r->priority > 9)
		return fr_error_set(err, -EINVAL, "priority must be in [0, 9]");
	if (r->request_id && strlen(r->request_id) > 64)
		return fr_error_set(err, -EINVAL, "request_id longer than 64 bytes");
	if (r->n_stop > CO_MAX_STOP_STRINGS)
		return fr_error_set(err, -EINVAL, "at most %d stop strings", CO_MAX_STOP_STRINGS);
	for (size_t i = 0; i < r->n_stop; i++) {
		size_t n = r->stop[i] ? strlen(r->stop[i]) : 0;
		if (n == 0 || n > CO_MAX_STOP_LEN)
			return fr_error_set(err, -EINVAL, "stop[%zu] must be 1..%d bytes", i,
					    CO_MAX_STOP_LEN);
	}
	if ((r->n_stop || r->return_text) && !sv->tok)
		return fr_error_set(err, -ENOTSUP, "model has no tokenizer.json, send token ids "
				    "(stop strings and text output need one)");
	if (r->n_stop_tokens > CO_MAX_STOP_IDS)
		return fr_error_set(err, -EINVAL, "at most %d stop_tokens", CO_MAX_STOP_IDS);
	for (size_t i = 0; i < r->n_stop_tokens; i++)
		if (r->stop_tokens[i] < 0 || r->stop_tokens[i] >= sv->cfg->vocab_size)
			return fr_error_set(err, -EINVAL, "stop_tokens[%zu] = %d is not a token id",
					    i, r->stop_tokens[i]);
	if (r->return_logits && (size_t)sv->cfg->vocab_size * sizeof(float) > CO_LOGITS_MSG_BYTES)
		return fr_error_set(err, -EINVAL, "return_logits: a row of %d logits exceeds the "
				    "message limit", sv->cfg->vocab_size);
	if ((rc = knobs_of(sv, r->routed_top_k, r->mask_top, r->no_shared_experts, &spec->knobs,
			   err)) < 0)
		return rc;
	if ((rc = prompt_of(sv, r->prompt_tokens, r->n_prompt_tokens, r->prompt, r->add_bos,
			    "prompt", spec, ret_ids, err)) < 0)
		return rc;
	int room = sv->max_ctx - spec->n_prompt;
	if (room < 1) {
		rc = fr_error_set(err, -EINVAL, "prompt of %d tokens leaves no room in the context "
				  "of %d", spec->n_prompt, sv->max_ctx);
		goto fail;
	}
	if (r->max_tokens > (uint32_t)room) {
		rc = fr_error_set(err, -EINVAL, "prompt (%d) + max_tokens (%u) exceed the context "
				  "of %d", spec->n_prompt, r->max_tokens, sv->max_ctx);
		goto fail;
	}
	spec->max_new = r->max_tokens ? (int)r->max_tokens : FR_MIN(room, sv->default_max_tokens);
	spec->ignore_eos = r->ignore_eos;
	spec->stop_ids = r->stop_tokens;
	spec->n_stop_ids = (int)r->n_stop_tokens;
	spec->sample = (struct co_sample_params){
		.temperature = r->temperature,
		.top_p = r->top_p > 0 ? r->top_p : 1.0f,
		.top_k = (int)r->top_k,
		.rep_penalty = r->repetition_penalty,
		.seed = r->seed,
	};
	spec->priority = (int)r->priority;
	spec->return_logits = r->return_logits;
	return 0;
fail:
	free(*ret_ids);
	*ret_ids = NULL;
	return rc;
}

int co_score_validate(const struct co_serving *sv, const Ferry__V1__ScoreRequest *r,
		      struct co_req_spec *spec, int32_t **ret_ids, struct fr_error *err)
{
	int rc;

	memset(spec, 0, sizeof(*spec));
	*ret_ids = NULL;
	spec->kind = CO_REQ_SCORE;
	spec->sample.top_p = 1.0f;
	if (r->request_id && strlen(r->request_id) > 64)
		return fr_error_set(err, -EINVAL, "request_id longer than 64 bytes");
	if ((rc = knobs_of(sv, r->routed_top_k, r->mask_top, r->no_shared_experts, &spec->knobs,
			   err)) < 0)
		return rc;
	if ((rc = prompt_of(sv, r->tokens, r->n_tokens, r->text, r->add_bos, "text", spec, ret_ids,
			    err)) < 0) {
		/* The field is called tokens here, not text_tokens. */
		if (strstr(err->msg, "text_tokens"))
			fr_error_set(err, rc, "give exactly one of text and tokens");
		return rc;
	}
	if (spec->n_prompt < 2) {
		free(*ret_ids);
		*ret_ids = NULL;
		return fr_error_set(err, -EINVAL, "scoring needs at least 2 tokens, got %d",
				    spec->n_prompt);
	}
	/* The answer carries a token id (varint, <= 5 bytes) and a float per token. */
	if ((size_t)spec->n_prompt * 16 + 1024 > RPC_MAX_MESSAGE_BYTES) {
		free(*ret_ids);
		*ret_ids = NULL;
		return fr_error_set(err, -EINVAL, "scoring %d tokens would exceed the message limit "
				    "of %u bytes", spec->n_prompt, RPC_MAX_MESSAGE_BYTES);
	}
	return 0;
}

static grpc_status_code unavailable(const struct co_serving *sv, struct rpc_call *call)
{
	char buf[512];
	const char *why = sv->unavailable ? sv->unavailable(sv->ctx, buf, sizeof(buf)) : NULL;
	return why ? rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "coordinator is %s", why) :
		     GRPC_STATUS_OK;
}

/* Waits for the request's next output while watching the client. Returns 1 with news, 0
 * when the client went away (the request is cancelled). */
static int next_or_cancel(const struct co_gen_sink *sink, struct co_req *req,
			  struct co_req_out *out)
{
	for (;;) {
		if (co_req_next(req, 50, out))
			return 1;
		if (sink->cancelled(sink->ctx)) {
			co_req_cancel(req);
			return 0;
		}
	}
}

/* The gRPC call as a sink. */
struct call_sink {
	struct rpc_call *call;
	int64_t stall_ms;
};

static int call_send(void *ctx, const Ferry__V1__GenerateResponse *m)
{
	struct call_sink *c = ctx;
	return rpc_call_send_within(c->call, &m->base, c->stall_ms);
}

static bool call_cancelled(void *ctx)
{
	return rpc_call_cancelled(((struct call_sink *)ctx)->call);
}

static int64_t call_remaining(void *ctx)
{
	return rpc_call_remaining_ms(((struct call_sink *)ctx)->call);
}

static Ferry__V1__FinishReason finish_reason(enum co_finish f)
{
	switch (f) {
	case CO_FINISH_LENGTH: return FERRY__V1__FINISH_REASON__FINISH_REASON_LENGTH;
	case CO_FINISH_STOP: return FERRY__V1__FINISH_REASON__FINISH_REASON_STOP;
	case CO_FINISH_CONTEXT: return FERRY__V1__FINISH_REASON__FINISH_REASON_CONTEXT;
	default: return FERRY__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
	}
}

int co_serve_metrics_init(struct co_serve_metrics *m)
{
	int rc;

	memset(m, 0, sizeof(*m));
	if ((rc = fr_histo_init(&m->ttft, fr_prom_latency_buckets, fr_prom_latency_n)) < 0 ||
	    (rc = fr_histo_init(&m->itl, fr_prom_step_buckets, fr_prom_step_n)) < 0 ||
	    (rc = fr_histo_init(&m->e2e, fr_prom_latency_buckets, fr_prom_latency_n)) < 0 ||
	    (rc = fr_histo_init(&m->queue, fr_prom_latency_buckets, fr_prom_latency_n)) < 0) {
		co_serve_metrics_fini(m);
		return rc;
	}
	return 0;
}

void co_serve_metrics_fini(struct co_serve_metrics *m)
{
	fr_histo_fini(&m->ttft);
	fr_histo_fini(&m->itl);
	fr_histo_fini(&m->e2e);
	fr_histo_fini(&m->queue);
}

/* The handler sent n tokens now: each one's gap to the token before (the first of a request
 * has none: its time to first token is counted at the end). */
static void count_tokens(struct co_serve_metrics *m, int n, uint64_t *last_ns)
{
	uint64_t now = fr_now_ns();

	if (!m || n <= 0)
		return;
	atomic_fetch_add_explicit(&m->gen_tokens, (uint64_t)n, memory_order_relaxed);
	if (*last_ns)
		fr_histo_observe_n(&m->itl, (double)(now - *last_ns) / 1e9 / n, (uint64_t)n);
	else if (n > 1)
		fr_histo_observe_n(&m->itl, 0, (uint64_t)n - 1); /* arrived together */
	*last_ns = now;
}

static void count_finish(struct co_serve_metrics *m, const struct co_req_out *out)
{
	if (!m)
		return;
	if ((unsigned)out->finish <= CO_FINISH_ERROR)
		atomic_fetch_add_explicit(&m->finished[out->finish], 1, memory_order_relaxed);
	if (out->finish == CO_FINISH_ERROR || out->finish == CO_FINISH_CANCELLED)
		return;
	fr_histo_observe(&m->queue, (double)out->queue_ns / 1e9);
	fr_histo_observe(&m->ttft, (double)out->first_token_ns / 1e9);
	fr_histo_observe(&m->e2e, (double)out->total_ns / 1e9);
}

grpc_status_code co_handle_generate(struct rpc_call *call, const ProtobufCMessage *msg, void *arg)
{
	struct co_serving *sv = arg;
	struct call_sink cs = { call, sv->stall_ms };
	struct co_gen_sink sink = { call_send, call_cancelled, call_remaining, &cs };
	struct fr_error err = { { 0 } };
	grpc_status_code st;

	st = co_generate_run(sv, (const Ferry__V1__GenerateRequest *)msg, &sink, &err);
	return st != GRPC_STATUS_OK && err.msg[0] ? rpc_call_fail(call, st, "%s", err.msg) : st;
}

grpc_status_code co_generate_run(struct co_serving *sv, const Ferry__V1__GenerateRequest *r,
				 const struct co_gen_sink *sink, struct fr_error *err)
{
	struct co_req_spec spec;
	struct co_req *req = NULL;
	int32_t *ids = NULL;
	grpc_status_code st;
	size_t msg_bytes = sv->logits_msg_bytes ? sv->logits_msg_bytes : CO_LOGITS_MSG_BYTES;
	int rc, vocab = sv->cfg->vocab_size;
	int per = (int)FR_MIN(FR_MAX((size_t)1, msg_bytes / ((size_t)vocab * sizeof(float))),
			      (size_t)INT_MAX);
	bool first = true, stopped = false;
	uint32_t n_gen = 0;
	uint64_t last_tok_ns = 0;
	struct co_detok *dt = NULL;
	struct co_stop *stop = NULL;
	char *sv_text_buf = NULL;   /* the final message's joined text */
	float *held_rows = NULL;    /* logits rows being sent (taken from the scheduler) */

	char ubuf[512];
	const char *why = sv->unavailable ? sv->unavailable(sv->ctx, ubuf, sizeof(ubuf)) : NULL;
	if (why)
		return fr_error_set(err, -EAGAIN, "coordinator is %s", why),
		       GRPC_STATUS_UNAVAILABLE;
	if ((rc = co_generate_validate(sv, r, &spec, &ids, err)) < 0)
		return rpc_status_from_errno(rc);
	/* Text out: asked for, or implied by a text prompt or stop strings. */
	bool want_text = sv->tok && (r->return_text || (r->prompt && r->prompt[0]) || r->n_stop);
	if (want_text && ((rc = co_detok_create(sv->tok, CO_DETOK_NO_NUL, &dt)) < 0 ||
			  (rc = co_stop_create((const char *const *)r->stop, NULL, (int)r->n_stop,
					       &stop, err)) < 0)) {
		free(ids);
		co_detok_destroy(dt);
		if (!err->msg[0])
			fr_error_set(err, rc, "%s", strerror(-rc));
		return rpc_status_from_errno(rc);
	}
	rc = co_sched_submit(sv->sched, &spec, &req, err);
	free(ids);
	if (rc < 0) {
		co_detok_destroy(dt);
		co_stop_destroy(stop);
		return rpc_status_from_errno(rc);
	}

	for (;;) {
		struct co_req_out out;
		if (!next_or_cancel(sink, req, &out)) {
			st = sink->remaining_ms(sink->ctx) <= 0 ? GRPC_STATUS_DEADLINE_EXCEEDED :
								  GRPC_STATUS_CANCELLED;
			goto out;
		}
		if (out.finish == CO_FINISH_ERROR) {
			count_finish(sv->metrics, &out);
			fr_error_set(err, -EIO, "generation failed: %s", out.errmsg);
			st = GRPC_STATUS_UNAVAILABLE;
			goto out;
		}
		if (out.finish == CO_FINISH_CANCELLED && !stopped) {
			count_finish(sv->metrics, &out);
			fr_error_set(err, -ESHUTDOWN, "the server is stopping");
			st = GRPC_STATUS_UNAVAILABLE;
			goto out;
		}
		/* Text of the new tokens through the stop-string matcher; at the end, what the
		 * detokenizer and the matcher held back. A completed stop string ends the
		 * request (finish STOP) and neither it nor what follows is sent. */
		const char *text = NULL;
		size_t text_len = 0;
		if (dt && !stopped) {
			const char *t = NULL;
			size_t tl = 0;
			int hit = 0;
			if (out.n_tokens && co_detok_feed(dt, out.tokens, (size_t)out.n_tokens, &t, &tl) == 0)
				hit = co_stop_push(stop, t, tl, &text, &text_len);
			if (out.finish && !hit) {
				/* Both flushes reuse their buffers: join them in a copy. */
				char *joined = NULL;
				size_t jl = 0;
				if (text_len && (joined = malloc(text_len)))
					memcpy(joined, text, (jl = text_len));
				if (co_detok_flush(dt, &t, &tl) == 0 && tl)
					hit = co_stop_push(stop, t, tl, &text, &text_len);
				else
					text_len = 0;
				const char *rest = NULL;
				size_t rl = 0;
				if (!hit)
					co_stop_flush(stop, &rest, &rl);
				free(sv_text_buf);
				sv_text_buf = malloc(jl + text_len + rl + 1);
				if (sv_text_buf) {
					memcpy(sv_text_buf, joined ? joined : "", jl);
					memcpy(sv_text_buf + jl, text ? text : "", text_len);
					memcpy(sv_text_buf + jl + text_len, rest ? rest : "", rl);
					text_len = jl + text_len + rl;
					sv_text_buf[text_len] = '\0';
					text = sv_text_buf;
				}
				free(joined);
			}
			if (hit) {
				stopped = true;
				co_req_cancel(req);
				if (!out.finish)
					out.finish = CO_FINISH_STOP;
			}
		}
		if (stopped && out.finish == CO_FINISH_CANCELLED)
			out.finish = CO_FINISH_STOP; /* we cancelled it for the stop string */
		/* Logits rows first (in chunks), then the new tokens; the final message
		 * carries finish_reason, usage and timing. The rows are ours (co_req_next()
		 * handed them over), so the scheduler goes on while a slow client reads. */
		int rows_left = out.n_rows;
		const float *rows = out.logits;
		free(held_rows);
		held_rows = out.logits;
		do {
			Ferry__V1__GenerateResponse m = FERRY__V1__GENERATE_RESPONSE__INIT;
			Ferry__V1__Usage usage = FERRY__V1__USAGE__INIT;
			Ferry__V1__Timing timing = FERRY__V1__TIMING__INIT;
			int rws = FR_MIN(rows_left, per);
			bool last_chunk = rws == rows_left;
			if (rws) {
				m.logits = (float *)rows;
				m.n_logits = (size_t)rws * vocab;
				m.logits_rows = (uint32_t)rws;
				rows += (size_t)rws * vocab;
				rows_left -= rws;
			}
			if (last_chunk && out.n_tokens) {
				count_tokens(sv->metrics, out.n_tokens, &last_tok_ns);
				m.tokens = (int32_t *)out.tokens;
				m.n_tokens = (size_t)out.n_tokens;
				m.offset = (uint32_t)out.offset;
				n_gen = (uint32_t)(out.offset + out.n_tokens);
			}
			if (first) {
				m.prompt_tokens = (uint32_t)out.n_prompt;
				first = false;
				if (sv->metrics)
					atomic_fetch_add_explicit(&sv->metrics->prompt_tokens,
								  (uint64_t)out.n_prompt,
								  memory_order_relaxed);
			}
			/* protobuf-c strings end at NUL: the text (NUL-free: CO_DETOK_NO_NUL) is
			 * copied into a terminated buffer. */
			char *tbuf = NULL;
			if (last_chunk && text_len) {
				if ((tbuf = malloc(text_len + 1))) {
					memcpy(tbuf, text, text_len);
					tbuf[text_len] = '\0';
					m.text = tbuf;
				}
			}
			if (last_chunk && out.finish) {
				m.finish_reason = finish_reason(out.finish);
				usage.prompt_tokens = (uint32_t)out.n_prompt;
				usage.completion_tokens = n_gen;
				timing.queue_ms = (double)out.queue_ns / 1e6;
				timing.time_to_first_token_ms = (double)out.first_token_ns / 1e6;
				timing.total_ms = (double)out.total_ns / 1e6;
				timing.mean_inter_token_ms = n_gen > 1 ?
					(double)out.inter_token_ns_sum / 1e6 / (n_gen - 1) : 0.0;
				m.usage = &usage;
				m.timing = &timing;
			}
			if (!rws && !m.n_tokens && !m.finish_reason && !tbuf)
				break;
			int src = sink->send(sink->ctx, &m);
			free(tbuf);
			if (src < 0) {
				co_req_cancel(req);
				if (src == -ENOBUFS)
					fr_warn(LOG_COMP, "Generate%s%s: the client read nothing for %lld "
						"ms: cancelled", r->request_id && r->request_id[0] ?
						" " : "", r->request_id ? r->request_id : "",
						(long long)sv->stall_ms);
				st = src == -ENOBUFS ? GRPC_STATUS_RESOURCE_EXHAUSTED :
						       rpc_status_from_errno(src);
				goto out;
			}
		} while (rows_left > 0);
		if (out.finish) {
			count_finish(sv->metrics, &out);
			st = GRPC_STATUS_OK;
			goto out;
		}
	}
out:
	co_req_put(req);
	co_detok_destroy(dt);
	co_stop_destroy(stop);
	free(sv_text_buf);
	free(held_rows);
	return st;
}

grpc_status_code co_handle_score(struct rpc_call *call, const ProtobufCMessage *msg, void *arg)
{
	const Ferry__V1__ScoreRequest *r = (const Ferry__V1__ScoreRequest *)msg;
	Ferry__V1__ScoreResponse resp = FERRY__V1__SCORE_RESPONSE__INIT;
	struct co_serving *sv = arg;
	struct fr_error err = { { 0 } };
	struct co_req_spec spec;
	struct co_req *req = NULL;
	struct co_req_out out;
	int32_t *ids = NULL;
	grpc_status_code st;
	struct call_sink cs = { call, sv->stall_ms };
	struct co_gen_sink sink = { call_send, call_cancelled, call_remaining, &cs };
	int rc;

	if ((st = unavailable(sv, call)) != GRPC_STATUS_OK)
		return st;
	if ((rc = co_score_validate(sv, r, &spec, &ids, &err)) < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "%s", err.msg);
	if ((rc = co_sched_submit(sv->sched, &spec, &req, &err)) < 0) {
		st = rpc_call_fail(call, rpc_status_from_errno(rc), "%s", err.msg);
		goto out;
	}
	do {
		if (!next_or_cancel(&sink, req, &out)) {
			st = rpc_call_remaining_ms(call) <= 0 ? GRPC_STATUS_DEADLINE_EXCEEDED :
								 GRPC_STATUS_CANCELLED;
			goto out;
		}
	} while (!out.finish);
	if (sv->metrics)
		atomic_fetch_add_explicit(&sv->metrics->prompt_tokens, (uint64_t)spec.n_prompt,
					  memory_order_relaxed);
	if (out.finish != CO_FINISH_LENGTH) {
		st = rpc_call_fail(call, GRPC_STATUS_UNAVAILABLE, "scoring failed: %s",
				   out.finish == CO_FINISH_ERROR ? out.errmsg : "the server is stopping");
		goto out;
	}
	double sum = 0;
	for (int i = 0; i < out.n_logprobs; i++)
		sum += out.logprobs[i];
	resp.tokens = (int32_t *)spec.prompt;
	resp.n_tokens = (size_t)spec.n_prompt;
	resp.logprobs = (float *)out.logprobs;
	resp.n_logprobs = (size_t)out.n_logprobs;
	resp.mean_loss = out.n_logprobs ? -sum / out.n_logprobs : 0.0;
	/* co_score_validate() bounds the prompt so that this fits RPC_MAX_MESSAGE_BYTES. */
	int src = rpc_call_send(call, &resp.base);
	st = src < 0 ? rpc_call_fail(call, rpc_status_from_errno(src), "cannot send the scores: "
				     "%s", strerror(-src)) : GRPC_STATUS_OK;
out:
	co_req_put(req);
	free(ids);
	return st;
}

int co_serving_register(struct co_serving *sv, struct rpc_server *srv, struct fr_error *err)
{
	int rc = rpc_server_add_method(srv, RPC_M_GENERATE, RPC_METHOD_SERVER_STREAMING,
				       &ferry__v1__generate_request__descriptor, co_handle_generate,
				       sv, err);
	if (rc < 0)
		return rc;
	return rpc_server_add_method(srv, RPC_M_SCORE, RPC_METHOD_UNARY,
				     &ferry__v1__score_request__descriptor, co_handle_score, sv, err);
}
