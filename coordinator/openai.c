/* SPDX-License-Identifier: Apache-2.0 */
/*
 * openai.c - the OpenAI-compatible HTTP API (openai.h) over libmicrohttpd, one thread per
 * connection. A completion runs co_generate_run() - the Generate path the gRPC handler
 * runs - with a sink that collects the text (stream=false) or turns each response into a
 * server-sent event (stream=true). A streamed completion is produced on a thread of its own
 * into a buffer the connection's thread sends from; a client that goes away cancels it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "coordinator/openai.h"
#include "metrics/httpd.h"
#include "rpc/auth.h"

#define LOG_COMP "http"
#define STREAM_BUFFER_MAX (8u << 20) /* SSE bytes a slow client may leave unread */

struct co_openai {
	struct MHD_Daemon *d;
	struct co_serving *sv;
	char *model_id;
	uint8_t *api_key;
	size_t api_key_len;
	int port;
	atomic_uint_fast64_t next_id;
	atomic_bool stopping;         /* co_openai_stop(): every completion ends now */
};

/* Per connection: the body as it arrives. */
struct conn {
	char *body;
	size_t len;
	bool too_big;
};

/* ---- answers --------------------------------------------------------------------------- */

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned int status, json_t *j)
{
	char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
	struct MHD_Response *r;
	enum MHD_Result ret;

	json_decref(j);
	if (!txt) { /* the answer could not be built (out of memory, text not UTF-8) */
		status = 500;
		txt = strdup("{\"error\":{\"message\":\"internal error: the answer could not be "
			     "encoded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
		if (!txt)
			return MHD_NO;
	}
	r = MHD_create_response_from_buffer(strlen(txt), txt, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(txt);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* {"error": {"message", "type", "param", "code"}}, as OpenAI answers. */
static json_t *error_json(const char *msg, const char *type, const char *param, const char *code)
{
	return json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", msg, "type", type,
			 "param", param, "code", code);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned int status, const char *msg,
				  const char *type, const char *param, const char *code)
{
	return send_json(c, status, error_json(msg, type, param, code));
}

static unsigned int http_status(grpc_status_code st)
{
	switch (st) {
	case GRPC_STATUS_OK: return 200;
	case GRPC_STATUS_INVALID_ARGUMENT:
	case GRPC_STATUS_OUT_OF_RANGE:
	case GRPC_STATUS_FAILED_PRECONDITION: return 400;
	case GRPC_STATUS_UNAUTHENTICATED: return 401;
	case GRPC_STATUS_PERMISSION_DENIED: return 403;
	case GRPC_STATUS_NOT_FOUND: return 404;
	case GRPC_STATUS_RESOURCE_EXHAUSTED: return 429;
	case GRPC_STATUS_UNIMPLEMENTED: return 501;
	case GRPC_STATUS_UNAVAILABLE: return 503;
	case GRPC_STATUS_DEADLINE_EXCEEDED: return 504;
	default: return 500;
	}
}

static const char *error_type(unsigned int http)
{
	return http == 401 ? "authentication_error" : http == 429 ? "rate_limit_exceeded"
	       : http < 500 ? "invalid_request_error" : "server_error";
}

static const char *finish_name(Ferry__V1__FinishReason f)
{
	/* OpenAI's two: "stop" (a natural end or a stop sequence) and "length" (max_tokens,
	 * or the context). */
	return f == FERRY__V1__FINISH_REASON__FINISH_REASON_STOP ? "stop" : "length";
}

/* ---- a completion's answer, piece by piece ----------------------------------------------- */

struct completion {
	struct co_openai *h;
	struct co_openai_completion req;
	char id[48];
	long long created;
	/* what came so far */
	char *text;
	size_t text_len;
	json_t *tokens;               /* token ids (a Ferry extension: "token_ids") */
	Ferry__V1__FinishReason finish;
	uint32_t prompt_tokens, completion_tokens;
	grpc_status_code st;
	struct fr_error err;
	/* stream=true: the SSE bytes not yet sent, and who waits for them */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *sse;
	size_t sse_len, sse_off;
	bool done;                    /* the producer finished (sse holds the rest) */
	atomic_bool gone;             /* the client went away */
	pthread_t producer;
	bool producer_started;
};

static json_t *chunk_json(struct completion *k, const char *text, size_t len, json_t *tokens,
			  const char *finish)
{
	json_t *choice = json_pack("{s:s%, s:i, s:n, s:s?, s:o}", "text", text ? text : "",
				   text ? len : 0, "index", 0, "logprobs", "finish_reason", finish,
				   "token_ids", tokens ? tokens : json_array());
	return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", k->id, "object", "text_completion",
			 "created", (json_int_t)k->created, "model", k->h->model_id, "choices",
			 choice);
}

static json_t *usage_json(const struct completion *k)
{
	return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (int)k->prompt_tokens,
			 "completion_tokens", (int)k->completion_tokens, "total_tokens",
			 (int)(k->prompt_tokens + k->completion_tokens));
}

