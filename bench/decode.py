"""Request decoding in-process: microseconds per /embed_text body for what the routes do (an
orjson pass, then the spelling normalisation and msgspec's validation:
api.routes.params.convert) beside msgspec decoding the same bytes straight into the type (the
least any decoding costs), so a change to decoding can be weighed against the whole request."""

from __future__ import annotations

import timeit
from collections.abc import Callable

import msgspec
import orjson

from api.routes import params, schemas
from bench.load import text_bodies
from bench.sentences import sentences


def per_body(decode_one: Callable[[bytes], object], bodies: list[bytes], rounds: int) -> float:
    """Microseconds per body, best of `rounds` passes of 20 over `bodies`."""
    seconds = min(
        timeit.repeat(lambda: [decode_one(raw) for raw in bodies], number=20, repeat=rounds)
    )
    return round(seconds / (20 * len(bodies)) * 1e6, 2)


def decode(model: str, per_request: list[int], rounds: int) -> dict:
    kind = schemas.EmbedTextRequest
    typed = msgspec.json.Decoder(kind)
    report: dict = {}
    for count in per_request:
        bodies = [orjson.dumps(body) for body in text_bodies(model, sentences(), count, 64)]
        report[f"{count}_texts"] = {
            "orjson_only_us": per_body(orjson.loads, bodies, rounds),
            "route_decode_us": per_body(
                lambda raw: params.convert(orjson.loads(raw), kind), bodies, rounds
            ),
            "msgspec_from_bytes_us": per_body(typed.decode, bodies, rounds),
        }
    return report
