"""Request bodies of the HTTP API, checked field by field: a wrong one is a FieldError naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastmarco.corpus.text import unicode_problem
from fastmarco.errors import FieldError, PayloadTooLargeError


@dataclass(frozen=True)
class Limits:
    max_inputs: int
    max_k: int
    payload_bytes: int
    # results a /search request may ask (queries x k): 256 queries x k 1000 (2 KB asked) built 106 MB
    # and took 24 s of CPU; 20,000 results are ~2 MB without passage texts, ~20 MB with
    max_results: int = 20_000
    # re-ranking: documents per request, characters per document, tokens of a request's pairs
    max_documents: int = 1_000
    max_document_chars: int = 32_768
    max_rerank_tokens: int = 262_144


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    encoding_format: Literal["float", "base64"]


@dataclass(frozen=True)
class SearchRequest:
    texts: list[str]
    k: int
    rerank: int  # re-rank each query's top `rerank` hits with the cross-encoder (0: no)


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int  # results to return, best first
    return_documents: bool


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FieldError("body", f"not valid JSON ({exc})") from exc
    except RecursionError:
        raise FieldError("body", "not valid JSON here: nested too deeply") from None
    if not isinstance(document, dict):
        raise FieldError("body", f"expected a JSON object, got {type(document).__name__}")
    return document


def _text(value: str, field: str) -> str:
    problem = unicode_problem(value)
    if problem:
        raise FieldError(field, problem)
    return value


def _texts(value: Any, field: str, limits: Limits) -> list[str]:
    if isinstance(value, str):
        return [_text(value, field)]
    if not isinstance(value, list):
        raise FieldError(field, f"expected a string or a list of strings, got {type(value).__name__}")
    if not value:
        raise FieldError(field, "the list is empty")
    if len(value) > limits.max_inputs:
        raise PayloadTooLargeError(
            f"{field}: {len(value)} inputs, more than this server's limit of {limits.max_inputs} "
            "(--max-inputs); split the request",
            field,
        )
    for i, text in enumerate(value):
        if not isinstance(text, str):
            kind = "token ids (send text; token arrays are not supported)" if _is_tokens(text) else None
            raise FieldError(f"{field}[{i}]", f"expected a string, got {kind or type(text).__name__}")
        _text(text, f"{field}[{i}]")
    return value


def _is_tokens(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, list) and all(isinstance(t, int) for t in value))


def embeddings_request(document: dict[str, Any], limits: Limits, dim: int) -> EmbeddingsRequest:
    """OpenAI's /v1/embeddings body: input, model, encoding_format, dimensions, user."""
    if "input" not in document:
        raise FieldError("input", "missing")
    if _is_tokens(document["input"]):
        raise FieldError("input", "token ids are not supported; send text")
    texts = _texts(document["input"], "input", limits)
    for name in ("model", "user"):
        if document.get(name) is not None and not isinstance(document[name], str):
            raise FieldError(name, f"expected a string, got {type(document[name]).__name__}")
    encoding: Literal["float", "base64"]
    given = document.get("encoding_format") or "float"
    if given == "float":
        encoding = "float"
    elif given == "base64":
        encoding = "base64"
    else:
        raise FieldError("encoding_format", f"expected 'float' or 'base64', got {given!r}")
    dimensions = document.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions != dim):
        raise FieldError("dimensions", f"this model's embeddings have {dim} dimensions; got {dimensions!r}")
    return EmbeddingsRequest(texts, encoding)


