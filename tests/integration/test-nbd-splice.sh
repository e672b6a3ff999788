#!/bin/bash
# Large writes, which kiln-nbd splices from the socket into the volume,
# and large reads of written chunks, spliced from the page cache, with
# bytes checked against a model through NBD, in online snapshots and in
# an export:
# - writes through libnbd to a volume created from a snapshot: whole base
#   chunks (spliced), part of a base chunk (read into memory and copied
#   up instead), larger than the pipe, FUA, many in flight;
# - a raw client that announces 1 MiB writes, sends part of each and
#   hangs up: over base chunks nothing shows; over written or zeroed
#   chunks each byte is old or new, the next snapshot has what the volume
#   reads, and zeroing and writing there again brings back nothing else;
# - reads of written chunks (spliced), across written and base chunks,
#   unaligned, larger than the pipe, with simple and structured replies;
# - -s, also on a non-blocking socket, and TCP with nbdcopy.
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
export SOCK=$NBD_SOCK NBD_PID KILN TMPDIR COW=$cow BLANK=$blank IMG=$TMPDIR/img.raw MODEL=$TMPDIR/model.raw
export KILN_STORE KILN_NBD
cat >"$TMPDIR/splice.py" <<'EOF'
import os
import socket
import struct
import subprocess
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

# Writes announced as 1 MiB, a part of each sent, then the connection
# closes; checked once the daemon is done with the connection (it has
# closed the connection's descriptors). Over base chunks none of it may
# show. Over written or zeroed chunks each byte reads old or new, and
# stays so: a snapshot has what the volume reads, and zeroing part of it
# and writing next to it brings back nothing else.
def nfds():
    return len(os.listdir("/proc/%s/fd" % os.environ["NBD_PID"]))


