"""Bad input at the core: damaged checkpoint files, checkpoints of another size, and the command line
(one-line errors, --debug, help texts, train-spm on an empty corpus). Catalogue: docs/reliability.md."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beit3_plugins import cli
from beit3_plugins.backbones import build_backbone, to_released_state_dict
from beit3_plugins.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, safe_load

BIN = Path(sys.executable).parent


def _whole(path: Path) -> bytes:
    torch.save({"model": {"w": torch.arange(4096.0)}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("damage, says", [
    (lambda b: b[: len(b) // 2], "incomplete"),               # a download cut short
    (lambda b: b[:100], "incomplete"),
    (lambda b: b"", "empty"),
    (lambda b: b"<html><body>404 not found</body></html>", "not a PyTorch checkpoint"),
    (lambda b: b"PK\x03\x04" + b"\x00" * 64, "incomplete"),
])
def test_a_damaged_file_is_reported_as_corrupt_not_unsafe(tmp_path, damage, says):
    path = tmp_path / "model.pth"
    path.write_bytes(damage(_whole(tmp_path / "whole.pth")))
    with pytest.raises(CorruptCheckpointError, match=says) as info:
        safe_load(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert "pickle code" not in str(info.value) and str(path) in str(info.value)


def test_a_file_that_pickles_objects_is_still_refused_as_unsafe(tmp_path):
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "old.pth")
    with pytest.raises(UnsafeCheckpointError, match="weights-only"):
        safe_load(tmp_path / "old.pth")


def test_a_size_mismatch_names_the_variant_the_file_holds(tmp_path):
    torch.manual_seed(0)
    tiny = build_backbone("beit3_tiny")
    torch.save({"model": to_released_state_dict(tiny)}, tmp_path / "tiny.pth")
    with pytest.raises(Exception, match=r"this file is a beit3_tiny checkpoint \(width 64, 4 layers, FFN 256\); the "
                                        r"model is width 32, 2 layers, FFN 128") as info:
        build_backbone("beit3_tiny", embed_dim=32, depth=2, ffn_dim=128, checkpoint=str(tmp_path / "tiny.pth"))
    assert "and " in str(info.value) and "more" in str(info.value)      # the list of tensors is cut short
    assert str(info.value).count("\n") < 20


# ---------------------------------------------------------------------------------------------- CLI
def test_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "missing.pth")
    assert cli.main(["convert-safetensors", missing, str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"beit3-plugins convert-safetensors: error: checkpoint file not found: {missing}"
    assert "Traceback" not in err and "--debug" in err
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "convert-safetensors", missing, str(tmp_path / "out.safetensors")])


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_corrupt_file_through_the_console_script_is_one_line(tmp_path):
    (tmp_path / "cut.pth").write_bytes(_whole(tmp_path / "whole.pth")[:300])
    res = subprocess.run([BIN / "beit3-plugins", "convert-safetensors", str(tmp_path / "cut.pth"),
                          str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "is not a readable checkpoint" in res.stderr and not (tmp_path / "out.safetensors").exists()


def test_help_lists_every_command_with_its_own_one_line_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "convert-safetensors  re-save" in lines["convert-safetensors"]
    for name in ("export-pretrained", "make-shards", "init-vlmo-from-beit", "predict"):
        help_text = lines[name][len("  " + name):].strip()
        assert help_text and not help_text.startswith("runs ") and ":" not in help_text.split()[0], lines[name]
    assert "export a fairseq pretraining checkpoint as a backbone checkpoint" in lines["export-pretrained"]


def test_help_imports_no_command_module():
    code = ("import sys; from beit3_plugins import cli; cli.main(['--help']); "
            "print(sorted(m for m in sys.modules if m.startswith(('fairseq', 'beit3_plugins.p'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "[]", res.stdout + res.stderr


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_train_spm_on_an_empty_corpus_is_a_clear_error(tmp_path, capsys, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    with pytest.raises(SystemExit) as info:
        cli.main(["train-spm", str(corpus), str(tmp_path / "spm")])
    assert info.value.code == 2
    assert "the text corpus is empty" in capsys.readouterr().err
    assert not (tmp_path / "spm.model").exists()
