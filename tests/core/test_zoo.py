"""Zoo registry and download: the published lists are complete and consistent, and downloads from a loopback
server are cached, atomic, resumable, checked and fail with errors naming the URL and the target path."""
import hashlib
import json
import os

import pytest

from beit3_plugins import zoo
from beit3_plugins.zoo import ZooDownloadError, ZooEntry, ZooFile, download_file, get_pretrained, list_pretrained

from zoo_server import ZooServer


def test_published_lists_are_complete():
    """29 BEiT-3 checkpoints + beit3.spm (microsoft/unilm beit3/README.md) and the 3 BEiT v2 VQ-KD tokenizers."""
    beit3 = [get_pretrained(n) for n in list_pretrained(family="beit3")]
    checkpoints = [e for e in beit3 if e.task != "tokenizer"]
    assert len(checkpoints) == 29
    counts = {t: sum(e.task == t for e in checkpoints) for t in {e.task for e in checkpoints}}
    assert counts == {"pretrain": 4, "image_classification": 4, "vqa": 5, "nlvr2": 4, "captioning": 6,
                      "retrieval": 6}                                  # 2 ITC-tuned dual encoders + 4 fine-tuned
    assert get_pretrained("beit3_base_itc_patch16_224").task == "retrieval"
    for e in checkpoints:
        assert e.weights.url == "https://github.com/addf400/files/releases/download/beit3/" + e.name + ".pth"
        assert e.tokenizer.kind == "sentencepiece" and e.tokenizer.file.filename == "beit3.spm"
        assert e.backbone in ("beit3_base", "beit3_large") and (e.backbone == "beit3_large") == ("large" in e.name)
        assert e.base is None or e.base in list_pretrained()
    vqa = get_pretrained("beit3_large_indomain_patch16_768_vgqaaug_vqa")
    assert (vqa.image_size, vqa.normalize_output, vqa.head["num_answers"]) == (768, False, 3129)
    assert get_pretrained("beit3_base_patch16_224_in1k").image_transform == "imagenet"
    assert get_pretrained("beit3_base_patch16_480_coco_captioning").tokenizer.max_length == 32
    vqkd = list_pretrained(task="visual_tokenizer")
    assert len(vqkd) == 3 and all(get_pretrained(n).weights.sha256_prefix for n in vqkd)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(zoo.UnknownPretrainedError, match="beit3_base_patch16_480_vqa"):
        get_pretrained("beit3_base_patch16_480_vqa2")


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    data = os.urandom(3 * (1 << 20) + 123)   # three chunks and a bit: resumes land mid-file
    (root / "weights.pth").write_bytes(data)
    with ZooServer(root) as server:
        yield server, data, hashlib.sha256(data).hexdigest()


def test_download_is_cached_and_recorded(served, tmp_path, monkeypatch):
    server, data, sha = served
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    file = ZooFile(server.url + "/weights.pth", sha256=sha, size=len(data))
    path = download_file(file, progress=False)
    assert path == tmp_path / "cache" / "weights.pth" and path.read_bytes() == data
    assert json.loads((path.parent / "weights.pth.sha256").read_text())["sha256"] == sha
    assert not (path.parent / "weights.pth.part").exists()
    download_file(file, progress=False)
    assert len(server.requests) == 1     # second call served from the cache


def test_interrupted_download_resumes_with_range(served, tmp_path):
    server, data, sha = served
    file = ZooFile(server.url + "/weights.pth", sha256=sha)
    server.cut_after = (1 << 20) + 5000
    with pytest.raises(ZooDownloadError, match="partial file .*resumes"):
        download_file(file, cache=tmp_path, progress=False)
    part = tmp_path / "weights.pth.part"
    assert part.stat().st_size == (1 << 20) + 5000 and not (tmp_path / "weights.pth").exists()
    path = download_file(file, cache=tmp_path, progress=False)
    assert path.read_bytes() == data and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={(1 << 20) + 5000}-"


def test_server_without_range_restarts_cleanly(served, tmp_path):
    server, data, sha = served
    server.honour_range = False
    (tmp_path / "weights.pth.part").write_bytes(b"stale bytes from another file")
    path = download_file(ZooFile(server.url + "/weights.pth", sha256=sha), cache=tmp_path, progress=False)
    assert path.read_bytes() == data


def test_wrong_hash_discards_the_download(served, tmp_path):
    server, data, _ = served
    cache = tmp_path / "cache"
    with pytest.raises(ZooDownloadError, match="sha256 .*expected 00"):
        download_file(ZooFile(server.url + "/weights.pth", sha256="00" * 32), cache=cache, progress=False)
    assert list(cache.iterdir()) == []
    with pytest.raises(ZooDownloadError, match="does not start with deadbeef"):
        download_file(ZooFile(server.url + "/weights.pth", filename="w-deadbeef.pth"), cache=cache, progress=False)


