"""Metrics of the BEiT-3 vision-language benchmarks, registered in ``METRICS``, equal to the official scorers.

* ``vqa_accuracy`` - the official VQA evaluation script's accuracy (GT-Vision-Lab/VQA ``vqaEval.py``): answers
  are normalised (punctuation, number words, articles, contractions) only when the annotators disagree, then
  the mean over the leave-one-annotator-out subsets of ``min(1, #matching / 3)``; per answer type too.
* ``recall_at_k`` - image->text and text->image R@1/5/10 from a similarity matrix with many captions per
  image (COCO / Flickr30k Karpathy protocol); ``recall_at_k_chunked`` the same from the embeddings in bounded
  memory (the retrieval task's evaluation: 5k images x 25k captions never form one matrix).
* caption metrics - ``pycocoevalcap`` itself (the coco-caption code every captioning paper and the BEiT-3
  evaluation use): PTB tokenizer, Bleu, Meteor, Rouge, Cider, Spice. We call the library rather than
  re-implement it because our own BLEU/CIDEr differed from it in the decimals papers compare. Only the PTB
  tokenizer has a Python stand-in (used when Java is missing; the output says so).
* ``accuracy`` - top-1 accuracy.
"""
from __future__ import annotations

import collections
import importlib
import logging
import re
import shutil
from pathlib import Path
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from beit3_plugins.data.official.answers import vqa_eval_normalize
from beit3_plugins.vl_tasks.registry import METRICS

logger = logging.getLogger(__name__)

__all__ = ["vqa_accuracy", "vqa_question_accuracy", "vqa_eval_normalize", "recall_at_k", "caption_tokenize",
           "tokenize_captions", "ptb_available",
           "bleu", "cider", "rouge_l", "meteor", "meteor_available", "spice", "spice_available", "caption_metrics", "accuracy",
           "top_k_accuracy", "recall_at_k_chunked", "caption_scorers_unavailable"]


# ---------------------------------------------------------------------------------------------- VQA
# The official VQA evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py), rewritten
# from its rules; its answer processing lives once in the core (beit3_plugins.data.official.answers) beside the
# BEiT-3 training-label normalisation; tests/support/golden/vqa_eval holds that script's own scores.
def _vqa_clean(answer: str) -> str:
    """What the script always does: newlines and tabs to spaces, outer whitespace stripped."""
    return answer.replace("\n", " ").replace("\t", " ").strip()


def vqa_question_accuracy(prediction: str, annotator_answers: Sequence[str]) -> float:
    """Official per-question VQA accuracy in [0, 1].

    ``annotator_answers`` are the raw answers of the (ten) annotators, each counted once (the script tells
    them apart by ``answer_id``). Answers are normalised only when the annotators disagree: a prediction
    ``"yes."`` against ten ``"yes"`` scores 0, against nine ``"yes"`` and one ``"no"`` it scores 1. Then the
    mean over the leave-one-annotator-out subsets of ``min(1, matches / 3)``.
    """
    if not annotator_answers:
        raise ValueError("a VQA question needs its annotators' answers to be scored")
    gts = [_vqa_clean(a) for a in annotator_answers]
    pred = _vqa_clean(prediction)
    if len(set(gts)) > 1:
        gts = [vqa_eval_normalize(a) for a in gts]
        pred = vqa_eval_normalize(pred)
    matches = sum(1 for a in gts if a == pred)
    scores = [min(1.0, (matches - (gt == pred)) / 3.0) for gt in gts]
    return sum(scores) / len(scores)


@METRICS.register("vqa_accuracy")
def vqa_accuracy(predictions: Mapping[Hashable, str], annotations: Mapping[Hashable, Sequence[str]],
                 answer_types: Optional[Mapping[Hashable, str]] = None) -> Dict[str, float]:
    """Mean official accuracy (in %) over ``predictions`` {question_id: answer}; every id needs annotations
    (the raw annotator answers). With ``answer_types`` {question_id: "yes/no" | "number" | "other"} also the
    per-answer-type accuracies the papers report (``vqa_accuracy_yes/no`` ...). Unrounded; the script
    rounds to 2 decimals."""
    if not predictions:
        raise ValueError("no VQA predictions to score (empty split?)")
    missing = [q for q in predictions if q not in annotations]
    if missing:
        raise KeyError(f"{len(missing)} predicted question(s) have no annotations, e.g. {missing[:5]}")
    per_question = {q: vqa_question_accuracy(predictions[q], annotations[q]) for q in predictions}
    out = {"vqa_accuracy": 100.0 * sum(per_question.values()) / len(per_question)}
    if answer_types:
        by_type: Dict[str, List[float]] = collections.defaultdict(list)
        for q, acc in per_question.items():
            if answer_types.get(q):
                by_type[answer_types[q]].append(acc)
        out.update({f"vqa_accuracy_{t}": 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())})
    return out


