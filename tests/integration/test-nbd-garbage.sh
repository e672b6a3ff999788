#!/bin/bash
# 1000 connections of garbage at a live kiln-nbd, each on its own socket
# with short timeouts: random bytes before and instead of the handshake,
# bad client flags, random options with random lengths (up to 100 KB, some
# announced and not sent, some over the 64 KiB limit), malformed INFO/GO/
# META_CONTEXT payloads, then in transmission random requests, bad magic,
# truncated requests, huge lengths, writes of more than 32 MiB announced and
# not sent. Where a frame is intact the replies are checked too (magic,
# option or cookie echoed, read chunks inside the request). Afterwards the
# daemon must be alive, have closed every connection's descriptor, serve
# the right bytes to nbdcopy and exit 0 on SIGTERM.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires openssl cmp nbdcopy nbdinfo
requires_libnbd_python

new_store
make_random "$TMPDIR/img.raw" 2M garbage
vol=$(kiln volume import "$TMPDIR/img.raw")
snap=$(kiln snapshot create "$vol")
junk=$(kiln volume create --size 1M)

start_nbd
nfds() { find "/proc/$NBD_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
# one well-behaved connection first, so lazily opened files are counted
nbdcopy "$(nbd_uri "$vol")" "$TMPDIR/before.raw"
base_fds=$(nfds)

cat >"$TMPDIR/garbage.py" <<'EOF'
import os
import random
import socket
import struct
import sys

SOCK, VOL, SNAP, JUNK = sys.argv[1:5]
SEED = int(sys.argv[5])
rng = random.Random(SEED)
IHAVEOPT, REPMAGIC = 0x49484156454F5054, 0x3e889045565a9
REQ, SIMPLE, STRUCT = 0x25609513, 0x67446698, 0x668e33ef
SIZES = {VOL: 2 << 20, SNAP: 2 << 20, JUNK: 1 << 20}
problems = []
stats = {}


class Closed(Exception):
    pass


def note(kind):
    stats[kind] = stats.get(kind, 0) + 1


def problem(case, what):
    problems.append("case %d: %s" % (case, what))
    print("PROBLEM case %d: %s" % (case, what), flush=True)


def junk_bytes(n):
    return rng.randbytes(n)


class Conn:
    def __init__(self):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(5)
        self.s.connect(SOCK)

    def send(self, b):
        try:
            self.s.sendall(b)
        except OSError as e:
            raise Closed(str(e))

    def rx(self, n):
        b = bytearray()
        while len(b) < n:
            try:
                c = self.s.recv(min(n - len(b), 1 << 20))
            except ConnectionResetError as e:
                raise Closed(str(e))
            if not c:
                raise Closed("EOF after %d of %d bytes" % (len(b), n))
            b += c
        return bytes(b)

    def close(self):
        self.s.close()


def greet(c, case):
    magic, opt, hflags = struct.unpack(">QQH", c.rx(18))
    if magic != 0x4e42444d41474943 or opt != IHAVEOPT:
        problem(case, "bad greeting %x %x" % (magic, opt))


def option_replies(c, case, opt):
    """Read replies to opt until its final one; return the final type."""
    while True:
        magic, ropt, typ, n = struct.unpack(">QIII", c.rx(20))
        if magic != REPMAGIC or ropt != opt:
            problem(case, "option %d: reply magic %x for option %d" % (opt, magic, ropt))
            raise Closed("framing lost")
        if n > 1 << 20:
            problem(case, "option %d: reply of %d bytes" % (opt, n))
            raise Closed("framing lost")
        c.rx(n)
        if typ == 1 or typ & 0x80000000:
            return typ


def string(s):
    return struct.pack(">I", len(s)) + s


def info_payload(name):
    infos = [rng.randrange(0, 6) for _ in range(rng.randrange(0, 5))]
    body = string(name) + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)
    r = rng.random()
    if r < 0.15:
        body = body[:rng.randrange(len(body) + 1)]          # short
    elif r < 0.25:
        body += junk_bytes(rng.randrange(1, 20))            # trailing bytes
    elif r < 0.35:
        body = struct.pack(">I", rng.randrange(1 << 32)) + body[4:]   # wild name length
    return body


def meta_payload(name):
    queries = [rng.choice([b"base:allocation", b"base:", b"x-a:b", b"", junk_bytes(rng.randrange(1, 40))])
               for _ in range(rng.randrange(0, 4))]
    body = string(name) + struct.pack(">I", len(queries)) + b"".join(string(q) for q in queries)
    r = rng.random()
    if r < 0.2:
        body = body[:rng.randrange(len(body) + 1)]
    elif r < 0.3:
        body = string(name) + struct.pack(">I", rng.randrange(1 << 32))
    return body


