"""Fixtures of the search tests: a tiny retrieval model trained by the VL trainer on the data world (as
tests/vl_tasks/test_vl_learning.py trains one), and the world's COCO training images embedded and indexed."""
import json
import shutil

import pytest

from beit3_plugins.search import ModelSpec

# the trainer's retrieval settings at 64 px (tools/demo_stages/vl_tasks.py); fewer epochs: these images are
# queried with their own training captions, not held-out ones
RETRIEVAL_EPOCHS = 16
LIKE = "beit3_base_patch16_384_coco_retrieval"


@pytest.fixture(scope="session")
def retrieval_spec(data_world, tiny_spm, tmp_path_factory):
    """ModelSpec of a beit3_tiny retrieval model trained on the world's Karpathy train captions."""
    root, _ = data_world
    path = _train("retrieval", root, tiny_spm, tmp_path_factory.mktemp("search_model"), "task.image_size=64",
                  "train.lr=3e-4", f"train.epochs={RETRIEVAL_EPOCHS}")
    return ModelSpec(str(path), like=LIKE, backbone="beit3_tiny", image_size=64, tokenizer=str(tiny_spm))


@pytest.fixture(scope="session")
def world_photos(data_world, tmp_path_factory):
    """A copy of the world's Karpathy train images (coco/train2014; tests may tamper with it) and
    {absolute image path in the copy: [captions]}."""
    root, _ = data_world
    folder = tmp_path_factory.mktemp("search_photos") / "train2014"
    shutil.copytree(root / "coco" / "train2014", folder)
    data = json.loads((root / "coco" / "dataset_coco.json").read_text())
    return folder, {str(folder / im["filename"]): [s["raw"] for s in im["sentences"]]
                    for im in data["images"] if im["split"] in ("train", "restval")}


@pytest.fixture(scope="session")
def world_captions(world_photos):
    return world_photos[1]


@pytest.fixture(scope="session")
def indexed_world(world_photos, retrieval_spec, world_captions, tmp_path_factory):
    """(image embed folder, text embed folder), both indexed: the world's train images and their captions."""
    from beit3_plugins.search import EmbedConfig, build_and_save, run_embed

    out = tmp_path_factory.mktemp("search_index")
    captions = out / "captions.txt"
    captions.write_text("".join(c + "\n" for caps in world_captions.values() for c in caps))
    run_embed(EmbedConfig(out=str(out / "images"), model=retrieval_spec, images=[str(world_photos[0])],
                          batch_size=16, workers=0, save_dtype="float32", progress=False))
    run_embed(EmbedConfig(out=str(out / "texts"), model=retrieval_spec, texts=[str(captions)], batch_size=64,
                          save_dtype="float32", progress=False))
    for folder in ("images", "texts"):
        build_and_save(out / folder)
    return out / "images", out / "texts"


def _train(task, root, spm, out, *extra):
    from beit3_plugins.vl_tasks.train import compose_config, run

    run(compose_config([f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", "train.tensorboard=false",
                        "train.eval_every_epochs=0", f"data.root={root}", f"data.tokenizer={spm}",
                        f"train.output_dir={out}", *extra]))
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def vqa_spec(data_world, tiny_spm, tmp_path_factory):
    """(ModelSpec, answer file, answers) of a beit3_tiny VQA model briefly trained on the world (the browser
    test asks it a question; what it answers is not the point there)."""
    import torch

    root, _ = data_world
    out = tmp_path_factory.mktemp("search_vqa")
    path = _train("vqa", root, tiny_spm, out, "train.epochs=2", "train.lr=5e-4", "train.head_lr_mult=10")
    answers = torch.load(path, map_location="cpu", weights_only=True)["task"]["answers"]
    answer_file = out / "answers.json"
    answer_file.write_text(json.dumps(answers))
    spec = ModelSpec(str(path), like="beit3_base_patch16_480_vqa", backbone="beit3_tiny", image_size=32,
                     tokenizer=str(tiny_spm), head={"num_answers": len(answers)})
    return spec, str(answer_file), answers


@pytest.fixture(scope="session")
def caption_spec(data_world, tiny_spm, tmp_path_factory):
    """ModelSpec of a beit3_tiny captioning model trained for one epoch (the service must return a caption)."""
    root, _ = data_world
    path = _train("captioning", root, tiny_spm, tmp_path_factory.mktemp("search_caption"), "train.epochs=1",
                  "task.beam_size=1", "task.max_gen_len=8")
    return ModelSpec(str(path), like="beit3_base_patch16_480_coco_captioning", backbone="beit3_tiny", image_size=32,
                     tokenizer=str(tiny_spm))
