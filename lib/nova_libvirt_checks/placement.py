"""Placement, through a keystoneauth Adapter (service type placement, microversion header).

Each hypervisor's resource provider: its inventories and usages, read concurrently (the one
Session has its token by then, so no thread logs in on its own). At Nova 2.53 the hypervisor
id is the compute node uuid, which is its provider's uuid; at 2.1 (or when that provider is
not found) providers are matched by name.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Callable

from .capacity import Host, Inventory, shown
from .nova import count, text
from .plugin import CheckError

MICROVERSION = "1.0"        # inventories and usages are all we need
POOL_SIZE = 8
NOT_THERE = object()        # a 404: no such provider


def run_all(tasks: list[Callable]) -> list:
    """Run the callables, concurrently when there are several; results in order."""
    if len(tasks) <= 2:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(POOL_SIZE, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [future.result() for future in futures]


def _uuid_like(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}", value))


def inventory_of(inv: object, use: object) -> tuple[dict, str]:
    """({resource class: Inventory}, "") from one provider's answers; or ({}, why they cannot
    be used, in a few words): nothing of them is used then, a host half counted is wrong."""
    inventories = inv.get("inventories") if isinstance(inv, dict) else None
    if not isinstance(inventories, dict):
        return {}, "inventories not an object"
    usages = use.get("usages") if isinstance(use, dict) else None
    if not isinstance(usages, dict):
        return {}, "usages not an object"
    for rc, used in usages.items():
        if count(used) is None:
            return {}, f"{rc} usage {shown(used)}"
    found = {}
    for rc, record in inventories.items():
        if not isinstance(record, dict):
            return {}, f"{rc} inventory not an object"
        if count(record.get("total")) is None:
            return {}, f"{rc} total {shown(record.get('total'))}"
        for key in ("reserved", "min_unit", "max_unit", "step_size"):
            if record.get(key) is not None and count(record[key]) is None:
                return {}, f"{rc} {key} {shown(record[key])}"
        ratio = record.get("allocation_ratio")
        if ratio is not None and not count(ratio):            # 0 is no ratio either
            return {}, f"{rc} allocation_ratio {shown(ratio)}"
        found[rc] = Inventory(total=record["total"], used=usages.get(rc, 0),
                              reserved=record.get("reserved") or 0,
                              allocation_ratio=1.0 if ratio is None else ratio,
                              min_unit=record.get("min_unit"), max_unit=record.get("max_unit"),
                              step_size=record.get("step_size"))
    return found, ""


class Placement:
    """The Placement calls of a run."""

    def __init__(self, conn):
        self.conn = conn
        self.adapter = conn.adapter("placement", MICROVERSION)

    def get(self, path: str, missing=None):
        """GET `path` as JSON; `missing` for a 404 when given."""
        what = f"GET {path}"
        response = self.conn.call("placement", what, lambda: self.adapter.get(
            path, raise_exc=False, headers={"Accept": "application/json"}))
        if missing is not None and response.status_code == 404:
            return missing
        if response.status_code >= 300:
            raise self.conn.response_error("placement", what, response)
        try:
            return response.json()
        except (ValueError, RecursionError):     # RecursionError: JSON nested too deep
            kind = response.headers.get("Content-Type", "no content type")
            raise CheckError(f"Placement answered {what} with malformed JSON (HTTP "
                             f"{response.status_code}, {kind[:60]})") from None

    def providers(self) -> dict:
        """{name: uuid} of the resource providers (a name listed twice: None, ambiguous)."""
        body = self.get("/resource_providers")
        listed = body.get("resource_providers") if isinstance(body, dict) else None
        if not isinstance(listed, list):
            raise CheckError("Placement answered GET /resource_providers without a "
                             "'resource_providers' list")
        by_name: dict = {}
        for p in listed:
            if isinstance(p, dict) and text(p.get("name")) and text(p.get("uuid")):
                by_name[p["name"]] = None if p["name"] in by_name else p["uuid"]
        return by_name

    def read(self, hosts: list[Host], microversion: str) -> list[Host]:
        """Each host's inventories and usages; returns the hosts whose data cannot be used
        (host.unusable says why), by name."""
        by_name = None
        if microversion == "2.1" or not all(_uuid_like(h.id) for h in hosts):
            by_name = self.providers()

        def fetch(host, uuid):
            def task():
                if uuid is None:
                    return host, NOT_THERE, NOT_THERE
                base = f"/resource_providers/{urllib.parse.quote(uuid, safe='')}"
                inv = self.get(f"{base}/inventories", missing=NOT_THERE)
                if inv is NOT_THERE:
                    return host, NOT_THERE, NOT_THERE
                return host, inv, self.get(f"{base}/usages", missing=NOT_THERE)
            return task

        results = run_all([fetch(h, by_name.get(h.name) if by_name is not None else h.id)
                           for h in hosts])
        missing = [h for h, inv, _ in results if inv is NOT_THERE]
        if missing and by_name is None:
            # uuids did not match (an unusual deployment): look those up by name
            names = self.providers()
            retry = run_all([fetch(h, names.get(h.name)) for h in missing])
            results = [r for r in results if r[1] is not NOT_THERE] + retry
        unreported = []
        for host, inv, use in results:
            if inv is NOT_THERE or use is NOT_THERE:
                host.unusable = "no resource provider"
            else:
                inventory, why = inventory_of(inv, use)
                host.unusable = why or None
                if not why:
                    host.set_inventory(inventory)
            if host.unusable:
                unreported.append(host)
        return sorted(unreported, key=lambda h: (h.name, h.id))
