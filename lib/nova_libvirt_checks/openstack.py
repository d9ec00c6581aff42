"""The OpenStack session: credentials, one reused Keystone token, JSON calls, errors in one line.

Credentials come from `--os-cloud` / `$OS_CLOUD` (clouds.yaml + secure.yaml, read by
openstacksdk's config loader, the optional extra "clouds"), else from the `OS_*` environment
and the standard `--os-*` options (keystoneauth1's loaders: password, v3applicationcredential,
or any other `--os-auth-type`). A secret is never needed on the command line.

The --os-* options of the common auth types (password, v3password, v3applicationcredential,
token, v3token; the default is password) are registered from AUTH_OPTIONS, a copy of what
keystoneauth1.loading registers for them (names, deprecated aliases, dests, $OS_* defaults,
help; tests/test_openstack_fastpath.py fails when keystoneauth's differ), because importing
keystoneauth1.loading costs ~40 ms per run. Another --os-auth-type (or $OS_AUTH_TYPE) is
registered by keystoneauth1.loading itself, as before.

The token is kept between runs: keystoneauth's auth state (token and catalog) and the
plugin's cache id (keystoneauth's hash of auth URL, credentials and scope), in a 0600 file of
the private state directory (state.StateFile: 0700 directory, no symlink followed, owner
checked), reused until shortly before it expires (keystoneauth refuses a token with less than
2 minutes left). The file is found by an index computed without keystoneauth: a hash of the
auth type and every option of that auth plugin (auth URL, user, project, domains, trust,
password, secret or token), the inputs of keystoneauth's cache id, or of that cache id itself
for other auth types and clouds.yaml. A file is used only when its index and, once
keystoneauth is loaded, its cache id are the expected ones. A token Keystone no longer
honours (revoked, keys rotated) gets a 401 from the service; keystoneauth then logs in once
more and repeats the call.

Two ways to make the calls, with the same results, errors and messages:
- the fast path, on a warm run: when the cached token is valid for longer than keystoneauth's
  margin and its catalog has the endpoint, the GETs go out through http.client (keep-alive, a
  TLS context from --os-cacert/--insecure/--os-cert/--os-key as requests would build it) to
  the endpoint keystoneauth would pick from that catalog (service type, interface, region),
  with keystoneauth's microversion headers; keystoneauth1 and requests are not even imported;
- the keystoneauth session, for everything else: a first run, a token near its expiry,
  clouds.yaml, another auth type, --no-token-cache; and as the fallback of the fast path on
  a 401 (the cached token is then dropped: one fresh login, then the call again), a
  redirect, an endpoint missing from the cached catalog, a failed connection or anything
  unexpected (the call is then repeated there, so that the error is keystoneauth's).
A timeout is final on either path: the deadline has passed.

Every request is bounded by the check's deadline (-t): a peer that accepts and never answers
ends as a one-line UNKNOWN naming it, before the watchdog has to step in.

No secret in a message: passwords, application-credential secrets and every token sent are
replaced by *** in whatever a service's error text quotes back (Connection.clean), before
the text is shortened.

Importing this module costs nothing: keystoneauth1 is imported only to register the options
of another auth type, or when the keystoneauth session is needed.
"""
import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time

from . import __version__
from .plugin import CheckError
from .state import StateError, StateFile, file_for

SERVICE_NAMES = {"compute": "Nova", "placement": "Placement", "identity": "Keystone"}
TOKEN_CACHE_VERSION = 2          # 2: found by the index (see the module doc), holds the cache id
INTERFACES = ("public", "internal", "admin", "publicURL", "internalURL", "adminURL")
SECRET_OPTIONS = re.compile(r"password|secret|token|passcode|key$")   # --os-* dests to hide
MIN_TOKEN_LIFE = 120             # s: keystoneauth's BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS
# service types the fast path serves, and the catalog types keystoneauth takes for each (its
# os-service-types matching: official type and aliases; none of these two has an alias)
FAST_SERVICE_TYPES = {"compute": ("compute",), "placement": ("placement",)}


