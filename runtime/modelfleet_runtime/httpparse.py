"""A small, strict HTTP/1.1 request parser (no I/O): Content-Length and chunked bodies,
keep-alive, pipelining, ``Expect: 100-continue``, size limits.

Strictness is deliberate: ambiguous framing (both Content-Length and Transfer-Encoding,
conflicting lengths, whitespace before a header colon, obsolete line folding) is refused
because that is what request smuggling is made of.
"""

from __future__ import annotations

import dataclasses
import re

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(6)


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


class RequestParser:
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
        self._buf = bytearray()
        self._pos = 0
        self._state = _HEAD
        self._current: Request | None = None
        self._remaining = 0
        # Set when the request being read asked for "100 Continue" and its body is not in yet.
        self.expects_continue = False

    @property
    def idle(self) -> bool:
        """No partial request buffered (safe to close a keep-alive connection)."""
        return self._state == _HEAD and self._pos >= len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]  # compact occasionally, not on every request
            self._pos = 0
        self._buf += data

    def next(self) -> Request | None:
        """The next complete request, or None until more data arrives. Raises HttpError."""
        while True:
            state = self._state
            if state == _HEAD:
                if not self._read_head():
                    return None
            elif state == _BODY:
                req = self._current
                assert req is not None
                end = self._pos + self._remaining
                if end > len(self._buf):
                    return None
                req.body = self._buf[self._pos : end]
                self._pos = end
                return self._finish()
            elif state == _CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return None
                size_text = line.split(b";", 1)[0].strip()
                if not _HEX.match(size_text):
                    raise HttpError(400, "invalid chunk size")
                size = int(size_text, 16)
                req = self._current
                assert req is not None
                if len(req.body) + size > self.max_body_bytes:
                    raise HttpError(413, f"request body exceeds {self.max_body_bytes} bytes")
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                end = self._pos + self._remaining
                if end > len(self._buf):
                    return None
                req = self._current
                assert req is not None
                req.body += self._buf[self._pos : end]
                self._pos = end
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                line = self._line()
                if line is None:
                    return None
                if line:
                    raise HttpError(400, "chunk data not followed by CRLF")
                self._state = _CHUNK_SIZE
            else:  # _TRAILER: ignore trailer fields up to the empty line
                line = self._line()
                if line is None:
                    return None
                if not line:
                    return self._finish()

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > 4096:
                raise HttpError(400, "line too long in chunked body")
            return None
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def _finish(self) -> Request:
        req = self._current
        assert req is not None
        self._current = None
        self._state = _HEAD
        self.expects_continue = False
        return req

    def _read_head(self) -> bool:
        buf = self._buf
        # RFC 9112 2.2: ignore empty lines before a request line.
        while buf.startswith(b"\r\n", self._pos):
            self._pos += 2
        end = buf.find(b"\r\n\r\n", self._pos)
        if end < 0:
            if len(buf) - self._pos > self.max_header_bytes:
                raise HttpError(431, "request header section too large")
            return False
        if end - self._pos > self.max_header_bytes:
            raise HttpError(431, "request header section too large")
        lines = bytes(buf[self._pos : end]).split(b"\r\n")
        self._pos = end + 4
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HttpError(505 if version.startswith(b"HTTP/") else 400, "unsupported version")
        if len(lines) - 1 > self.max_headers:
            raise HttpError(431, "too many header fields")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise HttpError(400, "malformed header field")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if "\r" in text or "\n" in text or "\0" in text:
                raise HttpError(400, "invalid character in header value")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            target_text = target.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "non-ASCII request target") from None
        conn = headers.get("connection", "").lower()
        keep_alive = "close" not in conn if version == b"HTTP/1.1" else "keep-alive" in conn
        req = Request(method.decode("ascii"), target_text, version.decode(), headers,
                      bytearray(), keep_alive)  # fmt: skip
        self._current = req
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if cl is not None:
                raise HttpError(400, "both Content-Length and Transfer-Encoding given")
            if te.lower() != "chunked":
                raise HttpError(501, f"unsupported Transfer-Encoding {te!r}")
            if version == b"HTTP/1.0":
                raise HttpError(400, "chunked encoding in an HTTP/1.0 request")
            self._state = _CHUNK_SIZE
        elif cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1:
                raise HttpError(400, "conflicting Content-Length values")
            text_len = values.pop()
            if not text_len.isdigit() or len(text_len) > 18:
                raise HttpError(400, "invalid Content-Length")
            length = int(text_len)
            if length > self.max_body_bytes:
                raise HttpError(413, f"request body exceeds {self.max_body_bytes} bytes")
            self._remaining = length
            self._state = _BODY
        else:
            self._state = _BODY
            self._remaining = 0
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, f"unsupported Expect {expect!r}")
            self.expects_continue = version == b"HTTP/1.1"
        return True
