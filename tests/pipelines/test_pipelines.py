"""Zoo -> model -> pipeline, end to end: random-weight twins of every kind of zoo entry are downloaded from a
loopback server (released key layout; one as .safetensors), built by name, and each pipeline's output is
checked against the same task model's own methods on the in-memory reference weights; then the CLI."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import beit3_plugins
from beit3_plugins import cli
from beit3_plugins.checkpoint import convert_to_safetensors, safe_load
from beit3_plugins.pipelines import create_model_and_transforms, get_tokenizer, pipeline
from beit3_plugins.transforms import build_image_transform
from beit3_plugins.vl_tasks.base import encode_texts

from zoo_twins import ANSWERS, TWIN_SIZE


def _pixels(paths, kind="vl"):
    transform = build_image_transform(kind, train=False, image_size=TWIN_SIZE)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def _ids(pipe, texts):
    return encode_texts(pipe.tokenizer, texts, pipe.entry.tokenizer.max_length)


def test_every_twin_downloads_and_builds_by_name(world):
    for name, ref in world["refs"].items():
        model, preprocess_train, preprocess_val = create_model_and_transforms(name)   # open_clip's contract
        tok = get_tokenizer(name)
        assert (world["cache"] / os.path.basename(model.zoo_entry.weights.url)).is_file()
        image = Image.open(world["images"][0]).convert("RGB")
        assert preprocess_val(image).shape == preprocess_train(image).shape == (3, TWIN_SIZE, TWIN_SIZE)
        torch.manual_seed(0)
        assert not torch.equal(preprocess_train(image), preprocess_val(image))      # random crop / flip vs resize
        expected = ref.state_dict()
        got = model.state_dict()
        assert set(got) == set(expected), name
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
        assert tok.vocab_size == 130
    assert not list(world["cache"].glob("*.part"))


def test_build_backbone_pretrained_by_name_applies_the_entry_settings(world):
    backbone = beit3_plugins.build_backbone("beit3_tiny", pretrained="twin_vqa")
    assert backbone.cfg.normalize_output is False and backbone.cfg.img_size == TWIN_SIZE
    ref = world["refs"]["twin_vqa"].backbone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in backbone.state_dict().items())
    with pytest.raises(ValueError, match="holds beit3_tiny weights, not beit3_base"):
        beit3_plugins.build_backbone("beit3_base", pretrained="twin_vqa")


def test_vqa_pipeline_matches_the_task_model(world):
    pipe = pipeline("vqa", model="twin_vqa")                       # answer list from the entry's file
    ref = world["refs"]["twin_vqa"]
    questions = ["what colour is the circle?", "how many squares?", "is it red?"]
    out = pipe(world["images"], questions, top_k=3)
    ids, pad = _ids(pipe, questions)
    with torch.no_grad():
        scores = torch.sigmoid(ref.logits(_pixels(world["images"]), ids, pad))
    for row, answers in zip(scores, out):
        assert [a["answer"] for a in answers] == [ANSWERS[i] for i in row.topk(3).indices.tolist()]
        assert answers[0]["score"] == pytest.approx(float(row.max()), abs=1e-5)
    assert pipe(world["images"][0], questions[0], top_k=1)[0]["answer"] == out[0][0]["answer"]
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        pipe(world["images"], questions[:2])
    with pytest.raises(ValueError, match="answer list 2"):
        pipeline("vqa", model="twin_vqa", answers=["a", "b"])


def test_image_inputs_path_pil_array_tensor_agree(world):
    pipe = pipeline("image-embedding", model="twin_itc", batch_size=2)
    path = world["images"][1]
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    variants = [path, pil, array, torch.from_numpy(array).permute(2, 0, 1), pipe.transform(pil)]
    embs = torch.stack([pipe(v) for v in variants])
    assert torch.allclose(embs, embs[0].expand_as(embs), atol=1e-6)
    batch = pipe(world["images"])
    assert batch.shape == (3, 64) and torch.allclose(batch.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        expected = world["refs"]["twin_itc"].embed_images(_pixels(world["images"]))
    assert torch.allclose(batch, expected, atol=1e-5)
    # the core decoder's errors: a missing file, an undecodable one (CorruptImageError, a ValueError)
    with pytest.raises(FileNotFoundError, match="missing.png: image file not found"):
        pipe(str(world["cache"] / "missing.png"))
    (world["cache"] / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot decode image"):
        pipe(str(world["cache"] / "broken.png"))


def test_text_embeddings_retrieval_and_safetensors_entry(world):
    texts = ["a red circle", "two blue squares", "a green triangle", "nothing at all"]
    text_pipe = pipeline("text-embedding", model="twin_retrieval", batch_size=3)   # the .safetensors twin
    ref = world["refs"]["twin_retrieval"]
    ids, pad = _ids(text_pipe, texts)
    with torch.no_grad():
        expected = ref.embed_texts(ids, pad)
    emb = text_pipe(texts)
    assert torch.allclose(emb, expected, atol=1e-5)
    ranked = pipeline("retrieval", model="twin_retrieval")(world["images"], texts, top_k=2)
    sim = torch.tensor(ranked["similarity"])
    with torch.no_grad():
        img = ref.embed_images(_pixels(world["images"]))
    assert torch.allclose(sim, img @ expected.t(), atol=1e-5)
    assert [r[0]["text"] for r in ranked["image_to_text"]] == sim.argmax(1).tolist()
    assert [r[0]["image"] for r in ranked["text_to_image"]] == sim.argmax(0).tolist()
    assert len(ranked["image_to_text"][0]) == 2


def test_zero_shot_caches_class_embeddings(world):
    pipe = pipeline("zero-shot-classification", model="twin_itc")
    calls = []
    real = pipe.model.embed_texts
    pipe.model.embed_texts = lambda *a: calls.append(a[0].shape[0]) or real(*a)
    classes, templates = ["circle", "square", "triangle"], ["a photo of a {}.", "a {} shape."]
    first = pipe(world["images"], classes, templates=templates)
    assert sum(calls) == 6                        # 3 classes x 2 templates, once
    second = pipe(world["images"][:1], classes, templates=templates)
    assert sum(calls) == 6
    assert [c["label"] for c in second[0]] == [c["label"] for c in first[0]]
    assert [c["score"] for c in second[0]] == pytest.approx([c["score"] for c in first[0]], abs=1e-5)
    assert sum(s["score"] for s in first[0]) == pytest.approx(1.0, abs=1e-5)
    emb = pipe.class_embeddings(classes, templates)
    img = pipe.embed_images(world["images"])
    assert [r[0]["label"] for r in first] == [classes[i] for i in (img @ emb.t()).argmax(1).tolist()]
    with pytest.raises(ValueError, match="'{}'"):
        pipe(world["images"], classes, templates=["no placeholder"])


def test_captioning_pipeline_is_the_task_generation(world):
    from beit3_plugins.vl_tasks.captioning import CaptioningTask, CaptioningTaskConfig

    pipe = pipeline("captioning", model="twin_captioning")
    task = CaptioningTask(CaptioningTaskConfig(beam_size=2, length_penalty=0.6, max_gen_len=5))
    task.tokenizer = pipe.tokenizer
    expected = task.caption(world["refs"]["twin_captioning"], _pixels(world["images"]))
    got = pipe(world["images"], beam_size=2, length_penalty=0.6, max_length=5)
    assert [g["caption"] for g in got] == expected
    greedy = pipe(world["images"][0], beam_size=1, max_length=4)
    assert isinstance(greedy["caption"], str)


def test_nlvr2_and_image_classification(world):
    pipe = pipeline("nlvr2", model="twin_nlvr2")
    sentences = ["the left image has a circle", "both images are red", "there are two squares"]
    left, right = world["images"], world["images"][::-1]
    out = pipe(left, right, sentences)
    ids, pad = _ids(pipe, sentences)
    with torch.no_grad():
        p_true = world["refs"]["twin_nlvr2"].logits(_pixels(left), _pixels(right), ids, pad).softmax(-1)[:, 1]
    assert [o["score"] for o in out] == pytest.approx(p_true.tolist(), abs=1e-5)
    assert [o["label"] for o in out] == (p_true > 0.5).tolist()
    cls = pipeline("image-classification", model="twin_in1k", class_names=list("abcde"))
    top = cls(world["images"][0], top_k=2)
    with torch.no_grad():
        probs = world["refs"]["twin_in1k"].logits(_pixels(world["images"][:1], "imagenet")).softmax(-1)[0]
    assert [t["label"] for t in top] == [list("abcde")[i] for i in probs.topk(2).indices.tolist()]


def test_wrong_task_for_weights_and_missing_heads_are_clear_errors(world, tmp_path):
    with pytest.raises(ValueError, match="runs vqa weights; twin_itc is a retrieval checkpoint"):
        pipeline("vqa", model="twin_itc", answers=ANSWERS)
    with pytest.raises(Exception, match="heads are not in this file"):
        pipeline("captioning", model=str(world["cache"] / "twin_nlvr2.pth"), like="twin_captioning")
    with pytest.raises(KeyError, match="unknown pipeline 'vqa2'. Did you mean 'vqa'"):
        pipeline("vqa2", model="twin_vqa")


def test_bf16_pipeline_is_close_to_fp32(world):
    fp32 = pipeline("image-embedding", model="twin_itc")(world["images"])
    bf16 = pipeline("image-embedding", model="twin_itc", dtype="bfloat16")(world["images"])
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().max() < 5e-2


def test_local_file_and_safetensors_conversion(world, tmp_path):
    src = world["cache"] / "twin_nlvr2.pth"
    dst = tmp_path / "twin_nlvr2.safetensors"
    assert cli.main(["convert-safetensors", str(src), str(dst)]) == 0
    original, converted = safe_load(src)["model"], safe_load(dst)
    assert set(original) == set(converted) and all(torch.equal(original[k], converted[k]) for k in original)
    pipe = pipeline("nlvr2", model=str(dst), like="twin_nlvr2")
    ref = pipeline("nlvr2", model="twin_nlvr2")
    args = (world["images"][0], world["images"][1], "a circle")
    assert pipe(*args) == ref(*args)
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3, "args": {"lr": 0.1}}, tmp_path / "mixed.pth")
    assert convert_to_safetensors(tmp_path / "mixed.pth", tmp_path / "mixed.safetensors") == {"tensors": 1,
                                                                                              "skipped": 0}


CLI_CASES = {
    "vqa": (["--model", "twin_vqa", "--image", "{0}", "--question", "what colour?", "--top-k", "2"],
            lambda r: len(r) == 1 and len(r[0]) == 2 and r[0][0]["answer"] in ANSWERS),
    "captioning": (["--model", "twin_captioning", "--image", "{0}", "{1}", "--beam-size", "2", "--max-length", "3"],
                   lambda r: len(r) == 2 and all(isinstance(c["caption"], str) for c in r)),
    "image-embedding": (["--model", "twin_itc", "--image", "{0}"],
                        lambda r: len(r) == 1 and abs(sum(x * x for x in r[0]) - 1) < 1e-4),
    "text-embedding": (["--model", "twin_itc", "--text", "a red circle", "a square"], lambda r: len(r) == 2),
    "retrieval": (["--model", "twin_retrieval", "--image", "{0}", "{1}", "--text", "a", "b", "c"],
                  lambda r: len(r["image_to_text"]) == 2 and len(r["text_to_image"]) == 3),
    "zero-shot-classification": (["--model", "twin_itc", "--image", "{0}", "--classes", "circle", "square"],
                                 lambda r: {c["label"] for c in r[0]} == {"circle", "square"}),
    "nlvr2": (["--model", "twin_nlvr2", "--image", "{0}", "{1}", "--text", "both are red"],
              lambda r: isinstance(r["label"], bool) and 0 <= r["score"] <= 1),
    "image-classification": (["--model", "twin_in1k", "--image", "{0}", "--top-k", "3"],
                             lambda r: len(r[0]) == 3 and all(0 <= c["label"] < 5 for c in r[0])),
}


@pytest.mark.parametrize("task", list(CLI_CASES))
def test_cli_predict_prints_json(world, task, capsys):
    args, check = CLI_CASES[task]
    args = [a.format(*world["images"]) for a in args]
    assert cli.main(["predict", task] + args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == task and check(printed["result"])


def test_cli_predict_names_missing_inputs(world, capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "vqa", "--model", "twin_vqa", "--image", world["images"][0]])
    assert "--question required" in capsys.readouterr().err
