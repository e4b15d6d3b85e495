"""Train the local byte-level BPE tokenizer shipped for random-weight explainers.

Why: this build environment cannot download SmolVLM2's tokenizer, yet random-weight
benchmarks need a prompt whose token count resembles the real one (a tokenizer of
single bytes would make the prompt about four times longer and flatter the prefix
cache). So we train a small English BPE once, on text every Python install has (the
standard library's docstrings), and ship the result as package data. The policy
texts are deliberately NOT in the corpus: that would make our own prompt look
shorter than a general-purpose tokenizer would make it.

Run from the repository root:
    python scripts/build_explainer_tokenizer.py
It rewrites moderation/escalation/assets/tokenizer.json; the output depends only on
the Python version's standard library and the `tokenizers` version.
"""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from moderation.escalation.local_processor import SPECIAL_TOKENS, TOKENIZER_FILE  # noqa: E402

VOCAB_SIZE = 8192


def stdlib_docstrings() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring


def main() -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(stdlib_docstrings(), trainer=trainer)
    TOKENIZER_FILE.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(TOKENIZER_FILE))
    print(f"wrote {TOKENIZER_FILE.relative_to(REPO_ROOT)}: {tokenizer.get_vocab_size()} tokens")


if __name__ == "__main__":
    main()
