"""The OpenStack session: credentials, one reused Keystone token, JSON calls, errors in one line.

Credentials come from `--os-cloud` / `$OS_CLOUD` (clouds.yaml + secure.yaml, read by
openstacksdk's config loader, the optional extra "clouds"), else from the `OS_*` environment
and the standard `--os-*` options (keystoneauth1's loaders: password, v3applicationcredential,
or any other `--os-auth-type`). A secret is never needed on the command line.

The token is kept between runs: keystoneauth's auth state (token and catalog), keyed by the
plugin's cache id (a hash of auth URL, credentials and scope), in a 0600 file in the private
state directory, and reused until shortly before it expires (keystoneauth refuses a token with
less than 2 minutes left). A token Keystone no longer honours (revoked, keys rotated) gets a
401 from the service; keystoneauth then logs in once more and repeats the call.

Every request is bounded by the check's deadline (-t): a peer that accepts and never answers
ends as a one-line UNKNOWN naming it, before the watchdog has to step in.

No secret in a message: passwords, application-credential secrets and every token sent are
replaced by *** in whatever a service's error text quotes back (Connection.clean), before
the text is shortened.

keystoneauth1 is imported when the argument parser is built (its loaders define the --os-*
options) or when a session is made; importing this module itself costs nothing.
"""
import argparse
import os
import re
import time

from .plugin import CheckError
from .state import StateError, StateFile, file_for

SERVICE_NAMES = {"compute": "Nova", "placement": "Placement", "identity": "Keystone"}
TOKEN_CACHE_VERSION = 1
INTERFACES = ("public", "internal", "admin", "publicURL", "internalURL", "adminURL")
SECRET_OPTIONS = re.compile(r"password|secret|token|passcode|key$")   # --os-* dests to hide


def _interface(text):
    """An endpoint interface keystoneauth knows (a typo would read as a catalog problem)."""
    if text not in INTERFACES:
        raise argparse.ArgumentTypeError(f"not an endpoint interface: {text!r} (public, internal "
                                         f"or admin)")
    return text


# ---------------------------------------------------------------- arguments

