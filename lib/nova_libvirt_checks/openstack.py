"""The OpenStack session: credentials, one keystoneauth1 Session, the token cache, the deadline.

Credentials come from `--os-cloud` / `$OS_CLOUD` (clouds.yaml + secure.yaml, read by
openstacksdk's config loader, imported only then), else from the `OS_*` environment and the
`--os-*` options that keystoneauth1.loading registers for the auth type (default password;
v3applicationcredential, token or any other). A secret is never needed on the command line.

Every call goes through the one keystoneauth Session made here: Nova through python-novaclient
(nova.py), Placement through a keystoneauth Adapter (placement.py). Each service gets its
interface, region and endpoint override from clouds.yaml's per-service settings
(`compute_endpoint_override`, `placement_interface`, ...), else from --os-interface and
--os-region-name (`service_settings`).

The token is kept between runs: keystoneauth's auth state (token and catalog, get_auth_state /
set_auth_state) in a 0600 file of the private state directory (state.StateFile), found by
keystoneauth's cache id of the plugin (a hash of auth URL, credentials and scope). keystoneauth
reuses it until shortly before it expires, so there is one login per token lifetime; a token
Keystone no longer honours (revoked, keys rotated) gets a 401 from the service, and the Session
then logs in once more and repeats the call.

Every HTTP request, the login's included, is bounded by the check's deadline (-t): a peer that
accepts and never answers ends as a one-line UNKNOWN naming it, before the watchdog steps in.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import time
from typing import Any, Callable, Optional

from .errors import SERVICE_NAMES, Secrets, http_error, one_line, reason, response_detail
from .plugin import CheckError
from .state import StateError, StateFile, file_for

TOKEN_CACHE_VERSION = 3          # 3: keystoneauth's auth state found by its cache id alone
INTERFACES = ("public", "internal", "admin", "publicURL", "internalURL", "adminURL")
MISSING_EXTRA = ("the OpenStack libraries are not installed (keystoneauth1, python-novaclient, "
                 "openstacksdk): pip install 'nova-libvirt-checks[nova]'")


def _interface(text: str) -> str:
    """An endpoint interface keystoneauth knows (a typo would read as a catalog problem)."""
    if text not in INTERFACES:
        raise argparse.ArgumentTypeError(f"not an endpoint interface: {text!r} (public, internal "
                                         f"or admin)")
    return text


def add_arguments(parser: argparse.ArgumentParser, argv: Optional[list] = None) -> None:
    """The OpenStack connection options: --os-cloud, keystoneauth's --os-auth-type and the
    options of that plugin (default password), region, interface, TLS, token cache."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    group = parser.add_argument_group(
        "OpenStack connection",
        "clouds.yaml (--os-cloud, secrets in secure.yaml) or the OS_* environment (an openrc); "
        "every --os-X option defaults to $OS_X. Keep secrets out of the command line.")
    group.add_argument("--os-cloud", metavar="NAME", default=os.environ.get("OS_CLOUD") or None,
                       help="cloud in clouds.yaml (default $OS_CLOUD); its per-service settings "
                            "(e.g. compute_endpoint_override, placement_interface) are used")
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
        # --help still works; the check answers UNKNOWN with the pip command when it runs
        parser.set_defaults(os_auth_type=None, os_auth_problem=MISSING_EXTRA)
        return
    try:
        # adds --os-auth-type (default $OS_AUTH_TYPE, else password) and that plugin's options
        loading.register_auth_argparse_arguments(parser, argv, default="password")
    except Exception as exc:  # NoMatchingPlugin: an unknown --os-auth-type
        parser.set_defaults(os_auth_problem=f"--os-auth-type: {exc}")
        return
    parser.set_defaults(os_auth_problem=None)


def where(args: argparse.Namespace) -> str:
    """Where the check logs in, for messages (never a secret)."""
    if getattr(args, "os_cloud", None):
        return f"cloud {args.os_cloud}"
    return getattr(args, "os_auth_url", None) or os.environ.get("OS_AUTH_URL") or "Keystone"


def cache_index(cache_id: str) -> str:
    """The name of the token file of a keystoneauth cache id."""
    return hashlib.sha256(b"nova-libvirt-checks keystoneauth cache id\0"
                          + cache_id.encode("utf-8", "surrogatepass")).hexdigest()


