#!/usr/bin/env python3
"""Same-machine llama.cpp baseline for `cascade bench forward`: times a forward of k new tokens
on top of a KV cache holding N tokens, through llama-cpp-python (pip install llama-cpp-python).

    scripts/reference/llama_cpp_forward.py MODEL.gguf --tokens 1,5,8,64 --context 128 --threads 2

Prints one JSON object per entry: tokens, context, ms_median, tokens_per_s. With --logits all
every new token gets logits (verification); with last only the final one (llama-bench's pp/tg).
"""
import argparse, json, statistics, time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", default="1,5,8")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--logits", choices=["all", "last"], default="all")
    a = ap.parse_args()
    ks = [int(x) for x in a.tokens.split(",")]
    llm = Llama(model_path=a.model, n_ctx=a.context + max(ks) + 8, n_batch=512, n_ubatch=512,
                n_threads=a.threads, n_threads_batch=a.threads, logits_all=a.logits == "all",
                verbose=False)
    vocab = llm.n_vocab()
    ctx = [(i * 7919 + 13) % 150000 for i in range(a.context)]
    llm.eval(ctx)
    for k in ks:
        new = [(i * 7919 + 104729 + 13) % 150000 for i in range(k)]
        times = []
        for i in range(a.repeat + 1):
            llm.n_tokens = a.context  # eval() drops cached positions past n_tokens
            t0 = time.perf_counter()
            llm.eval(new)
            dt = time.perf_counter() - t0
            if i > 0:
                times.append(dt)
        med = statistics.median(times)
        print(json.dumps({"tokens": k, "context": a.context, "ms_median": med * 1e3,
                          "tokens_per_s": k / med, "logits": a.logits, "vocab": vocab}), flush=True)


if __name__ == "__main__":
    main()
