"""Caption metrics: hand-computed cases, parity with pycocoevalcap, and the tokenizer against the Java PTB one."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from visattn.data.text import tokenize
from visattn.metrics.captions import (
    caption_scores,
    caption_scores_tokenized,
    cider_d,
    corpus_bleu,
    lcs_length,
    rouge_l,
    sentence_bleu,
)


def _t(text: str) -> list[str]:
    return text.split()


# ---------------------------------------------------------------------------------------------- BLEU by hand
def test_bleu_identical_candidate_is_one_up_to_the_tools_smoothing():
    scores = corpus_bleu([_t("a man riding a horse")], [[_t("a man riding a horse"), _t("a person on a horse")]])
    # (m + 1e-15) / (m + 1e-9) per order and the same smoothing in the length ratio: just below 1.
    assert all(1 - 1e-6 < s < 1 for s in scores)


def test_bleu_brevity_penalty_and_empty_order():
    scores = corpus_bleu([_t("the cat sat")], [[_t("the cat sat on the mat")]])
    # p1 = p2 = p3 = 1; no 4-gram in a 3-word candidate gives p4 = 1e-15 / 1e-9 = 1e-6; BP = exp(1 - 6/3).
    assert scores[:3] == pytest.approx([math.exp(-1)] * 3, rel=1e-6)
    assert scores[3] == pytest.approx(1e-6**0.25 * math.exp(-1), rel=1e-6)


def test_bleu_closest_reference_length():
    # Lengths 2 and 5 for a 4-word candidate: the closest is 5, BP = exp(1 - 5/4).
    assert corpus_bleu([_t("a b c d")], [[_t("a b"), _t("a b c d e")]])[0] == pytest.approx(math.exp(-0.25))
    # A tie (2 and 4 for 3 words) goes to the shorter reference: no penalty.
    assert corpus_bleu([_t("a b c")], [[_t("a b"), _t("a b c d")]])[0] == pytest.approx(1.0)


def test_bleu_clipping_and_corpus_level_sums():
    # "the" counts at most once, as often as in the reference: p1 = 1/4.
    assert corpus_bleu([_t("the the the the")], [[_t("the cat sat on")]])[0] == pytest.approx(0.25)
    # Corpus BLEU sums matches over images (4 + 0 of 8), it does not average per-image scores.
    cands, refs = [_t("a b c d"), _t("w x y z")], [[_t("a b c d")], [_t("e f g h")]]
    assert corpus_bleu(cands, refs)[0] == pytest.approx(0.5)
    assert sentence_bleu(cands[1], refs[1])[0] == pytest.approx(0.0, abs=1e-12)


def test_bleu_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 candidates but 1 reference lists"):
        corpus_bleu([_t("a"), _t("b")], [[_t("a")]])
    with pytest.raises(ValueError, match="reference list 0 is empty"):
        corpus_bleu([_t("a")], [[]])
    with pytest.raises(ValueError, match="max_n"):
        corpus_bleu([_t("a")], [[_t("a")]], max_n=0)


# ---------------------------------------------------------------------------------------------- ROUGE-L by hand
def test_lcs_length():
    assert lcs_length(_t("a b c d e"), _t("a x c y e z")) == 3  # a c e
    assert lcs_length(_t("a x c y e z"), _t("a b c d e")) == 3
    assert lcs_length(_t("a b a b"), _t("b a b a")) == 3
    assert lcs_length([], _t("a b")) == 0


def test_rouge_l_by_hand():
    # LCS 3: P = 3/5, R = 3/6, F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    expected = 2.44 * 0.6 * 0.5 / (0.5 + 1.44 * 0.6)
    assert rouge_l(_t("a b c d e"), [_t("a x c y e z")]) == pytest.approx(expected)
    assert rouge_l(_t("a b"), [_t("a b")]) == 1.0
    assert rouge_l([], [_t("a b")]) == 0.0


def test_rouge_l_maximises_precision_and_recall_separately():
    # Best precision (1) from the long reference, best recall (1) from the short one -> F = 1, as the COCO tool
    # does; the best per-reference F would only be 0.709.
    assert rouge_l(_t("a b"), [_t("a b c d e f"), _t("a")]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- CIDEr-D by hand
def test_cider_identical_captions_score_ten():
    refs = [[_t("a b c d"), _t("a b c d")], [_t("e f g h")]]
    assert cider_d([_t("a b c d"), _t("e f g h")], refs) == pytest.approx([10.0, 10.0])


def test_cider_identical_caption_among_distinct_references():
    refs = [[_t("a b c d"), _t("w x y z")], [_t("e f g h")]]
    # Cosine 1 against the first reference, 0 against the second, for every n: 10 * 4 / (4 * 2).
    assert cider_d([_t("a b c d"), _t("e f g h")], refs) == pytest.approx([5.0, 10.0])


def test_cider_gaussian_length_penalty():
    refs = [[_t("a b c d e f")], [_t("x")]]
    # All n-grams have df 1 of 2 images: equal idf, so per order cos = shared / sqrt(n_cand * n_ref).
    cosines = [4 / math.sqrt(4 * 6), 3 / math.sqrt(3 * 5), 2 / math.sqrt(2 * 4), 1 / math.sqrt(1 * 3)]
    expected = 10 * math.exp(-((4 - 6) ** 2) / (2 * 6.0**2)) * sum(cosines) / 4
    assert cider_d([_t("a b c d"), _t("x")], refs)[0] == pytest.approx(expected)


def test_cider_clips_candidate_counts():
    # "a" twice in the candidate, once in the reference: dot = min(2, 1) * 1 w^2, norms 2w and sqrt(2)w.
    scores = cider_d([_t("a a"), _t("z")], [[_t("a b")], [_t("z")]])
    assert scores[0] == pytest.approx(10 * (1 / (2 * math.sqrt(2))) / 4)


def test_cider_document_frequency_comes_from_the_evaluated_references():
    # "a" is in every image's references: idf = log(3 / 3) = 0, so a candidate of only "a" scores 0.
    refs = [[_t("a b")], [_t("a c")], [_t("a d")]]
    assert cider_d([_t("a"), _t("a c"), _t("a d")], refs)[0] == 0.0
    # A single image: every idf is log(1 / 1) = 0.
    assert cider_d([_t("a b")], [[_t("a b")]]) == [0.0]


# ---------------------------------------------------------------------------------------------- entry point
def test_caption_scores_on_raw_text():
    # Four words at least: a 3-word caption has no 4-grams, so even a perfect one scores 7.5 CIDEr-D.
    refs = {1: ["A dog, running fast.", "a dog running fast"], 2: ["Two cats on a mat."], 3: ["A red car, parked"]}
    cands = {1: "a dog running fast", 2: "Two cats on a mat", 3: "A red car parked."}
    scores = caption_scores(cands, refs)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    tokenized = caption_scores_tokenized({k: tokenize(v) for k, v in cands.items()},
                                         {k: [tokenize(r) for r in v] for k, v in refs.items()})
    assert scores == tokenized
    assert scores["ROUGE-L"] == pytest.approx(1.0) and scores["CIDEr-D"] == pytest.approx(10.0)
    assert all(1 - 1e-6 < scores[f"BLEU-{n}"] < 1 for n in range(1, 5))


def test_caption_scores_empty_candidate_scores_zero():
    scores = caption_scores({"a": "a b c d", "b": ""}, {"a": ["a b c d"], "b": ["e f g h"]})
    assert scores["ROUGE-L"] == pytest.approx(0.5) and scores["CIDEr-D"] == pytest.approx(5.0)
    # 4 candidate words against 8 reference words: BP = exp(1 - 8/4); all 4 words match.
    assert scores["BLEU-1"] == pytest.approx(math.exp(-1), rel=1e-6)


@pytest.mark.parametrize(
    ("cands", "refs", "message"),
    [
        ({1: "a", 2: "b"}, {1: ["a"], 3: ["c"]},
         r"same ids: 1 ids only in candidates \(e.g. \[2\]\), 1 only in references \(e.g. \[3\]\)"),
        ({}, {}, "no references"),
        ({1: "a"}, {1: []}, "references for id 1 is an empty list"),
        ({1: "a"}, {1: "a dog"}, "references for id 1 must be a list of str, got str"),
        ({1: "a"}, {1: ["a", None]}, "references for id 1 must be str, got NoneType"),
        ({1: None}, {1: ["a"]}, "candidate for id 1 must be a str, got NoneType"),
        ({1: "a", 2: "b"}, {1: ["a"], 2: ["...", " "]}, "references for id 2 are empty"),
    ],
)
def test_caption_scores_rejects_bad_input(cands, refs, message):
    with pytest.raises(ValueError, match=message):
        caption_scores(cands, refs)


# ---------------------------------------------------------------------------------------------- pycocoevalcap parity
_WORDS = "a the man dog on in red ball sitting of with two table cat".split()


def _random_sentence(rng: random.Random, low: int, high: int) -> list[str]:
    vocabulary = _WORDS[: rng.randint(3, len(_WORDS))]  # small vocabularies make long n-gram matches likely
    return [rng.choice(vocabulary) for _ in range(rng.randint(low, high))]


def _random_corpus(rng: random.Random) -> tuple[list[list[str]], list[list[list[str]]]]:
    references = [[_random_sentence(rng, 0 if rng.random() < 0.05 else 1, 12) for _ in range(rng.randint(1, 5))]
                  for _ in range(rng.randint(1, 12))]
    candidates = []
    for refs in references:
        if not any(refs):  # every image needs one non-empty reference
            refs[0] = _random_sentence(rng, 1, 12)
        u = rng.random()
        candidate = list(rng.choice(refs)) if u < 0.6 else _random_sentence(rng, 1, 12)
        if 0.3 <= u < 0.6:  # an edited copy of a reference
            for _ in range(rng.randint(1, 3)):
                if candidate and rng.random() < 0.5:
                    candidate.pop(rng.randrange(len(candidate)))
                else:
                    candidate.insert(rng.randint(0, len(candidate)), rng.choice(_WORDS))
        if 0.6 <= u < 0.65:
            candidate = []
        if not candidate and not all(refs):  # see test_rouge_empty_against_empty_reference_differs
            candidate = _random_sentence(rng, 1, 5)
        candidates.append(candidate)
    return candidates, references


def test_parity_with_pycocoevalcap_on_random_caption_sets():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    worst = 0.0
    for seed in range(300):
        candidates, references = _random_corpus(random.Random(seed))
        gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
        res = {i: [" ".join(c)] for i, c in enumerate(candidates)}
        bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouge_per_image = Rouge().compute_score(gts, res)
        cider, cider_per_image = Cider().compute_score(gts, res)
        pairs = list(zip(bleu, corpus_bleu(candidates, references)))
        for i, (cand, refs) in enumerate(zip(candidates, references)):
            pairs += list(zip([b[i] for b in bleu_per_image], sentence_bleu(cand, refs)))
            pairs.append((rouge_per_image[i], rouge_l(cand, refs)))
        pairs += list(zip(cider_per_image, cider_d(candidates, references)))
        ours = caption_scores_tokenized(dict(enumerate(candidates)), dict(enumerate(references)))
        pairs += [(rouge, ours["ROUGE-L"]), (cider, ours["CIDEr-D"])]
        pairs += [(bleu[n], ours[f"BLEU-{n + 1}"]) for n in range(4)]
        worst = max(worst, max(abs(float(a) - b) for a, b in pairs))
    assert worst < 1e-6  # measured: about 2e-15


def test_rouge_empty_against_empty_reference_differs_from_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.rouge.rouge import Rouge

    # The tool splits "" into [""], which matches an empty reference: an empty candidate scores 1.0 there.
    # Ours scores an empty candidate 0, always. This is the one case the parity test above avoids.
    assert Rouge().calc_score([""], ["", "a dog"]) == 1.0
    assert rouge_l([], [[], _t("a dog")]) == 0.0


# ---------------------------------------------------------------------------------------------- the Java tokenizer
def _java_ptb(lines: list[str], tmp_path: Path) -> list[str]:
    """The COCO tool's tokenized captions (CoreNLP 3.4.1 PTBTokenizer + its punctuation filter), as it scores them."""
    ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    if shutil.which("java") is None or not jar.is_file():
        pytest.skip("needs java and the CoreNLP jar shipped with pycocoevalcap")
    # A lower-case line after each caption: PTB looks past the line end (see visattn.data.text).
    source = tmp_path / "captions.txt"
    source.write_text("\n".join(f"{line}\nx" for line in lines), encoding="utf-8")
    command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    output = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=120, check=True)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS)
            for line in output.stdout.split("\n")[0 : 2 * len(lines) : 2]]


