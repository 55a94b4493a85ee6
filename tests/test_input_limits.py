"""Hard caps and secret masking (issue 12): no setting raises the upload size past core.text.HARD_MAX_BYTES,
and passwords in URLs are masked even when they contain "/", "@" or "#"."""

from __future__ import annotations

import pytest

import core.text
from core.settings import HARD_MAX_UPLOAD_BYTES, SettingsError, check_upload_cap, mask_url, masked_value
from core.text import CorpusError, decode_corpus


def test_a_caller_cannot_raise_the_decoder_past_the_hard_ceiling(monkeypatch):
    monkeypatch.setattr(core.text, "HARD_MAX_BYTES", 1_000)  # the real 100 MB, scaled down for the test
    data = b"word " * 201  # 1,005 bytes
    with pytest.raises(CorpusError) as info:
        decode_corpus(data, max_bytes=500_000_000)
    assert info.value.code == "too_large" and "the limit is 1,000 bytes" in info.value.message
    assert decode_corpus(data[:1_000], max_bytes=500_000_000).n_bytes == 1_000


def test_the_ceiling_is_100_mb():
    assert HARD_MAX_UPLOAD_BYTES == core.text.HARD_MAX_BYTES == 100_000_000


@pytest.mark.parametrize("mb, expected", [(0.01, 10_000), (25, 25_000_000), (100, 100_000_000)])
def test_server_upload_caps_up_to_the_ceiling_are_accepted(mb, expected):
    assert check_upload_cap(mb) == expected


@pytest.mark.parametrize("mb", [100.5, 500, 0, -1])
def test_server_upload_caps_past_the_ceiling_are_a_settings_error(mb):
    with pytest.raises(SettingsError, match="at most 100 MB"):
        check_upload_cap(mb)


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://imp:a/b/c@db:5432/imp", "postgresql+psycopg://imp:****@db:5432/imp"),
    ("redis://:pa/ss#x?y@redis:6379/0", "redis://:****@redis:6379/0"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:****@h/db"),
    ("postgresql://u@h/db?password=x&sslmode=require", "postgresql://u@h/db?password=****&sslmode=require"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
    ("s3://bucket/improbable", "s3://bucket/improbable"),
])
def test_url_passwords_are_masked_even_with_slashes(url, shown):
    assert mask_url(url) == shown
    assert masked_value("database_url", url) == shown


def test_no_secret_survives_masking():
    for secret in ("a/b", "x@y/z", "p#q/r", "s3cr/et?"):
        assert secret not in mask_url(f"postgresql://user:{secret}@host:5432/db")
