"""The ASGI app: OpenAI-compatible embeddings, search (optionally re-ranked), Cohere/Jina-compatible
re-ranking with a cross-encoder, a search page, health, info and metrics.

One error boundary (`_answer_errors`) turns every FastmarcoError into a JSON error body shaped like
OpenAI's (`{"error": {"message", "type", "param", "code"}}`) with its HTTP status; anything else is
logged with its traceback on the server and answered 500 with no detail, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastmarco._version import __version__
from fastmarco.engine import Engine, PairTokens
from fastmarco.errors import (
    FastmarcoError,
    FieldError,
    InputError,
    MisdirectedError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
    UnsupportedMediaError,
    WorkerError,
)
from fastmarco.pipelines.retrieve import Hit, hits_of, reranked_hits
from fastmarco.serve.batcher import Batcher, Job, JobResult
from fastmarco.serve.metrics import Metrics
from fastmarco.serve.schema import Limits, embeddings_request, parse_json, rerank_request, search_request
from fastmarco.store.passages import PassageStore

log = logging.getLogger("fastmarco.serve")

# Texts up to this many characters in all are tokenized on the event loop (tens of microseconds);
# longer requests go to the tokenizer thread so the loop keeps accepting while they are cut.
INLINE_TOKENIZE_CHARS = 2_000
INLINE_ANSWER_RESULTS = 1_000  # search results an answer without passage texts is built inline for
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


DEFAULT_LIMITS = Limits(max_inputs=256, max_k=1000, payload_bytes=2_000_000)


@dataclass(frozen=True)
class ServeConfig:
    model_name: str
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 0.0
    max_queue: int = 512
    limits: Limits = DEFAULT_LIMITS
    api_key: str | None = None
    # The Host names a request may carry (DNS rebinding: a page on another site resolving its own name
    # to 127.0.0.1); None accepts any, as a server bound to every interface must.
    allowed_hosts: frozenset[str] | None = None
    body_timeout_s: float = 30.0  # a request's body must arrive within this (then 408)
    # Answers built but not yet taken by their clients (a client that never reads holds its answer):
    # past max_unsent_bytes new work is refused (429); a client that takes no chunk of its answer in
    # send_timeout_s is dropped.
    max_unsent_bytes: int = 256 << 20
    send_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.api_key is not None:
            if not self.api_key.strip():
                raise InputError(
                    "the API key (--api-key or FASTMARCO_API_KEY) is empty: set one, or unset it to serve "
                    "without authentication"
                )
            object.__setattr__(self, "api_key", self.api_key.strip())


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts_for(bind_host: str) -> frozenset[str] | None:
    """The Host names to accept on a socket bound to `bind_host`: the loopback names for a loopback
    address, else any (the names a public address is reached by are not known here)."""
    if bind_host in LOOPBACK_NAMES or bind_host.startswith("127."):
        return LOOPBACK_NAMES | {bind_host}
    return None


ERRORS: list[tuple[type[FastmarcoError], int, str]] = [
    (UnauthorizedError, 401, "authentication_error"),
    (MisdirectedError, 421, "invalid_request_error"),
    (PayloadTooLargeError, 413, "invalid_request_error"),
    (UnsupportedMediaError, 415, "invalid_request_error"),
    (RequestTimeoutError, 408, "invalid_request_error"),
    (InputError, 422, "invalid_request_error"),
    (OverloadedError, 429, "rate_limit_error"),
    (WorkerError, 503, "server_error"),  # a shard group's actor is gone: the index cannot answer whole
]


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, FastmarcoError):
        # the first class that fits; other FastmarcoErrors are the server's own files (corrupt, changed)
        status, kind = next(((s, k) for cls, s, k in ERRORS if isinstance(exc, cls)), (500, "server_error"))
        if status == 500:  # the server's own files: the message (paths and all) stays in its log
            error_id = secrets.token_hex(6)
            log.error("request failed (error %s): %s", error_id, exc)
            message = f"internal server error {error_id} (logged on the server)"
            return JSONResponse(error_body(message, "server_error"), 500)
        headers = {}
        if isinstance(exc, OverloadedError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        param = exc.field if isinstance(exc, FieldError | PayloadTooLargeError) else None
        return JSONResponse(error_body(str(exc), kind, param), status, headers=headers)
    log.exception("internal error")
    return JSONResponse(error_body("internal server error (logged on the server)", "server_error"), 500)


def _answer_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def answered(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # the server's one error boundary
            return _error_response(exc)

    return answered


def misdirected(scope: Scope, allowed: frozenset[str] | None) -> MisdirectedError | None:
    """The error for a request whose Host header is not one of `allowed` (None: any is)."""
    if allowed is None:
        return None
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    if host.startswith("[") and "]" in host:  # [::1]:8000
        name = host[1 : host.index("]")]
    else:  # 127.0.0.1:8000, localhost
        name = host.split(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() in allowed:
        return None
    return MisdirectedError(f"Host {host!r} is not this server (it answers to {', '.join(sorted(allowed))})")


SEND_CHUNK_BYTES = 1 << 16  # answers go out in chunks, each waiting for the client to take the last


class _SendTimeout(Exception):
    """A client took no chunk of its answer in time."""


@dataclass
class Unsent:
    """Bytes of answers handed to the server but not yet taken by their clients."""

    limit: int
    timeout_s: float
    bytes: int = 0

    def check(self) -> None:
        if self.bytes > self.limit:
            raise OverloadedError(
                f"{self.bytes:,} bytes of answers are waiting for their clients to read them; retry shortly",
                retry_after=1.0,
            )


class RequestCounter:
    """ASGI middleware: refuses a request for another Host (421), sends answers in chunks with a
    timeout while counting them as unsent, and counts every answered request by route and status."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        paths: set[str],
        allowed_hosts: frozenset[str] | None,
        unsent: Unsent,
    ) -> None:
        self.app, self.metrics, self.paths, self.allowed_hosts = app, metrics, paths, allowed_hosts
        self.unsent = unsent

    async def send_body(self, send: Send, message: Message) -> None:
        """One body message in chunks, each sent once the client has taken the last (uvicorn's flow
        control); a chunk not taken in time raises _SendTimeout."""
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        pending = len(body)
        self.unsent.bytes += pending
        try:
            offset = 0
            while True:
                chunk = body[offset : offset + SEND_CHUNK_BYTES]
                offset += len(chunk)
                last = offset >= len(body)
                part: Message = {"type": "http.response.body", "body": chunk, "more_body": more or not last}
                try:
                    await asyncio.wait_for(send(part), self.unsent.timeout_s)
                except asyncio.TimeoutError:
                    raise _SendTimeout from None
                self.unsent.bytes -= len(chunk)
                pending -= len(chunk)
                if last:
                    return
        finally:
            self.unsent.bytes -= pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        refused = misdirected(scope, self.allowed_hosts)
        if refused is not None:
            self.metrics.requests.labels("other", "421").inc()
            await _error_response(refused)(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            if message["type"] == "http.response.body":
                await self.send_body(send, message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, counted)
        except _SendTimeout:  # returning unfinished makes uvicorn close the connection (one log line)
            log.warning("dropped a client that read none of its answer in %g s", self.unsent.timeout_s)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.requests.labels(path, str(status)).inc()


class Service:
    """What the routes share: the engine, the optional passage store, the batcher and the metrics."""

    def __init__(self, engine: Engine, passages: PassageStore | None, config: ServeConfig) -> None:
        self.engine = engine
        self.loaded = engine.describe()
        self.passages = passages
        self.config = config
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        # tokenizing (and reading passage text) runs here, beside the batch running on its own thread
        self.io = ThreadPoolExecutor(1, thread_name_prefix="fastmarco-tokenize")
        self.unsent = Unsent(config.max_unsent_bytes, config.send_timeout_s)
        # answers (passage reads, JSON) are built on their own thread: never behind or ahead of tokenizing
        self.answers = ThreadPoolExecutor(1, thread_name_prefix="fastmarco-answer")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher = Batcher(
            self.engine,
            self.metrics,
            max_batch_tokens=self.config.max_batch_tokens,
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
        )
        self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()
            self.io.shutdown(wait=True)
            self.answers.shutdown(wait=True)

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        # header values arrive decoded as latin-1: back to the bytes sent, compared with the key's UTF-8
        sent = token.strip().encode("latin-1", errors="replace")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, key.encode("utf-8")):
            raise UnauthorizedError("missing or wrong API key: send 'Authorization: Bearer <key>'")

    async def body(self, request: Request) -> dict[str, Any]:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media and media != "application/json":
            raise UnsupportedMediaError(
                f"Content-Type {media!r}: send the body as JSON ('Content-Type: application/json')"
            )
        limit = self.config.limits.payload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise FieldError("content-length", f"not a byte count: {declared!r}")
            if int(declared) > limit:
                raise PayloadTooLargeError(
                    f"body of {declared} bytes is over the limit of {limit} (--payload-limit)"
                )
        received = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                received.extend(chunk)
                if len(received) > limit:
                    raise PayloadTooLargeError(f"body is over the limit of {limit} bytes (--payload-limit)")

        try:
            await asyncio.wait_for(read(), self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"body: {len(received):,} bytes arrived in {self.config.body_timeout_s:g} s, not all of it"
            ) from None
        return parse_json(bytes(received))

    async def run(self, request: Request, texts: list[str], k: int | None) -> JobResult | None:
        """Tokenize, queue, and wait for the batch; None when the client went away meanwhile."""
        assert self.batcher is not None, "the lifespan starts the batcher before any request"
        self.unsent.check()
        loop = asyncio.get_running_loop()
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:  # a query or two: cheaper than a thread hop
            tokenized = self.engine.tokenize(texts)
        else:
            tokenized = await loop.run_in_executor(self.io, self.engine.tokenize, texts)
        truncated = int(tokenized.truncated.sum())
        if truncated:
            self.metrics.truncated.inc(truncated)
        job = self.batcher.submit(tokenized, k)
        return await self._wait(request, job)

    async def score(
        self, request: Request, queries: list[str], documents: list[list[str]], field: str
    ) -> JobResult | None:
        """Tokenize each query's pairs with its documents, queue them as one job, and wait for the
        scores (concatenated in order); None when the client went away meanwhile."""
        assert self.batcher is not None, "the lifespan starts the batcher before any request"
        self.unsent.check()
        engine = self.engine

        def tokenize() -> PairTokens:
            return PairTokens.concat(
                [engine.tokenize_pairs(q, d) for q, d in zip(queries, documents, strict=True)]
            )

        pairs = await asyncio.get_running_loop().run_in_executor(self.io, tokenize)
        limit = self.config.limits.max_rerank_tokens
        if pairs.tokens > limit:
            raise PayloadTooLargeError(
                f"{field}: {pairs.tokens:,} tokens in the query-document pairs, more than this server's "
                f"limit of {limit:,} (--max-rerank-tokens); send fewer or shorter documents",
                field,
            )
        return await self._wait(request, self.batcher.submit_pairs(pairs))

    async def _wait(self, request: Request, job: Job) -> JobResult | None:
        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher: asyncio.Future[None] = asyncio.ensure_future(disconnected())
        waited: set[asyncio.Future[Any]] = {job.future, watcher}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if job.future.done():
            return job.future.result()
        job.dropped = True
        self.metrics.dropped.inc()
        job.future.cancel()
        return None

    def headers(self, started: float, result: JobResult) -> dict[str, str]:
        def ms(seconds: float) -> str:
            return f"{seconds * 1000:.3f}"

        return {
            "X-Queue-Time": ms(result.queue_seconds),
            "X-Encode-Time": ms(result.encode_seconds),
            "X-Search-Time": ms(result.search_seconds),
            "X-Total-Time": ms(time.perf_counter() - started),
            "X-Batch-Size": str(result.batch_rows),
            "X-Prompt-Tokens": str(result.tokens),
            "X-Truncated-Inputs": str(result.truncated),
        }

    # ------------------------------------------------------------------------------------- routes

    async def embeddings(self, request: Request) -> Response:
        with self.metrics.inflight.track_inprogress():
            return await self._embeddings(request)

    async def search(self, request: Request) -> Response:
        with self.metrics.inflight.track_inprogress():
            return await self._search(request)

    async def rerank(self, request: Request) -> Response:
        with self.metrics.inflight.track_inprogress():
            return await self._rerank(request)

    async def _rerank(self, request: Request) -> Response:
        started = time.perf_counter()
        self.authorize(request)
        asked = rerank_request(await self.body(request), self.config.limits)
        result = await self.score(request, [asked.query], [asked.documents], "documents")
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        scores = result.scores
        assert scores is not None, "a scoring job always has scores"
        order = np.argsort(-scores, kind="stable")[: asked.top_n]
        results = [
            {"index": int(i), "relevance_score": float(scores[i])}
            | ({"document": {"text": asked.documents[i]}} if asked.return_documents else {})
            for i in order
        ]
        document = {
            "id": secrets.token_hex(8),
            "model": self.loaded.cross_encoder.name if self.loaded.cross_encoder else None,
            "results": results,
            "meta": {"billed_units": {"search_units": 1}, "tokens": {"input_tokens": result.tokens}},
            "usage": {"total_tokens": result.tokens},
        }
        return JSONResponse(document, headers=self.headers(started, result))

    async def _embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        self.authorize(request)
        asked = embeddings_request(await self.body(request), self.config.limits, self.loaded.dim)
        result = await self.run(request, asked.texts, None)
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        vectors = result.vectors
        if asked.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = vectors.tolist()
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                "model": self.config.model_name,
                "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
            },
            headers=self.headers(started, result),
        )

    async def _search(self, request: Request) -> Response:
        started = time.perf_counter()
        self.authorize(request)
        asked = search_request(await self.body(request), self.config.limits)
        if asked.rerank and (self.engine.reranker is None or self.passages is None):
            missing = (
                "cross-encoder (serve --cross-encoder DIR)" if self.passages else "collection (--collection)"
            )
            raise FieldError("rerank", f"this server has no {missing} to re-rank with")
        result = await self.run(request, asked.texts, asked.k)
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        found = result.found
        assert found is not None, "a search job always has results"
        inline = self.passages is None and len(asked.texts) * asked.k <= INLINE_ANSWER_RESULTS

        def collect() -> list[list[Hit]]:
            return [hits_of(found, i, self.passages) for i in range(len(asked.texts))]

        # a few ids and scores: cheaper here than a thread hop; passage reads go to the answers thread
        hits = (
            collect() if inline else await asyncio.get_running_loop().run_in_executor(self.answers, collect)
        )
        if asked.rerank:
            tops = [h[: asked.rerank] for h in hits]
            scored = await self.score(
                request, asked.texts, [[hit.text or "" for hit in top] for top in tops], "rerank"
            )
            if scored is None:
                return Response(status_code=CLIENT_CLOSED)
            assert scored.scores is not None
            ends = np.cumsum([len(top) for top in tops])
            hits = [
                reranked_hits(h, scored.scores[end - len(top) : end])
                for h, top, end in zip(hits, tops, ends, strict=True)
            ]

        def answer() -> bytes:
            results = [
                {"query": text, "hits": [h.as_json(self.passages is not None) for h in hits[i]]}
                for i, text in enumerate(asked.texts)
            ]
            document = {
                "model": self.config.model_name,
                "k": asked.k,
                "results": results,
                "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
            }
            return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()

        if inline:
            body = answer()
        else:
            body = await asyncio.get_running_loop().run_in_executor(self.answers, answer)
        return Response(body, media_type="application/json", headers=self.headers(started, result))

    async def info(self, request: Request) -> Response:
        self.authorize(request)
        loaded = self.loaded
        limits = self.config.limits
        return JSONResponse(
            {
                "version": __version__,
                "model": self.config.model_name,
                "model_fingerprint": loaded.model_fingerprint,
                "dim": loaded.dim,
                "similarity": loaded.similarity,
                "max_seq_length": loaded.max_seq_length,
                "device": loaded.device,
                "index": {
                    "kind": loaded.index_kind,
                    "factory": loaded.index_factory,
                    "rows": loaded.rows,
                },
                "passages": self.passages is not None,
                "limits": {
                    "max_inputs": limits.max_inputs,
                    "max_k": limits.max_k,
                    "max_results": limits.max_results,
                    "payload_bytes": limits.payload_bytes,
                    "max_batch_tokens": self.config.max_batch_tokens,
                    "max_wait_ms": self.config.max_wait_ms,
                    "max_queue": self.config.max_queue,
                    "max_documents": limits.max_documents,
                    "max_document_chars": limits.max_document_chars,
                    "max_rerank_tokens": limits.max_rerank_tokens,
                },
                "cross_encoder": loaded.cross_encoder.name if loaded.cross_encoder else None,
            }
        )

    async def models(self, request: Request) -> Response:
        """OpenAI's model list: the one model served."""
        self.authorize(request)
        entry = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "fastmarco"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(self, request: Request) -> Response:
        """200 while the server can answer; 503 once its collection is gone (a changed one is reopened
        by the store itself), so an orchestrator replaces it instead of sending it searches."""
        if self.passages is not None and not self.passages.path.is_file():
            return JSONResponse({"status": "unhealthy", "reason": "the collection file is gone"}, 503)
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE)


