"""VLMo task heads, base-plus and resolution changes against the official VLMo module.

Golden files in ``tests/support/golden/vlmo/`` were produced in a separate session environment (not part of this
repository) by running microsoft/unilm ``vlmo/`` at commit 768a3c873f598bb9b4d4dfb9267b099e35f8fe56
(``vlmo.modules.vlmo_module.VLMo`` with timm 0.4.12, transformers 4.30.2, scipy 1.11.4, torch 2.14.1, CPU;
the harness only made ``Tensor.get_device()`` return "cpu" on CPU tensors, which VLMo's ``.to(device=...)`` calls
need off-GPU; pytorch_lightning 1.5.10 ran for real) on:

* a toy ``MultiWayTransformer`` (patch 8, 64 px, width 32, depth 4, 4 heads, mlp_ratio 2, VL expert from
  layer 3, qkv bias, LayerNorm eps 1e-6), vocab 256, ``max_text_len`` 16, ``max_text_len_of_initckpt`` 64,
  ``vqav2_label_size`` 7, drop path 0; every parameter set to ``randn * 0.3`` (scalars ``* 0.1``) from
  ``torch.Generator().manual_seed(1)`` and rounded to fp16 (files stored in fp16, exact);
  ``loss_names`` itm + itc + vqa + nlvr2 -> ``vlmo_tiny_tasks.pth``;
* the same with ``use_abs_pos_emb=True, need_relative_position_embed=False, layer_scale_init_values=None``
  (VLMo base-plus's layout), seed 2, itm + itc + vqa -> ``vlmo_tiny_plus_tasks.pth``;
* inputs from ``torch.manual_seed(0)``: 2 texts of 16 ids (12 and 6 real tokens), 64 px images (fp16-exact);
  outputs: ``compute_vqa`` / ``compute_nlvr2`` logits (``infer`` with image_token_type_idx 1 and 2),
  ``itm_score(infer()["cls_feats"])``, ``infer_image_ft`` / ``infer_text_ft`` features and
  ``logit_scale.exp()`` similarities, and for resolution: ``vlmo_tiny_tasks.pth`` (2 token-type rows, with
  VLMo's index buffers) loaded by VLMo's own ``load_pretrained_weight`` into a 96 px model (``irtr``), its
  resampled ``relative_position_bias_table`` and ``infer_image_ft`` features of one 96 px image.
"""
from pathlib import Path

import pytest
import torch

from beit3_plugins.backbones import build_backbone
from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint
from beit3_plugins.vl_tasks.nlvr2 import Nlvr2Task, Nlvr2TaskConfig, VlmoNlvr2Model
from beit3_plugins.vl_tasks.retrieval import RetrievalTask, RetrievalTaskConfig, VlmoRetrievalModel
from beit3_plugins.vl_tasks.vqa import VlmoVqaModel

GOLDEN = Path(__file__).resolve().parents[1] / "support" / "golden" / "vlmo"
TOY = dict(embed_dim=32, ffn_dim=64, vocab_size=256)
ATOL = 2e-5


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN / "outputs.pth", weights_only=True)


def _fp32_copy(name, tmp_path):
    """The fp16 golden file as fp32 (the official run used fp32 weights with fp16-exact values)."""
    sd = torch.load(GOLDEN / name, weights_only=True)
    path = tmp_path / name
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, path)
    return path


def _text(golden):
    inputs = golden["inputs"]
    return inputs["text_ids"], ~inputs["text_masks"].bool()


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    return _fp32_copy("vlmo_tiny_tasks.pth", tmp_path_factory.mktemp("vlmo"))


def test_vqa_and_itm_logits_equal_official(golden, tasks_file):
    ids, pad = _text(golden)
    image = golden["inputs"]["image64"].float()
    vqa = VlmoVqaModel(build_backbone("vlmo_tiny", **TOY), num_answers=7).eval()
    report = load_task_checkpoint(vqa, str(tasks_file))
    assert "head.3.weight" in report.loaded and "pooler.dense.weight" in report.loaded
    assert not [k for k in report.missing if not k.startswith("backbone.")]
    with torch.no_grad():
        torch.testing.assert_close(vqa.logits(image, ids, pad), golden["vqa_logits"], atol=ATOL, rtol=0)

    retrieval = VlmoRetrievalModel(build_backbone("vlmo_tiny", **TOY), with_itm=True).eval()
    load_task_checkpoint(retrieval, str(tasks_file))
    with torch.no_grad():
        torch.testing.assert_close(retrieval.itm_logits(image, ids, pad), golden["itm_logits"], atol=ATOL, rtol=0)


def test_itc_features_and_similarities_equal_official(golden, tasks_file):
    ids, pad = _text(golden)
    image = golden["inputs"]["image64"].float()
    model = VlmoRetrievalModel(build_backbone("vlmo_tiny", **TOY)).eval()
    report = load_task_checkpoint(model, str(tasks_file))
    assert any("itc_vl_text_proj" in n for n in report.notes)   # pretraining's VL contrast: reported unused
    with torch.no_grad():
        img, txt = model.embed_images(image), model.embed_texts(ids, pad)
        torch.testing.assert_close(img, golden["itc_image"], atol=ATOL, rtol=0)
        torch.testing.assert_close(txt, golden["itc_text"], atol=ATOL, rtol=0)
        sims = model.contrastive.logit_scale.exp() * img @ txt.t()
        torch.testing.assert_close(sims, golden["itc_logits_per_image"], atol=ATOL, rtol=0)


