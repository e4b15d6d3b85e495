"""No code path outside the model backends assumes float32 or the CPU.

The service runs CLIP in fp16 and the explainer in bf16 on CUDA. Issue 11 found three
places that only worked on a CPU in float32: pixels cast to the first parameter's
dtype, xgrammar handed CUDA logits, `.numpy()` on a device tensor. Dtype mistakes show
on the CPU too (tests/unit/test_half_precision.py runs the half-precision models);
device mistakes do not, without a GPU. So this test reads the source: every place in
moderation/ that names the CPU, float32, or crosses to numpy must be on the list below
with the reason it is right on every device. A new one fails here until it is moved
explicitly (`.to("cpu", torch.float32)`, `.cpu()`) or justified on the list.

moderation/signals/clip/backends/ is exempt: device, dtype and runtime live there by design
(moderation/signals/clip/encoder.py), and its contract, float32 CPU tensors out, is tested
on every backend's outputs (test_clip_scorer.py, test_half_precision.py). So is the
benchmark harness, bench/ (outside the package), which picks devices and per-device
defaults by name and measures through the same seam.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "moderation"
EXEMPT = (PACKAGE / "v1", PACKAGE / "signals" / "clip" / "backends")

# Anything that assumes where a tensor lives or what it holds, or guesses it from one
# parameter (open_clip's fp16 keeps some parameters, the first among them, in float32).
SUSPECT = re.compile(r"""\.numpy\(|torch\.float32|["']cpu["']|\.cuda\(|\.half\(\)|["']cuda["']|parameters\(\)\)\.(dtype|device)""")

# (file relative to moderation/, text on the line) -> why it is right on every device.
ALLOWED: dict[tuple[str, str], str] = {
    ("signals/banks/signal.py", 'values = embeddings.numpy() if hasattr(embeddings, "numpy") else embeddings'): (
        "ClipScorer.embed_images returns CPU float32 embeddings on every device (scorer.py)"
    ),
    ("ops/config.py", 'CPU = "cpu"'): "the device setting's values",
    ("ops/config.py", 'CUDA = "cuda"'): "the device setting's values",
    ("runtime.py", 'return "cuda" if torch.cuda.is_available() else "cpu"'): "device auto resolves here, once",
    ("runtime.py", "device is 'cuda' but torch sees no CUDA device"): "an error message",
    ("runtime.py", 'DEFAULT_MAX_BATCH = {"cpu": 16, "cuda": 256}'): "per-device defaults, keyed by device type",
    ("runtime.py", 'DEFAULT_MAX_BATCH["cpu"]'): "unknown device types get the conservative default",
    ("serving/app.py", 'elif not device.startswith("cpu"):'): "torch threads: 1 when the model is off the CPU",
    ("runtime.py", 'cpu_fp32 = device == "cpu" and'): "clip_backend auto picks the CPU-only ONNX backend only on the CPU",
    ("signals/clip/encoder.py", 'pin_memory=encoder.device.type == "cuda"'): "pinned staging buffers for CUDA encoders only",
    ("signals/clip/loading.py", 'device: str = "cpu"'): "library default; the server resolves it in runtime.clip_spec",
    ("signals/clip/loading.py", 'return torch.float16 if self.device.startswith("cuda") else torch.float32'): "precision auto",
    ("signals/clip/loading.py", "return {torch.float32: \"fp32\""): "open_clip's precision names",
    ("escalation/loading.py", 'PRECISIONS = {"fp32": torch.float32'): "the precision setting's names",
    ("escalation/loading.py", 'device: str = "cpu"'): "library default; the server resolves it in runtime.explainer_spec",
    ("escalation/loading.py", 'if self.quantize and (not self.device.startswith("cpu")'): "int8 is CPU-only: refused elsewhere",
    ("escalation/loading.py", 'return torch.bfloat16 if self.device.startswith("cuda") else torch.float32'): "precision auto",
    ("escalation/loading.py", "from_config(config, dtype=torch.float32)"): "random init in fp32, then cast to the spec's dtype",
    ("escalation/decoding.py", 'return logits.to(device="cpu", dtype=torch.float32, copy=copy)'): "the explicit move to the grammar",
    ("escalation/grammar.py", '`.to("cpu", torch.float32)` (decoding.py does)'): "docstring",
    ("escalation/grammar.py", 'if logits.device.type != "cpu" or logits.dtype != torch.float32:'): "the grammar's input check",
    ("escalation/grammar.py", "move them with .to('cpu', torch.float32) first"): "an error message",
    ("signals/clip/scorer.py", "columns[category_id] = probabilities[:, :positives].sum(dim=-1).clamp(0.0, 1.0).numpy()"): "logits are computed from .float().cpu() embeddings two lines above",
    ("signals/clip/scorer.py", "columns[category_id] = torch.sigmoid(image_embeddings.float().cpu() @ weights + bias).numpy()"): "a probe's score, from .float().cpu() embeddings on the same line",
    ("signals/clip/arrays.py", "return values.detach().float().cpu().numpy()"): "the explicit move of a torch tensor to host float32 numpy",
    ("runtime.py", 'return "cpu"'): "an exported model folder (clip_model_dir) runs on the CPU only; cuda is refused two lines above",
    ("cli/export.py", 'spec = clip_spec(settings.model_copy(update={"clip_model_dir": None, "clip_backend": "torch"}), device="cpu")'): (
        "export traces the fp32 towers on the CPU, whatever device serving uses"
    ),
}


def suspect_lines() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path.is_relative_to(exempt) for exempt in EXEMPT):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if SUSPECT.search(line):
                found.append((path.relative_to(PACKAGE).as_posix(), number, line.strip()))
    return found


def test_every_cpu_or_float32_assumption_is_explicit_and_justified() -> None:
    unexplained = [
        f"moderation/{path}:{number}: {line}"
        for path, number, line in suspect_lines()
        if not any(path == file and text in line for file, text in ALLOWED)
    ]
    assert not unexplained, (
        "code that assumes the CPU or float32 outside moderation/signals/clip/backends/; move tensors explicitly "
        "(.to('cpu', torch.float32)) or add the line to ALLOWED with the reason it is right on CUDA too:\n"
        + "\n".join(unexplained)
    )


def test_the_allow_list_has_no_stale_entries() -> None:
    lines = suspect_lines()
    stale = [key for key in ALLOWED if not any(path == key[0] and key[1] in line for path, _, line in lines)]
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {stale}"


def test_the_check_catches_what_issue_11_found() -> None:
    for line in (
        "vector = embeddings[row].numpy()",
        "pixels = pixels.to(next(model.parameters()).dtype)",
        "pixels = pixels.cuda()",
        'bitmask = xgrammar.allocate_token_bitmask(1, vocab).to("cpu")',
        "logits = logits.to(torch.float32)",
    ):
        assert SUSPECT.search(line), line
