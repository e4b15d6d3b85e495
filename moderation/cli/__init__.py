"""The `moderation` command: serve, explain-serve, moderate, compare, bench, policy validate|test|calibrate|diff, case show.

Each command lives in its own module and registers itself on the apps in app.py;
renderers are in render.py, shared options and loaders in common.py.
"""

from moderation.cli import bench, case, client, compare, policy, serve  # noqa: F401 - registers the commands
from moderation.cli.app import app, policy_app

__all__ = ["app", "policy_app"]


def main() -> None:  # pragma: no cover - console entry
    app()
