"""Nova, through python-novaclient on the run's keystoneauth Session.

- hypervisors at microversion 2.53 (the newest with the legacy usage fields, and the id is the
  compute node uuid, which is its Placement resource provider's uuid), following pages; 2.1
  when this Nova is older (406);
- flavors with their extra specs (2.61; 2.1 fallback);
- host aggregates, and the compute services (2.53) for each host's availability zone: the
  zone listing (/os-availability-zone/detail) names enabled services only, so a disabled host
  would vanish from its zone there.

Answers are checked, not trusted (docs/faults-nova.md): a number is a JSON number, finite,
0..2**53 (not NaN, not true, not "12"); a hypervisor whose usage data is not usable is named
with the reason and left out of the totals as a whole; a malformed list is UNKNOWN; paging
never repeats a marker.
"""
from __future__ import annotations

import urllib.parse
from typing import Optional

from .capacity import CLASSES, Amount, Host, shown
from .plugin import CheckError

NOVA_MICROVERSION = "2.53"         # the newest with the legacy usage fields and uuid ids
FLAVOR_MICROVERSION = "2.61"       # flavors with their extra specs (resources:CLASS=N)
SERVICES_MICROVERSION = "2.53"     # compute services with their zone, by uuid
LEGACY = {"vcpus": ("vcpus_used", "vcpus"), "memory": ("memory_mb_used", "memory_mb"),
          "disk": ("local_gb_used", "local_gb")}


def text(value: object) -> Optional[str]:
    """A non-blank JSON string, else None (Nova's fields as we may show and compare them)."""
    return value if isinstance(value, str) and value.strip() else None


def count(value: object) -> Optional[float]:
    """A count or size as we may add it up: a JSON number (not a boolean), finite and between
    0 and 2**53 (exact in a float), else None. NaN, Infinity, "12", true, -3 are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if 0 <= value <= 2**53 else None       # NaN fails both comparisons


def host_of(record: dict) -> Host:
    """A Host from one hypervisor record of Nova's list."""
    service = record.get("service") if isinstance(record.get("service"), dict) else {}
    host = text(service.get("host"))
    name = text(record.get("hypervisor_hostname")) or host or str(record.get("id"))
    found = Host(id=str(record.get("id")), name=name, host=host or name,
                 state=text(record.get("state")) or "unknown",
                 status=text(record.get("status")) or "unknown",
                 disabled_reason=text(service.get("disabled_reason")))
    found.record = record
    return found


def read_legacy(hosts: list[Host]) -> list[Host]:
    """Nova's legacy usage fields into each host's amounts; returns the hosts without usable
    ones (all six are needed: a host half counted is wrong)."""
    unreported = []
    for host in hosts:
        record = host.record
        for resource, (used_key, total_key) in LEGACY.items():
            for key in (total_key, used_key):
                if count(record.get(key)) is None:
                    host.unusable = f"{key} " + (shown(record[key]) if key in record
                                                 else "missing")
                    break
            if host.unusable:
                break
            unit = CLASSES[resource][1]
            host.amounts[resource] = Amount(record[used_key] * unit, record[total_key] * unit)
        if host.unusable:
            host.amounts = {}
            unreported.append(host)
    return unreported


