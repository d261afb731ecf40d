"""Image files as phones, scanners and drawing apps write them: read as a viewer shows them, or refused per file.

Every image is generated here; docs/reliability.md's table of inputs names these tests.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import run_script
from PIL import Image

from lib.checkpoints import save_checkpoint
from lib.common import UserError
from lib.images import MAX_IMAGE_PIXELS, find_images, read_image
from model import ResNet18


def a_digit(height: int = 60, width: int = 40) -> np.ndarray:
    """Dark ink on light paper, uint8 [height, width], asymmetric in both directions (a 7 with a foot), so that any
    turn or mirror shows."""
    gray = np.full((height, width), 230, np.uint8)
    gray[8:14, 6:34] = 20  # the top bar
    for row in range(14, 50):  # the diagonal, down to the left
        column = 30 - (row - 14) * 20 // 36
        gray[row, column - 3 : column + 3] = 20
    gray[46:52, 10:22] = 20  # a foot to the right of the stem's end
    return gray


def saved(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


# EXIF orientation o: the transpose a viewer applies to the stored pixels (PIL's exif_transpose), and its inverse,
# which is how the camera stored them.
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", ["jpg", "png", "webp"])  # TIFF: Pillow turns it on loading, itself
def test_every_orientation_a_camera_records_is_read_as_a_viewer_shows_it(tmp_path, orientation, suffix):
    shown = Image.fromarray(a_digit())
    stored = shown.transpose(STORED_AS[orientation]) if orientation > 1 else shown
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    lossless = {"jpg": {"quality": 95}, "webp": {"lossless": True}}.get(suffix, {})
    path = saved(stored, tmp_path / f"photo.{suffix}", exif=exif, **lossless)
    read = read_image(path)
    assert read.shape == (60, 40)  # upright: taller than wide, as shown
    assert (read - torch.from_numpy(a_digit()).float() / 255).abs().mean() < 0.02


def modes(gray: np.ndarray) -> dict[str, tuple[Image.Image, str, dict]]:
    """The digit in every mode Pillow opens, each with a format that stores it."""
    image = Image.fromarray(gray)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # full 16-bit range: 230 -> 59,110
    rgba = image.convert("RGBA")
    transparent = Image.merge("RGBA", [Image.new("L", image.size, 0)] * 3 + [Image.fromarray(255 - gray)])
    return {
        "8-bit grey PNG": (image, "png", {}),
        "16-bit grey PNG": (sixteen, "png", {}),
        "16-bit grey TIFF": (sixteen, "tiff", {}),
        "32-bit integer TIFF": (Image.fromarray(gray.astype(np.int32) * 257), "tiff", {}),
        "32-bit float TIFF": (Image.fromarray(gray.astype(np.float32) / 255), "tiff", {}),
        "palette PNG": (image.convert("P"), "png", {}),
        "palette GIF": (image.convert("P"), "gif", {}),
        "RGB JPEG": (image.convert("RGB"), "jpg", {"quality": 95}),
        "RGBA PNG": (rgba, "png", {}),
        "ink on transparency PNG": (transparent, "png", {}),
        "grey + alpha PNG": (image.convert("LA"), "png", {}),
        "CMYK JPEG": (image.convert("CMYK"), "jpg", {"quality": 95}),
        "CMYK TIFF": (image.convert("CMYK"), "tiff", {}),
        "1-bit PNG": (image.convert("1", dither=Image.Dither.NONE), "png", {}),
        "1-bit TIFF (fax)": (image.convert("1", dither=Image.Dither.NONE), "tiff", {"compression": "group4"}),
        "BMP": (image, "bmp", {}),
        "lossless WebP": (image.convert("RGB"), "webp", {"lossless": True}),
        "PGM": (image, "pgm", {}),
        "PPM": (image.convert("RGB"), "ppm", {}),
    }


@pytest.mark.parametrize("mode", list(modes(a_digit())))
def test_every_mode_and_bit_depth_reads_as_the_same_grey(tmp_path, mode):
    gray = a_digit()
    image, suffix, options = modes(gray)[mode]
    read = read_image(saved(image, tmp_path / f"digit.{suffix}", **options))
    expected = torch.from_numpy(gray).float() / 255
    if mode.startswith("1-bit"):
        expected = (expected > 0.5).float()  # what a 1-bit file can hold
    if mode == "ink on transparency PNG":
        expected = 1 - torch.from_numpy(255 - gray).float() / 255  # black ink as opaque as the ink, on white paper
    tolerance = 0.03 if suffix == "jpg" else 1 / 255
    assert (read - expected).abs().mean() < tolerance, (read - expected).abs().mean()


def test_the_first_frame_of_an_animation_and_the_first_page_of_a_tiff(tmp_path):
    digit, blank = Image.fromarray(a_digit()), Image.new("L", (40, 60), 230)
    for suffix in ("gif", "tiff"):
        path = saved(digit, tmp_path / f"pages.{suffix}", save_all=True, append_images=[blank, blank])
        assert (read_image(path) - torch.from_numpy(a_digit()).float() / 255).abs().mean() < 1 / 255


def png_header_only(path, width: int, height: int):
    """A PNG that says it is width x height pixels (grey, 8-bit) and holds one empty row: what a decompression bomb
    looks like to a reader, without the memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(9000, 9000), (10000, 10000), (20000, 20000)],
                         ids=["over-our-limit", "over-Pillows-warning", "over-Pillows-bomb-limit"])
