"""KeyedLocks: one key's holder never blocks another key, and no slot outlives its users."""

from __future__ import annotations

import threading
import time

from dfir_ar.keyed_locks import KeyedLocks


def test_a_held_key_does_not_block_any_other_key() -> None:
    locks: KeyedLocks[tuple[str, str]] = KeyedLocks()
    # 1,000 distinct keys: with striped locks some would share a stripe with the held one.
    with locks.hold(("slow", "203.0.113.1")):
        start = time.monotonic()
        for i in range(1000):
            with locks.hold(("firewall-drop", f"198.18.{i // 256}.{i % 256}")):
                pass
        assert time.monotonic() - start < 1.0
    assert len(locks) == 0


def test_the_same_key_is_held_by_one_thread_at_a_time() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(200):
            with locks.hold("k"):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 1 and len(locks) == 0


def test_hold_all_in_any_order_never_deadlocks_and_blocks_each_key() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    done: list[int] = []

    def work(keys: list[str], n: int) -> None:
        for _ in range(300):
            with locks.hold_all(keys):
                pass
        done.append(n)

    a = threading.Thread(target=work, args=(["a", "b", "c"], 1))
    b = threading.Thread(target=work, args=(["c", "b", "a", "a"], 2))
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert sorted(done) == [1, 2] and len(locks) == 0

    with locks.hold_all(["x", "y"]):
        got = threading.Event()

        def want_y() -> None:
            with locks.hold("y"):
                got.set()

        t = threading.Thread(target=want_y)
        t.start()
        assert not got.wait(0.2)  # y is held by the batch
    assert got.wait(5)
    t.join(5)
    assert len(locks) == 0


def test_an_exception_in_the_block_releases_the_key() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    try:
        with locks.hold("k"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with locks.hold("k"):
        assert len(locks) == 1
    assert len(locks) == 0
