"""Faults the double injects: what a failing, slow or hostile incident.io does to an answer.

Invariant: a fault either *shapes* how an answer goes out and the event is still
processed (latency, trickle: a slow server; the client may give up, incident.io did
not), or *replaces* the answer and the event is neither recorded nor counted against a
rate limit (status, reset, redirect, huge_body, hang: a failing server). Every matching
shaping fault applies; of the replacing ones only the first added applies, so
`fail(503, count=2)` then `fail(422, count=1)` answers 503, 503, then 422. A fault lasts
for a count of requests and/or until a time.

Mechanism: `take` picks and counts down the faults of one request, `effects` turns them
into a replacement reply and an `Effects` (delay, reset, hang, padding, trickle), and
`write_answer` / `hold_until_hung_up` put that on the socket; the fake never holds a
padded body in memory and stops writing when the client hangs up or the fake stops.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Literal, get_args

from streamer.alert_event import FieldError
from streamer.testing.fake_incident_io.contract import ERROR_TYPES, Reply, error

FaultKind = Literal["status", "latency", "reset", "redirect", "huge_body", "trickle", "hang"]
SHAPING = ("latency", "trickle")
_CHUNK = 64 * 1024


@dataclass
class Fault:
    """A fault applied to matching requests while it lasts (count and/or until a time).

    status: the answer's status (status, redirect, huge_body); seconds: added latency, or
    how long a hang lasts at most (0: until the client hangs up); location: a redirect's
    Location; size: a huge body's length in bytes; bytes_per_second and part: a trickled
    answer, the whole of it or only its body (after prompt headers).
    """

    kind: FaultKind
    status: int = 503
    seconds: float = 0.0
    source_id: str | None = None
    remaining: int | None = None
    until: float | None = None
    location: str = ""
    size: int = 0
    bytes_per_second: float = 0.0
    part: Literal["answer", "body"] = "answer"

    def __post_init__(self) -> None:
        if self.kind not in get_args(FaultKind):
            raise ValueError(f"kind {self.kind!r}: one of {', '.join(get_args(FaultKind))}")
        if self.kind == "redirect" and not (300 <= self.status < 400 and self.location):
            raise ValueError("a redirect needs a 3xx status (say 308) and a location")
        if self.kind == "huge_body" and self.size <= 0:
            raise ValueError("a huge body needs a size in bytes")
        if self.kind == "trickle" and not (self.bytes_per_second > 0):
            raise ValueError("a trickle needs bytes_per_second > 0")
        if self.part not in ("answer", "body"):
            raise ValueError("part: answer or body")

    def matches(self, source_id: str, now: float) -> bool:
        if self.source_id is not None and self.source_id != source_id:
            return False
        if self.until is not None and now >= self.until:
            return False
        return self.remaining is None or self.remaining > 0


@dataclass
class Effects:
    """How an answer goes on the wire."""

    delay: float = 0.0
    reset: bool = False
    hang: bool = False
    hang_seconds: float = 0.0  # 0: until the client hangs up (or the fake stops)
    size: int = 0  # pad the JSON body to this many bytes
    bytes_per_second: float = 0.0  # 0: at once
    trickle_headers: bool = False


def take(faults: list[Fault], source_id: str, now: float) -> list[Fault]:
    """The faults that apply to this request; each one applied counts down once."""
    taken = []
    replacing_taken = False
    for fault in faults:
        if not fault.matches(source_id, now):
            continue
        if fault.kind not in SHAPING:
            if replacing_taken:
                continue
            replacing_taken = True
        if fault.remaining is not None:
            fault.remaining -= 1
        taken.append(fault)
    return taken


def status_reply(status: int, request_id: str) -> Reply:
    """What incident.io's answer with that status looks like (a 5xx by default)."""
    type_ = ERROR_TYPES.get(status, "internal_server_error")
    code = "internal_error" if type_ == "internal_server_error" else type_
    return error(
        status, type_, request_id, [FieldError(code=code, message=f"Injected fault: HTTP {status}")]
    )


def effects(taken: list[Fault], request_id: str) -> tuple[Reply | None, Effects]:
    """The reply that replaces the contract's (None: the contract answers), and its Effects."""
    shape = Effects(delay=sum(f.seconds for f in taken if f.kind == "latency"))
    for fault in taken:
        if fault.kind == "trickle":
            shape.bytes_per_second = fault.bytes_per_second
            shape.trickle_headers = fault.part == "answer"
    replacing = next((f for f in taken if f.kind not in SHAPING), None)
    if replacing is None:
        return None, shape
    if replacing.kind == "reset":
        shape.reset = True
        return Reply(0, {}), shape
    if replacing.kind == "hang":
        shape.hang, shape.hang_seconds = True, replacing.seconds
        return Reply(0, {}), shape
    reply = status_reply(replacing.status, request_id)
    if replacing.kind == "redirect":
        reply.headers["Location"] = replacing.location
    elif replacing.kind == "huge_body":
        shape.size = replacing.size
    return reply, shape


def head(reply: Reply, content_length: int) -> bytes:
    """Status line and headers, as http.server writes them."""
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = ""
    lines = [
        f"HTTP/1.1 {reply.status} {phrase}",
        f"Date: {formatdate(usegmt=True)}",
        "Content-Type: application/json",
        f"Content-Length: {content_length}",
        *(f"{name}: {value}" for name, value in reply.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def body_chunks(reply: Reply, size: int) -> tuple[int, Iterator[bytes]]:
    """The JSON body, padded (still valid JSON) to `size` bytes: its length and its chunks."""
    payload = json.dumps(reply.body).encode()
    if size <= len(payload) + 16:
        return len(payload), iter([payload])
    start = payload[:-1] + b', "padding": "'
    padding = size - len(start) - 2

    def chunks() -> Iterator[bytes]:
        yield start
        left = padding
        while left > 0:
            yield b" " * min(_CHUNK, left)
            left -= _CHUNK
        yield b'"}'

    return size, chunks()


def write_answer(
    out: io.BufferedIOBase, reply: Reply, shape: Effects, stopping: threading.Event
) -> None:
    """Writes the answer at once, or trickled; raises OSError when the client hangs up."""
    length, chunks = body_chunks(reply, shape.size)
    if not shape.bytes_per_second:
        out.write(head(reply, length) + b"".join(_first(chunks)))
        for chunk in chunks:
            out.write(chunk)
        return
    if shape.trickle_headers:
        _trickle(out, head(reply, length), shape.bytes_per_second, stopping)
    else:
        out.write(head(reply, length))
        out.flush()
    for chunk in chunks:
        _trickle(out, chunk, shape.bytes_per_second, stopping)


def _first(chunks: Iterator[bytes]) -> list[bytes]:
    return [next(chunks, b"")]


def _trickle(
    out: io.BufferedIOBase, data: bytes, bytes_per_second: float, stopping: threading.Event
) -> None:
    step = max(1, int(bytes_per_second / 20))  # about 20 writes a second
    for i in range(0, len(data), step):
        if stopping.is_set():
            raise ConnectionAbortedError("the fake is stopping")
        out.write(data[i : i + step])
        out.flush()
        stopping.wait(step / bytes_per_second)


def hold_until_hung_up(
    connection: socket.socket, seconds: float, stopping: threading.Event
) -> None:
    """Reads and discards until the client hangs up, `seconds` pass (if > 0) or the fake stops."""
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    connection.settimeout(0.05)
    while not stopping.is_set() and time.monotonic() < deadline:
        try:
            if not connection.recv(_CHUNK):
                return
        except TimeoutError:
            continue
        except OSError:
            return
