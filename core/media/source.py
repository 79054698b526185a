"""Open an input (a path or `-` for standard input), tell what it is from its content, and reopen it.

`open_input(spec)` is a context manager yielding a `Source`.  Everything a later step needs (several
decoding passes, Pillow, a content hash) goes through the Source, which owns any temporary file and
removes it when the context ends.

How standard input is read.  A seekable stdin (`prog - < file`) is read in place.  A pipe is sniffed
from its first 64 KiB:

* ISO-BMFF (mp4/mov/m4a/3gp) whose index (`moov`) comes after the media data (`mdat`) -- what ffmpeg
  and most cameras write -- cannot be decoded without seeking, so the whole pipe is spooled to a
  temporary file first (`Source.spooled`).  So are still images (Pillow needs to seek), and ISO-BMFF
  whose box layout cannot be read from the head.
* Everything else (wav, mp3, flac, ogg, opus, webm/mkv, mpeg-ts, mp4 with the index first or fragmented,
  ...) is streamed: the decoder reads the pipe as it arrives (`Source.streamed`).  Unless
  `single_pass=True`, what the decoder reads is also copied to a temporary file as it goes, so the
  input can be decoded again (frames after audio), hashed and probed; the second pass replays the copy
  and continues from the pipe where the first stopped.  With `single_pass=True` nothing touches the disk
  (only the few MB ffmpeg reads while probing are held in memory, once) and a second pass raises
  RuntimeError.

Spools are capped: a pipe that would spool more than GEMMAPIPE_SPOOL_MAX bytes (default 4 GiB; a number
of bytes, or with a K, M, G or T suffix, binary) is refused as BadInput naming the input, so an endless
stream cannot fill the disk.  Every spool is removed when its Source closes, when opening fails, and
at exit (`remove_spools`, also called by the CLI before it leaves after Ctrl-C or SIGTERM).

What the input is comes from its content, never its name: image magic numbers first (PNG, JPEG, GIF,
BMP, TIFF, WebP, QOI, binary PNM, JPEG 2000, HEIF/AVIF), then text is refused, then ffmpeg probes the
container and the first packet of the main stream is decoded to prove it is decodable.  A video stream
that is only cover art (attached picture) does not make a file a video.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from .. import interrupt
from ..errors import BadInput, GemmapipeError, UsageError
from ..sink import make_temp, untrack_temp
from .faults import av_bad_input, decode_guard

if TYPE_CHECKING:
    from av.container import InputContainer

    from .probe import MediaInfo

Kind = Literal["image", "audio", "video"]

HEAD_BYTES = 64 * 1024
"""How much of an input is read to sniff what it is."""

MAX_HEAD_BYTES = 4 * 1024 * 1024
"""How far into a pipe we look for an ISO-BMFF `moov`/`mdat` box before giving up and spooling."""

STDIN_NAME = "<stdin>"

_CHUNK = 1 << 16

SPOOL_MAX_ENV = "GEMMAPIPE_SPOOL_MAX"
DEFAULT_SPOOL_MAX = 4 << 30
"""The most bytes of a pipe written to a temporary file (GEMMAPIPE_SPOOL_MAX overrides)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# Spool files that exist now.  A signal can land anywhere, even between mkstemp and the code that
# would remove its file; whatever is left here when the process ends is removed then.
_SPOOLS: set[str] = set()


def remove_spools() -> None:
    """Remove every spool file still on disk (at exit; the CLI also calls it before os._exit)."""
    for path in list(_SPOOLS):
        with contextlib.suppress(OSError):
            os.unlink(path)
        _SPOOLS.discard(path)


atexit.register(remove_spools)


def spool_limit() -> int:
    """GEMMAPIPE_SPOOL_MAX in bytes (UsageError when it is not a size), else DEFAULT_SPOOL_MAX."""
    raw = os.environ.get(SPOOL_MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_SPOOL_MAX
    text = raw.upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)].strip()
    if number.isdigit() and int(number) > 0:
        return int(number) * _UNITS[unit]
    raise UsageError("{spool_max_env}", f"is not a size: {raw!r}",
                     "give a number of bytes, or one with K, M, G or T (binary: 4G is 4 GiB)")


