"""Re-ranking served: /v1/rerank in the shape of Cohere's and Jina's APIs (driven by the official cohere
client), /search with `rerank`, and `Engine.rerank`, against sentence-transformers' CrossEncoder."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra: pip install '.[serve]'")
pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")
httpx = pytest.importorskip("httpx", reason="needs the dev extra")

from live_server import LiveServer  # noqa: E402
from tiny_models import CORPUS, build_cross_encoder  # noqa: E402

from fastmarco import Encoder, Engine, PassageStore  # noqa: E402
from fastmarco.encode.local import encode_corpus  # noqa: E402
from fastmarco.errors import InputError  # noqa: E402
from fastmarco.model.export import export_model  # noqa: E402
from fastmarco.search.index import build_index  # noqa: E402
from fastmarco.serve.app import ServeConfig, create_app  # noqa: E402
from fastmarco.serve.schema import Limits  # noqa: E402

QUERY = "how big is london"
LIMITS = Limits(
    max_inputs=64, max_k=100, payload_bytes=4_000_000, max_documents=200, max_document_chars=5_000
)


@pytest.fixture(scope="module")
def built(exported: dict[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A flat index of the tiny corpus (a tiny bi-encoder) and a tiny ELECTRA cross-encoder (sigmoid
    scores in [0, 1], as Cohere's relevance scores are), exported, and its sentence-transformers folder."""
    root = tmp_path_factory.mktemp("rerank-serve")
    (root / "collection.tsv").write_text("".join(f"{i}\t{text}\n" for i, text in enumerate(CORPUS)))
    encoder = Encoder.open(exported["bert-mean-normalize", "fp32"], device="cpu")
    encode_corpus(encoder, root / "collection.tsv", root / "shards")
    build_index(root / "shards", root / "index", kind="flat")
    folder = build_cross_encoder("electra-cross-encoder", root / "cross-st")
    export_model(str(folder), root / "cross")
    engine = Engine.open(root / "index", device="cpu", threads=2, cross_encoder=root / "cross")
    return {
        "root": root,
        "engine": engine,
        "st": folder,
        "passages": PassageStore.open(root / "collection.tsv"),
    }


@contextlib.contextmanager
def serving(built: dict[str, Any], engine: Engine | None = None, **overrides: Any) -> Iterator[LiveServer]:
    config = replace(ServeConfig("tiny", limits=LIMITS), **overrides)
    with LiveServer(create_app(engine or built["engine"], built["passages"], config)) as live:
        yield live


@pytest.fixture(scope="module")
def server(built: dict[str, Any]) -> Iterator[LiveServer]:
    with serving(built) as live:
        yield live


def predict(folder: Path, query: str, documents: list[str]) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return np.asarray(model.predict([(query, d) for d in documents], show_progress_bar=False))


DOCUMENTS = [*CORPUS, " ".join(CORPUS) * 3, "london"]


