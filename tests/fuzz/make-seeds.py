#!/usr/bin/python3
# Write seed inputs for fuzz-nbd: well-formed client conversations, so
# the fuzzer starts from inputs that reach transmission.
import os
import struct
import sys

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513

def opt(o, data=b""):
    return struct.pack(">QII", IHAVEOPT, o, len(data)) + data

def go(name=b"", infos=(3,)):
    return opt(7, struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))

def meta(o, q=b"base:allocation"):
    return opt(o, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q)

def req(t, off, count, flags=0, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, t, 7, off, count) + payload

hello = struct.pack(">I", 3)
seeds = {
    "list": hello + opt(3) + opt(2),
    "go-read": hello + opt(8) + go() + req(0, 0, 4096) + req(2, 0, 0),
    "go-write": hello + go() + req(1, 512, 1024, 1, b"\xab" * 1024) + req(3, 0, 0) + req(0, 0, 2048),
    "meta-status": hello + opt(8) + meta(9) + meta(10) + go() + req(7, 0, 1 << 20, 8) + req(7, 0, 65536),
    "trim-zero": hello + opt(8) + go() + req(4, 0, 65536) + req(6, 65536, 65536, 2) + req(6, 0, 512, 16) + req(5, 0, 4096),
    "export-name": hello + opt(1, b"") + req(0, 1024, 512),
    "df-read": hello + opt(8) + go() + req(0, 0, 8192, 4),
    "bad": hello + opt(5) + opt(99, b"x" * 10) + go(b"nope") + go() + req(0, 1 << 40, 512) + req(9, 0, 0),
}
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
