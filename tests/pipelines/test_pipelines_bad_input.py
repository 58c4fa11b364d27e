"""Bad input to the pipelines and `beit3-plugins predict`: each case is a correct answer or a clear error,
never a silent wrong answer, and the CLI checks its arguments before it builds or downloads a model.
Catalogue: docs/reliability.md."""
import json
import warnings

import numpy as np
import pytest
import torch

from beit3_plugins import cli
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.pipelines import create_model_and_transforms, pipeline


@pytest.fixture(scope="module")
def pipes(world):
    return {"zero-shot": pipeline("zero-shot-classification", model="twin_itc"),
            "vqa": pipeline("vqa", model="twin_vqa"),
            "captioning": pipeline("captioning", model="twin_captioning"),
            "retrieval": pipeline("retrieval", model="twin_retrieval"),
            "classification": pipeline("image-classification", model="twin_in1k")}


def test_zero_shot_refuses_a_string_of_classes(world, pipes):
    with pytest.raises(TypeError, match=r"classes must be a list of strings, got the string 'circle'"):
        pipes["zero-shot"](world["images"][0], "circle")
    with pytest.raises(TypeError, match="templates must be a list"):
        pipes["zero-shot"](world["images"][0], ["circle", "square"], templates="a photo of a {}.")
    assert {c["label"] for c in pipes["zero-shot"](world["images"][0], ["circle", "square"])} == {"circle", "square"}


def test_class_names_of_the_wrong_length_are_refused_at_construction(world, tmp_path):
    with pytest.raises(ValueError, match="the classifier has 5 classes, class_names 3"):
        pipeline("image-classification", model="twin_in1k", class_names=["a", "b", "c"])
    names = tmp_path / "classes.txt"
    names.write_text("ant\nbee\ncat\ndog\neel\n")
    top = pipeline("image-classification", model="twin_in1k", class_names=str(names))(world["images"][0], top_k=5)
    assert sorted(t["label"] for t in top) == ["ant", "bee", "cat", "dog", "eel"]


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_counts_below_one_are_clear_errors(world, pipes, bad):
    image = world["images"][0]
    calls = {"vqa top_k": lambda: pipes["vqa"](image, "what?", top_k=bad),
             "zero-shot top_k": lambda: pipes["zero-shot"](image, ["a", "b"], top_k=bad),
             "retrieval top_k": lambda: pipes["retrieval"]([image], ["a"], top_k=bad),
             "classification top_k": lambda: pipes["classification"](image, top_k=bad),
             "captioning max_length": lambda: pipes["captioning"](image, max_length=bad),
             "captioning beam_size": lambda: pipes["captioning"](image, beam_size=bad)}
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"{what.split()[1]} must be an integer >= 1"):
            call()


def test_an_empty_image_list_is_a_clear_error(pipes):
    for call in (lambda: pipes["vqa"]([], "what?"), lambda: pipes["captioning"]([]),
                 lambda: pipes["retrieval"]([], ["a"]), lambda: pipes["zero-shot"]([], ["a", "b"]),
                 lambda: pipes["classification"]([])):
        with pytest.raises(ValueError, match="no images given"):
            call()


