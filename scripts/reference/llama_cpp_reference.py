#!/usr/bin/env python3
"""Reference-data generator built on llama.cpp (via llama-cpp-python and the
llama.cpp command-line tools).

It produces golden data that an independent inference engine can be checked
against:

  tokenize  -> OUT/tokenize.json   token ids of fixed test strings, per model
                                   (llama.cpp tokenizer) and per HF tokenizer.json
  greedy    -> OUT/greedy.json     pure-argmax continuations of fixed prompts,
                                   top-5 logits of the first generated position
  ppl       -> OUT/ppl.json        llama-perplexity on a deterministic text
                                   (+ raw logs OUT/ppl_logs/*.log)
  bench     -> OUT/bench.md        llama-bench tables (waits for a quiet machine)

Usage (each step can be run on its own):

  nice -n 19 python3 reference.py [--models-dir DIR] [--out DIR]
        [--llama-bin DIR] [--threads N] STEP [STEP ...]

  STEP is one of: tokenize greedy ppl bench all

Everything is deterministic for a given llama.cpp build and CPU: greedy decoding
uses argmax over the raw logits (first index wins ties, exactly like llama.cpp's
greedy sampler), no penalties and no sampler chain.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# Fixed inputs (do not reorder: the Rust tests index into these lists)
# ---------------------------------------------------------------------------

MODEL_FILES = {
    "qwen-target": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "qwen-draft": "qwen2.5-coder-0.5b-instruct-q4.gguf",
    "smollm": "smollm2-135m-instruct-q4_1.gguf",
}
TOKENIZER_JSON = "qwen2.5-tokenizer.json"

TOKENIZE_CASES = [
    "",
    "Hello, world!",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "    \n\n\n   \t  x  ",
    "a" * 300,
    "The quick brown fox jumps over the lazy dog. 1234567890 3.14159",
    "你好，世界！今天天气很好。",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 and 🇫🇷",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "fn main() {\n\tprintln!(\"{}\", 42);\n}\n",
    "   leading spaces and trailing   ",
    "don't won't it's I'M we'll",
    "x=1;y=2;z=x+y*3//4**5",
    "ÀÉÎÕÜ ß ﬁ ﬀ",
    "\u00a0non-breaking\u2009thin",
    "1 22 333 4444 55555 666666",
    "https://example.com/path?q=1&r=two#frag",
]

GREEDY_PROMPTS = [
    "def quicksort(arr):",
    "The capital of France is",
    "import numpy as np\n\ndef softmax(x):",
    "Once upon a time, in a small village,",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n",
    "// Rust: read a file line by line\nuse std::fs::File;",
    "SELECT name, COUNT(*) FROM users",
    "Q: Why is the sky blue?\nA:",
    "#include <stdio.h>\nint main() {",
]
GREEDY_MAX_NEW = 32
GREEDY_TOPK = 5

PPL_CHARS = 16000
PPL_CONTEXTS = [128, 512]
# llama-perplexity invocations per context size. "default" is the plain command
# (flash attention 'auto' = on for CPU, 2048-token batches = several windows per
# pass). "nofa_seq1" is one window per pass without flash attention: ordinary
# softmax attention, the most comparable to a straightforward implementation;
# the Python fallback (_ppl_python, llama-cpp-python default flash_attn=False)
# reproduces it exactly.
PPL_VARIANTS = {"default": [], "nofa_seq1": ["-b", "{c}", "-fa", "off"]}

BENCH_LOAD_MAX = 0.6       # 1-minute load average we wait for
BENCH_WAIT_S = 20 * 60     # give up waiting after this long
BENCH_POLL_S = 30


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)


def _load_llama(model_path: Path, threads: int, n_ctx: int = 512, vocab_only: bool = False):
    """Open a GGUF with llama-cpp-python. logits_all=True so that `scores`
    holds the logits of every evaluated position."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=not vocab_only,
        vocab_only=vocab_only,
        verbose=False,
    )


def _eog_ids(llm) -> list[int]:
    """All token ids llama.cpp treats as end-of-generation (EOS, EOT, ...)."""
    import llama_cpp

    vocab = llm._model.vocab
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def _special_ids(llm) -> dict:
    import llama_cpp

    vocab = llm._model.vocab

    def tok(fn):
        v = fn(vocab)
        return None if v < 0 else int(v)

    return {
        "bos": tok(llama_cpp.llama_vocab_bos),
        "eos": tok(llama_cpp.llama_vocab_eos),
        "eot": tok(llama_cpp.llama_vocab_eot),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "n_vocab": int(llama_cpp.llama_vocab_n_tokens(vocab)),
        "eog": _eog_ids(llm),
    }


