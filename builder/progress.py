"""Stage-by-stage progress for long builds, on stderr so stdout stays machine-readable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import click


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        self.say(f"==> {title} ...")
        started = time.perf_counter()
        yield
        self.say(f"    done in {time.perf_counter() - started:.1f} s")

    def report(self, figures: dict) -> None:
        cosine = f"min cosine {figures['min_cosine']:.6f}, " if "min_cosine" in figures else ""
        self.say(
            f"    {figures['items']} items: {cosine}max abs error {figures['max_abs_error']:.2e}"
        )