_RAW_WORDS = (
    "A a The man woman dog's cat two dogs black-and-white red car is are sitting on in of with table pizza "
    "t-shirt 3.5 10,000 7:30 1/2 don't isn't it's they're we've I'd she'll can't won't cannot gonna children's "
    "Mr. Dr. U.S. e.g. St. etc. (large) [small] \"big\" 'tiny' ... -- - , . ; : ! ? !! ?! & $5 50% #1 o'clock "
    "b/w 1990s TOP-DOWN VIEW Of a. x. Ümlaut café “curly” ‘single’ don’t — …"
).split()


def _raw_caption(rng: random.Random, *, non_empty: bool = False) -> str:
    if non_empty:  # one that keeps a word after punctuation removal
        return next(c for c in iter(lambda: _raw_caption(rng), None) if tokenize(c))
    words = []
    for _ in range(rng.randint(1, 14)):
        word = rng.choice(_RAW_WORDS)
        if rng.random() < 0.15:
            word += rng.choice([",", ".", "!", "?", ";", ":", "'", "...", ")", '"'])
        if rng.random() < 0.05:
            word = rng.choice(["(", '"', "'", "["]) + word
        words.append(word)
    return " ".join(words) + rng.choice(["", ".", " .", "!"])


def test_tokenizer_matches_java_ptb(tmp_path):
    rng = random.Random(0)
    lines = [_raw_caption(rng) for _ in range(500)] + [
        "A man's dog doesn't like the cat.", "It's 3.5 m/s -- wow... isn't it? Yes!",
        "Mr. Smith went to Washington D.C. yesterday.", "A sign with the letter a. The end",
        "plan a. Dog", "a 5 1/2 inch pipe", "rock'n'roll and 'em, 'tis the '90s", "smiling :) or not :-(",
        "AT&T and a&b", "e-mail me at a@b.com or www.example.com", "£5 or €5", "a T-shirt; 20-year-old",
    ]
    java = [line.split() for line in _java_ptb(lines, tmp_path)]  # the tool's BLEU and CIDEr split on any space
    mismatches = [(line, ours, theirs) for line, theirs in zip(lines, java) if (ours := tokenize(line)) != theirs]
    assert not mismatches, mismatches[:5]


def test_caption_scores_match_the_full_coco_pipeline(tmp_path):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    rng = random.Random(1)
    # Non-empty captions: the tool scores an empty candidate against an empty reference 1 for ROUGE-L (above).
    refs = {i: [_raw_caption(rng, non_empty=True) for _ in range(5)] for i in range(100)}
    cands = {i: rng.choice(refs[i]) if rng.random() < 0.3 else _raw_caption(rng, non_empty=True) for i in range(100)}
    lines = [c for i in refs for c in refs[i]] + [cands[i] for i in refs]
    tokens = iter(_java_ptb(lines, tmp_path))
    gts = {i: [next(tokens) for _ in refs[i]] for i in refs}
    res = {i: [next(tokens)] for i in refs}
    theirs = dict(zip(["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    theirs["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    theirs["CIDEr-D"] = Cider().compute_score(gts, res)[0]
    ours = caption_scores(cands, refs)
    assert ours == pytest.approx(theirs, abs=1e-6)
