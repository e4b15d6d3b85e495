"""The typer apps every command module registers on; imported by moderation/cli/__init__.py."""

from __future__ import annotations

import typer

app = typer.Typer(help="Image moderation over gRPC: CLIP zero-shot scoring against YAML policies.", no_args_is_help=True)
policy_app = typer.Typer(help="Validate, test, calibrate and compare policy files.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
case_app = typer.Typer(help="Look up one moderated request by its id: stored decision and, if kept, its thumbnail.", no_args_is_help=True)
app.add_typer(case_app, name="case")
bank_app = typer.Typer(
    help="Curate the banks of known content on a running server (BankService): needs a curation token.", no_args_is_help=True
)
app.add_typer(bank_app, name="bank")
review_app = typer.Typer(
    help="Work the review queue of a running server (ReviewService): needs your reviewer token.", no_args_is_help=True
)
app.add_typer(review_app, name="review")
weights_app = typer.Typer(
    help="The weight files a configuration needs, and fetching them once for air-gapped pods.", no_args_is_help=True
)
app.add_typer(weights_app, name="weights")
