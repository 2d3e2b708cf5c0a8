"""Write the small seed corpus of each harness to fuzz/seeds/<harness>/ (see fuzz/README.md).

    python fuzz/make_seeds.py

The seeds are a few valid inputs per harness, in each harness's input layout,
so that the fuzzer starts from the grammar instead of finding ``|`` and
``_e{`` by chance.  The files are committed; rerun this after changing it.
"""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import struct

LINES = [
    b"page.views:1|c",
    b"page.views:1|c|@0.5|#env:prod,service:web",
    b"queue.depth:42.5|g|#region:us-east-1",
    b"request.latency:12.5:13.1::9.7|h|@0.25",
    b"request.time:320|ms|#route:/api",
    b"payload.size:1e3|d|T1700000000",
    b"users.online:alice|s",
    b"gauge.hex:0x1.8p3|g|c:container-id",
    b"weird.values:NaN:+Inf:-infinity|d",
    b"_e{10,24}:deploy web|version 1.2.3 shipped\\n|d:1700000000|h:web1|k:deploy|p:low|s:ci|t:success|#env:prod",
    b"_e{5,0}:title||#a",
    b"_sc|db.up|0|d:1700000000|h:db1|#env:prod|m:all good",
    b"_sc|db.up|2|m:down\\nretrying",
]

SEEDS = {
    # first byte: options (eol_required, timestamps, origin_client bits); then a packet
    "parser": [bytes([options]) + line for options, line in enumerate(LINES)]
    + [b"\x07" + b"\n".join(LINES) + b"\n", b"\x01" + b"\r\n".join(LINES[:4])],
    # first byte: largest frame / 2, second: read size; then length-prefixed frames
    "framing": [
        bytes([64, step]) + b"".join(struct.pack("<I", len(line)) + line for line in LINES[:n])
        for step, n in [(0, 1), (3, 4), (17, 8), (63, 13)]
    ]
    + [bytes([4, 1]) + struct.pack("<I", 0), bytes([4, 2]) + struct.pack("<I", 1000) + b"x" * 8],
    # kind, pattern, name, tag, prefix (NUL-separated), then names to map
    "mapper": [
        b"w\0app.*.*\0app.$1\0$2\0app.\0app.web.get\0app.db\0other.x",
        b"r\0app\\.(\\w+)?-(.*)\0app.$1\0${2}\0app.\0app.web-get\0app.-x\0app.\xff-\xfe",
        b"r\0(?i)APP\\.(?P<kind>[a-z]+)\\.[[:digit:]]+\0$kind\0$$1 ${kind}x\0*\0app.web.12\0App.DB.3",
        b"w\0*.b*\0n\0\0*\0a.bc\0.b\0a.c",
    ],
    # first byte: end-of-line rule; then packets separated by NUL
    "intake": [
        b"\0" + b"\n".join(LINES),
        b"\x01" + b"\n".join(LINES[:5]) + b"\n\0" + b"\n".join(LINES[5:]),
        b"\0ns.app.web.get:1|c\nns.app.x-y:2|h\nblocked:1|c\nnamespace.free:1|g|#host:h",
    ],
}


def main() -> None:
    root = pathlib.Path(__file__).parent / "seeds"
    shutil.rmtree(root, ignore_errors=True)
    for harness, seeds in SEEDS.items():
        directory = root / harness
        directory.mkdir(parents=True)
        for seed in seeds:
            (directory / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


if __name__ == "__main__":
    main()