def format_size(n: int) -> str:
    """4294967296 -> '4 GiB'; sizes that are not whole KiB stay in bytes."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n:,} bytes"


class _SpoolFile:
    """A temporary file taking a pipe's bytes, registered in _SPOOLS and capped at spool_limit()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.limit = spool_limit()
        self.size = 0
        interrupt.stage("spool")
        try:
            self.fd, self.path = make_temp(prefix="gemmapipe-stdin-", suffix=".spool")
        except OSError as e:
            raise GemmapipeError(name, f"cannot be copied to a temporary file ({e.strerror or e})",
                                 "set TMPDIR to a writable folder, or pass a file instead of a pipe") from None
        _SPOOLS.add(self.path)

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise BadInput(self.name, f"is larger than the {format_size(self.limit)} spool limit",
                           "save it to a file and pass its path, or raise {spool_max_env}")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            folder = os.path.dirname(self.path)
            raise GemmapipeError(self.name, f"cannot be copied to a temporary file in {folder} ({e.strerror or e})",
                                 "set TMPDIR to a folder with room, or pass a file instead of a pipe") from None
        self.size += len(data)

    def pread(self, n: int, pos: int) -> bytes:
        return os.pread(self.fd, n, pos)

    def close(self) -> None:
        """Close the file descriptor; the file stays until remove()."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _SPOOLS.discard(self.path)
        untrack_temp(self.path)

# ---------------------------------------------------------------------------------------- sniffing

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def sniff_image(head: bytes) -> str | None:
    """Image format from magic numbers (a Pillow format name, or 'HEIF'/'AVIF'), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 26 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    if head[:4] == b"qoif":
        return "QOI"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"4567" and head[2:3] in b" \t\r\n":
        return "PPM"
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    return None


def looks_like_text(head: bytes) -> bool:
    """True for text (UTF-8 or mostly printable ASCII, no NUL): playlists, subtitles, scripts, JSON..."""
    if not head or b"\x00" in head:
        return False
    sample = head[:8192]
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3:  # a character cut by the sample's end
            return True
    printable = sum(1 for b in sample if 32 <= b < 127 or b in (9, 10, 13))
    return printable >= 0.97 * len(sample)


def isobmff_layout(head: bytes) -> Literal["moov-first", "mdat-first", "unknown"] | None:
    """For ISO-BMFF (mp4/mov/m4a/3gp): whether the index comes before the media data.

    None when `head` is not ISO-BMFF.  'unknown' when the head ends before either box is reached.
    """
    if len(head) < 8 or head[4:8] not in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"):
        return None
    i = 0
    while i + 8 <= len(head):
        size = int.from_bytes(head[i : i + 4], "big")
        kind = head[i + 4 : i + 8]
        if not all(32 <= c < 127 for c in kind):
            return "unknown"
        if kind in (b"moov", b"moof"):
            return "moov-first"
        if kind == b"mdat":
            return "mdat-first"
        if size == 1:
            if i + 16 > len(head):
                return "unknown"
            size = int.from_bytes(head[i + 8 : i + 16], "big")
        if size < 8:
            return "unknown"
        i += size
    return "unknown"


# ------------------------------------------------------------------------------------- stdin feeds


