"""Export + Encoder parity with sentence-transformers on tiny random models of each family."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="needs the export extra: pip install '.[export]'")
pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")

from reference import row_cosines
from tiny_models import CORPUS, FAMILIES

from fastmarco.errors import EncoderError, ExportError, InputError
from fastmarco.model.bi_encoder_export import read_model_card
from fastmarco.model.encoder import Encoder
from fastmarco.model.export import export_model
from fastmarco.model.runtime import BULK_ROWS, TokenBudget

TEXTS = [
    *CORPUS,
    *(text.upper() for text in CORPUS),
    "  padded with spaces  ",
    "x",
    "",
    " ".join(CORPUS) * 3,  # far beyond max_seq_length (48): truncated
    *(f"query number {i} about {CORPUS[i % len(CORPUS)][: 20 + i]}" for i in range(40)),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("precision", "floor"), [("fp32", 0.9999), ("fp16", 0.999)])
def test_parity_with_sentence_transformers(
    tiny: dict[str, Path], exported: dict[tuple[str, str], Path], family: str, precision: str, floor: float
) -> None:
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(tiny[family]), device="cpu").encode(TEXTS, show_progress_bar=False)
    encoder = Encoder.open(exported[family, precision], device="cpu", max_tokens=256)
    got, stats = encoder.encode_with_stats(TEXTS)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert row_cosines(got, expected).min() >= floor
    assert stats.texts == len(TEXTS) and stats.batches > 1
    assert stats.truncated == untruncated_over_limit(exported[family, precision]) > 0


def untruncated_over_limit(directory: Path) -> int:
    """How many of TEXTS exceed max_seq_length tokens when nothing truncates them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    limit = json.loads((directory / "fastmarco.json").read_text())["max_seq_length"]
    return sum(len(tokenizer.encode(text).ids) > limit for text in TEXTS)


