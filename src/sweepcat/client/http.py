"""Turning a sweepcat server's error responses into SweepcatErrors that say what to do."""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import SweepcatError


def detail_of(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail")
    except ValueError:
        return response.text


def raise_for(response: httpx.Response, what: str) -> None:
    """Nothing for a success; otherwise the server's message, problems and hint as one SweepcatError."""
    if response.status_code < 400:
        return
    detail = detail_of(response)
    if response.status_code == 401:
        raise SweepcatError(f"{what}: the server refused the API key (401)",
                            "pass the key the server printed: --api-key KEY, SWEEPCAT_API_KEY, or api_key=...")
    if response.status_code == 404 and detail == "Not Found":
        raise SweepcatError(f"{what}: the server has no sweepcat routes (a plain Tiled server?)",
                            "serve the catalog with `sweepcat serve`, or add the router to its config")
    if isinstance(detail, dict):
        problems = detail.get("problems") or []
        lines = [str(detail.get("message", ""))]
        lines += [f"  - {p['where']}: {p['what']} -> {p['fix']}" for p in problems[:20]]
        hint = detail.get("hint") or "fix what it names and try again"
        if response.status_code == 403:
            hint = detail.get("hint") or "use a key with the scopes this needs"
        raise SweepcatError(f"{what} (HTTP {response.status_code}): " + "\n".join(lines), hint)
    raise SweepcatError(f"{what}: HTTP {response.status_code}: {detail}", "see the server log for details")
