"""The `ingrain` command group; `ingrain-build` and `ingrain-serve` are its build and serve."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from api.server.options import (
    check_default_models,
    parse_model_precisions,
    serve_options,
    settings,
)
from builder.command import build_command, engines_option
from runtime.backends import engine_summary, int8_missing, openvino_unavailable
from runtime.config import RuntimeConfig
from runtime.repository import ModelNotFound, Repository, slug_or_none
from runtime.repository.load_check import load_checker
from runtime.repository.s3 import ObjectStore, S3Location, StoreError
from runtime.repository.s3_cache import RemoteSettings, S3Cache, cache_root


@click.group()
def main() -> None:
    """Build embedding and classification models into engines and serve them over HTTP."""


main.add_command(build_command)


@main.command("serve")
@engines_option
@serve_options
def serve_command(engines: Path | S3Location, **values: Any) -> None:
    """Serve the models in the engine repository with the ingrain HTTP API."""
    from api.server.logs import configure_logging
    from api.server.server import PortUnavailable, serve

    port, workers = values["port"], values["workers"]
    model_port = values["model_port"]
    if model_port.lower() == "none":
        values["model_port"] = None
    elif model_port.isdigit() and int(model_port) != port:
        values["model_port"] = int(model_port)  # its range is checked with the settings
    else:
        raise click.BadParameter(
            'a port number other than --port, or "none"', param_hint="--model-port"
        )
    documents_given = click.get_current_context().get_parameter_source("max_documents")
    if (
        values["max_documents"] + 1 > values["max_queue"]
        and documents_given is ParameterSource.DEFAULT
    ):
        values["max_documents"] = values["max_queue"] - 1  # the default follows a smaller queue
    remote = store = None
    if isinstance(engines, S3Location):
        remote = RemoteSettings(engines, values["poll_interval"])
        store = ObjectStore(engines)
        engines = cache_root(engines, values["cache_dir"])
        values["build_on_load"] = False  # a server of s3:// engines does not write models
    model_precision = parse_model_precisions(values["model_precisions"])
    configure_logging()
    if values["intra_op_threads"] is None:
        values["intra_op_threads"] = max(1, (os.cpu_count() or 1) // workers)
    try:
        server_settings = settings(values, engines=engines, remote=remote)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if store is not None:
        fetch_engines(store, engines, server_settings.runtime)
    repository = Repository(engines)
    unreadable = repository.unreadable()
    named = [("--preload", name) for name in values["preload"]]
    named += [("--default-model", name) for name in values["default_models"]]
    for flag, name in named + [("--model-precision", name) for name, _ in model_precision]:
        if repository.contains(name):
            continue
        why = unreadable.get(name) or unreadable.get(slug_or_none(name) or "")
        if why is None:
            raise click.ClickException(
                f"{flag} {name}: not in {engines}; build it with: ingrain-build {name}"
            )
        click.echo(f"warning: {flag} {name}: skipped, it cannot be fetched: {why}", err=True)
    refuse_int8_without_variant(repository, values["precision"], model_precision, values["preload"])
    check_default_models(repository, values["default_models"])
    if not repository.entries():
        click.echo(
            f"warning: no models in {engines}; build one with: ingrain-build SOURCE "
            "(scripts/serve-demo.sh builds and serves the demo model)",
            err=True,
        )
    try:
        serve(
            server_settings,
            values["host"],
            port,
            workers,
            values["threads"],
            values["timeout"],
            values["model_host"],
        )
    except PortUnavailable as error:
        raise click.ClickException(str(error)) from None


def refuse_int8_without_variant(
    repository: Repository,
    precision: str,
    model_precision: tuple[tuple[str, str], ...],
    preload: tuple[str, ...],
) -> None:
    """int8 asked for a model (by --model-precision, or --precision for a preloaded one) that
    has no verified int8 variant: say how to build one before starting."""
    asked = dict(model_precision)
    for name in dict.fromkeys([*asked, *preload]):
        if asked.get(name, precision) != "int8" or not repository.contains(name):
            continue
        manifest = repository.find(name).manifest
        if not any(tower.int8 for tower in manifest.towers.values()):
            raise click.ClickException(int8_missing(name))


def fetch_engines(store: ObjectStore, cache_dir: Path, runtime: RuntimeConfig) -> None:
    """Bring the cache of `store` up to date before serving it. A model that cannot be
    fetched (or whose new version does not load) keeps its cached version, and is reported;
    an unreachable store is fatal only with an empty cache."""
    try:
        S3Cache(store, cache_dir, load_checker(runtime)).sync_all()
    except StoreError as error:
        if not Repository(cache_dir).entries():
            raise click.ClickException(f"{error} (and {cache_dir} holds no models)") from None
        click.echo(f"warning: serving what {cache_dir} holds: {error}", err=True)


@main.command("list")
@engines_option
def list_command(engines: Path | S3Location) -> None:
    """List the models in the engine repository, and the backend/precision each tower runs on
    here with ingrain-serve's defaults."""
    try:
        if isinstance(engines, S3Location):
            entries, unreadable = ObjectStore(engines).entries()
        else:
            entries, unreadable = Repository(engines).listing()
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    for name, why in unreadable.items():
        click.echo(f"warning: skipped {name}: {why}", err=True)
    if not entries:
        click.echo(f"No models in {engines}. Build one with: ingrain-build SOURCE")
        return
    rows = [("NAME", "LIBRARY", "TOWERS", "DIMS", "BACKENDS", "RUNS", "SIZE")]
    cpu = ["onnxruntime"] + (["openvino"] if openvino_unavailable() is None else [])
    for entry in entries:
        towers = entry.manifest.towers
        backends = set(cpu) | {"tensorrt" for tower in towers.values() if tower.plan}
        # What `ingrain-serve` with its defaults would run each tower on, on this host.
        directory = getattr(entry, "directory", None)
        runs = [
            engine_summary(tower, RuntimeConfig(), entry.name, directory)
            for tower in towers.values()
        ]
        rows.append(
            (
                entry.name,
                entry.manifest.library,
                ",".join(towers),
                ",".join(str(tower.dim) for tower in towers.values()),
                ",".join(sorted(backends)),
                ",".join(_run_label(run) for run in runs),
                f"{entry.size_bytes() / 1e6:.1f} MB",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _run_label(run: dict) -> str:
    """backend/precision, marked `(measured)` where `auto` chose it by measuring on this host
    and `(unmeasured)` where it will measure at the first load (no spaces: one column)."""
    if run["backend"] is None:
        return "unavailable"
    marks = {"measured": "(measured)", "not measured yet": "(unmeasured)"}
    mark = marks.get(run["chosenBy"], "")
    int8 = run["probe"] and run["probe"].get("onnxruntime/int8")
    split = run.get("split")
    engines = f"{run['backend']}/{run['precision']}"
    if split:
        engines = f"{split['small']},>{split['above']}:{split['large']}"
    return f"{engines}{mark}" + ("+int8" if int8 else "")


@main.command("remove")
@click.argument("name")
@engines_option
def remove_command(name: str, engines: Path | S3Location) -> None:
    """Delete the model NAME from the engine repository."""
    if isinstance(engines, S3Location):
        try:
            slug = ObjectStore(engines).remove(name)
        except StoreError as error:
            raise click.ClickException(str(error)) from None
        if slug is None:
            raise click.ClickException(f"{name!r} is not in {engines}; see: ingrain list")
        click.echo(f"Removed {name} ({engines}/{slug})")
        return
    try:
        entry = Repository(engines).remove(name)
    except ModelNotFound:
        raise click.ClickException(f"{name!r} is not in {engines}; see: ingrain list") from None
    click.echo(f"Removed {name} ({entry.directory})")


if __name__ == "__main__":
    main()
