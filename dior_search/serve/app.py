"""`dior-search serve`: a JSON API and one web page over the served indexes.

Starlette routes, each a thin layer over `SearchService`: requests are parsed and checked here,
the work runs in a worker thread under the request's time limit, and every failure is answered
with a one-line JSON body `{"error": "..."}` and its status code. Only the routes below exist:
no file is ever served by a path from a request.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, replace
from functools import cache, partial
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
import uvicorn
from starlette import responses
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from dior_search.errors import DiorError, UsageError
from dior_search.search.deadline import DeadlineExceeded
from dior_search.search.groups import group_images
from dior_search.search.request import SearchRequest, SearchResult, Wording, check_query_given
from dior_search.serve.access import (
    AccessGuard,
    AccessPolicy,
    BodyLimitGuard,
    UnsupportedMediaType,
    media_type,
    sent_as,
)
from dior_search.serve.protocol import KEEP_ALIVE_S, MAX_HEADER_BYTES, TimedH11Protocol
from dior_search.serve.service import SearchService, TooLarge, Upload
from dior_search.serve.terms_json import parse_distinct, parse_terms, resolve_terms

log = logging.getLogger(__name__)

# Room in a request body for the multipart framing and the form's small fields.
FORM_OVERHEAD = 64 * 1024
# A JSON query is a few hundred bytes: a bigger body is refused unparsed (413), and one nested
# deeper than the parser's recursion limit is a 400.
MAX_JSON_BYTES = 1024 * 1024
# Error messages quote what was asked (names, values): never more than this of it.
MAX_ERROR_CHARS = 300
MAX_PAGE = 200
# Conditions one query may name: a collection has a handful; more is no search.
MAX_CONDITIONS = 32
MULTIPART = "multipart/form-data"
# The request's rules (search.request.Wording) in the words of the API's fields.
SERVER_WORDING = Wording(
    one_query="give exactly one of upload (an uploaded image) or id (an indexed one)",
    terms_alone="conflicting terms: give the examples as terms, with no upload or id",
)
JSON_TYPE = "application/json"
QUERY_FIELDS = (
    "collection",
    "conditions",
    "condition",
    "weights",
    "k",
    "upload",
    "id",
    "id_condition",
    "words",
    "where",
    "terms",
    "distinct",
)
# Groups one request may ask for.
MAX_GROUPS = 100
# Facets shown per condition at most.
MAX_FACETS = 100
PAGE_HEADERS = {
    # The page is one file with its script and style inline; it loads nothing from elsewhere.
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "cache-control": "no-cache",
}

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


class JSONResponse(responses.JSONResponse):
    """JSON in ASCII: a file name that is not UTF-8 (held as a lone surrogate, see
    data.paths) is sent as the escape `\\udcNN` rather than failing to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str) -> JSONResponse:
    """A one-line JSON error; a message quoting a long input is cut to MAX_ERROR_CHARS."""
    line = " ".join(message.split())
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 3] + "..."
    return JSONResponse({"error": line}, status_code=status)


def service_of(request: Request) -> SearchService:
    service: SearchService = request.app.state.service
    return service


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work (embedding, FAISS, Parquet, PIL) off the event loop; cancellable."""
    return await anyio.to_thread.run_sync(partial(function, *args), abandon_on_cancel=True)


def api(handler: Handler) -> Handler:
    """Apply the time limit and turn the project's errors into one-line JSON answers."""

    async def guarded(request: Request) -> Response:
        timeout = service_of(request).settings.timeout_s
        try:
            with anyio.fail_after(timeout):
                return await handler(request)
        except (TimeoutError, DeadlineExceeded):
            # One answer whichever noticed first: the server's clock or the work's own check.
            return error_response(504, f"the request took longer than the limit of {timeout:g} s")
        except DiorError as exc:
            status = exc.http_status  # each error class carries its own (see errors.py)
            if status == 500:
                log.error("%s: %s", request.url.path, exc)
            return error_response(status, str(exc))

    return guarded


@cache
def page_html() -> str:
    return files("dior_search.serve").joinpath("static/index.html").read_text(encoding="utf-8")


async def page(request: Request) -> Response:
    return HTMLResponse(page_html(), headers=PAGE_HEADERS)


def thumbnail_url(collection: str, condition: str, row_id: int) -> str:
    return f"/api/thumbnail/{quote(collection, safe='')}/{quote(condition, safe='')}/{row_id}"