def test_damaged_cache_file_is_detected(served, tmp_path):
    server, data, _ = served
    file = ZooFile(server.url + "/weights.pth")
    path = download_file(file, cache=tmp_path, progress=False)
    path.write_bytes(data[:-1] + b"x")          # same size, other content
    with pytest.raises(ZooDownloadError, match="damaged"):
        download_file(file, cache=tmp_path, progress=False, verify=True)
    path.write_bytes(data[:10])
    with pytest.raises(ZooDownloadError, match="cached file changed"):
        download_file(file, cache=tmp_path, progress=False)


def test_offline_and_unreachable_errors_name_url_and_path(tmp_path, monkeypatch):
    entry = get_pretrained("beit3_base_patch16_224")
    monkeypatch.setenv(zoo.OFFLINE_ENV, "1")
    with pytest.raises(ZooDownloadError) as info:
        download_file(entry.weights, cache=tmp_path)
    assert entry.weights.url in str(info.value) and str(tmp_path / "beit3_base_patch16_224.pth") in str(info.value)
    monkeypatch.delenv(zoo.OFFLINE_ENV)
    # a closed loopback port stands in for no network (no test reaches outside the machine)
    with pytest.raises(ZooDownloadError, match=r"cannot download http://127\.0\.0\.1:9/beit3_base_patch16_224\.pth"):
        download_file(entry.weights, cache=tmp_path, mirror="http://127.0.0.1:9", timeout=5)


def test_mirror_replaces_the_published_host(served, tmp_path):
    server, data, _ = served
    published = ZooFile("https://github.com/addf400/files/releases/download/beit3/weights.pth")
    assert download_file(published, cache=tmp_path, mirror=server.url, progress=False).read_bytes() == data


def test_entry_type_carries_vlmo_files():
    """VLMo entries (added by their own module) need only a WordPiece tokenizer spec; nothing BEiT-3 specific."""
    vocab = ZooFile("https://example.invalid/vocab.txt")
    entry = ZooEntry("vlmo_test_twin", "vlmo", "vqa", ZooFile("https://example.invalid/vlmo.pt"), backbone="vlmo_tiny",
                     tokenizer=zoo.TokenizerSpec("wordpiece", vocab, max_length=40), head={"num_answers": 3129})
    assert entry.files()[1] is vocab
    # an entry's task is a TASKS name (third-party tasks included), checked by the one lookup that builds it
    from beit3_plugins.registry import TASKS, UnknownComponentError

    with pytest.raises(UnknownComponentError, match="Did you mean 'vqa'"):
        TASKS.get(ZooEntry("x", "vlmo", "vqa2", vocab, backbone="vlmo_tiny").task)
    with pytest.raises(ValueError, match="needs a backbone name"):
        ZooEntry("x", "vlmo", "vqa", vocab)


def test_hf_hub_names_go_through_huggingface_hub(tmp_path, monkeypatch):
    """``hf-hub:`` files are fetched by huggingface_hub (its cache layout), here from the loopback server."""
    pytest.importorskip("huggingface_hub")
    root = tmp_path / "served"
    target = root / "someorg" / "beit3-twin" / "resolve" / "main" / "weights.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"0123456789" * 100)
    with ZooServer(root) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        path = download_file(ZooFile("hf-hub:someorg/beit3-twin/weights.safetensors"), cache=tmp_path / "hub")
        assert path.read_bytes() == target.read_bytes() and str(tmp_path / "hub") in str(path)
        assert any(r["path"].endswith("/resolve/main/weights.safetensors") for r in server.requests)
    with pytest.raises(ValueError, match="hf-hub:<org>/<repo>/<file>"):
        download_file(ZooFile("hf-hub:justarepo"), cache=tmp_path)


def test_release_modules_are_data_and_import_only_entry_types():
    """The release lists import the entry types and nothing else of the project, export ``ENTRIES`` and register
    nothing when imported; the zoo reads them on its first lookup."""
    import ast
    import subprocess
    import sys

    from beit3_plugins.zoo import beit3_release, vlmo_release

    for module in (beit3_release, vlmo_release):
        tree = ast.parse(open(module.__file__).read())
        imported = [(n.module, n.level, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    for a in n.names if n.module != "__future__"]
        assert {(m, lvl) for m, lvl, _ in imported} == {("entries", 1)}, module.__name__
        assert {a for _, _, a in imported} <= {"ZooEntry", "ZooFile", "TokenizerSpec"}
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import)]
        assert module.ENTRIES and all(isinstance(e, ZooEntry) for e in module.ENTRIES)
    code = ("import beit3_plugins.zoo.beit3_release, beit3_plugins.zoo.vlmo_release\n"
            "from beit3_plugins.zoo import ZOO\n"
            "print(len(ZOO._entries), len(ZOO.names()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", str(len(beit3_release.ENTRIES) + len(vlmo_release.ENTRIES))]
