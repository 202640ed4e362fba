from __future__ import annotations

from dfir_ar.ids import id_time, is_id, new_id


def test_sortable_and_unique() -> None:
    ids = [new_id(1_700_000_000.0 + i) for i in range(100)]
    assert ids == sorted(ids)
    assert len({new_id() for _ in range(1000)}) == 1000
    assert all(is_id(i) for i in ids)
    assert abs(id_time(ids[5]) - 1_700_000_005.0) < 0.002
