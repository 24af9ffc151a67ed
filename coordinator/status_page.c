/* SPDX-License-Identifier: Apache-2.0 */
/*
 * status_page.c - the coordinator's status page on the metrics port: GET / is a small HTML
 * page (no outside resources) that renders GET /status.json every two seconds - workers
 * and their state, per-layer balancedness, a per-(layer, expert) load heat map in SVG over
 * the load window with each expert's replicas, and the last rebalances.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "coordinator/server-internal.h"

static const char page[] =
	"<!doctype html>\n"
	"<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ferry</title>\n"
	"<style>\n"
	"body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\n"
	"h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .4em}\n"
	"table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;"
	"text-align:left}th{background:#f4f4f4}\n"
	".serving{color:#1a7f37}.dead,.suspect,.failed{color:#cf222e}.draining,.joining"
	"{color:#9a6700}\n"
	"#summary span{margin-right:1.5em}.muted{color:#777}\n"
	"</style></head><body>\n"
	"<h1>Ferry <span id=\"model\" class=\"muted\"></span></h1>\n"
	"<div id=\"summary\">loading /status.json ...</div>\n"
	"<h2>Workers</h2><table id=\"workers\"><thead><tr><th>#</th><th>name</th><th>address"
	"</th><th>state</th><th>slots per layer</th><th>slots in service (all MoE layers)</th>"
	"<th>tokens (window)</th></tr></thead><tbody></tbody></table>\n"
	"<h2>Expert load per MoE layer <span class=\"muted\">(share of the layer's tokens over"
	" the load window; the number in a cell is its replicas when more than one)</span></h2>\n"
	"<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\"></svg>\n"
	"<h2>Layers</h2><table id=\"layers\"><thead><tr><th>MoE layer</th><th>balancedness by"
	" tokens</th><th>by time</th><th>hottest expert</th></tr></thead><tbody></tbody>"
	"</table>\n"
	"<h2>Placement <span class=\"muted\">(the experts each worker holds, per MoE layer)"
	"</span></h2><table id=\"placement\"><thead><tr><th>MoE layer</th><th>worker</th><th>"
	"experts in its slots</th></tr></thead><tbody></tbody></table>\n"
	"<h2>Last rebalances</h2><table id=\"rebalances\"><thead><tr><th>when</th><th>why</th>"
	"<th>slots moved</th><th>seconds</th><th>balancedness before</th><th>after</th></tr>"
	"</thead><tbody></tbody></table>\n"
	"<script>\n"
	"'use strict';\n"
	"function el(tag, attrs, text) {\n"
	"  const e = document.createElementNS(tag === 'tr' || tag === 'td' ? "
	"'http://www.w3.org/1999/xhtml' : 'http://www.w3.org/2000/svg', tag);\n"
	"  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);\n"
	"  if (text !== undefined) e.textContent = text;\n"
	"  return e;\n"
	"}\n"
	"function row(cells, cls) {\n"
	"  const tr = document.createElement('tr');\n"
	"  cells.forEach((c, i) => { const td = document.createElement('td');\n"
	"    td.textContent = c; if (cls && cls[i]) td.className = cls[i]; tr.appendChild(td); });\n"
	"  return tr;\n"
	"}\n"
	"function fill(id, rows) {\n"
	"  const tb = document.querySelector('#' + id + ' tbody');\n"
	"  tb.replaceChildren(...rows);\n"
	"}\n"
	"function color(x) { /* 0 = white, 1 = deep orange */\n"
	"  const t = Math.max(0, Math.min(1, x));\n"
	"  return 'rgb(' + Math.round(255 - 25 * t) + ',' + Math.round(255 - 170 * t) + ',' +"
	" Math.round(255 - 235 * t) + ')';\n"
	"}\n"
	"function heat(s) {\n"
	"  const svg = document.getElementById('heatmap');\n"
	"  const cw = Math.max(6, Math.min(24, Math.floor(1100 / Math.max(1, s.n_experts)))), "
	"ch = 18, left = 60, top = 18;\n"
	"  svg.setAttribute('width', left + cw * s.n_experts + 10);\n"
	"  svg.setAttribute('height', top + ch * s.layers.length + 10);\n"
	"  const kids = [];\n"
	"  for (let e = 0; e < s.n_experts; e += Math.max(1, Math.ceil(s.n_experts / 16)))\n"
	"    kids.push(el('text', {x: left + e * cw, y: 12, 'font-size': 10}, 'e' + e));\n"
	"  s.layers.forEach((L, r) => {\n"
	"    const tot = L.expert_tokens.reduce((a, b) => a + b, 0);\n"
	"    const mx = Math.max(1, ...L.expert_tokens);\n"
	"    kids.push(el('text', {x: 0, y: top + r * ch + 13, 'font-size': 11, class: "
	"'layer-label'}, 'layer ' + L.layer));\n"
	"    L.expert_tokens.forEach((v, e) => {\n"
	"      const g = el('g');\n"
	"      const rc = el('rect', {x: left + e * cw, y: top + r * ch, width: cw - 1, height: "
	"ch - 1, fill: color(v / mx), 'data-layer': L.layer, 'data-expert': e});\n"
	"      rc.appendChild(el('title', {}, 'layer ' + L.layer + ' expert ' + e + ': ' + v + "
	"' tokens (' + (tot ? (100 * v / tot).toFixed(1) : 0) + '%), ' + L.replicas[e] + ' "
	"replica(s)'));\n"
	"      g.appendChild(rc);\n"
	"      if (L.replicas[e] > 1 && cw >= 10)\n"
	"        g.appendChild(el('text', {x: left + e * cw + 2, y: top + r * ch + 12, "
	"'font-size': 9}, String(L.replicas[e])));\n"
	"      kids.push(g);\n"
	"    });\n"
	"  });\n"
	"  svg.replaceChildren(...kids);\n"
	"}\n"
	"async function refresh() {\n"
	"  try {\n"
	"    const s = await (await fetch('status.json', {cache: 'no-store'})).json();\n"
	"    document.getElementById('model').textContent = s.model;\n"
	"    const sum = document.getElementById('summary');\n"
	"    sum.replaceChildren(...[['status', s.status], ['epoch', s.epoch], ['requests "
	"running', s.requests.running], ['queued', s.requests.queued], ['uptime', "
	"Math.round(s.uptime_s) + ' s']].map(([k, v]) => { const sp = "
	"document.createElement('span'); sp.textContent = k + ': ' + v; return sp; }));\n"
	"    fill('workers', s.workers.map((w, i) => row([i, w.name, w.address, w.state, "
	"w.slots_per_layer, w.slots_in_service, w.tokens], [0, 0, 0, w.state])));\n"
	"    fill('layers', s.layers.map(L => { const mx = Math.max(...L.expert_tokens); "
	"return row([L.layer, L.balancedness.toFixed(3), L.balancedness_time.toFixed(3), mx > 0 ? "
	"'e' + L.expert_tokens.indexOf(mx) + ' (' + mx + ' tokens)' : '-']); }));\n"
	"    fill('rebalances', s.rebalances.length ? s.rebalances.map(r => row([new "
	"Date(r.when_unix_s * 1000).toLocaleString(), r.why, r.moves, r.duration_s.toFixed(2), "
	"r.before.toFixed(3), r.after.toFixed(3)])) : [row(['none yet', '', '', '', '', ''])]);\n"
	"    fill('placement', s.layers.flatMap(L => L.slots.map((sl, w) => row([L.layer, "
	"s.workers[w] ? s.workers[w].name : w, sl.map(e => e < 0 ? '-' : 'e' + e).join(' "
	"')]))));\n"
	"    heat(s);\n"
	"    document.body.dataset.ready = '1';\n"
	"  } catch (e) {\n"
	"    document.getElementById('summary').textContent = 'cannot read /status.json: ' + e;\n"
	"  }\n"
	"}\n"
	"refresh();\n"
	"setInterval(refresh, 2000);\n"
	"</script></body></html>\n";