class Nova:
    """The Nova calls of a run (novaclient Clients by microversion, on one Session)."""

    def __init__(self, conn):
        self.conn = conn
        self._clients: dict = {}

    def client(self, microversion: str):
        if microversion not in self._clients:
            from novaclient import client
            settings = self.conn.service_settings("compute")
            self._clients[microversion] = client.Client(
                microversion, session=self.conn.session, endpoint_type=settings["interface"],
                region_name=settings["region_name"],
                endpoint_override=settings["endpoint_override"])
        return self._clients[microversion]

    def _call(self, what: str, function):
        return self.conn.call("compute", what, function)

    @staticmethod
    def _refused_version(exc: Exception) -> bool:
        return getattr(exc, "code", None) == 406 or getattr(exc, "http_status", None) == 406

    def hypervisors(self, wanted: str = "auto") -> tuple[list[Host], str]:
        """All hypervisors (every page), at 2.53 or, on a Nova older than that, 2.1."""
        versions = [NOVA_MICROVERSION, "2.1"] if wanted == "auto" else [wanted]
        for version in versions:
            hosts = self._hypervisors(version, last=version == versions[-1])
            if hosts is not None:
                return hosts, version
        raise AssertionError("unreachable")

    def _hypervisors(self, version: str, last: bool) -> Optional[list[Host]]:
        """The list at this microversion; None when this Nova does not have it (406)."""
        # novaclient's HypervisorManager.list returns the records of one page without
        # Nova's "next" link; the list is read with the same Client's HTTP client (its
        # microversion headers, the Session's one re-login on a 401), which hands over
        # the whole answer
        http = self.client(version).client
        path = "/os-hypervisors/detail"
        records: list = []
        markers: set = set()
        while True:
            response, body = self.conn.call("compute", f"GET {path}",
                                            lambda page=path: http.get(page, raise_exc=False))
            if response.status_code == 406 and not last:
                return None
            if response.status_code >= 300:
                raise self.conn.response_error("compute", f"GET {path}", response)
            if body is None:
                kind = response.headers.get("Content-Type", "no content type")
                raise CheckError(f"Nova answered GET {path.split('?')[0]} with malformed JSON "
                                 f"(HTTP {response.status_code}, {kind[:60]})")
            page = body.get("hypervisors") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise CheckError(f"Nova answered GET {path.split('?')[0]} without a "
                                 f"'hypervisors' list")
            odd = sum(1 for record in page if not isinstance(record, dict))
            if odd:
                raise CheckError(f"Nova answered GET {path.split('?')[0]} with {odd} hypervisor "
                                 f"record{'s that are' if odd > 1 else ' that is'} not "
                                 f"{'objects' if odd > 1 else 'an object'}")
            records.extend(page)
            links = body.get("hypervisors_links")
            if not page or not isinstance(links, list) or not any(
                    isinstance(link, dict) and link.get("rel") == "next" for link in links):
                break
            # a next page: after the last id of this one, never twice (a Nova, or a proxy,
            # that repeats a page would otherwise be followed until the deadline)
            marker = page[-1].get("id")
            if not isinstance(marker, (str, int)) or isinstance(marker, bool):
                raise CheckError(f"Nova's hypervisor list has a next page, but its last record "
                                 f"has no id to ask for it ({shown(marker)})")
            if str(marker) in markers:
                raise CheckError(f"Nova's hypervisor list does not end: the page after marker "
                                 f"{marker} repeats it")
            markers.add(str(marker))
            path = f"/os-hypervisors/detail?marker={urllib.parse.quote(str(marker), safe='')}"
        return sorted((host_of(r) for r in records), key=lambda h: (h.name, h.id))

    def _records(self, what: str, function) -> list[dict]:
        """The records of a novaclient list call, as Nova's dicts."""
        return [item.to_dict() for item in self._call(what, function)]

    def flavors(self, names: list[str]) -> dict[str, dict]:
        """The flavors asked for, by name or id, with their extra specs."""
        path = "GET /flavors/detail?is_public=None"
        try:
            flavors = self._records(path, lambda: self.client(FLAVOR_MICROVERSION).flavors.list(
                detailed=True, is_public=None))
        except CheckError:
            raise
        except Exception as exc:    # a 406 from a Nova older than 2.61: without extra specs
            if not self._refused_version(exc):
                raise self.conn.error(exc, "compute", path) from None
            flavors = self._records(path, lambda: self.client("2.1").flavors.list(
                detailed=True, is_public=None))
        found = {}
        for wanted in names:
            match = [f for f in flavors if f.get("name") == wanted] or \
                [f for f in flavors if f.get("id") == wanted]
            if not match:
                known = ", ".join(sorted(str(f.get("name")) for f in flavors)[:15]) or "none"
                raise CheckError(f"no flavor named {wanted!r} in Nova (known: {known})")
            found[wanted] = match[0]
        return found

    def aggregate_hosts(self, names: list[str]) -> set[str]:
        """The hosts of the named host aggregates."""
        aggregates = self._records("GET /os-aggregates",
                                   lambda: self.client("2.1").aggregates.list())
        hosts: set = set()
        for name in names:
            match = [a for a in aggregates if a.get("name") == name]
            if not match:
                known = ", ".join(sorted(str(a.get("name")) for a in aggregates)[:15]) or "none"
                raise CheckError(f"no host aggregate named {name!r} (known: {known})")
            for aggregate in match:
                members = aggregate.get("hosts") or []
                if not isinstance(members, list):
                    raise CheckError(f"Nova's host aggregate {name!r} has unusable hosts: "
                                     f"{shown(members)}")
                hosts.update(host for host in members if isinstance(host, str))
        return hosts

    def zones(self) -> dict[str, str]:
        """{host: availability zone} of every nova-compute service, enabled or not."""
        services = self._records("GET /os-services", lambda: self.client(
            SERVICES_MICROVERSION).services.list(binary="nova-compute"))
        return {s["host"]: s["zone"] for s in services
                if text(s.get("host")) and text(s.get("zone"))}

    def zone_hosts(self, names: list[str]) -> set[str]:
        """The hosts of the named availability zones."""
        zones = self.zones()
        hosts: set = set()
        for name in names:
            members = {host for host, zone in zones.items() if zone == name}
            if not members:
                known = ", ".join(sorted(set(zones.values()))[:15]) or "none"
                raise CheckError(f"no availability zone named {name!r} (known: {known})")
            hosts |= members
        return hosts
