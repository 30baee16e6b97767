"""Model runtimes: OpenVINO against ONNX Runtime on the same exports (bi- and cross-encoders), bf16
exports, how 'auto' picks and caches a runtime, and the errors for a runtime that cannot run."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from tiny_models import CORPUS, build, build_cross_encoder

from fastmarco.cli import main
from fastmarco.errors import EncoderError, ExportError, InputError, ModelError
from fastmarco.model import runtimes
from fastmarco.model.cross_encoder import CrossEncoderScorer
from fastmarco.model.encoder import Encoder
from fastmarco.model.manifest import ModelManifest
from fastmarco.model.runtime import BULK_ROWS
from fastmarco.model.runtimes import RUNTIMES, Session, choices_path, open_model_session

pytest.importorskip("openvino", reason="needs the openvino extra: pip install '.[openvino]'")
pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")

TEXTS = [*CORPUS, " ".join(CORPUS) * 3, ""]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny bi-encoder (fp32, bf16, int8, int8-static) and cross-encoder (fp32, bf16), exported."""
    from fastmarco.model.export import export_model

    root = tmp_path_factory.mktemp("runtime-models")
    bi = build("bert-mean-normalize", root / "bi")
    cross = build_cross_encoder("bert-cross-encoder", root / "cross")
    out = {}
    for name, source, options in [
        ("bi-fp32", bi, {}),
        ("bi-bf16", bi, {"bf16": True}),
        ("bi-int8", bi, {"int8": True}),
        ("bi-int8-attention", bi, {"int8": True, "int8_attention": True}),
        ("cross-fp32", cross, {}),
        ("cross-bf16", cross, {"bf16": True}),
        ("bi-int8-static", bi, {"int8_static": True}),
    ]:
        out[name] = root / name
        export_model(str(source), out[name], **options)  # type: ignore[arg-type]
    return out


