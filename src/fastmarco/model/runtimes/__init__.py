"""The model runtime registry: what runs an exported ONNX graph. A runtime says which manifest
precisions it runs and on which devices, why it cannot run here (not installed), and opens a
`Session` (feeds in, the graph's one output back). ONNX Runtime (`onnxruntime`) is the default and
the only one on CUDA; OpenVINO (`openvino`, the `openvino` extra) is the second CPU runtime, and the
only one that runs a `bf16` export in bf16. A new runtime is one module that registers itself, plus
its import at the bottom of this file.

`runtime="auto"` (or FASTMARCO_RUNTIME) takes the one runtime that can run the model here, or, where
several can, the fastest in a short benchmark on this host (a padded bulk batch, best of a few runs),
measured once per model, host, thread count and runtime versions and cached in
`$FASTMARCO_CACHE_DIR` (default `$XDG_CACHE_HOME/fastmarco`, `~/.cache/fastmarco`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fastmarco._atomic import write_bytes_atomic
from fastmarco.errors import EncoderError, InputError
from fastmarco.model.manifest import GRAPH_FORMATS, MANIFEST_NAME, ModelManifest
from fastmarco.model.precisions import Precision, precision_named

log = logging.getLogger("fastmarco")

AUTO = "auto"
RUNTIME_ENV = "FASTMARCO_RUNTIME"
CACHE_ENV = "FASTMARCO_CACHE_DIR"
CHOICES_FILE = "runtime-choices.json"
# Padded tokens per CPU run (rows x longest row) unless the runtime says otherwise: a batch whose
# activations stay in cache is faster and needs a third of the memory (2 cores, 2026-12-02: 16,384 ->
# 4,096 took MiniLM int8 on ONNX Runtime from 212 to 227-245 passages/s and its peak RSS from 1.6 GB
# to 0.55 GB; 2,048 was faster still there, but leaves more cores short of work in its one run).
DEFAULT_CPU_MAX_TOKENS = 4_096
# The calibration batch: width of an MS MARCO-sized bulk run (~83 tokens a passage), as many rows as
# the runtime's CPU token budget takes, timed best of CALIBRATION_RUNS after one warm-up run.
CALIBRATION_WIDTH = 85
CALIBRATION_RUNS = 3


class Session(Protocol):
    """One opened graph: feeds in, the named output back. Safe to call from several threads."""

    input_names: frozenset[str]

    def run(self, output: str, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]: ...

    def bulk(self) -> tuple[Session, int]:
        """The session for back-to-back batches (an encode of many texts) and how many of its runs to
        keep in flight: (self, 1) unless the runtime computes several runs at once faster."""
        ...


class Runtime(Protocol):
    name: str
    extra: str  # the pip extra that installs it
    graph_formats: frozenset[str]  # the graph files it reads, by suffix (fastmarco.model.manifest)
    # Padded widths are rounded up to a multiple of this (fastmarco.model.runtime.TokenBudget): 1 where
    # every shape runs as fast as any other, more where the runtime prepares kernels per input shape.
    width_step: int
    cpu_max_tokens: int  # padded tokens per CPU run unless the caller sets a budget

    @property
    def bulk_width_step(self) -> int:
        """The same for bulk work (its runs are large: preparing a shape's kernels costs less there
        than padding, unless preparing is itself costly)."""
        ...

    def missing(self) -> str | None:
        """Why this runtime cannot run here (not installed), else None."""
        ...

    def runs(self, precision: Precision, device: str) -> bool:
        """Whether it runs a model of this manifest precision on DEVICE ('cpu', 'cuda' or 'auto')."""
        ...

    def caveat(self, precision: Precision) -> str | None:
        """Why it runs PRECISION here wider (a bf16 export in fp32) or slower than the export is made to
        run, else None: said as a warning where the model is opened or exported."""
        ...

    def accelerated(self, device: str) -> bool:
        """Whether it would run DEVICE's work on an accelerator here (then 'auto' takes it unmeasured)."""
        ...

    def versions(self) -> str: ...

    def open(
        self,
        path: Path,
        model: ModelManifest,
        device: str,
        *,
        device_id: int,
        threads: int,
        busy_wait: bool,
    ) -> tuple[Session, str]:
        """(session, "cpu" or "cuda:N")."""
        ...


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    if runtime.name in RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is registered twice")
    RUNTIMES[runtime.name] = runtime
    return runtime


