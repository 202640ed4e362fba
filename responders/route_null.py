"""route-null: send every reply to the attacker's address into a blackhole route.

OSSEC's route-null runs ``route add IP reject`` / ``ip route add blackhole IP``. This one tags its
routes with a routing-protocol number of its own (``proto 250`` by default), so ``active()``
lists only dfir-ar's blackholes, ``delete`` removes exactly that route and never an admin's, and
an existing non-blackhole route to the address is refused rather than overwritten. Routes have no
kernel expiry: the ledger's timeout scheduler runs the undo, and reconcile re-adds what a reboot
or an admin removed.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from dfir_ar import procs
from dfir_ar.errors import ExecutionError, PluginUnavailable, Refused
from dfir_ar.responder import (
    Arg,
    LiveEntry,
    ReconcileReport,
    Request,
    Responder,
    State,
    Target,
)
from dfir_ar.validate import IPAddress

IP_DEADLINE = 15.0


class RouteNullOptions(BaseModel):
    """The ``[responders.route-null]`` table."""

    model_config = ConfigDict(extra="forbid")
    protocol: int = Field(
        default=250, ge=5, le=254,
        description="route protocol number that marks dfir-ar's blackhole routes "
        "(`ip route show proto 250`); 0-4 belong to the kernel",
    )


class RouteNull(Responder):
    """Blackhole the route to the source address (IPv4 and IPv6), tagged as dfir-ar's."""

    name: ClassVar[str] = "route-null"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.SRCIP,)
    supports_timeout: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = RouteNullOptions

    @classmethod
    def check_compatible(cls) -> None:
        if shutil.which("ip") is None:
            raise PluginUnavailable("the ip tool is not installed", hint="apt-get install iproute2")

    @property
    def _proto(self) -> str:
        opts = self.options
        assert isinstance(opts, RouteNullOptions)
        return str(opts.protocol)

    @staticmethod
    def _ip(addr: IPAddress) -> list[str]:
        return ["ip", "-6"] if addr.version == 6 else ["ip", "-4"]

    def _routes(self, family: int, *extra: str) -> list[dict[str, Any]]:
        argv = ["ip", f"-{family}", "-j", "route", "show", *extra]
        done = procs.run(argv, timeout=IP_DEADLINE, check=True)
        text = done.stdout.decode("utf-8", "replace").strip()
        if not text:
            return []
        data = json.loads(text)
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def _ours(self, family: int) -> list[IPAddress]:
        out: list[IPAddress] = []
        for route in self._routes(family, "type", "blackhole", "proto", self._proto):
            dst = str(route.get("dst", ""))
            try:
                net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/{32 if family == 4 else 128}")
            except ValueError:
                continue
            if net.prefixlen == net.max_prefixlen:
                out.append(net.network_address)
        return out

    # -- the responder contract --------------------------------------------------------------

    def key(self, request: Request) -> str:
        return str(self.srcip(request))

    def add(self, request: Request) -> State:
        addr = self.srcip(request)
        if self.is_protected(addr):
            raise Refused(
                f"route-null: {addr} is protected (white list, own address, loopback or gateway); "
                "no blackhole route"
            )
        plen = str(addr.max_prefixlen)
        done = procs.run(
            [*self._ip(addr), "route", "add", "blackhole", f"{addr}/{plen}", "proto", self._proto],
            timeout=IP_DEADLINE,
        )
        if done.returncode != 0:
            if addr in self._ours(addr.version):
                return {"addr": str(addr), "proto": self._proto}  # already ours: idempotent
            err = done.stderr.decode("utf-8", "replace").strip()
            if "File exists" in err:
                raise Refused(
                    f"route-null: a route to {addr}/{plen} exists that dfir-ar did not add; "
                    "left untouched (remove it or use firewall-drop)"
                )
            raise ExecutionError(f"route-null: ip route add blackhole {addr}: {err}")
        self.context.log.info("route-null: blackholed %s", addr)
        return {"addr": str(addr), "proto": self._proto}

    def delete(self, request: Request, state: State) -> None:
        addr = self.srcip(request)
        proto = str(state.get("proto", self._proto))
        plen = str(addr.max_prefixlen)
        done = procs.run(
            [*self._ip(addr), "route", "del", "blackhole", f"{addr}/{plen}", "proto", proto],
            timeout=IP_DEADLINE,
        )
        if done.returncode != 0 and addr in self._ours(addr.version):
            err = done.stderr.decode("utf-8", "replace").strip()
            raise ExecutionError(f"route-null: ip route del blackhole {addr}: {err}")
        self.context.log.info("route-null: removed blackhole for %s", addr)

    def active(self) -> set[str]:
        return {str(a) for fam in (4, 6) for a in self._ours(fam)}

    def reconcile(self, live: Sequence[LiveEntry]) -> ReconcileReport:
        """Re-add the live routes that are missing, and remove dfir-ar's blackholes the ledger
        does not know (orphans from a crash between the route and the ledger write)."""
        notes: list[str] = []
        wanted: dict[str, LiveEntry] = {}
        for entry in live:
            if entry.request.target.srcip is None:
                continue
            if entry.remaining is not None and entry.remaining <= 0:
                continue
            wanted[str(entry.request.target.srcip)] = entry
        present = self.active()
        readded = 0
        for key, entry in wanted.items():
            if key in present:
                continue
            try:
                self.add(entry.request)
                readded += 1
            except (Refused, ExecutionError) as exc:
                notes.append(str(exc))
        orphans = 0
        for key in present - set(wanted):
            addr = ipaddress.ip_address(key)
            self.delete(Request(command=self.name, target=Target(srcip=addr)), {"proto": self._proto})
            orphans += 1
        return ReconcileReport(readded=readded, removed_orphans=orphans, notes=tuple(notes))
