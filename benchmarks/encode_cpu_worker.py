"""One encoding system of bench_encode_cpu.py, in its own process (and, for the OpenVINO peers, in
their own venv): it loads the system named on the command line, then answers the parent's commands
one at a time, so only one system ever runs while the others wait on a pipe.

    python encode_cpu_worker.py '<system as JSON>'

Commands (one JSON object a line on stdin): bulk {texts, batch_size} -> {seconds}; latency {texts}
-> {ms}; embed {texts, out} -> {} (an .npy file: embeddings, or a cross-encoder's scores); quit.
`texts` is a JSON file of strings, or for a cross-encoder of [query, passage] pairs (for latency:
of groups of pairs, one query's candidates each). Answers go
to stdout on lines starting with MARK (libraries may print there too). Standalone on purpose: the
OpenVINO venv has neither fastmarco nor the benchmarks' helpers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MARK = "@@encode-worker@@ "
Encode = Callable[[list[str], int | None], np.ndarray]
WARM_UP_QUERIES = 20
WARM_UP_TEXTS = 256  # fastmarco.model.runtime.BULK_ROWS; not imported: the peers' venvs lack fastmarco


def fastmarco_system(spec: dict[str, Any]) -> tuple[Encode, Encode]:
    """Bulk: the model's own token budget; one query: the Engine's settings (ORT threads stop
    spinning when a run returns)."""
    from fastmarco import Encoder

    bulk = Encoder.open(spec["model"], device="cpu", runtime=spec["runtime"])
    single = Encoder.open(spec["model"], device="cpu", runtime=spec["runtime"], busy_wait=False)
    return (lambda texts, _batch: bulk.encode(texts)), (lambda texts, _batch: single.encode(texts))


def fastmarco_cross_encoder(spec: dict[str, Any]) -> tuple[Encode, Encode]:
    """`Reranker.score` over every pair at once (the token budget batches them), as `fastmarco
    rerank` does; one query's candidates with the Engine's settings."""
    from fastmarco.model.cross_encoder import CrossEncoderScorer

    bulk = CrossEncoderScorer.open(spec["model"], device="cpu", runtime=spec["runtime"])
    single = CrossEncoderScorer.open(spec["model"], device="cpu", runtime=spec["runtime"], busy_wait=False)

    def scorer(model: CrossEncoderScorer) -> Encode:
        return lambda pairs, _batch: model.score([q for q, _ in pairs], [p for _, p in pairs])

    return scorer(bulk), scorer(single)


def sentence_transformers_cross_encoder(spec: dict[str, Any]) -> tuple[Encode, Encode]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(
        spec["folder"], device="cpu", backend=spec["backend"], model_kwargs=spec.get("model_kwargs")
    )

    def predict(pairs: list[str], batch_size: int | None) -> np.ndarray:
        pairs_ = [tuple(pair) for pair in pairs]
        return np.asarray(model.predict(pairs_, batch_size=batch_size or 32, show_progress_bar=False))

    return predict, predict


def sentence_transformers_system(spec: dict[str, Any]) -> tuple[Encode, Encode]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        spec["folder"], device="cpu", backend=spec["backend"], model_kwargs=spec.get("model_kwargs")
    )

    def encode(texts: list[str], batch_size: int | None) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=batch_size or 32, show_progress_bar=False))

    return encode, encode


def export_openvino_static_int8(spec: dict[str, Any]) -> None:
    """The folder's OpenVINO IR as sentence-transformers saves it, and its recommended CPU path beside
    it: `export_static_quantized_openvino_model`, calibrated on the given passages instead of the hub
    dataset it would download (single texts, for a CrossEncoder too: its recipe tokenizes one column)."""
    import datasets
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import (
        CrossEncoder,
        SentenceTransformer,
        export_static_quantized_openvino_model,
    )

    passages = json.loads(Path(spec["calibration"]).read_text())

    def local_dataset(*args: Any, **kwargs: Any) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"sentence": passages})

    patched = [datasets] + [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("optimum") and hasattr(module, "load_dataset")
    ]
    for module in patched:
        module.load_dataset = local_dataset
    kind = CrossEncoder if spec.get("cross_encoder") else SentenceTransformer
    model = kind(spec["folder"], device="cpu", backend="openvino")
    model.save_pretrained(spec["folder"])  # its fp32 OpenVINO IR, openvino/openvino_model.xml
    config = OVQuantizationConfig(num_samples=len(passages))
    export_static_quantized_openvino_model(model, config, spec["folder"])


SYSTEMS: dict[str, Callable[[dict[str, Any]], tuple[Encode, Encode]]] = {
    "fastmarco": fastmarco_system,
    "st": sentence_transformers_system,
    "fastmarco-cross": fastmarco_cross_encoder,
    "st-cross": sentence_transformers_cross_encoder,
}


def save_cross_encoder_backend(spec: dict[str, Any]) -> None:
    """The folder's CrossEncoder exported to `backend` (ONNX or OpenVINO IR) and saved beside it, and
    with `int8_config` its dynamic int8 ONNX (`export_dynamic_quantized_onnx_model`) too."""
    from sentence_transformers import CrossEncoder, export_dynamic_quantized_onnx_model

    model = CrossEncoder(spec["folder"], device="cpu", backend=spec["backend"])
    model.save_pretrained(spec["folder"])
    if spec.get("int8_config"):
        export_dynamic_quantized_onnx_model(model, spec["int8_config"], spec["folder"])


def answer(body: dict[str, Any]) -> None:
    print(MARK + json.dumps(body), flush=True)


def serve(spec: dict[str, Any]) -> None:
    bulk, single = SYSTEMS[spec["kind"]](spec)
    grouped = spec["kind"].endswith("cross")  # latency items are one query's pairs, else one text
    answer({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            return
        texts = json.loads(Path(command["texts"]).read_text())
        if op == "bulk":
            # warm-up: sessions, arenas, thread pools, and fastmarco's bulk form (from BULK_ROWS texts)
            bulk(texts[:WARM_UP_TEXTS], command.get("batch_size"))
            began = time.perf_counter()
            bulk(texts, command.get("batch_size"))
            answer({"seconds": time.perf_counter() - began})
        elif op == "latency":
            items = texts if grouped else [[text] for text in texts]
            for item in items[:WARM_UP_QUERIES]:
                single(item, len(item))
            latencies = []
            for item in items:
                began = time.perf_counter()
                single(item, len(item))
                latencies.append((time.perf_counter() - began) * 1000)
            answer({"ms": latencies})
        elif op == "embed":
            np.save(command["out"], bulk(texts, command.get("batch_size")))
            answer({})
        else:
            raise ValueError(f"unknown command {op!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["kind"] == "export-openvino-static-int8":
        export_openvino_static_int8(spec)
        answer({"exported": True})
    elif spec["kind"] == "save-cross-encoder-backend":
        save_cross_encoder_backend(spec)
        answer({"exported": True})
    else:
        serve(spec)


if __name__ == "__main__":
    main()
