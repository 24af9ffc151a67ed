/* SPDX-License-Identifier: Apache-2.0 */
/* status.c - gRPC status <-> -errno (converted here only), the protobuf-c bridge, and
 * credentials. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "rpc/rpc-internal.h"

int rpc_status_to_errno(grpc_status_code code)
{
	switch (code) {
	case GRPC_STATUS_OK: return 0;
	case GRPC_STATUS_CANCELLED: return -ECANCELED;
	case GRPC_STATUS_INVALID_ARGUMENT: return -EINVAL;
	case GRPC_STATUS_DEADLINE_EXCEEDED: return -ETIMEDOUT;
	case GRPC_STATUS_NOT_FOUND: return -ENOENT;
	case GRPC_STATUS_ALREADY_EXISTS: return -EEXIST;
	case GRPC_STATUS_PERMISSION_DENIED: return -EPERM;
	case GRPC_STATUS_UNAUTHENTICATED: return -EACCES;
	case GRPC_STATUS_RESOURCE_EXHAUSTED: return -EAGAIN;
	case GRPC_STATUS_UNAVAILABLE: return -EAGAIN;
	case GRPC_STATUS_FAILED_PRECONDITION: return -ESTALE;
	case GRPC_STATUS_ABORTED: return -ECONNABORTED;
	case GRPC_STATUS_OUT_OF_RANGE: return -ERANGE;
	case GRPC_STATUS_UNIMPLEMENTED: return -ENOSYS;
	case GRPC_STATUS_DATA_LOSS: return -EBADMSG;
	default: return -EIO;
	}
}

grpc_status_code rpc_status_from_errno(int neg_errno)
{
	switch (neg_errno) {
	case 0: return GRPC_STATUS_OK;
	case -ECANCELED: return GRPC_STATUS_CANCELLED;
	case -EINVAL: case -EBADMSG: case -EMSGSIZE: return GRPC_STATUS_INVALID_ARGUMENT;
	case -ETIMEDOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
	case -ENOENT: return GRPC_STATUS_NOT_FOUND;
	case -EEXIST: return GRPC_STATUS_ALREADY_EXISTS;
	case -EPERM: return GRPC_STATUS_PERMISSION_DENIED;
	case -EACCES: return GRPC_STATUS_UNAUTHENTICATED;
	case -EAGAIN: case -ENOMEM: case -ENOSPC: return GRPC_STATUS_RESOURCE_EXHAUSTED;
	/* ENOTSUP (== EOPNOTSUPP here): the request needs what this server lacks (a
	 * tokenizer): a precondition, not an unknown method. */
	case -ESTALE: case -ENOTSUP: return GRPC_STATUS_FAILED_PRECONDITION;
	case -ESHUTDOWN: return GRPC_STATUS_UNAVAILABLE;
	case -ECONNABORTED: return GRPC_STATUS_ABORTED;
	case -ERANGE: return GRPC_STATUS_OUT_OF_RANGE;
	case -ENOSYS: return GRPC_STATUS_UNIMPLEMENTED;
	default: return GRPC_STATUS_INTERNAL;
	}
}

const char *rpc_status_name(grpc_status_code code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
		"UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
	};
	if ((unsigned)code < FR_ARRAY_SIZE(names))
		return names[code];
	return "UNKNOWN_STATUS";
}

int rpc__pack(const ProtobufCMessage *msg, grpc_byte_buffer **ret_bb)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	grpc_slice slice;
	grpc_byte_buffer *bb;

	if (len > RPC_MAX_MESSAGE_BYTES)
		return -EMSGSIZE;
	slice = grpc_slice_malloc(len); /* gRPC aborts rather than return NULL */
	if (len)
		protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
	bb = grpc_raw_byte_buffer_create(&slice, 1); /* takes its own ref */
	grpc_slice_unref(slice);
	if (!bb)
		return -ENOMEM;
	*ret_bb = bb;
	return 0;
}

int rpc__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc,
		ProtobufCMessage **ret_msg)
{
	grpc_byte_buffer_reader reader;
	grpc_slice whole;
	ProtobufCMessage *msg;

	if (!bb)
		return -EBADMSG;
	if (grpc_byte_buffer_length(bb) > RPC_MAX_MESSAGE_BYTES)
		return -EMSGSIZE;
	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return -EBADMSG; /* undecompressable */
	whole = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(whole),
					GRPC_SLICE_START_PTR(whole));
	grpc_slice_unref(whole);
	if (!msg)
		return -EBADMSG;
	*ret_msg = msg;
	return 0;
}

