// gen-corpus.mjs OUT.jsonl - writes the tokenizer test corpus: >= 2000 varied inputs, one JSON
// object per line, {"kind": K, "text": S} for text or {"kind": K, "hex": H} for raw bytes that
// need not be valid UTF-8. Deterministic (fixed seed): rerunning gives the same file.
import { writeFileSync } from "node:fs";

let state = 0x5eed1234abcdn;
function rnd() { // splitmix64 -> [0, 1)
  state = (state + 0x9E3779B97F4A7C15n) & 0xFFFFFFFFFFFFFFFFn;
  let z = state;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & 0xFFFFFFFFFFFFFFFFn;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & 0xFFFFFFFFFFFFFFFFn;
  z = z ^ (z >> 31n);
  return Number(z >> 11n) / 9007199254740992;
}
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const out = [];
const add = (kind, text) => out.push({ kind, text });
const addHex = (kind, bytes) => out.push({ kind, hex: Buffer.from(bytes).toString("hex") });

const prose = [
  "The quick brown fox jumps over the lazy dog.",
  "Hello, my dog is cute",
  "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
  "I'm sure they'll say we've done what you'd expect; he's not.",
  "DeepSeekMoE routes each token to a few fine-grained experts plus shared ones.",
  "Mixture-of-Experts (MoE) layers replace dense FFNs; load balancing matters!",
  "Don't panic. Isn't it? We're here, you're there, THEY'RE everywhere.",
  "In 1969, Apollo 11 landed on the Moon -- a \"giant leap\" for mankind.",
  "e.g. i.e. etc. vs. Mr. Mrs. Dr. St. U.S.A. p.m.",
  "   leading spaces and trailing spaces   ",
  "CamelCaseWords and snake_case_words and kebab-case-words and SCREAMING_CASE.",
  "Email me at someone@example.com or visit https://example.org/path?q=1&r=2#frag.",
  "Prices: $19.99, €5, £3.50, ¥1000, ₹250 — all before tax (approx. 7.5%).",
  "She said, 'No way!' and left... Then: silence; nothing more?!",
  "Pneumonoultramicroscopicsilicovolcanoconiosis is a long word.",
  "The year 2024 had 366 days; 2023 had 365.",
  "Tabs\tbetween\twords\tand\nnewlines\nhere.",
  "Windows\r\nline\r\nendings\r\n",
  "Old Mac\rline\rendings\r",
  "naïve café résumé coöperate façade jalapeño",
  "Straße, Ærøskøbing, Łódź, Dvořák, İstanbul, ﬁnance (ligature).",
];
const words = ("the of and to in is was for on that with as by at from his her they this which be are have had not were " +
  "but all one their there been has when who will more if no out so what up into them can only other new some could time " +
  "these two may then do first any my now such like our over man me even most made after also did many before must through " +
  "model expert token router layer attention cluster worker coordinator tensor kernel batch gradient inference latency").split(" ");
function sentence() {
  const n = 3 + ri(15);
  let s = [];
  for (let i = 0; i < n; i++) {
    let w = pick(words);
    if (rnd() < 0.1) w = w[0].toUpperCase() + w.slice(1);
    if (rnd() < 0.05) w = w.toUpperCase();
    s.push(w);
    if (rnd() < 0.08) s.push(pick([",", ";", ":", " -", " —"]));
  }
  return s.join(" ").replace(/ ([,;:])/g, "$1") + pick([".", "!", "?", "...", "", "\n"]);
}
for (const p of prose) add("prose", p);
for (let i = 0; i < 300; i++) {
  let t = "";
  const k = 1 + ri(4);
  for (let j = 0; j < k; j++) t += (j ? pick([" ", "  ", "\n", "\n\n"]) : "") + sentence();
  add("prose", t);
}

