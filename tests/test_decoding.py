"""Decoding images: the pixels OpenCV's IMREAD_COLOR gave (RGB, grey to 3 channels, 16 bits to 8, EXIF
orientation applied), a damaged file as a one-line error naming it with the decoder's reason, and nothing
written to stderr (file descriptor 2) on the way. Images other than TIFF are decoded by Pillow, which raises
with its message; what only OpenCV can decode (TIFF, video) goes through crowdtk.native_stderr.capture,
tested here one thread at a time, so that no test depends on how threads happen to interleave."""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_clean_failure, run, small_checkpoint
from PIL import Image

from crowdtk.data import decode_image
from crowdtk.errors import CrowdtkError
from crowdtk.native_stderr import capture


@pytest.fixture(autouse=True)
def decoder_log_of_this_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The crowdtk.decoders logger without the handler an earlier `-v` command in this process left on it."""
    monkeypatch.setattr(logging.getLogger("crowdtk.decoders"), "handlers", [logging.NullHandler()])


def opencv_rgb(data: bytes) -> np.ndarray:
    """How crowdtk decoded before: cv2.imdecode with IMREAD_COLOR, BGR to RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "OpenCV cannot decode it"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encoded(ext: str, pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def with_orientation(fmt: str, orientation: int) -> bytes:
    pixels = np.random.default_rng(orientation).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def palette_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (24, 40, 3), dtype=np.uint8)).convert("P").save(
        out, "PNG"
    )
    return out.getvalue()


