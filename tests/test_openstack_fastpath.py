"""What openstack.py copies from keystoneauth1 (and requests) for the warm fast path, compared
with the libraries themselves, so that a new keystoneauth (or requests, or os-service-types)
that behaves otherwise fails here instead of making the two paths differ:

- the --os-* options of the common auth types (AUTH_OPTIONS): names, deprecated aliases,
  dests, defaults from $OS_*, help, group, the --os-auth-type option;
- the token index: built from every option of the plugin, so from every input of
  keystoneauth's cache id;
- the endpoint keystoneauth takes from a catalog (service type, interface, region);
- the microversion headers, the token margin, the expiry parsing;
- requests' JSON decoding of an answer; who logs in (for messages).

In-process and without any cloud. The end-to-end tests of the fast path (a warm run takes it,
a refused token means one fresh login, its answers and errors equal keystoneauth's) are in
tests/test_nova_hypervisors.py.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nova_libvirt_checks import hypervisors, openstack, plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
loading = pytest.importorskip("keystoneauth1.loading")


@pytest.fixture
def clean_env(monkeypatch):
    """No OS_* variable of the test's environment may leak into the parsers."""
    for key in list(os.environ):
        if key.startswith("OS_"):
            monkeypatch.delenv(key)
    return monkeypatch


def describe_actions(parser):
    """Everything argparse keeps of each option, and the group it is shown in."""
    groups = {id(action): (group.title, group.description)
              for group in parser._action_groups for action in group._group_actions}
    return [(tuple(a.option_strings), a.dest, a.default, a.help, a.metavar, a.nargs, a.const,
             getattr(a.type, "__qualname__", a.type), a.required, a.choices, type(a).__name__,
             groups.get(id(a)))
            for a in parser._actions]


def ksa_parser(auth_type):
    parser = plugin.ArgumentParser("p", "d")
    loading.register_auth_argparse_arguments(parser, ["--os-auth-type", auth_type],
                                             default="password")
    return parser


def static_parser(auth_type):
    parser = plugin.ArgumentParser("p", "d")
    chosen, env_type = openstack.auth_type_of(["--os-auth-type", auth_type])
    assert chosen == auth_type
    openstack.register_auth_options(parser, chosen, env_type)
    return parser


def every_envvar(auth_type):
    return [f"OS_{name.replace('-', '_').upper()}"
            for names, _text in openstack.AUTH_OPTIONS[auth_type] for name in names]


@pytest.mark.parametrize("auth_type", sorted(openstack.AUTH_OPTIONS))
def test_static_options_are_keystoneauths(clean_env, auth_type):
    """The table registers what keystoneauth1.loading registers for the type: the same
    options in the same order and group, with the same names, dests, help and defaults,
    whichever of the $OS_* variables (canonical or deprecated) are set."""
    envvars = every_envvar(auth_type)
    scenarios = [{}, {v: f"value-of-{v}" for v in envvars},
                 {v: f"value-of-{v}" for v in envvars if v in ("OS_TENANT_NAME", "OS_USER_NAME",
                                                                 "OS_TENANT_ID")},
                 dict({v: "" for v in envvars}, OS_TENANT_NAME="t", OS_USER_NAME="u"),
                 {"OS_AUTH_TYPE": auth_type, "OS_AUTH_URL": "http://k/v3"},
                 {"OS_AUTH_PLUGIN": "v3token"}]
    for scenario in scenarios:
        for key in list(os.environ):
            if key.startswith("OS_"):
                clean_env.delenv(key)
        for key, value in scenario.items():
            clean_env.setenv(key, value)
        assert describe_actions(static_parser(auth_type)) == describe_actions(ksa_parser(auth_type)), \
            scenario