/* ---- credentials ------------------------------------------------------------------------- */

/* The PEM texts of a struct rpc_creds, NUL-terminated (what gRPC wants); NULL where unset. */
struct rpc_pem {
	char *cert, *key, *ca;
	size_t key_len;
};

static void pem_free(struct rpc_pem *p)
{
	free(p->cert);
	free(p->ca);
	if (p->key)
		OPENSSL_cleanse(p->key, p->key_len);
	free(p->key);
	*p = (struct rpc_pem){ 0 };
}

/* Never asks for a passphrase (OpenSSL's default callback would prompt on the tty). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag, (void)u;
	return 0;
}

static void warn_validity(const char *what, const char *path, X509 *x)
{
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
		fr_warn(RPC_LOG, "%s: %s: the certificate has expired: peers will refuse it",
			what, path);
	else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
		fr_warn(RPC_LOG, "%s: %s: the certificate is not valid yet: peers will refuse it",
			what, path);
}

/* Reads path and checks that it holds at least one PEM certificate; *ret_leaf (when
 * non-NULL) gets the first one. */
static int pem_load_certs(const char *what, const char *path, char **ret_pem, X509 **ret_leaf,
			  struct fr_error *err)
{
	char *buf;
	size_t len;
	X509 *x, *leaf = NULL;
	BIO *bio;
	int rc, n = 0;

	if ((rc = fr_read_file(path, RPC_PEM_MAX_BYTES, &buf, &len, err)) < 0)
		return fr_error_prefix(err, rc, "%s", what);
	if (!(bio = BIO_new_mem_buf(buf, (int)len))) {
		free(buf);
		return fr_error_set(err, -ENOMEM, "%s: %s: out of memory", what, path);
	}
	while ((x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
		if (n++ == 0)
			leaf = x;
		else
			X509_free(x);
	}
	BIO_free(bio);
	ERR_clear_error(); /* the end of the file reads as an error */
	if (n == 0) {
		free(buf);
		return fr_error_set(err, -EINVAL, "%s: %s: not a PEM certificate file (no "
				    "\"-----BEGIN CERTIFICATE-----\" block that parses)", what, path);
	}
	if (ret_leaf)
		*ret_leaf = leaf;
	else
		X509_free(leaf);
	*ret_pem = buf;
	return 0;
}

static int pem_load_key(const char *what, const char *path, char **ret_pem, size_t *ret_len,
			EVP_PKEY **ret_key, struct fr_error *err)
{
	char *buf;
	size_t len;
	EVP_PKEY *k;
	BIO *bio;
	int rc;

	if ((rc = fr_read_file(path, RPC_PEM_MAX_BYTES, &buf, &len, err)) < 0)
		return fr_error_prefix(err, rc, "%s", what);
	if (!(bio = BIO_new_mem_buf(buf, (int)len))) {
		OPENSSL_cleanse(buf, len);
		free(buf);
		return fr_error_set(err, -ENOMEM, "%s: %s: out of memory", what, path);
	}
	k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	ERR_clear_error();
	if (!k) {
		OPENSSL_cleanse(buf, len);
		free(buf);
		return fr_error_set(err, -EINVAL, "%s: %s: not a PEM private key file (no "
				    "\"-----BEGIN ... PRIVATE KEY-----\" block that parses; "
				    "passphrase-protected keys are not supported)", what, path);
	}
	*ret_key = k;
	*ret_pem = buf;
	*ret_len = len;
	return 0;
}

/* Loads and checks every file of c into *ret (pem_free() it). */
static int creds_load(const struct rpc_creds *c, bool server, struct rpc_pem *ret,
		      struct fr_error *err)
{
	const char *cert_what = server ? "TLS certificate" : "TLS client certificate";
	const char *key_what = server ? "TLS key" : "TLS client key";
	const char *ca_what = server ? "TLS client CA" : "TLS CA";
	struct rpc_pem p = { 0 };
	X509 *leaf = NULL;
	EVP_PKEY *key = NULL;
	int rc;

