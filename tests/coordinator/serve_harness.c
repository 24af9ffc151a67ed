/* SPDX-License-Identifier: Apache-2.0 */
/* serve_harness.c - see serve_harness.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/coordinator/serve_harness.h"

float sh_logit(int32_t tok, int32_t pos, int v)
{
	uint32_t h = (uint32_t)tok * 7919u + (uint32_t)pos * 104729u + (uint32_t)v * 31u;
	return (float)(h % 1000u) / 1000.0f;
}

static int fake_forward(void *ctx, int n, const int32_t *tok, const int32_t *seq,
			const int32_t *pos, const bool *want, const struct co_route_knobs *kb,
			float *logits, struct fr_error *err)
{
	struct sh *h = ctx;
	int V = h->o.vocab;

	(void)seq;
	(void)kb;
	(void)err;
	for (int i = 0; i < n; i++) {
		if (!want[i])
			continue;
		float *row = logits + (size_t)i * V;
		for (int v = 0; v < V; v++)
			row[v] = sh_logit(tok[i], pos[i], v);
		row[(tok[i] + 1) % V] = 2.0f;
	}
	if (h->o.step_delay_us)
		usleep((useconds_t)h->o.step_delay_us);
	return 0;
}

static void fake_release(void *ctx, int seq)
{
	(void)ctx;
	(void)seq;
}

int sh_create(const struct sh_opts *o, struct sh **ret, struct fr_error *err)
{
	struct sh *h = calloc(1, sizeof(*h));
	int rc;

	if (!h)
		return fr_error_set(err, -ENOMEM, "out of memory");
	h->o = *o;
	if (!h->o.vocab)
		h->o.vocab = 512;
	if (!h->o.max_ctx)
		h->o.max_ctx = 512;
	if (!h->o.max_batch)
		h->o.max_batch = 256;
	if (!h->o.max_seqs)
		h->o.max_seqs = 16;
	h->cfg = (struct model_config){ .vocab_size = h->o.vocab, .n_routed_experts = 16,
					.num_experts_per_tok = 4, .eos_token_id = -1,
					.bos_token_id = -1 };
	struct co_sched_opts so = {
		.max_seqs = h->o.max_seqs, .max_batch = h->o.max_batch,
		.prefill_chunk = h->o.prefill_chunk, .max_ctx = h->o.max_ctx,
		.kv_blocks = h->o.max_seqs * FR_DIV_ROUND_UP(h->o.max_ctx, 16), .block_size = 16,
		.queue_max = h->o.queue_max, .vocab = h->o.vocab, .eos = -1,
		.stream_buffer = h->o.stream_buffer,
	};
	struct co_sched_engine se = { .forward = fake_forward, .release = fake_release, .ctx = h };
	if ((rc = co_sched_create(&so, &se, &h->sched, err)) < 0)
		goto fail;
	h->sv = (struct co_serving){ .cfg = &h->cfg, .max_ctx = h->o.max_ctx,
				     .default_max_tokens = 16, .sched = h->sched,
				     .logits_msg_bytes = h->o.logits_msg_bytes,
				     .stall_ms = h->o.stall_ms };
	if ((rc = rpc_server_create("127.0.0.1:0", NULL, &h->srv, err)) < 0 ||
	    (rc = rpc_server_add_method(h->srv, RPC_M_GENERATE, RPC_METHOD_SERVER_STREAMING,
					&ferry__v1__generate_request__descriptor,
					co_handle_generate, &h->sv, err)) < 0 ||
	    (rc = rpc_server_add_method(h->srv, RPC_M_SCORE, RPC_METHOD_UNARY,
					&ferry__v1__score_request__descriptor, co_handle_score,
					&h->sv, err)) < 0 ||
	    (rc = rpc_server_start(h->srv, err)) < 0)
		goto fail;
	snprintf(h->addr, sizeof(h->addr), "127.0.0.1:%d", rpc_server_port(h->srv));
	if ((rc = rpc_channel_create(h->addr, NULL, &h->ch, err)) < 0)
		goto fail;
	*ret = h;
	return 0;
fail:
	sh_destroy(h);
	return rc;
}

void sh_destroy(struct sh *h)
{
	if (!h)
		return;
	rpc_channel_destroy(h->ch);
	rpc_server_destroy(h->srv);
	co_sched_destroy(h->sched);
	free(h);
}

static int append(void **buf, size_t *cap, size_t have, size_t add, size_t elem)
{
	if (have + add <= *cap)
		return 0;
	size_t n = FR_MAX(*cap * 2, have + add);
	void *p = realloc(*buf, n * elem);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = n;
	return 0;
}

int sh_generate(struct sh *h, const Ferry__V1__GenerateRequest *req, const struct sh_read *rd,
		struct sh_result *res)
{
	static const struct sh_read plain;
	struct fr_error err = { { 0 } };
	struct rpc_stream *st = NULL;
	size_t tcap = 0, rcap = 0;
	int V = h->o.vocab, rc;

	memset(res, 0, sizeof(*res));
	if (!rd)
		rd = &plain;
	rc = rpc_stream_open(h->ch, RPC_M_GENERATE, &req->base,
			     &ferry__v1__generate_response__descriptor, rd->timeout_ms, &st, &err);
	if (rc < 0) {
		res->status = rc;
		snprintf(res->errmsg, sizeof(res->errmsg), "%s", err.msg);
		return 0;
	}
	for (;;) {
		ProtobufCMessage *m = NULL;
		if (rd->delay_us)
			usleep((useconds_t)rd->delay_us);
		rc = rpc_stream_next(st, &m, &err);
		if (rc <= 0) {
			res->status = rc;
			if (rc < 0)
				snprintf(res->errmsg, sizeof(res->errmsg), "%s", err.msg);
			break;
		}
		const Ferry__V1__GenerateResponse *g = (const Ferry__V1__GenerateResponse *)m;
		if (res->messages++ == 0)
			res->prompt_tokens = g->prompt_tokens;
		if (g->n_tokens) {
			if (append((void **)&res->tokens, &tcap, (size_t)res->n_tokens, g->n_tokens,
				   sizeof(int32_t)) < 0)
				goto nomem;
			memcpy(res->tokens + res->n_tokens, g->tokens, g->n_tokens * sizeof(int32_t));
			res->n_tokens += (int)g->n_tokens;
		}
		if (g->n_logits) {
			size_t rows = g->logits_rows;
			if (rows * (size_t)V != g->n_logits) {
				res->status = -EBADMSG;
				snprintf(res->errmsg, sizeof(res->errmsg), "message %d: %zu logits for "
					 "%zu rows of %d", res->messages, g->n_logits, rows, V);
				protobuf_c_message_free_unpacked(m, NULL);
				break;
			}
			if (append((void **)&res->rows, &rcap, (size_t)res->n_rows * V, g->n_logits,
				   sizeof(float)) < 0)
				goto nomem;
			memcpy(res->rows + (size_t)res->n_rows * V, g->logits,
			       g->n_logits * sizeof(float));
			res->n_rows += (int)rows;
		}
		if (g->finish_reason)
			res->finish_reason = g->finish_reason;
		protobuf_c_message_free_unpacked(m, NULL);
		if (rd->cancel_after > 0 && res->messages >= rd->cancel_after)
			rpc_stream_cancel(st);
	}
	rpc_stream_destroy(st);
	return 0;
nomem:
	rpc_stream_destroy(st);
	sh_result_fini(res);
	return -ENOMEM;
}

void sh_result_fini(struct sh_result *res)
{
	free(res->tokens);
	free(res->rows);
	res->tokens = NULL;
	res->rows = NULL;
}

int sh_check(const struct sh *h, const int32_t *prompt, int n_prompt, bool return_logits,
	     const struct sh_result *res, struct fr_error *err)
{
	int V = h->o.vocab;

	if (res->status != 0)
		return fr_error_set(err, -1, "status %d: %s", res->status, res->errmsg);
	if (res->prompt_tokens != (uint32_t)n_prompt)
		return fr_error_set(err, -1, "prompt_tokens %u, sent %d", res->prompt_tokens,
				    n_prompt);
	for (int i = 0; i < res->n_tokens; i++) {
		int32_t prev = i ? res->tokens[i - 1] : prompt[n_prompt - 1];
		if (res->tokens[i] != (prev + 1) % V)
			return fr_error_set(err, -1, "token %d is %d, expected %d", i, res->tokens[i],
					    (prev + 1) % V);
	}
	int want_rows = return_logits ? n_prompt + res->n_tokens - 1 : 0;
	if (res->n_rows != want_rows)
		return fr_error_set(err, -1, "%d logits rows, expected %d (%d prompt, %d generated)",
				    res->n_rows, want_rows, n_prompt, res->n_tokens);
	for (int r = 0; r < res->n_rows; r++) {
		int32_t tok = r < n_prompt ? prompt[r] : res->tokens[r - n_prompt];
		const float *row = res->rows + (size_t)r * V;
		for (int v = 0; v < V; v++) {
			float want = v == (tok + 1) % V ? 2.0f : sh_logit(tok, r, v);
			if (row[v] != want)
				return fr_error_set(err, -1, "row %d (token %d, position %d) logit %d is "
						    "%g, expected %g", r, tok, r, v, (double)row[v],
						    (double)want);
		}
	}
	return 0;
}