def _interface(text):
    """An endpoint interface keystoneauth knows (a typo would read as a catalog problem)."""
    if text not in INTERFACES:
        raise argparse.ArgumentTypeError(f"not an endpoint interface: {text!r} (public, internal "
                                         f"or admin)")
    return text


# ---------------------------------------------------------------- arguments

def _opt(names, text):
    """One option of a keystoneauth loader: its names without --os- (the first one gives the
    dest; the others are deprecated aliases) and its help."""
    return tuple(names.split()), text


_SCOPE = [_opt("auth-url", "Authentication URL"),
          _opt("system-scope", "Scope for system operations"),
          _opt("domain-id", "Domain ID to scope to"),
          _opt("domain-name", "Domain name to scope to")]
_PROJECT_V3 = [_opt("project-id", "Project ID to scope to"),
               _opt("project-name", "Project name to scope to")]
_PROJECT_GENERIC = [_opt("project-id tenant-id", "Project ID to scope to"),
                    _opt("project-name tenant-name", "Project name to scope to")]
_PROJECT_DOMAIN = [_opt("project-domain-id", "Domain ID containing project"),
                   _opt("project-domain-name", "Domain name containing project"),
                   _opt("trust-id", "ID of the trust to use as a trustee use")]
_DEFAULT_DOMAIN = [
    _opt("default-domain-id", "Optional domain ID to use with v3 and v2 parameters. It will be "
                              "used for both the user and project domain in v3 and ignored in v2 "
                              "authentication."),
    _opt("default-domain-name", "Optional domain name to use with v3 API and v2 parameters. It "
                                "will be used for both the user and project domain in v3 and "
                                "ignored in v2 authentication.")]
_USER_GENERIC = [_opt("user-id", "User id"), _opt("username user-name", "Username"),
                 _opt("user-domain-id", "User's domain id"),
                 _opt("user-domain-name", "User's domain name")]
_USER_V3 = [_opt("user-id", "User's user ID"), _opt("username user-name", "User's username"),
            _opt("user-domain-id", "User's domain ID"),
            _opt("user-domain-name", "User's domain name")]
_PASSWORD = [_opt("password", "User's password")]
_TOKEN = [_opt("token", "Token to authenticate with")]
_APP_CREDENTIAL = [_opt("application_credential_secret", "Application credential auth secret"),
                   _opt("application_credential_id", "Application credential ID"),
                   _opt("application_credential_name", "Application credential name")]

# The options keystoneauth1.loading registers for these auth types (register_auth_argparse_
# arguments): in its order, every default None but for $OS_<NAME> of any of the names.
# tests/test_openstack_fastpath.py compares them with keystoneauth's own.
AUTH_OPTIONS = {
    "password": _SCOPE + _PROJECT_GENERIC + _PROJECT_DOMAIN + _DEFAULT_DOMAIN + _USER_GENERIC
    + _PASSWORD,
    "v3password": _SCOPE + _PROJECT_V3 + _PROJECT_DOMAIN + _USER_V3 + _PASSWORD,
    "v3applicationcredential": _SCOPE + _PROJECT_V3 + _PROJECT_DOMAIN + _USER_V3 + _APP_CREDENTIAL,
    "token": _SCOPE + _PROJECT_GENERIC + _PROJECT_DOMAIN + _DEFAULT_DOMAIN + _TOKEN,
    "v3token": _SCOPE + _PROJECT_V3 + _PROJECT_DOMAIN + _TOKEN,
}
# the options keystoneauth requires to load the plugin (MissingRequiredOptions otherwise)
AUTH_REQUIRED = {"password": ("auth_url",), "v3password": ("auth_url",),
                 "v3applicationcredential": ("auth_url", "application_credential_secret"),
                 "token": ("auth_url",), "v3token": ("auth_url",)}


def _dest(names):
    return names[0].replace("-", "_")


def _env_default(names):
    """keystoneauth's Opt.argparse_default: the first $OS_<NAME> of the names that is set and
    not empty, else None (no option of these auth types has another default)."""
    for name in names:
        value = os.environ.get("OS_" + name.replace("-", "_").upper())
        if value:
            return value
    return None


class _PreParseError(Exception):
    pass