def _silence() -> None:
    """No library chatter on stderr (Icinga 2 would show it as plugin output)."""
    import logging
    import warnings
    logging.getLogger().addHandler(logging.NullHandler())
    for name in ("keystoneauth", "keystoneauth1", "urllib3", "openstack", "stevedore",
                 "novaclient"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    warnings.simplefilter("ignore")


class Connection:
    """One keystoneauth Session for a run, with its token cache, deadline and error mapping."""

    def __init__(self, args: argparse.Namespace, deadline: float,
                 app_name: str = "nova-libvirt-checks"):
        self.args = args
        self.deadline = deadline
        self.app_name = app_name
        self.notes: list[str] = []      # for the long output (cache trouble and the like)
        self.requests: list[tuple] = []  # (method, url, status, seconds): for -vv
        self.secrets = Secrets()
        self.secrets.add_options({k: v for k, v in vars(args).items() if k.startswith("os_")})
        self.cache_loaded = False
        self._loaded_state: Optional[str] = None     # the auth state the cache gave
        self._saved_state: Optional[str] = None
        self._store: Optional[StateFile] = None
        self._cache_id: Optional[str] = None
        self._cloud = None              # openstacksdk's CloudRegion, for --os-cloud
        problem = getattr(args, "os_auth_problem", None)
        if problem:
            raise CheckError(problem)
        try:
            from keystoneauth1 import exceptions, session
        except ImportError:
            raise CheckError(MISSING_EXTRA) from None
        _silence()
        self.exc = exceptions
        if args.os_cloud:
            auth, verify, cert = self._from_clouds_yaml(args)
        else:
            auth, verify, cert = self._from_options(args)
        self.auth = auth
        self.auth_url = getattr(auth, "auth_url", None) or where(args)
        self.session = session.Session(auth=auth, verify=verify, cert=cert, app_name=app_name,
                                       session=self._requests_session())
        if not args.no_token_cache:
            self._load_token()

    # -- building

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
            raise CheckError(f"OpenStack credentials unusable: "
                             f"{self.secrets.quoted(one_line(exc))}") from None
        verify = False if args.insecure else (args.os_cacert or True)
        cert = (args.os_cert, args.os_key) if args.os_cert and args.os_key else args.os_cert
        return auth, verify, cert

    def _from_clouds_yaml(self, args):
        try:
            from openstack.config import loader
        except ImportError:
            raise CheckError("--os-cloud needs openstacksdk: pip install "
                             "'nova-libvirt-checks[nova]'; or use the OS_* variables") from None
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
            self.secrets.add_options(cloud.config.get("auth") or {})
            auth = cloud.get_auth()
            verify, cert = cloud.get_requests_verify_args()
        except Exception as exc:  # openstack.exceptions.ConfigException and ksa's option errors
            text = one_line(exc)
            if isinstance(exc, self.exc.MissingRequiredOptions):
                text = "missing " + ", ".join(opt.dest for opt in exc.options)
            raise CheckError(f"cloud {args.os_cloud!r} in clouds.yaml unusable: "
                             f"{self.secrets.quoted(text)}") from None
        self._cloud = cloud
        return auth, verify, cert

    def _requests_session(self):
        """A requests Session whose every request ends by the deadline, is logged for -vv,
        and whose tokens are known as secrets; a GET on a kept-alive connection the server
        had closed is sent once more on a new one."""
        import requests
        from requests.adapters import HTTPAdapter
        conn = self

        class DeadlineAdapter(HTTPAdapter):
            def send(self, request, timeout=None, **kwargs):
                for attempt in (1, 2):
                    remaining = conn.deadline - time.monotonic()
                    if remaining <= 0.05:
                        raise requests.exceptions.ConnectTimeout("the check's deadline has passed")
                    conn.secrets.add(request.headers.get("X-Auth-Token"))
                    started = time.monotonic()
                    try:
                        response = super().send(request, timeout=remaining, **kwargs)
                    except requests.exceptions.ConnectionError as exc:
                        conn.requests.append((request.method, request.url, type(exc).__name__,
                                              time.monotonic() - started))
                        if attempt == 2 or request.method != "GET" or not _stale(exc):
                            raise
                        continue
                    conn.requests.append((request.method, request.url, response.status_code,
                                          time.monotonic() - started))
                    return response
                raise AssertionError("unreachable")

        session = requests.Session()
        for scheme in ("http://", "https://"):
            session.mount(scheme, DeadlineAdapter(pool_maxsize=16))
        return session

    # -- per service

    def service_settings(self, service_type: str) -> dict:
        """interface, region_name and endpoint_override for a keystoneauth Adapter or a
        novaclient Client: clouds.yaml's per-service settings, else the command line's."""
        cloud = self._cloud
        if cloud is not None:
            return {"interface": cloud.get_interface(service_type) or "public",
                    "region_name": cloud.get_region_name(service_type) or None,
                    "endpoint_override": cloud.get_endpoint(service_type) or None}
        return {"interface": self.args.os_interface or "public",
                "region_name": self.args.os_region_name, "endpoint_override": None}

    def adapter(self, service_type: str, microversion: Optional[str] = None):
        from keystoneauth1 import adapter
        return adapter.Adapter(self.session, service_type=service_type,
                               default_microversion=microversion,
                               **self.service_settings(service_type))

    def has_service(self, service_type: str) -> bool:
        """Whether there is an endpoint of this type (an override, or one in the catalog for
        our region and interface)."""
        try:
            return bool(self.adapter(service_type).get_endpoint())
        except Exception:   # EndpointNotFound, EmptyCatalog
            return False

    # -- token cache

    def _load_token(self) -> None:
        try:
            cache_id = self.auth.get_cache_id()
        except Exception:
            cache_id = None
        if not cache_id:
            return          # e.g. auth type none: nothing worth keeping
        self._cache_id = cache_id
        self._store = StateFile(file_for("token", cache_index(cache_id), self.args.state_dir))
        document = self._store.load()
        self.notes.extend(note for note in self._store.notes if note not in self.notes)
        state = document.get("auth_state")
        if document.get("version") != TOKEN_CACHE_VERSION or \
                document.get("cache_id") != cache_id or not isinstance(state, str):
            return
        try:
            self.auth.set_auth_state(state)
            ref = self.auth.auth_ref
            if ref is None or not ref.auth_token:
                raise ValueError("no token")
            ref.expires  # noqa: B018 - parses the expiry: a mangled one raises here
            self.secrets.add(ref.auth_token)
        except Exception:
            self.auth.auth_ref = None
            self.notes.append("cached token unreadable, logging in afresh")
            return
        self._loaded_state = state
        self.cache_loaded = True

    def save_token(self) -> None:
        """Keep the token for the next run if it changed (a new login, or the first run)."""
        if self._store is None:
            return
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return
        if not state or state in (self._loaded_state, self._saved_state):
            return
        cache_id = self._cache_id

        def change(_current):
            return {"version": TOKEN_CACHE_VERSION, "cache_id": cache_id, "auth_state": state}
        try:
            self._store.update(change)
            self._saved_state = state
        except StateError as exc:
            if str(exc) not in self.notes:       # refused on load already: told once
                self.notes.append(str(exc))

    @property
    def new_login(self) -> bool:
        """Whether this run obtained a token from Keystone (rather than reusing the cached one)."""
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return False
        return bool(state) and state != self._loaded_state

    @property
    def token_source(self) -> Optional[str]:
        if self.new_login:
            return "new"
        return "cached" if self.cache_loaded else None

    # -- calls

    def login(self) -> None:
        """Make sure there is a token (cached or new) and the catalog; errors as one line."""
        try:
            token = self.session.get_token()
        except Exception as exc:
            raise self.error(exc, "identity", "login") from None
        self.secrets.add(token)

    def call(self, service_type: str, what: str, function: Callable[[], Any]) -> Any:
        """`function()` (a novaclient or Adapter call), its failures as one line."""
        try:
            return function()
        except CheckError:
            raise
        except Exception as exc:
            raise self.error(exc, service_type, what) from None

    def error(self, exc: BaseException, service_type: str, what: str) -> CheckError:
        """One line, without secrets, for anything keystoneauth, requests or novaclient
        raised while doing `what` ("GET /path", "login") with a service."""
        e = self.exc
        secrets = self.secrets
        login = service_type == "identity" or _is_keystone(exc, self.auth_url)
        name = SERVICE_NAMES.get(service_type, service_type)
        target = f"Keystone at {self.auth_url}" if login else f"{name} ({what})"
        status = getattr(exc, "http_status", None) or getattr(exc, "code", None)
        if isinstance(exc, e.Unauthorized) and login:
            return CheckError(f"login to {self.auth_url} refused (HTTP 401): wrong or expired "
                              f"credentials ({self._who()})")
        if isinstance(exc, e.HttpError) and login:
            return CheckError(f"login to {self.auth_url} failed: HTTP {exc.http_status}"
                              f"{response_detail(getattr(exc, 'response', None), secrets)}")
        if isinstance(exc, (e.EndpointNotFound, e.EmptyCatalog)):
            return self.missing_endpoint(service_type)
        if isinstance(exc, e.ConnectTimeout) or "deadline has passed" in str(exc):
            return CheckError(f"{target} did not answer within the timeout of "
                              f"{self.args.timeout:g} s")
        if isinstance(exc, e.SSLError):
            return CheckError(f"TLS failed with {target}: {secrets.quoted(exc)} (--os-cacert? "
                              f"--insecure?)")
        if isinstance(exc, (e.ConnectFailure, e.UnknownConnectionError, e.DiscoveryFailure)):
            return CheckError(f"cannot connect to {target}: {secrets.quoted(reason(exc))}")
        if isinstance(status, int) and 300 <= status < 600:       # novaclient's HTTP errors
            text = getattr(exc, "message", None)
            detail = f": {secrets.quoted(text)}" if isinstance(text, str) and text.strip() \
                and text != type(exc).__name__ else ""
            return http_error(service_type, what, status, detail)
        if isinstance(exc, e.ClientException):
            return CheckError(f"{target}: {secrets.quoted(exc)}")
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError, RecursionError)):
            # novaclient reading an answer that is not what the API promises
            return CheckError(f"{name} answered {what} with malformed JSON or a document "
                              f"that is not the expected list")
        return CheckError(f"{target}: {type(exc).__name__}: {secrets.quoted(exc)}")

    def response_error(self, service_type: str, what: str, response) -> CheckError:
        """The message of an HTTP error status of an Adapter call."""
        return http_error(service_type, what, response.status_code,
                          response_detail(response, self.secrets))

    def missing_endpoint(self, service_type: str) -> CheckError:
        settings = self.service_settings(service_type)
        region = settings["region_name"]
        where_ = f"region {region}" if region else "any region"
        return CheckError(f"no {service_type} endpoint ({settings['interface']}, {where_}) in the "
                          f"Keystone catalog of {self.auth_url}")

    # -- who, for messages (never a secret)

    def identity(self) -> dict:
        """Who logs in: the user or application credential and project of the options."""
        options = dict(vars(self.args))
        if self._cloud is not None:
            options.update({"os_" + k: v for k, v in (self._cloud.config.get("auth") or {}).items()})
        found = {}
        for key, dests in (("application credential", ("application_credential_id",
                                                        "application_credential_name")),
                           ("user", ("username", "user_id")),
                           ("project", ("project_name", "project_id"))):
            for dest in dests:
                value = options.get("os_" + dest)
                if isinstance(value, str) and value:
                    found[key] = value
                    break
        return found

    def _who(self) -> str:
        ident = self.identity()
        if ident.get("application credential"):
            return f"application credential {ident['application credential']}"
        return f"user {ident['user']}" if ident.get("user") else "the given credentials"

    def describe(self) -> str:
        """Connection details for the long output at -v (no secrets)."""
        parts = [f"auth {self.auth_url}"]
        parts += [f"{key} {value}" for key, value in self.identity().items()]
        settings = self.service_settings("compute")
        parts.append(f"region {settings['region_name'] or 'any'}, {settings['interface']} "
                     f"endpoints")
        parts.append({"cached": "token reused from the cache", "new": "new token"}.get(
            self.token_source, "token"))
        return ", ".join(parts) + "; calls through a keystoneauth session"


def _stale(exc: BaseException) -> bool:
    """A connection closed by the server before it answered (not a timeout, not a refusal)."""
    import requests
    if isinstance(exc, requests.exceptions.Timeout):
        return False
    text = repr(exc.args)
    return "RemoteDisconnected" in text or "Connection aborted" in text or \
        "ConnectionResetError" in text or "BrokenPipeError" in text


def _is_keystone(exc: BaseException, auth_url: str) -> bool:
    """Whether a failed request went to Keystone (its URL, or the text, names the auth URL's
    root: scheme, host and port, as a whole - port 5000 is not port 50001)."""
    url = getattr(exc, "url", None) or ""
    text = str(exc)
    base = (auth_url or "").rstrip("/")
    if not base or base.startswith("cloud "):
        return False
    root = base.rsplit("/v3", 1)[0].rsplit("/v2.0", 1)[0]
    if not root:
        return False
    whole = re.escape(root) + r"(?![\w.:-])"
    return bool(re.match(whole, str(url)) or re.search(whole, text))

