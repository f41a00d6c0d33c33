"""`python -m builder`: ingrain-build, for callers that must not depend on the CLI module."""

from builder.command import build_command

build_command(prog_name="ingrain-build")
