#!/usr/bin/env bash
# Interleaved c8 (and c1) comparison: cascade on the VNNI kernels (CASCADE_ISA=vnni) and on the AMX tile path (the default on this CPU), exact mode, llama-server (-nr and noamx builds)
set -uo pipefail
cd /work/main
out=${1:?out}; rounds=${2:-2}; conc=${3:-8}; reqs=${4:-48}
M=$HOME/.cache/cascade/models; T=$M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
L=$HOME/.cache/cascade/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp
mkdir -p "$out"
common=(--prompts bench/prompts/chat-16.jsonl --concurrency "$conc" --requests "$reqs" --max-tokens 64 --warmup 1 --json)
for r in $(seq 1 "$rounds"); do
  for b in vnni amx; do
    isa=vnni; [ $b = amx ] && isa=amx
    echo "round $r c$conc cascade-$b" >&2
    CASCADE_ISA=$isa target/release/cascade bench serve --target "$T" --threads 2 --label cascade-$b "${common[@]}" > "$out/r$r-c$conc-cascade-$b.json"
  done
  echo "round $r c$conc cascade-exact" >&2
  target/release/cascade bench serve --target "$T" --draft "$M/qwen2.5-coder-0.5b-instruct-q4.gguf" --mode exact --threads 2 --label cascade-exact "${common[@]}" > "$out/r$r-c$conc-cascade-exact.json"
  for v in nr noamx; do
    port=$((18000 + RANDOM % 2000))
    if [ $v = nr ]; then bin=$L/build/bin/llama-server; extra=(-nr); else bin=$L/build-noamx/bin/llama-server; extra=(); fi
    echo "round $r c$conc llama-$v" >&2
    $bin -m "$T" -t 2 -tb 2 --parallel 8 -c 8192 "${extra[@]}" --host 127.0.0.1 --port $port > "$out/r$r-c$conc-llama-$v.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    target/release/cascade bench serve --url "http://127.0.0.1:$port" --label llama-$v "${common[@]}" > "$out/r$r-c$conc-llama-$v.json" || true
    kill $pid; wait $pid 2>/dev/null
  done
done
python3 - "$out" <<'PY'
import json,sys,glob,os,statistics
rows={}
for f in sorted(glob.glob(os.path.join(sys.argv[1],'r*.json'))):
    d=json.load(open(f)); n=os.path.basename(f).split('-',1)[1][:-5]
    for lv in d['levels']: rows.setdefault(n,[]).append((lv['output_throughput'], (lv['itl_ms'] or {}).get('median',0), lv['completed']))
for n,v in sorted(rows.items()):
    print(f"{n:24} " + " / ".join(f"{t:.1f}" for t,_,_ in v) + f"   median {statistics.median([t for t,_,_ in v]):.1f}  ITL med {statistics.median([i for _,i,_ in v]):.0f} ms  completed {[c for *_,c in v]}")
PY