@pytest.mark.parametrize("auth_type", sorted(openstack.AUTH_OPTIONS))
def test_required_and_secret_options_are_keystoneauths(auth_type):
    opts = loading.get_plugin_loader(auth_type).get_options()
    assert [opt.dest for opt in opts] == [openstack._dest(n) for n, _t in openstack.AUTH_OPTIONS[auth_type]]
    assert tuple(opt.dest for opt in opts if opt.required) == openstack.AUTH_REQUIRED[auth_type]
    for opt in opts:
        assert all(o.default is None for o in [opt] + list(opt.deprecated)), opt.dest
        if opt.secret:                              # scrubbed from every message
            assert openstack.SECRET_OPTIONS.search("os_" + opt.dest), opt.dest


@pytest.mark.parametrize("argv, env", [
    ([], {}),
    (["--os-auth-type", "v3applicationcredential"], {}),
    ([], {"OS_AUTH_TYPE": "v3password", "OS_USERNAME": "u", "OS_TENANT_NAME": "t"}),
    (["--os-auth-plugin=token", "-w", "vcpus=80%"], {"OS_AUTH_TYPE": "v3password"}),
    (["--os-auth-ty", "v3token"], {}),                        # an abbreviation, as argparse takes it
    ([], {"OS_AUTH_TYPE": ""}),                               # no auth type at all
    (["--os-auth-type"], {}),                                 # left to the real parser to refuse
    (["-h"], {}),
])
def test_check_parser_is_the_same_as_with_keystoneauths_registration(clean_env, argv, env, capsys):
    """The whole check's parser (help text included) and what it makes of a command line are
    the same with the table as with keystoneauth's registration (the table switched off)."""
    for key, value in env.items():
        clean_env.setenv(key, value)
    fast = hypervisors.build_parser(argv)
    clean_env.setattr(openstack, "AUTH_OPTIONS", {})
    try:
        slow = hypervisors.build_parser(argv)
    except SystemExit:
        # keystoneauth's own pre-parser exits (usage on stderr, exit 2, no plugin output);
        # the check now refuses it as any bad argument: UNKNOWN, one line, naming the option
        with pytest.raises(plugin.UsageError, match="--os-auth-type"):
            fast.parse_args(argv)
        return
    assert describe_actions(fast) == describe_actions(slow)
    assert fast.format_help() == slow.format_help()
    if "-h" in argv:
        return

    def parsed(parser):
        try:
            return vars(parser.parse_args(argv))
        except plugin.UsageError as exc:
            return str(exc)
    assert repr(parsed(fast)) == repr(parsed(slow))


def test_default_parser_does_not_import_keystoneauth():
    """Building the parser for the default and the common auth types imports no keystoneauth1
    (nor requests); another auth type does (keystoneauth registers its options)."""
    code = ("import sys; sys.path.insert(0, 'lib'); from nova_libvirt_checks import hypervisors; "
            "[hypervisors.build_parser(a) for a in ([], ['--os-auth-type', 'v3applicationcredential'],"
            " ['--os-auth-type', 'v3token'])]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keystoneauth1', 'requests'})); "
            "p = hypervisors.build_parser(['--os-auth-type', 'v2password']); "
            "print('keystoneauth1.loading' in sys.modules, '--os-tenant-name' in p.format_help())")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "True True"], out.stdout


# ---------------------------------------------------------------- the token index

def namespace(auth_type, **values):
    args = argparse.Namespace(os_auth_type=auth_type, os_cloud=None)
    for names, _text in openstack.AUTH_OPTIONS[auth_type]:
        setattr(args, "os_" + openstack._dest(names), values.get(openstack._dest(names)))
    return args


def full_namespace(auth_type):
    return namespace(auth_type, **{openstack._dest(n): f"v-{openstack._dest(n)}"
                                   for n, _t in openstack.AUTH_OPTIONS[auth_type]})


