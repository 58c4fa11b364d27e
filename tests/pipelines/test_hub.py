"""Self-described models: a trainer checkpoint runs in a pipeline by path alone; save_pretrained /
push_to_hub write a folder with the same description that loads back by folder path and as ``hf-hub:org/name``
from a loopback Hub (tests/support/hf_server.py, ``HF_ENDPOINT``); strict reading of the description."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from beit3_plugins import cli
from beit3_plugins.backbones import build_backbone
from beit3_plugins.checkpoint import safe_load
from beit3_plugins.pipelines import create_model_and_transforms, pipeline, push_to_hub, save_pretrained
from beit3_plugins.zoo import ImageTransformConfig, ModelConfig, ModelConfigError, ZooFile, describe

from hf_server import HubServer

pytestmark = [pytest.mark.slow]  # the module trains a tiny VQA model once (about 20 s on 2 cores)


@pytest.fixture(scope="module")
def trained(data_world, tiny_spm, tmp_path_factory):
    """A tiny VQA model trained by the VL trainer as the demo does (a few steps); its best.pt."""
    from beit3_plugins.vl_tasks.train import compose_config, run

    root, _ = data_world
    out = tmp_path_factory.mktemp("vqa_run")
    run(compose_config(["task=vqa", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}",
                        f"data.tokenizer={tiny_spm}", f"train.output_dir={out}", "train.max_steps=4",
                        "train.epochs=1", "train.tensorboard=false", "train.progress=false"]))
    images = []
    rng = np.random.default_rng(0)
    for i in range(3):
        path = out / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    return {"best": out / "checkpoints" / "best.pt", "last": out / "checkpoints" / "last.pt", "images": images,
            "spm": tiny_spm}


@pytest.fixture()
def hub(monkeypatch):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "loopback")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server
    assert not server.unknown, f"routes the loopback Hub does not answer: {server.unknown}"


QUESTIONS = ["what color is the circle?", "how many shapes are there?", "is there a square?"]


def _answers(pipe, images):
    return pipe(images, QUESTIONS, top_k=3)


def test_trainer_checkpoints_carry_the_description(trained):
    for name in ("best", "last"):
        saved = safe_load(trained[name])
        config = ModelConfig.from_dict(saved["model_config"])
        assert config.task == "vqa" and config.backbone == "beit3_tiny" and config.trained_by == "vl_tasks.train"
        assert config.labels == tuple(saved["task"]["answers"])
        assert config.head == {"num_answers": len(config.labels)}
        assert config.backbone_config["normalize_output"] is False   # the VQA recipe's final norm setting
        assert config.tokenizer.file == os.path.abspath(trained["spm"])
    assert "vqa_accuracy" in ModelConfig.from_dict(safe_load(trained["best"])["model_config"]).benchmark


def test_pipeline_and_predict_by_checkpoint_path_alone(trained, capsys):
    pipe = pipeline("vqa", model=str(trained["best"]), device="cpu")
    saved = safe_load(trained["best"])
    assert pipe.vocab.answers == saved["task"]["answers"]   # the answers stored at training time
    out = _answers(pipe, trained["images"])
    assert len(out) == 3 and all(a["answer"] in pipe.vocab.answers for row in out for a in row)
    assert cli.main(["predict", "vqa", "--model", str(trained["best"]), "--image", trained["images"][0],
                     "--question", QUESTIONS[0], "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["result"][0][0]["answer"] == out[0][0]["answer"]


def test_moved_tokenizer_is_asked_for(trained, tmp_path):
    saved = safe_load(trained["best"])
    saved["model_config"]["tokenizer"]["file"] = str(tmp_path / "gone.spm")
    torch.save(saved, tmp_path / "moved.pt")
    with pytest.raises(ValueError, match=r"pass tokenizer=.*gone\.spm"):
        pipeline("vqa", model=str(tmp_path / "moved.pt"), device="cpu")
    pipe = pipeline("vqa", model=str(tmp_path / "moved.pt"), tokenizer=str(trained["spm"]), device="cpu")
    assert pipe.vocab.answers == saved["task"]["answers"]


def test_unknown_pipeline_option_names_what_is_accepted(trained):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['anwsers'\].*answers.*image_size"):
        pipeline("vqa", model=str(trained["best"]), anwsers=["x"], device="cpu")


def test_save_push_pull_gives_identical_answers(trained, hub, tmp_path):
    pipe = pipeline("vqa", model=str(trained["best"]), device="cpu")
    expected = _answers(pipe, trained["images"])
    folder = save_pretrained(pipe.model, tmp_path / "folder", config=describe(trained["best"]).config)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors", "tiny.model"]
    card = (folder / "README.md").read_text()
    assert "library_name: beit3-plugins" in card and "vqa_accuracy" in card and "pipeline_tag:" in card
    assert _answers(pipeline("vqa", model=str(folder), device="cpu"), trained["images"]) == expected

    name = push_to_hub(pipe.model, "lab/tiny-vqa", config=describe(trained["best"]).config)
    assert name == "hf-hub:lab/tiny-vqa" and set(hub.repos["lab/tiny-vqa"]) == set(os.listdir(folder))
    pulled = pipeline("vqa", model=name, device="cpu")
    assert _answers(pulled, trained["images"]) == expected
    model, transform, tok = create_model_and_transforms(name)
    assert all(torch.equal(v, pipe.model.state_dict()[k]) for k, v in model.state_dict().items())
    backbone = build_backbone("beit3_tiny", pretrained=name)
    assert backbone.cfg.normalize_output is False
    assert all(torch.equal(v, pipe.model.backbone.state_dict()[k]) for k, v in backbone.state_dict().items())


def test_cli_save_and_push_from_a_trainer_checkpoint(trained, hub, tmp_path, capsys):
    assert cli.main(["save", str(trained["best"]), str(tmp_path / "saved")]) == 0
    config = ModelConfig.read(tmp_path / "saved" / "config.json")
    assert config.tokenizer.file == "tiny.model" and config.trained_by == "vl_tasks.train"
    assert cli.main(["push", str(trained["best"]), "lab/from-cli"]) == 0
    assert "hf-hub:lab/from-cli" in capsys.readouterr().out
    assert "config.json" in hub.repos["lab/from-cli"]
    # the pulled model exported to ONNX; outputs checked against PyTorch by onnxruntime (dynamic batch/length)
    pytest.importorskip("onnxruntime", reason="pip install 'beit3-plugins[onnx]'")
    assert cli.main(["export-onnx", "hf-hub:lab/from-cli", str(tmp_path / "onnx")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print("ONNX vs PyTorch, max |diff|:", report["max_abs_diff"])
    assert report["max_abs_diff"]["model"] < 1e-4
    assert ModelConfig.read(tmp_path / "onnx" / "config.json").labels == config.labels


def test_description_is_read_strictly(trained, tmp_path):
    folder = save_pretrained(pipeline("vqa", model=str(trained["best"]), device="cpu").model, tmp_path / "f")
    data = json.loads((folder / "config.json").read_text())
    for change, field in (({"head_spec": {}}, "head_spec"), ({"format_version": 0}, "format_version")):
        (folder / "config.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(ModelConfigError, match=field):
            pipeline("vqa", model=str(folder), device="cpu")
    nested = {**data, "image_transform": {**data["image_transform"], "szie": 64}}
    (folder / "config.json").write_text(json.dumps(nested))
    with pytest.raises(ModelConfigError, match=r"image_transform\.szie \(did you mean image_transform\.size\?\)"):
        create_model_and_transforms(str(folder))
    (folder / "config.json").write_text(json.dumps({**data, "tokenizer": {**data["tokenizer"], "file": "../x"}}))
    with pytest.raises(ModelConfigError, match="tokenizer.file"):
        create_model_and_transforms(str(folder))


def test_round_trip_of_the_schema():
    config = ModelConfig(name="m", family="beit3", task="vqa", backbone="beit3_tiny",
                         backbone_config={"img_size": 64, "normalize_output": False, "drop_path_rate": 0.1},
                         head={"num_answers": 2}, image_transform=ImageTransformConfig.of("vl", 64),
                         labels=("yes", "no"), benchmark={"vqa_accuracy": 50.0})
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    entry = config.to_entry(weights=ZooFile("file:///w.pt"))
    assert entry.backbone_overrides() == {"img_size": 64, "normalize_output": False, "drop_path_rate": 0.1}
    assert ModelConfig.from_entry(entry) == dataclasses.replace(config, benchmark={})
    with pytest.raises(ModelConfigError, match="image_transform.size"):
        dataclasses.replace(config, image_transform=ImageTransformConfig.of("vl", 224))


@pytest.mark.parametrize("task,pipe_task", [("image_classification", "image-classification"),
                                            ("retrieval", "image-embedding"), ("nlvr2", "nlvr2")])
def test_other_tasks_run_by_checkpoint_path_alone(data_world, tiny_spm, tmp_path, trained, task, pipe_task):
    from beit3_plugins.vl_tasks.train import compose_config, run

    root, _ = data_world
    run(compose_config([f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}",
                        f"data.tokenizer={tiny_spm}", f"train.output_dir={tmp_path}", "train.max_steps=2",
                        "train.epochs=1", "train.tensorboard=false", "train.progress=false", "train.batch_size=4"]))
    saved = tmp_path / "checkpoints" / "last.pt"
    config = describe(saved).config
    assert config.task == task and config.backbone == "beit3_tiny"
    pipe = pipeline(pipe_task, model=str(saved), device="cpu")
    images = trained["images"]
    if task == "image_classification":
        assert config.labels and pipe.class_names == list(config.labels)   # the class names stored at training
        assert config.image_transform.kind == "imagenet" and config.head["num_classes"] == len(config.labels)
        assert pipe(images[0], top_k=2)[0]["label"] in config.labels
    elif task == "retrieval":
        assert pipe(images).shape[0] == 3
    else:
        assert set(pipe(images[0], images[1], "there is a circle")) == {"label", "score"}
