"""Writers for describe, video and chat results (`Description`): txt, json, jsonl, md."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..results import Description
from .base import DescriptionWriter, dumps, one_line, write_error_record


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _record(desc: Description) -> dict[str, Any]:
    return {"file": desc.file, "text": desc.text, "data": desc.data, "meta": desc.meta}


class DescriptionTxtWriter(DescriptionWriter):
    """The text as the model wrote it (one trailing newline ensured); the parsed data as one JSON line
    when there is no text.

    With `with_file`, each result opens with `==> file <==`, results separated by an empty line.
    """

    extension: ClassVar[str] = "txt"

    def write(self, desc: Description) -> None:
        if self.with_file:
            sep = "\n" if self.count else ""
            self.out.write(f"{sep}==> {one_line(desc.file)} <==\n")
        text = desc.text
        if not text.strip() and desc.data is not None:
            text = dumps(desc.data)
        self.out.write(_with_newline(text))
        self.count += 1


class DescriptionJsonWriter(DescriptionWriter):
    """One object per input and line: `{"file", "text", "data", "meta"}` (`data`: parsed JSON or null).

    One input is one valid JSON document; several are JSON Lines, as for transcripts.
    """

    extension: ClassVar[str] = "json"

    def write(self, desc: Description) -> None:
        self.out.write(dumps(_record(desc)) + "\n")
        self.out.flush()
        self.count += 1


class DescriptionJsonlWriter(DescriptionJsonWriter):
    """The same line per input as `json`, flushed; a failed input adds `{"file": ..., "error": "..."}`."""

    extension: ClassVar[str] = "jsonl"

    def error(self, file: str, error: str | BaseException) -> None:
        write_error_record(self.out, file, error)


class MarkdownWriter(DescriptionWriter):
    """A section per input: `## file`, an empty line, then the text. When the text is empty but there
    is parsed data, the data is shown as a fenced JSON block."""

    extension: ClassVar[str] = "md"

    def write(self, desc: Description) -> None:
        body = desc.text.strip("\n")
        if not body.strip() and desc.data is not None:
            body = "```json\n" + json.dumps(desc.data, ensure_ascii=False, indent=2, default=str) + "\n```"
        sep = "\n" if self.count else ""
        self.out.write(f"{sep}## {one_line(desc.file)}\n\n{_with_newline(body) if body else ''}")
        self.count += 1