@pytest.mark.parametrize("auth_type", sorted(openstack.AUTH_OPTIONS))
def test_token_index_covers_every_input_of_the_cache_id(auth_type):
    """Every value keystoneauth hashes into the plugin's cache id is an option of the table,
    and any option changed changes the index: one index never serves two cache ids (the
    file holds the cache id too, and keystoneauth's side checks it)."""
    args = full_namespace(auth_type)
    auth = loading.load_auth_from_argparse_arguments(args)
    elements = {v for v in auth.get_cache_id_elements().values() if v is not None}
    options = {getattr(args, "os_" + openstack._dest(n)) for n, _t in openstack.AUTH_OPTIONS[auth_type]}
    assert elements <= options, elements - options
    index = openstack.token_index(args)
    for names, _text in openstack.AUTH_OPTIONS[auth_type]:
        changed = full_namespace(auth_type)
        setattr(changed, "os_" + openstack._dest(names), "other")
        assert openstack.token_index(changed) != index, names
        other_auth = loading.load_auth_from_argparse_arguments(changed)
        if other_auth.get_cache_id() != auth.get_cache_id():
            assert openstack.token_index(changed) != index
    assert openstack.token_index(full_namespace(auth_type)) == index      # stable
    others = {openstack.token_index(full_namespace(t)) for t in openstack.AUTH_OPTIONS}
    assert len(others) == len(openstack.AUTH_OPTIONS)                     # the type counts too


def test_no_token_index_for_clouds_yaml_or_other_auth_types():
    args = full_namespace("password")
    args.os_cloud = "prod"
    assert openstack.token_index(args) is None
    assert openstack.token_index(argparse.Namespace(os_auth_type="v2password", os_cloud=None)) is None
    assert openstack.cache_id_index("abc") != openstack.cache_id_index("abd")


# ---------------------------------------------------------------- the endpoint

REGIONS = [None, "RegionOne", "RegionTwo", ""]
TYPES = ["compute"] * 4 + ["placement"] * 4 + ["identity", "Compute", "compute_legacy", "volumev3",
                                                "block-storage", "placement ", None]


@st.composite
def catalogs(draw):
    services = []
    for _ in range(draw(st.integers(0, 5))):
        service = {}
        kind = draw(st.sampled_from(TYPES))
        if kind is not None:
            service["type"] = kind
        if draw(st.booleans()):
            service["name"] = draw(st.sampled_from(["nova", "placement", "x"]))
        endpoints = []
        for _ in range(draw(st.integers(0, 4))):
            endpoint = {"interface": draw(st.sampled_from(["public", "internal", "admin"])),
                        "url": draw(st.sampled_from(["http://a/v2.1", "http://b:8774/v2.1/",
                                                     "https://c", "", "http://d/x"]))}
            region = draw(st.sampled_from(REGIONS))
            if region is not None:
                endpoint[draw(st.sampled_from(["region_id", "region"]))] = region
            if draw(st.booleans()):
                endpoint["region"] = draw(st.sampled_from(REGIONS[1:]))
            endpoint["id"] = f"e{len(endpoints)}"
            endpoints.append(endpoint)
        if endpoints or draw(st.booleans()):
            service["endpoints"] = endpoints
        services.append(service)
    return services


