"""Reading request bodies and validating them against their types (api.routes.schemas).

Keys are accepted in camelCase (as documented: `nDims`) and snake_case (`n_dims`, which the
`ingrain` Python client sends). Every failure is a 4xx whose message says how to fix the request
and names the field as the client spelled it.
"""

from __future__ import annotations

import codecs
import functools
import re
from typing import Any, TypeVar

import falcon
import msgspec
import orjson
from gunicorn.http.errors import ParseException

from api.settings import Limits
from runtime.text import TextOptions

T = TypeVar("T")

# RFC 9110 token (a header name) and field value (printable ASCII, spaces and tabs).
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
# curl -d sends form-urlencoded and many clients send text/plain: both are read as JSON.
READABLE_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")


def read_json_object(req: falcon.Request, limits: Limits) -> dict[str, Any]:
    """The body as a JSON object, parsed once per request (kept on `req.context`: /embed and
    /rerank read it to tell the ingrain API from TEI's, then the chosen route decodes it)."""
    parsed = getattr(req.context, "json_body", None)
    if parsed is not None:
        return parsed
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


def decode(req: falcon.Request, kind: type[T], limits: Limits) -> T:
    """The request's body as `kind` (an api.routes.schemas type), or a 4xx saying how to fix it."""
    return convert(read_json_object(req, limits), kind)


def convert(body: dict[str, Any], kind: type[T]) -> T:
    """`body` as `kind`: each key in either spelling (`nDims`, `n_dims`), null as not sent."""
    others = spellings(kind)
    values = body
    if not others.keys().isdisjoint(body) or None in body.values():
        values = {}
        for key, value in body.items():
            if value is not None:
                field = others.get(key, key)
                if field == key or body.get(field) is None:  # both: the type's own one wins
                    values[field] = value
    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as error:
        sent = {others[key]: key for key in body if key in others and body.get(others[key]) is None}
        raise _explained(str(error), kind, values, sent) from None


@functools.cache
def spellings(kind: type) -> dict[str, str]:
    """The other spelling of each field's JSON name (snake_case or camelCase) -> that name."""
    spellings = {}
    for field in msgspec.structs.fields(kind):
        other = field.name if field.encode_name != field.name else _camel(field.name)
        if other != field.encode_name:
            spellings[other] = field.encode_name
    return spellings


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@functools.cache
def _properties(kind: type) -> dict[str, Any]:
    schema = msgspec.json.schema(kind)
    return schema["$defs"][kind.__name__]["properties"]


# msgspec's messages: "Expected `str | array`, got `int` - at `$.text`", "Object missing
# required field `name`", "Expected `array` of length >= 1 - at `$.text`", "Invalid enum
# value 'x' - at `$.precision`", "... - at `key` in `$.imageDownloadHeaders`".
_MESSAGE = re.compile(r"(?P<what>.*?)(?: - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?)?")
_PATH = re.compile(r"\$(?:\.(?P<field>\w+))?(?P<rest>.*)")
_EXPECTED = re.compile(r"Expected `(?P<want>[^`]*)`(?:, got `(?P<got>[^`]*)`)?(?P<bound>.*)")
_TYPES = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
}


def _explained(
    message: str, kind: type, values: dict[str, Any], sent: dict[str, str]
) -> falcon.HTTPError:
    """msgspec's validation message in words a client can act on, naming the field as sent."""
    parts = _MESSAGE.fullmatch(message)
    assert parts is not None  # the pattern matches any text
    path = _PATH.fullmatch(parts["outer"] or parts["path"] or "$")
    field, rest = (path["field"], path["rest"]) if path else (None, "")
    if parts["outer"]:
        rest += " keys"
    rest = rest.replace("[...]", " values")
    prop = _properties(kind).get(field, {}) if field else {}
    where = f'"{sent.get(field, field)}"{rest}' if field else "the request body"
    param = sent.get(field, field) if field else None
    what = parts["what"]
    if missing := re.fullmatch(r"Object missing required field `(\w+)`", what):
        name = missing[1]
        if field is None:
            hint = _properties(kind).get(name, {}).get("description")
            return field_error(name, f'"{name}" is required' + (f": {hint}" if hint else ""))
        return field_error(param, f'{where} is missing "{name}"')
    if enum := re.fullmatch(r"Invalid enum value (.*)", what):
        choices = ", ".join(str(choice) for choice in _enum(prop))
        return field_error(param, f"{where} must be one of {choices}, not {enum[1]:.40}")
    expected = _EXPECTED.fullmatch(what)
    if expected is None:
        return field_error(param, f"{where}: {what}")
    want = " or ".join(_TYPES.get(name, name) for name in expected["want"].split(" | "))
    bound = expected["bound"].strip()
    if expected["got"]:
        got = (
            _json_type(values[field])
            if field and not rest
            else _TYPES.get(expected["got"], expected["got"])
        )
        return field_error(param, f"{where} must be {want}, not {got}")
    if bound == "of length >= 1":
        if want == "a list":
            return field_error(param, f"{where} is an empty list; send a non-empty list")
        return field_error(param, f"{where} must be a non-empty string")
    if least := re.fullmatch(r">= (\d+)", bound):
        return field_error(param, f"{where} must be {want} of at least {least[1]}")
    return field_error(param, f"{where} must be {want} {bound}")