def _read_full(f: Any, n: int) -> bytes:
    """Read up to n bytes, looping over short reads (pipes), stopping only at EOF."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


class _Feed:
    """A pipe read once, replayable: bytes go to a spool file (or, single-pass, to memory once)."""

    def __init__(self, pipe: Any, head: bytes, *, keep: bool, name: str = STDIN_NAME) -> None:
        self.pipe = pipe
        self.keep = keep
        self.eof = False
        self.lock = threading.Lock()
        self.spool: _SpoolFile | None = _SpoolFile(name) if keep else None
        self.mem = bytearray()
        self.size = 0  # bytes taken from the pipe so far
        self.main_taken = False
        try:
            self._append(head)
        except BaseException:
            self.close()
            raise

    @property
    def spool_path(self) -> str | None:
        return self.spool.path if self.spool is not None else None

    def _append(self, data: bytes) -> None:
        if self.spool is not None:
            self.spool.write(data)
        else:
            self.mem += data
        self.size += len(data)

    def pull(self, n: int, record: bool = True) -> bytes:
        """Next bytes from the pipe (recorded for replay unless record is False)."""
        if self.eof:
            return b""
        data = self.pipe.read(max(n, 1))
        if not data:
            self.eof = True
            return b""
        if record:
            self._append(data)
        else:
            self.size += len(data)
        return bytes(data)

    def read_at(self, pos: int, n: int) -> bytes:
        if self.spool is not None:
            return self.spool.pread(n, pos)
        return bytes(self.mem[pos : pos + n])

    def drain(self) -> None:
        while not self.eof:
            self.pull(_CHUNK * 16)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.remove()
        self.mem = bytearray()


class _FeedReader:
    """A non-seekable reader over a _Feed starting at byte 0 (what PyAV sees as a pipe)."""

    def __init__(self, feed: _Feed, *, main: bool = False) -> None:
        self.feed = feed
        self.pos = 0
        self.main = main  # single-pass main reader: replays memory once, then reads the pipe unrecorded

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        feed = self.feed
        with feed.lock:
            if self.pos < feed.size and (feed.keep or feed.mem):
                data = feed.read_at(self.pos, min(n, feed.size - self.pos))
            elif self.pos < feed.size:
                raise RuntimeError("standard input was already consumed")
            else:
                if self.main and not feed.keep and feed.mem:
                    feed.mem = bytearray()  # replayed: free the probe buffer
                data = feed.pull(n, record=feed.keep or not self.main)
        self.pos += len(data)
        return data


class _SeekableReader:
    """An independent, seekable view of a seekable file object (several can be open at once)."""

    def __init__(self, f: Any, lock: threading.Lock) -> None:
        self.f = f
        self.lock = lock
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        with self.lock:
            self.f.seek(self.pos)
            data = self.f.read(n if n is not None and n >= 0 else -1) or b""
        self.pos += len(data)
        return bytes(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            with self.lock:
                self.pos = self.f.seek(0, 2) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------- Source


@dataclass
class Source:
    """An opened input.  `kind` and `info` are known as soon as open_input returns.

    name:     what to show people: the path as given, or "<stdin>".
    kind:     "image" | "audio" | "video" (from content).
    path:     a real file holding the whole input (the path given, or the spool of a spooled stdin), or None.
    format:   container (ffmpeg demuxer) or image (Pillow) format name.
    spooled:  stdin was copied whole to a temporary file before decoding.
    streamed: stdin is a pipe decoded as it arrives.
    warnings: things worth telling the user that did not stop the work (e.g. NaN samples replaced),
              each recorded once and handed to `on_warn` (the CLI prints it on stderr) as it happens.
    nonfinite_samples: NaN/inf audio samples (at 16 kHz, after the mix to mono) replaced with silence.
    """

    name: str
    kind: Kind
    path: str | None
    format: str
    size: int | None = None
    spooled: bool = False
    streamed: bool = False
    warnings: list[str] = field(default_factory=list)
    nonfinite_samples: int = 0
    info: MediaInfo | None = None
    on_warn: Callable[[str], None] | None = field(default=None, repr=False)
    _feed: _Feed | None = field(default=None, repr=False)
    _seekable: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _warn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _temp: list[str] = field(default_factory=list, repr=False)
    _owned: list[Any] = field(default_factory=list, repr=False)  # files to close with the source
    _sha: str | None = field(default=None, repr=False)
    _passes: int = field(default=0, repr=False)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def seekable(self) -> bool:
        """Whether PyAV can seek in it (a path, a spool, or a seekable stdin; not a live pipe)."""
        return self._av_target(peek=True)[1]

    def warn(self, message: str) -> None:
        """Record a warning (once) and pass it to `on_warn`."""
        with self._warn_lock:
            if message in self.warnings:
                return
            self.warnings.append(message)
        if self.on_warn is not None:
            self.on_warn(message)

    def meta(self) -> dict[str, Any]:
        """What the result's metadata should say about this input's warnings (empty when none)."""
        out: dict[str, Any] = {}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.nonfinite_samples:
            out["nonfinite_samples"] = self.nonfinite_samples
        return out

    def _av_target(self, peek: bool = False) -> tuple[Any, bool]:
        if self.path is not None:
            return "file:" + os.path.abspath(self.path), True
        if self._seekable is not None:
            return _SeekableReader(self._seekable, self._lock), True
        feed = self._feed
        assert feed is not None
        if feed.keep and feed.eof and feed.spool_path:
            return "file:" + feed.spool_path, True
        if peek:
            return None, False
        if not feed.keep:
            if feed.main_taken:
                raise RuntimeError(
                    f"{self.name}: a single-pass input can be decoded only once (open it without single_pass)"
                )
            feed.main_taken = True
            return _FeedReader(feed, main=True), False
        return _FeedReader(feed), False

    def open_av(self) -> InputContainer:
        """A new PyAV input container over the whole input (close it, or use it in a `with`)."""
        target, _ = self._av_target()
        self._passes += 1
        return av_open(target, self.name)

    def _probe_container(self) -> InputContainer:
        """Like open_av, but a single-pass pipe's probe reads are kept in memory for the real pass."""
        feed = self._feed
        if feed is not None and not feed.keep:
            return av_open(_FeedReader(feed), self.name)
        return self.open_av()

    @contextlib.contextmanager
    def open_file(self) -> Iterator[BinaryIO]:
        """A seekable binary file object over the whole input (for Pillow, hashing...)."""
        if self.path is not None:
            with open(self.path, "rb") as f:
                yield f
            return
        if self._seekable is not None:
            yield _SeekableReader(self._seekable, self._lock)  # type: ignore[misc]
            return
        feed = self._feed
        assert feed is not None
        if not feed.keep:
            raise RuntimeError(f"{self.name}: a single-pass input cannot be reread")
        with feed.lock:
            feed.drain()
        assert feed.spool_path is not None
        with open(feed.spool_path, "rb") as f:
            yield f

    def sha256(self) -> str:
        """Hex SHA-256 of the input's bytes (reads a live pipe to its end, into the spool)."""
        if self._sha is None:
            from ..hashing import sha256_stream

            with self.open_file() as f:
                self._sha = sha256_stream(f)
        return self._sha

    # -- requirements ----------------------------------------------------------------------------

    def require(self, *kinds: Kind, purpose: str | None = None) -> None:
        """BadInput unless this input is one of `kinds` (`purpose`, e.g. "describe", names who asks)."""
        if self.kind in kinds:
            return
        want = " or ".join(f"an {k}" if k[0] in "aeiou" else f"a {k}" for k in kinds)
        what = {"image": "an image", "audio": "an audio file", "video": "a video"}[self.kind]
        reason = f"is {what}, not {want}" if purpose is None else f"is {what}, but {purpose} needs {want}"
        # the command that takes what was given
        hint = {"image": "use `{describe_command}`", "audio": "use `{transcribe_command}`",
                "video": "use `{video_command}`"}[self.kind]
        raise BadInput(self.name, reason, hint)

    def require_audio(self) -> None:
        """BadInput unless there is a decodable audio stream (an image, or a video without sound, fails)."""
        if self.kind == "image":
            raise BadInput(self.name, "is an image; it has no audio")
        if self.info is not None and not self.info.has_audio:
            raise BadInput(
                self.name,
                "has no audio stream",
                "this command needs sound; pick a file with an audio track",
            )

    def require_video(self) -> None:
        if self.kind == "audio":
            raise BadInput(self.name, "is an audio file; it has no video stream")

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove temporary files and close what the source opened (open_input does this on exit)."""
        if self._feed is not None:
            self._feed.close()
        for f in self._owned:
            with contextlib.suppress(OSError):
                f.close()
        self._owned.clear()
        for p in self._temp:
            with contextlib.suppress(OSError):
                os.unlink(p)
            _SPOOLS.discard(p)
        self._temp.clear()


# ------------------------------------------------------------------------------------------ PyAV


def av_open(target: Any, name: str) -> InputContainer:
    """av.open for reading, with every failure turned into one BadInput."""
    import av

    try:
        return av.open(target, "r", metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise av_bad_input(e, name) from None
    except (OSError, ValueError) as e:
        raise BadInput(name, f"cannot be opened ({e})") from None


# ------------------------------------------------------------------------------------ open_input


def check_path(spec: str) -> BadInput | None:
    """The BadInput a path given as an input would raise (missing, a directory, empty, unreadable), or None."""
    return _bad_path(spec)


def _bad_path(spec: str) -> BadInput | None:
    p = Path(spec)
    try:
        st = p.stat()
    except FileNotFoundError:
        return BadInput(spec, "no such file")
    except PermissionError:
        return BadInput(spec, "permission denied")
    except OSError as e:
        return BadInput(spec, f"cannot be read ({e.strerror or e})")
    if stat.S_ISDIR(st.st_mode):
        return BadInput(spec, "is a directory, not a media file")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        return BadInput(spec, "is empty (0 bytes)")
    if not os.access(spec, os.R_OK):
        return BadInput(spec, "permission denied")
    return None


def _spool_all(head: bytes, pipe: Any, src: Source) -> str:
    """Copy the whole pipe to a spool file owned by `src` (removed when it closes)."""
    spool = _SpoolFile(src.name)
    src._temp.append(spool.path)
    try:
        spool.write(head)
        while True:
            b = _read_pipe(pipe, 1 << 20, src.name)
            if not b:
                break
            spool.write(b)
    finally:
        spool.close()
    return spool.path


def _read_pipe(pipe: Any, n: int, name: str, *, full: bool = False) -> bytes:
    """Read from a stream; a read that fails (EBADF, EISDIR, EIO...) is BadInput naming the input."""
    try:
        data = _read_full(pipe, n) if full else pipe.read(n)
    except (OSError, ValueError) as e:  # ValueError: a closed file object
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadInput(name, f"cannot be read ({reason})") from None
    return bytes(data or b"")


def _from_stream(pipe: Any, name: str, single_pass: bool) -> Source:
    """A Source over a binary stream (stdin, or a named pipe / device path).  If this fails, whatever
    it spooled is removed before the error leaves."""
    seekable = False
    with contextlib.suppress(Exception):
        seekable = bool(pipe.seekable())
    src = Source(name=name, kind="audio", path=None, format="")
    try:
        if seekable:
            lock = threading.Lock()
            try:
                with lock:
                    pipe.seek(0, 2)
                    size = pipe.tell()
                    pipe.seek(0)
                    head = pipe.read(HEAD_BYTES) or b""
            except (OSError, ValueError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise BadInput(name, f"cannot be read ({reason})") from None
            if not head:
                raise BadInput(name, "is empty (no bytes on standard input)")
            src.size = size
            src._seekable = pipe
            src._lock = lock
            _classify(src, head)
            return src

        head = _read_pipe(pipe, HEAD_BYTES, name, full=True)
        if not head:
            raise BadInput(name, "is empty (no bytes on standard input)")
        layout = isobmff_layout(head)
        while layout == "unknown" and len(head) < MAX_HEAD_BYTES:
            more = _read_pipe(pipe, len(head), name, full=True)
            if not more:
                break
            head += more
            layout = isobmff_layout(head)
        image = sniff_image(head)
        if image is not None or layout in ("mdat-first", "unknown"):
            src.path = _spool_all(head, pipe, src)
            src.spooled = True
            src.size = os.path.getsize(src.path)
        elif looks_like_text(head):
            raise BadInput(name, "is text, not an audio, video or image file")
        else:
            src._feed = _Feed(_GuardedPipe(pipe, name), head, keep=not single_pass, name=name)
            src.streamed = True
        _classify(src, head)
    except BaseException:
        src.close()
        raise
    return src


class _GuardedPipe:
    """A pipe whose read errors are BadInput naming the input (read by _Feed, often inside PyAV)."""

    def __init__(self, pipe: Any, name: str) -> None:
        self.pipe = pipe
        self.name = name

    def read(self, n: int) -> bytes:
        return _read_pipe(self.pipe, n, self.name)


def _classify(src: Source, head: bytes) -> None:
    """Set src.kind, src.format and src.info from the content (raises BadInput)."""
    from .probe import probe_image, probe_media

    image = sniff_image(head)
    if image is not None:
        src.kind = "image"
        src.format = image
        with decode_guard(src.name):
            src.info = probe_image(src, image)
        return
    if looks_like_text(head):
        raise BadInput(src.name, "is text, not an audio, video or image file")
    with decode_guard(src.name):
        src.info = probe_media(src)
    src.kind = src.info.kind  # type: ignore[assignment]
    src.format = src.info.format


def check_stdin() -> BadInput | None:
    """The BadInput reading `-` would raise when standard input is closed (`prog - <&-`), or None."""
    import errno

    if sys.stdin is None:
        return BadInput(STDIN_NAME, "standard input is closed", "pass the file's path, or redirect it: - < FILE")
    try:
        os.fstat(sys.stdin.fileno())
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return BadInput(STDIN_NAME, "standard input is closed", "pass the file's path, or redirect it: - < FILE")
    except (AttributeError, ValueError):  # a stand-in stream without a descriptor (tests, embedding)
        pass
    return None


def _stdin_buffer() -> Any:
    """sys.stdin's binary buffer; BadInput when standard input is closed (`prog - <&-`)."""
    stream = sys.stdin
    buffer = getattr(stream, "buffer", None) if stream is not None else None
    if buffer is None or getattr(buffer, "closed", False):
        raise BadInput(STDIN_NAME, "standard input is closed", "pass the file's path, or redirect it: - < FILE")
    return buffer


