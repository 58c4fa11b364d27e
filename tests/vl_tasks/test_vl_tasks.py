"""Task plugins below the trainer: registry, heads, checkpoint loading, cached decoding, parameter groups
and bad input. Everything runs on the tiny backbone in seconds."""
import json
import shutil

import pytest
import torch

from beit3_plugins.backbones import build_backbone, to_released_state_dict
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.registry import HEADS, TASKS, UnknownComponentError
from beit3_plugins.vl_tasks import EmptySplitError
from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint
from beit3_plugins.backbones import unilm_attention_mask
from beit3_plugins.vl_tasks.generation import generate
from beit3_plugins.vl_tasks.optim import lr_at_step, param_groups


def _tok(tiny_spm, max_length=24):
    from beit3_plugins.tokenizer import Beit3Tokenizer, SentencePieceTokenizerConfig

    return Beit3Tokenizer(SentencePieceTokenizerConfig(model_path=str(tiny_spm), max_length=max_length))


def _task(name, root, tiny_spm, **kw):
    task = TASKS.build({"name": name, "image_size": 32, "max_text_len": 24, **kw})
    task.setup(root, _tok(tiny_spm))
    return task


def _backbone(**kw):
    torch.manual_seed(0)
    return build_backbone("beit3_tiny", img_size=32, **kw)


def test_registries_list_builtin_tasks_and_heads():
    assert {"vqa", "nlvr2", "retrieval", "captioning", "image_classification", "image_text_classification",
            "text_classification"} <= set(TASKS.names())
    assert {"pooler", "vqa_classifier", "two_layer_mlp", "image_classifier", "contrastive", "itm", "mlm"} <= set(HEADS.names())
    with pytest.raises(UnknownComponentError, match="Did you mean 'vqa'"):
        TASKS.get("vqa2")
    with pytest.raises(TypeError, match="no field"):
        TASKS.build({"name": "vqa", "imgsize": 3})


def test_every_task_builds_batches_and_a_finite_loss(data_world, tiny_spm):
    root, _ = data_world
    for name in ["vqa", "nlvr2", "retrieval", "captioning", "image_classification", "image_text_classification"]:
        task = _task(name, root, tiny_spm)
        ds = task.build_dataset("train")
        batch = task.collate([ds[i] for i in range(4)], train=True)
        model = task.build_model(_backbone(normalize_output=task.normalize_output))
        loss = model(batch)["loss"]
        assert torch.isfinite(loss) and loss.ndim == 0, name
        loss.backward()


def test_released_vqa_checkpoint_round_trip(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    task = _task("vqa", root, tiny_spm)
    model = task.build_model(_backbone(normalize_output=False)).eval()
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    released = to_released_state_dict(model.backbone, heads=heads)
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in released and "pooler.dense.weight" in released
    path = tmp_path / "beit3_tiny_vqa.pth"
    torch.save({"model": released}, path)
    fresh = task.build_model(_backbone(normalize_output=False)).eval()
    torch.manual_seed(1)
    fresh.head[3].weight.data.normal_()
    report = load_task_checkpoint(fresh, str(path))
    assert not report.missing, report.summary()
    batch = task.collate([task.build_dataset("val")[i] for i in range(3)], train=False)
    with torch.no_grad():
        a = model.logits(batch["image"], batch["ids"], batch["padding_mask"])
        b = fresh.logits(batch["image"], batch["ids"], batch["padding_mask"])
    torch.testing.assert_close(a, b)
    # a head for a different number of answers is refused with the reason
    bad = dict(released)
    bad["head.3.weight"] = torch.zeros(7, bad["head.3.weight"].shape[1])
    bad["head.3.bias"] = torch.zeros(7)
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointMismatchError, match="number of answers"):
        load_task_checkpoint(task.build_model(_backbone(normalize_output=False)), str(path))


