"""The root of streamer's own errors (docs/design.md).

Every error the package raises on purpose derives from `StreamerError`, so a caller (the
CLI, an embedding program, a test) can tell "streamer refused this, with a reason" from a
bug. Each keeps the built-in type it always had as a second base (`ValueError`, ...), so
`except ValueError` around a parser still works.
"""

from __future__ import annotations


class StreamerError(Exception):
    """Something streamer refused or could not do, with a message that says why."""