def test_every_pipeline_runs_under_inference_mode(world, pipes):
    from beit3_plugins.pipelines import PIPELINES, Pipeline

    image = world["images"][0]
    zero_shot = pipeline("zero-shot-classification", model="twin_itc")
    seen = []
    real = zero_shot.embed_images
    zero_shot.embed_images = lambda *a: seen.append(torch.is_inference_mode_enabled()) or real(*a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # e.g. "Converting a tensor with requires_grad=True to a scalar"
        scores = zero_shot(image, ["circle", "square", "triangle"])
        emb = pipeline("image-embedding", model="twin_itc")(image)
    assert seen == [True]                     # the scoring after the embeddings too, not only the model calls
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-5
    assert not emb.requires_grad and not emb.is_inference()
    emb /= emb.norm()                          # an ordinary tensor: in-place use works

    class ThirdParty(Pipeline):
        def __call__(self, x):
            return torch.is_inference_mode_enabled()

    assert all(getattr(PIPELINES[name].__call__, "under_inference_mode", False) for name in PIPELINES.names())
    assert ThirdParty.__call__(object.__new__(ThirdParty), 1) is True


def test_a_model_object_runs_or_is_refused_without_printing_it(world):
    model, _, _ = create_model_and_transforms("twin_itc")
    built = pipeline("image-embedding", model=model)
    assert torch.allclose(built(world["images"][0]), pipeline("image-embedding", model="twin_itc")(world["images"][0]),
                          atol=1e-6)
    bare = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    with pytest.raises(TypeError, match=r"model=<Sequential>\): a model object must come from create_model_and") as info:
        pipeline("image-embedding", model=bare)
    assert "Linear(" not in str(info.value)


def test_a_checkpoint_of_another_task_names_the_missing_heads(world):
    vqa_file = str(world["cache"] / "twin_vqa.pth")
    with pytest.raises(CheckpointMismatchError, match=r"heads are not in this file|heads of another task") as info:
        pipeline("nlvr2", model=vqa_file, like="twin_nlvr2")
    assert "norm." not in str(info.value).split("\n")[0]
    assert "head" in str(info.value) and "pooler" in str(info.value)


# ---------------------------------------------------------------------------------------------- predict CLI
def test_predict_checks_arguments_before_building_a_model(world, tmp_path, capsys):
    cases = [(["vqa", "--model", "no_such_model", "--image", world["images"][0]], "--question required"),
             (["vqa", "--model", "no_such_model", "--image", str(tmp_path / "gone.png"), "--question", "what?"],
              "image file(s) not found"),
             (["retrieval", "--model", "no_such_model", "--image", world["images"][0], "--text", "a", "--top-k", "0"],
              "--top-k must be >= 1"),
             (["captioning", "--model", "no_such_model", "--image", world["images"][0], "--max-length", "0"],
              "--max-length must be >= 1"),
             (["captioning", "--image", world["images"][0]], "--model required")]
    for args, says in cases:
        with pytest.raises(SystemExit) as info:
            cli.main(["predict", *args])
        assert info.value.code == 2 and says in capsys.readouterr().err, args


def test_predict_list_and_class_names(world, tmp_path, capsys):
    assert cli.main(["predict", "--list"]) == 0
    listed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert listed["twin_vqa"] == "vqa" and "twin_itc" in listed
    assert cli.main(["predict", "vqa", "--list"]) == 0
    assert set(line.split("\t")[1] for line in capsys.readouterr().out.splitlines()) == {"vqa"}
    names = tmp_path / "names.txt"
    names.write_text("ant\nbee\ncat\ndog\neel\n")
    assert cli.main(["predict", "image-classification", "--model", "twin_in1k", "--image", world["images"][0],
                     "--class-names", str(names), "--top-k", "2"]) == 0
    labels = [c["label"] for c in json.loads(capsys.readouterr().out)["result"][0]]
    assert len(labels) == 2 and set(labels) <= {"ant", "bee", "cat", "dog", "eel"}


def test_predict_user_errors_are_one_line(world, capsys):
    assert cli.main(["predict", "vqa", "--model", "twin_itc", "--image", world["images"][0], "--question", "a?",
                     "--answers", str(world["cache"].parent / "served" / "twin_answers.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("beit3-plugins predict: error: VqaPipeline runs vqa weights") and "Traceback" not in err


def test_a_16_bit_png_and_a_float_array_of_0_to_255(world, tmp_path):
    """The array contract of the one decoder, through a pipeline: floats mean [0, 1]; 0..255 floats are
    refused, not clipped to white; a 16-bit PNG gives its 8-bit pixels, not white."""
    from PIL import Image

    pipe = pipeline("image-embedding", model="twin_itc")
    grey = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    eight_bit = np.repeat((grey.astype(np.uint32) // 257).astype(np.uint8)[..., None], 3, -1)
    assert torch.allclose(pipe(str(tmp_path / "deep.png")), pipe(eight_bit), atol=1e-6)
    assert torch.allclose(pipe(eight_bit / 255.0), pipe(eight_bit), atol=1e-6)
    with pytest.raises(ValueError, match="looks like 0..255 floats"):
        pipe(eight_bit.astype(np.float32))
