/* SPDX-License-Identifier: Apache-2.0 */
/* inference.c - Tokenize, Detokenize and ModelInfo of ferry.v1.Inference. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/inference.h"
#include "coordinator/text.h"

/* Room left for the rest of a response around its one big field. */
#define MSG_SLACK 1024

int co_text_to_ids(const struct co_inference_info *info, const char *text, size_t len,
		   bool add_bos, int32_t **ret_ids, size_t *ret_n, struct fr_error *err)
{
	int32_t *ids, *out;
	size_t n;
	int bos = -1, rc;

	if (!info->tok)
		return fr_error_set(err, -ESTALE, CO_ERR_NO_TOKENIZER);
	if (len > CO_TEXT_MAX_BYTES)
		return fr_error_set(err, -EINVAL, "text is %zu bytes, over the %u-byte limit", len,
				    CO_TEXT_MAX_BYTES);
	if (add_bos) {
		bos = model_tokenizer_bos(info->tok);
		if (bos < 0)
			bos = info->cfg->bos_token_id;
		if (bos < 0)
			return fr_error_set(err, -EINVAL, "add_bos: the model has no BOS token");
	}
	rc = model_tokenizer_encode(info->tok, text, len, false, &ids, &n);
	if (rc < 0)
		return fr_error_set(err, rc, "tokenizing %zu bytes: %s", len, strerror(-rc));
	if (!add_bos) {
		*ret_ids = ids;
		*ret_n = n;
		return 0;
	}
	out = malloc((n + 1) * sizeof(*out));
	if (!out) {
		free(ids);
		return fr_error_set(err, -ENOMEM, "out of memory");
	}
	out[0] = bos;
	memcpy(out + 1, ids, n * sizeof(*ids));
	free(ids);
	*ret_ids = out;
	*ret_n = n + 1;
	return 0;
}

int co_check_ids(const char *field, const int32_t *ids, size_t n, int vocab,
		 struct fr_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= vocab)
			return fr_error_set(err, -EINVAL, "%s[%zu] = %d is out of range [0, %d)",
					    field, i, ids[i], vocab);
	return 0;
}

static grpc_status_code fail_errno(struct rpc_call *call, int rc, const struct fr_error *err)
{
	return rpc_call_fail(call, rpc_status_from_errno(rc), "%s",
			     err->msg[0] ? err->msg : strerror(-rc));
}

static grpc_status_code send_or_fail(struct rpc_call *call, const ProtobufCMessage *msg)
{
	int rc = rpc_call_send(call, msg);

	if (rc < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "send: %s", strerror(-rc));
	return GRPC_STATUS_OK;
}

grpc_status_code co_handle_tokenize(struct rpc_call *call, const ProtobufCMessage *req,
				    void *arg)
{
	const Ferry__V1__TokenizeRequest *r = (const Ferry__V1__TokenizeRequest *)req;
	const struct co_inference_info *info = arg;
	Ferry__V1__TokenizeResponse resp = FERRY__V1__TOKENIZE_RESPONSE__INIT;
	struct fr_error err = { { 0 } };
	const char *text = r->text ? r->text : "";
	grpc_status_code st;
	int32_t *ids;
	size_t n;
	int rc;

	rc = co_text_to_ids(info, text, strlen(text), r->add_bos, &ids, &n, &err);
	if (rc < 0)
		return fail_errno(call, rc, &err);
	resp.tokens = ids;
	resp.n_tokens = n;
	st = send_or_fail(call, &resp.base);
	free(ids);
	return st;
}