def add_arguments(parser, argv=None):
    """The OpenStack connection options: --os-cloud, keystoneauth's --os-auth-type and the
    options of that plugin (default password), region, interface, TLS, token cache."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    group = parser.add_argument_group(
        "OpenStack connection",
        "clouds.yaml (--os-cloud, secrets in secure.yaml) or the OS_* environment (an openrc); "
        "every --os-X option defaults to $OS_X. Keep secrets out of the command line.")
    group.add_argument("--os-cloud", metavar="NAME", default=os.environ.get("OS_CLOUD") or None,
                       help="cloud in clouds.yaml (default $OS_CLOUD); needs openstacksdk "
                            "(pip install 'nova-libvirt-checks[clouds]')")
    group.add_argument("--os-region-name", metavar="REGION",
                       default=os.environ.get("OS_REGION_NAME") or None,
                       help="region of the endpoints (default $OS_REGION_NAME)")
    group.add_argument("--os-interface", metavar="INTERFACE", type=_interface,
                       default=os.environ.get("OS_INTERFACE") or None,
                       help="endpoint interface: public, internal or admin (default $OS_INTERFACE, "
                            "else public)")
    group.add_argument("--insecure", action="store_true", default=False,
                       help="do not verify the servers' TLS certificates")
    group.add_argument("--os-cacert", metavar="FILE", default=os.environ.get("OS_CACERT"),
                       help="CA bundle for the servers' TLS certificates (default $OS_CACERT)")
    group.add_argument("--os-cert", metavar="FILE", default=os.environ.get("OS_CERT"),
                       help="TLS client certificate (default $OS_CERT)")
    group.add_argument("--os-key", metavar="FILE", default=os.environ.get("OS_KEY"),
                       help="TLS client key (default $OS_KEY)")
    group.add_argument("--state-dir", metavar="DIR", default=None,
                       help="where the Keystone token is kept between runs (default "
                            "$NOVA_LIBVIRT_CHECKS_STATE_DIR, else /var/tmp/nova-libvirt-checks-UID)")
    group.add_argument("--no-token-cache", action="store_true",
                       help="log in to Keystone on every run instead of reusing the token")
    try:
        from keystoneauth1 import loading
    except ImportError:
        # the check says so (UNKNOWN) when it runs; --help still works
        parser.set_defaults(os_auth_type=None, os_auth_problem="keystoneauth1 is not installed")
        return
    try:
        # adds --os-auth-type (default $OS_AUTH_TYPE, else password) and that plugin's options
        loading.register_auth_argparse_arguments(parser, argv, default="password")
    except Exception as exc:  # NoMatchingPlugin: an unknown --os-auth-type
        parser.set_defaults(os_auth_problem=f"--os-auth-type: {exc}")
        return
    parser.set_defaults(os_auth_problem=None)


def where(args):
    """Where the check logs in, for messages (never a secret)."""
    if getattr(args, "os_cloud", None):
        return f"cloud {args.os_cloud}"
    return getattr(args, "os_auth_url", None) or os.environ.get("OS_AUTH_URL") or "Keystone"


# ---------------------------------------------------------------- the connection

class Connection:
    """A keystoneauth session with the token cache, the deadline and error mapping."""

    def __init__(self, args, deadline, app_name="nova-libvirt-checks"):
        self.args = args
        self.deadline = deadline
        self.notes = []          # shown in the long output (cache trouble and the like)
        self.requests = []       # (method, url, status, seconds) of every HTTP request, for -vv
        self.cache_loaded = False
        self._loaded_state = None
        self._store = None
        self.secrets = set()     # passwords, secrets and every token sent: never in a message
        self.secrets.update(str(value) for key, value in vars(args).items()
                            if key.startswith("os_") and SECRET_OPTIONS.search(key) and value)
        try:
            import keystoneauth1  # noqa: F401
        except ImportError as exc:
            raise CheckError(f"keystoneauth1 is not installed: {exc}") from None
        self._silence()
        from keystoneauth1 import exceptions as ksa_exc
        self.exc = ksa_exc
        problem = getattr(args, "os_auth_problem", None)
        if problem:
            raise CheckError(problem)
        if args.os_cloud:
            self.auth, verify, cert, self.region, self.interface = self._from_clouds_yaml(args)
        else:
            self.auth, verify, cert = self._from_options(args)
            self.region = args.os_region_name
            self.interface = args.os_interface or "public"
        from keystoneauth1 import session as ksa_session
        self.session = ksa_session.Session(auth=self.auth, verify=verify, cert=cert,
                                           app_name=app_name)
        self._bound_by_deadline(self.session)
        self.auth_url = getattr(self.auth, "auth_url", None) or where(args)
        if not args.no_token_cache:
            self._load_token()

    # -- building

    @staticmethod
    def _silence():
        """No library chatter on stderr (Icinga 2 would show it as plugin output)."""
        import logging
        import warnings
        logging.getLogger().addHandler(logging.NullHandler())
        for name in ("keystoneauth", "keystoneauth1", "urllib3", "openstack", "stevedore"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        warnings.simplefilter("ignore")

    def _from_options(self, args):
        from keystoneauth1 import loading
        if not getattr(args, "os_auth_type", None):
            raise CheckError("no OpenStack credentials: set OS_CLOUD (clouds.yaml) or the OS_* "
                             "variables of an openrc")
        try:
            auth = loading.load_auth_from_argparse_arguments(args)
        except self.exc.MissingRequiredOptions as exc:
            names = ", ".join("OS_" + opt.dest.upper() for opt in exc.options)
            raise CheckError(f"OpenStack credentials incomplete: missing {names} (or use "
                             f"--os-cloud with clouds.yaml)") from None
        except self.exc.ClientException as exc:
            raise CheckError(f"OpenStack credentials unusable: {one_line(exc)}") from None
        if args.insecure:
            verify = False
        else:
            verify = args.os_cacert or True
        cert = (args.os_cert, args.os_key) if args.os_cert and args.os_key else args.os_cert
        return auth, verify, cert

    def _from_clouds_yaml(self, args):
        try:
            from openstack.config import loader
        except ImportError:
            raise CheckError("--os-cloud needs openstacksdk (pip install "
                             "'nova-libvirt-checks[clouds]'); or use the OS_* variables") from None
        overrides = {}
        if args.os_region_name:
            overrides["region_name"] = args.os_region_name
        if args.os_interface:
            overrides["interface"] = args.os_interface
        if args.os_cacert:
            overrides["cacert"] = args.os_cacert
        if args.insecure:
            overrides["verify"] = False
        try:
            # the OS_* variables of an openrc must not leak into the named cloud, but the file
            # locations given in the environment count
            files = [os.environ.get("OS_CLIENT_CONFIG_FILE")] + list(loader.CONFIG_FILES)
            secure = [os.environ.get("OS_CLIENT_SECURE_FILE")] + list(loader.SECURE_FILES)
            config = loader.OpenStackConfig(config_files=[f for f in files if f],
                                            secure_files=[f for f in secure if f],
                                            load_envvars=False, app_name="nova-libvirt-checks")
            cloud = config.get_one(cloud=args.os_cloud, validate=True, **overrides)
            self.secrets.update(str(value) for key, value in (cloud.config.get("auth") or {}).items()
                                if SECRET_OPTIONS.search(key) and value)
            auth = cloud.get_auth()
            verify, cert = cloud.get_requests_verify_args()
        except Exception as exc:  # openstack.exceptions.ConfigException and ksa's option errors
            text = one_line(exc)
            if isinstance(exc, self.exc.MissingRequiredOptions):
                text = "missing " + ", ".join(opt.dest for opt in exc.options)
            raise CheckError(f"cloud {args.os_cloud!r} in clouds.yaml unusable: {text}") from None
        return auth, verify, cert, cloud.region_name or None, cloud.get_interface() or "public"

    def _bound_by_deadline(self, sess):
        """Every HTTP request, the login's included, times out at the check's deadline."""
        from keystoneauth1.session import TCPKeepAliveAdapter
        import requests
        deadline = self.deadline
        log = self.requests
        secrets = self.secrets

        class DeadlineAdapter(TCPKeepAliveAdapter):
            def send(self, request, timeout=None, **kwargs):
                for attempt in (1, 2):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0.05:
                        raise requests.exceptions.ConnectTimeout("the check's deadline has passed")
                    started = time.monotonic()
                    token = request.headers.get("X-Auth-Token")
                    if token:
                        secrets.add(token)
                    try:
                        response = super().send(request, timeout=remaining, **kwargs)
                        log.append((request.method, request.url, response.status_code,
                                    time.monotonic() - started))
                        return response
                    except requests.exceptions.ConnectionError as exc:
                        log.append((request.method, request.url, type(exc).__name__,
                                    time.monotonic() - started))
                        # a kept-alive connection the server had already closed: a GET is
                        # repeated once on a new connection (never after a timeout)
                        if attempt == 2 or request.method != "GET" or not _stale(exc):
                            raise
                raise AssertionError("unreachable")

        for scheme in ("http://", "https://"):
            sess.session.mount(scheme, DeadlineAdapter(pool_maxsize=16))

    # -- token cache

    def _load_token(self):
        try:
            cache_id = self.auth.get_cache_id()
        except Exception:
            cache_id = None
        if not cache_id:
            return          # e.g. auth type none or admin_token: nothing worth keeping
        self._cache_id = cache_id
        self._store = StateFile(file_for("token", cache_id, self.args.state_dir))
        document = self._store.load()
        self.notes.extend(self._store.notes)
        state = document.get("auth_state")
        if document.get("version") != TOKEN_CACHE_VERSION or document.get("cache_id") != cache_id \
                or not isinstance(state, str):
            return
        try:
            self.auth.set_auth_state(state)
            ref = self.auth.auth_ref
            if ref is None or not ref.auth_token:
                raise ValueError("no token")
            self.secrets.add(ref.auth_token)
            ref.expires  # noqa: B018 - parses the expiry; a mangled one raises here
            self._loaded_state = state
            self.cache_loaded = True
        except Exception:
            self.auth.auth_ref = None
            self.notes.append("cached token unreadable, logging in afresh")

    def save_token(self):
        """Keep the token for the next run if it changed (new login, or first run)."""
        if self._store is None:
            return
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return
        if not state or state == self._loaded_state:
            return
        cache_id = self._cache_id

        def change(_current):
            return {"version": TOKEN_CACHE_VERSION, "cache_id": cache_id, "auth_state": state}
        try:
            self._store.update(change)
            self._loaded_state = state
        except StateError as exc:
            if str(exc) not in self.notes:       # refused on load already: told once
                self.notes.append(str(exc))

    @property
    def token_source(self):
        """"new" (this run logged in), "cached" (reused the stored token) or None."""
        if self.new_login:
            return "new"
        return "cached" if self.cache_loaded else None

    @property
    def new_login(self):
        """Whether this run obtained a token from Keystone (rather than reusing the cached one)."""
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return False
        return bool(state) and state != self._loaded_state

    # -- calls

    def login(self):
        """Make sure there is a token (cached or new) and the catalog; errors as one line."""
        try:
            self.session.get_token()
        except Exception as exc:
            raise self.scrub(self._error(exc, "identity", "login")) from None

    def has_service(self, service_type):
        """Whether the catalog has an endpoint of this type for our region and interface."""
        try:
            return bool(self.auth.get_endpoint(self.session, service_type=service_type,
                                               interface=self.interface, region_name=self.region))
        except Exception:   # EndpointNotFound, EmptyCatalog
            return False

    def get(self, service_type, path, microversion=None, instead=None):
        """GET `path` of the service, as JSON. `instead` maps HTTP statuses that are an answer
        (e.g. {404: None}) to what to return for them."""
        try:
            response = self.session.get(
                path, endpoint_filter={"service_type": service_type, "interface": self.interface,
                                       "region_name": self.region},
                microversion=microversion, microversion_service_type=service_type,
                headers={"Accept": "application/json"}, raise_exc=False)
        except Exception as exc:
            raise self.scrub(self._error(exc, service_type, path)) from None
        status = response.status_code
        if instead and status in instead:
            return instead[status]
        if status >= 300:      # 3xx: keystoneauth follows redirects; one left is no answer
            raise self.scrub(self._http_error(service_type, path, response))
        try:
            return response.json()
        except (ValueError, RecursionError):     # RecursionError: JSON nested too deep
            kind = response.headers.get("Content-Type", "no content type")
            raise self.scrub(CheckError(
                f"{SERVICE_NAMES.get(service_type, service_type)} answered GET {path} with "
                f"malformed JSON (HTTP {status}, {short(kind, 60)})")) from None

    def clean(self, text):
        """`text` with every secret and token we know replaced by ***: a service, or a
        proxy's error page, may echo what it was sent (the X-Auth-Token, a login body). Done
        before a text is shortened, so that no cut can leave part of a secret behind."""
        text = str(text)
        ref = getattr(self.auth, "auth_ref", None)
        if ref is not None and getattr(ref, "auth_token", None):
            self.secrets.add(ref.auth_token)
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def scrub(self, error):
        """The error, cleaned (belt and braces: its parts were cleaned when it was made)."""
        message = self.clean(error)
        return error if message == str(error) else CheckError(message, error.state)

    # -- errors

    def missing_endpoint(self, service_type):
        where_ = f"region {self.region}" if self.region else "any region"
        return CheckError(f"no {service_type} endpoint ({self.interface}, {where_}) in the "
                          f"Keystone catalog of {self.auth_url}")

    def _http_error(self, service_type, path, response):
        name = SERVICE_NAMES.get(service_type, service_type)
        status = response.status_code
        detail = _error_detail(response, self.clean)
        if status == 401:
            return CheckError(f"{name} refused the token even after a fresh login (HTTP 401) for "
                              f"GET {path}{detail}")
        if status == 403:
            return CheckError(f"{name} denied GET {path} (HTTP 403): this user lacks the rights "
                              f"(admin role, or a policy allowing it){detail}")
        if status >= 500:
            return CheckError(f"{name} failed: HTTP {status} for GET {path}{detail}")
        return CheckError(f"{name} answered HTTP {status} for GET {path}{detail}")

    def _error(self, exc, service_type, path):
        """One line for anything keystoneauth or requests raised."""
        e = self.exc
        name = SERVICE_NAMES.get(service_type, service_type)
        login = service_type == "identity" or _is_keystone(exc, self.auth_url)
        target = f"Keystone at {self.auth_url}" if login else f"{name} (GET {path})"
        if isinstance(exc, e.Unauthorized) and login:
            return CheckError(f"login to {self.auth_url} refused (HTTP 401): wrong or expired "
                              f"credentials ({self._who()})")
        if isinstance(exc, e.HttpError) and login:
            return CheckError(f"login to {self.auth_url} failed: HTTP {exc.http_status}"
                              f"{_error_detail(getattr(exc, 'response', None), self.clean)}")
        if isinstance(exc, (e.EndpointNotFound, e.EmptyCatalog)):
            return self.missing_endpoint(service_type)
        if isinstance(exc, e.ConnectTimeout) or "deadline has passed" in str(exc):
            return CheckError(f"{target} did not answer within the timeout of "
                              f"{self.args.timeout:g} s")
        if isinstance(exc, e.SSLError):
            return CheckError(f"TLS failed with {target}: {short(self.clean(exc))} (--os-cacert? "
                              f"--insecure?)")
        if isinstance(exc, (e.ConnectFailure, e.UnknownConnectionError, e.DiscoveryFailure)):
            return CheckError(f"cannot connect to {target}: {_reason(exc)}")
        if isinstance(exc, e.MissingRequiredOptions):
            names = ", ".join("OS_" + opt.dest.upper() for opt in exc.options)
            return CheckError(f"OpenStack credentials incomplete: missing {names}")
        if isinstance(exc, e.ClientException):
            return CheckError(f"{target}: {short(self.clean(exc))}")
        if isinstance(exc, ValueError):
            return CheckError(f"{target} answered with malformed JSON: {short(self.clean(exc))}")
        return CheckError(f"{target}: {type(exc).__name__}: {short(self.clean(exc))}")

    def _who(self):
        ident = identity(self.auth)
        if ident.get("application credential"):
            return f"application credential {ident['application credential']}"
        return f"user {ident['user']}" if ident.get("user") else "the given credentials"


def identity(auth):
    """Who logs in, from whichever plugin keystoneauth made (never a secret)."""
    found = {}
    candidates = [auth] + list(getattr(auth, "auth_methods", None) or [])
    inner = getattr(auth, "_plugin", None)
    if inner is not None:
        candidates += [inner] + list(getattr(inner, "auth_methods", None) or [])
    for obj in candidates:
        for key, attrs in (("application credential", ("application_credential_id",
                                                        "application_credential_name")),
                           ("user", ("username", "user_id")),
                           ("project", ("project_name", "project_id"))):
            if key in found:
                continue
            for attr in attrs + tuple("_" + a for a in attrs):   # generic plugins: _username
                value = getattr(obj, attr, None)
                if isinstance(value, str) and value:
                    found[key] = value
                    break
    return found


def _stale(exc):
    """A connection closed by the server before it answered (not a timeout, not a refusal)."""
    import requests
    if isinstance(exc, requests.exceptions.Timeout):
        return False
    text = repr(exc.args)
    return "RemoteDisconnected" in text or "Connection aborted" in text or \
        "ConnectionResetError" in text or "BrokenPipeError" in text


_REASONS = ("Connection refused", "Name or service not known", "Temporary failure in name "
            "resolution", "No route to host", "Network is unreachable", "Connection reset by peer",
            "Remote end closed connection without response", "certificate verify failed")


def _reason(exc):
    """The root cause of a connection failure in a few words, not urllib3's retry prose."""
    text = str(exc)
    for reason in _REASONS:
        if reason.lower() in text.lower():
            return reason.lower() if reason[0].isupper() and " " in reason else reason
    return short(text)