def raw_client():
    """A connection to COW in transmission, with simple replies."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    hello = s.recv(18, socket.MSG_WAITALL)
    check(hello[:8] == b"NBDMAGIC", "raw client: server greeting")
    s.sendall(struct.pack(">I", 3))               # FIXED_NEWSTYLE | NO_ZEROES
    name = COW.encode()
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)   # EXPORT_NAME
    info = s.recv(10, socket.MSG_WAITALL)
    check(len(info) == 10 and struct.unpack(">Q", info[:8])[0] == len(model), "raw client: export size")
    return s


def write_header(off, n, cookie=77):
    return struct.pack(">IHHQQI", 0x25609513, 0, 1, cookie, off, n)


def cut_short(off, sent, what):
    fds_before = nfds()
    s = raw_client()
    s.sendall(write_header(off, MiB) + b"\xaa" * sent)
    s.close()
    for _ in range(100):
        if nfds() <= fds_before:
            break
        time.sleep(0.05)
    check(nfds() <= fds_before, "%s: the daemon closed the connection" % what)
    got = bytes(h.pread(MiB, off))
    check(all(g == o or g == 0xAA for g, o in zip(got, model[off:off + MiB])),
          "%s: every byte old or new" % what)
    model[off:off + MiB] = got


def kiln(*args):
    return subprocess.run([os.environ["KILN"]] + list(args), check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()


def check_snapshot(what):
    snap = kiln("snapshot", "create", COW)
    out = os.path.join(os.environ["TMPDIR"], "snap.raw")
    kiln("snapshot", "export", snap, out)
    with open(out, "rb") as f:
        check(f.read() == model, "%s: the snapshot has what the volume reads" % what)
    os.unlink(out)


base_part = bytes(model[3 * MiB:4 * MiB])
cut_short(3 * MiB, 300 * 1024, "over base chunks")
check(bytes(model[3 * MiB:4 * MiB]) == base_part, "over base chunks: none of it shows")
h.zero(CS, 3 * MiB)
model[3 * MiB:3 * MiB + CS] = bytes(CS)
write(h, model, 3 * MiB + 8192, 4096)
check(bytes(h.pread(MiB, 3 * MiB)) == model[3 * MiB:4 * MiB],
      "over base chunks: nothing shows once a chunk is zeroed and written again")
check_snapshot("written chunks, snapshot")
cut_short(2 * MiB, 512 * 1024 + 4096, "over written chunks")
check_snapshot("over written chunks")
h.zero(2 * CS, 12 * MiB + 2 * CS)
model[12 * MiB + 2 * CS:12 * MiB + 4 * CS] = bytes(2 * CS)
cut_short(12 * MiB + 2 * CS, 96 * 1024, "over zeroed chunks")
h.zero(CS // 2, 12 * MiB + 2 * CS + CS // 4)
model[12 * MiB + 2 * CS + CS // 4:12 * MiB + 2 * CS + CS // 4 + CS // 2] = bytes(CS // 2)
write(h, model, 12 * MiB + 3 * CS + 4096, 4096)
check(bytes(h.pread(len(model), 0)) == model, "after zeroing and writing there again")
check_snapshot("over zeroed chunks")

# A write over two whole base chunks whose payload comes slowly, and a
# small write into the first chunk from another connection meanwhile
# (its copy-up must not lay old bytes over the first write's): the
# result is one write after the other.
off = 12 * MiB + 6 * CS
a = os.urandom(2 * CS)
s = raw_client()
s.sendall(write_header(off, 2 * CS) + a[:32 * 1024])
time.sleep(0.3)
b = os.urandom(4096)
h.pwrite(b, off + CS - 4096)
s.sendall(a[32 * 1024:])
magic, error, cookie = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
s.close()
check(magic == 0x67446698 and error == 0 and cookie == 77, "slow write over base chunks answered")
ab = bytearray(a)
ab[CS - 4096:CS] = b
got = bytes(h.pread(2 * CS, off))
check(got in (a, bytes(ab)), "slow write over base chunks and a copy-up: one after the other")
model[off:off + 2 * CS] = got

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

# -s on a non-blocking socket: splices in both directions must wait for it
ours, theirs = socket.socketpair()
theirs.setblocking(False)
server = subprocess.Popen([os.environ["KILN_NBD"], "-s", "--store", os.environ["KILN_STORE"]],
                          stdin=theirs.fileno(), stdout=theirs.fileno())
theirs.close()
h = nbd.NBD()
h.set_export_name(BLANK)
h.connect_socket(ours.detach())
for i in range(4):
    write(h, bmodel, i * MiB, MiB)
for i in range(4):
    check(bytes(h.pread(MiB, i * MiB)) == bmodel[i * MiB:(i + 1) * MiB],
          "-s, non-blocking: 1 MiB read %d" % i)
h.shutdown()
check(server.wait(timeout=10) == 0, "-s, non-blocking: the server exits 0")

if failures:
    raise SystemExit("%d check(s) failed: %s" % (len(failures), "; ".join(failures)))
EOF
nbdsh_run "$TMPDIR/splice.py" || { nbd_log_tail; fail "the large-write checks failed"; }

# the online snapshot and a plain export agree with the model
snap2=$(kiln snapshot create "$cow")
cmp_snapshot "$snap2" "$TMPDIR/model.raw"
stop_nbd
cmp_volume "$cow" "$TMPDIR/model.raw"

# A large write whose payload trickles in (3000 bytes at a time) reaches
# the volume in parts, and online snapshots fall between them: each 4 KiB
# block of it in every snapshot is all old or all new, never torn.
start_nbd
cat >"$TMPDIR/torn.py" <<'EOF'
import os
import socket
import struct
import subprocess
import threading
import time

SOCK, BLANK, KILN = os.environ["SOCK"], os.environ["BLANK"], os.environ["KILN"]
MiB, OFF = 1 << 20, (1 << 20) + 512
path = os.path.join(os.environ["TMPDIR"], "torn.raw")
s = socket.socket(socket.AF_UNIX)
s.connect(SOCK)
s.recv(18, socket.MSG_WAITALL)
s.sendall(struct.pack(">I", 3))
name = BLANK.encode()
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
s.recv(10, socket.MSG_WAITALL)


def write(payload, cookie, piece=None):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, cookie, OFF, len(payload)))
    for i in range(0, len(payload), piece or len(payload)):
        s.sendall(payload[i:i + (piece or len(payload))])
        if piece:
            time.sleep(0.003)
    magic, error, got = struct.unpack(">IIQ", s.recv(16, socket.MSG_WAITALL))
    if (magic, error, got) != (0x67446698, 0, cookie):
        raise SystemExit("write %d was not answered well: %x %d %d" % (cookie, magic, error, got))


torn, partial = [], 0
for rnd in range(6):
    old, new = bytes([rnd + 1]) * MiB, b"\xaa" * MiB
    write(old, 2 * rnd)         # acknowledged: dirty, read by the next snapshot
    snaps = []

    def snapshot():
        time.sleep(0.2 + 0.1 * rnd)
        out = subprocess.run([KILN, "snapshot", "create", BLANK], capture_output=True, text=True)
        snaps.append(out.stdout.strip() if out.returncode == 0 else "failed: " + out.stderr)

    t = threading.Thread(target=snapshot)
    t.start()
    write(new, 2 * rnd + 1, piece=3000)
    t.join()
    if snaps[0].startswith("failed"):
        raise SystemExit("snapshot during the write: " + snaps[0])
    subprocess.run([KILN, "snapshot", "export", snaps[0], path], check=True)
    data = open(path, "rb")
    data.seek(OFF)
    got = data.read(MiB)
    data.close()
    os.unlink(path)
    # every 4 KiB block of the volume: old or new, whole
    nnew = 0
    for b in range(OFF // 4096, (OFF + MiB - 1) // 4096 + 1):
        lo, hi = max(b * 4096, OFF) - OFF, min((b + 1) * 4096, OFF + MiB) - OFF
        if got[lo:hi] == new[lo:hi]:
            nnew += 1
        elif got[lo:hi] != old[lo:hi]:
            torn.append((rnd, b))
    if 0 < nnew < MiB // 4096:
        partial += 1
if torn:
    raise SystemExit("torn 4 KiB blocks in online snapshots (round, block): %s" % torn[:5])
print("%d of 6 snapshots fell inside the trickled write" % partial)
if partial == 0:
    raise SystemExit("no snapshot fell inside the write: the test tests nothing")
EOF
SOCK=$NBD_SOCK /usr/bin/python3 "$TMPDIR/torn.py" || { nbd_log_tail; fail "a trickled write in online snapshots"; }
stop_nbd

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
