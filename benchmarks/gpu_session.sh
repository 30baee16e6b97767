#!/usr/bin/env bash
# The GPU benchmarks, sized for the device machine's budget (docs/gpu-session.md). On the GPU machine,
# from the project root, after benchmarks/gpu_install.sh:
#
#   bash benchmarks/gpu_session.sh all       # every step below in order of value, each under a time cap
#   bash benchmarks/gpu_session.sh STEP      # one step: exports | encode | corpus | query
#
#   exports  the DistilBERT-base and MiniLM-L6 shaped models (shaped_models.py), exported fp16 (fp32 on a CPU)
#   encode   bench_encode.py on PASSAGES real passages: fastmarco vs SentenceTransformer.encode fp16 vs torch fp16
#   corpus   bench_encode_corpus.py: `fastmarco encode` over ROWS synthetic passages, MiniLM then DistilBERT,
#            GPU utilisation sampled, time split into read/tokenize/infer/write
#   query    bench_scale.py at ROWS x 768 on the machine's CPUs: binary and int8 beside faiss's IndexFlatIP
#
# `all` gives each step at most CAP_<STEP> seconds, never runs past BUDGET seconds from its own start
# and starts no step with less than MIN_<STEP> seconds left;
# each step's outcome is a line of steps.jsonl. Every benchmark writes its JSON under $WORK/results, and
# after each run the lot is packed into $OUT/results.tar.gz (a call returns at most 8 files), so a call
# cut off still returns what had finished; a step finished by an earlier call (markers in $WORK/done:
# /tmp lasts 30 s between calls) is skipped.
#
# Dry run on a CPU (tests/test_gpu_session.py): DEVICE=cpu PASSAGES=200 ROWS=2000 WORK=... OUT=... all
set -euo pipefail
step=${1:?usage: gpu_session.sh all|exports|encode|corpus|query}
here=$(cd "$(dirname "$0")" && pwd)
DEVICE=${DEVICE:-cuda}
PASSAGES=${PASSAGES:-100000}
ROWS=${ROWS:-8841823}
BUDGET=${BUDGET:-420}
CAP_EXPORTS=${CAP_EXPORTS:-90}
CAP_ENCODE=${CAP_ENCODE:-180}
CAP_CORPUS=${CAP_CORPUS:-150}
CAP_QUERY=${CAP_QUERY:-300}
MIN_QUERY=${MIN_QUERY:-120} # a step starts only with at least MIN_<STEP> seconds (default 20) left
PYTHON=${PYTHON:-python3}
stage=${STAGE:-/tmp/fm}
work=${WORK:-/tmp/fastmarco-gpu}
out=${OUT:-$work/out}
mkdir -p "$work/models" "$work/done" "$work/results" "$out"
export FASTMARCO_RESULTS=$work/results
site=$stage/site                          # onnxruntime-gpu, faiss-cpu, msgspec (gpu_install.sh)
exporting=$stage/site-export:$stage/site  # + optimum-onnx and the transformers it pins
vocab=()
[ -f "$stage/data/vocab.txt" ] && vocab=(--vocab "$stage/data/vocab.txt")
texts=()
[ -f "$stage/data/collection.tsv" ] && texts=(--collection "$stage/data/collection.tsv")
precision=$([ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
label=$([ "$DEVICE" = cuda ] && (nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-') || echo cpu)
corpus=$work/synth-$ROWS.tsv

now() { date +%s; }
# What has finished goes back with the call: one archive, replaced whole (never seen half written).
returned() {
  tar czf "$work/results.tar.gz.part" -C "$work/results" . && mv "$work/results.tar.gz.part" "$out/results.tar.gz"
}
# Seconds left to the current step (gpu_session.sh all sets STEP_DEADLINE), or a day when run alone.
left() { echo $((${STEP_DEADLINE:-$(($(now) + 86400))} - $(now))); }
# Runs "$@" once: skipped when $work/done/$name says an earlier call finished it. A failure is
# reported and the step goes on with its other runs (the step then exits 1, listing them).
failed=()
once() {
  local name=$1
  shift
  [ -f "$work/done/$name" ] && { echo "[$name: done earlier]"; return 0; }
  echo "[$name]"
  if "$@"; then touch "$work/done/$name"; else failed+=("$name"); fi
  returned
}
trap '[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }' EXIT
# The synthetic corpus, written once: `all` starts it in the background, the corpus step waits on the lock.
synth() { (flock 9 && { [ -f "$corpus" ] || $PYTHON "$here/synth_corpus.py" --rows "$ROWS" --out "$corpus"; }) 9>"$corpus.lock"; }

case "$step" in
exports)
  for shape in distilbert-base minilm-l6; do
    once "export-$shape" env PYTHONPATH="$exporting" $PYTHON - "$shape" "$work/models" "${vocab[@]}" <<PY
import sys
from pathlib import Path

sys.path.insert(0, "$here")
import shaped_models
from fastmarco.model.export import export_model

shape, models = sys.argv[1], Path(sys.argv[2])
vocab = Path(sys.argv[4]) if len(sys.argv) > 4 else None
folder = shaped_models.build(shape, models, vocab)
report = export_model(str(folder), models / f"{shape}-$precision", fp16="$precision" == "fp16", optimize="O2", overwrite=True)
print(shape, report.precision, "fusions", report.fusions)
PY
  done
  ;;
encode)
  for shape in distilbert-base minilm-l6; do
    common=(--shape "$shape" --device "$DEVICE" --passages "$PASSAGES" --workdir "$work/models" "${vocab[@]}" "${texts[@]}")
    once "encode-$shape-fastmarco" env PYTHONPATH="$exporting" $PYTHON "$here/bench_encode.py" --runner fastmarco "${common[@]}"
    once "encode-$shape-torch" env PYTHONPATH="$site" $PYTHON "$here/bench_encode.py" --runner torch "${common[@]}"
    # the image's own sentence-transformers, without the export stack on the path
    once "encode-$shape-st" env PYTHONPATH="$site" $PYTHON "$here/bench_encode.py" --runner sentence-transformers "${common[@]}"
  done
  $PYTHON "$here/bench_encode.py" --report --device "$DEVICE" | tee "$work/results/encode-report.txt"
  returned
  ;;
corpus)
  synth
  # MiniLM gets 3/5 of what is left, DistilBERT the rest; a capped encode reports its finished rows
  for shape in minilm-l6 distilbert-base; do
    share=$([ "$shape" = minilm-l6 ] && echo $(($(left) * 3 / 5 - 10)) || echo $(($(left) - 15)))
    once "corpus-$shape" env PYTHONPATH="$site" $PYTHON "$here/bench_encode_corpus.py" \
      --model "$work/models/$shape-$precision" --corpus "$corpus" --device "$DEVICE" \
      --shard-size 250000 --time-limit "$share" --label "$label-$shape-$ROWS"
  done
  ;;
query)
  model=$work/models/distilbert-base-int8 # queries are encoded on the CPU, int8 as on this project's CPUs
  [ -f "$model/fastmarco.json" ] || PYTHONPATH=$exporting $PYTHON -m fastmarco export \
    "$work/models/distilbert-base" --out "$model" --int8 --overwrite
  # bench_scale's stages that finished come back too: on a cap, they are what there is
  mkdir -p "$work/results/scale-state"
  (while kill -0 $$ 2>/dev/null; do cp "$work"/scale/*/state/*.json "$work/results/scale-state/" 2>/dev/null; sleep 2; done) &
  once query env PYTHONPATH="$site" $PYTHON "$here/bench_scale.py" --rows "$ROWS" --dim 768 --model "$model" \
    --kinds binary,int8 --peers faiss-flatip --workdir "$work/scale" --label "$label-${ROWS}x768"
  ;;
all)
  started=$(now)
  : >"$work/results/steps.jsonl" # this call's outcomes
  synth >"$work/synth.log" 2>&1 & # the corpus step's input, written while the first steps run
  for name in exports encode corpus query; do
    cap_var=CAP_${name^^}
    min_var=MIN_${name^^}
    cap=$((${!cap_var} < BUDGET - ($(now) - started) ? ${!cap_var} : BUDGET - ($(now) - started)))
    begun=$(now)
    if [ -f "$work/done/step-$name" ]; then
      status=done-earlier
    elif [ "$cap" -lt "${!min_var:-20}" ]; then
      status=no-time-left
    else
      rc=0
      STEP_DEADLINE=$((begun + cap)) timeout --signal=INT --kill-after=15 "$cap" bash "$0" "$name" || rc=$?
      case $rc in
      0) status=done && touch "$work/done/step-$name" ;;
      124 | 137) status=capped ;;
      *) status=failed ;;
      esac
    fi
    printf '{"step": "%s", "status": "%s", "seconds": %d, "cap_seconds": %d}\n' \
      "$name" "$status" $(($(now) - begun)) "$cap" | tee -a "$work/results/steps.jsonl"
    [ "$status" = failed ] && failed+=("$name")
    returned
  done
  wait
  ;;
*)
  echo "gpu_session.sh: unknown step '$step' (all, exports, encode, corpus or query)" >&2
  exit 2
  ;;
esac