def _enum(schema: dict[str, Any]) -> list[Any]:
    if "enum" in schema:
        return schema["enum"]
    return [choice for option in schema.get("anyOf", []) for choice in _enum(option)]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {value}"
    return names.get(type(value), type(value).__name__)


def field_error(
    field: str | None, description: str, kind: type[falcon.HTTPError] = falcon.HTTPBadRequest
) -> falcon.HTTPError:
    """A 4xx about one request field; the OpenAI routes name it in the error's `param`."""
    error = kind(description=description)
    error.param = field
    return error


# Checks of what the command line limits, made after decoding.


def check_name(name: str, limits: Limits, field: str = "name") -> str:
    if not name.strip():
        raise field_error(field, f'"{field}" must be a non-empty string')
    if len(name) > limits.max_name_chars:
        raise field_error(field, f'"{field}" is longer than {limits.max_name_chars} characters')
    return name


def check_items(field: str, value: str | list[Any], limit: int) -> list[Any]:
    """A field of one item or a list of them, as a list of at most `limit` items."""
    items = [value] if isinstance(value, str) else value
    if len(items) > limit:
        raise field_error(
            field,
            f'"{field}" has {len(items)} items; the limit is {limit} per request, so split it '
            "into several requests",
            falcon.HTTPContentTooLarge,
        )
    return items


def check_length(field: str, text: str, limit: int, where: str = "", why: str = "") -> None:
    if len(text) > limit:
        raise field_error(
            field,
            f"{where or quoted(field)} has {len(text)} characters; the limit is {limit}{why}",
            falcon.HTTPContentTooLarge,
        )


def check_chars(
    field: str, texts: list[str], limit: int, why: str = "", as_json: bool = True
) -> None:
    """Each of `texts` (the items of `field`) within `limit` characters."""
    for index, text in enumerate(texts):
        if len(text) > limit:
            where = quoted(field) if as_json else field
            check_length(field, text, limit, f"{where}[{index}]", why)


def quoted(field: str) -> str:
    """A field's name as the messages write it."""
    return f'"{field}"'


def check_texts(field: str, value: str | list[str], limit: int, limits: Limits) -> list[str]:
    """A text or a list of them, within the limits of items and characters."""
    texts = check_items(field, value, limit)
    check_chars(
        field, texts, limits.max_text_chars, " (the model reads only its first tokens anyway)"
    )
    return texts


def check_images(
    field: str, value: str | list[str], headers: dict[str, str], limit: int
) -> tuple[list[str], dict[str, str]]:
    """An image field (one image or a list) within `limit` items, and its download headers."""
    return check_items(field, value, limit), download_headers(headers)


def request_images(
    req: falcon.Request, request: Any, limits: Limits
) -> tuple[list[str], dict[str, str]]:
    """The `image` and `imageDownloadHeaders` of an image request, checked; its images are the
    request's items (as the access log counts them)."""
    sources, headers = check_images(
        "image", request.image, request.image_download_headers, limits.max_items
    )
    req.context.items = len(sources)
    return sources, headers


def download_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, text in headers.items():
        if not HEADER_NAME.fullmatch(name) or not HEADER_VALUE.fullmatch(text):
            raise field_error(
                "imageDownloadHeaders",
                f'"imageDownloadHeaders" has an invalid header {name[:100]!r}: names are '
                "letters, digits and !#$%&'*+-.^_`|~; values are printable ASCII",
            )
    return headers


def text_options(request: Any, limits: Limits) -> TextOptions:
    """`truncate`, `truncationDirection`, `prompt` and `promptName` of a decoded request."""
    if request.prompt is not None:
        check_length("prompt", request.prompt, limits.max_text_chars)
    return TextOptions(
        truncate=request.truncate,
        direction=request.truncation_direction,
        prompt=request.prompt,
        prompt_name=request.prompt_name,
    )
