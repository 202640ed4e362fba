"""Write the hostile alert corpus: examples/alerts/hostile.jsonl and hostile-ossec.log.

Every record is something an attacker can get into an alert (a log line they wrote, a forged
POST): shell metacharacters, address shorthand and zone ids, usernames that read as options or
paths, Unicode look-alikes, wrong JSON types, nesting bombs, oversized lines, bytes that are not
UTF-8. The intake tests run each record through the parser and the pipeline against a config that
binds rule 5712 to a srcip response and a user response, and assert that nothing produces an
order and that every record is refused with a reason.

Regenerate with: .venv/bin/python examples/alerts/make_hostile.py
"""

# The look-alike characters and wildcard addresses are the point of this corpus.
# ruff: noqa: RUF001, S104

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GROUPS = ["syslog", "sshd", "authentication_failures"]

HOSTILE_IPS: list[Any] = [
    "1.2.3.4; id", "$(id)", "`reboot`", "127.1", "fe80::1%eth0", "198.51.100.6 ", " 198.51.100.6",
    "198.51.100.6\n", "198.51.100.6\x00", "198.51.100.6;rm -rf /", "198.51.100.6|nc -e sh",
    "198.51.100.6&&id", "198.51.100.6 -j ACCEPT", "-j ACCEPT", "--flush", "-F", "0x7f.1",
    "0177.0.0.1", "017.0.0.1", "198.051.100.6", "198.51.100.256", "198.51.100", "198.51.100.6.7",
    "2130706433", "::ffff:127.0.0.1", "::1", "127.0.0.1", "127.255.255.254", "localhost",
    "[2001:db8::1]", "2001:db8::1/64", "198.51.100.0/24", "0.0.0.0/0", "0.0.0.0", "::",
    "255.255.255.255", "224.0.0.1", "ff02::1", "2001:db8::g", "2001:db8:::1", "::ffff:1.2.3",
    "１９８.５１.１００.６", "198。51。100。6", "١٩٨.٥١.١٠٠.٦", "198.51.100.6\u200b",
    "\u202e6.001.15.891", "198.51.100.6'", '198.51.100.6"', "198.51.100.6\\", "${IFS}id",
    "198.51.100.6\r\nALL: ALL", "ALL", "ALL: ALL", "*", "%", "", " ", "A" * 5000,
    "198.51.100." + "6" * 300, "../../etc/passwd", "/etc/hosts.deny", "..", "~root",
    12345, 3.5, True, ["198.51.100.6"], {"ip": "198.51.100.6"},
]

HOSTILE_USERS: list[Any] = [
    "root; id", "$(id)", "`id`", "-rf", "--help", "-", "..", "../../etc/shadow", "a/../b",
    "user..name", "a..b", "/root", "root\x00", "root\n", "ro ot", "root;", "root|id", "root&",
    "r$(x)", "user'", 'user"', "user\\", "user*", "user?", "[root]", "{root}", "~root",
    "rооt", "аdmin", "ｒｏｏｔ", "root\u200b", "\u202etoor", "x" * 65, "x" * 5000, "", " ",
    "1root", "$", "root$$", ".hidden", "@", "user name", "tab\tuser", "ünïcode", "用户",
    123, 1.5, False, ["root"], {"name": "root"},
]