static int append(char **buf, size_t *len, const char *add, size_t n)
{
	char *p = realloc(*buf, *len + n + 1);
	if (!p)
		return -ENOMEM;
	memcpy(p + *len, add, n);
	*len += n;
	p[*len] = '\0';
	*buf = p;
	return 0;
}

/* One SSE event, "data: JSON\n\n", for the connection's thread to send. */
static int push_event(struct completion *k, json_t *j)
{
	char *txt = json_dumps(j, JSON_COMPACT);
	int rc = -ENOMEM;

	json_decref(j);
	if (!txt)
		return rc;
	pthread_mutex_lock(&k->mu);
	if (k->sse_len - k->sse_off > STREAM_BUFFER_MAX) {
		rc = -ENOBUFS; /* the client reads nothing */
	} else if (append(&k->sse, &k->sse_len, "data: ", 6) == 0 &&
		   append(&k->sse, &k->sse_len, txt, strlen(txt)) == 0 &&
		   append(&k->sse, &k->sse_len, "\n\n", 2) == 0) {
		rc = 0;
		pthread_cond_broadcast(&k->cv);
	}
	pthread_mutex_unlock(&k->mu);
	free(txt);
	return rc;
}

static int sink_send(void *ctx, const Ferry__V1__GenerateResponse *m)
{
	struct completion *k = ctx;

	if (m->prompt_tokens)
		k->prompt_tokens = m->prompt_tokens;
	if (m->usage) {
		k->prompt_tokens = m->usage->prompt_tokens;
		k->completion_tokens = m->usage->completion_tokens;
	}
	if (m->finish_reason)
		k->finish = m->finish_reason;
	if (!k->req.stream) {
		for (size_t i = 0; i < m->n_tokens; i++)
			json_array_append_new(k->tokens, json_integer(m->tokens[i]));
		if (m->text && m->text[0] &&
		    append(&k->text, &k->text_len, m->text, strlen(m->text)) < 0)
			return -ENOMEM;
		return 0;
	}
	if (!m->n_tokens && !(m->text && m->text[0]) && !m->finish_reason)
		return 0;
	json_t *ids = json_array();
	for (size_t i = 0; i < m->n_tokens; i++)
		json_array_append_new(ids, json_integer(m->tokens[i]));
	return push_event(k, chunk_json(k, m->text, m->text ? strlen(m->text) : 0, ids,
					m->finish_reason ? finish_name(m->finish_reason) : NULL));
}

static bool sink_cancelled(void *ctx)
{
	struct completion *k = ctx;
	return atomic_load(&k->gone) || atomic_load(&k->h->stopping);
}

static int64_t sink_remaining(void *ctx)
{
	(void)ctx;
	return INT64_MAX;
}

static void completion_free(struct completion *k)
{
	if (!k)
		return;
	co_openai_completion_fini(&k->req);
	json_decref(k->tokens);
	free(k->text);
	free(k->sse);
	pthread_mutex_destroy(&k->mu);
	pthread_cond_destroy(&k->cv);
	free(k);
}

static void run_completion(struct completion *k)
{
	struct co_gen_sink sink = { sink_send, sink_cancelled, sink_remaining, k };

	k->st = co_generate_run(k->h->sv, &k->req.gen, &sink, &k->err);
	if (k->st != GRPC_STATUS_OK && !k->err.msg[0])
		fr_error_set(&k->err, -EIO, "%s", k->st == GRPC_STATUS_RESOURCE_EXHAUSTED ?
			     "the client read nothing for too long" : rpc_status_name(k->st));
}

