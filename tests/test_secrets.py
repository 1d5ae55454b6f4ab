"""Secrets read without hanging, without filling memory, without being echoed
(streamer/config/secrets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamer.config.model import TokenSource
from streamer.config.secrets import MAX_SECRET_FILE_BYTES, read_regular_file, read_secret
from streamer.reload import _fingerprint


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)  # no writer: a plain read would block forever
    with pytest.raises(ValueError, match=f"the token file {fifo} is not a regular file"):
        read_secret(TokenSource(file=fifo), tmp_path, "token")


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="/dev/zero is not a regular file"):
        read_secret(TokenSource(file=Path("/dev/zero")), tmp_path, "token")


def test_a_large_file_is_refused_after_reading_no_more_than_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "token"
    big.write_bytes(b"a" * (10 * MAX_SECRET_FILE_BYTES))
    with pytest.raises(ValueError, match="is larger than 64 KiB"):
        read_secret(TokenSource(file=big), tmp_path, "token")
    exact = tmp_path / "exact"
    exact.write_bytes(b"b" * MAX_SECRET_FILE_BYTES)
    assert len(read_regular_file(exact, MAX_SECRET_FILE_BYTES)) == MAX_SECRET_FILE_BYTES


def test_a_conventional_variable_name_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INCIDENT_IO_TOKEN_PAYMENTS", raising=False)
    with pytest.raises(ValueError) as error:
        read_secret(TokenSource(env="INCIDENT_IO_TOKEN_PAYMENTS"), Path("."), "token")
    assert str(error.value) == "the environment variable INCIDENT_IO_TOKEN_PAYMENTS is not set"


@pytest.mark.parametrize(
    "pasted",
    ["sk_live_4eC39HqLyjWDarjtT1zdp7dc", "AKIAIOSFODNN7EXAMPLE", "ghp_16C7e42F292c6912E7710c8"],
)
def test_an_unset_variable_that_may_be_a_pasted_secret_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    monkeypatch.delenv(pasted, raising=False)
    with pytest.raises(ValueError) as error:
        read_secret(TokenSource(env=pasted), Path("."), "token")
    assert pasted not in str(error.value)
    assert "is not set" in str(error.value) and "may be a secret pasted by mistake" in str(
        error.value
    )


def test_reload_fingerprints_a_fifo_token_file_without_blocking(tmp_path: Path) -> None:
    config = tmp_path / "streamer.yaml"
    config.write_text("x: 1\n")
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    first = _fingerprint(config, [fifo])
    assert first == _fingerprint(config, [fifo])