class _PreParser(argparse.ArgumentParser):
    def error(self, message):
        raise _PreParseError(message)


def auth_type_of(argv, default="password"):
    """The auth type the command line and environment ask for, found as keystoneauth's
    register_auth_argparse_arguments finds it; and the --os-auth-type default it registers.
    A command line this cannot read is left to the real parser, which says what is wrong."""
    env_type = os.environ.get("OS_AUTH_TYPE", os.environ.get("OS_AUTH_PLUGIN", default))
    pre = _PreParser(add_help=False)
    pre.add_argument("--os-auth-type", "--os-auth-plugin", metavar="<name>", default=env_type)
    try:
        options, _rest = pre.parse_known_args(argv)
    except _PreParseError:
        return env_type, env_type
    return options.os_auth_type, env_type


def register_auth_options(parser, auth_type, env_type):
    """--os-auth-type and the options of one auth type of AUTH_OPTIONS, exactly as
    keystoneauth1.loading.register_auth_argparse_arguments adds them."""
    parser.add_argument("--os-auth-type", "--os-auth-plugin", metavar="<name>", default=env_type,
                        help="Authentication type to use")
    if not auth_type:
        return
    group = parser.add_argument_group("Authentication Options",
                                      f"Options specific to the {auth_type} plugin.")
    for names, text in AUTH_OPTIONS[auth_type]:
        group.add_argument(*[f"--os-{name}" for name in names], default=_env_default(names),
                           metavar=None, help=text, dest="os_" + _dest(names))


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
    auth_type, env_type = auth_type_of(argv)
    if not auth_type or auth_type in AUTH_OPTIONS:
        register_auth_options(parser, auth_type, env_type)
        parser.set_defaults(os_auth_problem=None)
        return
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


def static_auth(args):
    """The auth type of AUTH_OPTIONS these arguments log in with (not clouds.yaml), or None."""
    auth_type = getattr(args, "os_auth_type", None)
    if getattr(args, "os_cloud", None) or not isinstance(auth_type, str) \
            or auth_type not in AUTH_OPTIONS:
        return None
    return auth_type


def token_index(args):
    """Where the token of these credentials is cached, computed without keystoneauth: a hash
    of the auth type and every option of its plugin (so of every input of keystoneauth's
    cache id). None for clouds.yaml and other auth types (see cache_id_index)."""
    auth_type = static_auth(args)
    if auth_type is None:
        return None
    options = {_dest(names): getattr(args, "os_" + _dest(names), None)
               for names, _text in AUTH_OPTIONS[auth_type]}
    material = json.dumps({"auth_type": auth_type, "options": options}, sort_keys=True,
                          ensure_ascii=True)
    return hashlib.sha256(b"nova-libvirt-checks token index 1\0" + material.encode()).hexdigest()


def cache_id_index(cache_id):
    """The index of a token found by keystoneauth's cache id alone (clouds.yaml, other auth
    types)."""
    return hashlib.sha256(b"nova-libvirt-checks keystoneauth cache id\0"
                          + cache_id.encode("utf-8", "surrogatepass")).hexdigest()


def where(args):
    """Where the check logs in, for messages (never a secret)."""
    if getattr(args, "os_cloud", None):
        return f"cloud {args.os_cloud}"
    return getattr(args, "os_auth_url", None) or os.environ.get("OS_AUTH_URL") or "Keystone"


# ---------------------------------------------------------------- the connection

class _FallBack(Exception):
    """The fast path cannot make this call: the keystoneauth session makes it (after a fresh
    login when `invalidate`: the service refused the cached token)."""

    def __init__(self, reason, invalidate=False):
        super().__init__(reason)
        self.reason = reason
        self.invalidate = invalidate


