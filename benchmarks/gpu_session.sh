#!/usr/bin/env bash
# The GPU benchmarks in steps that each fit one 10-minute device call (docs/gpu-session.md).
# Run from the project root on the GPU machine, after ../shared/device/install-on-gpu.sh; JSON
# results land in benchmarks/results/ and are copied to $OUT.
#
#   bash benchmarks/gpu_session.sh encode   # bench_encode.py: fastmarco / sentence-transformers / torch, 2 shapes
#   bash benchmarks/gpu_session.sh corpus   # 8,841,823 synthetic passages through `fastmarco encode`, 2 shapes
#   bash benchmarks/gpu_session.sh query    # bench_query.py at 8,841,823 x 768 (opq-ivfpq, flat)
#
# DEVICE=cpu PASSAGES=2000 ROWS=20000 run the same steps small on a CPU machine (a dry run of the script).
set -euo pipefail
stage=${1:?usage: gpu_session.sh encode|corpus|query}
DEVICE=${DEVICE:-cuda}
PASSAGES=${PASSAGES:-200000}
ROWS=${ROWS:-8841823}
work=${WORK:-/tmp/fastmarco-gpu}
out=${OUT:-$work/out}
mkdir -p "$work/models" "$out"
site=/tmp/site                       # onnxruntime-gpu, faiss-cpu (install-on-gpu.sh)
exporting=/tmp/site-export:/tmp/site # + optimum-onnx and the transformers it pins
vocab=(); [ -f .gpudata/vocab.txt ] && vocab=(--vocab .gpudata/vocab.txt)
texts=(); [ -f .gpudata/collection.tsv ] && texts=(--collection .gpudata/collection.tsv)
label=$( [ "$DEVICE" = cuda ] && (nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-') || echo cpu)

case "$stage" in
encode)
  PYTHONPATH=$exporting python3 benchmarks/shaped_models.py --out "$work/models" "${vocab[@]}"
  for shape in distilbert-base minilm-l6; do
    common=(--shape "$shape" --device "$DEVICE" --passages "$PASSAGES" --workdir "$work/models" "${vocab[@]}" "${texts[@]}")
    PYTHONPATH=$exporting python3 benchmarks/bench_encode.py --runner fastmarco "${common[@]}"
    PYTHONPATH=$site python3 benchmarks/bench_encode.py --runner torch "${common[@]}"
    # the image's own sentence-transformers, without the export stack on the path
    PYTHONPATH=$site python3 benchmarks/bench_encode.py --runner sentence-transformers "${common[@]}"
  done
  python3 benchmarks/bench_encode.py --report --device "$DEVICE" | tee "$out/encode-report.txt"
  cp benchmarks/results/encode_*_"$DEVICE"_*.json "$out/"
  ;;
corpus)
  precision=$( [ "$DEVICE" = cuda ] && echo fp16 || echo fp32)
  [ -f "$work/synth-$ROWS.tsv" ] || python3 benchmarks/synth_corpus.py --rows "$ROWS" --out "$work/synth-$ROWS.tsv"
  for shape in distilbert-base minilm-l6; do
    model="$work/models/$shape-$precision"  # exported by the encode step
    PYTHONPATH=$site python3 benchmarks/bench_encode_corpus.py --model "$model" --corpus "$work/synth-$ROWS.tsv" \
      --device "$DEVICE" --label "$label-$shape-$ROWS"
    cp "benchmarks/results/encode_corpus_$label-$shape-$ROWS.json" "$out/"
  done
  ;;
query)
  cpu_model="$work/models/distilbert-base-cpu"  # queries are encoded on the CPU, in fp32
  [ -f "$cpu_model/fastmarco.json" ] || PYTHONPATH=$exporting python3 -m fastmarco export \
    "$work/models/distilbert-base" --out "$cpu_model" --optimize O2
  PYTHONPATH=$site python3 benchmarks/bench_query.py --rows "$ROWS" --kinds opq-ivfpq,flat \
    --model "$cpu_model" --device cpu --workdir "$work/query" --label "$label-$ROWS"
  cp "benchmarks/results/query_$label-$ROWS.json" "$out/"
  ;;
*)
  echo "unknown step '$stage' (encode, corpus or query)" >&2
  exit 2
  ;;
esac