PAGE = resources.files("fastmarco.serve").joinpath("page.html").read_text(encoding="utf-8")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(error_body(exc.detail, "invalid_request_error"), exc.status_code, headers=exc.headers)


def create_app(engine: Engine, passages: PassageStore | None, config: ServeConfig) -> ASGIApp:
    """The server's ASGI app; its lifespan starts and drains the batcher."""
    service = Service(engine, passages, config)
    routes = [
        Route("/", _answer_errors(service.page), methods=["GET"]),
        Route("/health", _answer_errors(service.health), methods=["GET"]),
        Route("/info", _answer_errors(service.info), methods=["GET"]),
        Route("/metrics", _answer_errors(service.prometheus), methods=["GET"]),
        Route("/search", _answer_errors(service.search), methods=["POST"]),
        Route("/v1/embeddings", _answer_errors(service.embeddings), methods=["POST"]),
        Route("/v1/models", _answer_errors(service.models), methods=["GET"]),
    ]
    if engine.reranker is not None:
        routes += [
            Route("/v1/rerank", _answer_errors(service.rerank), methods=["POST"]),
            Route("/rerank", _answer_errors(service.rerank), methods=["POST"]),
        ]
    app = Starlette(routes=routes, lifespan=service.lifespan, exception_handlers={HTTPException: _http_error})
    app.state.service = service
    paths = {route.path for route in routes}
    return RequestCounter(app, service.metrics, paths, config.allowed_hosts, service.unsent)