class Connection:
    """The token cache, the deadline and error mapping around the calls: through the fast path
    while it can, else through a keystoneauth session (see the module doc)."""

    def __init__(self, args, deadline, app_name="nova-libvirt-checks"):
        self.args = args
        self.deadline = deadline
        self.app_name = app_name
        self.notes = []          # shown in the long output (cache trouble and the like)
        self.requests = []       # (method, url, status, seconds) of every HTTP request, for -vv
        self.cache_loaded = False
        self._loaded_state = None
        self._store = None
        self._index = None
        self._document = None
        self._cache_id = None
        self.secrets = set()     # passwords, secrets and every token sent: never in a message
        self.secrets.update(str(value) for key, value in vars(args).items()
                            if key.startswith("os_") and SECRET_OPTIONS.search(key) and value)
        self.auth = None         # keystoneauth's plugin and session, once needed
        self.session = None
        self.exc = None
        self.region = getattr(args, "os_region_name", None)
        self.interface = getattr(args, "os_interface", None) or "public"
        self.auth_url = where(args)      # keystoneauth's plugin says, once there is one
        self.fallback = None     # why the fast path handed over to keystoneauth, if it did
        self._lock = threading.Lock()
        self._fast = _FastPath.from_cache(self)
        if self._fast is None:
            self._use_keystoneauth(load_cached=True)

    @property
    def path(self):
        """How the calls went: "fast", "keystoneauth" or "fallback"."""
        if self._fast is not None:
            return "fast"
        return "fallback" if self.fallback else "keystoneauth"

    def _use_keystoneauth(self, load_cached):
        """Build the keystoneauth session (and, from the cache, its token unless told not to)."""
        args = self.args
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
            auth, verify, cert, self.region, self.interface = self._from_clouds_yaml(args)
        else:
            auth, verify, cert = self._from_options(args)
            self.region = args.os_region_name
            self.interface = args.os_interface or "public"
        from keystoneauth1 import session as ksa_session
        session = ksa_session.Session(auth=auth, verify=verify, cert=cert, app_name=self.app_name)
        self._bound_by_deadline(session)
        self.auth_url = getattr(auth, "auth_url", None) or where(args)
        self.auth = auth
        if not args.no_token_cache:
            self._load_token(load_cached)
        self.session = session          # last: other threads wait for a complete session

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

    def _document_for(self, index):
        """The token cache document stored under `index` ({} if none), read once per run."""
        if self._index != index:
            self._index = index
            self._store = StateFile(file_for("token", index, self.args.state_dir))
            self._document = self._store.load()
            self.notes.extend(note for note in self._store.notes if note not in self.notes)
        return self._document

    def _load_token(self, load_cached=True):
        try:
            cache_id = self.auth.get_cache_id()
        except Exception:
            cache_id = None
        if not cache_id:
            return          # e.g. auth type none or admin_token: nothing worth keeping
        self._cache_id = cache_id
        index = token_index(self.args) or cache_id_index(cache_id)
        document = self._document_for(index)
        state = document.get("auth_state")
        if document.get("version") != TOKEN_CACHE_VERSION or document.get("index") != index \
                or document.get("cache_id") != cache_id or not isinstance(state, str):
            return
        if not load_cached:
            return          # the fast path's token was refused: a fresh login
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
        if self._store is None or self.auth is None or self._cache_id is None:
            return          # the fast path alone: the cached token is unchanged
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return
        if not state or state == self._loaded_state:
            return
        index, cache_id = self._index, self._cache_id

        def change(_current):
            return {"version": TOKEN_CACHE_VERSION, "index": index, "cache_id": cache_id,
                    "auth_state": state}
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
        if self.auth is None:
            return False
        try:
            state = self.auth.get_auth_state()
        except Exception:
            return False
        return bool(state) and state != self._loaded_state

    # -- the fast path handing over

    def _fall_back(self, why):
        """Leave the fast path for the keystoneauth session (once; other threads wait)."""
        with self._lock:
            if self.session is None:
                self._use_keystoneauth(load_cached=not why.invalidate)
            if self._fast is not None:      # only now: until then, other threads go on fast
                self.fallback = why.reason
                self._fast = None

    # -- calls

    def login(self):
        """Make sure there is a token (cached or new) and the catalog; errors as one line."""
        if self._fast is not None:
            return          # a cached token, valid for long enough, with its catalog
        try:
            self.session.get_token()
        except Exception as exc:
            raise self.scrub(self._error(exc, "identity", "login")) from None

    def has_service(self, service_type):
        """Whether the catalog has an endpoint of this type for our region and interface."""
        fast = self._fast
        if fast is not None:
            try:
                if fast.endpoint(service_type):
                    return True
                raise _FallBack(f"no {service_type} endpoint in the cached catalog")
            except _FallBack as why:
                self._fall_back(why)
        try:
            return bool(self.auth.get_endpoint(self.session, service_type=service_type,
                                               interface=self.interface, region_name=self.region))
        except Exception:   # EndpointNotFound, EmptyCatalog
            return False

    def get(self, service_type, path, microversion=None, instead=None):
        """GET `path` of the service, as JSON. `instead` maps HTTP statuses that are an answer
        (e.g. {404: None}) to what to return for them."""
        response = None
        fast = self._fast
        if fast is not None:
            try:
                response = fast.get(service_type, path, microversion)
            except _FallBack as why:
                self._fall_back(why)
        if response is None:
            try:
                response = self.session.get(
                    path, endpoint_filter={"service_type": service_type,
                                           "interface": self.interface,
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

    def _target(self, exc, service_type, path):
        """Who failed, for a message: Keystone (the login) or the service and the request."""
        login = service_type == "identity" or _is_keystone(exc, self.auth_url)
        name = SERVICE_NAMES.get(service_type, service_type)
        return login, (f"Keystone at {self.auth_url}" if login else f"{name} (GET {path})")

    def timed_out(self, exc, service_type, path):
        """The message of a request that did not end within the deadline (both paths)."""
        _login, target = self._target(exc, service_type, path)
        return self.scrub(CheckError(f"{target} did not answer within the timeout of "
                                     f"{self.args.timeout:g} s"))

    def _error(self, exc, service_type, path):
        """One line for anything keystoneauth or requests raised."""
        e = self.exc
        login, target = self._target(exc, service_type, path)
        if isinstance(exc, e.Unauthorized) and login:
            return CheckError(f"login to {self.auth_url} refused (HTTP 401): wrong or expired "
                              f"credentials ({self._who()})")
        if isinstance(exc, e.HttpError) and login:
            return CheckError(f"login to {self.auth_url} failed: HTTP {exc.http_status}"
                              f"{_error_detail(getattr(exc, 'response', None), self.clean)}")
        if isinstance(exc, (e.EndpointNotFound, e.EmptyCatalog)):
            return self.missing_endpoint(service_type)
        if isinstance(exc, e.ConnectTimeout) or "deadline has passed" in str(exc):
            return self.timed_out(exc, service_type, path)
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

    def identity(self):
        """Who logs in (never a secret): from keystoneauth's plugin, or on the fast path from
        the options that plugin would be made of."""
        if self.auth is not None:
            return identity(self.auth)
        return options_identity(self.args)

    def _who(self):
        ident = self.identity()
        if ident.get("application credential"):
            return f"application credential {ident['application credential']}"
        return f"user {ident['user']}" if ident.get("user") else "the given credentials"


# ---------------------------------------------------------------- the fast path

class _Timeout(Exception):
    """A request of the fast path that did not end within the deadline (to make the message as
    keystoneauth's ConnectTimeout would: `url` and the text name the peer)."""

    def __init__(self, url):
        super().__init__(f"Request to {url} timed out")
        self.url = url


class _Headers:
    """The headers of a response, read as requests reads them: any case, repeated ones joined."""

    def __init__(self, message):
        self._message = message

    def get(self, name, default=None):
        values = self._message.get_all(name)
        return ", ".join(values) if values else default


class _Response:
    """What the fast path received: status_code, headers, content and json() as requests'
    Response has them."""

    def __init__(self, status, headers, content, url):
        self.status_code = status
        self.headers = headers
        self.content = content
        self.url = url
        self.encoding = _encoding_from(headers.get("Content-Type"))

    def json(self):
        """requests' Response.json() (2.x): the charset of Content-Type, else UTF-16/32 as
        the first bytes show, else (rare: no Content-Type) requests' own guess."""
        content, encoding = self.content, self.encoding
        if not encoding and content and len(content) > 3:
            guessed = _guess_json_utf(content)
            if guessed is not None:
                try:
                    return json.loads(content.decode(guessed))
                except UnicodeDecodeError:
                    pass
        if not content:
            return json.loads("")
        if encoding is None:
            from requests.models import Response          # its charset detection
            response = Response()
            response._content = content
            response.status_code = self.status_code
            response.encoding = None
            return response.json()
        try:
            text = str(content, encoding, errors="replace")
        except (LookupError, TypeError):
            text = str(content, errors="replace")
        return json.loads(text)


def _encoding_from(content_type):
    """requests.utils.get_encoding_from_headers."""
    if not content_type:
        return None
    tokens = content_type.split(";")
    kind, params = tokens[0].strip(), {}
    for param in tokens[1:]:
        param = param.strip()
        if param and "=" in param:
            key, _, value = param.partition("=")
            params[key.strip("\"' ").lower()] = value.strip("\"' ")
    if "charset" in params:
        return params["charset"].strip("'\"")
    if "text" in kind:
        return "ISO-8859-1"
    if "application/json" in kind:
        return "utf-8"
    return None


def _guess_json_utf(data):
    """requests.utils.guess_json_utf: JSON starts with two ASCII characters."""
    import codecs
    sample, null = data[:4], b"\x00"
    if sample in (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE):
        return "utf-32"
    if sample[:3] == codecs.BOM_UTF8:
        return "utf-8-sig"
    if sample[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    nulls = sample.count(null)
    if nulls == 0:
        return "utf-8"
    if nulls == 2:
        if sample[::2] == null * 2:
            return "utf-16-be"
        if sample[1::2] == null * 2:
            return "utf-16-le"
    if nulls == 3:
        if sample[:3] == null * 3:
            return "utf-32-be"
        if sample[1:] == null * 3:
            return "utf-32-le"
    return None


_ISO_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d+))?"
                       r"(Z|[+-]\d\d:?\d\d)?")


