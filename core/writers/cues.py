"""Subtitle cues of a readable shape, from segments whose times come from the audio.

A segment is what one speech clip said (its times are the clip's, from sample counts). SRT and
WebVTT show it as one or more cues following the common subtitle guidelines (the BBC's, Netflix's,
whisper's `max_line_width`/`max_line_count`), set in `CueRules`:

- at most `max_line_width` columns a line (42; East Asian wide characters count two) and at most
  `max_line_count` lines a cue (2); a text that fits in one line stays on one line, two lines are
  balanced, and lines break after sentence or clause punctuation where they can;
- at most about `max_duration_ms` a cue (7 s): a longer segment is split;
- a cue shorter than its reading time (`chars_per_second`, 20) or than `min_duration_ms` (1 s) is
  lengthened into the pause after it, never past the next cue's start;
- never a cue of zero length, never two cues that overlap.

Cue times come from the audio: transcribe and diarize cut shorter clips at shorter pauses for
these formats, so each clip is a natural cue or two. Only a clip whose text needs several cues is
split inside, and then by characters, at word boundaries, preferring the end of a sentence, then of
a clause (a dynamic program over the words). A segment whose lines already fit (text written with
its own line breaks, as a caller may give) is shown as written.

Pure functions over strings and integer milliseconds; the writers in text.py format the result.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

SENTENCE_END = ".?!…。！？‼⁇"
CLAUSE_END = ",;:、，；：—–"
_CLOSERS = "\"'”’»)]}」』）"


@dataclass(frozen=True)
class CueRules:
    """The shape of SRT and WebVTT cues (see the module docstring)."""

    max_line_width: int = 42
    max_line_count: int = 2
    max_duration_ms: int = 7000
    min_duration_ms: int = 1000
    chars_per_second: float = 20.0

    def __post_init__(self) -> None:
        if self.max_line_width < 1 or self.max_line_count < 1:
            raise ValueError(f"need a line width and a line count of at least 1, got {self.max_line_width}, "
                             f"{self.max_line_count}")


@dataclass
class Cue:
    start_ms: int
    end_ms: int
    lines: list[str] = field(default_factory=list)
    speaker: str | None = None  # whose words these are (diarize), for the writer's label

    @property
    def chars(self) -> int:
        return sum(width(line) for line in self.lines)


def clean_cue_text(text: str) -> str:
    """Text for an SRT/VTT cue: line breaks kept, but no empty line (it would end the cue) and no `-->`."""
    lines = [line.replace("\t", " ").strip() for line in text.splitlines()]
    return "\n".join(line.replace("-->", "->") for line in lines if line)


def char_width(ch: str) -> int:
    """Columns a character takes on screen: 2 for East Asian wide and full-width ones, 0 for
    combining marks and format characters, else 1."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


@dataclass
class _Token:
    text: str
    space: bool  # a space before it (when it does not start a line)
    width: int


def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F") and unicodedata.category(ch).startswith("L")


def tokenize(text: str, max_width: int) -> list[_Token]:
    """The breakable units of a text: words between spaces; each East Asian wide letter is a unit of
    its own (those scripts break between characters; a wide punctuation mark stays with the letter
    before it); a unit wider than `max_width` is cut into pieces that fit."""
    out: list[_Token] = []
    for word in text.split():
        units: list[str] = []
        for ch in word:
            if units and not _is_wide(ch) and not _is_wide(units[-1][-1]):
                units[-1] += ch
            elif units and not _is_wide(ch) and unicodedata.category(ch).startswith("P"):
                units[-1] += ch  # 「語。」: punctuation stays with what it ends
            else:
                units.append(ch)
        for i, unit in enumerate(units):
            space = i == 0 and bool(out)
            for piece in _cut(unit, max_width):
                out.append(_Token(piece, space, width(piece)))
                space = False
    return out