def _decode(llm, ids: list[int]) -> str:
    """Concatenate the token pieces (special tokens rendered) and decode UTF-8;
    invalid / truncated sequences become U+FFFD."""
    return llm.detokenize(ids, special=True).decode("utf-8", errors="replace")


def _build_info() -> dict:
    import llama_cpp

    info = {"llama_cpp_python": llama_cpp.__version__, "python": platform.python_version()}
    try:
        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode()
    except Exception:  # pragma: no cover - informational only
        pass
    return info


# ---------------------------------------------------------------------------
# step a: tokenization
# ---------------------------------------------------------------------------

def step_tokenize(args) -> None:
    from tokenizers import Tokenizer

    result = {"cases": TOKENIZE_CASES, "models": {}, "special": {},
              "convention": "llama.cpp: llm.tokenize(s.encode(), add_bos=False, special=True); "
                            "tokenizers: Tokenizer.from_file(json).encode(s, add_special_tokens=False).ids",
              "build": _build_info()}
    for name, fname in MODEL_FILES.items():
        llm = _load_llama(args.models_dir / fname, args.threads, vocab_only=True)
        result["models"][name] = [llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
                                  for s in TOKENIZE_CASES]
        result["special"][name] = {k: v for k, v in _special_ids(llm).items() if k != "eog"}
        del llm

    tok = Tokenizer.from_file(str(args.models_dir / TOKENIZER_JSON))
    result["models"]["qwen-tokenizer-json"] = [tok.encode(s, add_special_tokens=False).ids
                                               for s in TOKENIZE_CASES]

    # quick agreement summary (informational; the raw ids are the reference)
    ref = result["models"]["qwen-tokenizer-json"]
    result["mismatches_vs_tokenizer_json"] = {
        name: [i for i, (a, b) in enumerate(zip(result["models"][name], ref)) if a != b]
        for name in ("qwen-target", "qwen-draft")
    }
    _write_json(args.out / "tokenize.json", result)


# ---------------------------------------------------------------------------
# step b: greedy decoding
# ---------------------------------------------------------------------------

def _greedy_one(llm, prompt: str, add_bos: bool, eog: set[int]) -> dict:
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
    llm.reset()                    # n_tokens = 0; eval() drops the KV cache past it
    llm.eval(prompt_ids)           # one batched prompt pass
    generated: list[int] = []
    margins: list[float] = []      # top1 - top2 logit at each step (near-tie detector)
    top5 = None
    stop = "max_tokens"
    for step in range(GREEDY_MAX_NEW):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")      # stable: lower id first on ties
        tok = int(np.argmax(logits))                    # == order[0]
        margins.append(float(logits[order[0]] - logits[order[1]]))
        if step == 0:
            top5 = [[int(i), float(logits[i])] for i in order[:GREEDY_TOPK]]
        generated.append(tok)
        if tok in eog:
            stop = "eog"
            break
        if step + 1 < GREEDY_MAX_NEW:
            llm.eval([tok])
    return {
        "prompt": prompt,
        "add_bos": add_bos,
        "prompt_ids": prompt_ids,
        "generated_ids": generated,
        "stop_reason": stop,
        "text": _decode(llm, generated),
        "top5_first": top5,
        "top1_top2_margin": margins,
        "min_margin": min(margins),
    }


def step_greedy(args) -> None:
    result = {
        "prompts": GREEDY_PROMPTS,
        "max_new_tokens": GREEDY_MAX_NEW,
        "convention": (
            "prompt_ids = llm.tokenize(p.encode(), add_bos=llama_vocab_get_add_bos(vocab), special=True); "
            "the prompt is evaluated in one batch, then one token per step (KV cache); "
            "next = argmax(last logits) (lowest id on ties); the EOG token, if hit, is included "
            "in generated_ids and stops generation (stop_reason='eog'); text = pieces with "
            "special tokens rendered, UTF-8 decoded with errors='replace'; "
            "top1_top2_margin[i] = logit gap at generated position i"
        ),
        "threads": args.threads,
        "flash_attn": False,   # llama-cpp-python default: plain softmax attention
        "n_ctx": args.n_ctx,
        "models": {},
        "build": _build_info(),
    }
    for name, fname in MODEL_FILES.items():
        t0 = time.time()
        llm = _load_llama(args.models_dir / fname, args.threads, n_ctx=args.n_ctx)
        sp = _special_ids(llm)
        eog = set(sp["eog"])
        runs = [_greedy_one(llm, p, sp["add_bos"], eog) for p in GREEDY_PROMPTS]
        result["models"][name] = {"file": fname, "special": sp, "runs": runs}
        print(f"greedy {name}: {time.time() - t0:.1f}s", file=sys.stderr)
        del llm
    _write_json(args.out / "greedy.json", result)