def test_an_absurdly_large_image_is_refused_in_one_line_before_it_is_decoded(tmp_path, width, height):
    path = png_header_only(tmp_path / "huge.png", width, height)
    with pytest.raises(UserError) as refused:
        read_image(path)
    assert str(refused.value).startswith(f"{path}: ") and "is too large (limit 40,000,000); resize it first" in str(
        refused.value)
    assert width * height > MAX_IMAGE_PIXELS


BAD_FILES = {  # name: (contents, the reason the error line gives)
    "empty.jpg": (b"", "not an image file PIL can read"),
    "notes.png": (b"these are my notes, not a picture\n", "not an image file PIL can read"),
    "IMG_0001.HEIC": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "HEIC files cannot be read here"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_file_that_is_not_a_readable_image_is_refused_naming_it(tmp_path, name):
    contents, reason = BAD_FILES[name]
    (tmp_path / name).write_bytes(contents)
    with pytest.raises(UserError, match=f"^{tmp_path / name}: {reason}"):
        read_image(tmp_path / name)


def test_a_truncated_image_is_refused_naming_it(tmp_path):
    whole = saved(Image.fromarray(a_digit(600, 400)), tmp_path / "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(UserError, match=f"^{cut}: cannot read image"):
        read_image(cut)


def test_a_folder_gives_its_images_in_order_without_hidden_files_but_with_unreadable_formats(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.tiff", "photo.heic", "._a.JPG", ".thumbs/d.png", "readme.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images([str(tmp_path)])] == [
        "a.JPG", "b.png", "photo.heic", "sub/c.tiff"]


def test_each_bad_file_gets_its_own_line_and_every_other_file_is_classified(slow, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    good = [saved(Image.fromarray(a_digit()), folder / "1_good.png"),
            saved(Image.fromarray(a_digit().astype(np.uint16) * 257), folder / "5_sixteen_bit.png")]
    for name, (contents, _) in BAD_FILES.items():
        (folder / name).write_bytes(contents)
    png_header_only(folder / "3_huge.png", 20000, 20000)
    saved(Image.new("L", (50, 50), 200), folder / "4_blank.png")
    (folder / "._1_good.png").write_bytes(b"\0\5\26\7 AppleDouble")  # what a Mac leaves on a USB stick: passed over
    weights = tmp_path / "untrained.pt"
    save_checkpoint(weights, ResNet18())
    result = run_script("predict.py", "--images", str(folder), str(tmp_path / "missing.png"), "--weights",
                        str(weights), "--device", "cpu", "--out", str(tmp_path / "seen.png"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {folder / '3_huge.png'}: 400,000,000 pixels is too large (limit 40,000,000); resize it first",
        f"error: {folder / '4_blank.png'}: no digit found: the image is blank or has too little contrast",
        f"error: {folder / 'IMG_0001.HEIC'}: HEIC files cannot be read here (Pillow has no HEIC decoder); save it "
        "as PNG or JPEG",
        f"error: {folder / 'empty.jpg'}: not an image file PIL can read",
        f"error: {folder / 'notes.png'}: not an image file PIL can read",
        f"error: {tmp_path / 'missing.png'}: cannot read image ([Errno 2] No such file or directory: "
        f"'{tmp_path / 'missing.png'}')",
        "error: 6 of 8 files could not be classified",
    ]
    classified = [line.split(":")[0] for line in result.stdout.splitlines() if " top-3: " in line]
    assert classified == [str(path) for path in good]
    assert (tmp_path / "seen.png").is_file()


@pytest.mark.parametrize("shape", [(1, 1_000_000), (1_000_000, 1), (3, 300_000), (2, 2), (1, 1)])
def test_an_absurd_shape_is_read_or_refused_in_one_line_without_running_out_of_memory(shape):
    from lib.images import digit_to_mnist

    strip = torch.ones(shape)
    strip.view(-1)[strip.numel() // 2 : strip.numel() // 2 + 1000] = 0  # a stretch of ink in the middle
    try:
        assert digit_to_mnist(strip).shape == (28, 28)
    except UserError as error:
        assert str(error).startswith("no digit found")