def search_request(document: dict[str, Any], limits: Limits) -> SearchRequest:
    """{"query": str} or {"queries": [str, ...]}, and "k" (default 10)."""
    if ("query" in document) == ("queries" in document):
        raise FieldError("query", "give exactly one of 'query' (a string) or 'queries' (a list of strings)")
    if "query" in document:
        if not isinstance(document["query"], str):
            raise FieldError("query", f"expected a string, got {type(document['query']).__name__}")
        texts = [_text(document["query"], "query")]
    else:
        if not isinstance(document["queries"], list):
            raise FieldError(
                "queries", f"expected a list of strings, got {type(document['queries']).__name__}"
            )
        texts = _texts(document["queries"], "queries", limits)
    k = document.get("k", 10)
    if type(k) is not int:
        raise FieldError("k", f"expected an integer, got {type(k).__name__}")
    if not 1 <= k <= limits.max_k:
        raise FieldError("k", f"must be between 1 and {limits.max_k} (--max-k), got {k}")
    if len(texts) * k > limits.max_results:
        raise PayloadTooLargeError(
            f"{len(texts)} queries x k {k} = {len(texts) * k:,} results, more than this server's limit of "
            f"{limits.max_results:,} (--max-results); ask fewer queries or a smaller k",
            "k",
        )
    rerank = document.get("rerank", 0)
    if type(rerank) is not int or not 0 <= rerank <= k:
        raise FieldError("rerank", f"expected an integer between 0 and k ({k}), got {rerank!r}")
    if rerank * len(texts) > limits.max_documents:
        raise PayloadTooLargeError(
            f"{len(texts)} queries x rerank {rerank} = {rerank * len(texts):,} documents to re-rank, more "
            f"than this server's limit of {limits.max_documents:,} (--max-documents)",
            "rerank",
        )
    return SearchRequest(texts, k, rerank)


def rerank_request(document: dict[str, Any], limits: Limits) -> RerankRequest:
    """Cohere's and Jina's /rerank body: query, documents (strings or objects with "text"), top_n,
    return_documents, model; other fields Cohere's client sends (rank_fields, max_chunks_per_doc) are
    accepted when empty."""
    query = document.get("query")
    if not isinstance(query, str):
        raise FieldError(
            "query", f"expected a string, got {type(query).__name__}" if "query" in document else "missing"
        )
    _text(query, "query")
    if len(query) > limits.max_document_chars:
        raise PayloadTooLargeError(
            f"query: {len(query):,} characters, more than this server's limit of "
            f"{limits.max_document_chars:,} (--max-document-chars)",
            "query",
        )
    given = document.get("documents")
    if not isinstance(given, list):
        raise FieldError(
            "documents",
            f"expected a list, got {type(given).__name__}" if "documents" in document else "missing",
        )
    if not given:
        raise FieldError("documents", "the list is empty")
    if len(given) > limits.max_documents:
        raise PayloadTooLargeError(
            f"documents: {len(given):,} documents, more than this server's limit of {limits.max_documents:,} "
            "(--max-documents); split the request",
            "documents",
        )
    texts = []
    for i, item in enumerate(given):
        field = f"documents[{i}]"
        if isinstance(item, dict):
            item, field = item.get("text"), f"documents[{i}].text"
        if not isinstance(item, str):
            raise FieldError(
                field, f"expected a string (or an object with a 'text' string), got {type(item).__name__}"
            )
        if len(item) > limits.max_document_chars:
            raise PayloadTooLargeError(
                f"{field}: {len(item):,} characters, more than this server's limit of "
                f"{limits.max_document_chars:,} (--max-document-chars)",
                field,
            )
        texts.append(_text(item, field))
    top_n = document.get("top_n")
    if top_n is None:
        top_n = len(texts)
    if type(top_n) is not int or top_n < 1:
        raise FieldError("top_n", f"expected a positive integer, got {top_n!r}")
    return_documents = document.get("return_documents", False)
    if return_documents is None:
        return_documents = False
    if not isinstance(return_documents, bool):
        raise FieldError("return_documents", f"expected true or false, got {return_documents!r}")
    if document.get("model") is not None and not isinstance(document["model"], str):
        raise FieldError("model", f"expected a string, got {type(document['model']).__name__}")
    for unsupported in ("rank_fields", "max_chunks_per_doc"):
        if document.get(unsupported):
            raise FieldError(unsupported, "not supported by this server: send plain documents")
    return RerankRequest(query, texts, min(top_n, len(texts)), return_documents)
