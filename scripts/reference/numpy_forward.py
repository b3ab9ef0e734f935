#!/usr/bin/env python3
"""An independent Llama/Qwen2 forward pass in numpy over a GGUF file, for fidelity checks.

Weights are dequantized with the `gguf` package (llama.cpp's own numpy dequantizers) and every
product is computed in float32 with numpy; nothing is shared with cascade's Rust code. For each
prompt it records the prompt ids (given, from llama.cpp), the greedy continuation (argmax, lowest
id on ties, stopping at an end-of-generation id) and the top-5 logits of the first position.

    python3 scripts/reference/numpy_forward.py MODEL.gguf tests/data/reference/greedy.json KEY OUT.json [N]
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def load(path):
    r = GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = f["general.architecture"]
    W = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # outermost first
        W[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    cfg = dict(
        arch=arch,
        n_layers=f[f"{arch}.block_count"],
        n_heads=f[f"{arch}.attention.head_count"],
        n_kv=f.get(f"{arch}.attention.head_count_kv", f[f"{arch}.attention.head_count"]),
        eps=f[f"{arch}.attention.layer_norm_rms_epsilon"],
        theta=f.get(f"{arch}.rope.freq_base", 10000.0),
    )
    return cfg, W


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, theta, neox):
    # x: [T, H, D]
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(pos, inv)  # [T, D/2]
    cos, sin = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


class Model:
    def __init__(self, path):
        self.c, self.W = load(path)
        self.neox = self.c["arch"] == "qwen2"
        self.out = self.W.get("output.weight", self.W["token_embd.weight"])

    def forward(self, ids, cache, past):
        c, W = self.c, self.W
        x = W["token_embd.weight"][ids]
        T = len(ids)
        pos = np.arange(past, past + T)
        H, KV = c["n_heads"], c["n_kv"]
        for l in range(c["n_layers"]):
            p = f"blk.{l}."
            h = rms(x, W[p + "attn_norm.weight"], c["eps"])
            q = h @ W[p + "attn_q.weight"].T
            k = h @ W[p + "attn_k.weight"].T
            v = h @ W[p + "attn_v.weight"].T
            if p + "attn_q.bias" in W:
                q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
            D = q.shape[-1] // H
            q = rope(q.reshape(T, H, D), pos, c["theta"], self.neox)
            k = rope(k.reshape(T, KV, D), pos, c["theta"], self.neox)
            v = v.reshape(T, KV, D)
            K = np.concatenate([cache[l][0], k]) if past else k
            V = np.concatenate([cache[l][1], v]) if past else v
            cache[l] = (K, V)
            g = H // KV
            Kh = np.repeat(K, g, axis=1)  # [S, H, D]
            Vh = np.repeat(V, g, axis=1)
            s = np.einsum("thd,shd->hts", q, Kh) / np.sqrt(D)
            mask = np.arange(past + T)[None, :] > (past + np.arange(T))[:, None]
            s = np.where(mask[None], -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = np.einsum("hts,shd->thd", s, Vh).reshape(T, H * D)
            x = x + a @ W[p + "attn_output.weight"].T
            h = rms(x, W[p + "ffn_norm.weight"], c["eps"])
            gt = h @ W[p + "ffn_gate.weight"].T
            up = h @ W[p + "ffn_up.weight"].T
            x = x + ((gt / (1 + np.exp(-gt))) * up) @ W[p + "ffn_down.weight"].T
        last = rms(x[-1:], W["output_norm.weight"], c["eps"])
        return (last @ self.out.T)[0]


def main():
    path, ref, key, out = sys.argv[1:5]
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else None
    r = json.load(open(ref))
    m = r["models"][key]
    eog = set(m["special"]["eog"])
    n_valid = m["special"].get("n_valid")
    model = Model(path)
    runs = []
    for run in m["runs"][:limit]:
        ids = list(run["prompt_ids"])
        cache, past, gen = {}, 0, []
        logits = model.forward(np.array(ids), cache, 0)
        past = len(ids)
        top5 = [[int(i), float(logits[i])] for i in np.argsort(-logits, kind="stable")[:5]]
        for _ in range(len(run["generated_ids"])):
            if n_valid:
                logits[n_valid:] = -np.inf
            t = int(np.argmax(logits))
            gen.append(t)
            if t in eog:
                break
            logits = model.forward(np.array([t]), cache, past)
            past += 1
        runs.append({"prompt": run["prompt"], "prompt_ids": ids, "generated_ids": gen, "top5_first": top5})
        print(f"{key}: {run['prompt'][:30]!r} -> {len(gen)} tokens", file=sys.stderr, flush=True)
        # Written after every prompt, so a long run can be stopped with what it has.
        json.dump({"model": key, "file": m["file"], "implementation": "numpy float32 over gguf.quants.dequantize",
                   "runs": runs}, open(out, "w"))


if __name__ == "__main__":
    main()
