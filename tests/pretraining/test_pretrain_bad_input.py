"""Bad input to the pretraining tools: ``export-pretrained`` given a checkpoint of another trainer says what
the file is instead of fairseq's ``KeyError: 'best_loss'``. Catalogue: docs/reliability.md."""
import pytest
import torch

from beit3_plugins import cli
from beit3_plugins.backbones import build_backbone, to_released_state_dict
from beit3_plugins.vl_tasks.vqa import VqaModel

pytestmark = pytest.mark.slow   # imports fairseq


def test_export_pretrained_names_a_vl_trainer_checkpoint(tmp_path, capsys):
    model = VqaModel(build_backbone("beit3_tiny"), num_answers=4)
    saved = {"model": model.state_dict(), "optimizer": {}, "task": {"answers": list("abcd")}, "task_name": "vqa",
             "epoch": 1, "step_in_epoch": 0, "global_step": 8, "best": 0.5,
             "config": {"task": {"name": "vqa"}, "model": {"name": "beit3_tiny"}}}
    torch.save(saved, tmp_path / "best.pt")
    with pytest.raises(SystemExit) as info:
        cli.main(["export-pretrained", str(tmp_path / "best.pt"), str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "best_loss" not in err
    assert "a checkpoint of the VL task trainer (task vqa, model beit3_tiny)" in err
    assert "build_backbone('beit3_tiny'" in err and not (tmp_path / "out.pth").exists()
    # and what the message says works: the backbone loads from the file as it is
    assert build_backbone("beit3_tiny", checkpoint=str(tmp_path / "best.pt")).load_report.missing == []


def test_export_pretrained_names_a_released_backbone_file(tmp_path, capsys):
    torch.save({"model": to_released_state_dict(build_backbone("beit3_tiny"))}, tmp_path / "released.pth")
    with pytest.raises(SystemExit):
        cli.main(["export-pretrained", str(tmp_path / "released.pth"), str(tmp_path / "out.pth")])
    assert "already a backbone checkpoint in the released BEiT-3 layout" in capsys.readouterr().err