@api
async def collections(request: Request) -> Response:
    service = service_of(request)
    settings = service.settings
    settings_used = service.searcher.description.settings
    # Row counts as of each index's latest commit (a sync since the server started).
    catalog = await in_thread(service.searcher.refresh_catalog)
    return JSONResponse(
        {
            "model": {
                key: asdict(settings_used).get(key)  # its own fields: None where it has none
                for key in ("model", "template", "layer", "source", "position_scheme")
            },
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
                "max_decode_bytes": service.budget.capacity,
                "timeout_s": settings.timeout_s,
                "max_k": settings.max_k,
            },
            "collections": [
                {
                    "name": collection.name,
                    "images": collection.images,
                    "conditions": [
                        {"name": c.name, "text": c.text, "rows": c.rows, "answers": c.answers}
                        for c in collection.conditions.values()
                    ],
                }
                for collection in catalog.values()
            ],
        }
    )


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise UsageError(f"{name} must be between {low} and {high}")
    return value


@api
async def images(request: Request) -> Response:
    service = service_of(request)
    name = request.path_params["collection"]
    offset = int_param(request, "offset", 0, 0, 1 << 62)
    limit = int_param(request, "limit", 60, 1, MAX_PAGE)
    condition, total, rows = await in_thread(
        service.images, name, request.query_params.get("condition"), offset, limit
    )
    return JSONResponse(
        {
            "collection": name,
            "condition": condition.name,
            "total": total,
            "offset": offset,
            "images": [
                {
                    "id": row_id,
                    "path": path,
                    "labels": labels,
                    "thumbnail": thumbnail_url(name, condition.name, row_id),
                }
                for row_id, path, labels in rows
            ],
        }
    )


async def image_bytes(request: Request) -> bytes:
    """The uploaded image: a multipart form's `image` file, or the raw request body (sent as
    an image/* or application/octet-stream); UnsupportedMediaType for any other body."""
    kind = media_type(request.headers.get("content-type", ""))
    if kind == MULTIPART:
        async with request.form(max_files=1, max_fields=16) as form:
            part = form.get("image")
            if not isinstance(part, UploadFile):
                raise UsageError("the form has no file field 'image'")
            data: bytes = await part.read()
            return data
    if not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise UnsupportedMediaType(
            "an upload is a multipart form with a file 'image', or the image's bytes sent as "
            f"image/* or application/octet-stream{sent_as(kind)}"
        )
    return await request.body()


def deadline_of(request: Request) -> float:
    return time.monotonic() + service_of(request).settings.timeout_s


@api
async def upload(request: Request) -> Response:
    deadline = deadline_of(request)
    data = await image_bytes(request)
    info = (await in_thread(service_of(request).add_upload, data, deadline)).info
    return JSONResponse(
        {"upload": info.upload, "width": info.width, "height": info.height, "bytes": info.bytes}
    )