@pytest.fixture
def auto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """'auto' as a user has it (the tests' FASTMARCO_RUNTIME removed), with a fresh choice cache."""
    monkeypatch.delenv("FASTMARCO_RUNTIME")
    monkeypatch.setenv("FASTMARCO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "runtime-choices.json"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_embeds_as_onnxruntime_does(models: dict[str, Path], precision: str) -> None:
    ort = Encoder.open(models[f"bi-{precision}"], device="cpu", runtime="onnxruntime")
    ov = Encoder.open(models[f"bi-{precision}"], device="cpu", runtime="openvino")
    assert (ort.runtime, ov.runtime, ov.device) == ("onnxruntime", "openvino", "cpu")
    # OpenVINO pads widths up to steps of 16 (in bulk only with AMX), ONNX Runtime to the longest row
    assert (ov.budget.width_step, ort.budget.width_step) == (16, 1)
    assert (ov.budget.bulk_width_step, ort.budget.bulk_width_step) == (16 if runtimes.has_amx() else 1, 1)
    # each runtime's own CPU token budget, unless the caller sets one
    assert (ov.budget.max_tokens, ort.budget.max_tokens) == (2_048, 4_096)
    set_by_caller = Encoder.open(models[f"bi-{precision}"], device="cpu", runtime="openvino", max_tokens=512)
    assert set_by_caller.budget.max_tokens == 512
    # the same embeddings, whatever the padding: one call in bulk, one not
    np.testing.assert_allclose(
        ov.encode(TEXTS * (BULK_ROWS // len(TEXTS) + 1))[: len(TEXTS)], ov.encode(TEXTS), atol=1e-5
    )
    # int8: OpenVINO runs ORT's dynamically quantized MatMuls its own way: close, not equal
    tolerance = 1e-5 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(ov.encode(TEXTS), ort.encode(TEXTS), atol=tolerance)


def test_openvino_scores_pairs_as_onnxruntime_does(models: dict[str, Path]) -> None:
    queries, passages = [TEXTS[0]] * len(TEXTS), TEXTS
    ort = CrossEncoderScorer.open(models["cross-fp32"], device="cpu", runtime="onnxruntime")
    ov = CrossEncoderScorer.open(models["cross-fp32"], device="cpu", runtime="openvino")
    np.testing.assert_allclose(ov.score(queries, passages), ort.score(queries, passages), atol=1e-5)


def test_openvino_session_serves_threads(models: dict[str, Path]) -> None:
    """Each calling thread gets its own infer request: concurrent calls give each caller its answer."""
    encoder = Encoder.open(models["bi-fp32"], device="cpu", runtime="openvino")
    expected = [encoder.encode([text]) for text in TEXTS]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda text: encoder.encode([text]), TEXTS * 4))
    for i, embedding in enumerate(got):
        np.testing.assert_array_equal(embedding, expected[i % len(TEXTS)])


def test_openvino_bulk_runs_streams_side_by_side(models: dict[str, Path]) -> None:
    """From BULK_ROWS texts (or pairs) a call runs on the throughput form, several batches in flight:
    the same numbers in the same order as the latency form, one batch at a time."""
    encoder = Encoder.open(models["bi-fp32"], device="cpu", runtime="openvino", threads=2, max_tokens=256)
    bulk, streams = encoder.session.bulk()
    assert bulk is not encoder.session and streams == 2  # OpenVINO's throughput hint: a stream a thread
    assert encoder.session.bulk()[0] is bulk  # compiled once
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(BULK_ROWS)]
    together, stats = encoder.encode_with_stats(texts)
    assert stats.batches > streams
    one_at_a_time = np.concatenate([encoder.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    np.testing.assert_allclose(together, one_at_a_time, atol=1e-5)

    scorer = CrossEncoderScorer.open(models["cross-fp32"], device="cpu", runtime="openvino", threads=2)
    queries = [TEXTS[0]] * len(texts)
    pairs = scorer.tokenize_pairs(queries, texts)
    np.testing.assert_allclose(scorer.score(queries, texts), scorer.score_tokens(pairs), atol=1e-5)


def test_onnxruntime_runs_one_batch_at_a_time(models: dict[str, Path]) -> None:
    encoder = Encoder.open(models["bi-fp32"], device="cpu", runtime="onnxruntime")
    assert encoder.session.bulk() == (encoder.session, 1)


class _Streams:
    """A session of several streams whose runs finish out of order; one batch (a row of 13s) fails."""

    def __init__(self, inner: Session, streams: int) -> None:
        self.inner = inner
        self.input_names = inner.input_names
        self.streams = streams
        self.rng = np.random.default_rng(7)
        self.lock = threading.Lock()

    def run(self, output: str, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        with self.lock:
            pause = float(self.rng.uniform(0, 0.01))
        time.sleep(pause)
        if (feeds["input_ids"] == 13).all(axis=1).any():
            raise EncoderError("a run failed")
        return self.inner.run(output, feeds)

    def bulk(self) -> tuple[Session, int]:
        return self, self.streams


def test_bulk_results_land_in_order_and_errors_surface(models: dict[str, Path]) -> None:
    encoder = Encoder.open(models["bi-fp32"], device="cpu", runtime="onnxruntime", max_tokens=64)
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(BULK_ROWS)]
    expected = encoder.encode(texts)
    encoder.session = _Streams(encoder.session, streams=3)
    got, stats = encoder.encode_with_stats(texts)
    assert stats.batches > 3
    np.testing.assert_allclose(got, expected, atol=1e-6)

    feeds = {"input_ids": np.full((1, 4), 13), "attention_mask": np.ones((1, 4), np.int64)}
    fine = encoder.tokenizer.encode_batch(["fine"])
    good = encoder.pad(fine, len(fine[0].ids))
    batches = [(i, good) for i in range(5)] + [(5, feeds)] + [(i, good) for i in range(6, 12)]
    seen = []
    with pytest.raises(EncoderError, match="a run failed"):
        for key, _, _ in encoder.run_batches(batches, bulk=True):
            seen.append(key)
    assert seen == list(range(5))  # everything before the failed batch, in order; nothing after it


def test_bf16_export(models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """A bf16 export is the fp32 graph declared bf16: checked at export, fingerprinted apart, and run in
    fp32 (with a warning) by a runtime without bf16."""
    manifest = json.loads((models["bi-bf16"] / "fastmarco.json").read_text())
    assert manifest["precision"] == "bf16"
    assert manifest["parity_min_cosine"] >= 0.999
    assert "openvino" in manifest["exported_by"]
    assert (
        Encoder.open(models["bi-bf16"], "cpu").fingerprint
        != Encoder.open(models["bi-fp32"], "cpu").fingerprint
    )
    fp32 = Encoder.open(models["bi-fp32"], device="cpu", runtime="onnxruntime").encode(TEXTS)
    bf16 = Encoder.open(models["bi-bf16"], device="cpu", runtime="openvino").encode(TEXTS)
    assert float((fp32 * bf16).sum(axis=1).min()) >= 0.999
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        on_ort = Encoder.open(models["bi-bf16"], device="cpu", runtime="onnxruntime").encode(TEXTS)
    assert "onnxruntime runs a bf16 export in fp32" in caplog.text
    np.testing.assert_allclose(on_ort, fp32, atol=1e-6)
    cross = json.loads((models["cross-bf16"] / "fastmarco.json").read_text())
    assert cross["precision"] == "bf16"


def test_bf16_export_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastmarco.model.export import export_model

    with pytest.raises(ExportError, match="exclude each other"):
        export_model("unused", tmp_path / "x", bf16=True, int8=True)
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "missing", lambda self: "openvino is not installed")
    with pytest.raises(
        ExportError, match=r"openvino is not installed \(pip install 'fastmarco\[openvino\]'\)"
    ):
        export_model("unused", tmp_path / "x", bf16=True)
    assert not (tmp_path / "x").exists()


def test_int8_static_export(models: dict[str, Path], auto: Path) -> None:
    """NNCF's static int8 of the unfused eager-attention graph, written as an OpenVINO graph (model.xml
    + model.bin): checked at export on OpenVINO, its weight range (8-bit with VNNI, else 7-bit) recorded,
    run on OpenVINO only (ONNX Runtime does not read that graph, and 'auto' does not try it)."""
    import openvino

    from fastmarco.model.runtimes import has_vnni

    folder = models["bi-int8-static"]
    manifest = json.loads((folder / "fastmarco.json").read_text())
    assert (manifest["precision"], manifest["optimize"], manifest["model"]) == (
        "int8-static",
        "O1",
        "model.xml",
    )
    assert sorted(path.name for path in folder.glob("model.*")) == ["model.bin", "model.xml"]
    quantization = manifest["quantization"]
    assert quantization["weight_bits"] == (8 if has_vnni() else 7)
    assert quantization["calibration_batches"] > 0 and "nncf" in manifest["exported_by"]
    ops = {op.get_type_name() for op in openvino.Core().read_model(folder / "model.xml").get_ops()}
    assert {"FakeQuantize", "MatMul"} <= ops
    # traced from eager attention: no attention scale computed from the query's shape at run time (the
    # SDPA trace takes a Sqrt of it in every layer)
    assert manifest["attention_implementation"] == "eager" and "Sqrt" not in ops
    assert manifest["parity_min_cosine"] >= 0.97
    fp32 = Encoder.open(models["bi-fp32"], device="cpu", runtime="onnxruntime").encode(TEXTS)
    on_openvino = Encoder.open(folder, device="cpu", runtime="openvino")
    assert float((fp32 * on_openvino.encode(TEXTS)).sum(axis=1).min()) >= 0.97
    assert Encoder.open(folder, device="cpu").runtime == "openvino" and not auto.exists()  # nothing measured
    with pytest.raises(
        EncoderError,
        match=r"runtime onnxruntime: .*model.xml is an OpenVINO graph, which onnxruntime does not",
    ):
        Encoder.open(folder, device="cpu", runtime="onnxruntime")


def test_int8_static_calibrates_on_a_corpus_file(tmp_path: Path) -> None:
    """Every chosen passage, the demo queries and the shortest texts static int8 must cover go through
    the calibration, with SmoothQuant's corpus strength."""
    from fastmarco.corpus.bundled import demo_queries_path, demo_texts
    from fastmarco.model.bi_encoder_export import SHORTEST_TEXTS
    from fastmarco.model.export import export_model
    from fastmarco.model.static_quantize import CORPUS_SMOOTH_QUANT_ALPHA

    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"p{i}\t{text}\n" for i, text in enumerate(CORPUS * 5)))
    source = build("bert-mean-normalize", tmp_path / "bi")
    export_model(str(source), tmp_path / "out", int8_static=True, calibration=corpus)
    quantization = json.loads((tmp_path / "out" / "fastmarco.json").read_text())["quantization"]
    queries = demo_texts(demo_queries_path())
    assert quantization["calibration_rows"] == len(CORPUS) * 5 + len(queries) + len(SHORTEST_TEXTS)
    assert quantization["smooth_quant_alpha"] == CORPUS_SMOOTH_QUANT_ALPHA
    assert quantization["calibrated_on"] == f"{len(CORPUS) * 5} passages of {corpus}"


