"""Reading one HTTP/1.1 answer: framing, caps, reuse, malformed answers; h11 as the oracle."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import h11
import httpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.http_answer import MAX_HEAD, ReadAnswer, read_answer

CAP = 64 * 1024


def reader(*parts: bytes) -> Callable[[], bytes]:
    """`read` giving these parts one by one, then the peer's end (b"")."""
    chunks: Iterator[bytes] = iter(parts)
    return lambda: next(chunks, b"")


def answer(*parts: bytes, cap: int = CAP) -> ReadAnswer:
    return read_answer(reader(*parts), cap)


def test_a_content_length_answer_keeps_its_connection() -> None:
    read = answer(
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n",
        b"Content-Length: 2\r\n\r\n{}",
    )
    assert read == ReadAnswer(
        202, [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")], b"{}", True
    )


def test_a_chunked_answer_with_extensions_and_trailers() -> None:
    read = answer(
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    assert (read.status, read.body, read.reusable) == (500, b"abcd", True)


def test_bytes_trickled_one_at_a_time_read_the_same() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    read = answer(*(wire[i : i + 1] for i in range(len(wire))))
    assert (read.status, read.body, read.reusable) == (200, b"ok", True)


def test_interim_answers_are_skipped() -> None:
    read = answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    )
    assert (read.status, read.body, read.reusable) == (204, b"", True)


def test_an_answer_without_framing_is_read_to_the_end_and_not_reused() -> None:
    read = answer(b"HTTP/1.1 200 OK\r\n\r\n", b"part one, ", b"part two")
    assert (read.body, read.reusable) == (b"part one, part two", False)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",  # more than asked
    ],
    ids=["connection close", "HTTP/1.0", "both framings", "bytes after the answer"],
)
def test_answers_that_forbid_reuse(head: bytes) -> None:
    read = answer(head)
    assert read.status == 200 and not read.reusable


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000000\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5F5E100\r\n",
        b"HTTP/1.1 202 Accepted\r\n\r\n",
    ],
    ids=["content-length", "chunked", "to the end"],
)
def test_a_body_is_read_up_to_the_cap_only(head: bytes) -> None:
    reads = 0

    def endless() -> bytes:
        nonlocal reads
        reads += 1
        return head if reads == 1 else b"x" * 1000

    read = read_answer(endless, cap=10_000)
    assert read.body == b"x" * 10_000 and not read.reusable
    assert reads <= 12


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 000 Zero\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n \x00folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT\r: t\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # the peer ends mid-body
        b"HTTP/1.1 200 OK\r\nContent-Le",  # ... mid-head
        b"",  # ... before answering
    ],
)
def test_what_is_not_an_http_answer_is_refused_without_quoting_it(wire: bytes) -> None:
    with pytest.raises(httpcore.RemoteProtocolError) as refused:
        answer(wire)
    said = str(refused.value)
    assert not any(
        word in said for word in ("Bad Name", "gzip", "zz", "h2c", "0x10", "ICY", "\x00")
    )


def test_a_head_longer_than_the_limit_is_refused_once_read_that_far() -> None:
    reads = 0

    def endless_header() -> bytes:
        nonlocal reads
        reads += 1
        return b"HTTP/1.1 200 OK\r\nX: " if reads == 1 else b"y" * 4096

    with pytest.raises(httpcore.RemoteProtocolError):
        read_answer(endless_header, CAP)
    assert reads * 4096 < MAX_HEAD + 2 * 4096


# -- h11 as the oracle: any answer h11 reads, read the same -------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, list[int], bool]:
    """A well-formed answer's bytes (1xx first at times, any framing), where reads split it,
    and whether it leaves its connection reusable."""
    wire = b""
    for _ in range(draw(st.integers(0, 2))):
        wire += b"HTTP/1.1 100 Continue\r\n\r\n"
    status = draw(st.sampled_from([200, 202, 204, 301, 400, 429, 500, 503]))
    headers = [
        (name.encode(), value.encode())
        for name, value in draw(st.lists(st.tuples(_token, _value), max_size=4))
        if name not in ("content-length", "transfer-encoding", "connection")
    ]
    body = draw(st.binary(max_size=300)) if status != 204 else b""
    framing = draw(st.sampled_from(["length", "chunked", "close"])) if body else "length"
    if framing == "length" and status != 204:
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    close = draw(st.booleans())
    if close:
        headers.append((b"Connection", b"close"))
    wire += f"HTTP/1.1 {status} Reason\r\n".encode()
    wire += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    if framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 64), max_size=5))
        at = 0
        for size in sizes:
            piece = body[at : at + size]
            if piece:
                wire += b"%x\r\n" % len(piece) + piece + b"\r\n"
            at += size
        if body[at:]:
            wire += b"%x\r\n" % len(body[at:]) + body[at:] + b"\r\n"
        wire += b"0\r\n\r\n"
    else:
        wire += body
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    return wire, cuts, not close and framing != "close"


def h11_reads(wire: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(method="POST", target="/", headers=[("Host", "h"), ("Content-Length", "0")])
    )
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    client.receive_data(b"")
    event = client.next_event()
    while isinstance(event, h11.InformationalResponse):
        event = client.next_event()
    assert isinstance(event, h11.Response)
    body = b""
    while isinstance(part := client.next_event(), h11.Data):
        body += part.data
    kept = client.their_state is h11.DONE
    return event.status_code, list(event.headers.raw_items()), body, kept


@settings(max_examples=300, deadline=None)
@given(answers())
def test_any_answer_h11_reads_is_read_the_same(drawn: tuple[bytes, list[int], bool]) -> None:
    wire, cuts, reusable = drawn
    parts = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    ours = read_answer(reader(*[p for p in parts if p]), CAP)
    status, headers, body, _ = h11_reads(wire)
    assert (ours.status, ours.headers, ours.body) == (status, headers, body)
    assert ours.reusable == reusable