# ---------------------------------------------------------------------------
# step c: perplexity
# ---------------------------------------------------------------------------

def make_ppl_text() -> str:
    """First PPL_CHARS characters of pydoc_data.topics.topics values, keys sorted,
    joined by a blank line. Deterministic for a given CPython version."""
    import pydoc_data.topics as t

    return "\n\n".join(t.topics[k] for k in sorted(t.topics))[:PPL_CHARS]


_RE_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_RE_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)")


def _ppl_python(llm, tokens: list[int], n_ctx: int, add_bos: bool, bos: int | None) -> dict:
    """Same convention as llama-perplexity: non-overlapping windows of n_ctx tokens
    (whole text tokenized once, BOS prepended iff add_bos), the first token of each
    window replaced by BOS iff add_bos, and only positions n_ctx/2 .. n_ctx-2
    scored (predicting tokens n_ctx/2+1 .. n_ctx-1)."""
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    nll, count = 0.0, 0
    for c in range(n_chunk):
        window = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if add_bos:
            window[0] = bos
        llm.reset()
        llm.eval(window)
        for pos in range(first, n_ctx - 1):
            row = np.asarray(llm.scores[pos], dtype=np.float64)
            m = row.max()
            logz = m + math.log(np.exp(row - m).sum())
            nll += logz - row[window[pos + 1]]   # -log softmax(row)[next token]
            count += 1
    return {"ppl": math.exp(nll / count), "n_chunks": n_chunk, "n_scored": count}