async def json_body(request: Request) -> Any:
    """The request's JSON body, at most MAX_JSON_BYTES; UsageError if it is not JSON."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise TooLarge(f"a JSON body must be at most {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(body)
    except RecursionError:
        raise UsageError("the JSON body nests too deep") from None
    except ValueError:
        raise UsageError("the body must be JSON (or a multipart form with an image)") from None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_query(fields: Mapping[str, Any]) -> tuple[SearchRequest, str | None]:
    """A query and the upload it names, from JSON fields; UsageError naming what is wrong."""
    unknown = sorted(set(fields) - set(QUERY_FIELDS))
    if unknown:
        valid = ", ".join(QUERY_FIELDS)
        raise UsageError(f"unknown field {unknown[0]!r}; valid: {valid}")
    collection = fields.get("collection")
    if not isinstance(collection, str):
        raise UsageError("collection must be a string: the name of a served collection")
    conditions = fields.get("conditions")
    if conditions is None and "condition" in fields:
        conditions = [fields["condition"]]
    composed = "terms" in fields
    if conditions is None and composed:
        conditions = []  # the terms' conditions
    if not (
        isinstance(conditions, list)
        and (conditions or composed)
        and all(isinstance(c, str) for c in conditions)
    ):
        raise UsageError("conditions must be a non-empty list of condition names")
    if len(conditions) > MAX_CONDITIONS:
        raise UsageError(f"a query names at most {MAX_CONDITIONS} conditions")
    weights = fields.get("weights")
    if weights is not None and not (
        isinstance(weights, list)
        and all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights)
    ):
        raise UsageError("weights must be a list of numbers, one per condition")
    if weights is not None and not all(abs(w) <= sys.float_info.max for w in weights):
        # An integer too large for a float (JSON allows any); checked before any float().
        raise UsageError("weights must be positive finite numbers")
    k = fields.get("k", 10)
    if not is_int(k):
        raise UsageError("k must be an integer")
    upload = fields.get("upload")
    if upload is not None and not (
        isinstance(upload, str)
        and len(upload) == 64
        and all(c in "0123456789abcdef" for c in upload)
    ):
        raise UsageError("upload must be the 64-hex-digit id that /api/uploads returned")
    row_id = fields.get("id")
    if row_id is not None and not (is_int(row_id) and row_id >= 0):
        raise UsageError("id must be a non-negative integer")
    id_condition = fields.get("id_condition")
    if id_condition is not None and not isinstance(id_condition, str):
        raise UsageError("id_condition must be a condition name")
    words = fields.get("words") or {}
    if not (isinstance(words, dict) and all(isinstance(w, str) for w in words.values())):
        raise UsageError("words must be an object: condition name -> a word to ask about")
    unknown_words = sorted(set(words) - set(conditions)) if conditions else []
    if unknown_words:
        raise UsageError(f"words names {unknown_words[0]!r}, which is not among the conditions")
    where = fields.get("where") or []
    if not (isinstance(where, list) and all(isinstance(w, str) for w in where)):
        raise UsageError("where must be a list of filters: CONDITION=WORD or label:NAME=VALUE")
    by_image = any(c not in words for c in conditions)
    given = (upload is not None) + (row_id is not None)
    check_query_given(by_image, given, composed, SERVER_WORDING)
    request = SearchRequest(
        collection=collection,
        conditions=tuple(conditions),
        weights=None if weights is None else tuple(float(w) for w in weights),
        k=k,
        id=row_id,
        id_condition=id_condition,
        words=tuple(words.get(c) for c in conditions) if words and conditions else None,
        where=tuple(where),
        distinct=parse_distinct(fields.get("distinct")),
    )
    if composed and words and not conditions:
        raise UsageError("a query with terms and words names its conditions in conditions")
    return request, upload


async def form_query(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """A multipart query's fields, converted to the JSON form, and its image if it has one."""

    def number(text: str, kind: Callable[[str], Any], name: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"{name} must be a number, got {text!r}") from None

    async with request.form(max_files=1, max_fields=64) as form:
        fields: dict[str, Any] = {}
        data: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise UsageError(f"unexpected file field {key!r}; send the image as 'image'")
                data = await value.read()
            elif key in ("condition", "conditions"):
                fields.setdefault("conditions", []).append(value)
            elif key in ("weight", "weights"):
                fields.setdefault("weights", []).append(number(value, float, "weight"))
            elif key in ("k", "id"):
                fields[key] = number(value, int, key)
            elif key == "where":
                fields.setdefault("where", []).append(value)
            elif key == "word":  # CONDITION=WORD
                condition, _, word = value.rpartition("=")
                fields.setdefault("words", {})[condition] = word
            else:
                fields[key] = value
    return fields, data


@api
async def query(request: Request) -> Response:
    started = time.perf_counter()
    service = service_of(request)
    deadline = deadline_of(request)
    kind = media_type(request.headers.get("content-type", ""))
    if kind not in (JSON_TYPE, MULTIPART):
        raise UnsupportedMediaType(f"a query is sent as {JSON_TYPE} or {MULTIPART}{sent_as(kind)}")
    # The image of a one-shot query: held by this request, whatever the cache evicts.
    held: Upload | None = None
    if kind == MULTIPART:
        fields, data = await form_query(request)
        if data is not None:
            if "upload" in fields or "id" in fields:
                raise UsageError("send an image, an upload id or an id: one of them")
            held = await in_thread(service.add_upload, data, deadline)
            fields["upload"] = held.digest
    else:
        fields = await json_body(request)
        if not isinstance(fields, dict):
            raise UsageError("the body must be a JSON object")
    asked, upload_id = parse_query(fields)
    if "terms" in fields:
        pending = parse_terms(fields["terms"])
        terms = await in_thread(resolve_terms, service, asked.collection, pending, deadline)
        asked = replace(asked, terms=terms)
    outcome = await in_thread(service.query, asked, deadline, held or upload_id)
    return JSONResponse(outcome_json(outcome, upload_id, time.perf_counter() - started))


