"""Which process sent each request the incident.io double answered (Linux only).

The double records each request's client port (`RecordedAnswer.client_port`); `Senders`
samples, a few times a second, which local ports each running process holds connected to
the double (its socket inodes in /proc/<pid>/fd, their ports in /proc/net/tcp*). Keep-alive
connections live for many requests, so nearly every request is attributed; one on a
connection that lived less than a sample's interval is `?`.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def _inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _connections(server_port: int) -> dict[str, int]:
    """inode -> local port, for the connections to `server_port`."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(remote.rsplit(":", 1)[1], 16) == server_port:
                out[inode] = int(local.rsplit(":", 1)[1], 16)
    return out


class Senders:
    def __init__(
        self,
        server_port: int,
        processes: Callable[[], Iterable[tuple[str, int]]],
        every: float = 0.2,
    ) -> None:
        """`processes` lists the (label, pid) pairs to sample now."""
        self.server_port, self.processes, self.every = server_port, processes, every
        self._seen: dict[int, tuple[list[float], list[str]]] = {}  # port -> (times, labels)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def sample(self, now: float) -> None:
        connections = _connections(self.server_port)
        for label, pid in self.processes():
            for inode in _inodes(pid):
                port = connections.get(inode)
                if port is not None:
                    times, labels = self._seen.setdefault(port, ([], []))
                    if not labels or labels[-1] != label:
                        times.append(now)
                        labels.append(label)

    def _run(self) -> None:
        while not self._stopping.wait(self.every):
            self.sample(time.time())

    def of(self, port: int | None, at: float) -> str:
        """The process that held `port` at `at` (the nearest sample before, or after)."""
        if port is None or port not in self._seen:
            return "?"
        times, labels = self._seen[port]
        return labels[max(0, bisect.bisect_right(times, at) - 1)]