def _expiry(text):
    """A Keystone expires_at as seconds since the epoch, or None: only the plain ISO 8601
    forms Keystone writes (all of which keystoneauth's iso8601 reads; no zone is UTC there)."""
    import calendar
    match = _ISO_TIME.fullmatch(text) if isinstance(text, str) else None
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        if day > calendar.monthrange(year, month)[1]:
            return None
    except (ValueError, OverflowError):
        return None
    zone = match.group(8)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds + float("0." + match.group(7)) if match.group(7) else seconds


def _proxied():
    """Whether requests would send the calls through a proxy ($http_proxy and the like)."""
    return any(value and key.lower() in ("http_proxy", "https_proxy", "all_proxy")
               for key, value in os.environ.items())


def microversion_headers(service_type, microversion):
    """The headers keystoneauth's Session sets for a microversion of compute or placement
    (_set_microversion_headers: the version normalised, Nova's legacy header too); None for a
    version text other than the plain "X.Y" (keystoneauth then)."""
    match = re.fullmatch(r"(\d+)\.(\d+)", str(microversion))
    if not match:
        return None
    version = f"{int(match.group(1))}.{int(match.group(2))}"
    headers = {"OpenStack-API-Version": f"{service_type} {version}"}
    if service_type == "compute":
        headers["X-OpenStack-Nova-API-Version"] = version
    return headers