def _cut(unit: str, max_width: int) -> list[str]:
    if width(unit) <= max_width:
        return [unit]
    pieces, cur, w = [], "", 0
    for ch in unit:
        cw = char_width(ch)
        if cur and w + cw > max_width:
            pieces.append(cur)
            cur, w = "", 0
        cur += ch
        w += cw
    return [*pieces, cur] if cur else pieces


def _break_penalty(token: str) -> float:
    """How much a break after this token costs: none after a sentence, a little after a clause."""
    end = token.rstrip(_CLOSERS) or token
    if end[-1] in SENTENCE_END:
        return 0.0
    if end[-1] in CLAUSE_END or token in ("-", "—", "–"):
        return 0.3
    return 1.0


class _Layout:
    """Line widths of a cue: the first line may be narrower (a speaker label before it)."""

    def __init__(self, rules: CueRules, label_width: int) -> None:
        self.width = rules.max_line_width
        self.first = max(self.width - label_width, min(self.width, 10))
        self.lines = rules.max_line_count

    def line_width(self, index: int) -> int:
        return self.first if index == 0 else self.width


def _join(tokens: list[_Token]) -> str:
    return "".join((" " if t.space and i else "") + t.text for i, t in enumerate(tokens))


def _span_width(tokens: list[_Token]) -> int:
    return sum(t.width + (1 if t.space and i else 0) for i, t in enumerate(tokens))


def _greedy_lines(tokens: list[_Token], layout: _Layout) -> int:
    lines, used = 1, -1
    for t in tokens:
        add = t.width if used < 0 else used + (1 if t.space else 0) + t.width
        if used >= 0 and add > layout.line_width(lines - 1):
            lines, add = lines + 1, t.width
        used = add
    return lines


def break_lines(tokens: list[_Token], layout: _Layout) -> list[str]:
    """The cue's text on as few lines as it needs, balanced (least sum of squared widths), breaking
    after punctuation where that costs little."""
    n = len(tokens)
    k = _greedy_lines(tokens, layout)
    if k <= 1:
        return [_join(tokens)]
    inf = math.inf
    # best[l][j]: cost of tokens[:j] on l lines; choice[l][j]: where the last of those lines starts
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    choice = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for line in range(1, k + 1):
        limit = layout.line_width(line - 1)
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                w = _span_width(tokens[i:j])
                if w > limit:
                    break
                if best[line - 1][i] == inf:
                    continue
                pen = (w / layout.width) ** 2 + (0.3 * _break_penalty(tokens[j - 1].text) if j < n else 0.0)
                if best[line - 1][i] + pen < best[line][j]:
                    best[line][j], choice[line][j] = best[line - 1][i] + pen, i
    if best[k][n] == inf:  # cannot happen (greedy found k lines); keep the greedy shape then
        return _greedy_split(tokens, layout)
    lines, j = [], n
    for line in range(k, 0, -1):
        i = choice[line][j]
        lines.append(_join(tokens[i:j]))
        j = i
    return lines[::-1]


def _greedy_split(tokens: list[_Token], layout: _Layout) -> list[str]:
    lines: list[list[_Token]] = [[]]
    for t in tokens:
        cand = [*lines[-1], t]
        if lines[-1] and _span_width(cand) > layout.line_width(len(lines) - 1):
            lines.append([t])
        else:
            lines[-1] = cand
    return [_join(line) for line in lines]


def _weight(tokens: list[_Token]) -> int:
    """What a cue's share of the segment's time is proportional to: its characters (at least 1)."""
    return max(1, _span_width(tokens))


