"""Labelled images for calibration: a folder tree or a CSV.

    LABELS/<category id or "benign">/<image>     one label per image (subfolders allowed)
    labels.csv with a header `path,label`        paths relative to the CSV; an image on
                                                 several rows has several labels

An image labelled with a category is a positive for it and a negative for every
other category; "benign" images are negatives for all and take no other label.
"""

from __future__ import annotations

import csv
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

BENIGN = "benign"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Enough to fix the first problems without flooding the terminal.
MAX_LISTED = 5


class LabelsError(ValueError):
    """The labelled set cannot be used; the message says why, on one line."""


@dataclass(frozen=True, slots=True)
class LabelledImage:
    path: Path
    labels: frozenset[str]  # category ids, or {"benign"}


def read_labels(source: Path, category_ids: Collection[str]) -> list[LabelledImage]:
    """Every labelled image under `source` (a folder or a .csv file), sorted by path."""
    if source.is_dir():
        images = _from_folders(source, category_ids)
    elif source.is_file() and source.suffix.lower() == ".csv":
        images = _from_csv(source, category_ids)
    else:
        raise LabelsError(f"{source}: expected a folder of <label>/<image> or a .csv file with path,label")
    if not images:
        raise LabelsError(f"{source}: no labelled images found (image files end in {', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _from_folders(root: Path, category_ids: Collection[str]) -> list[LabelledImage]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f.name for f in folders if f.name != BENIGN and f.name not in category_ids]
    if unknown:
        raise LabelsError(f"{root}: folders {_listed(unknown)} are neither {BENIGN!r} nor a category of the policy ({', '.join(sorted(category_ids))})")
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        raise LabelsError(f"{root}: images {_listed(loose)} are not in a label folder; move them into {root}/<label>/")
    images = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in path.relative_to(folder).parts):
                images.append(LabelledImage(path, frozenset({folder.name})))
    return images


def _from_csv(source: Path, category_ids: Collection[str]) -> list[LabelledImage]:
    labels: dict[Path, set[str]] = {}
    problems: list[str] = []
    try:
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"path", "label"} <= {name.strip() for name in reader.fieldnames}:
                raise LabelsError(f"{source}: the first row must be the header path,label")
            for row in reader:
                path_text, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not path_text or not label:
                    problems.append(f"line {reader.line_num}: needs a path and a label")
                    continue
                if label != BENIGN and label not in category_ids:
                    problems.append(f"line {reader.line_num}: label {label!r} is neither {BENIGN!r} nor a category of the policy")
                    continue
                labels.setdefault((source.parent / path_text).resolve(), set()).add(label)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabelsError(f"{source}: cannot read the CSV ({error})") from error
    missing = [str(path) for path in labels if not path.is_file()]
    if missing:
        problems.append(f"{len(missing)} image files do not exist: {_listed(missing)}")
    mixed = [str(path) for path, names in labels.items() if BENIGN in names and len(names) > 1]
    if mixed:
        problems.append(f"images labelled {BENIGN!r} and a category: {_listed(mixed)}")
    if problems:
        raise LabelsError(f"{source}: {'; '.join(problems[:MAX_LISTED])}" + (f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""))
    return [LabelledImage(path, frozenset(names)) for path, names in sorted(labels.items())]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