class _FastPath:
    """The calls of a warm run, with the standard library, on the cached token and catalog."""

    def __init__(self, conn, token, catalog, expires):
        self.conn = conn
        self.token = token
        self.catalog = catalog
        self.expires = expires
        self.user_agent = (f"{conn.app_name} nova-libvirt-checks/{__version__} "
                           f"CPython/{'.'.join(map(str, sys.version_info[:3]))}")
        self._idle = {}              # (scheme, host, port) -> [connection]: kept alive
        self._idle_lock = threading.Lock()
        self._tls = None
        self._endpoints = {}

    @classmethod
    def from_cache(cls, conn):
        """The fast path if it can serve this run, else None (the keystoneauth session then)."""
        args = conn.args
        auth_type = static_auth(args)
        if args.no_token_cache or auth_type is None or getattr(args, "os_auth_problem", None):
            return None
        if any(not getattr(args, "os_" + dest, None) for dest in AUTH_REQUIRED[auth_type]):
            return None         # keystoneauth says what is missing
        if _proxied():
            return None         # requests would use the proxy: keystoneauth does it
        document = conn._document_for(token_index(args))
        state = document.get("auth_state")
        if document.get("version") != TOKEN_CACHE_VERSION or document.get("index") != conn._index \
                or not isinstance(document.get("cache_id"), str) or not isinstance(state, str):
            return None
        try:
            parsed = json.loads(state)
            token = parsed["auth_token"]
            body = parsed["body"]["token"]
            expires = _expiry(body["expires_at"])
            catalog = body.get("catalog")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None         # keystoneauth reads it, or says it cannot
        if not isinstance(token, str) or not token or expires is None \
                or expires - time.time() < MIN_TOKEN_LIFE or not isinstance(catalog, list):
            return None         # keystoneauth logs in (a token near its end, no catalog)
        conn.secrets.add(token)
        conn._loaded_state = state
        conn.cache_loaded = True
        return cls(conn, token, catalog, expires)

    # -- the endpoint keystoneauth would take

    def endpoint(self, service_type):
        """The URL of the first endpoint of this type in the cached catalog with our interface
        and region, as keystoneauth's ServiceCatalogV3.endpoint_data_for picks it (no version
        discovery: get_endpoint asks for none); None if there is none. _FallBack for a type
        the fast path does not serve or a catalog it cannot read as keystoneauth would."""
        if service_type not in self._endpoints:
            self._endpoints[service_type] = self._find(service_type)
        return self._endpoints[service_type]

    def _find(self, service_type):
        types = FAST_SERVICE_TYPES.get(service_type)
        if types is None:
            raise _FallBack(f"service type {service_type} not served by the fast path")
        interface = self.conn.interface
        interface = interface.rstrip("URL") if interface else "public"
        region = self.conn.region
        unusual = _FallBack("a cached catalog keystoneauth would read differently")
        for service in self.catalog:
            if not isinstance(service, dict):
                raise unusual
            if "type" not in service:
                continue
            kind = service["type"]
            if not isinstance(kind, str):
                raise unusual
            if kind not in types:
                continue
            endpoints = service.get("endpoints", [])
            if not isinstance(endpoints, list):
                raise unusual
            for endpoint in endpoints:
                if not isinstance(endpoint, dict) or "url" not in endpoint \
                        or not isinstance(endpoint.get("interface"), str):
                    raise unusual
                if endpoint["interface"] != interface:
                    continue
                if region and region != (endpoint.get("region_id") or endpoint.get("region")):
                    continue
                url = endpoint["url"]
                if not url:
                    continue
                if not isinstance(url, str):
                    raise unusual
                return url
        return None

    # -- one GET

    def get(self, service_type, path, microversion):
        conn = self.conn
        base = self.endpoint(service_type)
        if not base:
            raise _FallBack(f"no {service_type} endpoint in the cached catalog")
        url = "{}/{}".format(base.rstrip("/"), path.lstrip("/"))
        headers = {"Accept": "application/json", "User-Agent": self.user_agent,
                   "X-Auth-Token": self.token}
        if microversion:
            extra = microversion_headers(service_type, microversion)
            if extra is None:
                raise _FallBack(f"microversion {microversion!r}")
            headers.update(extra)
        try:
            response = self._send(url, headers)
        except _Timeout as exc:
            raise conn.timed_out(exc, service_type, path) from None
        name = SERVICE_NAMES.get(service_type, service_type)
        if response.status_code == 401:
            raise _FallBack(f"{name} refused the cached token (HTTP 401)", invalidate=True)
        if 300 <= response.status_code < 400:
            raise _FallBack(f"{name} redirected GET {path} (HTTP {response.status_code})")
        return response

    def _send(self, url, headers):
        import http.client
        from urllib.parse import urlsplit
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _FallBack("an endpoint URL keystoneauth would read differently") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username \
                or parts.password is not None:
            raise _FallBack("an endpoint URL keystoneauth would read differently")
        key = (parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        log = self.conn.requests
        for attempt in (1, 2):
            remaining = self.conn.deadline - time.monotonic()
            if remaining <= 0.05:
                raise _Timeout(url)
            connection = self._connection(key, remaining)
            started = time.monotonic()
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(remaining)
                connection.request("GET", target, headers=headers)
                raw = connection.getresponse()
                content = raw.read()
            except (TimeoutError, socket.timeout):    # the same since Python 3.10
                log.append(("GET", url, "Timeout", time.monotonic() - started))
                connection.close()
                raise _Timeout(url) from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                log.append(("GET", url, type(exc).__name__, time.monotonic() - started))
                connection.close()
                # a kept-alive connection the server had already closed: once more on a new
                # one, as the keystoneauth session does
                if attempt == 1:
                    continue
                raise _FallBack(f"GET {url}: {type(exc).__name__}") from None
            except Exception as exc:        # refused, DNS, TLS, a garbled answer: keystoneauth
                log.append(("GET", url, type(exc).__name__, time.monotonic() - started))
                connection.close()
                if isinstance(exc, OSError) and "timed out" in str(exc):
                    raise _Timeout(url) from None
                raise _FallBack(f"GET {url}: {type(exc).__name__}") from None
            log.append(("GET", url, raw.status, time.monotonic() - started))
            encoding = (raw.headers.get("Content-Encoding") or "identity").strip().lower()
            if raw.will_close:
                connection.close()
            else:
                with self._idle_lock:
                    self._idle.setdefault(key, []).append(connection)
            if encoding != "identity":
                raise _FallBack(f"GET {url}: Content-Encoding {encoding}")
            return _Response(raw.status, _Headers(raw.headers), content, url)
        raise AssertionError("unreachable")

    def _connection(self, key, timeout):
        import http.client
        with self._idle_lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        scheme, host, port = key
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=timeout)
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_context())

    def _tls_context(self):
        """The TLS context requests would build from keystoneauth's verify and cert: the
        --os-cacert file or directory, else $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE, else certifi's
        bundle (not the system's); none of it with --insecure; the --os-cert/--os-key pair."""
        with self._idle_lock:
            if self._tls is not None:
                return self._tls
        import ssl
        args = self.conn.args
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if args.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                verify = args.os_cacert or os.environ.get("REQUESTS_CA_BUNDLE") \
                    or os.environ.get("CURL_CA_BUNDLE")
                if not verify:
                    import certifi
                    verify = certifi.where()
                if os.path.isdir(verify):
                    context.load_verify_locations(capath=verify)
                else:
                    context.load_verify_locations(cafile=verify)
            if args.os_cert:
                context.load_cert_chain(args.os_cert, args.os_key if args.os_key else None)
        except Exception as exc:     # a missing file and the like: keystoneauth says what
            raise _FallBack(f"TLS settings: {type(exc).__name__}") from None
        with self._idle_lock:
            self._tls = context
        return context


