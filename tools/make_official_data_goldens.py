"""Regenerate tests/support/golden/official_data by running microsoft/unilm's own ``beit3/datasets.py``.

    python tools/make_official_data_goldens.py UNILM_GIT_DIR [OUT_DIR]

UNILM_GIT_DIR is a clone (or bare mirror) of microsoft/unilm; its ``beit3/datasets.py`` and ``glossary.py`` are
copied, unmodified, into a temporary folder and imported there (nothing of them enters this repository). Needs
``transformers`` (for ``XLMRobertaTokenizer``; 4.46.3 made the committed files), e.g. installed with
``pip install --target DIR`` and put on PYTHONPATH. The official module imports ``utils`` (``torch._six``, gone in
torch 2) and ``randaug`` (cv2) at import time without using them in ``make_dataset_index``: empty stand-ins are
registered for both.
"""
import json
import random
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(unilm: str, out: Path) -> str:
    commit = subprocess.check_output(["git", "-C", unilm, "rev-parse", "HEAD"], text=True).strip()
    work = Path(tempfile.mkdtemp(prefix="official_data_"))
    code = work / "unilm_beit3"
    code.mkdir()
    for name in ("datasets.py", "glossary.py"):
        (code / name).write_bytes(subprocess.check_output(["git", "-C", unilm, "show", f"{commit}:beit3/{name}"]))
    sys.modules["utils"] = types.ModuleType("utils")
    sys.modules["randaug"] = types.ModuleType("randaug")
    sys.modules["randaug"].RandomAugment = None
    sys.path[:0] = [str(code), str(ROOT / "tests" / "support")]
    import datasets as official
    import glossary
    import official_data as inputs
    from transformers import XLMRobertaTokenizer

    from beit3_plugins.data import WorldConfig, generate_world
    from beit3_plugins.tokenizer import train_sentencepiece

    random.seed(0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "normalize_word.json").write_text(json.dumps(
        {a: glossary.normalize_word(a) for a in inputs.ANSWER_FORMS}, indent=1, ensure_ascii=False) + "\n")
    crafted = inputs.write_crafted_vqa(work / "crafted")
    no_text = types.SimpleNamespace(tokenize=lambda text: [], convert_tokens_to_ids=lambda tokens: [])
    official.VQAv2Dataset.make_dataset_index(str(crafted), no_text, str(crafted / "vqa"))
    (out / "crafted").mkdir(exist_ok=True)
    shutil.copy(crafted / "answer2label.txt", out / "crafted" / "answer2label.txt")

    world = work / "world"
    manifest = generate_world(world, WorldConfig(**inputs.WORLD))
    spm = out / "tiny.spm"
    if not spm.is_file():  # keep the committed model: token ids must not follow sentencepiece's trainer
        shutil.copy(train_sentencepiece(manifest.path("text_corpus"), work / "spm" / "tiny", inputs.SPM_PIECES), spm)
    tok = XLMRobertaTokenizer(str(spm))
    coco, nlvr2, flickr, nocaps, imagenet = (world / d for d in ("coco", "nlvr2", "flickr30k", "nocaps", "imagenet"))
    official.VQAv2Dataset.make_dataset_index(str(coco), tok, str(coco / "vqa"))
    official.CaptioningDataset.make_coco_captioning_dataset_index(str(coco), tok)
    official.RetrievalDataset.make_coco_dataset_index(str(coco), tok)
    official.NLVR2Dataset.make_dataset_index(str(nlvr2), tok, str(nlvr2 / "nlvr"))
    official.RetrievalDataset.make_flickr30k_dataset_index(str(flickr), tok, str(flickr))
    official.CaptioningDataset.make_nocaps_captioning_dataset_index(str(nocaps))
    official.ImageNetDataset.make_dataset_index(str(imagenet / "train"), str(imagenet / "val"), str(imagenet))
    for folder in (coco, nlvr2, flickr, nocaps, imagenet):
        for f in sorted(folder.glob("*.jsonl")) + sorted(folder.glob("answer2label.txt")):
            target = out / "world" / folder.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    shutil.rmtree(work)
    return commit


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    print("written with microsoft/unilm", main(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) == 3
                                              else ROOT / "tests" / "support" / "golden" / "official_data"))
