"""Request bodies as the API's views take them."""

from flask import request

from primary.errors import BadRequest


def json_body() -> dict:
    """The request's JSON object, or 400."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