def not_installed(module: str) -> str | None:
    """'<module> is not installed' where Python cannot find it, else None (nothing is imported)."""
    return None if importlib.util.find_spec(module) else f"{module} is not installed"


def runtime_names() -> list[str]:
    """'auto' and every registered runtime, for a CLI choice."""
    return [AUTO, *RUNTIMES]


def runtimes_described() -> list[str]:
    """Each registered runtime with its version, or why it cannot run here (`fastmarco info`)."""
    return [f"{name} {r.missing() or r.versions()}" for name, r in RUNTIMES.items()]


@dataclass(frozen=True)
class Opened:
    session: Session
    device: str  # "cpu" or "cuda:N"
    runtime: str


def open_model_session(
    root: Path,
    model: ModelManifest,
    device: str,
    runtime: str = AUTO,
    *,
    vocab_size: int = 1000,
    device_id: int = 0,
    threads: int = 0,
    busy_wait: bool = True,
) -> Opened:
    """The session that runs ROOT's graph: RUNTIME's (an error if it cannot run it here), or for
    'auto' the one that can, or the fastest on this host where several can (see the module), timed on
    token ids below `vocab_size`."""
    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if threads < 0:
        raise InputError(f"threads must be 0 (the runtime's default) or positive, got {threads}")
    precision = precision_named(model.precision, str(root / MANIFEST_NAME))
    named = runtime if runtime != AUTO else os.environ.get(RUNTIME_ENV) or AUTO
    source = f"{RUNTIME_ENV}={named}" if runtime == AUTO and named != AUTO else "runtime"
    kwargs: dict[str, Any] = {"device_id": device_id, "threads": threads, "busy_wait": busy_wait}
    if named != AUTO:
        chosen = RUNTIMES.get(named)
        if chosen is None:
            raise InputError(f"{source}: unknown runtime {named!r}; known: {', '.join(runtime_names())}")
        problem = chosen.missing()
        if problem:
            raise EncoderError(f"{source} {named}: {problem} (pip install 'fastmarco[{chosen.extra}]')")
        if not _reads(chosen, model):
            raise EncoderError(
                f"{source} {named}: {root / model.model} is {GRAPH_FORMATS[Path(model.model).suffix]}, "
                f"which {named} does not read (use the runtime auto picks)"
            )
        if not chosen.runs(precision, device):
            raise EncoderError(
                f"{source} {named}: does not run a {precision.name} model on device {device!r}"
            )
        session, chosen_device = chosen.open(root, model, device, **kwargs)
        return _noted(root, model, precision, Opened(session, chosen_device, named))
    able = [r for r in RUNTIMES.values() if _reads(r, model) and r.runs(precision, device)]
    missing = {r.name: r.missing() for r in able}
    candidates = [r for r in able if missing[r.name] is None]
    if not candidates:  # every runtime that could run it is missing here
        absent = [f"{r.name}: {missing[r.name]}, pip install 'fastmarco[{r.extra}]'" for r in able]
        raise EncoderError(
            f"{root}: no installed runtime runs a {precision.name} model on device {device!r}"
            + (f" ({'; '.join(absent)})" if absent else "")
        )
    preferred = [r for r in candidates if r.accelerated(device)] or candidates
    if len(preferred) == 1:
        session, chosen_device = preferred[0].open(root, model, device, **kwargs)
        return _noted(root, model, precision, Opened(session, chosen_device, preferred[0].name))
    return _noted(root, model, precision, _fastest(root, model, preferred, kwargs, vocab_size))


