#!/usr/bin/env python3
"""llama.cpp side of `cargo bench --bench engine_bench`: the same measurements
on the same GGUF through llama-cpp-python, printed as one JSON object.

Arguments: MODEL THREADS PROMPT_IDS_JSON PREFILL_IDS_JSON DECODE_TOKENS
"""
import json, sys, time

import numpy as np
from llama_cpp import Llama

model, threads = sys.argv[1], int(sys.argv[2])
prompt = json.loads(open(sys.argv[3]).read())
prefill = json.loads(open(sys.argv[4]).read())
n_decode = int(sys.argv[5])
out = {}

llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
# Decode: greedy (plain argmax, no repeat penalty), one token per eval.
llm.eval(prompt)
t0 = time.perf_counter()
for _ in range(n_decode):
    # llama-cpp-python fills llm.scores only with logits_all; read the context.
    tok = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))
    llm.eval([tok])
out["decode_tok_s"] = n_decode / (time.perf_counter() - t0)
# Prefill.
llm.reset()
t0 = time.perf_counter()
llm.eval(prefill)
out["prefill_tok_s"] = len(prefill) / (time.perf_counter() - t0)
del llm

# Verify cost: k tokens scored (logits for every row, as verification needs)
# after 256 tokens of context; median of repeats.
llm = Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, logits_all=True, verbose=False)
ctx = prefill[:256]
llm.eval(ctx)
curve = {}
for k in [1, 2, 4, 8, 16, 32]:
    times = []
    for r in range(7):
        llm.n_tokens = 256
        t0 = time.perf_counter()
        llm.eval(prefill[256 : 256 + k])
        times.append(time.perf_counter() - t0)
    curve[str(k)] = float(np.median(times)) * 1e3
out["verify_ms"] = curve
print(json.dumps(out))
