"""Reading and validating request bodies.

Keys are accepted in camelCase (as documented: `nDims`) and snake_case (`n_dims`, which the
`ingrain` Python client sends). Every failure is a 4xx whose message says how to fix the request.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

import falcon
import orjson
from gunicorn.http.errors import ParseException

from api.settings import Limits
from runtime.quantize import PRECISIONS
from runtime.text import TRUNCATION_SIDES, TextOptions

# RFC 9110 token (a header name) and field value (printable ASCII, spaces and tabs).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
# curl -d sends form-urlencoded and many clients send text/plain: both are read as JSON.
READABLE_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")


def read_json_object(req: falcon.Request, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object, read once per request (a route that chooses between two
    APIs by the body reads it first)."""
    cached = getattr(req.context, "json_body", None)
    if cached is not None:
        return cached
    media_type = (req.content_type or "").split(";")[0].strip().lower()
    if media_type and media_type not in READABLE_TYPES and not media_type.endswith("+json"):
        raise falcon.HTTPUnsupportedMediaType(
            description=f"Content-Type {media_type} is not JSON; send application/json"
        )
    too_large = falcon.HTTPContentTooLarge(
        description=f"the request body is larger than {limits.max_body_bytes} bytes; send fewer "
        "or smaller items per request"
    )
    if req.content_length is not None and req.content_length > limits.max_body_bytes:
        raise too_large
    # Without Content-Length (chunked uploads) gunicorn's own stream ends where the body does.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = _read(stream, limits)
    if len(raw) > limits.max_body_bytes:
        raise too_large
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if not raw.strip():
        raise falcon.HTTPBadRequest(description="the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise falcon.HTTPBadRequest(
            description=f"the request body is not valid JSON: {error}"
        ) from None
    if not isinstance(body, dict):
        raise falcon.HTTPBadRequest(
            description=f"the request body must be a JSON object, not {_json_type(body)}"
        )
    req.context.json_body = body
    return body


def _read(stream, limits: Limits) -> bytes:
    """At most max_body_bytes + 1 bytes of the body; the transport's failures become 4xx."""
    try:
        return stream.read(limits.max_body_bytes + 1)
    except TimeoutError:
        raise falcon.HTTPError(
            falcon.HTTP_408,
            description=f"the request body did not arrive within {limits.read_timeout_s} s; "
            "send it whole and promptly",
            headers={"Connection": "close"},
        ) from None
    except (OSError, ParseException) as error:
        # gunicorn's chunked-body parser: a bad chunk size, or a body cut short (OSError).
        problem = "cut short" if isinstance(error, OSError) else f"malformed ({str(error)[:100]})"
        raise falcon.HTTPBadRequest(
            description=f"the request body is {problem}; send a complete body with a valid "
            "Content-Length or chunked encoding",
            headers={"Connection": "close"},
        ) from None


