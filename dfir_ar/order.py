"""What flows from intake (alert -> matcher -> rails) to the executor: an Order whose arguments are
already parsed. Built by dfir_ar.pipeline from alerts, and by `dfir-ar run` from an operator."""

from __future__ import annotations

import msgspec

from dfir_ar.alert import Alert
from dfir_ar.config.models import Location
from dfir_ar.responder import Target


class Order(msgspec.Struct, frozen=True, gc=False):
    id: str
    """Sortable unique id (dfir_ar.ids.new_id)."""
    command: str
    """Name of the configured [[command]]."""
    target: Target
    timeout: float | None = None
    """First-offence seconds before the undo; None: no undo (or a collector)."""
    repeated_offenders: tuple[float, ...] = ()
    """Minutes for the 2nd, 3rd, ... offence."""
    extra_args: tuple[str, ...] = ()
    alert: Alert | None = None
    operator: str | None = None
    """Who triggered a manual order (`dfir-ar run`); None for alert-driven orders."""
    binding: int | None = None
    """1-based index of the [[active_response]] that fired."""
    location: Location = Location.LOCAL
    agent_ids: tuple[str, ...] = ()
