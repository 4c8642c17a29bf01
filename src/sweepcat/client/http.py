"""Turning a sweepcat server's error responses into SweepcatErrors that say what to do."""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import DatasetChanged, SweepcatError


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
    if response.status_code == 409 and isinstance(detail, dict) and "version" in detail:
        raise DatasetChanged(f"{what}: {detail.get('message')}", detail.get("hint"))
    if response.status_code == 401:
        raise SweepcatError(f"{what}: the server refused the API key (401)",
                            "pass the key the server printed: --api-key KEY, SWEEPCAT_API_KEY, or api_key=...")
    if response.status_code == 404 and detail == "Not Found" and "/api/v1/sweepcat/info" in what:
        raise SweepcatError(f"{what}: the server has no sweepcat routes (a plain Tiled server?)",
                            "serve the catalog with `sweepcat serve`, or add the router to its config")
    if response.status_code == 404 and detail == "Not Found":
        raise SweepcatError(f"{what}: not found (404)", "check the dataset name (`sweepcat datasets --url ...`)")
    if isinstance(detail, dict):
        problems = detail.get("problems") or []
        lines = [str(detail.get("message", ""))]
        lines += [f"  - {p['where']}: {p['what']} -> {p['fix']}" for p in problems[:20]]
        hint = detail.get("hint") or "fix what it names and try again"
        if response.status_code == 403:
            hint = detail.get("hint") or "use a key with the scopes this needs"
        raise SweepcatError(f"{what} (HTTP {response.status_code}): " + "\n".join(lines), hint)
    raise SweepcatError(f"{what}: HTTP {response.status_code}: {detail}", "see the server log for details")


def unreachable(url: str, exc: Exception) -> SweepcatError:
    """A server that cannot be reached (refused, unknown host, timed out), said as such."""
    return SweepcatError(f"cannot reach {url} ({type(exc).__name__}: {exc})",
                         "check the URL and that the server runs (`sweepcat serve ...`)")


def tiled_client(url: str, api_key: str | None) -> Any:
    """Tiled's own client on ``url``, or a sentence saying why not (unreachable, refused key, not Tiled)."""
    from tiled.client import from_uri

    try:
        httpx.get(f"{url.rstrip('/')}/healthz", timeout=10)  # unreachable: said now, not after the client's retries
    except httpx.TransportError as exc:
        raise unreachable(url, exc) from None
    try:
        return from_uri(url, api_key=api_key)
    except httpx.ConnectError as exc:
        raise unreachable(url, exc) from None
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 401:
            raise SweepcatError(f"{url} refused the API key (401)",
                                "pass the key the server printed: --api-key KEY or SWEEPCAT_API_KEY") from None
        raise SweepcatError(f"{url}: HTTP {exc.response.status_code} ({detail_of(exc.response)})",
                            "is this a Tiled server? check the URL") from None
    except RuntimeError as exc:  # Tiled's client, asked for a key it was not given
        if "API key" not in str(exc):
            raise
        raise SweepcatError(f"{url} requires an API key", "pass the key the server printed: --api-key KEY or "
                            "SWEEPCAT_API_KEY") from None
    except ValueError as exc:  # a URL Tiled's client cannot parse, or a body that is not Tiled's JSON
        raise SweepcatError(f"{url}: not a Tiled server URL ({exc})",
                            "pass the server's base URL, e.g. http://127.0.0.1:8000 (no ?api_key=)") from None