def wazuh(rule_id: Any = "5712", level: Any = 10, **data: Any) -> dict[str, Any]:
    return {
        "timestamp": "2026-11-22T08:00:10.000+0000",
        "rule": {"level": level, "description": "sshd: brute force", "id": rule_id, "groups": GROUPS},
        "agent": {"id": "001", "name": "web01", "ip": "198.51.100.5"},
        "manager": {"name": "wazuh-manager"},
        "id": "1795334410.3968",
        "full_log": "sshd[1]: Invalid user from 198.51.100.6",
        "decoder": {"name": "sshd"},
        "data": data,
        "location": "/var/log/auth.log",
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def records() -> list[bytes]:
    out: list[bytes] = []
    # 1. Wazuh alerts whose srcip is hostile (rule 5712 fires both bindings).
    for ip in HOSTILE_IPS:
        out.append(dumps(wazuh(srcip=ip, dstuser="root")))
    # 2. Wazuh alerts without srcip whose user is hostile (dstuser and srcuser).
    for user in HOSTILE_USERS:
        out.append(dumps(wazuh(dstuser=user)))
    for user in HOSTILE_USERS[:20]:
        out.append(dumps(wazuh(srcuser=user)))
    # 3. Plain JSON with hostile values.
    for ip in HOSTILE_IPS[:25]:
        out.append(dumps({"rule_id": 5712, "level": 10, "groups": GROUPS, "srcip": ip, "user": "root"}))
    for user in HOSTILE_USERS[:15]:
        out.append(dumps({"rule_id": 5712, "level": 10, "user": user}))
    # 4. Hostile routing fields with a valid srcip and user.
    for agent_id in ["../../etc", "001.>", "*", "001 002", "a" * 100, "001\n", "", 7, None]:
        alert = wazuh(srcip="198.51.100.6", dstuser="root")
        alert["agent"] = {"id": agent_id, "name": "web01"}
        out.append(dumps(alert))
    # 5. Wrong types and shapes.
    bad_rules: list[Any] = [
        ["5712"], {"n": 5712}, None, True, 5712.0, "5712a", "-5712", "５７１２", "٥٧١٢", " 5712",
        "5712 ", "0x1650", "1e3", "9" * 11, "9" * 5000,
    ]
    for rid in bad_rules:
        out.append(dumps(wazuh(rule_id=rid, srcip="198.51.100.6")))
    for level in ["10", 10.0, True, None, -1, 21, 99, 10**30, [10], {"l": 10}, "ten"]:
        out.append(dumps(wazuh(level=level, srcip="198.51.100.6")))
    for groups in [["sshd,authentication_failures"], [1, 2], "x" * 5, [["a"]], [""], ["g"] * 100]:
        alert = wazuh(srcip="198.51.100.6")
        alert["rule"]["groups"] = groups
        if groups == "x" * 5:
            alert["rule"]["groups"] = {"a": 1}
        out.append(dumps(alert))
    shapes: list[bytes] = [
        b"[]", b"null", b"42", b'"alert"', b"{}", b'{"rule": "5712"}', b'{"rule": []}',
        b'{"rule": {"id": "5712", "level": 10}, "data": "srcip=198.51.100.6"}',
        b'{"rule": {"id": "5712", "level": 10}, "agent": "001", "data": {"srcip": "1.2.3.4; id"}}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6"}, "id": 5}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6"}, "full_log": []}',
        b'{"rule": {"id": "5712", "level": NaN}, "data": {"srcip": "198.51.100.6"}}',
        b'{"rule": {"id": "5712", "level": Infinity}, "data": {"srcip": "198.51.100.6"}}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6", "srcip": "$(id)"}}',
        b'{"rule_id": 5712, "level": 10, "src_ip": "198.51.100.6"}',
        b'{"rule_id": 5712, "level": 10, "srcip": "198.51.100.6", "command": "rm -rf /"}',
        b'{"rule_id": 5712, "level": 10, "user": "root", "username": "admin"}',
        b'{"rule_id": 5712}',
        b'{"level": 10, "srcip": "198.51.100.6"}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6"}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6"}} trailing',
        b"{'rule': {'id': '5712'}}",
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "\\ud800"}}',
        b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6\\u0000"}}',
        b"\xef\xbb\xbf{}",
        b"** not an alert",
        b"ALL: ALL",
        b"\x00\x00\x00\x00",
        b"\x1b[2J\x1b[31mred alert",
    ]
    out.extend(shapes)
    # 6. Nesting bombs (the C decoder recurses; Python raises RecursionError past its limit).
    for depth in (100_000, 50_000):
        out.append(b'{"rule": {"id": "5712", "level": 10}, "data": ' + b"[" * depth + b"]" * depth + b"}")
    out.append(b"{" + b'"a":{' * 20_000 + b"}" * 20_001)
    # 7. Oversized: one huge line, and multi-KB fields pushing the alert past 64 KiB.
    out.append(dumps(wazuh(srcip="198.51.100.6", pad="A" * 400_000)))
    out.append(dumps(wazuh(srcip="1.2.3.4; id", dstuser="u" * 70_000)))
    out.append(b"[" + b"1," * 40_000 + b"1]")
    # 8. Not UTF-8: overlong encodings, lone continuation bytes, Latin-1, UTF-16.
    for blob in (b"\xc0\xaf", b"\xe0\x80\xaf", b"\x80", b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80"):
        head = b'{"rule": {"id": "5712", "level": 10}, "data": {"srcip": "198.51.100.6", "x": "'
        out.append(head + blob + b'"}}')
    out.append('{"rule": {"id": "5712", "level": 10}}'.encode("utf-16"))
    # 9. Level 0 and white-listed forms of this host / loopback with otherwise valid fields.
    out.append(dumps(wazuh(level=0, srcip="198.51.100.6", dstuser="root")))
    for ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1", "198.51.100.10"):
        out.append(dumps(wazuh(srcip=ip, dstuser="root")))
    for rec in out:
        assert b"\n" not in rec, rec[:80]
    return out


OSSEC_BLOCKS: list[bytes] = [
    b"** Alert 1795334410.1: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'brute force'\nSrc IP: 1.2.3.4; id\nUser: root\nlog\n\n",
    b"** Alert 1795334410.2: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'brute force'\nUser: -rf\nlog\n\n",
    b"** Alert 1795334410.3: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'brute force'\nSrc IP: 127.1\nUser: $(id)\nlog\n\n",
    b"** Alert 1795334410.4: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'brute force'\nSrc IP: 198.51.100.6\nSrc IP: 1.2.3.4\nlog\n\n",
    b"** Alert 1795334410.5: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 99999999999 (level 10) -> 'rule id too long'\nSrc IP: 198.51.100.6\n\n",
    b"** Alert 1795334410.6: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 99) -> 'level out of range'\nSrc IP: 198.51.100.6\n\n",
    b"** Alert 1795334410.7: - syslog,sshd,authentication_failures,\n"
    b"garbage origin line\nRule: 5712 (level 10) -> 'x'\nSrc IP: 198.51.100.6\n\n",
    b"** Alert 1795334410.8: - syslog,sshd,authentication_failures,\n\n",
    b"** Alert 1795334410.9: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'not utf-8 \xff\xfe'\nSrc IP: 198.51.100.6\n\n",
    b"** Alert 1795334410.10: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'huge'\nSrc IP: 198.51.100.6\n" + b"L" * 300_000 + b"\n\n",
    b"stray text outside any block\n",
    b"** Alert 1795334410.11: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'fe80 zone'\nSrc IP: fe80::1%eth0\nUser: root\n\n",
    b"** Alert 1795334410.12: - syslog,sshd,authentication_failures,\n"
    b"2026 Nov 22 08:00:10 (web01) 198.51.100.5->/var/log/auth.log\n"
    b"Rule: 5712 (level 10) -> 'loopback'\nSrc IP: ::ffff:127.0.0.1\nUser: root\n\n",
]


def main() -> None:
    recs = records()
    (HERE / "hostile.jsonl").write_bytes(b"\n".join(recs) + b"\n")
    (HERE / "hostile-ossec.log").write_bytes(b"".join(OSSEC_BLOCKS))
    print(f"wrote {len(recs)} records to hostile.jsonl, {len(OSSEC_BLOCKS)} to hostile-ossec.log")


if __name__ == "__main__":
    main()