def test_nlvr2_logits_with_pair_type_rows_equal_official(golden, tasks_file):
    ids, pad = _text(golden)
    inputs = golden["inputs"]
    model = VlmoNlvr2Model(build_backbone("vlmo_tiny", **TOY)).eval()
    report = load_task_checkpoint(model, str(tasks_file))
    assert "second_image_type" in report.loaded
    assert float(model.second_image_type.abs().max()) > 0.1     # the released row 2 differs from row 1
    with torch.no_grad():
        logits = model.logits(inputs["image64"].float(), inputs["image64_b"].float(), ids, pad)
    torch.testing.assert_close(logits, golden["nlvr2_logits"], atol=ATOL, rtol=0)


def test_tasks_pick_vlmo_heads_for_vlmo_backbones():
    vlmo, beit3 = build_backbone("vlmo_tiny", **TOY), build_backbone("beit3_tiny")
    assert isinstance(Nlvr2Task(Nlvr2TaskConfig()).build_model(vlmo), VlmoNlvr2Model)
    assert not isinstance(Nlvr2Task(Nlvr2TaskConfig()).build_model(beit3), VlmoNlvr2Model)
    assert isinstance(RetrievalTask(RetrievalTaskConfig()).build_model(vlmo), VlmoRetrievalModel)
    assert not isinstance(RetrievalTask(RetrievalTaskConfig()).build_model(beit3), VlmoRetrievalModel)


def test_64px_checkpoint_at_96px_equals_vlmos_own_loader(golden, tasks_file):
    """VLMo resamples the table with a bicubic spline on geometric source distances; timm's default
    (linear without scipy) would differ by ~1 here."""
    ids, pad = _text(golden)
    model = VlmoRetrievalModel(build_backbone("vlmo_tiny", img_size=96, **TOY)).eval()
    report = load_task_checkpoint(model, str(tasks_file))
    assert any("resampled from a 8x8 to a 12x12" in n for n in report.notes)
    torch.testing.assert_close(model.backbone.rel_pos.table.detach(), golden["res96_rel_table"], atol=1e-6, rtol=0)
    with torch.no_grad():
        img = model.embed_images(golden["inputs"]["image96"].float())
        torch.testing.assert_close(img, golden["res96_itc_image"], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.embed_texts(ids, pad), golden["res96_itc_text"], atol=ATOL, rtol=0)


def test_base_plus_layout_loads_and_equals_official(golden, tmp_path):
    ids, pad = _text(golden)
    image = golden["inputs"]["image64"].float()
    path = _fp32_copy("vlmo_tiny_plus_tasks.pth", tmp_path)
    plus = dict(TOY, max_text_positions=16 + 2)
    vqa = VlmoVqaModel(build_backbone("vlmo_tiny_plus", **plus), num_answers=7).eval()
    report = load_task_checkpoint(vqa, str(path))                 # strict backbone: nothing missing
    assert "backbone.vision_pos_embed" in report.loaded and "backbone.text_pos_embed" in report.loaded
    retrieval = VlmoRetrievalModel(build_backbone("vlmo_tiny_plus", **plus)).eval()
    load_task_checkpoint(retrieval, str(path))
    with torch.no_grad():
        torch.testing.assert_close(vqa.logits(image, ids, pad), golden["plus_vqa_logits"], atol=ATOL, rtol=0)
        torch.testing.assert_close(retrieval.embed_images(image), golden["plus_itc_image"], atol=ATOL, rtol=0)
        torch.testing.assert_close(retrieval.embed_texts(ids, pad), golden["plus_itc_text"], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="absolute positions"):
        load_task_checkpoint(VlmoVqaModel(build_backbone("vlmo_tiny", **TOY), num_answers=7), str(path))


# ---------------------------------------------------------------------------------------------- trainer
def _world_vocab(manifest, path, size=256):
    """A BERT-layout vocab.txt from the world's corpus: specials, letters and ``##`` letters (every word
    tokenizes), then the most frequent words."""
    from collections import Counter

    from beit3_plugins.data import read_text_lines

    words = Counter(w for line in read_text_lines(manifest.path("text_corpus")) for w in
                    "".join(c if c.isalnum() else " " for c in line.lower()).split())
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "'", "-"]
    pieces += letters + ["##" + c for c in letters]
    pieces += [w for w, _ in words.most_common() if w not in pieces][: size - len(pieces)]
    path.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return path