# ---------------------------------------------------------------------------------------------- retrieval
@METRICS.register("recall_at_k")
def recall_at_k(similarity, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@K (in %) of both directions.

    Args:
        similarity: (num_images, num_texts) scores (numpy or torch).
        text_to_image: for every text, the index of its (only) ground-truth image.
    Image->text counts a hit when any of the image's texts is in its top K; text->image when its image is.
    """
    sim = similarity.detach().cpu().numpy() if hasattr(similarity, "detach") else np.asarray(similarity)
    sim = sim.astype(np.float64)
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n_img, n_txt = sim.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError("recall@K of an empty set of images or texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must have one entry per text ({n_txt}), got {t2i.shape}")
    # rank of the best ground truth for each image (stable: ties count against us via >=)
    out: Dict[str, float] = {}
    i2t_rank = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        order = np.argsort(-sim[i], kind="stable")
        positions = np.nonzero(t2i[order] == i)[0]
        i2t_rank[i] = positions.min() if positions.size else n_txt
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    for j in range(n_txt):
        order = np.argsort(-sim[:, j], kind="stable")
        t2i_rank[j] = int(np.nonzero(order == t2i[j])[0][0])
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((i2t_rank < k).mean())
        out[f"t2i_r{k}"] = 100.0 * float((t2i_rank < k).mean())
    out["r_mean"] = float(np.mean([out[f"i2t_r{k}"] for k in ks] + [out[f"t2i_r{k}"] for k in ks]))
    return out


def _ranks_of_targets(scores, targets):
    """Position of ``targets[r]`` in row r of ``scores`` sorted descending (stable)."""
    import torch

    target_score = scores.gather(1, targets[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    better = (scores > target_score).sum(1)
    tied_before = ((scores == target_score) & (columns[None, :] < targets[:, None])).sum(1)
    return better + tied_before


def recall_at_k_chunked(image_emb, text_emb, text_to_image: Sequence[int],
                        ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> Dict[str, float]:
    """R@K (in %) in both directions from (N, D) image and (M, D) text embeddings, equal to
    :func:`recall_at_k` on ``image_emb @ text_emb.T`` without holding that matrix: the ranks are computed one
    block of ``chunk`` rows at a time and only each ground truth's rank is kept, so memory is
    O(chunk * max(N, M)); ties are broken like the full version's stable sort (the earlier index first)."""
    import torch

    t2i = torch.as_tensor(text_to_image, dtype=torch.long, device=image_emb.device)
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError("recall@K of an empty set of images or texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must have one entry per text ({n_txt}), got {tuple(t2i.shape)}")
    # text -> image: rank of each text's image among all images
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for start in range(0, n_txt, chunk):
        scores = text_emb[start:start + chunk] @ image_emb.T
        t2i_rank[start:start + chunk] = _ranks_of_targets(scores, t2i[start:start + chunk]).cpu()
    # image -> text: best rank over the image's texts; texts are grouped by image to score only their rows
    i2t_rank = torch.full((n_img,), n_txt, dtype=torch.long)
    order = torch.argsort(t2i, stable=True)
    for start in range(0, n_txt, chunk):
        texts = order[start:start + chunk]
        images = t2i[texts]
        scores = image_emb[images] @ text_emb.T
        ranks = _ranks_of_targets(scores, texts).cpu()
        i2t_rank.scatter_reduce_(0, images.cpu(), ranks, reduce="amin")
    out: Dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((i2t_rank < k).float().mean())
        out[f"t2i_r{k}"] = 100.0 * float((t2i_rank < k).float().mean())
    out["r_mean"] = sum(out[f"i2t_r{k}"] + out[f"t2i_r{k}"] for k in ks) / (2 * len(ks))
    return out


# ---------------------------------------------------------------------------------------------- captions
# coco-caption's scorers as every captioning paper and the BEiT-3 code (COCOEvalCap) report them: pycocoevalcap's
# PTB tokenizer (Java), then its Bleu / Rouge / Cider (pure Python) and Meteor / Spice (Java jars). Where Java is
# missing, a Python approximation of the PTB tokenisation stands in and the metrics say so (ptb_tokenizer = 0).
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
              "...", ";"}
