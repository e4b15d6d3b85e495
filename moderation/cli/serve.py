"""`moderation serve` and `moderation explain-serve`."""

from __future__ import annotations

import logging
from pathlib import Path
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
    require_torch_extra,
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
    model_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--model-dir",
            help="an exported model folder (`moderation export`): serve CLIP with onnxruntime, numpy and PIL, without torch; "
            "--model and --weights are then ignored",
        ),
    ] = None,
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
    console_port: Annotated[
        Optional[int], typer.Option(help="port of the review console web page (needs reviewer_tokens_file); 0 (default) turns it off")
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="server processes on the one gRPC port (SO_REUSEPORT), with one /metrics and one health; default 1",
            min=1,
        ),
    ] = None,
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
        clip_model_dir=model_dir,
        device=device,
        log_format=log_format,
        explainer_mode=explainer,
        explainer_model=explainer_model,
        explainer_weights=explainer_weights,
        explainer_target=explainer_target,
        console_port=console_port,
        workers=workers,
    )
    if settings.workers > 1:
        from moderation.serving.workers import supervise

        # A supervisor of `workers` server processes: its exit code says whether they all stopped cleanly.
        code = run_logged(settings, supervise)
        if code:
            raise typer.Exit(code)
        return
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
    insecure: Annotated[
        Optional[bool],
        typer.Option(
            "--insecure/--secure-only",
            help="serve plaintext without tokens on --host as given (default: without TLS or tokens, bind loopback only)",
        ),
    ] = None,
) -> None:
    """Run the SmolVLM2 explainer as its own gRPC service (ExplainerService) until SIGTERM."""
    require_torch_extra("explain-serve")
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
        explainer_insecure=insecure,
    )
    settings, warning = explainer_exposure(settings)
    run_logged(settings, serve_explainer, warnings=[warning] if warning else [])


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def explainer_exposure(settings):  # noqa: ANN001, ANN201 - Settings in and out
    """explain-serve answers anyone who reaches it: without TLS or tokens it binds loopback only.

    Issue 18: it served plaintext, unauthenticated, on every interface, without a word.
    `--insecure` (MODERATION_EXPLAINER_INSECURE) keeps the host as given, with a warning.
    Returns the settings to serve with and the warning to log, if any.
    """
    secured = settings.tls_cert is not None or settings.auth_tokens_file is not None
    if secured or settings.host in LOOPBACK_HOSTS:
        return settings, ""
    if settings.explainer_insecure:
        return settings, (
            f"explain-serve answers plaintext calls WITHOUT AUTHENTICATION on {settings.host}:{settings.port} (--insecure): "
            "anyone who reaches the port gets rationales and spends its compute; set MODERATION_TLS_CERT/KEY "
            "(mutual TLS with MODERATION_TLS_CLIENT_CA) or MODERATION_AUTH_TOKENS_FILE"
        )
    return settings.model_copy(update={"host": "127.0.0.1"}), (
        f"explain-serve has neither TLS nor tokens, so it binds 127.0.0.1 instead of {settings.host}: only this machine can "
        "call it. Set MODERATION_TLS_CERT/KEY or MODERATION_AUTH_TOKENS_FILE to serve other hosts (or --insecure to accept the risk)"
    )


def run_logged(settings, run, warnings: list[str] | None = None):  # noqa: ANN001, ANN201 - Settings, async server entry
    """Run a server (what `run` returns); configuration errors end it with one log line and exit code 2."""
    import asyncio

    from moderation.signals.clip import UnknownBackend, WeightsUnavailable
    from moderation.escalation.errors import ExplainerWeightsUnavailable
    from moderation.ops.logs import configure_logging
    from moderation.policy import PolicyFileError
    from moderation.runtime import ConfigurationError
    from moderation.serving.auth import TokenFileError

    configure_logging(settings.log_level, settings.log_format.value, native_stderr=True)
    for name in unknown_environment_settings():
        logging.getLogger("moderation").warning("%s is not a setting and is ignored; check its spelling in moderation/ops/config.py", name)
    for warning in warnings or ():
        logging.getLogger("moderation").warning("%s", warning)
    try:
        return asyncio.run(run(settings))
    except (WeightsUnavailable, UnknownBackend, ExplainerWeightsUnavailable, ConfigurationError, TokenFileError) as error:
        logging.getLogger("moderation").error("%s", error)
        raise typer.Exit(2) from None
    except PolicyFileError as error:
        for problem in error.problems:
            logging.getLogger("moderation").error("invalid policy: %s", problem)
        raise typer.Exit(2) from None

