#!/usr/bin/env bash
# Serving before/after greedy rows reduced to their argmax (Reduce::Argmax): the binary of b90cf07
# (OLD, built from that commit) against this tree's, target-only and exact, rounds in turns.
set -uo pipefail
cd /work/main
out=${1:?out}; rounds=${2:-2}; conc=${3:-8}; reqs=${4:-48}; old=${OLD:-/tmp/cascade-old}
M=$HOME/.cache/cascade/models; T=$M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; D=$M/qwen2.5-coder-0.5b-instruct-q4.gguf
mkdir -p "$out"
common=(--prompts bench/prompts/chat-16.jsonl --concurrency "$conc" --requests "$reqs" --max-tokens 64 --warmup 1 --json)
for r in $(seq 1 "$rounds"); do
  for b in old new; do
    bin=target/release/cascade; [ $b = old ] && bin=$old
    echo "round $r c$conc $b target" >&2
    $bin bench serve --target "$T" --threads 2 --label $b-target "${common[@]}" > "$out/r$r-c$conc-$b-target.json"
    echo "round $r c$conc $b exact" >&2
    $bin bench serve --target "$T" --draft "$D" --mode exact --threads 2 --label $b-exact "${common[@]}" > "$out/r$r-c$conc-$b-exact.json"
  done
done
python3 - "$out" <<'PY'
import json,sys,glob,os,statistics
rows={}
for f in sorted(glob.glob(os.path.join(sys.argv[1],'r*.json'))):
    d=json.load(open(f)); n=os.path.basename(f).split('-',1)[1][:-5]
    for lv in d['levels']: rows.setdefault(n,[]).append((lv['output_throughput'], (lv['itl_ms'] or {}).get('median',0), lv['completed']))
for n,v in sorted(rows.items()):
    print(f"{n:20} " + " / ".join(f"{t:.1f}" for t,_,_ in v) + f"   median {statistics.median([t for t,_,_ in v]):.1f}  ITL med {statistics.median([i for _,i,_ in v]):.0f} ms  completed {[c for *_,c in v]}")
PY
