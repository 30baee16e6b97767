#!/usr/bin/env bash
# On the GPU machine, from the project root, once the four staged parts are in /tmp/gpu
# (benchmarks/gpu_stage.sh, docs/gpu-session.md): unpack them into $STAGE (site, site-export, data),
# check that ONNX Runtime sees CUDA, build this project in place. Safe to run twice.
set -euo pipefail
stage=${STAGE:-/tmp/fm}
parts=(/tmp/gpu/part.*)
if [ ! -f "$stage/.unpacked" ]; then
  [ "${#parts[@]}" -eq 4 ] && [ -f "${parts[0]}" ] || {
    echo "gpu_install.sh: expected 4 parts in /tmp/gpu, found: ${parts[*]}" >&2
    exit 2
  }
  mkdir -p "$stage"
  cat "${parts[@]}" | xz -d -T0 | tar xf - -C "$stage"
  touch "$stage/.unpacked"
fi
PYTHONPATH=$stage/site python3 - <<'PY'
import onnxruntime as ort

ort.preload_dlls()
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
assert "CUDAExecutionProvider" in providers, "CUDA execution provider missing"
PY
python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . && echo "project built"
