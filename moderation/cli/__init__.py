"""The `moderation` command: serve, explain-serve, export, moderate, compare, policy validate|test|calibrate|train|diff, case show,
bank create|list|enable|disable|set|add|remove|lookup|import|export|audit,
review list|lease|show|decide|reopen|ask|audit|export, weights list|prefetch.

Each command lives in its own module and registers itself on the apps in app.py;
renderers are in render.py, shared options and loaders in common.py.
"""

# Importing a command module registers its commands; `--help` lists them in this order.
from moderation.cli import serve  # noqa: F401, I001
from moderation.cli import client  # noqa: F401
from moderation.cli import compare  # noqa: F401
from moderation.cli import policy  # noqa: F401
from moderation.cli import train  # noqa: F401
from moderation.cli import case  # noqa: F401
from moderation.cli import bank  # noqa: F401
from moderation.cli import review  # noqa: F401
from moderation.cli import export  # noqa: F401
from moderation.cli import weights  # noqa: F401
from moderation.cli.app import app, policy_app

__all__ = ["app", "policy_app"]


def main() -> None:  # pragma: no cover - console entry
    app()
