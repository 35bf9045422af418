"""The JSON error answers of the plugin. Messages never quote a credential."""

from __future__ import annotations

import json
import math

from flask import Response

RETRY_AFTER_SECONDS = 5
CHALLENGE_WITH_BASIC = 'Bearer realm="mlflow", Basic realm="mlflow"'
CHALLENGE_BEARER_ONLY = 'Bearer realm="mlflow"'


def _json(status: int, error_code: str, message: str) -> Response:
    body = json.dumps({"error_code": error_code, "message": message})
    return Response(body, status=status, mimetype="application/json")


def unauthenticated(message: str, allow_basic: bool) -> Response:
    response = _json(401, "UNAUTHENTICATED", message)
    # With a realm the Basic challenge is RFC 7617-valid, so browsers show the login prompt.
    response.headers["WWW-Authenticate"] = CHALLENGE_WITH_BASIC if allow_basic else CHALLENGE_BEARER_ONLY
    return response


def forbidden(message: str) -> Response:
    return _json(403, "PERMISSION_DENIED", message)


def unavailable(message: str, retry_after: float | None = None) -> Response:
    response = _json(503, "TEMPORARILY_UNAVAILABLE", message)
    seconds = RETRY_AFTER_SECONDS if retry_after is None else max(1, math.ceil(retry_after))
    response.headers["Retry-After"] = str(seconds)
    return response
