"""One decoder, every path: a crafted image set (EXIF-rotated, 16-bit, palette + alpha, CMYK, greyscale,
animated, decompression bomb) read as files by the dataset readers (pretraining's image-folder source), as
bytes from a tar shard (web-shard pretraining) and by the inference pipelines gives the documented pixels
(policy "viewer", ``beit3_plugins/data/images.py``) or the same counted skip; the "official" policy decodes as
the reference's torchvision ``default_loader``; the array contract refuses 0..255 floats."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from beit3_plugins.data import SkipCounter
from beit3_plugins.data.images import CorruptImageError, load_image
from beit3_plugins.pipelines.base import Pipeline
from beit3_plugins.pretraining.data import ImageSource, ShardedImageSource
from beit3_plugins.pretraining.shards import ShardSet
from beit3_plugins.zoo import ZooEntry, ZooFile

RNG = np.random.default_rng(0)
BASE = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)          # 4 rows x 6 columns: orientation is visible


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _crafted():
    """name -> (encoded bytes, the documented RGB pixels under the "viewer" policy)."""
    out = {}
    exif = Image.Exif()
    exif[0x0112] = 6                                               # "rotate 90 degrees clockwise to display"
    out["exif_rotated"] = (_png(Image.fromarray(BASE), exif=exif), np.rot90(BASE, k=-1))
    grey16 = np.array([[0, 257, 65535], [1000, 30000, 65000]], dtype=np.uint16)
    out["grey_16bit"] = (_png(Image.fromarray(grey16)), np.repeat((grey16 // 257).astype(np.uint8)[..., None], 3, -1))
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette.putdata([0, 1, 2, 2, 1, 0])
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    out["palette_alpha"] = (_png(palette, transparency=1), colours[np.array([[0, 1, 2], [2, 1, 0]])])
    cmy = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    cmyk = np.concatenate([cmy, np.zeros((3, 5, 1), np.uint8)], -1)  # K = 0: RGB = 255 - CMY
    out["cmyk"] = (_png(Image.fromarray(cmyk, mode="CMYK"), format="TIFF"), 255 - cmy)
    grey = RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    out["greyscale"] = (_png(Image.fromarray(grey)), np.repeat(grey[..., None], 3, -1))
    frames = [Image.new("RGB", (4, 4), c) for c in ((200, 10, 10), (10, 10, 200))]
    out["animated"] = (_png(frames[0], save_all=True, append_images=frames[1:]), np.full((4, 4, 3), (200, 10, 10), np.uint8))
    out["bomb"] = (_png(Image.new("RGB", (64, 64), (1, 2, 3))), None)
    return out


CRAFTED = _crafted()


@pytest.fixture
def small_bomb_limit(monkeypatch):
    """64 x 64 = 4096 pixels is over twice this limit: Pillow raises DecompressionBombError for the bomb."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name, (data, _) in CRAFTED.items():
        if name != "bomb":
            with Image.open(io.BytesIO(data)) as image:
                assert image.width * image.height <= 1000, name


def _files(tmp_path):
    paths = {}
    for name, (data, _) in CRAFTED.items():
        paths[name] = tmp_path / f"{name}.{'tif' if name == 'cmyk' else 'png'}"
        paths[name].write_bytes(data)
    return paths


