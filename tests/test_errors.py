"""Every error streamer raises on purpose has one root, `StreamerError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import streamer
from streamer.errors import StreamerError


def test_every_public_error_of_the_package_derives_from_streamer_error() -> None:
    errors = []
    for module_info in pkgutil.walk_packages(streamer.__path__, "streamer."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                errors.append(value)
    assert errors, "no error classes found: the walk is broken"
    outside = [f"{e.__module__}.{e.__name__}" for e in errors if not issubclass(e, StreamerError)]
    assert outside == []
