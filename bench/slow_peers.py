"""Hostile peers: how long a request lasts, and how much memory a huge answer costs.

Run: `python bench/slow_peers.py [--timeout 1]`. Against the incident.io double in its
own process (`streamer fake-incident-io`, faults set over `/_fake/faults`), and a
listener whose accept queue is full (a connect that hangs), it times one request per
peer kind with streamer's client and, as the baseline, with a plain `httpx.Client` of
the same timeout (per phase, per read). Then it measures the peak resident memory
(VmHWM) of a process that receives a 200 MiB answer, with each client. Reported, never
asserted: the client's guarantee is tested in tests/test_incident_io.py.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from pydantic import SecretStr

from streamer.incident_io import IncidentIoClient
from streamer.testing.fake_incident_io import standalone

SOURCE, TOKEN = "01BENCH", "bench-token"
PAYLOAD = {"title": "disk full", "status": "firing", "deduplication_key": "db-1/disk"}
HUGE = 200 * 1024 * 1024
PEERS: dict[str, dict[str, object]] = {
    "accepts, never answers": {"kind": "hang"},
    "trickled headers (50 B/s)": {"kind": "trickle", "bytes_per_second": 50},
    "trickled body (50 B/s)": {"kind": "trickle", "bytes_per_second": 50, "part": "body"},
}


def ours(url: str, timeout: float) -> None:
    client = IncidentIoClient(timeout=timeout)
    try:
        client.post_alert_event(url, SOURCE, SecretStr(TOKEN), PAYLOAD)
    finally:
        client.close()


def raw(url: str, timeout: float) -> None:
    with httpx.Client(timeout=timeout) as client:
        client.post(
            f"{url}/v2/alert_events/http/{SOURCE}",
            json=PAYLOAD,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )


def timed(post: Callable[[str, float], None], url: str, timeout: float) -> str:
    start = time.monotonic()
    try:
        post(url, timeout)
        outcome = "answered"
    except httpx.TransportError as e:
        outcome = type(e).__name__
    return f"{time.monotonic() - start:6.3f} s  {outcome}"


@contextmanager
def full_listener() -> Iterator[str]:
    """A listener whose accept queue is full: the kernel leaves further SYNs unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(which: str, url: str) -> None:
    """In a fresh process: peak RSS before and after one 200 MiB answer."""
    before = peak_rss_mib()
    post = ours if which == "streamer" else raw
    try:
        post(url, 60)
    except httpx.TransportError as e:
        print(f"({type(e).__name__})", end=" ")
    print(f"{before:.0f} -> {peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("CLIENT", "URL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    with standalone("--source", f"{SOURCE}:{TOKEN}:1000000") as (_, url), httpx.Client() as control:
        print(f"one request per peer kind, timeout={args.timeout} s: streamer | plain httpx")
        for name, fault in PEERS.items():
            results = []
            for post in (ours, raw):
                control.delete(f"{url}/_fake/faults")
                control.post(f"{url}/_fake/faults", json=fault).raise_for_status()
                results.append(timed(post, url, args.timeout))
            print(f"  {name:28} {results[0]:28} | {results[1]}")
        with full_listener() as hanging:
            results = [timed(post, hanging, args.timeout) for post in (ours, raw)]
        print(f"  {'connect hangs':28} {results[0]:28} | {results[1]}")
        control.delete(f"{url}/_fake/faults")
        control.post(f"{url}/_fake/faults", json={"kind": "huge_body", "size": HUGE})
        print("peak RSS receiving a 200 MiB answer:")
        for which in ("streamer", "httpx"):
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", which, url],
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"  {which:10} {child.stdout.strip()}")


if __name__ == "__main__":
    main()
