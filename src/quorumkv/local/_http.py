"""GET a node's ``/health`` or ``/status`` as JSON, with the standard library.

Proxies from the environment are ignored on purpose: a loopback node must never be
reached through ``http_proxy``. Connection errors propagate as ``OSError`` (``URLError``
is one); an HTTP error status is an answer, returned with its JSON body.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """``(http_status, body)``. A body that is not a JSON object becomes
    ``{"error": <first 200 characters>}``; an unreachable node raises ``OSError``."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            code, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        with e:
            code, raw = int(e.code), e.read()
    except http.client.HTTPException as e:  # a garbled answer: not an OSError by itself
        raise OSError(f"bad HTTP answer from {url}: {e!r}") from e
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return code, {"error": raw[:200].decode("utf-8", "replace")}
    return code, doc


def node_health(http_addr: str, timeout: float = 2.0) -> tuple[bool, str]:
    """``(healthy, reason)`` from ``http://<http_addr>/health``; never raises."""
    try:
        code, doc = get_json(f"http://{http_addr}/health", timeout)
    except OSError as e:
        return False, f"unreachable ({_reason(e)})"
    reason = str(doc.get("reason") or doc.get("error") or "")
    return code == 200 and bool(doc.get("health", True)), reason or f"HTTP {code}"


def node_status(http_addr: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The node's ``/status`` dict, or None if it cannot be had."""
    try:
        code, doc = get_json(f"http://{http_addr}/status", timeout)
    except OSError:
        return None
    return doc if code == 200 else None


def _reason(e: OSError) -> str:
    inner = e.reason if isinstance(e, urllib.error.URLError) else e
    return str(getattr(inner, "strerror", None) or inner)
