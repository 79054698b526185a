"""A short fuzzing run (the long one is `python tests/fuzzing.py --minutes N`): mutated media give
success or a clean bad-input error, in the media layer and in every --dry-run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import CORPUS, check, mutate, seeds


@pytest.fixture(scope="module")
def seed_media(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    return [(p.suffix, p.read_bytes()) for p in seeds(tmp_path_factory.mktemp("seeds"))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(min_value=0), seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_mutated_media_fail_cleanly(pick: int, seed: int, seed_media: list[tuple[str, bytes]],
                                    tmp_path: Path) -> None:
    suffix, data = seed_media[pick % len(seed_media)]
    case = tmp_path / f"case{suffix}"
    case.write_bytes(mutate(data, random.Random(seed)))
    assert check(case) in ("ok", "bad-input")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*")) if CORPUS.exists() else [], ids=lambda p: p.name)
def test_regressions_from_earlier_fuzzing(path: Path) -> None:
    assert check(path) in ("ok", "bad-input")