def ksa_endpoint(catalog, service_type, interface, region):
    """The URL keystoneauth's session would use: the plugin's get_endpoint, as
    Session.request calls it with our endpoint_filter, on a restored auth state."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3
    auth = v3.Password(auth_url="http://127.0.0.1:9/v3", username="u", password="p",
                       project_name="p", user_domain_id="default", project_domain_id="default")
    body = {"token": {"expires_at": "2999-01-01T00:00:00.000000Z", "catalog": catalog,
                      "methods": ["password"], "project": {"id": "pid", "name": "p"},
                      "user": {"id": "uid", "name": "u"}, "issued_at": "2000-01-01T00:00:00Z"}}
    auth.set_auth_state(json.dumps({"auth_token": "t" * 20, "body": body}))
    try:
        return auth.get_endpoint(session.Session(auth=auth), service_type=service_type,
                                 interface=interface, region_name=region)
    except Exception as exc:  # noqa: BLE001 - EndpointNotFound, EmptyCatalog
        return type(exc).__name__


def fast_endpoint(catalog, service_type, interface, region):
    conn = argparse.Namespace(interface=interface, region=region, app_name="t")
    fast = openstack._FastPath(conn, "t" * 20, catalog, time.time() + 3600)
    try:
        return fast.endpoint(service_type)
    except openstack._FallBack:
        return openstack._FallBack


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(catalog=catalogs(), service_type=st.sampled_from(["compute", "placement"]),
       interface=st.sampled_from(["public", "internal", "admin", "publicURL", "internalURL"]),
       region=st.sampled_from([None, "RegionOne", "RegionTwo"]))
def test_endpoint_is_the_one_keystoneauth_takes(catalog, service_type, interface, region):
    """Property (hypothesis, derandomized): for any catalog, the fast path takes the URL
    keystoneauth takes; where keystoneauth finds none, the fast path finds none (and hands
    over, as for a catalog it would not read the same way)."""
    expected = ksa_endpoint(catalog, service_type, interface, region)
    got = fast_endpoint(catalog, service_type, interface, region)
    if got is openstack._FallBack:
        return
    if got is None:
        assert expected in ("EndpointNotFound", "EmptyCatalog"), expected
    else:
        assert got == expected


def test_well_formed_catalogs_are_served_by_the_fast_path():
    catalog = [{"type": "identity", "endpoints": [{"interface": "public", "url": "http://k/v3",
                                                   "region_id": "R", "region": "R"}]},
               {"type": "compute", "endpoints": [
                   {"interface": "internal", "url": "http://n-int/v2.1", "region_id": "R"},
                   {"interface": "public", "url": "http://n-two/v2.1", "region_id": "R2"},
                   {"interface": "public", "url": "http://n/v2.1", "region_id": "R"}]},
               {"type": "placement", "endpoints": []}]
    for interface in ("public", "internal", "publicURL"):
        for region in (None, "R", "R2", "R3"):
            for kind in ("compute", "placement"):
                got = fast_endpoint(catalog, kind, interface, region)
                assert got is not openstack._FallBack
                expected = ksa_endpoint(catalog, kind, interface, region)
                assert got == expected or (got is None and expected == "EndpointNotFound")


def test_service_types_match_as_keystoneauth_matches_them():
    """keystoneauth matches a requested type with catalog types by os-service-types (official
    type and aliases); FAST_SERVICE_TYPES holds those for the types the fast path serves."""
    from keystoneauth1 import discover
    types = discover._SERVICE_TYPES
    known = set(types._service_types_data["reverse"])
    for official, all_types in types.all_types_by_service_type.items():
        known |= {official, *all_types}
    known |= {t.replace("-", "_") for t in known}
    for requested, matching in openstack.FAST_SERVICE_TYPES.items():
        assert {t for t in known if types.is_match(requested, t)} == set(matching)


@pytest.mark.parametrize("service_type, microversion", [
    ("compute", "2.53"), ("compute", "2.1"), ("compute", "2.61"), ("placement", "1.0"),
    ("placement", "1.39"), ("compute", "2.053")])
def test_microversion_headers_are_keystoneauths(service_type, microversion):
    from keystoneauth1 import session
    headers = {}
    session.Session._set_microversion_headers(headers, microversion, service_type, None)
    assert openstack.microversion_headers(service_type, microversion) == headers


def test_token_margin_and_expiry_are_keystoneauths():
    from keystoneauth1 import _utils
    from keystoneauth1.identity.base import BaseIdentityPlugin
    assert openstack.MIN_TOKEN_LIFE == BaseIdentityPlugin.MIN_TOKEN_LIFE_SECONDS
    texts = ["2026-11-26T08:15:33.000000Z", "2026-11-26T08:15:33Z", "2026-11-26T08:15:33",
             "2026-11-26T08:15:33.5+02:00", "2026-11-26T08:15:33-0130", "2026-02-30T00:00:00Z",
             "2026-11-26T24:00:00Z", "2026-11-26T08:15:60Z", "2026-13-01T00:00:00Z",
             "not a date", "", "2026-11-26", "2026-11-26T08:15Z", "2026-11-26 08:15:33Z",
             "2026-11-26T08:15:33.123456789Z", "9999-12-31T23:59:59Z"]
    for text in texts:
        ours = openstack._expiry(text)
        try:
            theirs = _utils.parse_isotime(text).timestamp()
        except ValueError:
            theirs = None
        if ours is not None:                   # never a token keystoneauth would not read
            assert theirs is not None and abs(ours - theirs) < 1e-5, (text, ours, theirs)
    assert openstack._expiry("2026-11-26T08:15:33.000000Z") is not None
    assert openstack._expiry(None) is None and openstack._expiry(5) is None


# ---------------------------------------------------------------- answers and identity

BODIES = [b"", b"{}", b'{"a": 1}', b'{"a": NaN}', b"[1, 2]", b"null", b"<html>x</html>",
          b"\xff\xfe\x00garbage", '{"a": "\u00e9"}'.encode("utf-8"),
          '{"a": "\u00e9"}'.encode("latin-1"), '{"a": 1}'.encode("utf-16"),
          '{"a": 1}'.encode("utf-16-le"), '{"a": 1}'.encode("utf-32-be"),
          b"\xef\xbb\xbf{\"a\": 1}", b"[" * 3000 + b"]" * 3000, b"12", b"1" * 10]
CONTENT_TYPES = [None, "application/json", "application/json; charset=UTF-8",
                 "application/json;charset=latin-1", "text/html", "text/plain; charset=utf-8",
                 "application/octet-stream", "application/json; charset=bogus",
                 "application/json; charset", "APPLICATION/JSON", "text/json"]


def outcome(call):
    try:
        return "value", call()
    except RecursionError:
        return "RecursionError", None
    except ValueError:
        return "ValueError", None


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_json_decoding_is_requests(content_type):
    """What the fast path makes of an answer's body is what requests' Response.json() makes
    of it: the same value, or the same kind of failure (malformed JSON, nesting too deep)."""
    import email.message
    import requests
    for body in BODIES:
        message = email.message.Message()
        if content_type is not None:
            message["Content-Type"] = content_type
        ours = openstack._Response(200, openstack._Headers(message), body, "http://x/")
        theirs = requests.models.Response()
        theirs._content, theirs.status_code = body, 200
        if content_type is not None:
            theirs.headers["Content-Type"] = content_type
        theirs.encoding = requests.utils.get_encoding_from_headers(theirs.headers)
        assert repr(outcome(ours.json)) == repr(outcome(theirs.json)), (content_type, body[:20])


@pytest.mark.parametrize("auth_type, values", [
    ("password", {"auth_url": "http://k/v3", "username": "u", "password": "p", "project_name": "pn"}),
    ("password", {"auth_url": "http://k/v3", "user_id": "uid", "password": "p", "project_id": "pid"}),
    ("password", {"auth_url": "http://k/v3", "username": "u", "user_id": "uid", "password": "p",
                  "project_name": "pn", "project_id": "pid"}),
    ("v3password", {"auth_url": "http://k/v3", "username": "u", "password": "p", "project_id": "pid",
                    "user_domain_id": "default"}),
    ("v3applicationcredential", {"auth_url": "http://k/v3", "application_credential_id": "ac",
                                 "application_credential_secret": "s"}),
    ("v3applicationcredential", {"auth_url": "http://k/v3", "application_credential_name": "acn",
                                 "application_credential_secret": "s", "username": "u",
                                 "user_domain_name": "d"}),
    ("token", {"auth_url": "http://k/v3", "token": "tok", "project_name": "pn"}),
    ("v3token", {"auth_url": "http://k/v3", "token": "tok", "project_id": "pid"}),
])
def test_who_logs_in_is_told_as_from_keystoneauths_plugin(auth_type, values):
    args = namespace(auth_type, **values)
    auth = loading.load_auth_from_argparse_arguments(args)
    assert openstack.options_identity(args) == openstack.identity(auth)