_CLITIC = re.compile(r"(?i)(n't|'s|'re|'ve|'ll|'d|'m)$")


def caption_tokenize(text: str) -> List[str]:
    """Python stand-in for the PTB tokenizer when Java is missing: lower-case words, clitics split off
    (``dog's`` -> ``dog 's``), the punctuation coco-caption removes dropped."""
    text = text.lower().replace("\n", " ")
    tokens = []
    for token in re.findall(r"[a-z0-9]+(?:'[a-z]+)?|n't|[^\sa-z0-9]", text):
        clitic = _CLITIC.search(token)
        if clitic and clitic.start() > 0:
            tokens += [token[:clitic.start()], clitic.group(1)]
        else:
            tokens.append(token)
    return [t for t in tokens if t not in _PTB_PUNCT and re.search(r"[a-z0-9]", t)]


def _check_caption_inputs(predictions: Mapping, references: Mapping) -> List[Hashable]:
    if not predictions:
        raise ValueError("no captions to score (empty split?)")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise KeyError(f"{len(missing)} caption(s) have no references, e.g. image ids {missing[:5]}")
    return list(predictions)


def ptb_available() -> bool:
    """pycocoevalcap's PTB tokenizer runs Stanford's tokenizer jar (shipped with it) through Java."""
    return _java_scorer_missing("tokenizer.ptbtokenizer") is None


def tokenize_captions(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                      use_ptb: Optional[bool] = None) -> Tuple[Dict, Dict, bool]:
    """(references, predictions, used_ptb) tokenised as coco-caption does, in pycocoevalcap's input format
    ``{key: [sentence, ...]}``; ``use_ptb=None`` uses the PTB tokenizer when Java is present."""
    keys = _check_caption_inputs(predictions, references)
    use_ptb = ptb_available() if use_ptb is None else use_ptb
    if use_ptb:
        missing = _java_scorer_missing("tokenizer.ptbtokenizer")
        if missing:
            raise ImportError(f"the PTB tokenizer needs {missing}")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": r} for r in references[k]] for k in keys})
        res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in keys})
        return gts, res, True
    gts = {k: [" ".join(caption_tokenize(r)) for r in references[k]] for k in keys}
    res = {k: [" ".join(caption_tokenize(predictions[k]))] for k in keys}
    return gts, res, False


def _scored(scorer, gts, res) -> float:
    score, _ = scorer.compute_score(gts, res)
    return score


@METRICS.register("bleu")
def bleu(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
         use_ptb: Optional[bool] = None) -> Dict[str, float]:
    """Corpus BLEU-1..4 (x100) by pycocoevalcap's ``Bleu(4)`` on coco-caption tokens."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res, _ = tokenize_captions(predictions, references, use_ptb)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"bleu{n}": 100.0 * float(v) for n, v in enumerate(scores, 1)}


@METRICS.register("cider")
def cider(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
          use_ptb: Optional[bool] = None) -> Dict[str, float]:
    """CIDEr-D by pycocoevalcap's ``Cider``, x100 as papers report it (BEiT-3 base COCO: 147.6)."""
    from pycocoevalcap.cider.cider import Cider

    gts, res, _ = tokenize_captions(predictions, references, use_ptb)
    return {"cider": 100.0 * float(_scored(Cider(), gts, res))}


@METRICS.register("rouge_l")
def rouge_l(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
            use_ptb: Optional[bool] = None) -> Dict[str, float]:
    """ROUGE-L (x100) by pycocoevalcap's ``Rouge``."""
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res, _ = tokenize_captions(predictions, references, use_ptb)
    return {"rouge_l": 100.0 * float(_scored(Rouge(), gts, res))}