static void *producer_main(void *p)
{
	struct completion *k = p;

	run_completion(k);
	if (k->st == GRPC_STATUS_OK && k->req.include_usage) {
		json_t *u = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", k->id, "object",
				      "text_completion", "created", (json_int_t)k->created, "model",
				      k->h->model_id, "choices", "usage", usage_json(k));
		push_event(k, u);
	} else if (k->st != GRPC_STATUS_OK && !atomic_load(&k->gone)) {
		unsigned int http = http_status(k->st);
		push_event(k, error_json(k->err.msg, error_type(http), NULL, NULL));
	}
	pthread_mutex_lock(&k->mu);
	append(&k->sse, &k->sse_len, "data: [DONE]\n\n", 14);
	k->done = true;
	pthread_cond_broadcast(&k->cv);
	pthread_mutex_unlock(&k->mu);
	return NULL;
}

/* MHD pulls the stream from here, on the connection's thread: waits for events. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct completion *k = cls;
	ssize_t n;

	(void)pos;
	pthread_mutex_lock(&k->mu);
	while (k->sse_off == k->sse_len && !k->done)
		pthread_cond_wait(&k->cv, &k->mu);
	if (k->sse_off == k->sse_len) {
		pthread_mutex_unlock(&k->mu);
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	n = (ssize_t)FR_MIN(max, k->sse_len - k->sse_off);
	memcpy(buf, k->sse + k->sse_off, (size_t)n);
	k->sse_off += (size_t)n;
	if (k->sse_off == k->sse_len) { /* all sent: start over at the front */
		k->sse_off = k->sse_len = 0;
	}
	pthread_mutex_unlock(&k->mu);
	return n;
}

/* The stream is over, or the client went away: stop the producer, free everything. */
static void stream_free(void *cls)
{
	struct completion *k = cls;

	atomic_store(&k->gone, true);
	if (k->producer_started)
		pthread_join(k->producer, NULL);
	completion_free(k);
}

static enum MHD_Result completions(struct co_openai *h, struct MHD_Connection *c,
				   const struct conn *cn)
{
	struct completion *k;
	char param[CO_OPENAI_PARAM_MAX];
	struct fr_error err = { { 0 } };
	int rc;

	k = calloc(1, sizeof(*k));
	if (!k)
		return MHD_NO;
	pthread_mutex_init(&k->mu, NULL);
	pthread_cond_init(&k->cv, NULL);
	k->h = h;
	k->tokens = json_array();
	rc = co_openai_parse_completion(cn->body ? cn->body : "", cn->len, &k->req, param, &err);
	if (rc < 0) {
		completion_free(k);
		return send_error(c, rc == -ENOMEM ? 500 : 400, err.msg, rc == -ENOMEM ?
				  "server_error" : "invalid_request_error", param[0] ? param : NULL,
				  NULL);
	}
	if (k->req.model && strcmp(k->req.model, h->model_id) != 0) {
		char msg[512];
		snprintf(msg, sizeof(msg), "The model '%.200s' does not exist: this server serves "
			 "'%.200s' (GET /v1/models)", k->req.model, h->model_id);
		completion_free(k);
		return send_error(c, 404, msg, "invalid_request_error", "model", "model_not_found");
	}
	snprintf(k->id, sizeof(k->id), "cmpl-%llx%08llx", (unsigned long long)time(NULL),
		 (unsigned long long)atomic_fetch_add(&h->next_id, 1));
	k->created = (long long)time(NULL);

	if (!k->req.stream) {
		run_completion(k);
		enum MHD_Result ret;
		if (k->st != GRPC_STATUS_OK) {
			unsigned int http = http_status(k->st);
			ret = send_error(c, http, k->err.msg, error_type(http), NULL, NULL);
		} else {
			json_t *j = chunk_json(k, k->text, k->text_len, json_incref(k->tokens),
					       finish_name(k->finish));
			json_object_set_new(j, "usage", usage_json(k));
			ret = send_json(c, 200, j);
		}
		completion_free(k);
		return ret;
	}

	/* Streamed: the first event decides nothing about the status, so validation errors
	 * the scheduler reports come as an error event; the checks above already caught the
	 * malformed requests. */
	if ((rc = pthread_create(&k->producer, NULL, producer_main, k)) != 0) {
		completion_free(k);
		return send_error(c, 503, "cannot start the stream: out of threads", "server_error",
				  NULL, NULL);
	}
	k->producer_started = true;
	struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
								   stream_read, k, stream_free);
	if (!r) {
		stream_free(k);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result ret = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result models(struct co_openai *h, struct MHD_Connection *c)
{
	return send_json(c, 200, json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list",
					   "data", "id", h->model_id, "object", "model",
					   "created", (json_int_t)0, "owned_by", "ferry"));
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **req_cls)
{
	struct co_openai *h = cls;
	struct conn *cn = *req_cls;

	(void)version;
	if (!cn) {
		if (!(cn = calloc(1, sizeof(*cn))))
			return MHD_NO;
		*req_cls = cn;
		return MHD_YES;
	}
	if (*upload_size) {
		if (cn->len + *upload_size > CO_OPENAI_MAX_BODY)
			cn->too_big = true;
		else if (append(&cn->body, &cn->len, upload, *upload_size) < 0)
			return MHD_NO;
		*upload_size = 0;
		return MHD_YES;
	}
	if (h->api_key) {
		const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							       MHD_HTTP_HEADER_AUTHORIZATION);
		if (rpc_auth_bearer_check(auth, h->api_key, h->api_key_len) < 0)
			return send_error(c, 401, "Incorrect API key provided: send \"Authorization: "
					  "Bearer <key>\" with the key of [http] api_key_file",
					  "authentication_error", NULL, "invalid_api_key");
	}
	bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
	bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
	if (strcmp(url, "/v1/completions") == 0) {
		if (!post)
			return send_error(c, 405, "/v1/completions takes POST", "invalid_request_error",
					  NULL, NULL);
		if (cn->too_big)
			return send_error(c, 413, "the request body is larger than 4 MiB",
					  "invalid_request_error", NULL, NULL);
		return completions(h, c, cn);
	}
	if (strcmp(url, "/v1/models") == 0) {
		if (!get)
			return send_error(c, 405, "/v1/models takes GET", "invalid_request_error",
					  NULL, NULL);
		return models(h, c);
	}
	char msg[300];
	snprintf(msg, sizeof(msg), "%.200s %.60s: no such endpoint (this server has POST "
		 "/v1/completions and GET /v1/models)", url, method);
	return send_error(c, 404, msg, "invalid_request_error", NULL, "unknown_url");
}