def _reads(runtime: Runtime, model: ModelManifest) -> bool:
    return Path(model.model).suffix in runtime.graph_formats


# Set while an export checks its own staged graph: the export said the runtime's caveat up front
_CAVEAT_SAID: ContextVar[bool] = ContextVar("fastmarco_caveat_said", default=False)


@contextlib.contextmanager
def caveat_said() -> Iterator[None]:
    """Within it, opening a model does not repeat its runtime's caveat (an export has said it)."""
    token = _CAVEAT_SAID.set(True)
    try:
        yield
    finally:
        _CAVEAT_SAID.reset(token)


def _noted(root: Path, model: ModelManifest, precision: Precision, opened: Opened) -> Opened:
    """OPENED, with a warning where its runtime has a caveat about the precision on this CPU (unless
    already said), or where an export's 8-bit weights meet a CPU without VNNI."""
    unsaid = opened.device == "cpu" and not _CAVEAT_SAID.get()
    caveat = RUNTIMES[opened.runtime].caveat(precision) if unsaid else None
    if caveat:
        log.warning("%s: %s", root, caveat)
    eight_bit = (model.raw.get("quantization") or {}).get("weight_bits") == 8
    if eight_bit and opened.device == "cpu" and not has_vnni():
        log.warning(
            "%s: 8-bit weights, made on a CPU with VNNI; this CPU has none, so its int16 sums can "
            "overflow: export it again here (7-bit weights)",
            root,
        )
    return opened


def _fastest(
    root: Path, model: ModelManifest, candidates: list[Runtime], kwargs: dict[str, Any], vocab_size: int
) -> Opened:
    """The candidate the cache names for this model and host, else the fastest on the calibration
    batch of those that can open the graph (and that choice cached)."""
    key = _choice_key(model, candidates, kwargs["threads"])
    path = choices_path()
    choices = _read_choices(path)
    cached = choices.get(key, {}).get("runtime")
    for runtime in candidates:
        if runtime.name == cached:
            session, device = runtime.open(root, model, "cpu", **kwargs)
            return Opened(session, device, runtime.name)
    timings: dict[str, float] = {}
    unreadable: dict[str, EncoderError] = {}
    best: Opened | None = None
    for runtime in candidates:
        try:
            session, device = runtime.open(root, model, "cpu", **kwargs)
        except EncoderError as exc:  # an operator it has no rule for (an int8 export's QAttention)
            unreadable[runtime.name] = exc
            continue
        rows = max(1, runtime.cpu_max_tokens // CALIBRATION_WIDTH)
        timings[runtime.name] = seconds = calibration_seconds(session, model, vocab_size, rows) / rows
        if best is None or seconds < timings[best.runtime]:
            best = Opened(session, device, runtime.name)
    if best is None:
        raise next(iter(unreadable.values()))
    log.info(
        "runtime auto: %s for %s (%s)",
        best.runtime,
        root,
        ", ".join(
            [f"{name} {seconds * 1000:.2f} ms a row" for name, seconds in timings.items()]
            + [f"{name} cannot open it" for name in unreadable]
        ),
    )
    for name, error in unreadable.items():
        log.debug("runtime auto: %s left out: %s", name, error)
    choices[key] = {
        "runtime": best.runtime,
        "seconds_per_row": timings,
        "cannot_open": sorted(unreadable),
        "model": str(root),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, json.dumps(choices, indent=1, sort_keys=True).encode())
    except OSError as exc:  # a read-only home: measure again next time
        log.warning("cannot cache the runtime choice in %s (%s)", path, exc)
    return best


def calibration_seconds(session: Session, model: ModelManifest, vocab_size: int, rows: int) -> float:
    """Best of CALIBRATION_RUNS of a padded bulk batch of ROWS (after a warm-up run), in seconds."""
    width = min(CALIBRATION_WIDTH, model.max_seq_length)
    spread = np.arange(rows * width, dtype=np.int64).reshape(rows, width) * 7919
    ids = spread % max(1, vocab_size - 1) + 1  # token ids spread over the vocabulary, never 0
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in session.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    session.run(model.output, feeds)
    best = float("inf")
    for _ in range(CALIBRATION_RUNS):
        began = time.perf_counter()
        session.run(model.output, feeds)
        best = min(best, time.perf_counter() - began)
    return best


def choices_path() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit) / CHOICES_FILE
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastmarco" / CHOICES_FILE