def _run_llama_perplexity(exe: Path, model: Path, text_file: Path, c: int, threads: int,
                          extra: list[str], log_path: Path) -> dict:
    cmd = [str(exe), "-m", str(model), "-f", str(text_file), "-c", str(c), "-t", str(threads),
           *[a.replace("{c}", str(c)) for a in extra]]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    log = p.stdout + p.stderr
    log_path.write_text(" ".join(cmd) + "\n\n" + log, encoding="utf-8")
    fm, cm = _RE_FINAL.search(log), _RE_CHUNKS.search(log)
    return {
        "cmd": " ".join(cmd),
        "returncode": p.returncode,
        "ppl": float(fm.group(1)) if fm else None,
        "ppl_stderr": float(fm.group(2)) if fm else None,
        "n_chunks": int(cm.group(1)) if cm else None,
        "batch_size": int(cm.group(3)) if cm else None,
        "n_seq": int(cm.group(4)) if cm else None,
        "scored_tokens": int(cm.group(1)) * (c - c // 2 - 1) if cm else None,
        "seconds": round(time.time() - t0, 1),
        "log": str(log_path),
    }


def step_ppl(args) -> None:
    text = make_ppl_text()
    ppl_path = args.ppl_file
    ppl_path.write_text(text, encoding="utf-8")
    logs = args.out / "ppl_logs"
    logs.mkdir(parents=True, exist_ok=True)
    exe = args.llama_bin / "llama-perplexity"
    result = {
        "text_file": str(ppl_path),
        "text_chars": len(text),
        "text_recipe": "pydoc_data.topics.topics values for sorted keys, joined by '\\n\\n', "
                       f"first {PPL_CHARS} chars (CPython {platform.python_version()})",
        "convention": "llama-perplexity: whole text tokenized with add_special (BOS iff vocab add_bos), "
                      "n_chunks = n_tokens // n_ctx non-overlapping windows, first token of each window "
                      "replaced by BOS iff add_bos, NLL over positions n_ctx/2 .. n_ctx-2 "
                      "(n_ctx/2 - 1 scored tokens per window)",
        "threads": args.threads,
        "tool": "llama-perplexity" if exe.exists() else "python-fallback",
        "variants": {k: " ".join(v) for k, v in PPL_VARIANTS.items()},
        "models": {},
    }
    for name, fname in MODEL_FILES.items():
        model = args.models_dir / fname
        vocab = _load_llama(model, args.threads, vocab_only=True)
        sp = _special_ids(vocab)
        n_tokens = len(vocab.tokenize(text.encode("utf-8"), add_bos=sp["add_bos"], special=True))
        del vocab
        entry = {"file": fname, "add_bos": sp["add_bos"], "n_tokens": n_tokens, "runs": {}}
        for c in PPL_CONTEXTS:
            if exe.exists():
                for variant, extra in PPL_VARIANTS.items():
                    entry.setdefault("runs" if variant == "default" else "runs_" + variant, {})[str(c)] = \
                        _run_llama_perplexity(exe, model, ppl_path, c, args.threads, extra,
                                              logs / f"{name}_c{c}{'' if variant == 'default' else '_' + variant}.log")
            else:
                llm = _load_llama(model, args.threads, n_ctx=c)
                toks = llm.tokenize(text.encode("utf-8"), add_bos=sp["add_bos"], special=True)
                r = _ppl_python(llm, toks, c, sp["add_bos"], sp["bos"])
                del llm
                entry["runs"][str(c)] = {"tool": "python-fallback", **r}
            print(f"ppl {name} c={c}: {entry['runs'][str(c)].get('ppl')}", file=sys.stderr)
        result["models"][name] = entry
    if args.ppl_python_check:
        # optional cross-check of the Python implementation on the smallest model
        name = args.ppl_python_check
        model = args.models_dir / MODEL_FILES[name]
        c = PPL_CONTEXTS[0]
        llm = _load_llama(model, args.threads, n_ctx=c)
        sp = _special_ids(llm)
        toks = llm.tokenize(text.encode("utf-8"), add_bos=sp["add_bos"], special=True)
        result["python_cross_check"] = {"model": name, "n_ctx": c, "flash_attn": False,
                                        **_ppl_python(llm, toks, c, sp["add_bos"], sp["bos"])}
        del llm
    _write_json(args.out / "ppl.json", result)


# ---------------------------------------------------------------------------
# step d: llama-bench
# ---------------------------------------------------------------------------

def _load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def step_bench(args) -> None:
    exe = args.llama_bin / "llama-bench"
    target = args.models_dir / MODEL_FILES["qwen-target"]
    draft = args.models_dir / MODEL_FILES["qwen-draft"]
    t = str(args.threads)

    # wait for a quiet machine
    waited, seen = 0, []
    while True:
        la = _load1()
        seen.append(la)
        if la < BENCH_LOAD_MAX or waited >= args.bench_wait:
            break
        time.sleep(BENCH_POLL_S)
        waited += BENCH_POLL_S
    quiet = seen[-1] < BENCH_LOAD_MAX

    runs = [
        [str(exe), "-m", str(target), "-t", t, "-p", "64", "-n", "64", "-r", "3"],
        [str(exe), "-m", str(draft), "-t", t, "-p", "64", "-n", "64", "-r", "3"],
        [str(exe), "-m", str(target), "-t", t, "-p", "1,5,8", "-n", "0", "-r", "3"],
    ]
    out = [
        "# llama-bench reference",
        "",
        f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- host: {platform.node()} ({os.cpu_count()} logical CPUs)",
        f"- 1-min load before start: {seen[-1]:.2f} after waiting {waited}s "
        f"({'below' if quiet else 'NOT below'} {BENCH_LOAD_MAX}; max seen while waiting {max(seen):.2f})",
        "",
    ]
    for cmd in runs:
        la0 = open("/proc/loadavg").read().strip()
        p = subprocess.run(cmd, capture_output=True, text=True)
        la1 = open("/proc/loadavg").read().strip()
        out += [f"## `{' '.join(cmd)}`", "",
                f"loadavg before: `{la0}`  after: `{la1}`  rc={p.returncode}", "",
                p.stdout.strip(), ""]
        if p.returncode != 0:
            out += ["```", p.stderr.strip()[-3000:], "```", ""]
        print(p.stdout, file=sys.stderr)
    path = args.out / "bench.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


# ---------------------------------------------------------------------------

STEPS = {"tokenize": step_tokenize, "greedy": step_greedy, "ppl": step_ppl, "bench": step_bench}


def main() -> None:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="+", choices=[*STEPS, "all"])
    ap.add_argument("--models-dir", type=Path, default=Path.home() / ".cache/cascade/models")
    ap.add_argument("--out", type=Path, default=here / "out")
    ap.add_argument("--llama-bin", type=Path, default=here / "llama.cpp-build/bin",
                    help="folder with llama-perplexity / llama-bench")
    ap.add_argument("--ppl-file", type=Path, default=here / "ppl.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512, help="context for greedy runs")
    ap.add_argument("--bench-wait", type=int, default=BENCH_WAIT_S,
                    help="max seconds to wait for load < %.1f before benchmarking" % BENCH_LOAD_MAX)
    ap.add_argument("--ppl-python-check", choices=list(MODEL_FILES), default=None,
                    help="also compute PPL (first context size) in Python for this model")
    args = ap.parse_args()
    steps = list(STEPS) if "all" in args.steps else args.steps
    for s in steps:
        STEPS[s](args)


if __name__ == "__main__":
    main()