static json_t *u64s(const uint64_t *v, int n)
{
	json_t *a = json_array();
	for (int i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer((json_int_t)v[i]));
	return a;
}

static json_t *status_json(struct co_server *s)
{
	int n_moe = model_n_moe_layers(s->cfg), n_e = s->cfg->n_routed_experts;
	json_t *root, *workers = json_array(), *layers = json_array(), *rbs = json_array();
	struct co_sched_stats st = { 0 };
	uint64_t now = fr_now_ns(), *v = NULL, *wt = NULL;
	int W = 0;

	if (s->sched)
		co_sched_stats(s->sched, &st);
	/* the load window and the placement, under engine_mu (the data path writes them) */
	co__engine_lock(s);
	W = s->place ? s->place->n_workers : 0;
	v = calloc((size_t)FR_MAX(n_e, 1), sizeof(*v));
	wt = calloc((size_t)FR_MAX(W, 1), sizeof(*wt));
	uint64_t *wsum = calloc((size_t)FR_MAX(W, 1), sizeof(*wsum));
	int32_t *rep = calloc((size_t)FR_MAX(n_e, 1), sizeof(*rep));
	for (int l = 0; l < n_moe && v && wt && wsum && rep && s->place && s->load; l++) {
		double b = 1, bt = 1;
		co_load_expert_tokens(s->load, l, v);
		co_load_worker_tokens(s->load, l, wt);
		co_load_balancedness(s->load, l, CO_LOAD_TOKENS, &b);
		co_load_balancedness(s->load, l, CO_LOAD_TIME, &bt);
		memset(rep, 0, sizeof(*rep) * (size_t)n_e);
		const int32_t *se = s->place->slot_expert + (size_t)l * s->place->total_slots;
		for (int g = 0; g < s->place->total_slots; g++)
			if (se[g] >= 0 && se[g] < n_e)
				rep[se[g]]++;
		json_t *ra = json_array(), *pl = json_array();
		for (int e = 0; e < n_e; e++)
			json_array_append_new(ra, json_integer(rep[e]));
		/* the placement: the expert in each slot of each worker (-1: out of service) */
		for (int w = 0; w < W; w++) {
			json_t *ws = json_array();
			for (int g = s->place->slot_base[w]; g < s->place->slot_base[w + 1]; g++)
				json_array_append_new(ws, json_integer(se[g]));
			json_array_append_new(pl, ws);
		}
		for (int w = 0; w < W; w++)
			wsum[w] += wt[w];
		json_array_append_new(layers, json_pack("{s:i, s:f, s:f, s:o, s:o, s:o}", "layer", l,
							"balancedness", b, "balancedness_time", bt,
							"expert_tokens", u64s(v, n_e), "replicas", ra,
							"slots", pl));
	}
	pthread_mutex_unlock(&s->engine_mu);

	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n_joined; i++) {
		const struct srv_worker *w = &s->workers[i];
		int in = s->place && i < s->place->n_workers ? co_place_filled(s->place, i) : 0;
		json_array_append_new(workers, json_pack(
			"{s:s, s:s, s:s, s:i, s:i, s:I}", "name", w->name, "address", w->addr,
			"state", co__wstate_name(co__worker_state(s, i, now)), "slots_per_layer",
			(int)w->slot_capacity, "slots_in_service", in, "tokens",
			(json_int_t)(wsum && i < W ? wsum[i] : 0)));
	}
	for (int k = 0; k < CO_RB_HISTORY; k++) {
		/* newest first */
		const struct co_rebalance_record *r =
			&s->rb_history[(s->rb_next + CO_RB_HISTORY - 1 - k) % CO_RB_HISTORY];
		if (!r->done)
			continue;
		json_array_append_new(rbs, json_pack("{s:f, s:s, s:i, s:f, s:f, s:f}",
						     "when_unix_s", r->when_unix_s, "why", r->why,
						     "moves", (int)r->moves, "duration_s",
						     r->duration_s, "before", r->before, "after",
						     r->after));
	}
	root = json_pack("{s:s, s:s, s:f, s:I, s:{s:i, s:i}, s:i, s:o, s:o, s:o}", "model",
			 s->model_path, "status", co__status_name(s->status), "uptime_s",
			 (double)(now - s->t_start_ns) / 1e9, "epoch", (json_int_t)s->epoch,
			 "requests", "running", st.running, "queued", st.queued, "n_experts", n_e,
			 "workers", workers, "layers", layers, "rebalances", rbs);
	pthread_mutex_unlock(&s->mu);
	free(v);
	free(wt);
	free(wsum);
	free(rep);
	return root;
}

int co__status_page(struct co_server *s, const char *path, FILE *f, const char **ctype)
{
	if (strcmp(path, "/") == 0) {
		*ctype = "text/html; charset=utf-8";
		fputs(page, f);
		return 200;
	}
	if (strcmp(path, "/status.json") == 0) {
		json_t *j = status_json(s);
		char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
		json_decref(j);
		if (!txt) {
			fputs("{\"error\":\"cannot build the status\"}\n", f);
			return 500;
		}
		*ctype = "application/json";
		fputs(txt, f);
		fputc('\n', f);
		free(txt);
		return 200;
	}
	return 0; /* not ours */
}