def outcome_json(outcome: SearchResult, upload: str | None, seconds: float) -> dict[str, Any]:
    """The API's answer: hits as `dior-search query --json` prints them, with thumbnails."""
    collection = outcome.collection.name
    names = [c.name for c in outcome.conditions]
    first = names[0]
    weights = iter(outcome.weights)
    asked = outcome.query
    query_json: dict[str, Any]
    if asked.id is None:
        query_json = {"upload": upload}
    else:
        query_json = {
            "id": asked.id,
            "condition": first,
            "path": asked.path,
            "labels": asked.labels,
            "thumbnail": thumbnail_url(collection, first, asked.id),
        }
    return {
        "collection": collection,
        "conditions": [
            {"name": name, "word": outcome.words[name]}
            if name in outcome.words
            else {"name": name, "weight": next(weights)}
            for name in names
        ],
        "where": [str(f) for f in outcome.filters],
        "query": query_json,
        "hits": [
            {**hit.to_json(), "thumbnail": thumbnail_url(collection, first, hit.id)}
            for hit in outcome.hits
        ],
        "terms": [term.to_json() for term in outcome.terms],
        "hidden": outcome.hidden,
        "took_ms": round(1000 * seconds, 1),
    }


@api
async def facets(request: Request) -> Response:
    service = service_of(request)
    condition = request.query_params.get("condition")
    if condition is None:
        raise UsageError("give ?condition=NAME: the condition whose answers to count")
    top = int_param(request, "top", 20, 1, MAX_FACETS)
    where = tuple(request.query_params.getlist("where"))
    counted = await in_thread(
        service.searcher.facets,
        request.path_params["collection"],
        condition,
        where,
        top,
        deadline_of(request),
    )
    return JSONResponse({**counted.to_json(), "where": list(where)})


@api
async def groups(request: Request) -> Response:
    """A condition's images in named groups (search.groups), members with thumbnails."""
    service = service_of(request)
    collection = request.path_params["collection"]
    condition = request.query_params.get("condition")
    if condition is None:
        raise UsageError("give ?condition=NAME: the condition to group the images under")
    k = request.query_params.get("k")
    chosen = None if k is None else int_param(request, "k", 0, 1, MAX_GROUPS)
    members = int_param(request, "members", 12, 0, MAX_PAGE)
    found = await in_thread(group_images, service.searcher, collection, condition, chosen)
    body = found.to_json(members)
    for group in body["groups"]:
        for member in group["members"]:
            member["thumbnail"] = thumbnail_url(found.collection, found.condition, member["id"])
    return JSONResponse(body)


@api
async def thumbnail(request: Request) -> Response:
    params = request.path_params
    data = await in_thread(
        service_of(request).thumbnail,
        params["collection"],
        params["condition"],
        params["id"],
        deadline_of(request),
    )
    return Response(data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error_response(status, detail.lower() if status in (404, 405) else detail)


async def internal_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal error")


def create_app(service: SearchService, access: AccessPolicy | None = None) -> Starlette:
    """The ASGI app: the page at `/` and the JSON API under `/api/`, answering the hosts and
    origins `access` allows (by default: this machine's loopback names only)."""
    routes = [
        Route("/", page),
        Route("/api/collections", collections),
        Route("/api/collections/{collection}/images", images),
        Route("/api/collections/{collection}/facets", facets),
        Route("/api/collections/{collection}/groups", groups),
        Route("/api/uploads", upload, methods=["POST"]),
        Route("/api/query", query, methods=["POST"]),
        # A condition name is free text and may hold a slash; the id always ends the path.
        Route("/api/thumbnail/{collection}/{condition:path}/{id:int}", thumbnail),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(BodyLimitGuard, max_body=service.settings.max_upload_bytes + FORM_OVERHEAD),
            Middleware(AccessGuard, policy=access or AccessPolicy()),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.service = service
    return app


class Server(uvicorn.Server):
    """uvicorn's server, which after a graceful stop on SIGTERM does not raise the signal
    again (uvicorn does, to end the process as the signal would: here that is the exit
    status 0 of a clean stop); Ctrl+C is raised again and ends the CLI as an interrupt."""

    terminated = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM:
            self.terminated = True
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def make_server(
    service: SearchService,
    host: str,
    port: int,
    log_level: str = "warning",
    access: AccessPolicy | None = None,
) -> Server:
    """A uvicorn server for the app; `.run()` serves until interrupted or terminated
    (SIGTERM: the requests in flight are answered first, within the request time limit)."""
    config = uvicorn.Config(
        create_app(service, access or AccessPolicy.of(host)),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        # Connections that send no complete request line and headers in time are closed
        # (serve/protocol.py); idle keep-alive ones after KEEP_ALIVE_S.
        http=TimedH11Protocol,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        server_header=False,
        timeout_graceful_shutdown=int(service.settings.timeout_s) + 1,
    )
    return Server(config)