def random_name():
    return rng.choice([VOL, SNAP, JUNK, "", "nope", "vol-", "snap-0000000000000000z", "x" * 300,
                       "vol-%017x" % rng.randrange(1 << 64)]).encode()


def fuzz_options(c, case, n):
    """n random options; may end the connection in the middle of one."""
    for _ in range(n):
        opt = rng.choice([1, 2, 3, 5, 6, 7, 8, 9, 10, rng.randrange(11, 64), rng.randrange(1 << 32)])
        r = rng.random()
        if opt in (6, 7):
            data = info_payload(random_name())
        elif opt in (9, 10):
            data = meta_payload(random_name())
        elif r < 0.5:
            data = b""
        else:
            data = junk_bytes(rng.choice([rng.randrange(1, 64), rng.randrange(64, 100 * 1024)]))
        if opt == 1:
            data = random_name() if rng.random() < 0.5 else data
        if rng.random() < 0.05:
            # announced, partly sent, then the connection ends
            c.send(struct.pack(">QII", IHAVEOPT, opt, len(data) + rng.randrange(1, 1 << 20)) + data)
            note("option truncated")
            return None
        c.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
        if opt == 1:
            note("export name")
            return None          # transmission or a hard disconnect: stop here
        typ = option_replies(c, case, opt)
        if len(data) > 64 * 1024 and typ != 0x80000009:
            problem(case, "option %d with %d bytes: reply 0x%x, not NBD_REP_ERR_TOO_BIG" % (opt, len(data), typ))
        note("option reply 0x%x" % typ)
        if opt == 2:
            return None
        if opt == 7 and typ == 1:
            return "go"
    return "negotiating"