def test_released_itc_and_pretraining_heads_map_to_tasks(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    bb = _backbone()
    dim, vocab = bb.cfg.embed_dim, bb.cfg.vocab_size
    itc = to_released_state_dict(bb, heads={"vision_head.weight": torch.randn(dim, dim),
                                            "language_head.weight": torch.randn(dim, dim),
                                            "logit_scale": torch.tensor(3.0),
                                            "mlm_head.weight": torch.randn(vocab, dim), "mlm_head.bias": torch.zeros(vocab),
                                            "mim_head.weight": torch.randn(8, dim), "mim_head.bias": torch.zeros(8)})
    path = tmp_path / "beit3_tiny_itc.pth"
    torch.save({"model": itc}, path)
    retrieval = _task("retrieval", root, tiny_spm).build_model(_backbone())
    report = load_task_checkpoint(retrieval, str(path))
    torch.testing.assert_close(retrieval.contrastive.vision_head.weight, itc["vision_head.weight"])
    assert float(retrieval.contrastive.logit_scale) == 3.0
    assert any("mim_head" in n for n in report.notes)  # reported, not silently dropped
    captioning = _task("captioning", root, tiny_spm).build_model(_backbone())
    load_task_checkpoint(captioning, str(path))
    torch.testing.assert_close(captioning.mlm_head.weight, itc["mlm_head.weight"])


def test_cached_greedy_decoding_matches_full_recomputation(data_world, tiny_spm):
    root, _ = data_world
    task = _task("captioning", root, tiny_spm)
    model = task.build_model(_backbone()).eval()
    tok = task.tokenizer
    image = torch.stack([task.build_dataset("val")[i]["image"] for i in range(2)])
    steps = 6
    cached = generate(model, image, tok.bos_id, tok.eos_id, tok.mask_id, steps + 3, beam_size=1, min_len=steps,
                      vocab_limit=tok.vocab_size, banned_ids=(tok.pad_id, tok.bos_id, tok.mask_id))
    # reference: re-encode image + [<s>, tokens..., <mask>] from scratch at every step, no cache
    seqs = [[tok.bos_id] for _ in range(2)]
    nv = 1 + (32 // 8) ** 2
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([s + [tok.mask_id] for s in seqs])
            out = model.backbone.forward_fused(image, ids, attn_mask=unilm_attention_mask(nv, ids.shape[1]))
            logits = model.mlm_head(out.hidden[:, -1])
            logits[:, tok.vocab_size:] = -1e9
            logits[:, [tok.mask_id, tok.pad_id, tok.bos_id, tok.eos_id]] = -1e9
            for s, t in zip(seqs, logits.argmax(-1).tolist()):
                s.append(t)
    assert cached == [s[1:] for s in seqs]
    beams = generate(model, image, tok.bos_id, tok.eos_id, tok.mask_id, steps + 3, beam_size=3, min_len=1,
                     vocab_limit=tok.vocab_size, banned_ids=(tok.pad_id, tok.bos_id, tok.mask_id))
    assert len(beams) == 2 and all(0 < len(b) <= steps for b in beams)
    assert all(tok.pad_id not in b and tok.mask_id not in b for b in beams)


def test_layer_decay_and_weight_decay_groups(data_world, tiny_spm):
    root, _ = data_world
    model = _task("nlvr2", root, tiny_spm).build_model(_backbone())
    from beit3_plugins.vl_tasks.base import BACKBONE_PREFIX

    assert model.get_submodule(BACKBONE_PREFIX[:-1]) is model.backbone
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5, head_lr_mult=20.0)
    by_name = {n: g for g in groups for n in g["param_names"]}
    depth = len(model.backbone.layers)
    assert by_name["backbone.text_embed.weight"]["lr_scale"] == pytest.approx(0.5 ** (depth + 1))
    assert by_name["backbone.layers.0.attn.qkv.vision.weight"]["lr_scale"] == pytest.approx(0.5 ** depth)
    assert by_name["backbone.layers.3.ffn.text.fc1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["head.dense1.weight"]["lr_scale"] == 20.0
    for name in ("backbone.cls_token", "backbone.vision_pos_embed", "backbone.layers.0.norm1.vision.weight",
                 "backbone.layers.0.attn.qkv.vision.bias", "head.norm1.weight"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["backbone.layers.0.attn.qkv.vision.weight"]["weight_decay"] == 0.05
    assert lr_at_step(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at_step(10, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at_step(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_bad_input_is_counted_or_refused(data_world, tiny_spm, tmp_path):
    root, manifest = data_world
    world = tmp_path / "world"
    shutil.copytree(root, world)
    # a training question whose answers are not in the vocabulary: counted and dropped
    task = _task("vqa", world, tiny_spm, answer_vocab=None)
    task.vocab = type(task.vocab)([a for a in task.vocab.answers if a != "yes"])
    train = task.build_dataset("train")
    assert train.skips.count("vqa_answers_out_of_vocab") > 0
    # evaluation keeps them (they score 0, as on the official server)
    assert len(task.build_dataset("val")) == manifest.counts["vqa_val_questions"]
    # missing image: counted skip, the next record is used
    img = next((world / "coco" / "train2014").iterdir())
    img.unlink()
    items = [train[i] for i in range(len(train))]
    assert train.skips.count("missing_image") >= 1 and all(it["image"] is not None for it in items)
    # over-long text: truncated to max_text_len and counted
    long_q = dict(items[0], question="is there a red circle " * 30)
    batch = task.collate([long_q, items[1]], train=True)
    assert batch["ids"].shape[1] == 24 and task.skips.count("text_truncated") == 1
    # corrupt annotation file: error naming file and position
    ann = world / "coco" / "vqa" / "v2_mscoco_val2014_annotations.json"
    ann.write_text(ann.read_text()[:100])
    with pytest.raises(ValueError, match="invalid JSON .* line"):
        task.build_dataset("val")
    # empty split: clear error
    nlvr = world / "nlvr2" / "nlvr" / "nlvr2" / "data" / "dev.json"
    nlvr.write_text("")
    with pytest.raises(EmptySplitError, match="no usable records"):
        _task("nlvr2", world, tiny_spm).build_dataset("val")
    # tokenizer / model vocabulary mismatch is refused before training
    from beit3_plugins.vl_tasks.train import build_model, compose_config

    cfg = compose_config(["task=retrieval", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={world}",
                          f"data.tokenizer={tiny_spm}", "+model.overrides.vocab_size=16"])
    rt = _task("retrieval", world, tiny_spm)
    with pytest.raises(ValueError, match="text-embedding rows"):
        build_model(cfg, rt, torch.device("cpu"))


def test_recipes_switch_augmentations_on_and_the_tiny_preset_off(data_world, tiny_spm):
    from beit3_plugins.vl_tasks.train import build_task, compose_config

    root, _ = data_world
    base = ["model=beit3_base", f"data.root={root}", f"data.tokenizer={tiny_spm}"]
    on = {name: compose_config([f"task={name}", *base]).train for name in ("vqa", "captioning", "image_classification")}
    assert on["vqa"].randaug and on["captioning"].randaug
    assert on["image_classification"].mixup == 0.8 and on["image_classification"].cutmix == 1.0
    for name in ("vqa", "captioning", "image_classification", "nlvr2"):
        cfg = compose_config([f"task={name}", *base, "preset=cpu_tiny"])
        assert not cfg.train.randaug and cfg.train.mixup == 0 and cfg.train.cutmix == 0, name
    # a switch the task does not implement is refused, not silently ignored
    with pytest.raises(ValueError, match="does not implement train.mixup"):
        build_task(compose_config(["task=vqa", *base, "train.mixup=0.8"]))


def test_randaug_is_applied_to_vl_training_images_only(data_world, tiny_spm):
    from timm.data.auto_augment import RandAugment

    from beit3_plugins.vl_tasks.train import build_task, compose_config

    root, _ = data_world
    cfg = compose_config(["task=retrieval", "model=beit3_tiny", "preset=cpu_tiny", "task.augment=true",
                          "train.randaug=true", f"data.root={root}", f"data.tokenizer={tiny_spm}"])
    task, _ = build_task(cfg)
    task.setup(root, _tok(tiny_spm))
    train, val = task.build_dataset("train"), task.build_dataset("val")
    assert any(isinstance(t, RandAugment) for t in train.transform.transforms)
    assert not any(isinstance(t, RandAugment) for t in val.transform.transforms)
    assert train[0]["image"].shape == (3, 32, 32)


def test_mixup_cutmix_mix_training_batches_of_image_classification(data_world, tiny_spm):
    import numpy as np
    from timm.data import Mixup

    from beit3_plugins.vl_tasks.base import Augmentation

    root, _ = data_world
    task = _task("image_classification", root, tiny_spm, augment=False, label_smoothing=0.1)
    task.set_augmentation(Augmentation(mixup=0.8, cutmix=1.0))
    model = task.build_model(_backbone(normalize_output=False))
    assert isinstance(model.mixup, Mixup)
    torch.manual_seed(0)
    model.classifier.head.weight.data.normal_()  # the released 0.001 init gives ~equal logits for any input
    ds = task.build_dataset("train")
    batch = task.collate([ds[i] for i in range(4)], train=True)
    plain = torch.nn.functional.cross_entropy(model.logits(batch["image"]), batch["label"], label_smoothing=0.1)
    np.random.seed(0)
    loss = model(batch)["loss"]
    np.random.seed(0)  # replay the same draw by hand: timm mixes the images and returns soft targets
    mixed, soft = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=3)(batch["image"].clone(),
                                                                                              batch["label"])
    assert not torch.equal(mixed, batch["image"]) and soft.shape == (4, 3)
    expected = torch.sum(-soft * torch.log_softmax(model.logits(mixed), -1), -1).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, plain)
    model.eval()  # evaluation sees the plain images
    torch.testing.assert_close(model(batch)["loss"], plain, atol=1e-4, rtol=1e-4)
    model.train()
    with pytest.raises(ValueError, match="even batch size"):
        model(task.collate([ds[i] for i in range(3)], train=True))


def test_nocaps_splits_read_the_official_files(data_world, tiny_spm):
    """val: COCO-format captions; test: the image-info file of the server split (images only, no captions)."""
    root, manifest = data_world
    task = _task("captioning", root, tiny_spm, eval_dataset="nocaps")
    val, test = task.build_dataset("val"), task.build_dataset("test")
    assert len(val) == manifest.counts["nocaps_val_images"] and len(test) == manifest.counts["nocaps_test_images"]
    assert val[0]["captions"] and test[0]["captions"] == [] and test[0]["image"].shape[-1] == 32