def _train(task, root, vocab, out, *extra):
    import csv

    from beit3_plugins.vl_tasks.train import compose_config, run

    cfg = compose_config([f"task={task}", "model=vlmo_tiny", "preset=cpu_tiny", f"data.root={root}",
                          f"data.tokenizer={vocab}", f"train.output_dir={out}", "train.tensorboard=false",
                          "+model.overrides.embed_dim=32", "+model.overrides.ffn_dim=64",
                          "+model.overrides.vocab_size=256", *extra])
    result = run(cfg)
    losses = [float(r["value"]) for r in csv.DictReader(open(out / "metrics.csv"))
              if r["split"] == "train" and r["name"] == "loss"]
    weights = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    return result, losses, weights


def test_trainer_fine_tunes_a_released_vlmo_nlvr2_file_with_wordpiece(data_world, tasks_file, tmp_path):
    """model=vlmo_tiny, WordPiece text, the released-layout NLVR2 file (its heads and pair type row loaded, its
    64 px table resampled to the preset's 32 px) fine-tuned by the same trainer: the loss falls."""
    root, manifest = data_world
    vocab = _world_vocab(manifest, tmp_path / "vocab.txt")
    result, losses, weights = _train("nlvr2", root, vocab, tmp_path / "nlvr2", f"model.checkpoint={tasks_file}",
                                     "train.max_steps=20", "train.epochs=10", "train.log_every=1", "train.lr=3e-4")
    released = torch.load(tasks_file, weights_only=True)
    assert result["steps"] == 20 and "nlvr2_classifier.3.weight" in weights and "second_image_type" in weights
    assert weights["backbone.norm.shared.weight"].shape == (32,)          # VLMo's final norm kept on
    # started from the file's head (the update is small next to the file's random 0.3-scale weights)
    start = released["nlvr2_classifier.0.weight"]
    assert (weights["nlvr2_classifier.0.weight"] - start).abs().mean() < 0.1 * start.abs().mean()
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


def test_zoo_lists_the_18_published_vlmo_files():
    """microsoft/unilm vlmo/README.md: 3 pretrained, 3 stage-2, and VQA / NLVR2 / COCO / Flickr30k for base,
    base-plus and large; BERT-uncased WordPiece text."""
    from beit3_plugins.zoo import get_pretrained, list_pretrained

    files = [get_pretrained(n) for n in list_pretrained(family="vlmo") if get_pretrained(n).task != "tokenizer"]
    assert len(files) == 18
    counts = {t: sum(e.task == t for e in files) for t in {e.task for e in files}}
    assert counts == {"pretrain": 6, "vqa": 3, "nlvr2": 3, "retrieval": 6}
    for e in files:
        assert e.weights.url == "https://github.com/wenhui0924/vlmo_ckpts/releases/download/vlmo/" + e.name + ".pt"
        assert e.tokenizer.kind == "wordpiece" and e.normalize_output
        assert e.backbone in ("vlmo_base", "vlmo_base_plus", "vlmo_large") and e.backbone.replace("vlmo_", "") in e.name
    assert get_pretrained("vlmo_base_plus_patch16_480_vqa").image_size == 480
    assert get_pretrained("vlmo_large_patch16_384_f30k").base == "vlmo_large_patch16_384_coco"


def test_vqa_pipeline_runs_a_vlmo_file_with_wordpiece(data_world, tmp_path):
    """pipeline("vqa") over a VLMo task file (settings of the published vlmo_base VQA entry, tiny backbone):
    VLMo's task model and the WordPiece tokenizer are used, scores equal that model's own."""
    from PIL import Image

    from beit3_plugins.pipelines import PIPELINES, create_model_and_transforms, get_tokenizer
    from beit3_plugins.transforms import build_image_transform
    from beit3_plugins.vl_tasks.base import encode_texts

    _, manifest = data_world
    vocab = _world_vocab(manifest, tmp_path / "vocab.txt")
    torch.manual_seed(0)
    ref = VlmoVqaModel(build_backbone("vlmo_tiny", img_size=64), num_answers=4).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path / "vlmo_tiny_vqa.pth"
    torch.save(ref.state_dict(), path)
    answers = ["yes", "no", "red", "two"]
    model, _, transform = create_model_and_transforms(str(path), like="vlmo_base_patch16_480_vqa", backbone="vlmo_tiny",
                                                      image_size=64, head={"num_answers": 4})
    tok = get_tokenizer(model.zoo_entry, str(vocab))
    pipe = PIPELINES["vqa"](model, transform, tok, device=torch.device("cpu"), dtype=torch.float32, batch_size=4,
                            answers=answers)
    assert isinstance(pipe.model, VlmoVqaModel) and type(pipe.tokenizer).__name__ == "BertWordPieceTokenizer"
    image = Image.new("RGB", (80, 64), (200, 30, 30))
    out = pipe(image, "what colour is the circle?", top_k=4)
    pixels = build_image_transform("vl", train=False, image_size=64)(image)[None]
    ids, pad = encode_texts(pipe.tokenizer, ["what colour is the circle?"], 40)
    with torch.no_grad():
        scores = torch.sigmoid(ref.logits(pixels, ids, pad))[0]
    assert [o["answer"] for o in out] == [answers[i] for i in scores.argsort(descending=True).tolist()]
    torch.testing.assert_close(torch.tensor([o["score"] for o in out]), scores.sort(descending=True).values,
                               atol=1e-5, rtol=0)