def test_a_graph_file_the_manifest_names_must_be_whole(models: dict[str, Path], tmp_path: Path) -> None:
    """An OpenVINO graph is its .xml and its weights' .bin; a graph format no runtime reads is refused."""
    folder = tmp_path / "static"
    shutil.copytree(models["bi-int8-static"], folder)
    (folder / "model.bin").unlink()
    with pytest.raises(ModelError, match=r"static/model.bin: missing from the model directory"):
        Encoder.open(folder, device="cpu")
    manifest = json.loads((folder / "fastmarco.json").read_text())
    (folder / "fastmarco.json").write_text(json.dumps({**manifest, "model": "model.pt"}))
    with pytest.raises(
        ModelError, match=r"fastmarco.json: model 'model.pt' is not a graph format fastmarco reads"
    ):
        ModelManifest.load(folder)


def test_no_installed_runtime_says_what_to_install(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASTMARCO_RUNTIME")
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "missing", lambda self: "openvino is not installed")
    with pytest.raises(
        EncoderError,
        match=r"no installed runtime runs a int8-static model on device 'cpu' \(openvino: openvino is not "
        r"installed, pip install 'fastmarco\[openvino\]'\)",
    ):
        Encoder.open(models["bi-int8-static"], device="cpu")


def test_int8_static_cross_encoder_that_drifts_is_refused(tmp_path: Path) -> None:
    """The parity gate holds for static int8 too: the tiny cross-encoder (32 wide, weights of std 0.2)
    does not survive per-tensor activation scales, so nothing is published. (An all-MiniLM-L6-shaped
    one passes: benchmarks/bench_encode_cpu.py --cross-encoder exports and measures it.)"""
    from fastmarco.model.export import export_model

    source = build_cross_encoder("bert-cross-encoder", tmp_path / "cross")
    with pytest.raises(ExportError, match=r"int8-static cross-encoder export disagrees with CrossEncoder"):
        export_model(str(source), tmp_path / "out", int8_static=True)
    assert not (tmp_path / "out").exists()