def _shard(tmp_path) -> str:
    path = tmp_path / "crafted-0.tar"
    with tarfile.open(path, "w") as archive:
        for name, (data, _) in CRAFTED.items():
            info = tarfile.TarInfo(f"{name}.{'tif' if name == 'cmyk' else 'png'}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def _pipeline() -> Pipeline:
    model = torch.nn.Identity()
    model.zoo_entry = ZooEntry(name="decoder_probe", family="beit3", task="retrieval", backbone="beit3_tiny",
                               weights=ZooFile("file:///nonexistent/decoder_probe.pth"))
    return Pipeline(model, lambda image: image, None, device=torch.device("cpu"), dtype=torch.float32)


def test_every_path_gives_the_documented_pixels_or_the_same_counted_skip(tmp_path, small_bomb_limit):
    names = list(CRAFTED)
    files = _files(tmp_path)
    rng = np.random.default_rng(0)
    folder = ImageSource([str(files[n]) for n in names], np.asarray, (2, 2))               # readers: files
    shards = ShardedImageSource(ShardSet([_shard(tmp_path)], "tar", SkipCounter()), np.asarray, (2, 2))  # tar bytes
    pipe = _pipeline()                                                                      # pipelines
    assert len(shards) == len(names)
    for i, name in enumerate(names):
        expected = CRAFTED[name][1]
        from_folder, at = folder.load(i, rng)
        from_shard, _ = shards.load(i, rng)
        if expected is None:    # the bomb: counted, and the next sample (the first, wrapping) comes instead
            assert at == 0
            for got in (from_folder, from_shard):
                np.testing.assert_array_equal(got, CRAFTED[names[0]][1])
            with pytest.raises(CorruptImageError, match="refused to decode"):
                pipe.load_image(str(files[name]))
            continue
        from_pipeline = np.asarray(pipe.load_image(str(files[name])))
        for got in (from_folder, from_shard, from_pipeline, np.asarray(load_image(CRAFTED[name][0]))):
            assert got.dtype == np.uint8 and got.shape == expected.shape, name
            np.testing.assert_array_equal(got, expected, err_msg=name)
    assert folder.skips.as_dict() == shards.skips.as_dict() == {"decompression_bomb": 1}


def test_official_policy_decodes_as_the_reference_loader(tmp_path, small_bomb_limit):
    """microsoft/unilm beit3/datasets.py: torchvision's default_loader = PIL open + convert("RGB")."""
    files = _files(tmp_path)
    for name in CRAFTED:
        if name == "bomb":
            skips = SkipCounter()
            assert load_image(files[name], skips, policy="official") is None
            assert skips.as_dict() == {"decompression_bomb": 1}
            continue
        with open(files[name], "rb") as fh:
            reference = np.asarray(Image.open(fh).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(load_image(files[name], policy="official")), reference, err_msg=name)
    assert np.asarray(load_image(files["exif_rotated"], policy="official")).shape == BASE.shape   # not rotated
    clipped = np.asarray(load_image(files["grey_16bit"], policy="official"))
    assert (clipped == 255).sum() > (CRAFTED["grey_16bit"][1] == 255).sum()        # Pillow clips 16 bits at 255
    with pytest.raises(ValueError, match="unknown image decode policy"):
        load_image(files["greyscale"], policy="exif")


def test_array_and_pil_inputs_follow_the_contract():
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(rgb / 255.0)), rgb)           # floats mean [0, 1]
    np.testing.assert_array_equal(np.asarray(load_image(rgb.astype(np.uint16) * 257)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(np.dstack([rgb, np.zeros((3, 4), np.uint8)]))), rgb)
    assert np.asarray(load_image(rgb[..., 0])).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="looks like 0..255 floats"):
        load_image(rgb.astype(np.float32))
    for bad, message in ((np.full((2, 2, 3), np.nan), "NaN"), (-np.ones((2, 2)), "values down to"),
                         (np.zeros((2, 2, 5), np.uint8), "H x W x 3"), (np.zeros((2, 2), np.int64), "got int64")):
        with pytest.raises(ValueError, match=message):
            load_image(bad)
    with pytest.raises(TypeError, match="give a path"):
        load_image(3)
    # a PIL image that still carries its EXIF tag is shown upright too
    with Image.open(io.BytesIO(CRAFTED["exif_rotated"][0])) as opened:
        np.testing.assert_array_equal(np.asarray(load_image(opened)), CRAFTED["exif_rotated"][1])
    skips = SkipCounter()
    assert load_image(b"not an image", skips, where="shard:key") is None
    assert skips.as_dict() == {"corrupt_image": 1} and "shard:key" in skips.examples["corrupt_image"][0]


def test_a_task_config_selects_the_official_policy_for_its_datasets(tmp_path):
    """``task.image_decode=official`` reaches the datasets the trainer builds (``VlTask.dataset``)."""
    from beit3_plugins.data.datasets import RecordDataset
    from beit3_plugins.vl_tasks.base import TaskConfigBase, VlTask

    path = tmp_path / "exif.png"
    path.write_bytes(CRAFTED["exif_rotated"][0])

    class Items(RecordDataset):
        def _item(self, record):
            image = self._image(record)
            return None if image is None else {"image": np.asarray(image)}

    class Task(VlTask):
        def build_dataset(self, split, train=None):
            return Items([str(path)])

    assert Task(TaskConfigBase()).dataset("train")[0]["image"].shape == CRAFTED["exif_rotated"][1].shape   # viewer
    official = Task(TaskConfigBase(image_decode="official")).dataset("train")[0]["image"]
    np.testing.assert_array_equal(official, BASE)                                        # as stored, not rotated