def _read_choices(path: Path) -> dict[str, Any]:
    try:
        choices = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a damaged cache is measured again, never fatal
        log.warning("ignoring the runtime choice cache %s (%s)", path, exc)
        return {}
    return choices if isinstance(choices, dict) else {}


def _choice_key(model: ModelManifest, candidates: list[Runtime], threads: int) -> str:
    """Model fingerprint, precision, threads, the host's CPU (and any cap on oneDNN's instruction set:
    another CPU family to OpenVINO) and every candidate's version."""
    parts = [
        model.fingerprint,
        model.precision or "fp32",
        str(threads or os.cpu_count()),
        platform.machine(),
        _cpu_description(),
        os.environ.get(ONEDNN_ISA_CAP, ""),
        *sorted(f"{r.name} {r.versions()}" for r in candidates),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cpu_info() -> dict[str, str] | None:
    """The first 'model name', 'flags' and 'Features' (ARM) lines of /proc/cpuinfo; None where it
    cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        return None
    found: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags", "Features") and name not in found:
            found[name] = value.strip()
    return found


# Flags that give the CPU u8 x s8 dot products accumulated in int32 (no int16 overflow).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo), else none known."""
    found = cpu_info() or {}
    return frozenset((found.get("flags") or found.get("Features") or "").split())


def has_vnni() -> bool:
    """Whether 8-bit int8 weights are safe here (fastmarco.model.static_quantize): the CPU has VNNI and
    no oneDNN cap stands for a family without it."""
    return bool(VNNI_FLAGS & cpu_flags()) and isa_cap_admits("AVX2_VNNI", "AVX512_CORE_VNNI")


# oneDNN, and with it OpenVINO's CPU plugin, uses no instruction set above the one this names: set, it
# stands for an older CPU family (benchmarks/bench_encode_cpu.py --emulate-isa), and what fastmarco
# decides by the CPU's features (VNNI, bf16, AMX) follows it
ONEDNN_ISA_CAP = "ONEDNN_MAX_CPU_ISA"
# oneDNN's instruction sets as bit masks (dnnl_cpu_isa_t): a cap admits a set whose bits it all holds
ONEDNN_ISA_BITS = {
    "SSE41": 0x1,
    "AVX": 0x3,
    "AVX2": 0x7,
    "AVX2_VNNI": 0xF,
    "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67,
    "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF,
    "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF,
    "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF,
    "AVX512_CORE_AMX_FP16": 0x1FEF,
}


def isa_cap_admits(*isas: str) -> bool:
    """Whether oneDNN may use one of ISAS (its names) under the cap ONEDNN_ISA_CAP sets: yes where none
    is set (or ALL, DEFAULT, a name newer than this table)."""
    cap = ONEDNN_ISA_BITS.get(os.environ.get(ONEDNN_ISA_CAP, "ALL").upper())
    return cap is None or any(ONEDNN_ISA_BITS[isa] & cap == ONEDNN_ISA_BITS[isa] for isa in isas)


def has_amx() -> bool:
    """Whether oneDNN's kernels use AMX here: the CPU has it and no cap holds oneDNN below it."""
    return "amx_tile" in cpu_flags() and isa_cap_admits("AVX512_CORE_AMX")


def _cpu_description() -> str:
    """The CPU's model name and flags (Linux), else what platform knows."""
    found = cpu_info()
    if found is None:
        return platform.processor()
    return " | ".join(found[name] for name in sorted(found))


from fastmarco.model.runtimes import onnx_runtime, openvino_runtime  # noqa: E402,F401  (register)
