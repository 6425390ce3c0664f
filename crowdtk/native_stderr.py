"""What OpenCV's native decoders print, captured instead of leaking onto crowdtk's stderr.

Used only where no decoder hands its messages to the program: videos (``cv2.VideoCapture``:
FFmpeg, OpenCV's AVI reader) and TIFF images (libtiff prints its errors in Pillow too). Other images
are decoded by Pillow, which raises with the decoder's message (:func:`crowdtk.data.decode_image`),
so that decoding them touches no process-wide state.

OpenCV's codecs write straight to file descriptor 2, below Python's ``sys.stderr``: libpng's
default handlers (``libpng warning: iCCP: known incorrect sRGB profile``, ``libpng error: IDAT:
CRC error``), libjpeg's warnings (``Corrupt JPEG data: premature end of data segment``), FFmpeg's
``av_log`` (``[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0…] moov atom not found``), OpenCV's AVI reader
(``Unexpected element. Expected: LIST. …``) and OpenCV's own logger (``[ WARN:0@0.08] global
grfmt_png.cpp:793 … PNG input buffer is incomplete``, TIFF and JPEG 2000 errors). Of OpenCV's
settings (checked with opencv-python-headless 5.0.0), ``OPENCV_LOG_LEVEL`` and
``cv2.utils.logging.setLogLevel`` silence only OpenCV's own logger, not libpng, libjpeg, FFmpeg or
the AVI reader; ``OPENCV_FFMPEG_LOGLEVEL`` (and ``OPENCV_FFMPEG_DEBUG``) install OpenCV's FFmpeg
callback, which prints to *stdout* (``[OPENCV:FFMPEG:16] …``). None of them hands the text to the
program, so :func:`capture` points fd 2 at a temporary file for the length of one native call and
reads back what landed there: the decoder's lines become messages for the caller (the reason in a
one-line :class:`~crowdtk.errors.CrowdtkError`, or :func:`log_messages` records for a ``-v`` log).

Thread safety: fd 2 belongs to the whole process, so captures are serialised by one lock (two
overlapping captures would each save and restore the other's redirection, and could not tell whose
message is whose); decodes under :func:`capture` therefore run one at a time. Other threads keep
running while fd 2 is redirected; whatever they write there (crowdtk's own log lines, a progress
bar) does not look like a decoder's message and is written back to the real stderr as soon as the
call returns, so it is delayed by at most one decode. The one exception: a decoder that writes a
message in pieces (libpng does), and a line another thread writes between those pieces lands inside
the decoder's line; it then goes with that message (the error, or the ``-v`` log) instead of to
stderr. That depends on timing, which is why images other than TIFF no longer pass through here. A
decoder line of a kind not listed in ``_DECODER_LINE`` is passed through the same way: it reaches
stderr as it did before.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

#: Decoder messages are recorded here (level WARNING), never printed by the library: a command's
#: ``-v`` log, or an application's logging configuration, shows them.
log = logging.getLogger("crowdtk.decoders")
log.addHandler(logging.NullHandler())  # no "last resort" printing to stderr when nobody listens

# Lines in the shapes this OpenCV build's native code prints (anchored at the start of a line).
_DECODER_LINE = re.compile(
    r"""(?:
        libpng\ (?:warning|error):                                        # libpng's default handlers
      | \[\s*(?:FATAL|ERROR|WARN|INFO|DEBUG|VERBOSE)\b[^\]]*\]            # OpenCV's logger
      | \[[^\]\n]*\ @\ 0x[0-9a-fA-F]+\]                                   # FFmpeg's av_log: [component @ 0x…]
      | Corrupt\ JPEG\ data | Premature\ end\ of\ JPEG\ file              # libjpeg's warnings (jerror.h, JWRN_*)
      | Invalid\ SOS\ parameters | Inconsistent\ progression\ sequence
      | Unknown\ Adobe\ color\ transform | Application\ transferred\ too\ many\ scanlines
      | Warning:\ unknown\ JFIF\ revision
      # OpenCV's AVI reader
      | Unexpected\ (?:end\ of\ file\ while\ searching|element\.\ Expected|list\ type\.\ Expected)
    )""",
    re.X,
)
_OPENCV_LOG = re.compile(
    r"\[[^\]]*\]\s+\S+\s+\S+:\d+\s+\S+\s+(?P<message>.+)"
)  # [ WARN:0@0.08] global file.cpp:12 function message
_FFMPEG_LOG = re.compile(r"\[(?P<who>[^\]]*?) @ 0x[0-9a-fA-F]+\]\s*(?P<message>.*)")
_OPENCV_NOISE = (
    re.compile(r"\w+\('[^']*'\): "),  # imdecode_('')
    re.compile(
        r"OpenCV\([^)]*\) \S+:\d+: error: \(-?\d+:[^)]*\) "
    ),  # OpenCV(5.0.0) /io/…/bitstrm.cpp:59: error: (-2:Unspecified error)
    re.compile(r" in function '[^']*'"),
)

_lock = threading.RLock()
_capturing = False  # True while the thread holding _lock has fd 2 redirected (a nested capture is a plain call)
_sink: int | None = None  # the temporary file fd 2 points at during a capture; made once per process


def _sink_fd() -> int:
    global _sink
    if _sink is None:
        # Unlinked at once, not inherited by subprocesses (PEP 446), truncated after every capture.
        _sink, name = tempfile.mkstemp(prefix="crowdtk-native-stderr-")
        os.unlink(name)
    return _sink


def _after_fork_in_child() -> None:
    """A child gets its own lock and temporary file (sharing the parent's file offset would mix the two)."""
    global _lock, _sink, _capturing
    _lock, _sink, _capturing = threading.RLock(), None, False


if hasattr(os, "register_at_fork"):
    # Holding the lock across fork() means no child starts with fd 2 still pointing at the sink.
    os.register_at_fork(
        before=lambda: _lock.acquire(), after_in_parent=lambda: _lock.release(), after_in_child=_after_fork_in_child
    )


def _drain(sink: int) -> bytes:
    end = os.lseek(sink, 0, os.SEEK_CUR)
    if end == 0:
        return b""
    chunks, offset = [], 0
    while offset < end:
        chunk = os.pread(sink, end - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    os.ftruncate(sink, 0)
    os.lseek(sink, 0, os.SEEK_SET)
    return b"".join(chunks)


def capture(call: Callable[..., T], *args: object) -> tuple[T, list[str]]:
    """``call(*args)`` with what native code writes to fd 2 meanwhile taken off stderr: (its result,
    the decoder's messages, tidied by :func:`tidy`). Anything else that reached fd 2 in that time
    (another thread's output) is written back to stderr. If the call raises, its messages are
    attached to the exception as a note.

    Cost, measured (best of 7 runs, on the project's 2-core machine with a benchmark running beside):
    2 µs per call when the decoder prints nothing (the lock, a flush of ``sys.stderr``, dup, two
    dup2, close and one lseek), about 18 µs more when it printed a line (reading back, truncating
    and sorting the text); decoding a 64x64 PNG takes 30-40 µs and a 1024x768 JPEG 4.5 ms, which
    the capture does not measurably change.
    """
    global _capturing
    with _lock:
        if _capturing:  # nested in a capture of this thread: the outer one collects the text
            return call(*args), []
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (closed): nothing to protect
            return call(*args), []
        try:
            sink = _sink_fd()
        except OSError:  # no temporary file to be had: decode as before, uncaptured
            os.close(saved)
            return call(*args), []
        try:  # Python's own pending stderr text goes out before the redirection, not into the sink
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed or odd sys.stderr is not the decoder's business
            pass
        error: BaseException | None = None
        try:
            os.dup2(sink, 2)
            _capturing = True
            result = call(*args)
        except BaseException as exc:  # KeyboardInterrupt too: fd 2 is restored first
            error = exc
        finally:
            _capturing = False
            os.dup2(saved, 2)
            os.close(saved)
            messages, foreign = _split(_drain(sink))
    _write_back(foreign)
    if error is not None:
        if messages and hasattr(error, "add_note"):  # Python 3.11+
            error.add_note("native stderr: " + " | ".join(messages))
        raise error
    return result, messages


def _write_back(data: bytes) -> None:
    """Text that is not a decoder's (another thread's output) goes to stderr, where it was going."""
    while data:
        try:
            data = data[os.write(2, data) :]
        except OSError:
            return  # stderr is gone (a closed pipe): as lost as it would have been without the capture


def _split(data: bytes) -> tuple[list[str], bytes]:
    """The decoder's lines (tidied) and the rest, byte for byte."""
    messages: list[str] = []
    foreign: list[bytes] = []
    after_decoder = False
    for raw in data.splitlines(keepends=True):
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if _DECODER_LINE.match(line):
            messages.append(tidy(line))
            after_decoder = True
        elif after_decoder and not line.strip():
            continue  # OpenCV's logger ends a message that itself ends with a newline with an empty line
        else:
            foreign.append(raw)
            after_decoder = False
    return [m for m in messages if m], b"".join(foreign)


def tidy(line: str) -> str:
    """A decoder line without the parts that say nothing to the user (pointers, source locations)."""
    line = line.strip()
    if line.startswith("[") and (ffmpeg := _FFMPEG_LOG.fullmatch(line)):
        line = f"{ffmpeg['who']}: {ffmpeg['message']}"
    elif line.startswith("[") and (opencv := _OPENCV_LOG.fullmatch(line)):
        line = opencv["message"]
        for noise in _OPENCV_NOISE:
            line = noise.sub("", line)
    # Unprintable bytes (the AVI reader prints a garbage four-character code as it found it).
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in line).strip()


def summary(messages: Iterable[str], limit: int = 3) -> str:
    """Distinct messages, in order, joined for a one-line error (at most ``limit``, then how many more)."""
    distinct = list(dict.fromkeys(messages))
    more = f"; and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return "; ".join(distinct[:limit]) + more


def log_messages(source: str, messages: list[str]) -> None:
    """Record a decoder's warnings about ``source`` (a file that was decoded all the same)."""
    if messages:
        log.warning("%s: %s", source, summary(messages), extra={"source": source, "decoder_messages": list(messages)})