def test_int8_static_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastmarco.model.export import export_model

    with pytest.raises(ExportError, match="exclude each other"):
        export_model("unused", tmp_path / "x", int8_static=True, int8=True)
    with pytest.raises(ExportError, match="quantizes the unfused graph: --optimize O1"):
        export_model("unused", tmp_path / "x", int8_static=True, optimize="O2")
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "missing", lambda self: "openvino is not installed")
    with pytest.raises(
        ExportError, match=r"int8-static runs on the openvino runtime: openvino is not installed"
    ):
        export_model("unused", tmp_path / "x", int8_static=True)
    assert not (tmp_path / "x").exists()


def test_8_bit_weights_on_a_cpu_without_vnni_warn(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An export's 8-bit weights can overflow int16 sums on a CPU without VNNI: opening it there warns."""
    folder = models["bi-int8-static"]
    if json.loads((folder / "fastmarco.json").read_text())["quantization"]["weight_bits"] != 8:
        pytest.skip("this CPU has no VNNI: the export here has 7-bit weights")
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        Encoder.open(folder, device="cpu", runtime="openvino")
    assert "8-bit weights, made on a CPU with VNNI; this CPU has none" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        Encoder.open(folder, device="cpu", runtime="openvino")
    assert "VNNI" not in caplog.text


def cap_onednn(monkeypatch: pytest.MonkeyPatch, cap: str | None) -> None:
    """ONEDNN_MAX_CPU_ISA set to CAP for the test (None: unset), as `--emulate-isa` sets it."""
    if cap is None:
        monkeypatch.delenv(runtimes.ONEDNN_ISA_CAP, raising=False)
    else:
        monkeypatch.setenv(runtimes.ONEDNN_ISA_CAP, cap)


@pytest.mark.parametrize(
    ("cap", "vnni", "bf16", "amx"),
    [
        (None, True, True, True),  # this CPU as it is
        ("all", True, True, True),
        ("AVX10_1_512_AMX", True, True, True),
        ("AVX512_CORE_BF16", True, True, False),  # AMD Zen 4, Intel Cooper Lake
        ("AVX512_CORE_VNNI", True, False, False),  # Intel Cascade Lake
        ("AVX512_CORE", False, False, False),  # Intel Skylake-SP
        ("AVX2_VNNI", True, False, False),  # Intel Alder Lake
        ("AVX2", False, False, False),  # AMD Zen 2, Intel Haswell
        ("AVX10_2_512", True, True, True),  # newer than the table: no cap known, none applied
    ],
)
def test_a_onednn_cap_stands_for_the_cpu_family_it_names(
    monkeypatch: pytest.MonkeyPatch, cap: str | None, vnni: bool, bf16: bool, amx: bool
) -> None:
    """Weight bits, bf16 and AMX follow ONEDNN_MAX_CPU_ISA as OpenVINO's kernels do (its own bf16
    capability reads the CPU, which has bf16 here)."""
    from fastmarco.model.runtimes import openvino_runtime

    class Core:
        def get_property(self, device: str, name: str) -> list[str]:
            return ["FP32", "BF16", "INT8"]

    monkeypatch.setattr(openvino_runtime, "_core", Core)
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16", "amx_tile"}))
    cap_onednn(monkeypatch, cap)
    assert (runtimes.has_vnni(), openvino_runtime.bf16_capable(), runtimes.has_amx()) == (vnni, bf16, amx)


@pytest.mark.parametrize(
    ("cap", "slow"), [("AVX2", True), ("AVX2_VNNI", False), ("AVX512_CORE", False), (None, False)]
)
def test_int8_static_where_openvino_has_no_fast_int8_kernels_warns(
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cap: str | None,
    slow: bool,
) -> None:
    """Plain AVX2 (no VNNI, no AVX-512): oneDNN's int8 falls back to a gemm slower than fp32. Said where
    such an export is made and where it is opened."""
    from fastmarco.model.export_steps import check_openvino_for
    from fastmarco.model.precisions import precision_named

    flags = {"avx2", "avx512bw", "avx512_vnni"}
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset(flags))
    cap_onednn(monkeypatch, cap)
    warning = "this CPU has neither VNNI nor AVX-512"
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        Encoder.open(models["bi-int8-static"], device="cpu", runtime="openvino")
    assert (warning in caplog.text) == slow
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        check_openvino_for(precision_named("int8-static"))
        check_openvino_for(precision_named("fp32"))
    assert caplog.text.count(warning) == slow
    assert RUNTIMES["openvino"].caveat(precision_named("int8")) is None  # dynamic int8 runs on ORT


