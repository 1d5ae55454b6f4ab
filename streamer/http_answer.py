"""One HTTP/1.1 answer to a POST, framed as RFC 9112 says, read from a peer not trusted.

The direct way to incident.io (`http_connection`) writes its request itself and reads the
answer here: a status line, headers, and a body framed by Content-Length, chunked, or the
connection's end. It does what h11 does for a client that only ever POSTs and never
upgrades, for a fraction of the CPU: in 8 worker threads on the bench machine
(2026-12-08), a POST through h11 cost 0.24-0.26 ms, through this reader 0.11.

Invariants (tests/test_http_answer.py, and the hostile peers of tests/test_incident_io.py):

- Every byte comes from `read` (a `DeadlineStream`'s): each loop either consumes buffered
  bytes or reads, so the request's deadline bounds the whole.
- At most `MAX_HEAD` bytes of a head (each 1xx's, the answer's, the trailers) are
  buffered; at most `cap` bytes of a body are kept, and reading stops there.
- An answer is `reusable` only when it was framed (Content-Length, chunked, or no body by
  its status), read to its end with nothing after it, on HTTP/1.1 without
  `Connection: close`: a connection is never reused in the middle of an answer.
- What is not HTTP/1.1 as RFC 9112 frames it raises `httpcore.RemoteProtocolError`, whose
  message quotes none of the peer's bytes (they may be anything, and end in logs).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import httpcore

MAX_HEAD = 100 * 1024  # the longest head buffered (httpcore's limit for h11)
_HEAD_END = re.compile(rb"\r?\n\r?\n")  # bare LF tolerated, as h11 does
_LINE_END = re.compile(rb"\r?\n")
_CRLF = re.compile(rb"\r\n")  # chunked framing: CRLF only, as h11
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # a token
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # no control character but HTAB
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?")


@dataclass(frozen=True)
class ReadAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # at most `cap` bytes
    reusable: bool  # the connection is at the start of a new answer


class _Buffer:
    """Bytes received and not yet parsed; `read` gives more (b"" at the peer's end)."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read
        self.data = bytearray()

    def more(self) -> bool:
        """Whether the peer sent more (False: it closed its side)."""
        data = self._read()
        self.data += data
        return bool(data)

    def more_or_fail(self) -> None:
        if not self.more():
            raise httpcore.RemoteProtocolError("the server closed the connection mid-answer")

    def through(self, end: re.Pattern[bytes], limit: int) -> bytes:
        """The bytes before `end`'s first match, consumed with it; at most `limit` of them."""
        start = 0
        while True:
            found = end.search(self.data, start)
            if found is not None:
                if found.start() > limit:
                    break
                taken = bytes(self.data[: found.start()])
                del self.data[: found.end()]
                return taken
            if len(self.data) > limit + 3:  # not even the start of `end` within the limit
                break
            start = max(0, len(self.data) - 3)  # a match may straddle the next read
            self.more_or_fail()
        raise httpcore.RemoteProtocolError(f"a head or a line longer than {limit} bytes")

    def take(self, size: int) -> bytes:
        while len(self.data) < size:
            self.more_or_fail()
        taken = bytes(self.data[:size])
        del self.data[:size]
        return taken


def read_answer(read: Callable[[], bytes], cap: int) -> ReadAnswer:
    """The answer `read` yields: skips interim 1xx answers, keeps `cap` bytes of the body."""
    buffer = _Buffer(read)
    while True:
        minor, status, headers = _head(buffer.through(_HEAD_END, MAX_HEAD))
        if status >= 200:
            break
        if status == 101:
            raise httpcore.RemoteProtocolError("101 Switching Protocols, though none was asked")
    length, chunked, keep = _framing(minor, status, headers)
    if chunked:
        body, ended = _chunked(buffer, cap)
    elif length is not None:
        body = buffer.take(min(length, cap))
        ended = length <= cap
    else:  # to the connection's end
        body, ended = _to_the_end(buffer, cap), False
    reusable = keep and ended and not buffer.data
    return ReadAnswer(status, headers, body, reusable)


def _head(head: bytes) -> tuple[int, int, list[tuple[bytes, bytes]]]:
    lines = _LINE_END.split(head)
    status = _STATUS.fullmatch(lines[0])
    if status is None or status[2] < b"100":
        raise httpcore.RemoteProtocolError("the answer does not start with an HTTP/1.x status")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:  # obs-fold: a space, RFC 9112 5.2
            name, value = headers.pop()
            value = (value + b" " + line.strip(b" \t")).strip(b" \t")
        else:
            name, colon, value = line.partition(b":")
            if not colon or _NAME.fullmatch(name) is None:
                raise httpcore.RemoteProtocolError("a header line that is not one")
            value = value.strip(b" \t")
        if _VALUE.fullmatch(value) is None:
            raise httpcore.RemoteProtocolError("a header value with a control character")
        headers.append((name, value))
    return int(status[1]), int(status[2]), headers


def _framing(
    minor: int, status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, keep-alive); neither length nor chunked: to the end."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    keep = minor == 1
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.update(part.strip(b" \t") for part in value.split(b","))
        elif lowered == b"transfer-encoding":
            codings.append(value.strip(b" \t").lower())
        elif lowered == b"connection" and b"close" in _tokens(value):
            keep = False
    length = None
    if lengths:
        if len(lengths) != 1 or not (number := lengths.pop()).isdigit():
            raise httpcore.RemoteProtocolError("a Content-Length that is not one number")
        length = int(number)
    if status in (204, 304):
        return 0, False, keep
    if codings:
        if codings != [b"chunked"]:
            raise httpcore.RemoteProtocolError("a transfer coding other than chunked")
        return None, True, keep and length is None  # both: RFC 9112 6.3, close after
    if length is not None:
        return length, False, keep
    return None, False, False


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def _chunked(buffer: _Buffer, cap: int) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        size_line = _CHUNK_SIZE.fullmatch(buffer.through(_CRLF, 1024))
        if size_line is None:
            raise httpcore.RemoteProtocolError("a chunk size that is not one")
        size = int(size_line[1], 16)
        if size == 0:
            break
        room = cap - len(body)
        body += buffer.take(min(size, room))
        if size > room:
            return bytes(body), False
        if buffer.through(_CRLF, 0):
            raise httpcore.RemoteProtocolError("a chunk longer than its size")
    trailers = 0
    while line := buffer.through(_CRLF, MAX_HEAD - trailers):  # checked, not kept
        name, colon, value = line.partition(b":")
        if not colon or _NAME.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            raise httpcore.RemoteProtocolError("a trailer line that is not one")
        trailers += len(line)
    return bytes(body), True


def _to_the_end(buffer: _Buffer, cap: int) -> bytes:
    while len(buffer.data) < cap and buffer.more():
        pass
    return bytes(buffer.data[:cap])
