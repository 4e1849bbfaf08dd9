"""The profile cache: a restarted agent reuses its block timings, never a wrong or bad entry."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from device_agent.ports import HostTimings
from device_agent.profile_cache import ProfileCache, host_facts
from splitnn.models import ModelSpec, architecture_fingerprint, build_model, fingerprint_module

HOST = host_facts("2.13.0", 1)
TIMINGS = HostTimings((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


def test_timings_round_trip(tmp_path):
    cache = ProfileCache(tmp_path)
    key = cache.key("abc", 32, HOST)
    assert cache.load(key, 3) is None
    cache.store(key, TIMINGS)
    assert cache.load(key, 3) == TIMINGS
    assert [p.name for p in tmp_path.iterdir()] == [f"{key}.json"]  # no temp file left


@pytest.mark.parametrize(
    "other",
    [("abd", 32, HOST), ("abc", 64, HOST), ("abc", 32, {**HOST, "threads": 2}),
     ("abc", 32, {**HOST, "cpu": "another"}), ("abc", 32, {**HOST, "torch": "2.14.0"})],
)  # fmt: skip
def test_another_model_batch_or_host_has_another_key(other):
    assert ProfileCache.key("abc", 32, HOST) != ProfileCache.key(*other)


def test_a_stale_entry_is_measured_again(tmp_path):
    cache = ProfileCache(tmp_path, max_age_s=60)
    key = cache.key("abc", 32, HOST)
    cache.store(key, TIMINGS)
    path = tmp_path / f"{key}.json"
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "created_at": time.time() - 61}))
    assert cache.load(key, 3) is None


@pytest.mark.parametrize(
    "content",
    ["", "{", "[]", '{"format": "ares-profile-cache/1"}',
     '{"format": "ares-profile-cache/1", "created_at": 1e30, "forward_s": "x", "backward_s": []}',
     '{"format": "other", "created_at": 1e30, "forward_s": [1,1,1], "backward_s": [1,1,1]}',
     '{"format": "ares-profile-cache/1", "created_at": 1e30, "forward_s": [1,1], '
     '"backward_s": [1,1]}',
     '{"format": "ares-profile-cache/1", "created_at": 1e30, "forward_s": [1,-1,1], '
     '"backward_s": [1,1,1]}'],
)  # fmt: skip
def test_a_bad_entry_is_ignored_not_fatal(tmp_path, content):
    cache = ProfileCache(tmp_path)
    key = cache.key("abc", 32, HOST)
    (tmp_path / f"{key}.json").write_text(content)
    assert cache.load(key, 3) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_cache_is_skipped(tmp_path, caplog):
    tmp_path.chmod(0o500)
    try:
        ProfileCache(tmp_path / "sub").store("k", TIMINGS)
    finally:
        tmp_path.chmod(0o700)
    assert "not written" in caplog.text


def test_a_cache_under_a_file_is_skipped(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    ProfileCache(tmp_path / "file" / "sub").store("k", TIMINGS)
    assert "not written" in caplog.text


def test_the_fingerprint_follows_the_architecture_not_the_weights():
    spec = ModelSpec("small_cnn", (1, 8, 8), 10)
    assert architecture_fingerprint(spec) == architecture_fingerprint(spec)
    assert architecture_fingerprint(spec) != architecture_fingerprint(
        ModelSpec("small_cnn", (1, 8, 8), 7)
    )
    assert architecture_fingerprint(spec) != architecture_fingerprint(
        ModelSpec("tiny", (1, 8, 8), 10)
    )
    model = build_model(spec)
    before = fingerprint_module(model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert fingerprint_module(model) == before
    assert fingerprint_module(model.double()) != before  # dtypes count