def test_cohere_client_rerank_equals_cross_encoder_predict(server: LiveServer, built: dict[str, Any]) -> None:
    cohere = pytest.importorskip("cohere", reason="needs the dev extra")
    expected = predict(built["st"], QUERY, DOCUMENTS)
    assert expected.std() > 0.01  # the tiny model tells documents apart, so the order means something
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client's own pydantic shims
        with httpx.Client(timeout=60) as http:
            client = cohere.Client(base_url=server.url, api_key="unused", httpx_client=http)
            answer = client.rerank(
                model="tiny", query=QUERY, documents=DOCUMENTS, top_n=5, return_documents=True
            )
    order = np.argsort(-expected, kind="stable")[:5]
    assert [r.index for r in answer.results] == order.tolist()
    np.testing.assert_allclose([r.relevance_score for r in answer.results], expected[order], atol=1e-3)
    assert [r.document.text for r in answer.results] == [DOCUMENTS[i] for i in order]

    # Jina's shape: objects with "text", usage; every document when top_n is absent; no documents echoed
    body = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "model": "tiny"}
    reply = httpx.post(f"{server.url}/rerank", json=body, timeout=60).json()
    assert [r["index"] for r in reply["results"]] == np.argsort(-expected, kind="stable").tolist()
    assert "document" not in reply["results"][0] and reply["usage"]["total_tokens"] > len(DOCUMENTS)

    # Engine.rerank and its pids form: the same scores
    np.testing.assert_allclose(built["engine"].rerank(QUERY, DOCUMENTS), expected, atol=1e-3)
    ranked = built["engine"].rerank_pids(QUERY, ["0", "1", "2"], built["passages"])
    np.testing.assert_allclose(sorted(s for _, s in ranked)[::-1], np.sort(expected[:3])[::-1], atol=1e-3)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"query": QUERY, "documents": []}, 422, "documents"),
        ({"query": QUERY, "documents": ["x"] * 10_000}, 413, "documents"),
        ({"query": QUERY, "documents": ["ok", "x" * 1_000_000]}, 413, "documents[1]"),
        ({"query": QUERY, "documents": ["ok", 7]}, 422, "documents[1]"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, 422, "documents[0].text"),
        ({"query": QUERY, "documents": "one string"}, 422, "documents"),
        ({"documents": ["a"]}, 422, "query"),
        ({"query": ["a"], "documents": ["a"]}, 422, "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, 422, "top_n"),
        ({"query": QUERY, "documents": ["a"], "return_documents": "yes"}, 422, "return_documents"),
        ({"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, 422, "rank_fields"),
        ({"query": QUERY, "documents": ["\ud800"]}, 422, "documents[0]"),
    ],
)
def test_bad_rerank_requests_are_4xx_naming_the_field(
    server: LiveServer, body: Any, status: int, field: str
) -> None:
    headers = {"content-type": "application/json"}  # json.dumps escapes a lone surrogate, as a client may
    reply = httpx.post(f"{server.url}/v1/rerank", content=json.dumps(body), headers=headers, timeout=60)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == field
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200


def test_token_limit_and_a_server_without_a_cross_encoder(built: dict[str, Any]) -> None:
    with serving(built, limits=replace(LIMITS, max_rerank_tokens=50)) as live:
        reply = httpx.post(f"{live.url}/v1/rerank", json={"query": QUERY, "documents": CORPUS}, timeout=60)
        assert reply.status_code == 413 and "--max-rerank-tokens" in reply.json()["error"]["message"]
    plain = Engine(built["engine"].encoder, built["engine"].index, 2)
    with serving(built, engine=plain) as live:
        assert (
            httpx.post(
                f"{live.url}/v1/rerank", json={"query": QUERY, "documents": ["a"]}, timeout=60
            ).status_code
            == 404
        )
        reply = httpx.post(f"{live.url}/search", json={"query": QUERY, "k": 5, "rerank": 3}, timeout=60)
        assert reply.status_code == 422 and reply.json()["error"]["param"] == "rerank"
    with pytest.raises(InputError, match="no cross-encoder"):
        plain.rerank(QUERY, ["a"])


def test_search_reranks_the_top_n(server: LiveServer, built: dict[str, Any]) -> None:
    plain = httpx.post(f"{server.url}/search", json={"query": QUERY, "k": 6}, timeout=60).json()["results"][
        0
    ]["hits"]
    reply = httpx.post(f"{server.url}/search", json={"query": QUERY, "k": 6, "rerank": 4}, timeout=60)
    assert reply.status_code == 200, reply.text
    hits = reply.json()["results"][0]["hits"]
    top = plain[:4]
    scores = built["engine"].rerank(QUERY, [h["text"] for h in top])
    order = np.argsort(-scores, kind="stable")
    assert [h["pid"] for h in hits[:4]] == [top[i]["pid"] for i in order]
    np.testing.assert_allclose([h["rerank_score"] for h in hits[:4]], scores[order], atol=1e-5)
    assert [h["pid"] for h in hits[4:]] == [h["pid"] for h in plain[4:]] and "rerank_score" not in hits[4]
    assert [h["rank"] for h in hits] == list(range(1, 7))
    too_many = httpx.post(f"{server.url}/search", json={"query": QUERY, "k": 5, "rerank": 6}, timeout=60)
    assert too_many.status_code == 422 and too_many.json()["error"]["param"] == "rerank"


def test_concurrent_embeddings_and_reranks_are_batched_and_answered_alike(
    server: LiveServer, built: dict[str, Any]
) -> None:
    expected = built["engine"].rerank(QUERY, DOCUMENTS)

    def rerank(i: int) -> list[float]:
        body = {"query": QUERY, "documents": DOCUMENTS[i % 3 :], "top_n": 3}
        reply = httpx.post(f"{server.url}/v1/rerank", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        return [r["relevance_score"] for r in reply.json()["results"]]

    def embed(i: int) -> int:
        return httpx.post(
            f"{server.url}/v1/embeddings", json={"input": CORPUS[i % len(CORPUS)]}, timeout=60
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        reranked = pool.map(rerank, range(24))
        embedded = pool.map(embed, range(24))
        for i, scores in enumerate(reranked):
            np.testing.assert_allclose(scores, np.sort(expected[i % 3 :])[::-1][:3], atol=1e-5)
        assert set(embedded) == {200}


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)"
)
def test_search_page_rerank_toggle_in_headless_chromium(server: LiveServer, tmp_path: Path) -> None:
    chromium = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
    ]  # fmt: skip
    query = QUERY.replace(" ", "%20")
    for toggle, rerank in (("&rerank=1", 10), ("", 0)):
        dom = subprocess.run(
            [*chromium, f"{server.url}/?q={query}{toggle}"], capture_output=True, text=True, timeout=120
        ).stdout
        body = {"query": QUERY, "k": 10} | ({"rerank": rerank} if rerank else {})
        expected = [
            h["pid"]
            for h in httpx.post(f"{server.url}/search", json=body, timeout=60).json()["results"][0]["hits"]
        ]
        shown = re.findall(r'<li data-pid="([^"]+)"', dom)
        assert shown == expected, dom[-2000:]
        assert ('class="rerank-score"' in dom) == bool(rerank)
        assert 'id="rerank-row"' in dom and (
            'id="rerank-row" hidden' not in dom
        )  # offered: it has a cross-encoder
