/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctl/ctl.h"
#include "kernels/kernels.h"

const struct ctl_cmd *const ctl_cmds[] = {
	&ctl_cmd_run,
	&ctl_cmd_model,
	&ctl_cmd_tokenize,
	&ctl_cmd_detokenize,
	&ctl_cmd_placement,
#ifdef FERRY_HAVE_GRPC
	&ctl_cmd_up,
	&ctl_cmd_load,
	&ctl_cmd_status,
	&ctl_cmd_rebalance,
	&ctl_cmd_drain,
	&ctl_cmd_undrain,
	&ctl_cmd_generate,
	&ctl_cmd_score,
	&ctl_cmd_eval,
	&ctl_cmd_bench_serve,
#endif
	NULL,
};

void ctl_getopt_reset(void)
{
	/* glibc: optind = 0 re-initialises getopt completely. */
	optind = 0;
	opterr = 0;
}

int ctl_arg_i64(const char *name, const char *s, int64_t min, int64_t max, int64_t *ret,
		struct fr_error *err)
{
	if (fr_parse_i64(s, min, max, ret) < 0)
		return fr_error_set(err, -EINVAL, "--%s: '%s' is not an integer in [%lld, %lld]", name,
				    s, (long long)min, (long long)max);
	return 0;
}

int ctl_arg_int(const char *name, const char *s, int min, int max, int *ret, struct fr_error *err)
{
	int64_t v;
	int rc = ctl_arg_i64(name, s, min, max, &v, err);
	if (rc == 0)
		*ret = (int)v;
	return rc;
}

int ctl_arg_precision(const char *s, int *ret, struct fr_error *err)
{
	enum kn_precision pr;

	if (kn_precision_parse(s, &pr) < 0)
		return fr_error_set(err, -EINVAL, "--precision '%s': expected exact or fast", s);
	*ret = (int)pr;
	return 0;
}

int ctl_parsed(const char *cmd, const char *usage, int rc, const struct fr_error *err)
{
	if (rc == 1) {
		fputs(usage, stdout);
		return CTL_EXIT_OK;
	}
	if (rc < 0) {
		fprintf(stderr, "ferryctl %s: %s\n(see ferryctl %s --help)\n", cmd, err->msg, cmd);
		return CTL_EXIT_USAGE;
	}
	return -1;
}

void ctl_tls_opt(struct ctl_tls *t, int c, const char *arg)
{
	if (c == CTL_OPT_TLS_CA)
		t->ca = arg;
	else if (c == CTL_OPT_TLS_CERT)
		t->cert = arg;
	else if (c == CTL_OPT_TLS_KEY)
		t->key = arg;
}

bool ctl_tls_given(const struct ctl_tls *t)
{
	return t->ca || t->cert || t->key;
}

static const char *env_or(const char *v, const char *name)
{
	const char *e;

	if (v)
		return v;
	e = getenv(name);
	return e && *e ? e : NULL;
}

int ctl_tls_finish(struct ctl_tls *t, struct fr_error *err)
{
	bool cert_arg = t->cert != NULL, key_arg = t->key != NULL;

	t->ca = env_or(t->ca, "FERRY_TLS_CA");
	t->cert = env_or(t->cert, "FERRY_TLS_CERT");
	t->key = env_or(t->key, "FERRY_TLS_KEY");
	if (t->cert && !t->key)
		return fr_error_set(err, -EINVAL, "--tls-cert%s: needs --tls-key (or $FERRY_TLS_KEY)",
				    cert_arg ? "" : " ($FERRY_TLS_CERT)");
	if (t->key && !t->cert)
		return fr_error_set(err, -EINVAL, "--tls-key%s: needs --tls-cert (or $FERRY_TLS_CERT)",
				    key_arg ? "" : " ($FERRY_TLS_KEY)");
	return 0;
}
