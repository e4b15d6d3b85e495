"""Reviewers' questions to SmolVLM2 ("is the knife being sold?") and its advisory answers.

A reviewer looking at a case may ask the explainer one short question about the image.
The answer is a few sentences, marked advisory: it informs the reviewer and decides
nothing. Like verdicts, answers are decoded under a JSON grammar (grammar.py) so that
any model, a random one included, produces a well-formed answer within its token
budget: `{"answer":["sentence", ...]}`, 1 to MAX_SENTENCES sentences of bounded length
and a small character set (no markup: a console shows answers as text anyway, and
escapes them).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from moderation.escalation.verdict import RATIONALE_CHARACTERS, RATIONALE_MAX_CHARS

QUESTION_MAX_CHARS = 300
MAX_SENTENCES = 3
SENTENCE_MAX_CHARS = RATIONALE_MAX_CHARS  # xgrammar's bounded-repetition limit applies here too (verdict.py)
SENTENCE_CHARACTERS = "?!" + RATIONALE_CHARACTERS  # "-" stays last: literal, not a range
# A sentence starts with a visible character: a weak model must not answer in blanks.
SENTENCE_PATTERN = f"^[{SENTENCE_CHARACTERS.replace(' ', '')}][{SENTENCE_CHARACTERS}]{{0,{SENTENCE_MAX_CHARS - 1}}}$"
# What closes an answer whose token budget ran out inside a sentence: the string, the list, the object.
CLOSE_ANSWER = '"]}'
ANSWER_MAX_NEW_TOKENS = 128


class InvalidQuestion(ValueError):
    """The question cannot be asked; the message says why (empty, too long, control characters)."""


class InvalidAnswer(ValueError):
    """The explainer's output is not an answer."""


def check_question(question: str) -> str:
    """The question as it will be asked (surrounding space trimmed), or InvalidQuestion."""
    text = question.strip()
    if not text:
        raise InvalidQuestion("the question is empty")
    if len(text) > QUESTION_MAX_CHARS:
        raise InvalidQuestion(f"the question is {len(text)} characters; at most {QUESTION_MAX_CHARS} are allowed")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidQuestion("the question holds control characters (line breaks included); ask it on one line")
    return text


def answer_json_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "answer": {
                "type": "array",
                "items": {"type": "string", "pattern": SENTENCE_PATTERN},
                "minItems": 1,
                "maxItems": MAX_SENTENCES,
            }
        },
        "required": ["answer"],
        "additionalProperties": False,
    }


def parse_answer(text: str) -> str:
    """The sentences of a generated answer joined into one text; InvalidAnswer when it breaks the schema."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidAnswer(f"not JSON ({err.msg} at character {err.pos}): {text[:200]!r}") from None
    sentences = document.get("answer") if isinstance(document, dict) and set(document) == {"answer"} else None
    if not isinstance(sentences, list) or not 1 <= len(sentences) <= MAX_SENTENCES:
        raise InvalidAnswer(f"expected {{\"answer\": [1 to {MAX_SENTENCES} sentences]}}: {text[:200]!r}")
    for sentence in sentences:
        if not isinstance(sentence, str) or not re.fullmatch(SENTENCE_PATTERN.strip("^$"), sentence):
            raise InvalidAnswer(f"a sentence must be 1 to {SENTENCE_MAX_CHARS} characters of [{SENTENCE_CHARACTERS}]: {sentence!r}")
    return " ".join(sentence.strip() for sentence in sentences).strip()
