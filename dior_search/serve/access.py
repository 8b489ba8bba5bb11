"""Who may use the server: requests for this machine's own names, from its own pages.

A server on 127.0.0.1 is still reachable from any web page the user visits: the page can
send "simple" cross-site requests (a form post, `text/plain` JSON) and, by DNS rebinding
(a name of the attacker's that resolves to 127.0.0.1 a moment later), even read the answers.
So every request is checked here before any route sees it:

- its `Host` must name this server: `localhost`, a loopback address (127.0.0.0/8, ::1), the
  host it is bound to (any IP address when bound to all of them: an address cannot be
  rebound), or a name given with `serve --allow-host`. Ports are not compared: a name is what
  rebinding forges, and proxies and containers remap ports. Otherwise 403;
- an `Origin`, where a browser sends one, must be the request's own (its host and port are
  the `Host` header's) or one given with `serve --allow-origin`. Otherwise 403;
- its request line and headers together are at most MAX_HEADER_BYTES, else 431 (uvicorn's
  limit holds only for headers that arrive in pieces); its body at most the upload limit and
  the form's framing, else 413 (`BodyLimitGuard`, which also marks every answer's type as final).

The POST routes accept only their real media types (`media_type`), so a cross-site page can
send nothing to them that a browser would not first ask permission for (CORS preflight),
which this server never grants.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dior_search.errors import DiorError, UsageError
from dior_search.serve.protocol import MAX_HEADER_BYTES
from dior_search.serve.service import TooLarge

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class UnsupportedMediaType(DiorError):
    """A POST body of a media type its route does not take (HTTP 415)."""

    exit_code = 2
    http_status = 415


def host_name(netloc: str) -> str:
    """The host of `host[:port]` or `[v6]:port`, lower case, brackets and final dot removed."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1:].partition("]")[0]
    if netloc.count(":") == 1:
        netloc = netloc.partition(":")[0]
    return netloc.rstrip(".")


def ip_of(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def normal_origin(origin: str) -> str:
    """`scheme://host[:port]` in lower case; UsageError if `origin` is not one."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise UsageError(
            f"--allow-origin {origin!r}: write SCHEME://HOST[:PORT], e.g. https://x.org"
        )
    return f"{parts.scheme}://{parts.netloc}"


def quoted_cut(text: str) -> str:
    """`text` as a Python literal (quoted, escapes visible) cut to 100 characters: a client's
    header value in an error line. (`data.paths.shown` escapes a file name; this quotes.)"""
    return repr(text if len(text) <= 100 else text[:97] + "...")


def sent_as(kind: str) -> str:
    """The end of a 415 message: what the request sent instead."""
    return f", not {quoted_cut(kind)}" if kind else "; the request gives no Content-Type"


def media_type(content_type: str) -> str:
    """A Content-Type's media type without parameters, in lower case (they are
    case-insensitive: `Multipart/Form-Data` is multipart)."""
    return content_type.partition(";")[0].strip().lower()


@dataclass(frozen=True)
class AccessPolicy:
    """The host names and origins the server answers (see the module's docstring)."""

    bound_host: str = "127.0.0.1"
    # `--allow-host` names (lower case, without port), `--allow-origin` origins (normalised).
    hosts: frozenset[str] = field(default_factory=frozenset)
    origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls, bound_host: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()
    ) -> AccessPolicy:
        names = set()
        for given in hosts:
            name = host_name(given)
            if not name or "/" in name:
                raise UsageError(f"--allow-host {given!r}: give a host name, e.g. photos.lan")
            names.add(name)
        return cls(host_name(bound_host), frozenset(names), frozenset(map(normal_origin, origins)))

    def host_allowed(self, name: str) -> bool:
        if name in ("localhost", self.bound_host) or name in self.hosts:
            return True
        address = ip_of(name)
        if address is None:
            return False
        return address.is_loopback or self.bound_host in WILDCARD_HOSTS

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """Why a request with these headers is refused (None: it is not)."""
        if not host:
            return "a request must name this server in its Host header"
        if not self.host_allowed(host_name(host)):
            return (
                f"host {quoted_cut(host)} is not this server's "
                "(serve --allow-host NAME to answer it)"
            )
        if origin is None:
            return None
        parts = urlsplit(origin.strip().lower())
        same = parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()
        if same or f"{parts.scheme}://{parts.netloc}" in self.origins:
            return None
        return (
            f"requests from origin {quoted_cut(origin)} are refused "
            "(serve --allow-origin ORIGIN to answer them)"
        )


def header_bytes(scope: Scope) -> int:
    """The size of the request line's target and the headers, as sent (about)."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


class AccessGuard:
    """ASGI middleware: 431 for oversized headers, 403 for a foreign Host or Origin."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, message = 0, None
        if header_bytes(scope) > MAX_HEADER_BYTES:
            status = 431
            message = f"request line and headers over the limit of {MAX_HEADER_BYTES} bytes"
        else:
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            origins = [v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"]
            if len(hosts) > 1 or len(origins) > 1:
                message = "a request must have one Host header and at most one Origin"
            else:
                message = self.policy.refusal(next(iter(hosts), None), next(iter(origins), None))
            status = 403
        if message is None:
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": message}, status_code=status)
        await response(scope, receive, send)


class BodyLimitGuard:
    """ASGI middleware: caps request bodies and marks every response's content type as final."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            response = JSONResponse(
                {"error": f"request body over the limit of {self.max_body} bytes"}, status_code=413
            )
            await response(scope, receive, send_guarded)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise TooLarge(f"request body over the limit of {self.max_body} bytes")
            return message

        await self.app(scope, receive_limited, send_guarded)