def split_cues(tokens: list[_Token], duration_ms: int, rules: CueRules, layout: _Layout) -> list[list[_Token]]:
    """Group the words into cues: each fits in the layout; few cues, balanced, of a duration within
    the rules (estimated in proportion to characters), ending at a sentence or clause where possible."""
    n = len(tokens)
    total = max(1, _span_width(tokens))
    capacity = layout.width * layout.lines
    inf = math.inf
    best = [inf] * (n + 1)
    choice = [0] * (n + 1)
    best[0] = 0.0
    for i in range(n):
        if best[i] == inf:
            continue
        lines, used = 1, -1  # greedy layout of tokens[i:j], grown one token at a time
        span = 0
        for j in range(i + 1, n + 1):
            t = tokens[j - 1]
            add = t.width if used < 0 else used + (1 if t.space else 0) + t.width
            if used >= 0 and add > layout.line_width(lines - 1):
                lines, add = lines + 1, t.width
            used = add
            if lines > layout.lines:
                break
            span = t.width if j == i + 1 else span + (1 if t.space else 0) + t.width
            est = duration_ms * span / total
            cost = 1.0 + (span / capacity) ** 2
            if j < n:
                cost += _break_penalty(t.text)
            over = est / rules.max_duration_ms - 1
            if over > 0:  # a step: longer than the rule only when the words cannot be split
                cost += 3 + 10 * over
            if n > 1 and est < rules.min_duration_ms:
                cost += 3 * (1 - est / rules.min_duration_ms)
            if best[i] + cost < best[j]:
                best[j], choice[j] = best[i] + cost, i
    groups: list[list[_Token]] = []
    j = n
    while j > 0:
        i = choice[j]
        groups.append(tokens[i:j])
        j = i
    return groups[::-1]


def shape_cues(text: str, start_ms: int, end_ms: int, rules: CueRules, *, label_width: int = 0) -> list[Cue]:
    """The cues of one segment's text between its times (see the module docstring). `label_width`:
    the columns a speaker label takes at the start of each cue's first line. Times here are the
    segment's, split in proportion to characters; `CueTimer` then makes them readable and disjoint."""
    text = clean_cue_text(text)
    if not text:
        return []
    start_ms, end_ms = int(start_ms), int(end_ms)
    duration = max(0, end_ms - start_ms)
    layout = _Layout(rules, label_width)
    written = text.split("\n")
    if (len(written) <= layout.lines and duration <= rules.max_duration_ms
            and all(width(line) <= layout.line_width(i) for i, line in enumerate(written))):
        return [Cue(start_ms, end_ms, written)]
    tokens = tokenize(" ".join(written), min(layout.first, layout.width))
    groups = split_cues(tokens, duration, rules, layout)
    if duration < len(groups):  # no time to share (a zero-length segment): give each cue its minimum
        duration = len(groups) * rules.min_duration_ms
    weights = [_weight(g) for g in groups]
    total = sum(weights)
    cues, acc = [], 0
    for g, w in zip(groups, weights, strict=True):
        a = start_ms + duration * acc // total
        acc += w
        b = start_ms + duration * acc // total
        cues.append(Cue(a, b, break_lines(g, layout)))
    return cues


class CueTimer:
    """Final times of a stream of cues, in order: a cue that would be shorter than its reading time
    (or the minimum duration) is lengthened into the pause after it, up to the next cue's start; a
    cue never starts before the previous one ended and never has zero length.

    `push(cue)` returns the cue before it, now final (None for the first); `flush()` the last one."""

    def __init__(self, rules: CueRules) -> None:
        self.rules = rules
        self.pending: Cue | None = None
        self.last_end = 0

    def push(self, cue: Cue) -> Cue | None:
        done = self._final(self.pending, cue.start_ms) if self.pending is not None else None
        self.pending = cue
        return done

    def flush(self) -> Cue | None:
        done = self._final(self.pending, None) if self.pending is not None else None
        self.pending = None
        return done

    def reset(self) -> None:
        self.pending = None
        self.last_end = 0

    def _final(self, cue: Cue, next_start: int | None) -> Cue:
        r = self.rules
        start = max(cue.start_ms, self.last_end)
        read = max(r.min_duration_ms, math.ceil(cue.chars * 1000 / r.chars_per_second))
        end = max(cue.end_ms, start + min(read, r.max_duration_ms))
        if next_start is not None:
            end = min(end, next_start)
        end = max(end, start + 1)
        self.last_end = end
        return Cue(start, end, cue.lines, cue.speaker)
