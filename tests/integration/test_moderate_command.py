"""`moderation moderate` against the real server: request ids shown whole, at 80 columns and as JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moderation.cli import app
from tests import images
from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration


def test_moderate_names_each_request_id_whole(server: RunningServer, tmp_path: Path) -> None:
    first, second = tmp_path / "a.jpg", tmp_path / "b.png"
    first.write_bytes(images.astronaut_jpeg())
    second.write_bytes(images.coffee_png())
    args = ["moderate", str(first), str(second), "--target", server.target]
    document = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert len(document) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", d["request_id"]) for d in document)
    # One vocabulary with compare --json and the policies: ALLOW, not ACTION_ALLOW (issue 22).
    assert all(d["action"] in {"ALLOW", "REVIEW", "BLOCK"} for d in document)
    assert all(c["band"] in {"BELOW", "BORDERLINE", "ABOVE"} for d in document for c in d["categories"] if "band" in c)

    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    per_image = result.stdout[: result.stdout.index("2 images")]
    ids = re.findall(r"^  request id: ([0-9a-f]{32})$", per_image, re.M)
    assert len(ids) == 2, result.stdout  # under each image's title, its whole request id on a line of its own
    # Lines are cut at spaces for 80 columns, never inside a word (issue 22).
    assert all(len(line) <= 80 or " " not in line.strip() for line in result.stdout.splitlines()), result.stdout
    assert all(line.count(request_id) <= 1 and len(request_id) == 32 for request_id in ids for line in result.stdout.splitlines())
    summary = result.stdout[result.stdout.index("2 images"):]
    assert all(request_id in summary for request_id in ids)