const code = [
  "int main(int argc, char **argv)\n{\n\tprintf(\"hello %d\\n\", argc);\n\treturn 0;\n}\n",
  "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\nstatic const char *names[] = { \"a\", \"b\" };\n",
  "for (size_t i = 0; i < n; i++) {\n    sum += x[i] * y[i];\n}\n",
  "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
  "import numpy as np\nx = np.arange(10).reshape(2, 5)\nprint(x.T @ x, x.shape)  # (5, 5)\n",
  "class Foo(Base):\n    def __init__(self, *args, **kwargs):\n        super().__init__(*args, **kwargs)\n        self._cache = {}\n",
  "const add = (a, b) => a + b;\nexport default function App() {\n  return <div className=\"app\">{items.map(i => <Item key={i.id} {...i} />)}</div>;\n}\n",
  "async function load(url) {\n  const res = await fetch(url);\n  if (!res.ok) throw new Error(`HTTP ${res.status}`);\n  return res.json();\n}\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "impl<'a, T: Clone + Send> Iterator for Iter<'a, T> {\n    type Item = &'a T;\n    fn next(&mut self) -> Option<Self::Item> { self.inner.next() }\n}\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n\tfmt.Println(<-ch)\n}\n",
  "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 100 GROUP BY u.id HAVING n >= 2 ORDER BY n DESC;",
  "#!/bin/sh\nset -eu\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}' >> counts\ndone\n[ -z \"${FOO:-}\" ] && echo unset || echo \"$FOO\"\n",
  "{\"name\": \"ferry\", \"version\": \"0.1.0\", \"deps\": [\"jansson\", \"pcre2\"], \"nested\": {\"a\": [1, 2.5, -3e10, null, true]}}",
  "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test &amp; more</title></head>\n<body><p class='x'>Hi</p></body>\n</html>\n",
  "public static void main(String[] args) throws IOException {\n    List<String> xs = new ArrayList<>();\n    xs.stream().filter(s -> !s.isEmpty()).forEach(System.out::println);\n}\n",
  "template <typename T>\nstd::unique_ptr<T> make(std::vector<int>&& v) noexcept { return std::make_unique<T>(std::move(v)); }\n",
  "x = [i**2 for i in range(100) if i % 3 == 0]; y = {k: v for k, v in zip('abc', x)}; z = lambda q: q or None",
  "    \n    \n\t\t\n  indented block\n\t\tmore\n        eight spaces\n",
  "a=1;b=2;c=a<<b|0xFF&~0x0f^0b1010;d=a!=b&&c>=d||!e;f+=1;g-=-1;h**=2;i//=3;j%=4;k>>>=1;",
  "// comment\n/* block\n * comment */\n# hash comment\n-- sql comment\n; lisp comment\n",
  "let re = /^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@[a-z]+\\.[a-z]{2,}$/i;",
  "matrix[i][j] = (matrix[i-1][j] + matrix[i][j-1]) % 1000000007;",
  "(defun fact (n) (if (<= n 1) 1 (* n (fact (- n 1)))))",
  "\\begin{equation} E = mc^2 \\quad \\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2} \\end{equation}",
];
for (const c of code) add("code", c);
const idents = ["x", "y", "idx", "buf", "len", "ctx", "self", "this", "tmp", "result", "n_tokens", "hiddenSize", "kv_cache", "ptr", "i", "j"];
const ops = [" = ", " + ", " - ", " * ", " / ", " == ", " != ", " <= ", " >= ", " && ", " || ", "->", ".", "::", " << ", " >> ", " % ", " += "];
for (let i = 0; i < 250; i++) {
  let s = "";
  const lines = 1 + ri(8);
  for (let l = 0; l < lines; l++) {
    s += pick(["", "    ", "\t", "        ", "\t\t", "  "]);
    s += pick(["if (", "while (", "return ", "let ", "var ", "auto ", "const ", "", "for (", "print("]);
    const n = 1 + ri(5);
    for (let k = 0; k < n; k++) s += (k ? pick(ops) : "") + (rnd() < 0.3 ? String(ri(100000)) : pick(idents)) + (rnd() < 0.2 ? "[" + pick(idents) + "]" : "") + (rnd() < 0.1 ? "()" : "");
    s += pick([");", ";", ") {", ":", "", " }", "  // " + sentence().trim(), " # note"]);
    s += pick(["\n", "\n", "\r\n", "\n\n"]);
  }
  add("code", s);
}

// numbers and digit runs
for (let i = 0; i < 200; i++) {
  const k = ri(8);
  let s;
  if (k === 0) { s = ""; const n = 1 + ri(40); for (let j = 0; j < n; j++) s += String(ri(10)); }
  else if (k === 1) s = (rnd() < 0.5 ? "-" : "") + (rnd() * 10 ** ri(12)).toFixed(ri(8));
  else if (k === 2) s = Number(ri(1e9)).toLocaleString("en-US");
  else if (k === 3) s = `${ri(10000)}-${ri(100)}-${ri(100)} ${ri(24)}:${ri(60)}:${ri(60)}.${ri(1000)}`;
  else if (k === 4) s = `+1 (${100 + ri(900)}) ${100 + ri(900)}-${1000 + ri(9000)}`;
  else if (k === 5) s = `v${ri(10)}.${ri(100)}.${ri(1000)} x${ri(100)} ${ri(1e6)}px 0x${ri(2 ** 31).toString(16)} ${ri(100)}%`;
  else if (k === 6) s = "١٢٣٤ ٥٦٧ ۸۹ ४५६ ๑๒๓ ①②③ ⅫⅣ ½¾ ²³ 𝟘𝟙𝟚 " + ri(1e6);
  else s = Array.from({ length: 1 + ri(10) }, () => String(ri(10 ** (1 + ri(6))))).join(pick([" ", ",", ", ", "\n", "+", "x", ""]));
  add("numbers", s);
}

// CJK and other scripts
const cjk = [
  "深度求索发布了新的混合专家模型。", "我爱北京天安门，天安门上太阳升！", "今天天气很好，我们去公园散步吧？",
  "これは日本語の文章です。ひらがなとカタカナ、そして漢字。", "トークナイザーのテスト：東京都渋谷区", "ｶﾀｶﾅ（半角）とＡＢＣ（全角）１２３",
  "한국어 문장도 테스트합니다. 안녕하세요!", "繁體中文：這是一個測試，包含「引號」與『雙引號』。", "中英混合 mixed 文本 with 数字123和符号%。",
  "Русский текст: съешь же ещё этих мягких французских булок.", "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
  "العربية: مرحبا بالعالم! كَتَبَ الطَّالِبُ الدَّرْسَ.", "עברית: שָׁלוֹם עוֹלָם", "हिन्दी: नमस्ते दुनिया, क्षत्रिय।",
  "ภาษาไทย: สวัสดีชาวโลก", "Tiếng Việt: Xin chào thế giới, Đường phố.", "ქართული ენა", "Հայերեն լեզու", "தமிழ் மொழி", "বাংলা ভাষা",
  "𠀀𠀁𪚥 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐁𝐨𝐥𝐝 ℌ𝔢𝔩𝔩𝔬",
];
for (const c of cjk) add("scripts", c);
const ranges = [[0x4e00, 0x9fa5], [0x3040, 0x309f], [0x30a0, 0x30ff], [0xac00, 0xd7a3], [0x0400, 0x04ff], [0x0600, 0x06ff],
  [0x0900, 0x097f], [0x0e00, 0x0e7f], [0x3000, 0x303f], [0xff00, 0xffef], [0x9fa6, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df]];
for (let i = 0; i < 200; i++) {
  let s = "";
  const n = 1 + ri(30);
  for (let j = 0; j < n; j++) {
    if (rnd() < 0.15) s += pick([" ", "，", "。", "、", "！", "？", " ", "a", "1", "\n", "・", "「", "」"]);
    const [lo, hi] = pick(ranges);
    s += String.fromCodePoint(lo + ri(hi - lo + 1));
  }
  add("scripts", s);
}

// emoji, ZWJ sequences, flags, skin tones, variation selectors
const emoji = ["😀", "😂", "🤖", "🚀", "❤️", "❤", "👍", "👍🏽", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🇺🇸", "🇯🇵", "🇩🇪", "1️⃣", "#️⃣", "☺︎", "✌🏿",
  "🧑‍🤝‍🧑", "👁️‍🗨️", "🐈‍⬛", "😶‍🌫️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "©", "™", "♻️", "⚡", "🀄", "🃏", "🎉🎉🎉"];
for (const e of emoji) add("emoji", e);
for (let i = 0; i < 150; i++) {
  let s = "";
  const n = 1 + ri(8);
  for (let j = 0; j < n; j++) s += pick(emoji) + (rnd() < 0.4 ? pick([" ", "", "!", " hi ", "\n", "中", "1"]) : "");
  add("emoji", s);
}

// combining marks
const bases = ["a", "e", "o", "n", "i", "x", "क", "ب", "ש", " ", "1", "Z"];
const marks = [0x0300, 0x0301, 0x0302, 0x0303, 0x0308, 0x030a, 0x0327, 0x0323, 0x0951, 0x093f, 0x064e, 0x0651, 0x05bc, 0x20dd, 0x0489, 0x036f];
for (let i = 0; i < 120; i++) {
  let s = "";
  const n = 1 + ri(10);
  for (let j = 0; j < n; j++) {
    s += pick(bases);
    const m = ri(5);
    for (let k = 0; k < m; k++) s += String.fromCodePoint(pick(marks));
    if (rnd() < 0.2) s += " ";
  }
  add("combining", s);
}
add("combining", "é vs é, ñ vs ñ, Å vs Å vs Å");
add("combining", "Z̴̡̢̛͈͎̗̫̠̦̜̝͍̳̹̬̀́̅̈́̓͐̌̎̈͝a̷̧̛̹͓̘̭͍̖͎̻̠̓̈́̀͌̄l̶͕̜͉̾͛g̵̢̛̟͖͇̱̯͖̼̓̓̂̓o̵͚̖̭͂̍̒̌̎̕");

// whitespace runs
const ws = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\ufeff", "\v", "\f", "\u200b", "\u2003", "\u202f", "\u1680"];
for (let i = 0; i < 200; i++) {
  let s = "";
  const n = 1 + ri(12);
  for (let j = 0; j < n; j++) {
    const r = 1 + ri(4);
    for (let k = 0; k < r; k++) s += pick(ws);
    if (rnd() < 0.6) s += pick(["word", "x", "123", "中文", "!", "...", "é", "🚀", "Foo", "'s"]);
  }
  add("whitespace", s);
}
for (const w of ws) { add("whitespace", w); add("whitespace", w.repeat(7)); add("whitespace", "a" + w + "b" + w); }

// punctuation
const punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»‘’“”„…–—·•§¶†‡※〈〉《》【】〔〕｛｝！＂＃＄％＆＇（）＊＋，－．／：；＜＝＞？＠［＼］＾＿｀｛｜｝～、。";
const pchars = Array.from(punct);
for (let i = 0; i < 200; i++) {
  let s = "";
  const n = 1 + ri(20);
  for (let j = 0; j < n; j++) {
    s += pick(pchars);
    if (rnd() < 0.25) s += pick([" ", "a", "Word", "\n", "1", "s", "t", "re", "ll", "中", "\r\n"]);
  }
  add("punct", s);
}
for (const s of ["'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "don't won't can't shan't y'all", "\"quoted\" 'single' `back`", "...!!!???,,,;;;:::", "-->", "<=>", "!=", "/**/", "#[derive(Debug)]", "@@ -1,3 +1,4 @@"]) add("punct", s);

// added / special token strings
import { readFileSync } from "node:fs";
const tj = JSON.parse(readFileSync(new URL("../data/tokenizer/tokenizer.json", import.meta.url)));
const added = tj.added_tokens.map((t) => t.content);
for (const a of added.filter((a) => !a.includes("place▁holder")).concat(added.slice(3, 10))) {
  add("special", a);
  add("special", "x" + a + "y");
}
for (let i = 0; i < 150; i++) {
  let s = "";
  const n = 1 + ri(6);
  for (let j = 0; j < n; j++) {
    const a = pick(added);
    const r = ri(5);
    if (r === 0) s += a.slice(0, 1 + ri(a.length - 1));           // a prefix: not a token
    else if (r === 1) s += a + a;
    else s += a;
    s += pick(["", " ", "hello", "\n", "你好", " 123", "<", "｜", "<｜", "▁"]);
  }
  add("special", s);
}
add("special", "<｜begin▁of▁sentence｜><｜end▁of▁sentence｜><｜▁pad▁｜><|EOT|>");
add("special", "<|begin_of_text|> <s> </s> <|endoftext|> <unk> [CLS] [SEP]");
add("special", "<｜User｜>Hi there<｜Assistant｜>Hello!<｜end▁of▁sentence｜>");

// very long words and runs
add("long", "a".repeat(5000));
add("long", "ab".repeat(3000));
add("long", "1".repeat(3001));
add("long", "=".repeat(4000));
add("long", " ".repeat(3000) + "x");
add("long", "\n".repeat(2000));
add("long", "中".repeat(2000));
add("long", "😀".repeat(1000));
add("long", "é".repeat(2000));
add("long", "Supercalifragilisticexpialidocious".repeat(100));
for (let i = 0; i < 40; i++) {
  let s = "";
  const n = 200 + ri(3000);
  const alpha = pick(["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZabc", "0123456789", "aeiou", "xyz_", "абвгдеж", "αβγδε", "ऀँंःऄअआइई"]);
  for (let j = 0; j < n; j++) s += alpha[ri(alpha.length)];
  add("long", s);
}

// random code points across the BMP and beyond (valid scalar values only)
for (let i = 0; i < 150; i++) {
  let s = "";
  const n = 1 + ri(20);
  for (let j = 0; j < n; j++) {
    let cp;
    const r = rnd();
    if (r < 0.4) cp = ri(0x80);
    else if (r < 0.7) cp = ri(0x800);
    else if (r < 0.95) cp = ri(0x10000);
    else cp = 0x10000 + ri(0x100000);
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;
    s += String.fromCodePoint(cp);
  }
  add("random", s);
}
add("random", "nul\u0000byte\u0000\u0000end");
add("random", "\u0001\u0002\u001f\u007f\u0080\u009f control chars");
add("random", "\ufffd replacement \ufffd\ufffd");
add("random", "\uffff\ufffe noncharacters \u{10ffff} \u{e0001}");

// mixtures of everything
const pools = out.filter((o) => o.text !== undefined && o.text.length < 400).map((o) => o.text);
for (let i = 0; i < 250; i++) {
  const n = 2 + ri(5);
  let s = "";
  for (let j = 0; j < n; j++) {
    const t = pick(pools);
    const a = ri(t.length), b = a + ri(t.length - a + 1);
    s += t.slice(a, b);
  }
  // never cut a surrogate pair in half: JSON and UTF-8 cannot hold a lone surrogate
  s = s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "?");
  add("mixed", s);
}

// invalid UTF-8 byte sequences (raw bytes)
const enc = new TextEncoder();
const bad = [[0x80], [0xbf], [0xc0, 0x80], [0xc1, 0xbf], [0xc2], [0xe0, 0x80, 0x80], [0xe0, 0xa0], [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf], [0xf0, 0x80, 0x80, 0x80], [0xf0, 0x9f, 0x98], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80], [0xfc, 0x84, 0x80, 0x80, 0x80, 0x80], [0xfe], [0xff], [0xc3, 0x28], [0xe2, 0x28, 0xa1],
  [0xf0, 0x28, 0x8c, 0xbc], [0xef, 0xbb], [0xef, 0xbb, 0xbf]];
for (const b of bad) { addHex("invalid_utf8", b); addHex("invalid_utf8", [...enc.encode("ab "), ...b, ...enc.encode(" cd")]); }
for (let i = 0; i < 150; i++) {
  const bytes = [];
  const n = 1 + ri(40);
  for (let j = 0; j < n; j++) {
    const r = rnd();
    if (r < 0.3) bytes.push(...enc.encode(pick(["hello", " ", "中文", "😀", "é", "123", "\n", "<｜User｜>", "'s"])));
    else if (r < 0.6) bytes.push(...pick(bad));
    else if (r < 0.8) bytes.push(0x80 + ri(0x80));
    else bytes.push(ri(256));
  }
  addHex("invalid_utf8", bytes);
}
// a valid UTF-8 string cut at a random byte offset
for (let i = 0; i < 60; i++) {
  const t = enc.encode(pick(cjk) + pick(emoji));
  addHex("invalid_utf8", Array.from(t.slice(0, 1 + ri(t.length - 1))));
}

writeFileSync(process.argv[2], out.map((o) => JSON.stringify(o)).join("\n") + "\n");
console.error(`gen-corpus: ${out.length} inputs -> ${process.argv[2]}`);