def _is_keystone(exc, auth_url):
    url = getattr(exc, "url", None) or ""
    text = str(exc)
    base = (auth_url or "").rstrip("/")
    if not base or base.startswith("cloud "):
        return False
    root = base.rsplit("/v3", 1)[0].rsplit("/v2.0", 1)[0]
    return bool(root) and (url.startswith(root) or root in text)


def _error_detail(response, clean=str):
    """Nova and Placement put the reason in a JSON body; a few words of it."""
    if response is None:
        return ""
    try:
        body = response.json()
    except Exception:
        return ""
    message = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = errors[0].get("detail") or errors[0].get("title")
        for value in body.values():
            if message:
                break
            if isinstance(value, dict) and value.get("message"):
                message = value["message"]
        if not message and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        if not message and isinstance(body.get("message"), str):
            # webob's own errors (keystonemiddleware's 503 when Keystone is unreachable):
            # {"message": "The server is currently unavailable...<br /><br />\nThe Keystone
            # service is temporarily unavailable.", "code": "503 Service Unavailable", ...}
            message = re.sub(r"<[^>]*>", " ", body["message"])
    return f": {short(clean(message))}" if message else ""


def one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(conn):
    """Connection details for the long output at -v (no secrets)."""
    parts = [f"auth {conn.auth_url}"]
    parts += [f"{key} {value}" for key, value in identity(conn.auth).items()]
    parts.append(f"region {conn.region or 'any'}, {conn.interface} endpoints")
    parts.append({"cached": "token reused from the cache", "new": "new token"}.get(
        conn.token_source, "token"))
    return ", ".join(parts)