def get(body: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    """The value under the camelCase key or its snake_case twin (None when neither is given)."""
    value = body.get(camel)
    if value is None and snake is not None:
        value = body.get(snake)
    return value


def model_name(body: dict[str, Any], limits: Limits) -> str:
    name = body.get("name")
    if name is None:
        raise falcon.HTTPBadRequest(description='"name" is required: the model to use')
    if not isinstance(name, str) or not name.strip():
        raise falcon.HTTPBadRequest(description='"name" must be a non-empty string')
    if len(name) > limits.max_name_chars:
        raise falcon.HTTPBadRequest(
            description=f'"name" is longer than {limits.max_name_chars} characters'
        )
    return name


def texts(body: dict[str, Any], limits: Limits, required: bool = True) -> list[str] | None:
    """`text` as a list: one string or a non-empty list of strings (empty strings allowed)."""
    items = _string_items(body, "text", "a string", limits, required)
    for index, item in enumerate(items or []):
        if len(item) > limits.max_text_chars:
            raise falcon.HTTPContentTooLarge(
                description=f'"text"[{index}] has {len(item)} characters; the limit is '
                f"{limits.max_text_chars} (the model reads only its first tokens anyway)"
            )
    return items


def _string_items(
    body: dict[str, Any], key: str, what: str, limits: Limits, required: bool
) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise falcon.HTTPBadRequest(description=f'"{key}" is required: {what} or a list')
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise falcon.HTTPBadRequest(
            description=f'"{key}" must be {what} or a list of them, not {_json_type(value)}'
        )
    if not items:
        raise falcon.HTTPBadRequest(description=f'"{key}" is an empty list; send at least one')
    if len(items) > limits.max_items:
        raise falcon.HTTPContentTooLarge(
            description=f'"{key}" has {len(items)} items; the limit is {limits.max_items} per '
            "request, so split it into several requests"
        )
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise falcon.HTTPBadRequest(
                description=f'"{key}"[{index}] must be {what}, not {_json_type(item)}'
            )
    return items


def normalize(body: dict[str, Any]) -> bool:
    value = body.get("normalize")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise falcon.HTTPBadRequest(
            description=f'"normalize" must be true or false, not {_json_type(value)}'
        )
    return value


def n_dims(body: dict[str, Any]) -> int | None:
    value = get(body, "nDims", "n_dims")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise falcon.HTTPBadRequest(
            description=f'"nDims" must be a whole number or null, not {_json_type(value)}'
        )
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {value}"
    return names.get(type(value), type(value).__name__)


def images(body: dict[str, Any], limits: Limits, required: bool = True) -> list[str] | None:
    """`image` as a list: one string or a non-empty list of URLs, data URIs or base64 strings."""
    return _string_items(body, "image", "an image URL, data URI or base64 string", limits, required)


def download_headers(body: dict[str, Any]) -> dict[str, str]:
    value = get(body, "imageDownloadHeaders", "image_download_headers")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise falcon.HTTPBadRequest(
            description='"imageDownloadHeaders" must be an object of string header values'
        )
    for name, text in value.items():
        if not HEADER_NAME.fullmatch(name) or not HEADER_VALUE.fullmatch(text):
            raise falcon.HTTPBadRequest(
                description=f'"imageDownloadHeaders" has an invalid header {name[:100]!r}: names '
                "are letters, digits and !#$%&'*+-.^_`|~; values are printable ASCII"
            )
    return value


def field_error(
    field: str, description: str, kind: type[falcon.HTTPError] = falcon.HTTPBadRequest
) -> falcon.HTTPError:
    """A 4xx about one request field; the OpenAI routes name it in the error's `param`."""
    error = kind(description=description)
    error.param = field
    return error


def _sent_as(body: dict[str, Any], camel: str, snake: str) -> str:
    """The spelling of a key the request used (camelCase when it used neither)."""
    return snake if body.get(camel) is None and body.get(snake) is not None else camel


def _optional(body: dict[str, Any], camel: str, snake: str, kind: type, what: str) -> Any:
    value = get(body, camel, snake)
    if value is not None and type(value) is not kind:
        raise field_error(
            _sent_as(body, camel, snake), f'"{camel}" must be {what}, not {_json_type(value)}'
        )
    return value


def text_options(body: dict[str, Any], limits: Limits) -> TextOptions:
    """`truncate`, `truncationDirection`, `prompt` and `promptName` for the text part."""
    truncate = _optional(body, "truncate", "truncate", bool, "true or false")
    direction = _optional(body, "truncationDirection", "truncation_direction", str, "a string")
    if direction is not None and direction not in TRUNCATION_SIDES:
        raise field_error(
            _sent_as(body, "truncationDirection", "truncation_direction"),
            f'"truncationDirection" must be "right" or "left", not {direction!r:.40}',
        )
    prompt = _optional(body, "prompt", "prompt", str, "a string")
    if prompt is not None and len(prompt) > limits.max_text_chars:
        raise field_error(
            "prompt",
            f'"prompt" has {len(prompt)} characters; the limit is {limits.max_text_chars}',
            falcon.HTTPContentTooLarge,
        )
    return TextOptions(
        truncate=True if truncate is None else truncate,
        direction=direction,
        prompt=prompt,
        prompt_name=_optional(body, "promptName", "prompt_name", str, "a string"),
    )


def precision(body: dict[str, Any]) -> str:
    value = body.get("precision")
    if value is None:
        return "float32"
    if value not in PRECISIONS:
        raise falcon.HTTPBadRequest(
            description=f'"precision" must be one of {", ".join(PRECISIONS)}, not {value!r:.40}'
        )
    return value
