"""Diagnostic for greedy parity: runs one prompt through llama.cpp
(llama-cpp-python 0.3.36) and saves its named f32 intermediates (the graph's
`cb` names: attn_norm-0, Qcur-0, kqv-0, l_out-0, ...) and the last row's
logits to an .npz, through the scheduler's eval callback.

    /opt/lcp/bin/python tests/oracle/dump_llama_layers.py PROMPT_IDS.json OUT.npz [NAMES,...]

engine/examples/dump_layers.rs writes Aerie's residual streams and logits for
the same ids; tests/oracle/compare_layers.py puts the two side by side."""
import ctypes, json, os, sys
import numpy as np
import llama_cpp
from llama_cpp import Llama

class T(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10),
                ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]

captured = {}
WANT = set(sys.argv[3].split(",")) if len(sys.argv) > 3 else None

@llama_cpp.ggml_backend_sched_eval_callback
def cb(tp, ask, ud):
    t = ctypes.cast(tp, ctypes.POINTER(T)).contents
    name = t.name.decode()
    base = name.rsplit("-", 1)[0]
    if ask:
        return WANT is None or base in WANT or name in WANT
    if t.type != 0:  # f32 only
        return True
    ne = list(t.ne)
    nb = list(t.nb)
    n = ne[0] * ne[1] * ne[2] * ne[3]
    # Copy respecting strides (views may be non-contiguous).
    arr = np.lib.stride_tricks.as_strided(np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(1,)),
                                          shape=(ne[3], ne[2], ne[1], ne[0]), strides=(nb[3], nb[2], nb[1], nb[0])).copy()
    captured.setdefault(name, []).append(arr)
    return True

ids = json.load(open(sys.argv[1]))
model = os.environ.get("AERIE_GGUF", os.path.expanduser("~/.cache/aerie/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
llm = Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
llm.context_params.cb_eval = cb
llm._ctx = llama_cpp._internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
llm._batch = llama_cpp._internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
llm.reset()
llm.eval(ids)
logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float32).copy()
np.savez(sys.argv[2], logits=logits, **{k + "__" + str(i): a for k, v in captured.items() for i, a in enumerate(v)})
print(len(captured), "names;", sorted(captured)[:20])