def _java_scorer_missing(module: str, needs_models: bool = False) -> Optional[str]:
    """Why a pycocoevalcap Java scorer cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "Java on PATH"
    try:
        mod = importlib.import_module(f"pycocoevalcap.{module}")
    except ImportError:
        return "`pip install pycocoevalcap` (it ships the scorer's jar)"
    if needs_models:  # SPICE parses with Stanford CoreNLP, which pycocoevalcap downloads on first use
        lib = Path(mod.__file__).parent / "lib"
        if not any(lib.glob("stanford-corenlp-*-models.jar")):
            return (f"the Stanford CoreNLP jars in {lib} (pycocoevalcap's get_stanford_models.py downloads "
                    "them; offline, copy them there)")
    return None


def meteor_available() -> bool:
    """METEOR needs Java and the jar shipped with ``pycocoevalcap``."""
    return _java_scorer_missing("meteor.meteor") is None


def spice_available() -> bool:
    """SPICE needs Java, ``pycocoevalcap`` and the Stanford CoreNLP jars (downloaded once)."""
    return _java_scorer_missing("spice.spice", needs_models=True) is None


@METRICS.register("meteor")
def meteor(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> Dict[str, float]:
    """METEOR 1.5 through pycocoevalcap's jar; raises ImportError naming the requirement otherwise."""
    missing = _java_scorer_missing("meteor.meteor")
    if missing:
        raise ImportError(f"METEOR needs {missing}")
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res, _ = tokenize_captions(predictions, references)
    return {"meteor": 100.0 * float(_scored(Meteor(), gts, res))}


@METRICS.register("spice")
def spice(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> Dict[str, float]:
    """SPICE through pycocoevalcap's jar; raises ImportError naming the requirement otherwise."""
    missing = _java_scorer_missing("spice.spice", needs_models=True)
    if missing:
        raise ImportError(f"SPICE needs {missing}")
    from pycocoevalcap.spice.spice import Spice

    gts, res, _ = tokenize_captions(predictions, references)
    return {"spice": 100.0 * float(_scored(Spice(), gts, res))}


def caption_scorers_unavailable() -> Dict[str, str]:
    """{metric: what it needs} for the Java scorers of :func:`caption_metrics` that cannot run here."""
    missing = {"meteor": _java_scorer_missing("meteor.meteor"),
               "spice": _java_scorer_missing("spice.spice", needs_models=True)}
    return {name: why for name, why in missing.items() if why}


def caption_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                    use_ptb: Optional[bool] = None) -> Dict[str, float]:
    """COCOEvalCap's set, x100: BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE, on one tokenisation.

    ``ptb_tokenizer`` is 1.0 when the PTB tokenizer ran and 0.0 when the Python stand-in did (no Java; the
    scores are then close to, not equal to, coco-caption's). A Java scorer that cannot run here is left out
    and named in a logged warning (SPICE needs the Stanford CoreNLP jars).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res, used_ptb = tokenize_captions(predictions, references, use_ptb)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n}": 100.0 * float(v) for n, v in enumerate(scores, 1)}
    unavailable = caption_scorers_unavailable()
    if "meteor" not in unavailable:
        from pycocoevalcap.meteor.meteor import Meteor

        out["meteor"] = 100.0 * float(_scored(Meteor(), gts, res))
    out["rouge_l"] = 100.0 * float(_scored(Rouge(), gts, res))
    out["cider"] = 100.0 * float(_scored(Cider(), gts, res))
    if "spice" not in unavailable:
        from pycocoevalcap.spice.spice import Spice

        out["spice"] = 100.0 * float(_scored(Spice(), gts, res))
    skipped = [f"{name} (needs {why})" for name, why in unavailable.items()]
    out["ptb_tokenizer"] = 1.0 if used_ptb else 0.0
    if skipped or not used_ptb:
        logger.warning("caption metrics: %s%s", "" if used_ptb else "PTB tokenizer unavailable (no Java), "
                       "Python tokenisation used; ", "not computed: " + "; ".join(skipped) if skipped else "")
    return out


# ---------------------------------------------------------------------------------------------- classification
@METRICS.register("accuracy")
def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> Dict[str, float]:
    """Top-1 accuracy in %."""
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.shape[0] if pred.ndim else 0} predictions vs {gold.shape[0] if gold.ndim else 0} labels")
    if pred.size == 0:
        raise ValueError("accuracy of an empty set (empty split?)")
    return {"accuracy": 100.0 * float((pred == gold).mean())}


@METRICS.register("top_k_accuracy")
def top_k_accuracy(ranked: Sequence[Sequence[int]], labels: Sequence[int], k: int = 5) -> Dict[str, float]:
    """Top-k accuracy in % (``accuracy_top5`` for k=5): the label is among the first k of each ranking
    (all of it when a ranking is shorter, i.e. fewer than k classes)."""
    if len(ranked) != len(labels):
        raise ValueError(f"{len(ranked)} rankings vs {len(labels)} labels")
    if not labels:
        raise ValueError("top-k accuracy of an empty set (empty split?)")
    hits = sum(1 for r, y in zip(ranked, labels) if y in list(r)[:k])
    return {f"accuracy_top{k}": 100.0 * hits / len(labels)}