def test_an_export_says_its_runtime_caveat_once(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """bf16 capped away: the export says OpenVINO runs it in fp32 once, up front, not again with its
    staging folder's name from its own parity check; opening the export says it again."""
    from fastmarco.model.export import export_model

    # `models` compiled OpenVINO models first: oneDNN read its (absent) cap then, so this one reaches
    # fastmarco's decisions only, not the kernels of the rest of the session
    monkeypatch.setenv(runtimes.ONEDNN_ISA_CAP, "AVX512_CORE_VNNI")
    source = build("bert-mean-normalize", tmp_path / "bi")
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        export_model(str(source), tmp_path / "bf16", bf16=True)
    said = [record.getMessage() for record in caplog.records if "no bf16 instructions" in record.getMessage()]
    assert len(said) == 1 and "staging" not in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        Encoder.open(tmp_path / "bf16", device="cpu", runtime="openvino")
    assert f"{tmp_path / 'bf16'}: this CPU has no bf16 instructions" in caplog.text


def test_openvino_bulk_pads_to_steps_of_16_where_its_kernels_use_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    openvino = RUNTIMES["openvino"]
    monkeypatch.delenv(runtimes.ONEDNN_ISA_CAP, raising=False)
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512_vnni", "amx_tile"}))
    assert runtimes.has_amx() and openvino.bulk_width_step == 16
    for cap, step in [("AVX512_CORE_BF16", 1), ("avx2", 1), ("AVX512_CORE_AMX", 16), ("ALL", 16)]:
        monkeypatch.setenv(runtimes.ONEDNN_ISA_CAP, cap)  # oneDNN capped: an older CPU family, emulated
        assert openvino.bulk_width_step == step, cap
    monkeypatch.delenv(runtimes.ONEDNN_ISA_CAP)
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    assert not runtimes.has_amx() and openvino.bulk_width_step == 1
    assert openvino.width_step == 16  # one query at a time: each length would be a new shape
    assert (RUNTIMES["onnxruntime"].width_step, RUNTIMES["onnxruntime"].bulk_width_step) == (1, 1)


@pytest.mark.parametrize(
    ("precision", "amx", "bf16", "expected"),
    [
        # int8-static's float rest computes in fp32 wherever it runs, bf16 instructions or not
        ("int8-static", True, True, {"INFERENCE_PRECISION_HINT": "f32"}),
        ("int8-static", False, True, {"INFERENCE_PRECISION_HINT": "f32"}),
        ("int8-static", False, False, {"INFERENCE_PRECISION_HINT": "f32"}),
        ("bf16", True, True, {"INFERENCE_PRECISION_HINT": "bf16"}),
        ("bf16", False, True, {"INFERENCE_PRECISION_HINT": "bf16"}),
        ("fp32", True, True, {"INFERENCE_PRECISION_HINT": "f32"}),
    ],
)
def test_openvino_settings_by_precision_and_cpu(
    monkeypatch: pytest.MonkeyPatch, precision: str, amx: bool, bf16: bool, expected: dict[str, str]
) -> None:
    from fastmarco.model.precisions import precision_named
    from fastmarco.model.runtimes import openvino_runtime

    monkeypatch.delenv(runtimes.ONEDNN_ISA_CAP, raising=False)
    flags = {"avx512_vnni", "avx512_bf16", "amx_tile"} if amx else {"avx512_vnni", "avx512_bf16"}
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(openvino_runtime, "bf16_capable", lambda: bf16)
    settings = openvino_runtime.compile_config
    assert settings(precision_named(precision), 0) == expected
    assert settings(precision_named(precision), 2) == {**expected, "INFERENCE_NUM_THREADS": 2}


def test_auto_measures_once_and_caches(
    models: dict[str, Path], auto: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[str] = []
    timings = {"onnxruntime": 0.02, "openvino": 0.01}

    def calibrated(session: runtimes.Session, model: object, vocab_size: int, rows: int) -> float:
        name = "openvino" if type(session).__name__ == "OpenVinoSession" else "onnxruntime"
        measured.append(name)
        # each runtime timed on a bulk batch its own token budget takes, compared a row at a time
        assert rows == RUNTIMES[name].cpu_max_tokens // runtimes.CALIBRATION_WIDTH
        return timings[name] * rows

    monkeypatch.setattr(runtimes, "calibration_seconds", calibrated)
    assert Encoder.open(models["bi-fp32"], device="cpu").runtime == "openvino"
    assert sorted(measured) == ["onnxruntime", "openvino"]
    entry = next(iter(json.loads(auto.read_text()).values()))
    assert entry["runtime"] == "openvino" and entry["seconds_per_row"] == pytest.approx(timings)
    timings.update(openvino=1.0)  # the cache answers: no second measurement
    assert Encoder.open(models["bi-fp32"], device="cpu").runtime == "openvino"
    assert len(measured) == 2
    # another thread count is another measurement, cached beside the first
    assert Encoder.open(models["bi-fp32"], device="cpu", threads=1).runtime == "onnxruntime"
    assert len(measured) == 4 and len(json.loads(auto.read_text())) == 2
    # oneDNN capped below this CPU's instruction set is another CPU family to OpenVINO: its own entry
    # (only the key is computed under the cap: oneDNN reads it once per process)
    model, candidates = ModelManifest.load(models["bi-fp32"]), list(RUNTIMES.values())
    uncapped = runtimes._choice_key(model, candidates, 0)
    monkeypatch.setenv(runtimes.ONEDNN_ISA_CAP, "AVX512_CORE_BF16")
    assert runtimes._choice_key(model, candidates, 0) != uncapped
    monkeypatch.delenv(runtimes.ONEDNN_ISA_CAP)
    # a damaged cache is measured again, never fatal
    auto.write_text("{not json")
    assert Encoder.open(models["bi-fp32"], device="cpu", threads=1).runtime == "onnxruntime"
    assert len(measured) == 6


def test_auto_measures_for_real(
    models: dict[str, Path], auto: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real calibration: both runtimes timed on this host, the faster one taken and cached; only
    the chosen one's precision note is logged."""
    with caplog.at_level(logging.WARNING, logger="fastmarco"):
        encoder = Encoder.open(models["bi-bf16"], device="cpu")
    entry = next(iter(json.loads(auto.read_text()).values()))
    assert set(entry["seconds_per_row"]) == {"onnxruntime", "openvino"}
    assert encoder.runtime == min(entry["seconds_per_row"], key=entry["seconds_per_row"].get)
    assert choices_path() == auto
    assert ("onnxruntime runs a bf16 export in fp32" in caplog.text) == (encoder.runtime == "onnxruntime")


def test_auto_leaves_out_a_runtime_that_cannot_open_the_graph(
    models: dict[str, Path], auto: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenVINO has no rule for an int8 export's QAttention: auto measures ONNX Runtime alone and says
    so; naming openvino is an error naming the graph."""
    with caplog.at_level(logging.INFO, logger="fastmarco"):
        encoder = Encoder.open(models["bi-int8-attention"], device="cpu")
    assert encoder.runtime == "onnxruntime"
    assert encoder.encode(TEXTS).shape == (len(TEXTS), 32)
    entry = next(iter(json.loads(auto.read_text()).values()))
    assert set(entry["seconds_per_row"]) == {"onnxruntime"} and entry["cannot_open"] == ["openvino"]
    assert "openvino cannot open it" in caplog.text
    with pytest.raises(EncoderError, match=r"bi-int8-attention.*OpenVINO cannot read it"):
        Encoder.open(models["bi-int8-attention"], device="cpu", runtime="openvino")


def test_auto_with_one_candidate_measures_nothing(
    models: dict[str, Path], auto: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "missing", lambda self: "openvino is not installed")
    assert Encoder.open(models["bi-fp32"], device="cpu").runtime == "onnxruntime"
    assert not auto.exists()


def test_runtime_errors(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model = ModelManifest.load(models["bi-fp32"])
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'; known: auto, onnxruntime, openvino"):
        open_model_session(models["bi-fp32"], model, "cpu", "tensorrt")
    monkeypatch.setenv("FASTMARCO_RUNTIME", "tensorrt")
    with pytest.raises(InputError, match="FASTMARCO_RUNTIME=tensorrt: unknown runtime"):
        open_model_session(models["bi-fp32"], model, "cpu")
    with pytest.raises(EncoderError, match="openvino: does not run a fp32 model on device 'cuda'"):
        open_model_session(models["bi-fp32"], model, "cuda", "openvino")
    int4 = dataclasses.replace(model, precision="int4")  # a manifest from a later version
    with pytest.raises(ModelError, match=r"fastmarco.json: unknown precision 'int4'; known: fp32, fp16"):
        open_model_session(models["bi-fp32"], int4, "cpu")
    monkeypatch.setattr(type(RUNTIMES["openvino"]), "missing", lambda self: "openvino is not installed")
    with pytest.raises(
        EncoderError, match=r"openvino is not installed \(pip install 'fastmarco\[openvino\]'\)"
    ):
        open_model_session(models["bi-fp32"], model, "cpu", "openvino")


def test_cli_runtime_option(models: dict[str, Path], tmp_path: Path) -> None:
    from fastmarco.store.shards import ShardSet

    (tmp_path / "c.tsv").write_text("".join(f"{i}\t{text}\n" for i, text in enumerate(CORPUS)))
    args = [
        "encode",
        "--model",
        str(models["bi-fp32"]),
        "--corpus",
        str(tmp_path / "c.tsv"),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ov"), "--runtime", "openvino"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ort"), "--runtime", "onnxruntime"])
    assert result.exit_code == 0, result.output
    ov, ort = ShardSet.open(tmp_path / "ov"), ShardSet.open(tmp_path / "ort")
    rows = np.arange(len(CORPUS))
    np.testing.assert_allclose(ov.vectors_of(rows), ort.vectors_of(rows), atol=1e-3)  # fp16 shards
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x"), "--runtime", "tensorrt"])
    assert (
        result.exit_code == 2
        and "'tensorrt' is not one of 'auto', 'onnxruntime', 'openvino'" in result.output
    )


def test_info_lists_the_runtimes() -> None:
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("model runtimes: "))
    assert line.startswith("model runtimes: onnxruntime 1.") and "; openvino 20" in line
    assert "runtime auto: onnxruntime; choices in " in result.output  # conftest pins the runtime
