"""A crafted image corpus against ``load_image`` and the loaders built on it (``RecordDataset``, the MIM
``ImageSource``): each odd file decodes to the right pixels, or is a counted skip / an error naming the file.

The corpus (written by Pillow, or byte by byte for the bomb): zero-byte, truncated PNG and JPEG, not an image,
a 20000x20000 PNG of a few hundred bytes (decompression bomb), CMYK JPEG, 16-bit grey PNG, LA PNG, palette PNG
with transparency, EXIF-rotated JPEG, animated GIF; plus hypothesis-damaged PNG/JPEG/GIF bytes.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from beit3_plugins.data.readers import CorruptImageError, SkipCounter, load_image

CASES = 150


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(width=20000, height=20000) -> bytes:
    """A valid-looking PNG header declaring width x height 8-bit grey pixels (400 MP), with a tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _quadrants(size=32) -> Image.Image:
    """Red top-left quadrant on blue: shows where a rotation put the top-left corner."""
    pixels = np.zeros((size, size * 2, 3), np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[: size // 2, : size // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


@pytest.fixture
def corpus(tmp_path):
    files = {}

    def put(name, data):
        files[name] = tmp_path / name
        files[name].write_bytes(data)

    png = _encoded(_quadrants(), "PNG")
    jpeg = _encoded(_quadrants(), "JPEG", quality=95)
    put("zero.png", b"")
    put("truncated.png", png[: len(png) // 2])
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("text.jpg", b"this is not an image\n")
    put("bomb.png", decompression_bomb())
    put("cmyk.jpg", _encoded(_quadrants().convert("CMYK"), "JPEG", quality=95))
    put("grey16.png", _encoded(Image.fromarray(np.full((8, 8), 40000, np.uint16)), "PNG"))
    put("la.png", _encoded(Image.new("LA", (8, 8), (200, 128)), "PNG"))
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    put("palette_alpha.png", _encoded(palette, "PNG", transparency=0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    put("exif_rotated.jpg", _encoded(_quadrants(), "JPEG", quality=95, exif=exif.tobytes()))
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    put("animated.gif", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0))
    return files


BAD = {"zero.png": "corrupt_image", "truncated.png": "corrupt_image", "truncated.jpg": "corrupt_image",
       "text.jpg": "corrupt_image", "bomb.png": "decompression_bomb"}


def test_bad_images_are_counted_skips_or_errors_naming_the_file(corpus, tmp_path):
    skips = SkipCounter()
    for name, reason in BAD.items():
        with pytest.raises(CorruptImageError) as info:
            load_image(corpus[name])
        assert str(corpus[name]) in str(info.value)
        assert load_image(corpus[name], skips) is None
    assert skips.as_dict() == {"corrupt_image": 4, "decompression_bomb": 1}
    assert "bomb.png" in " ".join(skips.examples["decompression_bomb"])
    assert load_image(tmp_path / "absent.jpg", skips) is None and skips.count("missing_image") == 1


def test_odd_modes_decode_to_the_right_pixels(corpus):
    cmyk = np.asarray(load_image(corpus["cmyk.jpg"]))
    assert cmyk.shape == (32, 64, 3)
    assert np.abs(cmyk[4, 4].astype(int) - (255, 0, 0)).max() < 40      # red stays red
    assert np.abs(cmyk[20, 40].astype(int) - (0, 0, 255)).max() < 40    # blue stays blue
    grey16 = np.asarray(load_image(corpus["grey16.png"]))
    assert (grey16 == 40000 // 257).all()  # scaled to 8 bits (Pillow alone clips it to 255)
    la = np.asarray(load_image(corpus["la.png"]))
    assert (la == 200).all()
    palette = np.asarray(load_image(corpus["palette_alpha.png"]))
    assert (palette == (0, 255, 0)).all()
    assert np.asarray(load_image(corpus["la.png"], mode="L")).shape == (8, 8)


def test_exif_orientation_is_applied(corpus):
    image = np.asarray(load_image(corpus["exif_rotated.jpg"]))
    assert image.shape == (64, 32, 3)  # 90 degrees: width and height swap
    # rotated clockwise for display: the red top-left quadrant is now at the top right
    assert image[4, 28, 0] > 200 and image[4, 28, 2] < 60
    assert image[60, 4, 2] > 200


def test_animated_gif_gives_its_first_frame(corpus):
    image = np.asarray(load_image(corpus["animated.gif"]))
    assert image.shape == (8, 8, 3) and (image == (255, 0, 0)).all()


def test_loaders_count_and_skip_a_bad_corpus(corpus):
    """The MIM image source and the record datasets go past every bad file, counting each one."""
    from beit3_plugins.data.datasets import RecordDataset
    from beit3_plugins.pretraining.data import ImageSource

    paths = [str(corpus[name]) for name in sorted(corpus)]
    source = ImageSource(paths, transform=lambda im: np.asarray(im.resize((16, 16))), grid=(2, 2))
    rng = np.random.default_rng(0)
    loaded = {source.load(i, rng)[1] for i in range(len(paths))}
    assert {paths[i].rsplit("/", 1)[1] for i in loaded} == set(corpus) - set(BAD)
    assert source.skips.count() >= len(BAD)

    class Images(RecordDataset):
        def _item(self, record):
            image = self._image(record)
            return None if image is None else {"image": image}

    dataset = Images(paths)
    assert all(dataset[i]["image"].mode == "RGB" for i in range(len(paths)))
    assert dataset.skips.as_dict() == {"corrupt_image": 4, "decompression_bomb": 1}  # each bad file once


@st.composite
def damaged_image(draw):
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF"]))
    data = bytearray(_encoded(Image.new("RGB", (draw(st.integers(1, 24)), draw(st.integers(1, 24))),
                                        (draw(st.integers(0, 255)), 40, 90)), fmt))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        junk = draw(st.binary(min_size=1, max_size=6))
        if kind == "truncate":
            del data[max(at, 1):]
        elif kind == "overwrite":
            data[at:at + len(junk)] = junk
        else:
            data[at:at] = junk
    return bytes(data)


@settings(max_examples=CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=damaged_image())
def test_fuzz_damaged_image_bytes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("img") / "x.img"
    path.write_bytes(content)
    skips = SkipCounter()
    image = load_image(path, skips)
    if image is None:
        assert skips.count() == 1 and str(path) in skips.examples[next(iter(skips.counts))][0]
    else:
        assert image.mode == "RGB" and image.size[0] * image.size[1] > 0
