"""firewall-drop's claims (which command holds which address): pure logic, no kernel."""

from __future__ import annotations

from dfir_ar.validate import parse_ip
from responders.firewall_drop import Claims

ADDR = parse_ip("203.0.113.5")


def test_a_failed_write_puts_back_the_claim_it_replaced() -> None:
    claims = Claims()
    claims.claim("firewall-drop", ADDR, 100.0)
    # A second add of the same address (a re-add at reconcile) whose kernel write fails: the
    # block from the first is still in the kernel, so its claim must stay.
    previous = claims.claim("firewall-drop", ADDR, 500.0)
    claims.unclaim("firewall-drop", ADDR, previous)
    assert claims.effective(ADDR, now=50.0) == (True, 100.0)


def test_a_failed_first_claim_leaves_nothing() -> None:
    claims = Claims()
    previous = claims.claim("firewall-drop", ADDR, None)
    claims.unclaim("firewall-drop", ADDR, previous)
    assert claims.effective(ADDR, now=0.0)[0] is False
    claims.claim("firewall-drop-long", ADDR, None)  # another command's claim is untouched
    previous = claims.claim("firewall-drop", ADDR, 10.0)
    claims.unclaim("firewall-drop", ADDR, previous)
    assert claims.effective(ADDR, now=0.0) == (True, None)