def test_cosine_models_are_normalised_and_dot_models_are_not(
    tiny: dict[str, Path], exported: dict[tuple[str, str], Path]
) -> None:
    from sentence_transformers import SentenceTransformer

    for family in FAMILIES:
        manifest = json.loads((exported[family, "fp32"] / "fastmarco.json").read_text())
        got = Encoder.open(exported[family, "fp32"], device="cpu").encode(CORPUS)
        if family.endswith("-dot"):
            assert manifest["similarity"] == "dot" and not manifest["normalized"]
            assert manifest["modules"] == ["Transformer", "Pooling", "Dense", "LayerNorm"]
            assert manifest["pooling"] == "cls"
            # dot-product models keep their raw scale: values, not just directions, must match
            expected = SentenceTransformer(str(tiny[family]), device="cpu").encode(
                CORPUS, show_progress_bar=False
            )
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        else:
            assert manifest["similarity"] == "cosine" and manifest["normalized"]
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_manifest_records_what_was_exported(exported: dict[tuple[str, str], Path]) -> None:
    manifest = json.loads((exported["bert-mean-normalize", "fp16"] / "fastmarco.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["optimize"] == "O2"
    assert manifest["dim"] == 32 and manifest["max_seq_length"] == 48 and manifest["search_metric"] == "ip"
    assert manifest["parity_min_cosine"] >= 0.999 and len(manifest["fingerprint"]) == 16  # XXH3-64
    assert (exported["bert-mean-normalize", "fp16"] / "tokenizer.json").is_file()


def layer_count(model: Path) -> int:
    """The tiny model's transformer layers (DistilBERT calls them n_layers)."""
    config = json.loads((model / "config.json").read_text())
    return int(config.get("num_hidden_layers", config.get("n_layers")))


@pytest.mark.parametrize("family", FAMILIES)
def test_transformer_fusions_take_in_every_family(
    tiny: dict[str, Path], exported: dict[tuple[str, str], Path], family: str
) -> None:
    """Fused attention is what the GPU path is for; a graph that silently stays unfused is a bug."""
    layers = layer_count(tiny[family])
    fusions = json.loads((exported[family, "fp16"] / "fastmarco.json").read_text())["fusions"]
    assert fusions.get("Attention") == layers
    assert fusions.get("SkipLayerNormalization") == 2 * layers
    assert fusions.get("BiasGelu") == layers


def expanded_masks(graph: Any) -> list[str]:
    """The Expands in GRAPH that copy the attention mask (unsqueezed) to another tensor's shape."""
    producer = {output: node for node in graph.node for output in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type == "Expand"
        and node.input[0] in producer
        and producer[node.input[0]].op_type == "Unsqueeze"
        and producer[node.input[0]].input[0] == "attention_mask"
    ]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mean_pooling_broadcasts_the_mask_in_every_family(
    exported: dict[tuple[str, str], Path], family: str, precision: str
) -> None:
    """No export copies the mask to (batch, length, hidden): mean pooling multiplies by it broadcast."""
    import onnx

    graph = onnx.load(str(exported[family, precision] / "model.onnx")).graph
    assert expanded_masks(graph) == []
    producer = {output: node for node in graph.node for output in node.output}
    broadcast = [
        node
        for node in graph.node
        if node.op_type == "Mul"
        and any(
            name in producer
            and producer[name].op_type == "Cast"
            and producer[producer[name].input[0]].op_type == "Unsqueeze"
            for name in node.input
        )
    ]
    assert len(broadcast) == (0 if "-cls-" in family else 1)


def test_an_exported_graph_pools_as_the_traced_one_to_the_bit(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The rewrite on a real trace: the same embeddings, padded rows included, as the graph optimum
    traced from sentence-transformers (both fp32, unfused, on ONNX Runtime)."""
    import onnx
    import onnxruntime as ort

    from fastmarco.model.bi_encoder_export import BiEncoderKind, _broadcast_mean_pooling_mask
    from fastmarco.model.export_steps import trace_to_onnx

    source = BiEncoderKind().load(tiny["bert-mean-normalize"], max_seq_length=None, similarity=None)
    traced = onnx.load(
        str(
            trace_to_onnx(
                source.reference,
                tmp_path,
                task="feature-extraction",
                library="sentence_transformers",
                opset=None,
            )
        )
    )
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(traced)
    assert _broadcast_mean_pooling_mask(rewritten.graph) == 1
    assert len(expanded_masks(traced.graph)) == 1 and expanded_masks(rewritten.graph) == []
    tokenizer = source.reference.tokenizer
    feeds = dict(tokenizer(TEXTS, padding=True, truncation=True, max_length=48, return_tensors="np"))
    assert not feeds["attention_mask"].all()  # padded rows: the mask matters

    def embed(model: Any) -> list[np.ndarray]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = {port.name for port in session.get_inputs()}
        return session.run(None, {k: v.astype(np.int64) for k, v in feeds.items() if k in names})

    for before, after in zip(embed(traced), embed(rewritten), strict=True):
        np.testing.assert_array_equal(before, after)


def pooling_graph(
    *,
    keepdims: tuple[int, int] = (0, 0),
    count_axis: int = 1,
    swap_div: bool = False,
    count_out: bool = False,
) -> Any:
    """sentence-transformers' mean pooling as its trace writes it, over token embeddings fed as an
    input; the keyword arguments bend the pattern in ways the rewrite must not take."""
    from onnx import TensorProto, helper

    node = helper.make_node
    nodes = [
        node("Constant", [], ["last"], value=helper.make_tensor("last", TensorProto.INT64, [1], [-1])),
        node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        node(
            "Constant", [], ["axis"], value=helper.make_tensor("axis", TensorProto.INT64, [1], [count_axis])
        ),
        node("Constant", [], ["tiny"], value=helper.make_tensor("tiny", TensorProto.FLOAT, [], [1e-9])),
        node("Unsqueeze", ["attention_mask", "last"], ["unsqueezed"]),
        node("Shape", ["tokens"], ["shape"]),
        node("Expand", ["unsqueezed", "shape"], ["expanded"]),
        node("Cast", ["expanded"], ["mask"], to=TensorProto.FLOAT),
        node("Mul", ["tokens", "mask"], ["masked"]),
        node("ReduceSum", ["masked", "one"], ["summed"], keepdims=keepdims[0]),
        node("ReduceSum", ["mask", "axis"], ["count"], keepdims=keepdims[1]),
        node("Clip", ["count", "tiny"], ["clamped"]),
        node("Div", ["clamped", "summed"] if swap_div else ["summed", "clamped"], ["pooled"]),
    ]
    outputs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None)]
    if count_out:
        outputs.append(helper.make_tensor_value_info("count", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "pooling",
        [
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "length", 4]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"]),
        ],
        outputs,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("bend", "rewritten"),
    [
        ({}, 1),
        ({"keepdims": (1, 1)}, 1),
        ({"count_axis": -2}, 1),
        ({"count_axis": 2, "keepdims": (1, 1)}, 0),  # over the hidden channels: H times the mask there
        ({"keepdims": (0, 1)}, 0),  # a (batch, 1, 1) count would broadcast a (batch, hidden) sum wrongly
        ({"swap_div": True}, 0),
        ({"count_out": True}, 0),  # the mask's sum leaves the graph: its shape is part of the output
    ],
)
def test_the_mask_rewrite_keeps_every_value_and_takes_only_the_pattern(bend: dict, rewritten: int) -> None:  # type: ignore[type-arg]
    import onnxruntime as ort

    from fastmarco.model.bi_encoder_export import _broadcast_mean_pooling_mask

    original = pooling_graph(**bend)
    model = pooling_graph(**bend)
    assert _broadcast_mean_pooling_mask(model.graph) == rewritten
    assert len(expanded_masks(model.graph)) == 1 - rewritten
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.int64)
    feeds = {"tokens": rng.standard_normal((3, 5, 4)).astype(np.float32), "attention_mask": mask}
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        for m in (original, model)
    ]
    for before, after in zip(*run, strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cpu_session_runs_layer_norm_unfused_from_the_residual_add(
    tiny: dict[str, Path],
    exported: dict[tuple[str, str], Path],
    family: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORT's SkipLayerNormalization CPU kernel is the slow way to add a residual and normalize: an fp32
    export leaves it unfused, and the CPU session, whose optimized graph ORT writes here, keeps it so."""
    import onnx
    import onnxruntime as ort

    layers = layer_count(tiny[family])
    manifest = json.loads((exported[family, "fp32"] / "fastmarco.json").read_text())
    assert "SkipLayerNormalization" not in manifest["fusions"]
    assert manifest["fusions"].get("LayerNormalization", 0) >= 2 * layers  # and the embeddings' if unfused
    assert manifest["fusions"].get("Attention") == layers

    optimized = tmp_path / "optimized.onnx"
    real_options = ort.SessionOptions

    def writing_options() -> ort.SessionOptions:
        options = real_options()
        options.optimized_model_filepath = str(optimized)
        return options

    monkeypatch.setattr(ort, "SessionOptions", writing_options)
    encoder = Encoder.open(exported[family, "fp32"], device="cpu")
    ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert ops.count("SkipLayerNormalization") == 0
    assert ops.count("LayerNormalization") == manifest["fusions"]["LayerNormalization"]
    expected = Encoder.open(exported[family, "fp16"], device="cpu").encode(TEXTS[:8])
    assert row_cosines(encoder.encode(TEXTS[:8]), expected).min() >= 0.999


def test_results_do_not_depend_on_batching(exported: dict[tuple[str, str], Path]) -> None:
    directory = exported["roberta-mean-cosine", "fp32"]
    small = Encoder.open(directory, device="cpu", max_tokens=64, max_batch=3).encode(TEXTS)
    large = Encoder.open(directory, device="cpu", max_tokens=100_000).encode(TEXTS)
    np.testing.assert_allclose(small, large, atol=2e-6)
    # input order is kept whatever the length-sorted batch order was
    np.testing.assert_allclose(
        small[::-1], Encoder.open(directory, device="cpu").encode(TEXTS[::-1]), atol=2e-6
    )


def test_bad_inputs(exported: dict[tuple[str, str], Path]) -> None:
    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    with pytest.raises(InputError, match=r"texts\[2\] is int, expected str"):
        encoder.encode(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="not one str"):
        encoder.encode("a single string")
    assert encoder.encode([]).shape == (0, 32)
    empty = encoder.encode(["", "   "])
    np.testing.assert_allclose(
        empty[0], empty[1], atol=1e-6
    )  # WordPiece drops whitespace: both are [CLS][SEP]
    assert encoder.encode(["a"], dtype=np.float16).dtype == np.float16


def test_bulk_tokenizes_ahead_on_a_thread_and_small_calls_do_not(
    exported: dict[tuple[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bulk calls tokenize on a background thread, whose errors reach the caller and which is gone
    after; smaller calls (one query) tokenize on the calling thread, which is cheaper than a handover."""
    from fastmarco.model import encoder as encoder_module

    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    started: list[str] = []  # tokenizing threads started

    class CountedThread(threading.Thread):
        def start(self) -> None:
            if self.name == "fastmarco-tokenize":
                started.append(self.name)
            super().start()

    monkeypatch.setattr(encoder_module.threading, "Thread", CountedThread)
    bulk = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(BULK_ROWS)]
    one = encoder.encode(bulk[:1])
    assert started == []
    np.testing.assert_allclose(encoder.encode(bulk)[:1], one, atol=2e-6)
    assert started == ["fastmarco-tokenize"]
    with pytest.raises(InputError, match=rf"texts\[{BULK_ROWS}\] is int, expected str"):
        encoder.encode([*bulk, 3])  # type: ignore[list-item]
    assert not any(t.name == "fastmarco-tokenize" for t in threading.enumerate())


def test_cuda_without_provider_is_an_error_not_a_fallback(exported: dict[tuple[str, str], Path]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EncoderError, match=r"no CUDAExecutionProvider.*fastmarco\[gpu\]"):
        Encoder.open(exported["bert-mean-normalize", "fp32"], device="cuda")
    assert Encoder.open(exported["bert-mean-normalize", "fp32"], device="auto").device == "cpu"


def test_busy_wait_off_stops_the_spin_when_a_run_returns_not_inside_it(
    exported: dict[tuple[str, str], Path],
) -> None:
    """The Engine's setting: spinning inside a run keeps a short query fast; stopping it when the run
    returns leaves the cores to the search and tokenizing around it."""

    def entries(busy_wait: bool) -> dict[str, str]:
        model = exported["bert-mean-normalize", "fp32"]
        encoder = Encoder.open(model, device="cpu", busy_wait=busy_wait, runtime="onnxruntime")
        options, found = encoder.session.session.get_session_options(), {}
        for key in ("session.force_spinning_stop", "session.intra_op.allow_spinning"):
            with contextlib.suppress(RuntimeError):  # ORT's answer for a key never set
                found[key] = options.get_session_config_entry(key)
        return found

    assert entries(busy_wait=False) == {"session.force_spinning_stop": "1"}
    assert entries(busy_wait=True) == {}


def test_plan_batches_respects_the_token_budget() -> None:
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    runs = TokenBudget(max_tokens=2048, max_batch=64).plan(lengths)
    assert sorted(np.concatenate([rows for rows, _ in runs]).tolist()) == list(range(1000))
    for rows, width in runs:
        assert len(rows) <= 64 and (len(rows) == 1 or len(rows) * width <= 2048)
        assert lengths[rows[0]] == lengths[rows].max() == width


def test_cpu_plan_keeps_rows_of_similar_length_together() -> None:
    lengths = np.random.default_rng(1).integers(5, 256, size=300)
    budget = TokenBudget.for_device("cpu")
    runs = budget.plan(lengths)
    assert sorted(np.concatenate([rows for rows, _ in runs]).tolist()) == list(range(300))
    for rows, width in runs:
        assert lengths[rows].min() >= budget.min_fill * lengths[rows].max() or len(rows) == 1
        assert len(rows) == 1 or len(rows) * width <= budget.max_tokens
    assert TokenBudget.for_device("cuda").min_fill == 0  # a GPU wants the biggest runs


def test_plan_rounds_widths_up_to_the_step_within_the_longest_allowed() -> None:
    lengths = np.random.default_rng(2).integers(1, 251, size=500)
    budget = TokenBudget.for_device("cpu", width_step=16, max_width=250)
    runs = budget.plan(lengths)
    assert sorted(np.concatenate([rows for rows, _ in runs]).tolist()) == list(range(500))
    for rows, width in runs:
        longest = int(lengths[rows].max())
        assert longest <= width < longest + 16 and (width % 16 == 0 or width == 250)
        assert len(rows) == 1 or len(rows) * width <= budget.max_tokens
    assert len({width for _, width in runs}) <= 16  # not one per length
    assert budget.width(0) == 16 and budget.width(300) == 300  # never narrower than the longest row
    # bulk work has its own step: here none, so each run is as wide as its longest row
    unrounded = TokenBudget.for_device("cpu", width_step=16, bulk_width_step=1, max_width=250)
    for rows, width in unrounded.plan(lengths, bulk=True):
        assert width == int(lengths[rows].max())
    assert all(width % 16 == 0 or width == 250 for _, width in unrounded.plan(lengths))  # not in bulk


def write_module_stack(
    folder: Path, modules: list[str], pooling: dict | None = None, model_type: str = "bert"
) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"model_type": model_type, "num_attention_heads": 2, "hidden_size": 8})
    )
    entries = [
        {
            "idx": i,
            "name": str(i),
            "path": "" if i == 0 else f"{i}_{m}",
            "type": f"sentence_transformers.models.{m}",
        }
        for i, m in enumerate(modules)
    ]
    (folder / "modules.json").write_text(json.dumps(entries))
    if pooling is not None:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.mark.parametrize(
    ("modules", "pooling", "model_type", "message"),
    [
        (["Transformer", "CNN"], None, "bert", r"module types \['CNN'\] are not supported; .*Pooling, Dense"),
        (
            ["Transformer", "Pooling"],
            {"pooling_mode": "weightedmean"},
            "bert",
            r"pooling \['weightedmean'\] is not supported",
        ),
        (
            ["Transformer", "Pooling"],
            {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
            "bert",
            r"pooling \['mean', 'max'\] is not supported",
        ),
        (
            ["Transformer", "Pooling"],
            {"pooling_mode": "mean"},
            "gpt2",
            "model_type 'gpt2' is not supported; supported: bert",
        ),
    ],
)
def test_unsupported_models_are_refused_clearly(
    tmp_path: Path, modules, pooling, model_type, message
) -> None:  # type: ignore[no-untyped-def]
    folder = write_module_stack(tmp_path / "m", modules, pooling, model_type)
    with pytest.raises(ExportError, match=message):
        read_model_card(folder)
    with pytest.raises(ExportError, match=message):
        export_model(str(folder), tmp_path / "out")
    # nothing half-written: only the writer's (released) lock beside where OUT would be
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "m"]


def test_old_style_pooling_config_is_read(tmp_path: Path) -> None:
    folder = write_module_stack(tmp_path / "m", ["Transformer", "Pooling"], {"pooling_mode_cls_token": True})
    assert read_model_card(folder).pooling == "cls"


def test_existing_output_is_not_overwritten(tiny: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(str(tiny["bert-mean-normalize"]), tmp_path / "out")


def test_an_export_prints_no_third_party_advice(
    tiny: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # optimum printed "Weight deduplication check ... requires accelerate" on every export (fastmarco
    # demo showed it): a check for tied LM heads these graphs do not have; it goes to the debug log
    family = next(iter(tiny))
    capfd.readouterr()
    export_model(str(tiny[family]), tmp_path / "out")
    assert "accelerate" not in capfd.readouterr().err
