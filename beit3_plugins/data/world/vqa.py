"""VQA v2 questions and annotations over the COCO scenes (answers follow from the scene; 10 annotators).

Two ways to pick each image's questions: ``vqa_complementary=False`` (default) draws them from what is true of
the image alone, so a question's answer is often predictable from the question (a blind model scores far above
the constant baseline); ``vqa_complementary=True`` asks them the way VQA v2 was balanced: images go in pairs
(0, 1), (2, 3), ... and each question is asked of both images of its pair, chosen among those whose answers
differ, so the question alone leaves the answer open and only a model that looks at the image beats the
question-only prior. ``vqa_questions="simple"`` keeps the few questions a tiny model learns from scratch in minutes
(see ``_question_specs``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .config import FORMATS
from .scene import KINDS, COLORS, Scene, render_scene
from .writer import FormatWriter, new_scene


def _vqa_candidates(scene: Scene, rng: np.random.Generator) -> List[Tuple[str, str, str, str]]:
    """(question, answer, question_type, answer_type) that are true of ``scene``."""
    out = [("how many shapes are there?", str(scene.count), "how many", "number")]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out.append((f"how many {color} shapes are there?", str(scene.count_where(color=color)), "how many",
                "number"))
    if rng.random() < 0.5:  # balanced yes/no: ask about a present or a random combination
        shape = scene.shapes[int(rng.integers(scene.count))]
        kind, color = shape.kind, shape.color
    else:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out.append((f"is there a {color} {kind}?", "yes" if scene.count_where(kind, color) else "no",
                "is there a", "yes/no"))
    for kind in KINDS:
        if scene.count_where(kind=kind) == 1:
            shape = next(s for s in scene.shapes if s.kind == kind)
            out.append((f"what color is the {kind}?", shape.color, "what color is the", "other"))
            out.append((f"is the {kind} large?", "yes" if shape.size == "large" else "no", "is the",
                        "yes/no"))
    for color in COLORS:
        if scene.count_where(color=color) == 1:
            shape = next(s for s in scene.shapes if s.color == color)
            out.append((f"what shape is {color}?", shape.kind, "what", "other"))
    return out


# (question, answer function (None: the question does not apply to the scene), question_type, answer_type)
_Spec = Tuple[str, Callable[[Scene], Optional[str]], str, str]


def _only(scene: Scene, **where) -> Optional[object]:
    matches = [s for s in scene.shapes if all(getattr(s, k) == v for k, v in where.items())]
    return matches[0] if len(matches) == 1 else None


def _question_specs(family: str) -> List[_Spec]:
    """Every question of ``family`` with a function that answers it for any scene. "mixed": the default world's
    templates; "simple": the questions a tiny model from scratch starts to learn within minutes - how many shapes,
    how many red shapes, is there a red shape (one colour word, as NLVR2's "presence" statements; measured: after
    736 steps it counts shapes well above the blind prior while "what colour is the large shape" and four-colour
    presence questions still sit at it)."""
    specs: List[_Spec] = [("how many shapes are there?", lambda sc: str(sc.count), "how many", "number")]
    colors = ("red",) if family == "simple" else tuple(COLORS)
    for color in colors:
        specs.append((f"is there a {color} shape?", lambda sc, c=color: "yes" if sc.count_where(color=c) else "no",
                      "is there a", "yes/no"))
        specs.append((f"how many {color} shapes are there?", lambda sc, c=color: str(sc.count_where(color=c)),
                      "how many", "number"))
    if family == "simple":
        return specs
    for size in ("large", "small"):
        specs.append((f"what color is the {size} shape?",
                      lambda sc, z=size: getattr(_only(sc, size=z), "color", None), "what color is the", "other"))
    for kind in KINDS:
        for color in COLORS:
            specs.append((f"is there a {color} {kind}?",
                          lambda sc, k=kind, c=color: "yes" if sc.count_where(k, c) else "no", "is there a", "yes/no"))
        specs.append((f"what color is the {kind}?", lambda sc, k=kind: getattr(_only(sc, kind=k), "color", None),
                      "what color is the", "other"))
        specs.append((f"is the {kind} large?", lambda sc, k=kind: None if _only(sc, kind=k) is None else (
            "yes" if _only(sc, kind=k).size == "large" else "no"), "is the", "yes/no"))
    for color in COLORS:
        specs.append((f"what shape is {color}?", lambda sc, c=color: getattr(_only(sc, color=c), "kind", None),
                      "what", "other"))
    return specs


def _complementary_questions(scenes: List[Scene], family: str, k: int, rng: np.random.Generator
                             ) -> List[List[Tuple[str, str, str, str]]]:
    """Per scene, ``k`` (question, answer, question_type, answer_type): each asked of both images of a pair
    (consecutive scenes) with different answers; fewer than ``k`` where the pair has fewer such questions."""
    specs = _question_specs(family)
    out: List[List[Tuple[str, str, str, str]]] = [[] for _ in scenes]
    for a in range(0, len(scenes) - 1, 2):
        b = a + 1
        usable = [s for s in specs if None not in (s[1](scenes[a]), s[1](scenes[b]))
                  and s[1](scenes[a]) != s[1](scenes[b])]
        for c in sorted(rng.choice(len(usable), size=min(k, len(usable)), replace=False)):
            question, answer_of, question_type, answer_type = usable[int(c)]
            for i in (a, b):
                out[i].append((question, answer_of(scenes[i]), question_type, answer_type))
    return out


def _wrong_answers(answer: str, answer_type: str) -> List[str]:
    if answer_type == "yes/no":
        return ["no" if answer == "yes" else "yes"]
    if answer_type == "number":
        return [str(i) for i in range(0, 5) if str(i) != answer]
    pool = list(COLORS) if answer in COLORS else list(KINDS)
    return [a for a in pool if a != answer]


def write_vqa(w: FormatWriter, scenes: Dict[str, List[Tuple[int, Scene, List[str]]]]) -> None:
    rng = w.rng("vqa")
    w.files["vqa_root"] = "coco/vqa"
    for split, items in scenes.items():
        key = split[:-4]
        questions, annotations = [], []
        paired = (_complementary_questions([sc for _, sc, _ in items], w.cfg.vqa_questions,
                                           w.cfg.vqa_questions_per_image, rng) if w.cfg.vqa_complementary else None)
        for position, (image_id, scene, _) in enumerate(items):
            if paired is not None:
                asked = paired[position]
            else:
                candidates = _vqa_candidates(scene, rng)
                k = min(w.cfg.vqa_questions_per_image, len(candidates))
                asked = [candidates[int(c)] for c in sorted(rng.choice(len(candidates), size=k, replace=False))]
            for q_index, (question, answer, question_type, answer_type) in enumerate(asked):
                question_id = image_id * 1000 + q_index
                # noisy annotators -> soft scores below 1; complementary worlds let at most 2 of 10 disagree, so a
                # wrong answer (e.g. the other one of yes/no) never gets the full credit of 3 matching annotators
                n_right = int(rng.integers(8 if w.cfg.vqa_complementary else 6, 11))
                wrong = _wrong_answers(answer, answer_type)
                given = [answer] * n_right + [wrong[int(rng.integers(len(wrong)))] for _ in range(10 - n_right)]
                given = [given[int(i)] for i in rng.permutation(10)]
                answers = [{"answer": a, "answer_confidence": "yes" if a == answer else "maybe",
                            "answer_id": j + 1} for j, a in enumerate(given)]
                questions.append({"image_id": image_id, "question": question, "question_id": question_id})
                annotations.append({"question_type": question_type, "multiple_choice_answer": answer,
                                    "answers": answers, "image_id": image_id, "answer_type": answer_type,
                                    "question_id": question_id})
        info = {"description": "beit3-plugins synthetic shape world VQA", "version": "2.0", "year": 2024}
        license_ = {"name": "CC0", "url": ""}
        w.json(f"vqa_questions_{key}", f"coco/vqa/v2_OpenEnded_mscoco_{split}_questions.json", {
            "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
            "data_subtype": split, "questions": questions})
        w.json(f"vqa_annotations_{key}", f"coco/vqa/v2_mscoco_{split}_annotations.json", {
            "info": info, "license": license_, "data_subtype": split, "annotations": annotations})
        w.counts[f"vqa_{key}_questions"] = len(questions)
    _write_vqa_test(w, info, license_)


def _write_vqa_test(w: FormatWriter, info: Dict, license_: Dict) -> None:
    """test2015 images with questions only (``test2015`` and its ``test-dev2015`` subset: the questions about
    the first half of the images), as the evaluation server splits them. Own seeded stream, so train/val
    stay byte-identical whatever the test size."""
    n = w.cfg.vqa_test_images
    if n < 1:
        return
    rng = np.random.default_rng([w.cfg.seed, FORMATS.index("vqa"), 1])
    w.files["coco_images_test"] = "coco/test2015"
    questions, dev_images = [], set()
    for i in range(n):
        image_id = 1000001 + i
        scene = new_scene(w, rng)
        w.image(f"coco/test2015/COCO_test2015_{image_id:012d}.jpg", render_scene(scene, w.cfg.image_size)[0])
        if i < (n + 1) // 2:
            dev_images.add(image_id)
        candidates = _vqa_candidates(scene, rng)
        k = min(w.cfg.vqa_questions_per_image, len(candidates))
        for q_index, c in enumerate(sorted(rng.choice(len(candidates), size=k, replace=False))):
            questions.append({"image_id": image_id, "question": candidates[int(c)][0],
                              "question_id": image_id * 1000 + q_index})
    for key, subtype, chosen in (("test", "test2015", questions),
                                 ("test-dev", "test-dev2015", [q for q in questions if q["image_id"] in dev_images])):
        w.json(f"vqa_questions_{key}", f"coco/vqa/v2_OpenEnded_mscoco_{subtype}_questions.json", {
            "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
            "data_subtype": subtype, "questions": chosen})
        w.counts[f"vqa_{key}_questions"] = len(chosen)
    w.counts["coco_test_images"] = n
