#!/usr/bin/env python3
"""Aerie's CUDA path against PyTorch + transformers, on a GPU host.

Part of scripts/gpu_check.sh (see there). Writes a random-weight Llama model
of SmolLM2-135M's shape with transformers' save_pretrained (bf16), next to
SmolLM2's tokenizer files, then:

- greedy: `aerie generate --device cuda` on 10 prompts x 64 tokens; each
  answer is teacher-forced through the transformers model in float32 (eager
  attention, no TF32) and every chosen token must be the reference's argmax
  or within a near-tie of it. A prompt "agrees" when nothing disagrees before
  its first near-tie; at least 9 of 10 must.
- lossless speculation on the GPU: NGRAM and EAGLE (a random-weight head from
  `aerie random-head`) give plain decoding's ids, token for token.
- `--dtype float16` (f16 weights) against the same reference, as above.
- sampling on the GPU: a seeded request gives the same tokens twice, plain
  and with EAGLE.
- decode tok/s of each mode (batch 1, from `aerie generate --json`).

Appends a Markdown section to --report; exits non-zero on any failure.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

PROMPTS = [
    "Name three rivers in Europe.",
    "Write a haiku about the sea.",
    "What is 17 times 23?",
    "Explain photosynthesis in one sentence.",
    "List the planets of the solar system.",
    "def fibonacci(n):",
    "The capital of France is",
    "Translate 'good morning' into Spanish.",
    "Once upon a time, in a small village,",
    "Give me three tips for learning Rust.",
]
MAX_TOKENS = 64
# The embedding (tied to the output head) is scaled up from transformers'
# 0.02 init so the random model's logits spread out (std of a few units)
# and near-ties are the exception rather than the rule.
EMBED_SCALE = 8.0
# A near-tie: the reference's top two logits closer than this fraction of
# the row's standard deviation.
TIE_FRACTION = 0.02


def smollm2_shape():
    kw = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
              num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, attention_bias=False)
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    else:
        kw["rope_theta"] = 100000.0
    return LlamaConfig(**kw)


def write_model(path, tokenizer_dir, seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(smollm2_shape())
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(EMBED_SCALE)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    for f in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, f), path)


def aerie_generate(aerie, model, prompt, extra):
    cmd = [aerie, "generate", "--model", model, "--raw", "--prompt", prompt, "--max-tokens", str(MAX_TOKENS),
           "--ignore-eos", "--json", "--device", "cuda"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\nexit {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def teacher_forced(ref, prompt_ids, out_ids):
    """(agrees up to the first near-tie, exact argmax matches, disagreements
    outside near-ties, the first near-tie's position or None)."""
    ids = torch.tensor([prompt_ids + out_ids], device="cuda")
    with torch.no_grad():
        logits = ref(ids).logits[0].float()
    p = len(prompt_ids)
    exact, hard, first_tie, agrees = 0, [], None, True
    for t, tok in enumerate(out_ids):
        row = logits[p - 1 + t]
        top = row.topk(2)
        best = int(top.indices[0])
        tol = TIE_FRACTION * float(row.std())
        tie = float(top.values[0] - top.values[1]) < tol
        if tie and first_tie is None:
            first_tie = t
        if tok == best:
            exact += 1
        elif float(row[best] - row[tok]) > tol:
            hard.append((t, float(row[best] - row[tok])))
            if first_tie is None:
                agrees = False
    return agrees, exact, hard, first_tie


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--aerie", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(a.work, exist_ok=True)
    model_dir = os.path.join(a.work, "smollm2-shape-random")
    head_dir = os.path.join(a.work, "eagle-head-random")
    lines, failures = [], []

    t = time.time()
    write_model(model_dir, a.tokenizer)
    print(f"model written in {time.time() - t:.1f} s: {sorted(os.listdir(model_dir))}", flush=True)
    print(open(os.path.join(model_dir, "config.json")).read(), flush=True)
    subprocess.run([a.aerie, "random-head", "--model", model_dir, "--out", head_dir], check=True, capture_output=True, timeout=120)
    ref = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").to(device="cuda", dtype=torch.float32).eval()

    modes = {
        "plain": [],
        "NGRAM": ["--speculative-algorithm", "NGRAM"],
        "EAGLE": ["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", head_dir,
                  "--speculative-num-steps", "3", "--speculative-eagle-topk", "2", "--speculative-num-draft-tokens", "8"],
        "float16": ["--dtype", "float16"],
    }
    outs = {m: [] for m in modes}
    for m, extra in modes.items():
        for q in PROMPTS:
            outs[m].append(aerie_generate(a.aerie, model_dir, q, extra))
        print(f"{m}: done", flush=True)

    for m, label in (("plain", "bf16 weights"), ("float16", "`--dtype float16`, f16 weights")):
        agree, exact, total, hard_all = 0, 0, 0, []
        for i, o in enumerate(outs[m]):
            ok, ex, hard, tie = teacher_forced(ref, o["prompt_ids"], o["token_ids"])
            agree += ok
            exact += ex
            total += len(o["token_ids"])
            hard_all += [(i, t, d) for t, d in hard]
            print(f"{m} prompt {i}: agrees={ok} exact={ex}/{len(o['token_ids'])} first near-tie={tie} hard={hard[:3]}", flush=True)
        lines.append(f"- greedy against transformers, {label} (float32 reference, teacher-forced, {len(PROMPTS)} prompts x {MAX_TOKENS} tokens): "
                     f"{agree}/{len(PROMPTS)} prompts agree up to their first near-tie; {exact}/{total} tokens are the reference's argmax; "
                     f"{len(hard_all)} disagreements outside near-ties{' ' + str(hard_all[:5]) if hard_all else ''}")
        if agree < 9:
            failures.append(f"fewer than 9 of 10 prompts agree with transformers ({label})")

    # Sampling on the device (the distribution, the tree walk and the draw
    # there): a seed gives the same tokens every run, plain and with EAGLE.
    for m in ("plain", "EAGLE"):
        sampled = ["--temperature", "0.8", "--top-p", "0.95", "--seed", "11"]
        runs = [aerie_generate(a.aerie, model_dir, PROMPTS[0], modes[m] + sampled)["token_ids"] for _ in range(2)]
        ok = runs[0] == runs[1] and len(runs[0]) > 0
        lines.append(f"- sampled decoding on the GPU ({m}, T=0.8, top-p 0.95, seed 11): {'the same' if ok else 'DIFFERENT'} {len(runs[0])} tokens in two runs")
        if not ok:
            failures.append(f"seeded sampling ({m}) is not reproducible")

    for m in ("NGRAM", "EAGLE"):
        same = sum(o["token_ids"] == p["token_ids"] for o, p in zip(outs[m], outs["plain"]))
        verifies = sum(o["stats"].get("spec_verify_ct", 0) for o in outs[m])
        accept = [o["stats"].get("spec_accept_length", 0.0) for o in outs[m]]
        lines.append(f"- {m} speculation on the GPU{' (the head drafting on the GPU too)' if m == 'EAGLE' else ''}: {same}/{len(PROMPTS)} prompts equal plain decoding token for token "
                     f"({verifies} verifies, mean accept length {sum(accept) / len(accept):.2f})")
        if same != len(PROMPTS):
            failures.append(f"{m} output differs from plain decoding")

    def tok_s(m):
        v = sorted(o["stats"]["decode_tok_s"] for o in outs[m])
        return v[len(v) // 2]
    load = sorted(o["stats"]["load_ms"] for o in outs["plain"])[len(PROMPTS) // 2]
    lines.append(f"- decode tok/s at batch 1, SmolLM2-135M shape, median of {len(PROMPTS)} prompts: plain {tok_s('plain'):.1f}, "
                 f"NGRAM {tok_s('NGRAM'):.1f}, EAGLE (random head, accepts ~nothing) {tok_s('EAGLE'):.1f}, float16 {tok_s('float16'):.1f}; load {load:.0f} ms")
    lines += [f"- **FAIL**: {f}" for f in failures]
    with open(a.report, "a") as r:
        r.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
