// The official `openai` npm client against Ferry's OpenAI-compatible API.
// Usage: node openai-client.mjs BASE_URL API_KEY MODEL "PROMPT TEXT" "ID ID ..."
// Prints one JSON object: what each call returned (token ids, text, usage, errors).
import OpenAI from "openai";

const [baseURL, apiKey, model, text, idList] = process.argv.slice(2);
const ids = idList.split(" ").map(Number);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

// Sampled (temperature 0.8, a seed): non-streaming and streaming, text and token ids.
const params = { model, max_tokens: 8, temperature: 0.8, seed: 7, ignore_eos: true };
const plain = await client.completions.create({ ...params, prompt: text });
out.plain = {
  text: plain.choices[0].text,
  ids: plain.choices[0].token_ids,
  finish: plain.choices[0].finish_reason,
  usage: plain.usage,
  object: plain.object,
};

const stream = await client.completions.create({
  ...params,
  prompt: text,
  stream: true,
  stream_options: { include_usage: true },
});
const st = { text: "", ids: [], finish: null, usage: null, chunks: 0 };
for await (const chunk of stream) {
  st.chunks++;
  if (chunk.usage) st.usage = chunk.usage;
  for (const c of chunk.choices) {
    st.text += c.text;
    st.ids.push(...(c.token_ids ?? []));
    if (c.finish_reason) st.finish = c.finish_reason;
  }
}
out.stream = st;

// A prompt of token ids, greedy.
const byIds = await client.completions.create({
  model, prompt: ids, max_tokens: 6, temperature: 0, ignore_eos: true,
});
out.ids = { ids: byIds.choices[0].token_ids, usage: byIds.usage };

// Errors come back as the client's error classes with OpenAI's fields.
async function error(fn) {
  try {
    await fn();
    return { status: 200 };
  } catch (e) {
    return { status: e.status, type: e.type ?? e.error?.type, param: e.param ?? null,
             message: e.message };
  }
}
out.bad_n = await error(() => client.completions.create({ model, prompt: text, n: 2 }));
out.bad_model = await error(() => client.completions.create({ model: "gpt-4", prompt: text }));
const wrong = new OpenAI({ baseURL, apiKey: "wrong-key", maxRetries: 0 });
out.bad_key = await error(() => wrong.completions.create({ model, prompt: text }));

console.log(JSON.stringify(out));