grpc_status_code co_handle_detokenize(struct rpc_call *call, const ProtobufCMessage *req,
				      void *arg)
{
	const Ferry__V1__DetokenizeRequest *r = (const Ferry__V1__DetokenizeRequest *)req;
	const struct co_inference_info *info = arg;
	Ferry__V1__DetokenizeResponse resp = FERRY__V1__DETOKENIZE_RESPONSE__INIT;
	struct fr_error err = { { 0 } };
	grpc_status_code st;
	char *raw, *text;
	size_t raw_len, len;
	int vocab, rc;

	if (!info->tok)
		return rpc_call_fail(call, GRPC_STATUS_FAILED_PRECONDITION,
				     CO_ERR_NO_TOKENIZER_DETOK);
	if (r->n_tokens > CO_DETOKENIZE_MAX_IDS)
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "%zu tokens, over the limit of %u", r->n_tokens,
				     CO_DETOKENIZE_MAX_IDS);
	vocab = model_tokenizer_vocab_size(info->tok);
	if ((rc = co_check_ids("tokens", r->tokens, r->n_tokens, vocab, &err)) < 0)
		return fail_errno(call, rc, &err);
	rc = model_tokenizer_decode(info->tok, r->tokens, r->n_tokens, r->skip_special_tokens,
				    &raw, &raw_len);
	if (rc == -EINVAL) {
		/* In range but no token (a gap in the vocabulary): find which. */
		for (size_t i = 0; i < r->n_tokens; i++) {
			char *t;
			size_t tl;
			rc = model_tokenizer_decode(info->tok, &r->tokens[i], 1, false, &t, &tl);
			if (rc == 0) {
				free(t);
				continue;
			}
			if (rc == -EINVAL)
				return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
						     "tokens[%zu] = %d names no token of "
						     "tokenizer.json", i, r->tokens[i]);
			break;
		}
		rc = rc < 0 ? rc : -EINVAL;
	}
	if (rc < 0)
		return rpc_call_fail(call, rpc_status_from_errno(rc), "decode: %s", strerror(-rc));
	rc = co_utf8_proto(raw, raw_len, &text, &len);
	free(raw);
	if (rc < 0)
		return rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
	if (len > RPC_MAX_MESSAGE_BYTES - MSG_SLACK) {
		free(text);
		return rpc_call_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
				     "text would be %zu bytes, over the %u-byte message limit", len,
				     RPC_MAX_MESSAGE_BYTES);
	}
	resp.text = text;
	st = send_or_fail(call, &resp.base);
	free(text);
	return st;
}

grpc_status_code co_handle_model_info(struct rpc_call *call, const ProtobufCMessage *req,
				      void *arg)
{
	const struct co_inference_info *info = arg;
	const struct model_config *c = info->cfg;
	Ferry__V1__ModelInfoResponse resp = FERRY__V1__MODEL_INFO_RESPONSE__INIT;
	Ferry__V1__PlacementSummary place = FERRY__V1__PLACEMENT_SUMMARY__INIT;
	char *presets[MODEL_PRESET__COUNT];
	const char *preset;
	grpc_status_code st;
	int ctx;

	(void)req;
	resp.config_json = model_config_to_json(c);
	if (!resp.config_json)
		return rpc_call_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
	resp.model_type = (char *)c->model_type;
	resp.vocab_size = (uint32_t)c->vocab_size;
	resp.hidden_size = (uint32_t)c->hidden_size;
	resp.num_hidden_layers = (uint32_t)c->num_hidden_layers;
	resp.moe_layers = (uint32_t)model_n_moe_layers(c);
	resp.n_routed_experts = (uint32_t)c->n_routed_experts;
	resp.num_experts_per_tok = (uint32_t)c->num_experts_per_tok;
	resp.n_shared_experts = (uint32_t)c->n_shared_experts;
	ctx = c->max_position_embeddings;
	if (info->max_ctx > 0 && info->max_ctx < ctx)
		ctx = info->max_ctx;
	resp.max_context = (uint32_t)ctx;
	resp.has_tokenizer = info->tok != NULL;
	preset = model_gen_preset_match(c);
	resp.preset = (char *)(preset ? preset : "");
	for (int p = 0; p < MODEL_PRESET__COUNT; p++)
		presets[p] = (char *)model_preset_name((enum model_preset)p);
	resp.presets = presets;
	resp.n_presets = MODEL_PRESET__COUNT;
	if (info->placement) {
		info->placement(info->placement_ctx, &place);
		resp.placement = &place;
	}
	st = send_or_fail(call, &resp.base);
	free(place.worker_slots);
	free(resp.config_json);
	return st;
}

int co_inference_register(struct co_inference_info *info, struct rpc_server *srv,
			  struct fr_error *err)
{
	static const struct {
		const char *path;
		const ProtobufCMessageDescriptor *desc;
		rpc_handler_fn fn;
	} m[] = {
		{ RPC_M_TOKENIZE, &ferry__v1__tokenize_request__descriptor, co_handle_tokenize },
		{ RPC_M_DETOKENIZE, &ferry__v1__detokenize_request__descriptor,
		  co_handle_detokenize },
		{ RPC_M_MODEL_INFO, &ferry__v1__model_info_request__descriptor,
		  co_handle_model_info },
	};
	int rc;

	for (size_t i = 0; i < FR_ARRAY_SIZE(m); i++)
		if ((rc = rpc_server_add_method(srv, m[i].path, RPC_METHOD_UNARY, m[i].desc,
						m[i].fn, info, err)) < 0)
			return rc;
	return 0;
}