def options_identity(args):
    """identity() of the keystoneauth plugin these options would make (for AUTH_OPTIONS)."""
    found = {}
    for key, dests in (("application credential", ("application_credential_id",
                                                    "application_credential_name")),
                       ("user", ("username", "user_id")),
                       ("project", ("project_name", "project_id"))):
        for dest in dests:
            value = getattr(args, "os_" + dest, None)
            if isinstance(value, str) and value:
                found[key] = value
                break
    return found


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
    return bool(re.match(whole, url) or re.search(whole, text))


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


PATHS = {"fast": "calls by the standard library on the cached token and catalog "
                 "(fast path, keystoneauth not loaded)",
         "keystoneauth": "calls through a keystoneauth session",
         "fallback": "calls through a keystoneauth session after the fast path ({reason})"}


def describe(conn):
    """Connection details for the long output at -v (no secrets)."""
    parts = [f"auth {conn.auth_url}"]
    parts += [f"{key} {value}" for key, value in conn.identity().items()]
    parts.append(f"region {conn.region or 'any'}, {conn.interface} endpoints")
    parts.append({"cached": "token reused from the cache", "new": "new token"}.get(
        conn.token_source, "token"))
    return ", ".join(parts) + "; " + PATHS[conn.path].format(reason=conn.fallback)

