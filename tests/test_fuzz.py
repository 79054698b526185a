"""A short fuzzing run (the long one is `python tests/fuzzing.py --minutes N`): mutated media give
success or a clean bad-input error, in the media layer and in every --dry-run; bad option values are
one usage-error line, odd ones never an internal error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import (
    CORPUS,
    ODD_NAMES,
    check,
    exercise_name,
    exercise_option,
    mutate,
    option_cases,
    option_media,
    random_option_case,
    seeds,
)


@pytest.fixture(scope="module")
def seed_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def seed_media(seed_paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(p.suffix, p.read_bytes()) for p in seed_paths]


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


def test_bad_option_values_are_usage_errors(seed_paths: list[Path], cli_env: Path) -> None:
    cases = option_cases(option_media(seed_paths))
    assert len(cases) > 100
    for args in cases:
        assert exercise_option(args) == 2


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_odd_option_values_never_crash(seed: int, seed_paths: list[Path], cli_env: Path) -> None:
    exercise_option(random_option_case(random.Random(seed), option_media(seed_paths)), allowed=(0, 2, 3))


@pytest.mark.parametrize("raw", ODD_NAMES, ids=lambda b: repr(b)[2:20])
def test_odd_file_names_keep_the_contract(raw: bytes, seed_paths: list[Path], cli_env: Path, tmp_path: Path) -> None:
    wav = next(p for p in seed_paths if p.suffix == ".wav")
    exercise_name(wav, raw, tmp_path)
