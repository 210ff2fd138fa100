"""A small JSON-over-HTTP client for the providers: timeouts, retries with jittered
backoff, Retry-After, client-side rate limit, error → reason mapping, and redaction.

Reasons: 401/403 → Unauthorized, 404 → UnknownZone (providers answer unknown zones
so), 429 → RateLimited, 5xx → ServerError, timeouts → Timeout, connection errors →
Unavailable, undecodable JSON → Malformed. An error's message quotes the API's own JSON
error text (``message``/``msg``/``error``), scrubbed; ``ProviderError.status`` and
``.detail`` carry the HTTP status and that text for providers that must tell causes apart.

Security: TLS verification is always on (a CA bundle path may replace the default
store, but it cannot be switched off). Credentials are sent only over https, or plain
http to a loopback address (tests, sidecars). Error messages name the method and path,
never headers or query values, and every known secret is scrubbed from them.
"""
from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests

from greenml.signals.base import SignalError
from greenml.signals.robust import RateLimiter, RetryPolicy, Sleep, call_with_retry

_LOOPBACK_NAMES = {"localhost"}


class ProviderError(SignalError):
    """A SignalError that may carry the server's Retry-After (seconds)."""

    def __init__(self, message: str, *, reason: str, retry_after: float | None = None,
                 status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
        self.status = status    # the HTTP status, when the server answered
        self.detail = detail    # what the API said (its JSON error message), scrubbed and cut short


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, credentials: bool, what: str) -> str:
    """Validate a provider base URL: http(s) only; credentials never over plain http to a remote host."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SignalError(f"{what}: provider URL must be http(s)://host[...], got {parts.scheme or '?'}://…",
                          reason="Misconfigured")
    if credentials and parts.scheme == "http" and not is_loopback(url):
        raise SignalError(f"{what}: refusing to send credentials over plain http to {parts.hostname}; use https",
                          reason="Misconfigured")
    return url.rstrip("/")


def api_message(resp: requests.Response, limit: int = 300) -> str | None:
    """The error text of a JSON error body (``message``, ``msg``, ``error`` or
    ``error.message``), None for other bodies (an HTML page, no body)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    for v in (body.get("message"), body.get("msg"), err.get("message") if isinstance(err, dict) else err):
        if isinstance(v, str) and v.strip():
            return " ".join(v.split())[:limit]
    return None


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: treat as unknown, the backoff applies


@dataclass
class JsonClient:
    """GET JSON from ``base_url`` with the given policy. ``secrets`` are scrubbed from errors."""

    name: str
    base_url: str
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: RateLimiter | None = None
    ca_bundle: str | None = None
    sleep: Sleep = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    session: requests.Session = field(default_factory=requests.Session, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"JsonClient(name={self.name!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _error(self, message: str, reason: str, retry_after: float | None = None,
               status: int | None = None, detail: str | None = None) -> ProviderError:
        detail = self._scrub(detail) if detail else None
        return ProviderError(self._scrub(f"{self.name}: {message}"), reason=reason, retry_after=retry_after,
                             status=status, detail=detail)

    def _once(self, path: str, params: Mapping[str, Any] | None, headers: Mapping[str, str] | None,
              auth: tuple[str, str] | None) -> Any:
        if self.limiter is not None:
            self.limiter.acquire(self.name)
        where = f"GET {path}"
        try:
            resp = self.session.get(self.base_url + path, params=params, headers=dict(headers or {}), auth=auth,
                                    timeout=self.policy.timeout, verify=self.ca_bundle or True)
        except requests.Timeout:
            raise self._error(f"{where} timed out after {self.policy.timeout:g} s", "Timeout") from None
        except requests.exceptions.SSLError:
            raise self._error(f"{where}: TLS verification failed", "Unavailable") from None
        except requests.RequestException as exc:
            raise self._error(f"{where}: connection failed ({type(exc).__name__})", "Unavailable") from None
        status = resp.status_code
        said = api_message(resp) if status >= 400 else None
        quoted = f": {self._scrub(said)}" if said else ""
        if status in (401, 403):
            raise self._error(f"{where}: HTTP {status}{quoted}" + ("" if said else " (check the credentials)"),
                              "Unauthorized", status=status, detail=said)
        if status == 404:
            raise self._error(f"{where}: HTTP 404 (unknown zone or endpoint){quoted}", "UnknownZone",
                              status=status, detail=said)
        if status == 429:
            ra = _retry_after(resp)
            if ra is not None and self.limiter is not None:
                self.limiter.block_for(ra)
            raise self._error(f"{where}: HTTP 429 rate limited" + (f", retry after {ra:g} s" if ra else ""),
                              "RateLimited", ra, status=status, detail=said)
        if status >= 500:
            raise self._error(f"{where}: HTTP {status}{quoted}", "ServerError", _retry_after(resp),
                              status=status, detail=said)
        if status >= 400:
            raise self._error(f"{where}: HTTP {status}{quoted}", "Malformed", status=status, detail=said)
        try:
            return resp.json()
        except ValueError:
            raise self._error(f"{where}: response is not JSON", "Malformed") from None

    def get(self, path: str, *, params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
            auth: tuple[str, str] | None = None) -> Any:
        return call_with_retry(lambda: self._once(path, params, headers, auth), self.policy,
                               sleep=self.sleep, rng=self.rng)


def field_of(obj: Any, *keys: str | int, what: str) -> Any:
    """obj[k1][k2]… or SignalError(reason="Malformed") naming the missing path."""
    cur = obj
    for k in keys:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            path = ".".join(str(x) for x in keys)
            raise SignalError(f"{what}: response lacks {path}", reason="Malformed") from None
    return cur
