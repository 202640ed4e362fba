"""YARA-X next to libyara: the same findings as the yara CLI and as each other (text, nocase,
wide, hex with jumps, regex, xor; read and mapped files), how the engine is chosen and why it
falls back, config errors naming file and line, and a worker process that dies mid-scan."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from collectors.yara_file import READ_MAX
from collectors.yara_scan import YaraScan, YaraSettings
from collectors.yarax_engine import decode_reply
from dfir_ar.collector import CollectJob, CollectorContext, Status
from dfir_ar.config import load_config
from dfir_ar.errors import ConfigError, InvalidArgument
from dfir_ar.evidence.bundle import BundleWriter
from dfir_ar.responder import Target
from tests.collectors.yara_helpers import no_worker_left, worker_processes  # noqa: F401
from tests.evidence.helpers import read_members, seal

MiB = 1024 * 1024
PLAIN = b"ym-eng-plain-5d2e"
NOCASE = b"YmEngNoCaseMarker"
WIDE = "ym-eng-wide-marker".encode("utf-16-le")
HEX = bytes.fromhex("4d5a9000") + b"\x07\x00" + b"\x11\x22\x33" + b"\xff\xfe"
REGEX = b'eval(base64_decode("QUJDREVGR0hJSktM"))'
XOR_PLAIN = b"ym-eng-xor-secret"
XOR = bytes(b ^ 0x5A for b in XOR_PLAIN)
RULES = r"""
rule eng_plain : plain {
    meta:
        author = "dfir-ar tests"
        weight = 7
        strict = true
    strings:
        $a = "ym-eng-plain-5d2e"
    condition:
        $a
}
rule eng_nocase { strings: $n = "ymengnocasemarker" nocase condition: $n }
rule eng_wide { strings: $w = "ym-eng-wide-marker" wide ascii condition: $w }
rule eng_hex { strings: $h = { 4D 5A 90 00 ?? 00 [2-4] FF FE } condition: $h }
rule eng_regex {
    strings:
        $r = /eval\(base64_decode\("[A-Za-z0-9+\/=]{8,}"\)\)/
    condition:
        $r
}
rule eng_xor { strings: $x = "ym-eng-xor-secret" xor(1-255) condition: $x }
rule eng_two : pair {
    strings:
        $a = "ym-eng-plain-5d2e"
        $b = "ymengnocasemarker" nocase
        $p = "ym-eng-wide-marker" wide private
    condition:
        $a and $b and #p >= 0
}
"""
CASES = (PLAIN, NOCASE.swapcase(), NOCASE.lower(), WIDE, HEX, REGEX, XOR)


def write_tree(root: Path) -> None:
    """Files read (small) and mapped (over READ_MAX) by the engines, each with several of the
    patterns at random offsets (some at the very start and end)."""
    rnd = random.Random(11)
    sizes = [0, 40, 3000, 70_000, READ_MAX, READ_MAX + 1, 2 * MiB + 3]
    for i in range(60):
        size = sizes[i % len(sizes)]
        data = bytearray(rnd.randbytes(size))
        for k in range(rnd.randint(0, 4)):
            plant = rnd.choice(CASES)
            if len(plant) > size:
                continue
            at = 0 if k == 0 and i % 5 == 0 else rnd.randrange(0, size - len(plant) + 1)
            data[at : at + len(plant)] = plant
        (root / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 4}" / f"f{i:03d}.bin").write_bytes(data)


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "engines.yar"
    path.write_text(RULES)
    return path


def collect(tmp_path: Path, rules: Path, tree: Path, writer: BundleWriter, *args: str,
            **settings: Any) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    scan = YaraScan(CollectorContext(state_dir=tmp_path / "state",
                                     settings={"rules": [str(rules)], **settings}))
    job = CollectJob(
        target=Target(),
        options=YaraScan.parse_options(["--path", str(tree), "--memory", "none", *args]),
        deadline=time.monotonic() + 120, max_bytes=1 << 30,
    )
    outcome = scan.collect(job, writer)
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    members = read_members(result.path)
    lines = [members[f"artifacts/yara/{n}.jsonl"].splitlines() for n in ("matches", "problems")]
    return outcome, *([json.loads(x) for x in part] for part in lines)  # type: ignore[return-value]


def cli_findings(rules: Path, tree: Path) -> set[tuple[str, str, str, int]]:
    """(rule, file, string identifier, offset) from ``yara -s -r`` (one thread: lines in order)."""
    out = subprocess.run(["yara", "-s", "-r", "-p", "1", str(rules), str(tree)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    found = set()
    rule = path = ""
    for line in out.splitlines():
        if line.startswith("0x"):
            offset, ident, _ = line.split(":", 2)
            found.add((rule, path, ident, int(offset, 16)))
        else:
            rule, path = line.split(" ", 1)
    return found


def our_findings(matches: list[dict[str, Any]]) -> set[tuple[str, str, str, int]]:
    return {
        (m["rule"], m["target"]["path"], s["identifier"], i["offset"])
        for m in matches for s in m["strings"] for i in s["instances"]
    }


@pytest.mark.skipif(shutil.which("yara") is None, reason="the yara CLI is not installed")
def test_both_engines_find_what_the_cli_finds_and_write_the_same_lines(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
) -> None:
    tree = tmp_path / "tree"
    write_tree(tree)
    runs = {}
    for engine in ("yara-x", "libyara"):
        outcome, matches, problems = collect(
            tmp_path, rules_file, tree, bundle_writer("yara"), engine=engine,
            max_instances=1000, max_data_bytes=100,
        )
        assert outcome.status is Status.OK, outcome.reason
        assert outcome.details["engine"] == engine and problems == []
        runs[engine] = (outcome.details, matches)
    theirs = cli_findings(rules_file, tree)
    # Every kind of string was planted and found, in read and in mapped files.
    assert {r for r, *_ in theirs} == {"eng_plain", "eng_nocase", "eng_wide", "eng_hex",
                                       "eng_regex", "eng_xor", "eng_two"}
    big = {p for _, p, _, _ in theirs if Path(p).stat().st_size > READ_MAX}
    assert len(big) >= 5
    # A private string ($p of eng_two) is left out by the CLI and by both engines.
    assert not any(ident == "$p" for _, _, ident, _ in theirs)
    x_details, x_matches = runs["yara-x"]
    l_details, l_matches = runs["libyara"]
    assert our_findings(x_matches) == our_findings(l_matches) == theirs
    # Whole lines equal: namespace, tags, meta, lengths, matched bytes, xor keys, sizes, hashes.
    assert sorted(map(json.dumps, x_matches)) == sorted(map(json.dumps, l_matches))
    xor = next(m for m in x_matches if m["rule"] == "eng_xor")
    inst = xor["strings"][0]["instances"][0]
    assert inst["xor_key"] == 0x5A and bytes.fromhex(inst["data_hex"]) == XOR
    plain = next(m for m in x_matches if m["rule"] == "eng_plain")
    assert plain["meta"] == {"author": "dfir-ar tests", "weight": 7, "strict": True}
    assert plain["tags"] == ["plain"] and plain["namespace"] == str(rules_file)
    keys = ("files_scanned", "bytes_scanned", "files_matched", "matches", "unreadable")
    assert {k: x_details[k] for k in keys} == {k: l_details[k] for k in keys}
    assert x_details["files_scanned"] == 60


REFUSED = 'rule lax_regex {\n  strings:\n    $a = /ab\\Rc/\n  condition:\n    $a\n}\n'
"""libyara reads \\R as a literal R; YARA-X refuses the escape (line 3)."""


def test_auto_falls_back_to_libyara_saying_why_and_yarax_by_name_is_a_config_error(
    tmp_path: Path, bundle_writer: Callable[..., BundleWriter], caplog: pytest.LogCaptureFixture,
) -> None:
    rules = tmp_path / "lax.yar"
    rules.write_text(REFUSED)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hit").write_bytes(b"..abRc..")
    with caplog.at_level("WARNING", logger="dfir_ar.collector.yara"):
        outcome, matches, _ = collect(tmp_path, rules, tree, bundle_writer("yara"))
    assert outcome.status is Status.OK and outcome.details["engine"] == "libyara"
    note = outcome.details["engine_note"]
    assert f"yara-x refuses {rules}(3): invalid regular expression" in note
    assert note in caplog.text
    assert [m["rule"] for m in matches] == ["lax_regex"]
    # Asked for by name: a config error naming the key, the file and the line.
    with pytest.raises(ValidationError, match=rf"engine\n.*yara-x refuses {rules}\(3\)"):
        YaraSettings.model_validate({"rules": [str(rules)], "engine": "yara-x"})
    cfg = tmp_path / "dfir-ar.toml"
    cfg.write_text(f'[global]\nstate_dir = "{tmp_path}/state"\n\n'
                   f'[collectors.yara]\nrules = ["{rules}"]\nengine = "yara-x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert f"[collectors.yara], engine: yara-x refuses {rules}(3)" in str(err.value)
    # ... and as --engine at collection time.
    scan = YaraScan(CollectorContext(state_dir=tmp_path / "s2", settings={"rules": [str(rules)]}))
    with pytest.raises(InvalidArgument, match=r"--engine yara-x: yara-x refuses"):
        scan.file_engine("yara-x")
    with pytest.raises(InvalidArgument, match="is not one of"):
        scan.file_engine("yara")


def test_engine_option_and_setting_choose_the_file_engine(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hit").write_bytes(b"x" + PLAIN)
    for setting, option, used in (("auto", "", "yara-x"), ("auto", "libyara", "libyara"),
                                  ("libyara", "", "libyara"), ("libyara", "yara-x", "yara-x"),
                                  ("yara-x", "auto", "yara-x")):
        args = ["--engine", option] if option else []
        outcome, matches, _ = collect(tmp_path, rules_file, tree, bundle_writer("yara"),
                                      *args, engine=setting)
        assert outcome.details["engine"] == used, (setting, option)
        assert [m["rule"] for m in matches] == ["eng_plain"]


@pytest.mark.parametrize("engine", ["yara-x", "libyara"])
def test_undecodable_file_names_reach_the_worker_and_the_output_intact(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter], engine: str,
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    name = os.fsencode(tree) + b"/bad-\xff\xfe.bin"
    with open(name, "wb") as f:
        f.write(b"x" * 10 + PLAIN)
    outcome, matches, _ = collect(tmp_path, rules_file, tree, bundle_writer("yara"), engine=engine)
    assert outcome.details["engine"] == engine
    (m,) = matches
    assert bytes.fromhex(m["target"]["path_hex"]) == name
    assert m["strings"][0]["instances"][0]["offset"] == 10


def test_yarax_rules_cached_on_disk_and_a_corrupt_cache_recompiled(
    tmp_path: Path, rules_file: Path,
) -> None:
    from collectors import yarax_engine

    ctx = CollectorContext(state_dir=tmp_path / "state", settings={"rules": [str(rules_file)]})
    blob = YaraScan(ctx)._settings.yarax_rules()
    assert blob is not None
    (cached,) = (tmp_path / "state" / "yara-cache").glob("*.yrx")
    assert cached.read_bytes() == blob
    yarax_engine._compiled.clear()  # a fresh process: loads it
    assert YaraScan(ctx)._settings.yarax_rules() == blob
    cached.write_bytes(b"garbage")
    yarax_engine._compiled.clear()
    assert YaraScan(ctx)._settings.yarax_rules() == blob and cached.read_bytes() == blob


def test_rules_with_include_stay_on_libyara(tmp_path: Path, rules_file: Path) -> None:
    main = tmp_path / "main.yar"
    main.write_text(f'include "{rules_file.name}"\n')
    s = YaraSettings.model_validate({"rules": [str(main)]})
    assert s.yarax_rules() is None and "include" in s.yarax_note


def test_a_worker_that_dies_mid_scan_is_partial_naming_it_and_its_files(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
) -> None:
    tree = tmp_path / "tree"
    for i in range(300):
        (tree / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 5}" / f"f{i}").write_bytes(random.Random(i).randbytes(200_000))
    scan = YaraScan(CollectorContext(state_dir=tmp_path / "state",
                                     settings={"rules": [str(rules_file)], "engine": "yara-x"}))
    job = CollectJob(
        target=Target(), options=YaraScan.parse_options(["--path", str(tree), "--memory", "none"]),
        deadline=time.monotonic() + 120, max_bytes=1 << 30,
    )
    killed: list[int] = []

    def crash_one(message: str, fraction: float | None) -> None:
        # On the first progress report (the walk has just begun): a worker "crashes".
        if killed:
            return
        give_up = time.monotonic() + 10
        while not (workers := worker_processes()) and time.monotonic() < give_up:
            time.sleep(0.005)
        os.kill(workers[0].pid, signal.SIGSEGV)
        killed.append(workers[0].pid)

    job.progress = crash_one
    writer = bundle_writer("yara")
    started = time.monotonic()
    outcome = scan.collect(job, writer)
    assert time.monotonic() - started < 30  # never a hang
    result, report = seal(writer, outcome)
    assert report.ok, report.problems
    assert outcome.status is Status.PARTIAL
    assert f"yara-x worker {killed[0]}" in outcome.reason and "SIGSEGV" in outcome.reason
    assert outcome.details["files_scanned"] < 300
    problems = [json.loads(x) for x in read_members(result.path)["artifacts/yara/problems.jsonl"]
                .splitlines()]
    # The files it held are named as not scanned (the one that crashed it would be among them).
    lost = [p for p in problems if f"yara-x worker {killed[0]}" in p["error"]]
    assert lost and all(p["type"] == "file" for p in lost)
    assert outcome.details["unreadable"] == len(lost)
    # A new worker took over: every other file was still scanned.
    assert outcome.details["files_scanned"] + len(lost) == 300


def test_replies_are_checked_before_use() -> None:
    ok = {"clean": 2, "clean_bytes": 10, "results": [
        [{"type": "file", "path": "/x"}, [], 0, "Permission denied", "unreadable"]]}
    done = decode_reply(json.dumps(ok).encode())
    assert done.clean_files == 2 and done.results[0].error == "Permission denied"
    for bad in (b"not json", b"[]", b'{"fatal": "cannot start: ImportError()"}',
                json.dumps({**ok, "clean": "2"}).encode(),
                json.dumps({**ok, "results": [[{"type": "process", "pid": 1}, [], 0, "", ""]]}).encode(),
                json.dumps({**ok, "results": [[{"type": "file", "path": "/x"}, [], 0, ""]]}).encode(),
                json.dumps({**ok, "results": [[{"type": "file", "path": "/x"}, [], 0, "",
                                               "vanished"]]}).encode(),
                json.dumps({**ok, "clean": -1}).encode()):
        with pytest.raises(ValueError):
            decode_reply(bad)


def test_a_reply_frame_longer_than_the_limit_is_refused_before_it_is_read() -> None:
    """A worker parsed hostile files: the parent never allocates what a frame header claims."""
    from collectors.yarax_worker import MAX_FRAME, read_frame, write_frame

    r, w = os.pipe()
    try:
        write_frame(w, b'{"clean":0}')
        assert read_frame(r) == b'{"clean":0}'
        os.write(w, (MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(ValueError, match="at most"):
            read_frame(r)
    finally:
        os.close(r)
        os.close(w)


def test_batches_and_replies_bigger_than_a_pipe_do_not_stall_the_worker(
    tmp_path: Path, rules_file: Path, bundle_writer: Callable[..., BundleWriter],
) -> None:
    # Long paths make each batch frame ~200 KB and many matches make each reply ~200 KB: with
    # a blocking write on each side, the feeder (sending the next batch) and the worker
    # (replying to the previous one) would wait on each other for ever, deadline and all.
    tree = tmp_path / "tree"
    deep = tree.joinpath(*(f"{i:02d}" + "d" * 198 for i in range(14)))
    deep.mkdir(parents=True)
    for i in range(256):
        (deep / f"{i:03d}{'f' * 60}").write_bytes((b"." + PLAIN) * 20)
    done: list[tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]] = []
    runner = threading.Thread(
        target=lambda: done.append(collect(tmp_path, rules_file, tree, bundle_writer("yara"),
                                           engine="yara-x")),
        daemon=True,
    )
    runner.start()
    runner.join(90)
    assert done, "the collection stalled"
    outcome, matches, problems = done[0]
    assert outcome.status is Status.OK and outcome.details["engine"] == "yara-x"
    assert len({m["target"]["path"] for m in matches}) == 256 and problems == []
