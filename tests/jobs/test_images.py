import io

import numpy as np
import pytest
from featurize.errors import ImageDecodeError
from featurize.images import DEFAULT_MAX_PIXELS, decode_image, has_image_extension
from PIL import Image
from support.fuzz_corpus import write_corpus


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_decodes_a_real_fruits360_jpeg_to_the_requested_size(sample_dir):
    path = next((sample_dir / "Banana").glob("*.jpg"))
    array = decode_image(path.read_bytes(), 224)
    assert array.shape == (224, 224, 3)
    assert array.dtype == np.uint8
    assert array[:5, :5].mean() > 240, "Fruits-360 photos have a white background"


def test_grayscale_becomes_three_equal_channels():
    array = decode_image(encode(Image.new("L", (10, 10), 77), "PNG"), 8)
    assert array.shape == (8, 8, 3)
    assert (array == 77).all()


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 10, 5))
    array = decode_image(encode(image, "PNG"), 10)
    assert (array[0, 0] == [255, 255, 255]).all()
    assert (array[9, 9] == [255, 0, 0]).all()


def test_cmyk_jpeg_is_converted_to_rgb():
    array = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), 16)
    red, green, blue = array[8, 8].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_palette_gif_with_transparency():
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    array = decode_image(encode(image, "GIF", transparency=0), 10)
    assert (array[5, 5] == [0, 128, 0]).all()


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    image = Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert (decode_image(data, 10) == 255).all()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": left half ends on top
    array = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), 20)
    assert array[2, 10, 0] > 200 and array[2, 10, 2] < 60, "top should be red"
    assert array[17, 10, 2] > 200 and array[17, 10, 0] < 60, "bottom should be blue"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a jpeg", "not a recognised image format"),
    ],
)
def test_unreadable_bytes_raise_a_readable_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, 32)


def test_truncated_jpeg_is_an_error(sample_dir):
    data = next((sample_dir / "Kiwi").glob("*.jpg")).read_bytes()
    with pytest.raises(ImageDecodeError, match="corrupt image data"):
        decode_image(data[: len(data) // 2], 32)


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("RGB", (2000, 1000)), "PNG")
    with pytest.raises(ImageDecodeError, match=r"2000x1000 = 2000000 pixels, limit is 1000000"):
        decode_image(data, 32, max_pixels=1_000_000)
    assert decode_image(data, 32, max_pixels=DEFAULT_MAX_PIXELS).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a/b.jpg", True), ("a/B.JPEG", True), ("x.Png", True), ("x.webp", True), ("x.txt", False), ("noext", False)],
)
def test_image_extensions_are_case_insensitive(path, expected):
    assert has_image_extension(path) is expected


def test_every_fuzzed_file_decodes_or_raises_a_decode_error(tmp_path):
    """Hundreds of mutants per format: nothing but ImageDecodeError may escape (any other error fails the task)."""
    paths = write_corpus(tmp_path)
    outcomes = {"decoded": 0, "refused": 0}
    for path in paths:
        try:
            array = decode_image(path.read_bytes(), 32)
        except ImageDecodeError:
            outcomes["refused"] += 1
        else:
            assert (array.shape, array.dtype) == ((32, 32, 3), np.uint8), path
            outcomes["decoded"] += 1
    assert sum(outcomes.values()) == len(paths) == 1000
    assert outcomes["refused"] > 200, outcomes


def test_the_reported_bad_bmp_and_webp_are_decode_errors():
    bmp = bytearray(encode(Image.new("RGB", (8, 8)), "BMP"))
    bmp[14:18] = (200).to_bytes(4, "little")  # a header size no BMP version has
    webp = bytearray(encode(Image.new("RGB", (8, 8), (9, 9, 9)), "WEBP"))
    webp[16:20] = b"\xff\xff\xff\x7f"  # a chunk longer than the file
    for data in (bytes(bmp), bytes(webp)):
        with pytest.raises(ImageDecodeError):
            decode_image(data, 8)


def test_decode_memory_is_checked_from_the_header_before_decoding():
    big_png = encode(Image.new("RGBA", (6000, 6000)), "PNG")
    with pytest.raises(ImageDecodeError, match="too large to decode: RGBA 6000x6000 needs about"):
        decode_image(big_png, 32)
    big_jpeg = encode(Image.new("RGB", (6000, 6000), (200, 10, 10)), "JPEG")
    assert decode_image(big_jpeg, 32).shape == (32, 32, 3), "JPEG decodes at a reduced scale, within the limit"


def test_formats_outside_the_allowed_list_are_refused_whatever_the_name():
    tiff = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "TIFF")

    with pytest.raises(ImageDecodeError, match="not a recognised image format"):
        decode_image(tiff, 32)
