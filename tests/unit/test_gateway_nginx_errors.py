"""NGINX answers some refusals itself (413, 429, 503); they must be valid JSON in the same
shape as the gateway's own errors, so clients parse one format."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

ROUTES = Path(__file__).resolve().parents[2] / "infra" / "nginx" / "routes.conf"
RETURN_RE = re.compile(r"^\s*return\s+(\d{3})\s+'(.*)';\s*$", re.MULTILINE)


def test_every_json_error_nginx_returns_has_the_uniform_shape() -> None:
    answers = {int(status): orjson.loads(body) for status, body in
               RETURN_RE.findall(ROUTES.read_text()) if int(status) >= 400}
    assert set(answers) == {404, 413, 429, 503}
    for status, answer in answers.items():
        assert isinstance(answer["error"], str) and isinstance(answer["message"], str), status
        assert answer["details"], status
        for detail in answer["details"]:
            assert set(detail) == {"index", "field", "reason"}, status
            assert detail["index"] is None and detail["field"] is None, status
            assert isinstance(detail["reason"], str) and detail["reason"], status
