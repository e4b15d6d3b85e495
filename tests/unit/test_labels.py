from __future__ import annotations

from pathlib import Path

import pytest

from moderation.offline.labels import LabelsError, read_labels

CATEGORIES = ("weapons", "drugs")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # reading labels never decodes the images
    return path


def test_folder_tree_labels_each_image_by_its_folder(tmp_path: Path) -> None:
    a = touch(tmp_path / "benign" / "a.jpg")
    b = touch(tmp_path / "weapons" / "batch-2" / "b.PNG")
    touch(tmp_path / "weapons" / "README.txt")
    touch(tmp_path / "weapons" / ".thumbnails" / "c.jpg")
    touch(tmp_path / ".git" / "x.jpg")
    images = read_labels(tmp_path, CATEGORIES)
    assert [(i.path, set(i.labels)) for i in images] == [(a, {"benign"}), (b, {"weapons"})]


def test_folder_tree_refuses_unknown_folders_and_loose_images(tmp_path: Path) -> None:
    touch(tmp_path / "weapon" / "a.jpg")
    with pytest.raises(LabelsError, match=r"folders weapon are neither 'benign' nor a category of the policy \(drugs, weapons\)"):
        read_labels(tmp_path, CATEGORIES)
    (tmp_path / "weapon" / "a.jpg").rename(tmp_path / "a.jpg")
    (tmp_path / "weapon").rmdir()
    with pytest.raises(LabelsError, match="images a.jpg are not in a label folder"):
        read_labels(tmp_path, CATEGORIES)


def test_csv_paths_are_relative_to_it_and_repeated_rows_add_labels(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "img" / "a.jpg"), touch(tmp_path / "img" / "b.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimg/a.jpg,weapons\nimg/a.jpg,drugs\nimg/b.jpg, benign\n")
    images = read_labels(csv, CATEGORIES)
    assert [(i.path, set(i.labels)) for i in images] == [(a.resolve(), {"weapons", "drugs"}), (b.resolve(), {"benign"})]


def test_csv_problems_are_listed_on_one_line(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.jpg,benign\na.jpg,weapons\nmissing.jpg,drugs\nb.jpg,guns\n,drugs\n")
    with pytest.raises(LabelsError) as caught:
        read_labels(csv, CATEGORIES)
    message = str(caught.value)
    assert "\n" not in message
    assert "line 5: label 'guns' is neither 'benign' nor a category" in message
    assert "line 6: needs a path and a label" in message
    assert "1 image files do not exist:" in message and "missing.jpg" in message
    assert "images labelled 'benign' and a category:" in message


def test_csv_needs_its_header_and_something_to_read(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("a.jpg,weapons\n")
    with pytest.raises(LabelsError, match="the first row must be the header path,label"):
        read_labels(csv, CATEGORIES)
    csv.write_text("path,label\n")
    with pytest.raises(LabelsError, match="no labelled images found"):
        read_labels(csv, CATEGORIES)
    with pytest.raises(LabelsError, match="expected a folder"):
        read_labels(tmp_path / "labels.txt", CATEGORIES)
