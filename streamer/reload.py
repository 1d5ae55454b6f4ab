"""Hot reload of the configuration file, without a restart and without a gap.

`ConfigReloader.load_if_changed()` fingerprints the file's content (and the token files it
names, so a rotated secret is picked up) and, when it changed, loads and validates it in
full, on whatever thread calls it (the engine: a background thread); `apply` swaps a valid
one into `current` in one assignment, on the thread that reads it, between events, so a
consumer that reads `reloader.current` once per event always sees one whole
configuration, old or new. `check()` does both at once.
An invalid file is rejected with a logged error and a metric, and the old configuration
stays in force; the same bad content is not reported again until it changes.

Watching by content works for every way a file is replaced: in-place edits, an editor's
write-and-rename, and Kubernetes' ConfigMap update, which swaps the `..data` symlink.
Reading and hashing a big file at every check costs CPU while nothing changes (50,000
routes: 8 MiB, 5 ms a check), so a file whose stat (inode, size, modification and change
times) is the same as at the last hash is not read again, while its last change is older
than a timestamp's granularity at that hash (an edit in the same tick could keep every
field); and every `REHASH_SECONDS` it is hashed whatever its stat says.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from streamer.config import Config, ConfigError, load_config
from streamer.config.secrets import MAX_SECRET_FILE_BYTES, read_regular_file
from streamer.config.yaml_limits import MAX_FILE_BYTES

log = logging.getLogger(__name__)

# A reload that takes longer is refused (10,000 routes take ~1.2 s of CPU to load and
# compile: this is for files far past any real need, and machines far too busy).
MAX_LOAD_SECONDS = 60.0


REHASH_SECONDS = 60.0
SETTLED_NS = 1_000_000_000  # a file's timestamps tick coarsely (the kernel's clock tick)


def _stat(paths: list[Path]) -> tuple[tuple[int, ...], ...]:
    """What changes when a file does (stat follows a ConfigMap's symlinks)."""
    stamps: list[tuple[int, ...]] = []
    for path in paths:
        try:
            s = path.stat()
        except OSError as e:
            stamps.append((-1, e.errno or 0))
            continue
        stamps.append((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
    return tuple(stamps)


def _fingerprint(config_path: Path, token_files: list[Path]) -> str:
    digest = hashlib.sha256()
    limits = [MAX_FILE_BYTES] + [MAX_SECRET_FILE_BYTES] * len(token_files)
    for path, limit in zip((config_path, *token_files), limits, strict=True):
        # Bounded, and regular files only: a token file replaced by a FIFO or a device must
        # not hang or fill the poll loop (the load then says what is wrong with it).
        try:
            digest.update(read_regular_file(path, limit))
        except OSError as e:  # a file mid-swap or removed: fingerprint the absence
            digest.update(f"unreadable {path}: {e.errno}".encode())
        except ValueError as e:
            digest.update(f"refused {path}: {e}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _token_files(config: Config) -> list[Path]:
    base = config.path.parent
    files = [d.token.file for d in config.file.destinations.values() if d.token.file]
    return [f if f.is_absolute() else base / f for f in files]


class ConfigReloader:
    def __init__(
        self,
        current: Config,
        *,
        load: Callable[[Path], Config] = load_config,
        on_applied: Callable[[Config], None] | None = None,
        count: Callable[[str], None] = lambda result: None,
        max_seconds: float = MAX_LOAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`count(result)` is told each reload's result, `applied` or `rejected`."""
        self.current = current
        self.max_seconds, self._clock = max_seconds, clock
        self._load = load
        self._on_applied = on_applied
        self._count = count
        self._seen = _fingerprint(current.path, _token_files(current))
        self._stamp: tuple[tuple[int, ...], ...] = ()  # the files' stat at the last hash
        self._hashed_at = -REHASH_SECONDS

    def check(self) -> bool:
        """Reloads if the file changed; True when a new configuration was applied."""
        new = self.load_if_changed()
        if new is None:
            return False
        self.apply(new)
        return True

    def load_if_changed(self) -> Config | None:
        """The file's new configuration, loaded and validated in full, if it changed and
        is valid (not applied yet: `apply` swaps it in). May run on another thread than
        the one that reads `current`: a big file's compile then never stalls the poll
        loop. A load that took longer than `max_seconds` is refused: the old rules stay."""
        path, tokens = self.current.path, _token_files(self.current)
        stamp, now = _stat([path, *tokens]), time.monotonic()
        if stamp == self._stamp and now - self._hashed_at < REHASH_SECONDS:
            return None
        # trusted from the next check on only if no file changed within a tick of now
        settled = time.time_ns() - SETTLED_NS
        self._stamp = stamp if all(s[0] < 0 or max(s[2:]) < settled for s in stamp) else ()
        self._hashed_at = now
        fingerprint = _fingerprint(path, tokens)
        if fingerprint == self._seen:
            return None
        self._seen = fingerprint
        started = self._clock()
        try:
            new = self._load(path)
        except ConfigError as e:
            self._count("rejected")
            log.error(
                "configuration change rejected; the previous rules stay in force:\n%s",
                e,
                extra={"config": str(path), "problems": len(e.problems)},
            )
            return None
        took = self._clock() - started
        # its own token files from now on (a new file named is no second change)
        self._seen = _fingerprint(path, _token_files(new))
        if took > self.max_seconds:
            self._count("rejected")
            log.error(
                "configuration change rejected: it took %.1f s to load and compile, more "
                "than the %.0f s allowed; the previous rules stay in force (split the "
                "file, or share templates and matchers between routes)",
                took,
                self.max_seconds,
                extra={"config": str(path)},
            )
            return None
        return new

    def apply(self, new: Config) -> None:
        """Swaps `new` in, in one assignment (between events, on the reading thread)."""
        self.current = new
        self._count("applied")
        log.info("configuration reloaded", extra={"config": str(new.path)})
        for warning in new.warnings:  # matchers Alertmanager's parsers read differently
            log.warning(warning, extra={"config": str(new.path)})
        if self._on_applied is not None:
            self._on_applied(new)

    def run(
        self,
        stop: threading.Event,
        interval: float = 2.0,
        deliver: Callable[[Config], None] | None = None,
    ) -> None:
        """Checks every `interval` seconds until `stop` is set (run it in a thread). With
        `deliver`, a changed file's configuration is handed to it instead of applied: the
        thread that reads `current` applies it (`apply`) between events."""
        while not stop.wait(interval):
            try:
                if deliver is None:
                    self.check()
                elif (new := self.load_if_changed()) is not None:
                    deliver(new)
            except Exception:  # never let the watcher die: the next check may succeed
                log.exception("configuration check failed")