	if (c->kind != RPC_CREDS_TLS)
		return fr_error_set(err, -EINVAL, "unknown credentials kind %d", (int)c->kind);
	if (server && (!c->cert_file || !c->key_file))
		return fr_error_set(err, -EINVAL, "TLS server: %s", !c->cert_file ?
				    "no certificate file" : "no key file");
	if (!server && !c->cert_file != !c->key_file)
		return fr_error_set(err, -EINVAL, "TLS client: a %s without a %s", c->cert_file ?
				    "certificate" : "key", c->cert_file ? "key" : "certificate");
	if (c->cert_file) {
		if ((rc = pem_load_certs(cert_what, c->cert_file, &p.cert, &leaf, err)) < 0 ||
		    (rc = pem_load_key(key_what, c->key_file, &p.key, &p.key_len, &key, err)) < 0)
			goto fail;
		if (X509_check_private_key(leaf, key) != 1) {
			ERR_clear_error();
			rc = fr_error_set(err, -EINVAL, "%s: %s: does not match the certificate in "
					  "%s", key_what, c->key_file, c->cert_file);
			goto fail;
		}
		warn_validity(cert_what, c->cert_file, leaf);
	}
	if (c->ca_file && (rc = pem_load_certs(ca_what, c->ca_file, &p.ca, NULL, err)) < 0)
		goto fail;
	X509_free(leaf);
	EVP_PKEY_free(key);
	*ret = p;
	return 0;
fail:
	X509_free(leaf);
	EVP_PKEY_free(key);
	pem_free(&p);
	return rc;
}

int rpc_creds_check(const struct rpc_creds *creds, bool server, struct fr_error *err)
{
	struct rpc_pem p;
	int rc;

	if (!creds || creds->kind == RPC_CREDS_INSECURE)
		return 0;
	if ((rc = creds_load(creds, server, &p, err)) < 0)
		return rc;
	pem_free(&p);
	return 0;
}

int rpc__server_creds(const struct rpc_creds *creds, grpc_server_credentials **ret_creds,
		      struct fr_error *err)
{
	grpc_server_credentials *sc;
	struct rpc_pem p;
	int rc;

	if (!creds || creds->kind == RPC_CREDS_INSECURE) {
		sc = grpc_insecure_server_credentials_create();
	} else {
		if ((rc = creds_load(creds, true, &p, err)) < 0)
			return rc;
		grpc_ssl_pem_key_cert_pair pair = { .private_key = p.key, .cert_chain = p.cert };
		/* gRPC copies the PEM texts. */
		sc = grpc_ssl_server_credentials_create_ex(
			p.ca, &pair, 1,
			p.ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY :
			       GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
			NULL);
		pem_free(&p);
	}
	if (!sc)
		return fr_error_set(err, -ENOMEM, "cannot create the server credentials");
	*ret_creds = sc;
	return 0;
}

int rpc__channel_creds(const struct rpc_creds *creds, grpc_channel_credentials **ret_creds,
		       struct fr_error *err)
{
	grpc_channel_credentials *cc;
	struct rpc_pem p;
	int rc;

	if (!creds || creds->kind == RPC_CREDS_INSECURE) {
		cc = grpc_insecure_credentials_create();
	} else {
		if ((rc = creds_load(creds, false, &p, err)) < 0)
			return rc;
		grpc_ssl_pem_key_cert_pair pair = { .private_key = p.key, .cert_chain = p.cert };
		cc = grpc_ssl_credentials_create(p.ca, p.cert ? &pair : NULL, NULL, NULL);
		pem_free(&p);
	}
	if (!cc)
		return fr_error_set(err, -ENOMEM, "cannot create the channel credentials");
	*ret_creds = cc;
	return 0;
}

gpr_timespec rpc__deadline_from_ms(int64_t timeout_ms)
{
	if (timeout_ms <= 0)
		return gpr_inf_future(GPR_CLOCK_MONOTONIC);
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
			    gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

int64_t rpc__ms_until(gpr_timespec deadline)
{
	gpr_timespec now, d;

	if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
		return INT64_MAX;
	now = gpr_now(deadline.clock_type);
	d = gpr_time_sub(deadline, now);
	/* Rounded up: 0 means the deadline has really passed. */
	return (int64_t)d.tv_sec * 1000 + (d.tv_nsec + 999999) / 1000000;
}
