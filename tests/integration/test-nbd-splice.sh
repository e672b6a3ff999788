#!/bin/bash
# Large writes, which kiln-nbd splices from the socket into the volume,
# and large reads of written chunks, spliced from the page cache:
# through libnbd to a volume created from a snapshot, whole chunks of the
# base (spliced), writes over part of a base chunk (read into memory and
# copied up instead), writes larger than the pipe, FUA writes, over a Unix
# socket and under -s; a raw client that announces a 1 MiB write, sends
# 300 KiB of it and hangs up must change nothing; the bytes are checked
# against a model through NBD, in an online snapshot and in an export.
# Reads: of written chunks only (spliced), across written and base chunks,
# unaligned, larger than the pipe, with simple and structured replies.
# The same over TCP with nbdcopy.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires cmp

new_store
make_random "$TMPDIR/img.raw" 32M splice
vol=$(kiln volume import "$TMPDIR/img.raw")
snap=$(kiln snapshot create "$vol")
cow=$(kiln volume create --snapshot-id "$snap")
blank=$(kiln volume create --size 8M)

start_nbd
export SOCK=$NBD_SOCK NBD_PID COW=$cow BLANK=$blank IMG=$TMPDIR/img.raw MODEL=$TMPDIR/model.raw
export KILN_STORE KILN_NBD
cat >"$TMPDIR/splice.py" <<'EOF'
import os
import socket
import struct
import time

import nbd

SOCK, COW, BLANK = os.environ["SOCK"], os.environ["COW"], os.environ["BLANK"]
MiB, CS = 1 << 20, 64 << 10
model = bytearray(open(os.environ["IMG"], "rb").read())
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def connect(name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(SOCK)
    return h


def write(h, m, off, n, flags=0):
    data = os.urandom(n)
    h.pwrite(data, off, flags)
    m[off:off + n] = data


h = connect(COW)
write(h, model, 2 * MiB, MiB)                     # whole base chunks: spliced
write(h, model, 4 * MiB + 4096, MiB)              # part of two base chunks: copied up
write(h, model, 6 * MiB, 3 * MiB + CS)            # more than the pipe holds
write(h, model, 10 * MiB + CS, 2 * MiB, nbd.CMD_FLAG_FUA)
write(h, model, 13 * MiB + 12288, 256 * 1024 + 512)   # odd offset and size: copied up
# many in flight at once, as fio and nbdcopy send them (not overlapping:
# writes in flight together may land in any order)
cookies = []
for i in range(8):
    data = os.urandom(MiB)
    off = 16 * MiB + i * 2 * MiB + (i % 2) * 4096
    model[off:off + MiB] = data
    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off))
    while h.aio_in_flight() > 4:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    check(h.aio_command_completed(c), "aio write %d completed" % c)
check(bytes(h.pread(len(model), 0)) == model, "the CoW volume reads back the model")

# A write announced as 1 MiB over base chunks, 300 KiB of it sent, then
# the connection closes: none of it may show, once the daemon is done with
# the connection (it has closed the connection's descriptors).
def nfds():
    return len(os.listdir("/proc/%s/fd" % os.environ["NBD_PID"]))


fds_before = nfds()
s = socket.socket(socket.AF_UNIX)
s.connect(SOCK)
hello = s.recv(18, socket.MSG_WAITALL)
check(hello[:8] == b"NBDMAGIC", "raw client: server greeting")
s.sendall(struct.pack(">I", 3))               # FIXED_NEWSTYLE | NO_ZEROES
name = COW.encode()
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)   # EXPORT_NAME
info = s.recv(10, socket.MSG_WAITALL)
check(len(info) == 10 and struct.unpack(">Q", info[:8])[0] == len(model), "raw client: export size")
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 77, 3 * MiB, MiB) + os.urandom(300 * 1024))
s.close()
for _ in range(100):
    if nfds() <= fds_before:
        break
    time.sleep(0.05)
check(nfds() <= fds_before, "the daemon closed the cut-short connection")
check(bytes(h.pread(len(model), 0)) == model, "a write cut short changed nothing")


def reads(h, what):
    for off, n in ((2 * MiB, MiB), (6 * MiB, 3 * MiB), (6 * MiB + 4096, 256 * 1024),
                   (2 * MiB - CS, 2 * CS), (2 * MiB + 512, MiB - 512), (16 * MiB, 16 * MiB),
                   (10 * MiB + CS, 2 * MiB), (0, len(model))):
        check(bytes(h.pread(n, off)) == model[off:off + n], "%s: read %d at %d" % (what, n, off))


reads(h, "structured")
# read, overwrite, read: no bytes of the first read are left behind
h.pread(MiB, 6 * MiB)
write(h, model, 6 * MiB, MiB)
check(bytes(h.pread(MiB, 6 * MiB)) == model[6 * MiB:7 * MiB], "a read after a write sees it")
h.flush()
h.shutdown()
h = nbd.NBD()
h.set_export_name(COW)
h.set_request_structured_replies(False)
h.connect_unix(SOCK)
check(not h.get_structured_replies_negotiated(), "simple replies negotiated")
reads(h, "simple")
h.shutdown()
open(os.environ["MODEL"], "wb").write(model)

# -s: the same path on stdin
bmodel = bytearray(8 * MiB)
h = nbd.NBD()
h.set_export_name(BLANK)
h.connect_command([os.environ["KILN_NBD"], "-s", "--store", os.environ["KILN_STORE"]])
write(h, bmodel, MiB, 2 * MiB)
write(h, bmodel, 5 * MiB + 512, MiB)
check(bytes(h.pread(len(bmodel), 0)) == bmodel, "-s: large writes read back")
h.shutdown()

if failures:
    raise SystemExit("%d check(s) failed: %s" % (len(failures), "; ".join(failures)))
EOF
nbdsh_run "$TMPDIR/splice.py" || { nbd_log_tail; fail "the large-write checks failed"; }

# the online snapshot and a plain export agree with the model
snap2=$(kiln snapshot create "$cow")
cmp_snapshot "$snap2" "$TMPDIR/model.raw"
stop_nbd
cmp_volume "$cow" "$TMPDIR/model.raw"

# over TCP: 1 MiB writes into a blank volume, then 1 MiB reads of them
port=$(free_tcp_port)
start_nbd_tcp "127.0.0.1:$port"
make_random "$TMPDIR/tcp.raw" 8M tcp
nbdcopy --request-size=1048576 "$TMPDIR/tcp.raw" "$(nbd_tcp_uri "$blank" "$port")"
nbdcopy --request-size=1048576 "$(nbd_tcp_uri "$blank" "$port")" "$TMPDIR/tcp-back.raw"
cmp "$TMPDIR/tcp.raw" "$TMPDIR/tcp-back.raw" || fail "TCP: 1 MiB writes and reads differ"
stop_nbd
cmp_volume "$blank" "$TMPDIR/tcp.raw"
cmp_snapshot "$snap" "$TMPDIR/img.raw"
echo PASS
