"""Bounded, order-keeping concurrency for engines that take several requests at once (remote ones)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[R]:
    """`map(fn, items)` with up to `jobs` calls running at once; results come back in input order.

    `items` is consumed lazily from the calling thread (it may be a generator, e.g. the VAD's clips),
    never more than `jobs` ahead of what has been yielded. An error is raised when its item's turn
    comes; items not started yet are then dropped."""
    if jobs <= 1:
        for item in items:
            yield fn(item)
        return
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gemmapipe-job") as pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= jobs:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()
