"""Shared fixtures.

``shared_data``: the real benchmark data (read from a path, never copied into the repo). Set
``CONTINUAL_LM_TEST_DATA`` to point elsewhere. When the data is absent the test is skipped, except in CI
(``CI=true``) or with ``CONTINUAL_LM_REQUIRE_DATA=1``, where absence is a failure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Tests use tiny models: one thread is far faster than two OpenMP threads contending on a 2-core machine.
torch.set_num_threads(1)

TESTS_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED_DATA = (TESTS_DIR.parent / ".." / "shared" / "data").resolve()


def _data_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("CONTINUAL_LM_REQUIRE_DATA") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    env = os.environ.get("CONTINUAL_LM_TEST_DATA")
    path = Path(env).expanduser().resolve() if env else DEFAULT_SHARED_DATA
    if not path.is_dir():
        message = f"shared benchmark data not found at {path}; set CONTINUAL_LM_TEST_DATA"
        if _data_required():
            pytest.fail(message + " (required because CI=true or CONTINUAL_LM_REQUIRE_DATA=1)")
        pytest.skip(message)
    return path


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def tmp_clbenchmark(tmp_path: Path) -> Path:
    """A tiny fake data dir with ``CL_Benchmark/`` (no instruction config, so built-in instructions are used):

    * ``TC/good``      — valid (train 6, test 4, labels a/b), with a dev.json that must be ignored
    * ``SC/badlabel``  — test record 1 has label "c", not in labels.json
    * ``NLI/malformed``— train.json is broken JSON (error on line 3)
    * ``TC/empty``     — test.json is an empty list
    * ``QQP/nolabels`` — labels.json missing
    """
    root = tmp_path / "CL_Benchmark"
    good = root / "TC" / "good"
    _write_json(good / "labels.json", ["a", "b"])
    _write_json(good / "train.json", [{"label": "ab"[i % 2], "sentence": f"train sentence {i}"} for i in range(6)])
    _write_json(good / "test.json", [{"label": "ab"[i % 2], "sentence": f"test sentence {i}"} for i in range(4)])
    _write_json(good / "dev.json", [{"label": "zzz", "sentence": "dev is ignored"}])

    bad = root / "SC" / "badlabel"
    _write_json(bad / "labels.json", ["a", "b"])
    _write_json(bad / "train.json", [{"label": "a", "sentence": "x"}])
    _write_json(bad / "test.json", [{"label": "a", "sentence": "x"}, {"label": "c", "sentence": "y"}])

    malformed = root / "NLI" / "malformed"
    _write_json(malformed / "labels.json", ["a", "b"])
    (malformed / "train.json").write_text(
        '[\n{"label": "a", "sentence": "x"},\n{"label": "b" "sentence": "y"}\n]\n', encoding="utf-8"
    )
    _write_json(malformed / "test.json", [{"label": "a", "sentence": "x"}])

    empty = root / "TC" / "empty"
    _write_json(empty / "labels.json", ["a", "b"])
    _write_json(empty / "train.json", [{"label": "a", "sentence": "x"}])
    _write_json(empty / "test.json", [])

    nolabels = root / "QQP" / "nolabels"
    _write_json(nolabels / "train.json", [{"label": "a", "sentence": "x"}])
    _write_json(nolabels / "test.json", [{"label": "a", "sentence": "x"}])
    return tmp_path
