"""`moderation serve` and `moderation explain-serve`."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from moderation.cli.app import app
from moderation.cli.common import (
    ConfigOption,
    DeviceOption,
    ExplainerModelOption,
    ExplainerWeightsOption,
    HostOption,
    LogFormatOption,
    MetricsPortOption,
    ModelOption,
    PoliciesOption,
    PortOption,
    WeightsOption,
    settings_or_fail,
)
from moderation.ops.config import ExplainerMode, unknown_environment_settings


@app.command()
def serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    metrics_port: MetricsPortOption = None,
    policies: PoliciesOption = None,
    model: ModelOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    log_format: LogFormatOption = None,
    explainer: Annotated[
        Optional[ExplainerMode],
        typer.Option(
            help="SmolVLM2 escalation: auto (default: in-process when the explainer's weights are available, remote when "
            "--explainer-target is set, else off and the log says why), off, in-process or remote"
        ),
    ] = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    explainer_target: Annotated[Optional[str], typer.Option(help="host:port of explain-serve (remote mode)")] = None,
) -> None:
    """Run the gRPC moderation server until SIGTERM."""
    from moderation.serving.app import serve as run_server

    settings = settings_or_fail(
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        policies=policies,
        clip_model=model,
        clip_weights=weights,
        device=device,
        log_format=log_format,
        explainer_mode=explainer,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        explainer_target=explainer_target,
    )
    run_logged(settings, run_server)


@app.command("explain-serve")
def explain_serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    metrics_port: MetricsPortOption = None,
    policies: PoliciesOption = None,
    explainer_model: ExplainerModelOption = None,
    explainer_weights: ExplainerWeightsOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """Run the SmolVLM2 explainer as its own gRPC service (ExplainerService) until SIGTERM."""
    from moderation.serving.explainer_app import serve_explainer

    settings = settings_or_fail(
        config,
        host=host,
        port=port,
        metrics_port=metrics_port,
        policies=policies,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        log_format=log_format,
    )
    run_logged(settings, serve_explainer)


def run_logged(settings, run) -> None:  # noqa: ANN001 - Settings, async server entry
    """Run a server; configuration errors end it with one log line and exit code 2."""
    import asyncio

    from moderation.signals.clip import UnknownBackend, WeightsUnavailable
    from moderation.escalation.loading import ExplainerWeightsUnavailable
    from moderation.ops.logs import configure_logging
    from moderation.policy import PolicyFileError
    from moderation.runtime import ConfigurationError
    from moderation.serving.auth import TokenFileError

    configure_logging(settings.log_level, settings.log_format.value, native_stderr=True)
    for name in unknown_environment_settings():
        logging.getLogger("moderation").warning("%s is not a setting and is ignored; check its spelling in moderation/ops/config.py", name)
    try:
        asyncio.run(run(settings))
    except (WeightsUnavailable, UnknownBackend, ExplainerWeightsUnavailable, ConfigurationError, TokenFileError) as error:
        logging.getLogger("moderation").error("%s", error)
        raise typer.Exit(2) from None
    except PolicyFileError as error:
        for problem in error.problems:
            logging.getLogger("moderation").error("invalid policy: %s", problem)
        raise typer.Exit(2) from None