RGB = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
LARGE = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
GREY16 = (np.arange(48 * 80).reshape(48, 80) * 17).astype(np.uint16)
CASES: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: encoded(".jpg", RGB),
    "png": lambda: encoded(".png", RGB),
    "bmp": lambda: encoded(".bmp", RGB),
    "webp": lambda: encoded(".webp", RGB),
    "tiff": lambda: encoded(".tiff", RGB),
    "grey jpeg": lambda: encoded(".jpg", RGB[:, :, 0]),
    "grey png": lambda: encoded(".png", RGB[:, :, 0]),
    "16-bit grey png": lambda: encoded(".png", GREY16),
    "16-bit colour png": lambda: encoded(".png", np.dstack([GREY16, GREY16 // 2, GREY16 // 3])),
    "16-bit grey tiff": lambda: encoded(".tiff", GREY16),
    "png with alpha": lambda: encoded(".png", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    "palette png": palette_png,
    **{f"jpeg orientation {o}": functools.partial(with_orientation, "JPEG", o) for o in range(1, 9)},
    **{f"png orientation {o}": functools.partial(with_orientation, "PNG", o) for o in range(1, 9)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_decoded_pixels_are_the_ones_opencv_gave(case: str) -> None:
    data = CASES[case]()
    image, before = decode_image(data, case), opencv_rgb(data)
    assert image.dtype == np.uint8 and image.shape == before.shape and image.shape[2] == 3
    assert image.flags.writeable and image.flags.c_contiguous
    lossy = case.startswith(("jpeg", "grey jpeg", "webp"))  # two builds of libjpeg-turbo/libwebp may round apart
    assert int(np.abs(image.astype(int) - before.astype(int)).max()) <= (1 if lossy else 0)


def png_bytes(extra: bytes = b"", bad_idat_crc: bool = False, size: int = 32) -> bytes:
    """A size×size RGB PNG written chunk by chunk: ``extra`` chunks go before IDAT, whose CRC can be made wrong."""

    def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
        crc = zlib.crc32(kind + data) if crc is None else crc
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(size * 3)) for y in range(size))
    pixels = zlib.compress(rows)
    idat_crc = zlib.crc32(b"IDAT" + pixels) ^ 1 if bad_idat_crc else None
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + extra
        + chunk(b"IDAT", pixels, idat_crc)
        + chunk(b"IEND", b"")
    )


def flipped(data: bytes) -> bytes:
    damaged = bytearray(data)
    for i in range(len(data) // 3, len(data) // 3 + 40):
        damaged[i] ^= 0x5A
    return bytes(damaged)


DAMAGED = {
    "jpeg cut in half": (
        lambda: encoded(".jpg", RGB)[: len(encoded(".jpg", RGB)) // 2],
        "truncated JPEG (no end-of-image marker)",
    ),
    "png cut in half": (
        lambda: encoded(".png", RGB)[: len(encoded(".png", RGB)) // 2],
        "not a readable image (Truncated File Read)",
    ),
    "png with a bad crc": (
        lambda: png_bytes(bad_idat_crc=True),
        "not a readable image (broken PNG file (bad header checksum in b'IDAT'))",
    ),
    "png with damaged data": (lambda: flipped(encoded(".png", RGB)), "not a readable image (broken PNG file"),
    "bmp cut in half": (
        lambda: encoded(".bmp", RGB)[: len(encoded(".bmp", RGB)) // 2],
        "not a readable image (image file is truncated",
    ),
    "webp cut in half": (lambda: encoded(".webp", RGB)[: len(encoded(".webp", RGB)) // 2], "not a readable image ("),
    "tiff cut in half": (lambda: encoded(".tiff", RGB)[: len(encoded(".tiff", RGB)) // 2], "not a readable image ("),
    "text": (lambda: b"this is not an image\n" * 10, "not a readable image (not a JPEG, PNG, TIFF, WebP or BMP image)"),
    "empty": (lambda: b"", "not a readable image (not a JPEG, PNG, TIFF, WebP or BMP image)"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_image_is_an_error_naming_it_and_nothing_reaches_stderr(
    case: str, capfd: pytest.CaptureFixture[str]
) -> None:
    make, reason = DAMAGED[case]
    data = make()
    capfd.readouterr()
    with pytest.raises(CrowdtkError) as raised:
        decode_image(data, "damaged.img")
    assert str(raised.value).startswith(f"damaged.img: {reason}"), str(raised.value)
    assert "\n" not in str(raised.value) and "0x" not in str(raised.value)  # one line, no object addresses
    assert capfd.readouterr().err == ""


def test_damaged_jpeg_data_decodes_as_libjpeg_always_let_it_and_silently(capfd: pytest.CaptureFixture[str]) -> None:
    """libjpeg decodes past damaged entropy-coded data and only warns; Pillow keeps those warnings to itself."""
    capfd.readouterr()
    assert decode_image(flipped(encoded(".jpg", RGB)), "damaged.jpg").shape == RGB.shape
    assert capfd.readouterr().err == ""


def png_pool(root: Path, **images: bytes) -> Path:
    """A generic-layout data set of the given PNG files (name: bytes), each with two heads."""
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    for name, data in images.items():
        (root / "images" / f"{name}.png").write_bytes(data)
        (root / "points" / f"{name}.txt").write_text("3 4\n10 12\n")
    return root


@pytest.mark.parametrize("stage", ["index", "count"])
def test_a_png_with_a_bad_crc_fails_in_one_line_with_the_decoder_s_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], stage: str
) -> None:
    data = png_pool(tmp_path / "data", good=png_bytes(), bad=png_bytes(bad_idat_crc=True))
    args = (
        ["index", data, "-o", tmp_path / "m.jsonl"]
        if stage == "index"
        else ["count", small_checkpoint(tmp_path / "m.safetensors"), data / "images"]
    )
    capfd.readouterr()
    result = run(*args)
    assert_clean_failure(
        result,
        "bad.png: not a readable image (broken PNG file (bad header checksum in b'IDAT')) (check that",
        tmp_path / "m.jsonl",
    )
    assert result.stderr.count("\n") == 1, result.stderr
    assert capfd.readouterr().err == ""  # nothing went round Python's stderr, to file descriptor 2


def jpeg_with_corrupt_exif() -> bytes:
    """A good JPEG whose EXIF block is cut short: Pillow decodes it and warns (a Python warning) about the tag it
    skips."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 200  # ImageDescription, stored past the block's end once the block is cut
    out = io.BytesIO()
    Image.fromarray(RGB).save(out, "JPEG", exif=exif.tobytes()[:-150])
    return out.getvalue()


def test_a_warning_about_a_decodable_image_is_logged_not_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = png_pool(tmp_path / "data", good=png_bytes())
    (data / "images" / "warns.jpg").write_bytes(jpeg_with_corrupt_exif())
    (data / "points" / "warns.txt").write_text("3 4\n")
    # In a real process, where Python's stderr and the decoders' are the same file descriptor.
    done = subprocess.run(
        [sys.executable, "-m", "crowdtk", "index", str(data), "-o", str(tmp_path / "m.jsonl")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "EXIF" not in done.stderr and "Warning" not in done.stderr and "tag" not in done.stderr, done.stderr
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3
    # The warning is not lost: it is recorded for a -v log (logger crowdtk.decoders), naming the image.
    expected = f"{data / 'images' / 'warns.jpg'}: Tag data larger than file. Skipping tag 270"
    with caplog.at_level(logging.WARNING, logger="crowdtk.decoders"):
        result = run("index", data, "-o", tmp_path / "m2.jsonl", "--workers", "2")
    assert result.exit_code == 0 and "Skipping" not in result.stderr, result.output
    assert [r.getMessage() for r in caplog.records if r.name == "crowdtk.decoders"] == [expected]
    # ... and -v shows it, once, in crowdtk's own words.
    result = run("index", data, "-o", tmp_path / "m3.jsonl", "-v")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Skipping tag") == 1 and f"crowdtk index: decoder: {expected}" in result.stderr


# ---------------------------------------------------------------------- the fd-2 capture (TIFF and video), one thread


def test_capture_returns_what_the_call_wrote_to_fd_2_and_restores_it(capfd: pytest.CaptureFixture[str]) -> None:
    """A decoder's line becomes a message; any other line is written back to stderr; fd 2 is the same file after."""

    def native() -> int:
        os.write(2, b"libpng warning: iCCP: too short\n")
        os.write(2, b"crowdtk's own line\n")
        return 42

    before = os.fstat(2)
    capfd.readouterr()
    assert capture(native) == (42, ["libpng warning: iCCP: too short"])
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "crowdtk's own line\nafter\n"
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_capture_takes_a_real_decoder_s_message(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    image, messages = capture(cv2.imdecode, np.frombuffer(png_bytes(bad_idat_crc=True), np.uint8), cv2.IMREAD_COLOR)
    assert image is None and messages == ["libpng error: IDAT: CRC error"]
    assert capfd.readouterr().err == ""


def test_a_failing_capture_restores_fd_2_and_carries_the_messages(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    with pytest.raises(ZeroDivisionError) as raised:
        capture(lambda: (os.write(2, b"libpng error: IHDR: bad\n"), 1 / 0))
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert getattr(raised.value, "__notes__", None) == ["native stderr: libpng error: IHDR: bad"]


def test_a_tiff_opencv_complains_about_is_decoded_with_the_complaint_logged(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """TIFF goes to OpenCV under the capture: libtiff's complaint is a warning on crowdtk.decoders, not a line on
    stderr."""
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="crowdtk.decoders"):
        image = decode_image(flipped(encoded(".tiff", LARGE)), "damaged.tiff")
    assert image.shape == LARGE.shape
    assert [r.getMessage() for r in caplog.records if r.name == "crowdtk.decoders"] == [
        "damaged.tiff: Using code not yet in table"
    ]
    assert capfd.readouterr().err == ""
