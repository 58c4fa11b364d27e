"""`make demo`'s report: vision-language tasks shown against their controls (model, blind, shuffled side by side,
never a bare chance level), curves with several labelled lines (detection's per-head losses)."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_under_test", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_report_shows_model_blind_and_shuffled_for_vl_tasks(tmp_path):
    demo = _demo()
    controls = {"model": 74.1, "blind": 53.8, "shuffled": 53.3, "constant": 49.1, "margin": 9.4, "n": 256,
                "clearly_ahead": True}
    vl = demo._normalise({"tasks": {
        "vqa": {"metric": "vqa_accuracy", "value": 74.1, "controls": controls},
        "captioning": {"metric": "cider", "value": 43.9,
                       "controls": {**controls, "model": 43.9, "blind": 88.1, "clearly_ahead": False}},
        "text_classification": {"metric": "accuracy", "value": 97.0, "chance": 50.0},
        "nlvr2": {"not_run": "time budget used up"}}})
    results = [{"stage": "vl_tasks", "what": "finetune", "seconds": 1.0, "ok": True, "command": "x", **vl},
               {"stage": "detection", "what": "detect", "seconds": 2.0, "ok": True, "command": "y",
                "metrics": {"val_box_AP": 79.0}, "chance": {"val_box_AP": 0.0},
                "curves": {"train loss per head": {"rpn": [[0, 1.0], [1, 0.5]], "stage 1 cls+box": [[0, 2.0]]}}}]
    demo.write_report(results, tmp_path)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| vqa.vqa_accuracy | 256 | **74.1** | 53.8 | 53.3 | 49.1 | 9.4 | yes |" in report
    assert "| captioning.cider | 256 | **43.9** | 88.1 | 53.3 | 49.1 | 9.4 | **no** |" in report
    assert "text_classification.accuracy 97 (50)" in report        # a task without images keeps its chance level
    assert "vqa.vqa_accuracy 74.1 (" not in report                  # no bare chance level for the VL tasks
    assert (tmp_path / "report.png").stat().st_size > 1000
    json.dumps(results)
