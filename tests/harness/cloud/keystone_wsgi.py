"""uwsgi entry point for the test cloud's keystone: the real keystone WSGI application
(keystone.wsgi.api), wrapped so that every POST /v3/auth/tokens is also written as one JSON line
to $NLC_TOKEN_LOG:

    {"t": 1700000000.123, "status": 201, "methods": ["password"], "user": "admin",
     "user_id": "...", "project": "admin", "app_cred": null, "ms": 12.3}

status 201 = a token was issued.  tests/fixtures_cloud.py counts these lines (Cloud.token_requests)
so a test can tell exactly how many tokens a check obtained, and for which user - the service
users (nova, placement) get their own tokens from the same keystone in the background.
Nothing else about the request or the response is changed.
"""
import io
import json
import os
import threading
import time

from keystone.wsgi.api import application as _keystone

_LOG = os.environ.get("NLC_TOKEN_LOG")
_lock = threading.Lock()


def _record(entry):
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with _lock:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _summary(request_body, status, response_body):
    entry = {"status": status, "methods": None, "user": None, "user_id": None,
             "project": None, "app_cred": None}
    try:
        ident = json.loads(request_body or b"{}")["auth"]["identity"]
        entry["methods"] = ident.get("methods")
        if "application_credential" in ident:
            entry["app_cred"] = ident["application_credential"].get("id") or \
                ident["application_credential"].get("name")
        if "password" in ident:
            entry["user"] = ident["password"].get("user", {}).get("name")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        token = json.loads(response_body)["token"]
        entry["user"] = token["user"]["name"]
        entry["user_id"] = token["user"]["id"]
        entry["project"] = (token.get("project") or {}).get("name")
    except (ValueError, KeyError, TypeError):
        pass
    return entry


def application(environ, start_response):
    if environ.get("REQUEST_METHOD") != "POST" or \
            environ.get("PATH_INFO", "").rstrip("/") != "/v3/auth/tokens":
        return _keystone(environ, start_response)
    t0 = time.time()
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    seen = {}

    def _start(status, headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

    result = _keystone(environ, _start)
    try:
        chunks = [c for c in result]
    finally:
        if hasattr(result, "close"):
            result.close()
    response_body = b"".join(chunks)
    entry = _summary(body, seen.get("status"), response_body)
    entry["t"] = round(t0, 3)
    entry["ms"] = round((time.time() - t0) * 1000, 1)
    if _LOG:
        _record(entry)
    return [response_body]
