#!/usr/bin/env python3
"""Golden dequantization vectors from the `gguf` package (llama.cpp's own numpy reference).

Writes kernels/tests/data/dequant_golden.json: for each GGML type, random blocks (random quant bits,
f16 scales set to finite values in [0.5, 1.5) * 0.01) and the values gguf.quants.dequantize gives
for them. The Rust test `kernels/tests/dequant_golden.rs` checks our dequantizers against it.

    pip install gguf numpy && python3 scripts/reference/dequant_golden.py
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> (block bytes, offsets of f16 scale fields)
LAYOUT = {
    "Q4_0": (T.Q4_0, 18, [0]), "Q4_1": (T.Q4_1, 20, [0, 2]), "Q5_0": (T.Q5_0, 22, [0]),
    "Q5_1": (T.Q5_1, 24, [0, 2]), "Q8_0": (T.Q8_0, 34, [0]), "Q2_K": (T.Q2_K, 84, [80, 82]),
    "Q3_K": (T.Q3_K, 110, [108]), "Q4_K": (T.Q4_K, 144, [0, 2]), "Q5_K": (T.Q5_K, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 210, [208]),
}
BLOCKS = 3

rng = np.random.default_rng(2026)
out = {}
for name, (qt, bb, scales) in LAYOUT.items():
    raw = rng.integers(0, 256, size=(BLOCKS, bb), dtype=np.uint8)
    for off in scales:
        vals = (0.01 * (1.0 + 0.5 * rng.uniform(-1, 1, size=BLOCKS))).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(BLOCKS, 2)
    values = dequantize(raw.reshape(-1), qt).reshape(-1)
    out[name] = {"hex": raw.tobytes().hex(), "values": [float(v) for v in values]}
for name, dt in (("F16", np.float16), ("BF16", None)):
    x = rng.uniform(-2, 2, size=64).astype(np.float32)
    if dt is None:
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)
        raw = bits.tobytes()
        values = (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        h = x.astype(np.float16)
        raw = h.tobytes()
        values = h.astype(np.float32)
    out[name] = {"hex": raw.hex(), "values": [float(v) for v in values]}

path = os.path.join(os.path.dirname(__file__), "..", "..", "kernels", "tests", "data", "dequant_golden.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {os.path.normpath(path)}: {', '.join(out)}")