static void request_done(void *cls, struct MHD_Connection *c, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct conn *cn = *req_cls;

	(void)cls;
	(void)c;
	(void)toe;
	if (cn) {
		free(cn->body);
		free(cn);
		*req_cls = NULL;
	}
}

static struct co_openai *alloc_api(const struct co_openai_opts *o, struct co_serving *sv)
{
	struct co_openai *h = calloc(1, sizeof(*h));

	if (!h || !(h->model_id = strdup(o->model_id ? o->model_id : "ferry")) ||
	    (o->api_key && !(h->api_key = malloc(o->api_key_len)))) {
		co_openai_stop(h);
		return NULL;
	}
	if (o->api_key) {
		memcpy(h->api_key, o->api_key, o->api_key_len);
		h->api_key_len = o->api_key_len;
	}
	h->sv = sv;
	return h;
}

int co_openai_start(const struct co_openai_opts *o, struct co_serving *sv,
		    struct co_openai **ret, struct fr_error *err)
{
	struct co_openai *h;
	int fd, port;

	/* host:port, or unix:/path for a reverse proxy on the same host */
	if ((fd = fr_httpd_listen_socket(o->listen, &port, err)) < 0)
		return fr_error_prefix(err, fd, "http");
	if (!(h = alloc_api(o, sv))) {
		close(fd);
		return fr_error_set(err, -ENOMEM, "http: out of memory");
	}
	h->port = port;
	h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
				0, NULL, NULL, answer, h, MHD_OPTION_LISTEN_SOCKET, fd,
				MHD_OPTION_NOTIFY_COMPLETED, request_done, NULL,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned int)1024,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)600, MHD_OPTION_END);
	if (!h->d) {
		close(fd);
		co_openai_stop(h);
		return fr_error_set(err, -EIO, "http: cannot serve on %s", o->listen);
	}
	*ret = h;
	return 0;
}

int co_openai_port(const struct co_openai *h)
{
	return h->port;
}

void co_openai_stop(struct co_openai *h)
{
	if (!h)
		return;
	atomic_store(&h->stopping, true);
	if (h->d)
		MHD_stop_daemon(h->d);
	free(h->model_id);
	free(h->api_key);
	free(h);
}
