/* SPDX-License-Identifier: Apache-2.0 */
/*
 * inference.h - the model-facing unary methods of ferry.v1.Inference (Tokenize,
 * Detokenize, ModelInfo), and the text <-> ids checks Generate and Score share with them.
 *
 * The server registers the handlers with a struct co_inference_info as arg:
 *
 *	rpc_server_add_method(srv, RPC_M_TOKENIZE, RPC_METHOD_UNARY,
 *			      &ferry__v1__tokenize_request__descriptor, co_handle_tokenize,
 *			      &info, &err);
 *
 * Error texts (the status detail clients see after the status name):
 *   FAILED_PRECONDITION  CO_ERR_NO_TOKENIZER for text in (Tokenize, Generate.prompt,
 *                        Score.text); CO_ERR_NO_TOKENIZER_DETOK for text out (Detokenize)
 *   INVALID_ARGUMENT     "tokens[3] = 200000 is out of range [0, 128815)",
 *                        "text is 2000000 bytes, over the 1048576-byte limit"
 *   RESOURCE_EXHAUSTED   out of memory
 */
#ifndef FERRY_COORDINATOR_INFERENCE_H
#define FERRY_COORDINATOR_INFERENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "model/model.h"
#include "rpc/inference.pb-c.h"
#include "rpc/rpc.h"

/* Largest text a request may carry (Tokenize.text, Generate.prompt, Score.text). */
#define CO_TEXT_MAX_BYTES (1u << 20)
/* Most ids a Detokenize request may carry. */
#define CO_DETOKENIZE_MAX_IDS (1u << 20)

#define CO_ERR_NO_TOKENIZER "model has no tokenizer.json, send token ids"
#define CO_ERR_NO_TOKENIZER_DETOK "model has no tokenizer.json, ids cannot become text"

struct co_inference_info {
	const struct model_config *cfg;     /* borrowed; required */
	const struct model_tokenizer *tok;  /* borrowed; NULL: the model has none */
	int max_ctx;                        /* context the server accepts (prompt + generated);
	                                     * <= 0: the config's max_position_embeddings */
	/* Optional (NULL: ModelInfo has no placement). Fills *ret, which the caller has set to
	 * FERRY__V1__PLACEMENT_SUMMARY__INIT; ret->worker_slots, if set, is a malloc'ed array
	 * of ret->n_worker_slots that the caller frees. Called on a handler thread: it must
	 * take whatever lock guards the placement. */
	void (*placement)(void *ctx, Ferry__V1__PlacementSummary *ret);
	void *placement_ctx;
};

/* ---- shared checks (0 or a negative errno; rpc_status_from_errno() gives the status) ---- */

/* Text to ids with the model's tokenizer; add_bos prepends its BOS (the config's when the
 * tokenizer names none). *ret_ids heap, caller frees; set on success only.
 * Errors: -ESTALE (no tokenizer: CO_ERR_NO_TOKENIZER), -EINVAL (len over
 * CO_TEXT_MAX_BYTES; add_bos without a BOS id), -ENOMEM. */
int co_text_to_ids(const struct co_inference_info *info, const char *text, size_t len,
		   bool add_bos, int32_t **ret_ids, size_t *ret_n, struct fr_error *err);

/* Checks ids[n] are in [0, vocab). -EINVAL names the first bad one with field:
 * "prompt_tokens[3] = 200000 is out of range [0, 1024)". */
int co_check_ids(const char *field, const int32_t *ids, size_t n, int vocab,
		 struct fr_error *err);

/* ---- handlers (rpc_handler_fn; arg: const struct co_inference_info *) --------------------- */

/* TokenizeRequest -> TokenizeResponse. FAILED_PRECONDITION without a tokenizer;
 * INVALID_ARGUMENT for text over CO_TEXT_MAX_BYTES or add_bos without a BOS id. */
grpc_status_code co_handle_tokenize(struct rpc_call *call, const ProtobufCMessage *req,
				    void *arg);
/* DetokenizeRequest -> DetokenizeResponse, invalid UTF-8 repaired to U+FFFD, and NUL bytes
 * too (a protobuf-c string cannot hold them): co_utf8_proto().
 * FAILED_PRECONDITION without a tokenizer; INVALID_ARGUMENT for an id outside the
 * tokenizer's vocabulary or that names no token, or more than CO_DETOKENIZE_MAX_IDS ids,
 * or text that would not fit in a message. */
grpc_status_code co_handle_detokenize(struct rpc_call *call, const ProtobufCMessage *req,
				      void *arg);
/* ModelInfoRequest -> ModelInfoResponse: config_json (model_config_to_json), the shape,
 * max_context, has_tokenizer, the matching generator preset and every preset, the
 * placement. Never fails but for out of memory (RESOURCE_EXHAUSTED). */
grpc_status_code co_handle_model_info(struct rpc_call *call, const ProtobufCMessage *req,
				      void *arg);

/* Registers Tokenize, Detokenize and ModelInfo on srv with info as their argument (info
 * must outlive srv). Errors: rpc_server_add_method()'s. */
int co_inference_register(struct co_inference_info *info, struct rpc_server *srv,
			  struct fr_error *err);

#endif /* FERRY_COORDINATOR_INFERENCE_H */
