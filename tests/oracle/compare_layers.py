"""Diagnostic for greedy parity: compares Aerie's residual stream after every
layer, and its logits, with llama.cpp's for one prompt.

    cargo run --release -p aerie-engine --example dump_layers -- ids.json aerie.bin
    /opt/lcp/bin/python tests/oracle/dump_llama_layers.py ids.json llama.npz l_out
    /opt/lcp/bin/python tests/oracle/compare_layers.py aerie.bin llama.npz

Prints, per layer, the largest absolute difference and the rows that differ:
the first layer with a difference is where to look."""
import sys
import numpy as np

VOCAB, HIDDEN, LAYERS = 49152, 576, 30
a = np.fromfile(sys.argv[1], dtype=np.float32)
z = np.load(sys.argv[2])
n = (a.size - VOCAB) // (LAYERS * HIDDEN)
streams = a[:-VOCAB].reshape(LAYERS, n, HIDDEN)
for l in range(LAYERS):
    x = z[f"l_out-{l}__0"].reshape(-1, HIDDEN)
    y = streams[l][-x.shape[0]:]  # llama.cpp keeps only the output row at the last layer
    d = np.abs(x - y)
    rows = np.nonzero(d.max(1) > 0)[0]
    print(f"layer {l:2d}: max |diff| {d.max():.3g}, rows differing {len(rows)} {list(rows[:8])}")
print(f"logits: max |diff| {np.abs(z['logits'] - a[-VOCAB:]).max():.3g}")
