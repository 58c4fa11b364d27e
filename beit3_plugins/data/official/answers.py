"""The two official VQA answer normalisations and the official answer list, each reproduced once.

* :func:`vqa_eval_normalize` - the official VQA *evaluation* script's answer processing (GT-Vision-Lab/VQA
  ``vqaEval.py``: ``processPunctuation`` then ``processDigitArticle``). ``vl_tasks.metrics`` scores with it;
  tests/support/golden/vqa_eval holds that script's own scores.
* :func:`beit3_normalize_word` - the BEiT-3 *training-label* normalisation (microsoft/unilm
  ``beit3/glossary.py`` ``normalize_word``, taken from ViLT): the same two steps (same tables), then a removal of
  commas that never finds one (the punctuation step has already dropped or spaced every comma), so it is
  :func:`vqa_eval_normalize` by construction. The procedures differ in where they apply: training normalises
  every majority answer, the evaluation only the answers of questions whose annotators disagree, after
  stripping newlines and tabs. It builds the answer list; the evaluation never uses it.
* :func:`official_answer_list` - ``VQAv2Dataset.make_dataset_index``'s ``answer2label``: one
  ``multiple_choice_answer`` per question over train + val, :func:`beit3_normalize_word`, kept when seen at
  least ``min_count`` (9) times, in order of first appearance (3129 answers on VQA v2).
* :func:`official_vqa_targets` - its training targets: the *raw* annotator answers (not normalised) counted and
  matched against the list, scored with :func:`vqa_target_score` (0, 0.3, 0.6, 0.9, 1.0), labels in order of
  the answers' first appearance.

Both normalisations keep the official scripts' quirks (the look-behind typo of the period pattern, ``re.UNICODE``
passed as ``sub``'s count, the punctuation tests made on the unprocessed answer); the goldens in
tests/support/golden/official_data were written by the official code itself.
"""
from __future__ import annotations

import collections
import random
import re
from typing import Dict, Iterable, List, Mapping, Sequence, Set, Tuple

__all__ = ["vqa_eval_normalize", "beit3_normalize_word", "vqa_target_score", "official_answer_list",
           "official_vqa_targets", "vqa_holdout_images", "OFFICIAL_MIN_ANSWER_COUNT"]

OFFICIAL_MIN_ANSWER_COUNT = 9  # make_dataset_index keeps an answer seen at least 9 times (3129 on VQA v2)

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the scripts' pattern, look-behind typo included
_PERIOD_MAX = 32                               # they pass re.UNICODE (= 32) as sub()'s count
_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# the contracted words the scripts restore; each is looked up with any one of its apostrophes missing
_CONTRACTED = (
    "'ow's'at 'twas ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am might've mightn't mightn't've "
    "must've mustn't needn't not've o'clock oughtn't shan't she'd've should've shouldn't shouldn't've "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll "
    "who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd "
    "you'd've you'll you're you've").split()


def _contraction_table() -> Dict[str, str]:
    table = {}
    for word in _CONTRACTED:
        for i, ch in enumerate(word):
            if ch == "'":
                table[word[:i] + word[i + 1:]] = word
    table["somebody'd"] = "somebodyd"  # an entry of the scripts that goes the other way; kept for equal results
    return table


_CONTRACTIONS = _contraction_table()


def vqa_eval_normalize(answer: str) -> str:
    """The VQA evaluation script's answer processing (punctuation, then lower case, number words, articles,
    contractions). The script applies it only to questions whose annotators disagree
    (``vl_tasks.metrics.vqa_question_accuracy``)."""
    text = answer
    digit_comma = _DIGIT_COMMA.search(answer) is not None
    for p in _PUNCT:  # the tests look at the unprocessed answer, as the script does
        if p + " " in answer or " " + p in answer or digit_comma:
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text, count=_PERIOD_MAX)
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def beit3_normalize_word(answer: str) -> str:
    """BEiT-3's training-label normalisation (``glossary.normalize_word``), always applied to a majority answer;
    its string rules are the evaluation's (the golden of the official function checks every case)."""
    return vqa_eval_normalize(answer)


def vqa_target_score(matching_annotators: int) -> float:
    """Soft target of an answer given by ``n`` of the 10 annotators (``VQAv2Dataset.get_score``)."""
    if matching_annotators < 0:
        raise ValueError(f"annotator count must be >= 0, got {matching_annotators}")
    return (0.0, 0.3, 0.6, 0.9)[matching_annotators] if matching_annotators < 4 else 1.0


def official_answer_list(majority_answers: Iterable[str], min_count: int = OFFICIAL_MIN_ANSWER_COUNT) -> List[str]:
    """The answers of ``answer2label.txt`` in label order, from the ``multiple_choice_answer`` of every train
    question then every val question (in file order): normalised, kept when seen ``>= min_count`` times, in
    order of first appearance."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = collections.Counter(beit3_normalize_word(a) for a in majority_answers)  # insertion = first seen
    return [answer for answer, n in counts.items() if n >= min_count]


def official_vqa_targets(annotator_answers: Sequence[str], index: Mapping[str, int]
                         ) -> Tuple[List[int], List[float]]:
    """(labels, scores) of one question: each distinct *raw* annotator answer found in ``index`` (answer ->
    label), scored by how many annotators gave exactly that string; in order of first appearance."""
    counts = collections.Counter(annotator_answers)
    labels, scores = [], []
    for answer, n in counts.items():
        if answer in index:
            labels.append(index[answer])
            scores.append(vqa_target_score(n))
    return labels, scores



def vqa_holdout_images(image_ids: Iterable[int], n: int = 1000, seed: int = 0) -> Set[int]:
    """The val2014 images held out of training (``rest_val``, the local evaluation split), following ViLT: ``n``
    images drawn from the val images. The official draw is an unseeded ``random.shuffle``; this one shuffles the
    sorted ids with ``random.Random(seed)`` so ``data prepare`` and the VQA task hold out the same images."""
    images = sorted(set(image_ids))
    random.Random(seed).shuffle(images)
    return set(images[:n])
