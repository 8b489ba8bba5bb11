"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for every request's line and headers.

uvicorn times out only idle keep-alive connections, and only after a first response: a client
that connects and sends nothing, or trickles its headers a byte at a time, holds a socket (and
its buffers) forever, and the app never sees it, so no ASGI middleware can help. Here every
connection gets HEADER_TIMEOUT_S from when it opens (or from the end of its previous response)
to finish its request line and headers, else it is closed. A request's body is read by the
app inside the request's own time limit (`serve --timeout`), which covers a slow body; a
connection answered before its body was all sent is closed after the same delay.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
# Request line and headers together (h11's own default); more is answered 400.
MAX_HEADER_BYTES = 16 * 1024


class TimedH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose request headers do not arrive in time."""

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        # Past IDLE, h11 has the whole request line and headers: the app takes over.
        if self.conn.their_state is not h11.IDLE:
            self._stop_header_timer()

    def on_response_complete(self) -> None:
        # The clock for the next request on this connection starts now; a pipelined request
        # that is already complete stops it at once (handle_events).
        self._start_header_timer()
        super().on_response_complete()

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # IDLE: no complete request; SEND_BODY: answered (504, 413) before its body came.
        if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self.transport.close()
