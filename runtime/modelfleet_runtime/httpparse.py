"""HTTP/1.1 request parsing (no I/O): llhttp frames the bytes, this module adds what a
server must check that llhttp leaves to its caller, and a pull interface.

llhttp (through httptools, the parser uvicorn and Node.js use) does the framing: request
line, header syntax, Content-Length and chunked bodies, and it refuses what request
smuggling is made of (Content-Length with Transfer-Encoding, duplicate or non-digit lengths,
obsolete line folding, bare CR/LF, control characters in the target and in header values).
On top of that, the RFC 9112 rules llhttp does not apply: exactly one ``Host`` in HTTP/1.1,
HTTP/1.0 and 1.1 only, ``chunked`` as the only transfer coding, ``Expect: 100-continue`` as the
only expectation; and size limits.

The interface is pull: ``feed()`` stores bytes, ``next()`` parses only as far as the next
complete request. A connection that stops asking (its client pipelines faster than it
reads) stops the parsing too, not just the reading: input is handed to llhttp in slices of at
most ``_SLICE`` bytes (a body of known length in one piece), so at most one slice's requests
are parsed ahead of what the server asked for. The rest of a big Content-Length body (from
16 KiB) is copied into the request without llhttp, once instead of twice.
"""

from __future__ import annotations

import collections
import dataclasses

import httptools

_SLICE = 4096
# a Content-Length body with at least this much still to come is taken without llhttp
_DIRECT_BODY = 16 * 1024