@contextlib.contextmanager
def open_input(spec: str, *, stdin: BinaryIO | None = None, single_pass: bool = False,
               warn: Callable[[str], None] | None = None) -> Iterator[Source]:
    """Open `spec` (a path, or "-" for standard input) as a Source; removes temporary files on exit.

    `warn` is called once with each warning recorded on the Source while it is used (Source.warn).

    Raises BadInput for a missing path, a directory, an empty file or stdin, text, random bytes, an
    unreadable or truncated container, an undecodable codec, and images that cannot be used (empty,
    decompression bombs, extreme aspect ratios).  `stdin` replaces sys.stdin.buffer (tests).
    `single_pass`: see the module docstring.
    """
    interrupt.stage("media")
    src: Source | None = None
    try:
        if spec == "-":
            pipe: Any = stdin if stdin is not None else _stdin_buffer()
            src = _from_stream(pipe, STDIN_NAME, single_pass)
        else:
            bad = _bad_path(spec)
            if bad is not None:
                raise bad
            st = os.stat(spec)
            if not stat.S_ISREG(st.st_mode):  # a named pipe or device, e.g. <(cmd) or /dev/stdin
                f = open(spec, "rb")  # noqa: SIM115 - closed below
                try:
                    src = _from_stream(f, spec, single_pass)
                except BaseException:
                    f.close()
                    raise
                src._owned.append(f)
            else:
                with open(spec, "rb") as fh:
                    head = fh.read(HEAD_BYTES)
                src = Source(name=spec, kind="audio", path=spec, format="", size=st.st_size)
                _classify(src, head)
        src.on_warn = warn
        yield src
    finally:
        if src is not None:
            src.close()
