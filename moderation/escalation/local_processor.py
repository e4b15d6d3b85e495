"""A SmolVLM processor built on this machine, for explainers with random weights.

Real weights come with their own processor (`AutoProcessor.from_pretrained`). Random
weights have none and the hub cannot be reached, so we assemble the same processor
classes from parts that ship with the package: a byte-level BPE tokenizer trained on
English text (see scripts/build_explainer_tokenizer.py) that carries the special
tokens SmolVLM's prompt format uses, and SmolVLM's own image processor set to one
square frame without tiling.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast
from transformers.models.smolvlm import SmolVLMImageProcessor, SmolVLMProcessor
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

from moderation.escalation.prompt import BEGIN_TURN, END_OF_UTTERANCE

TOKENIZER_FILE = Path(__file__).parent / "assets" / "tokenizer.json"

PAD = "<|endoftext|>"
IMAGE = "<image>"
FAKE_TOKEN_AROUND_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"

# The row/column tokens are only used when an image is tiled; the processor may still
# look them up, so they exist even though the explainer never tiles.
_TILE_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))
SPECIAL_TOKENS = (
    PAD,
    BEGIN_TURN,
    "<|im_end|>",
    END_OF_UTTERANCE,
    FAKE_TOKEN_AROUND_IMAGE,
    IMAGE,
    GLOBAL_IMAGE,
    "<video>",
) + _TILE_TOKENS

# SmolVLM's images are normalised to [-1, 1].
_IMAGE_MEAN = [0.5, 0.5, 0.5]
_IMAGE_STD = [0.5, 0.5, 0.5]


def build_local_tokenizer() -> PreTrainedTokenizerFast:
    if not TOKENIZER_FILE.is_file():
        raise FileNotFoundError(f"{TOKENIZER_FILE} is missing; run scripts/build_explainer_tokenizer.py")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token=BEGIN_TURN,
        eos_token=END_OF_UTTERANCE,
        pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, BEGIN_TURN, END_OF_UTTERANCE)],
    )
    # The prompt builder writes every special token itself; nothing is added implicitly.
    tokenizer.add_bos_token = False
    return tokenizer


def build_local_processor(image_size: int, image_seq_len: int) -> SmolVLMProcessor:
    """The processor for a model whose vision tower takes `image_size` pixels square."""
    frame = {"longest_edge": image_size}
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False,
        size=frame,
        max_image_size=frame,
        image_mean=_IMAGE_MEAN,
        image_std=_IMAGE_STD,
    )
    video_processor = SmolVLMVideoProcessor(
        size=frame, max_image_size=frame, image_mean=_IMAGE_MEAN, image_std=_IMAGE_STD
    )
    return SmolVLMProcessor(
        image_processor=image_processor,
        tokenizer=build_local_tokenizer(),
        video_processor=video_processor,
        image_seq_len=image_seq_len,
    )
