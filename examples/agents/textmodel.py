"""The stand-in's "model": answers computed from the prompt's text, in pure Python.

Two skills, enough for the research pipeline: which numbered passages are relevant to
a question (keyword scoring, TF-IDF-like, over the passages given), and an extractive
summary (the passages' highest-scoring sentences, in their original order). No
weights, nothing downloaded; the same prompt always gets the same answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter

WORD = re.compile(r"[a-z][a-z'-]+")
PASSAGE = re.compile(r"^\[(\d+)\]\s*(.+)$", re.MULTILINE)
SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOPWORDS = """a about after all also an and any are as at be because been before being but by
    can could did do does for from had has have how if in into is it its more most no
    not of on one or other our out over so some such than that the their them then there
    these they this those through to under up was we were what when where which while
    who why will with would you your"""
STOPWORDS = frozenset(_STOPWORDS.split())


def words(text: str) -> list[str]:
    """The content words of ``text``, lower case, stop words left out."""
    return [w.strip("'-") for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def keywords(question: str, limit: int = 6) -> list[str]:
    """The question's content words, in order, without repeats."""
    return list(dict.fromkeys(w for w in words(question) if len(w) > 2))[:limit]


def passages_of(prompt: str) -> dict[int, str]:
    """The ``[n] text`` lines of a prompt, by number."""
    return {int(n): text.strip() for n, text in PASSAGE.findall(prompt)}


def relevance(question: str, passages: dict[int, str]) -> dict[int, float]:
    """Each passage's score for the question: the sum, over the question's keywords it
    contains, of term frequency times inverse document frequency among the passages."""
    terms = keywords(question, limit=20)
    bags = {n: Counter(words(text)) for n, text in passages.items()}
    scores: dict[int, float] = {}
    for n, bag in bags.items():
        size = sum(bag.values()) or 1
        score = 0.0
        for term in terms:
            if bag[term]:
                holding = sum(1 for other in bags.values() if other[term])
                score += (bag[term] / size) * (1.0 + math.log(len(bags) / holding))
        scores[n] = score
    return scores


def relevant(question: str, passages: dict[int, str], limit: int = 3) -> list[int]:
    """The numbers of the (at most ``limit``) passages that mention the question's
    keywords, best first; ties go to the earlier passage."""
    scores = relevance(question, passages)
    ranked = sorted((n for n, s in scores.items() if s > 0), key=lambda n: (-scores[n], n))
    return ranked[:limit]


def summary(question: str, passages: dict[int, str], sentences: int = 3) -> str:
    """An extractive summary: the ``sentences`` best sentences of the passages, in the
    order they were given. A sentence scores by its words: each the number of other
    sentences that use it, plus three if the question asks about it; per word. A
    sentence that shares no word with the others or the question is left out."""
    found = [s.strip() for text in passages.values() for s in SENTENCE.split(text) if s.strip()]
    frequency = Counter(w for s in found for w in set(words(s)))
    asked = set(keywords(question, limit=20))

    def score(sentence: str) -> float:
        ws = words(sentence)
        return sum(frequency[w] - 1 + 3 * (w in asked) for w in ws) / (len(ws) or 1)

    scores = [score(s) for s in found]
    ranked = sorted((i for i in range(len(found)) if scores[i] > 0), key=lambda i: (-scores[i], i))
    return " ".join(found[i] for i in sorted(ranked[:sentences]))
