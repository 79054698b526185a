"""`python tests/fake_cli.py ARGS...`: the real command line with the fake engine registered, for
tests that drive gemmapipe in a pseudo-terminal (where a fixture cannot reach into the process).

FAKE_REPLY: the canned answer (words are streamed one by one); FAKE_DELAY: seconds per word (lets a
test press Ctrl-C mid-answer or watch a progress bar); FAKE_STOP: the stop reason to report
("eog", "length")."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemmapipe.core.engine.base import GenerateOptions
from gemmapipe.core.engine.parts import Message

from fake_engine import FakeEngine


class SlowEngine(FakeEngine):
    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        words = super().generate(messages, options)
        delay = float(os.environ.get("FAKE_DELAY", "0"))
        self.stats.stop_reason = os.environ.get("FAKE_STOP", "eog")
        self.stats.prompt_evaluated = self.stats.prompt_tokens
        self.stats.prefill_s, self.stats.decode_s = 0.01, 0.02

        def stream() -> Iterator[str]:
            for word in words:
                if delay:
                    time.sleep(delay)
                yield word

        return stream()


def main() -> None:
    from gemmapipe.cli.app import main as cli_main
    from gemmapipe.core.session import register_engine_factory

    reply = os.environ.get("FAKE_REPLY", "canned reply")

    def factory(config: Any, pair: Any, *, n_ctx: int, max_image_tokens: int = 0) -> SlowEngine:
        return SlowEngine(replies=[reply], n_ctx=n_ctx, config=config)

    register_engine_factory(factory)
    sys.argv[0] = "gemmapipe"
    cli_main()


if __name__ == "__main__":
    main()