class HttpError(Exception):
    """A request the server cannot read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytearray
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


def _llhttp_error(exc: httptools.HttpParserError) -> HttpError:
    """The status and message for a request llhttp refused."""
    context = exc.__context__
    if isinstance(context, HttpError):  # raised by one of our callbacks
        return context
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        return HttpError(400, "malformed request: invalid or unsupported request method")
    if reason in ("Invalid HTTP version", "Expected dot"):
        return HttpError(505, "HTTP version not supported: use HTTP/1.1 or HTTP/1.0")
    if reason == "Pause on PRI/Upgrade":
        return HttpError(505, "HTTP/2 is not supported here: use HTTP/1.1")
    if "Content-Length" in reason:
        return HttpError(400, f"invalid Content-Length: {reason}")
    return HttpError(400, f"malformed request: {reason}")


class RequestParser:
    """Turns a connection's byte stream into ``Request``s; raises ``HttpError``."""

    def __init__(
        self,
        *,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        max_headers: int = 100,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._llhttp = httptools.HttpRequestParser(self)
        self._data = memoryview(b"")
        self._pos = 0
        self._ready: collections.deque[Request] = collections.deque()
        self._error: HttpError | None = None
        # The message being read: begun (a request line started), head done, body so far.
        self._begun = False
        self._head_done = False
        # Bytes fed since the last request ended (less what followed it in the same slice):
        # bounds a head still arriving, which llhttp's callbacks show only field by field.
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._count = 0
        self._exact = 0  # bytes of the target and the complete header fields
        # Bytes of a chunked body fed since the last data: chunk headers and trailers, which
        # llhttp would otherwise buffer without bound.
        self._framing_bytes = 0
        self._body = bytearray()
        self._body_left = -1  # bytes of a Content-Length body still to come; -1 otherwise
        self._direct = False  # the body is taken without llhttp (see _take_body)
        self._current: Request | None = None
        # Set while the request being read asked for "100 Continue" and its body is not in
        # yet; the connection clears it once it has sent the go-ahead.
        self.expects_continue = False

    @property
    def idle(self) -> bool:
        """No partial request buffered (safe to close a keep-alive connection)."""
        return not self._begun and not self._ready and self._pos >= len(self._data)

    def feed(self, data: bytes) -> None:
        if self._pos < len(self._data):
            self._data = memoryview(bytes(self._data[self._pos :]) + data)
        else:
            self._data = memoryview(data)
        self._pos = 0

    def next(self) -> Request | None:
        """The next complete request, or None until more data arrives. Raises HttpError."""
        ready = self._ready
        while not ready:
            if self._error is not None:
                raise self._error
            data = self._data
            start = self._pos
            if start >= len(data):
                self._data = memoryview(b"")  # drop the consumed bytes (see on_message_complete)
                self._pos = 0
                return None
            if self._direct:
                self._take_body(data, start)
                continue
            size = _SLICE if self._body_left < 0 else self._body_left + _SLICE
            piece = data[start : start + size]
            self._pos = start + len(piece)
            if not self._head_done:
                self._head_bytes += len(piece)
            elif self._body_left < 0:
                self._framing_bytes += len(piece)
            try:
                self._llhttp.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                self._upgrade(start + int(exc.args[0]))
            except httptools.HttpParserError as exc:
                self._error = _llhttp_error(exc)
            if not self._head_done and self._head_bytes > self.max_header_bytes:
                self._error = self._error or HttpError(431, "request header section too large")
            if self._framing_bytes > self.max_header_bytes:
                self._error = self._error or HttpError(
                    431, "chunk header or trailer section too large"
                )
        return ready.popleft()

    def _take_body(self, data: memoryview, start: int) -> None:
        """The rest of a big Content-Length body, copied from the input straight into the
        body (once: through llhttp every byte was copied into a bytes object for on_body,
        then into the body). llhttp framed the message (the length is its, checked), so the
        body ends exactly ``_body_left`` bytes on; past it a fresh llhttp parses the next
        request, the one left waiting for these bytes is dropped."""
        piece = data[start : start + self._body_left]
        self._pos = start + len(piece)
        self._body += piece
        self._body_left -= len(piece)
        if self._body_left <= 0:
            self._llhttp = httptools.HttpRequestParser(self)
            self.on_message_complete()

    def close(self) -> None:
        """Drop what is buffered (the connection is gone): the parser waits for the cyclic
        GC (see on_message_complete), a half-received body must not wait with it."""
        self._data = memoryview(b"")
        self._pos = 0
        self._body = bytearray()
        self._current = None
        self._ready.clear()

    def _upgrade(self, resume_at: int) -> None:
        """llhttp stops after a request asking to switch protocols. We never switch: the
        answer is an ordinary HTTP/1.1 one and the connection goes on being HTTP/1.1."""
        self._pos = resume_at

    # -- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._begun = True
        self._url = []
        self._headers = {}
        self._count = 0
        self._exact = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._exact += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > self.max_headers:
            raise HttpError(431, f"more than {self.max_headers} header fields")
        self._exact += len(name) + len(value) + 4  # exact: callbacks see whole fields
        if self._exact > self.max_header_bytes:
            raise HttpError(431, "request header section too large")
        if self._head_done:
            return  # a trailer field of a chunked body: counted above, never a header
        # llhttp has refused control characters (all but HTAB, RFC 9110 5.5) and stripped
        # the whitespace before the value; the whitespace after it is ours to drop.
        value = value.rstrip(b" \t")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if key in headers:
            if key == "host":
                raise HttpError(400, "more than one Host header")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        self._head_done = True
        llhttp = self._llhttp
        version = llhttp.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HttpError(505, "HTTP version not supported: use HTTP/1.1 or HTTP/1.0")
        method = llhttp.get_method().decode("ascii")
        if method == "CONNECT":
            raise HttpError(501, "CONNECT is not supported")
        headers = self._headers
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        self._body_left = -1
        if te is not None:
            if version == "1.0":
                raise HttpError(400, "chunked encoding in an HTTP/1.0 request")
            if te.strip(" \t").lower() != "chunked":
                raise HttpError(501, f"unsupported Transfer-Encoding {te!r}: only chunked")
        elif cl is not None:  # llhttp has checked: one value, ASCII digits only
            length = int(cl)
            if length > self.max_body_bytes:
                raise HttpError(413, f"request body exceeds {self.max_body_bytes} bytes")
            self._body_left = length
            # llhttp goes on into the body in the slice that ends the head (at most _SLICE
            # bytes), so at least the rest of a body this big is still to come
            self._direct = length >= _DIRECT_BODY
        if "host" not in headers and version == "1.1":
            raise HttpError(400, "missing Host header (required in HTTP/1.1)")
        if llhttp.should_upgrade() and (te is not None or self._body_left > 0):
            # llhttp would leave such a body unread: refuse rather than misframe it.
            raise HttpError(400, "a protocol upgrade request cannot carry a body here")
        expect = headers.get("expect")
        if expect is not None:
            if expect.strip(" \t").lower() != "100-continue":
                raise HttpError(417, f"unsupported Expect {expect!r}")
            self.expects_continue = version == "1.1" and (te is not None or self._body_left > 0)
        tokens = {t.strip(" \t").lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "close" not in tokens if version == "1.1" else "keep-alive" in tokens
        try:
            target = b"".join(self._url).decode("ascii")
        except UnicodeDecodeError:  # llhttp refuses these already; kept as a guard
            raise HttpError(400, "non-ASCII request target") from None
        self._body = bytearray()
        self._current = Request(method, target, f"HTTP/{version}", headers, self._body,
                                keep_alive)  # fmt: skip

    def on_chunk_header(self) -> None:
        self._framing_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._framing_bytes = 0
        self._body += body
        if self._body_left >= 0:
            self._body_left -= len(body)
        elif len(self._body) > self.max_body_bytes:
            raise HttpError(413, f"request body exceeds {self.max_body_bytes} bytes")

    def on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        self._current = None
        # The parser is in a reference cycle with llhttp (which calls back into it), so a
        # closed connection's parser waits for the cyclic GC, which runs on object counts,
        # not bytes: a body it still pointed at stayed resident with it. Measured (24
        # clients x 3 requests of 4 MiB a round, each on its own connection): RSS 569 ->
        # 853 -> 1093 -> 1287 MiB over rounds before, flat after the first round now.
        self._body = bytearray()
        self._begun = False
        self._head_done = False
        self._body_left = -1
        self._direct = False
        self._head_bytes = 0
        self._framing_bytes = 0
        self.expects_continue = False
        self._ready.append(req)
