"""OpenStack failures as one line, and no secret in any of them.

A service, a proxy or a load balancer may quote back what it was sent: the X-Auth-Token, or
the whole login body (a JSON document, so a password appears there JSON-escaped:
`Pa\\"ss\\\\w0rd`, `p\\u00e4ss`), inside a JSON error or an HTML page, where it may also be
URL-encoded, HTML-escaped or cut apart by markup. `Secrets.clean` removes every secret in all
of these forms, before anything else touches the text (tag stripping, shortening); and when a
secret is too short to be found safely (a few characters also occur in ordinary words), no
text quoted from a service is shown at all.
"""
from __future__ import annotations

import html
import json
import re
from typing import Iterable, Optional
from urllib.parse import quote, quote_plus

from .plugin import CheckError

SERVICE_NAMES = {"compute": "Nova", "placement": "Placement", "identity": "Keystone"}
SECRET_OPTIONS = re.compile(r"password|secret|token|passcode|key$")   # --os-* dests to hide
MIN_FINDABLE = 6        # a shorter secret cannot be told from ordinary text: withhold instead
WITHHELD = "(the service's text withheld: it may quote a secret too short to find)"
_MARKUP = r"(?:\s|<[^>]*>)*"     # what an HTML page may put between two characters


def _variants(secret: str) -> set[str]:
    """The forms a secret takes when a login body or a URL is quoted back."""
    forms = {secret}
    for form in list(forms):
        forms.add(json.dumps(form)[1:-1])                      # \" \\ \u00e4
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])  # \" \\ but ä
    for form in list(forms):
        forms.add(form.replace("/", "\\/"))                    # encoders that escape /
        forms.add(json.dumps(form)[1:-1])                      # quoted twice
    for form in list(forms):
        forms.update((quote(form, safe=""), quote_plus(form, safe=""),
                      html.escape(form, quote=True), html.escape(form, quote=False)))
    return {form for form in forms if form}


def _pattern(form: str) -> str:
    """A form, found even when markup or line breaks were put between its characters."""
    return _MARKUP.join(re.escape(c) for c in form)


class Secrets:
    """What must never be shown: passwords, application-credential secrets, every token sent."""

    def __init__(self, values: Iterable[str] = ()):
        self._values: set[str] = set()
        self._regex: Optional[re.Pattern] = None
        for value in values:
            self.add(value)

    def add(self, value: object) -> None:
        if isinstance(value, str) and value and value not in self._values:
            self._values.add(value)
            self._regex = None

    def add_options(self, options: dict) -> None:
        """The secret ones of a set of auth options ({dest or key: value})."""
        for key, value in options.items():
            if SECRET_OPTIONS.search(str(key)):
                self.add(value)

    @property
    def findable(self) -> bool:
        """Whether every secret is long enough to be found in a text."""
        return all(len(value) >= MIN_FINDABLE for value in self._values)

    def clean(self, text: object) -> str:
        """`text` with every secret, in every form above, replaced by ***."""
        text = str(text)
        if not self._values:
            return text
        if self._regex is None:
            forms = set()
            for value in self._values:
                forms |= _variants(value)
            # longest first: a form that contains another is replaced whole
            ordered = sorted(forms, key=len, reverse=True)
            self._regex = re.compile("|".join(_pattern(f) for f in ordered), re.IGNORECASE)
        return self._regex.sub("***", text)

    def quoted(self, text: object, limit: int = 200) -> str:
        """A service's own words for a message: cleaned, markup stripped, shortened; or
        withheld when a secret is too short to be found."""
        if not self.findable:
            return WITHHELD
        cleaned = self.clean(text)
        return short(self.clean(re.sub(r"<[^>]*>", " ", cleaned)), limit)


def one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def short(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


_REASONS = ("Connection refused", "Name or service not known", "Temporary failure in name "
            "resolution", "No route to host", "Network is unreachable", "Connection reset by peer",
            "Remote end closed connection without response", "certificate verify failed")


def reason(exc: object) -> str:
    """The root cause of a connection failure in a few words, not urllib3's retry prose."""
    text = str(exc)
    for known in _REASONS:
        if known.lower() in text.lower():
            return known.lower() if known[0].isupper() and " " in known else known
    return short(text)


def body_detail(body: object) -> Optional[str]:
    """The reason Nova, Placement, Keystone or webob put in a JSON error body."""
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        found = errors[0].get("detail") or errors[0].get("title")
        if isinstance(found, str) and found:
            return found
    for value in body.values():          # {"computeFault": {"message": ...}}, {"error": ...}
        if isinstance(value, dict) and isinstance(value.get("message"), str) and value["message"]:
            return value["message"]
    if isinstance(body.get("message"), str):
        # webob's own errors (keystonemiddleware's 503 when Keystone is unreachable)
        return body["message"]
    return None


def response_detail(response: object, secrets: Secrets) -> str:
    """': <a few words of the service>' from an HTTP response (JSON or text), or ''."""
    if response is None:
        return ""
    try:
        text = body_detail(response.json())
    except Exception:                    # not JSON: an HTML page, plain text
        text = getattr(response, "text", "") or ""
        if "<" in text:
            match = re.search(r"<body[^>]*>(.*)</body>", text, re.S | re.I)
            text = match.group(1) if match else text
    return f": {secrets.quoted(text)}" if text and str(text).strip() else ""


def http_error(service_type: str, method_path: str, status: int, detail: str) -> CheckError:
    """The message of an HTTP error status from a service (after keystoneauth's one re-login
    on a 401)."""
    name = SERVICE_NAMES.get(service_type, service_type)
    if status == 401:
        return CheckError(f"{name} refused the token even after a fresh login (HTTP 401) for "
                          f"{method_path}{detail}")
    if status == 403:
        return CheckError(f"{name} denied {method_path} (HTTP 403): this user lacks the rights "
                          f"(admin role, or a policy allowing it){detail}")
    if status >= 500:
        return CheckError(f"{name} failed: HTTP {status} for {method_path}{detail}")
    return CheckError(f"{name} answered HTTP {status} for {method_path}{detail}")
