#!/usr/bin/env python3
"""Writes kv.json (the `consul kv import` format) from the table in KEYS.md.

KEYS.md is the one place a key, its default and its meaning are written; run
`python3 consul/seed.py` after editing it. A test fails when kv.json and KEYS.md differ.
"""
import base64, json, pathlib, re

here = pathlib.Path(__file__).parent
rows = []
for line in (here / "KEYS.md").read_text().splitlines():
    m = re.match(r"^\| `([^`]+)` \| `([^`]*)` \|", line)
    if m:
        rows.append({"key": m.group(1), "flags": 0,
                     "value": base64.b64encode(m.group(2).encode()).decode()})
(here / "kv.json").write_text(json.dumps(rows, indent=2) + "\n")
print(f"wrote {len(rows)} keys to consul/kv.json")