def go(c, case, name, structured, meta):
    if structured:
        c.send(struct.pack(">QII", IHAVEOPT, 8, 0))
        if option_replies(c, case, 8) != 1:
            problem(case, "STRUCTURED_REPLY refused")
    if meta:
        q = b"base:allocation"
        data = string(name) + struct.pack(">I", 1) + string(q)
        c.send(struct.pack(">QII", IHAVEOPT, 10, len(data)) + data)
        option_replies(c, case, 10)
    data = string(name) + struct.pack(">HH", 1, 3)
    c.send(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
    if option_replies(c, case, 7) != 1:
        problem(case, "GO %s refused" % name)
        raise Closed("no transmission")


def replies(c, case, structured, reqs):
    """Read the replies to reqs (cookie -> (type, offset, count)), in any
    order, chunks of different replies possibly interleaved. Returns
    cookie -> error."""
    done, covered, errs = {}, {}, {}
    while len(done) < len(reqs):
        magic = struct.unpack(">I", c.rx(4))[0]
        if magic == SIMPLE:
            err, ck = struct.unpack(">IQ", c.rx(12))
            if ck not in reqs or ck in done or ck in covered:
                problem(case, "simple reply with cookie %x, not one in flight" % ck)
                raise Closed("framing lost")
            typ, off, count = reqs[ck]
            if typ == 0 and structured:
                problem(case, "simple reply to a READ with structured replies on")
            if typ == 0 and err == 0 and not structured:
                c.rx(count)
            if typ == 7 and err == 0:
                problem(case, "simple success reply to BLOCK_STATUS")
            done[ck] = err
            continue
        if magic != STRUCT or not structured:
            problem(case, "reply magic %x (structured=%s)" % (magic, structured))
            raise Closed("framing lost")
        flags, ctype, ck, n = struct.unpack(">HHQI", c.rx(16))
        if n > 64 << 20:
            problem(case, "chunk of %d bytes announced" % n)
            raise Closed("framing lost")
        payload = c.rx(n)
        if ck not in reqs or ck in done:
            problem(case, "chunk with cookie %x, not one in flight" % ck)
            raise Closed("framing lost")
        typ, off, count = reqs[ck]
        if ctype in (1, 2):
            coff = struct.unpack(">Q", payload[:8])[0]
            clen = n - 8 if ctype == 1 else struct.unpack(">I", payload[8:12])[0]
            if typ != 0 or coff < off or coff + clen > off + count or clen == 0:
                problem(case, "content chunk %d+%d for request %d %d+%d" % (coff, clen, typ, off, count))
            covered[ck] = covered.get(ck, 0) + clen
        elif ctype & 0x8000:
            errs[ck] = struct.unpack(">I", payload[:4])[0] or 999
        elif ctype == 5:
            if typ != 7 or n < 12 or (n - 4) % 8:
                problem(case, "block status chunk of %d bytes for request type %d" % (n, typ))
        elif ctype != 0:
            problem(case, "unknown chunk type %d" % ctype)
        if flags & 1:
            done[ck] = errs.get(ck, 0)
            if typ == 0 and done[ck] == 0 and covered.get(ck, 0) != count:
                problem(case, "read %d+%d: chunks cover %d bytes" % (off, count, covered.get(ck, 0)))
    return done


def reply(c, case, structured, typ, off, count, cookie):
    return replies(c, case, structured, {cookie: (typ, off, count)})[cookie]


def burst(c, case, name, structured):
    """Up to 32 sensible requests at once (reads, writes, flushes, block
    status), then all their replies, whatever their order."""
    size = SIZES[name.decode()]
    writable = name.decode() == JUNK
    reqs, wire = {}, b""
    for _ in range(rng.randrange(2, 33)):
        typ = rng.choice([0, 0, 1, 3, 7] if writable else [0, 0, 5, 7])
        count = 512 * rng.randrange(1, 130)
        off = 512 * rng.randrange(0, (size - count) // 512 + 1)
        if rng.random() < 0.1:
            off = size                                   # one bad one in the stream
        flags = 1 if typ == 1 and rng.random() < 0.2 else 0
        if typ == 3:
            off, count = 0, 0
        cookie = rng.randrange(1 << 64)
        reqs[cookie] = (typ, off, count)
        wire += struct.pack(">IHHQQI", REQ, flags, typ, cookie, off, count)
        if typ == 1:
            wire += junk_bytes(count)
    c.send(wire)
    errs = replies(c, case, structured, reqs)
    for ck, (typ, off, count) in reqs.items():
        if off + count <= size and errs[ck] not in (0, 22):
            problem(case, "burst: request %d %d+%d failed with %d" % (typ, off, count, errs[ck]))
        if typ in (0, 1) and off + count <= size and errs[ck]:
            problem(case, "burst: a valid request %d %d+%d failed with %d" % (typ, off, count, errs[ck]))
        if off + count > size and errs[ck] == 0:
            problem(case, "burst: request %d %d+%d past the end succeeded" % (typ, off, count))
    note("burst of %s" % ("1-9" if len(reqs) < 10 else "10-32"))


def fuzz_requests(c, case, name, structured, n):
    size = SIZES.get(name.decode(), 0)
    for i in range(n):
        if rng.random() < 0.15:
            burst(c, case, name, structured)
            continue
        typ = rng.choice([0, 0, 1, 1, 3, 4, 5, 6, 7, rng.randrange(8, 1 << 16)])
        # mostly sensible, so that requests get served, not just refused
        flags = rng.choice([0, 0, 0, 0, 1, 2, 4, 8, 16, rng.randrange(1 << 16)])
        aligned = rng.randrange(0, max(size, 1), 512)
        off = rng.choice([aligned, aligned, aligned, 0, rng.randrange(0, max(size, 1)),
                          size, size - 512, rng.randrange(1 << 64)])
        count = rng.choice([512, 4096, 65536, 512 * rng.randrange(1, 300), rng.randrange(1, 65536), 0,
                            rng.randrange(1 << 32), 32 << 20, (32 << 20) + 1])
        if typ == 1 and name.decode() == VOL:
            off = size + rng.randrange(0, 1 << 20)          # never change VOL
        if typ in (4, 6) and name.decode() == VOL:
            off = size
        if typ == 2:
            typ = 0
        cookie = rng.randrange(1 << 64)
        r = rng.random()
        if r < 0.03:
            c.send(struct.pack(">IHHQQI", rng.randrange(1 << 32), flags, typ, cookie, off, count))
            note("bad request magic")
            return
        if r < 0.06:
            c.send(struct.pack(">IHHQQI", REQ, flags, typ, cookie, off, count)[:rng.randrange(1, 28)])
            note("truncated request")
            return
        if typ == 1 and count > 1 << 20:
            # a big write announced: send a little of it and hang up
            c.send(struct.pack(">IHHQQI", REQ, flags, 1, cookie, off, count) + junk_bytes(rng.randrange(0, 4096)))
            note("big write announced, not sent")
            return
        payload = junk_bytes(count) if typ == 1 else b""
        if typ == 1 and rng.random() < 0.1:
            c.send(struct.pack(">IHHQQI", REQ, flags, 1, cookie, off, count) + payload[:len(payload) // 2])
            note("write payload cut")
            return
        c.send(struct.pack(">IHHQQI", REQ, flags, typ, cookie, off, count) + payload)
        err = reply(c, case, structured, typ, off, count, cookie)
        note("request type %d -> %d" % (min(typ, 8), err))
        if typ > 7 and err != 22:
            problem(case, "unknown command %d answered %d, not EINVAL" % (typ, err))
        if name.decode() == SNAP and typ in (1, 4, 6) and err == 0:
            problem(case, "a write-type request (%d) to the snapshot succeeded" % typ)
    if rng.random() < 0.5:
        c.send(struct.pack(">IHHQQI", REQ, 0, 2, 0, 0, 0))     # NBD_CMD_DISC


def one_case(case):
    c = Conn()
    try:
        kind = rng.random()
        if kind < 0.05:
            c.send(junk_bytes(rng.randrange(1, 4096)))        # before even reading the greeting
            note("garbage before greeting")
            return
        greet(c, case)
        if kind < 0.10:
            c.send(junk_bytes(rng.randrange(1, 70000)))
            note("garbage instead of flags")
            return
        if kind < 0.15:
            c.send(struct.pack(">I", rng.randrange(4, 1 << 32)))   # unknown client flags
            note("bad client flags")
            try:
                c.rx(1)
                problem(case, "the server answered a client with unknown flags")
            except (Closed, socket.timeout):
                pass
            return
        cflags = rng.choice([1, 3])
        c.send(struct.pack(">I", cflags))
        if kind < 0.20:
            c.send(junk_bytes(rng.randrange(1, 200)))          # garbage in place of an option
            note("garbage option header")
            return
        if kind < 0.55:
            fuzz_options(c, case, rng.randrange(1, 9))
            return
        name = rng.choice([VOL, SNAP, JUNK, JUNK]).encode()
        if kind < 0.60:
            c.send(struct.pack(">QII", IHAVEOPT, 1, len(name)) + name)
            c.rx(10 if cflags & 2 else 134)
            fuzz_requests(c, case, name, False, rng.randrange(1, 16))
            return
        structured = rng.random() < 0.7
        if rng.random() < 0.3:
            fuzz_options(c, case, rng.randrange(1, 3))
            c.close()
            c = Conn()
            greet(c, case)
            c.send(struct.pack(">I", 1))
        go(c, case, name, structured, structured and rng.random() < 0.7)
        fuzz_requests(c, case, name, structured, rng.randrange(1, 16))
    except Closed as e:
        note("server closed")
    except socket.timeout:
        # every wait above is for an answer the server owes us
        problem(case, "no answer within 5 s")
    finally:
        c.close()


for case in range(1000):
    one_case(case)
for k in sorted(stats):
    print("%6d  %s" % (stats[k], k))
if problems:
    print("%d problem(s), first ones:" % len(problems))
    for p in problems[:20]:
        print("  " + p)
    sys.exit(1)
print("1000 garbage connections, no protocol problem seen")
EOF

seed=${GARBAGE_SEED:-$RANDOM}
echo "garbage seed $seed (GARBAGE_SEED=$seed reproduces this run)"
rc=0
/usr/bin/python3 "$TMPDIR/garbage.py" "$NBD_SOCK" "$vol" "$snap" "$junk" "$seed" || rc=$?
nbd_alive || { nbd_log_tail; fail "kiln-nbd died under garbage (seed $seed)"; }
[ "$rc" -eq 0 ] || { nbd_log_tail; fail "protocol problems under garbage (seed $seed)"; }

# every connection ends and gives its descriptor back
fds_back() { [ "$(nfds)" -le "$base_fds" ]; }
wait_until 20 fds_back || fail "kiln-nbd holds $(nfds) descriptors after the garbage, $base_fds before"
nbdinfo --list "$(nbd_uri "")" | grep -q "^export=\"$vol\":" || fail "nbdinfo --list after the garbage"
nbdcopy "$(nbd_uri "$vol")" "$TMPDIR/vol.raw"
cmp "$TMPDIR/vol.raw" "$TMPDIR/img.raw" || fail "$vol changed under garbage (seed $seed)"
nbdcopy "$(nbd_uri "$snap")" "$TMPDIR/snap.raw"
cmp "$TMPDIR/snap.raw" "$TMPDIR/img.raw" || fail "$snap reads wrong after the garbage (seed $seed)"
make_random "$TMPDIR/junk.raw" 1M junk
nbdcopy "$TMPDIR/junk.raw" "$(nbd_uri "$junk")"
nbdcopy "$(nbd_uri "$junk")" "$TMPDIR/junk2.raw"
cmp "$TMPDIR/junk.raw" "$TMPDIR/junk2.raw" || fail "$junk does not take a clean write after the garbage"
stop_nbd
cmp_volume "$vol" "$TMPDIR/img.raw"
echo PASS
