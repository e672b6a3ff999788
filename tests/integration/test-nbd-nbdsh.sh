#!/bin/bash
# kiln-nbd against libnbd (nbdsh) and a raw-socket client: every option
# (LIST, INFO, GO, ABORT, STARTTLS, STRUCTURED_REPLY, LIST/SET_META_CONTEXT,
# EXPORT_NAME) and every command (READ with DF, structured reads with holes,
# WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES with NO_HOLE and FAST_ZERO,
# BLOCK_STATUS with REQ_ONE, FUA), with structured replies on and off; the
# errors proto.md asks for (strict mode off), each followed by a read that
# must still return the right bytes; and the -s and socket-activation
# modes. Checks go on after a failure and all failures are listed at the end.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires_libnbd_python
requires openssl

new_store
make_random "$TMPDIR/img.raw" 4M img
make_random "$TMPDIR/odd.raw" 1000001 odd
vol=$(kiln volume import "$TMPDIR/img.raw")
snap=$(kiln snapshot create "$vol")
solo=$(kiln volume import "$TMPDIR/img.raw")
odd=$(kiln volume import "$TMPDIR/odd.raw")
blank=$(kiln volume create --size 4M)

start_nbd
main_sock=$NBD_SOCK main_pid=$NBD_PID
start_nbd --read-only
ro_sock=$NBD_SOCK ro_pid=$NBD_PID

export SOCK=$main_sock RO_SOCK=$ro_sock VOL=$vol SNAP=$snap SOLO=$solo ODD=$odd BLANK=$blank
export IMG=$TMPDIR/img.raw ODD_IMG=$TMPDIR/odd.raw KILN_STORE KILN_NBD
cat >"$TMPDIR/nbdsh-test.py" <<'EOF'
import errno
import os
import socket
import struct
import sys

import nbd

SOCK, RO_SOCK = os.environ["SOCK"], os.environ["RO_SOCK"]
VOL, SNAP, SOLO = os.environ["VOL"], os.environ["SNAP"], os.environ["SOLO"]
ODD, BLANK = os.environ["ODD"], os.environ["BLANK"]
STORE, KILN_NBD = os.environ["KILN_STORE"], os.environ["KILN_NBD"]
IMG = open(os.environ["IMG"], "rb").read()
ODD_IMG = open(os.environ["ODD_IMG"], "rb").read()
CS = 65536                      # the store's chunk size
MIB = 1024 * 1024
failures = []


def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures.append(what)


def ename(e):
    return errno.errorcode.get(e, str(e)) if e else "no errno"


def err_of(e):
    """nbd.Error.errno is a name ("EINVAL") in libnbd 1.14, a number elsewhere."""
    return getattr(errno, e.errno, 0) if isinstance(e.errno, str) else (e.errno or 0)


def expect_error(what, want, fn):
    """fn must fail with one of the errnos in want (a tuple)."""
    try:
        fn()
    except nbd.Error as e:
        check(err_of(e) in want, "%s: %s (want %s) [%s]" %
              (what, ename(err_of(e)), "/".join(map(ename, want)), e.string))
        return
    check(False, "%s: succeeded (want %s)" % (what, "/".join(map(ename, want))))


def expect_ok(what, fn):
    try:
        r = fn()
    except nbd.Error as e:
        check(False, "%s: %s [%s]" % (what, ename(err_of(e)), e.string))
        return None
    check(True, what)
    return r


def handle(name, sr=True, meta=True, strict=True, block_size=True, log=None):
    h = nbd.NBD()
    h.set_export_name(name)
    h.set_request_structured_replies(sr)
    h.set_request_block_size(block_size)
    if meta:
        h.add_meta_context("base:allocation")
    if not strict:
        h.set_strict_mode(0)
    if log is not None:
        h.set_debug(True)
        h.set_debug_callback(lambda ctx, msg: log.append(msg))
    return h


def connect(name, sock=SOCK, **kw):
    h = handle(name, **kw)
    h.connect_unix(sock)
    return h


def still_works(h, model, what, off=0, n=CS):
    """After an error the connection must still serve correct data."""
    try:
        got = h.pread(n, off)
    except nbd.Error as e:
        check(False, "read after %s: %s" % (what, e.string))
        return
    check(bytes(got) == bytes(model[off:off + n]), "read after %s returns the right bytes" % what)


def extents(h, count, offset, flags=0):
    out = []

    def cb(ctx, off, entries, err):
        if ctx == "base:allocation":
            out.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, offset, cb, flags)
    return out


def chunks(h, count, offset, flags=0):
    out, buf = [], bytearray(count)

    def cb(sub, off, status, err):
        out.append((off, len(sub), status))
        buf[off - offset:off - offset + len(sub)] = sub
        return 0
    h.pread_structured(count, offset, cb, flags)
    return sorted(out), bytes(buf)


# ====================================================================
print("--- option haggling in opt mode: LIST, INFO, LIST_META_CONTEXT, GO")
log = []
h = handle("", log=log)
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_unix(SOCK)
check(h.aio_is_negotiating(), "opt mode: still negotiating after connect")
check(h.get_protocol() == "newstyle-fixed", "protocol is %s" % h.get_protocol())
listed = {}
n = h.opt_list(lambda name, desc: listed.__setitem__(name, desc))
check(set(listed) == {VOL, SNAP, SOLO, ODD, BLANK} and n == 5,
      "opt_list lists the 4 volumes and the snapshot: %s" % sorted(listed))
check(all(listed.values()), "opt_list gives every export a description")

h.set_export_name(VOL)
expect_ok("opt_info %s" % VOL, h.opt_info)
check(h.get_size() == len(IMG), "opt_info: size %d" % h.get_size())
check(not h.is_read_only(), "opt_info: the volume is writable")
check(VOL in h.get_export_description(), "opt_info: description %r names the volume"
      % h.get_export_description())
check(h.get_canonical_export_name() == VOL, "opt_info: canonical name")
sizes = [h.get_block_size(k) for k in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)]
check(sizes == [512, CS, 32 * MIB], "opt_info: block sizes min/preferred/max %s" % sizes)
for what, fn in (("flush", h.can_flush), ("fua", h.can_fua), ("trim", h.can_trim),
                 ("zero", h.can_zero), ("fast_zero", h.can_fast_zero), ("df", h.can_df),
                 ("multi_conn", h.can_multi_conn), ("cache", h.can_cache)):
    check(fn(), "opt_info: can_%s on a volume" % what)
h.set_export_name(SNAP)
expect_ok("opt_info %s" % SNAP, h.opt_info)
check(h.is_read_only(), "opt_info: a snapshot is read-only")
check(not h.can_trim() and not h.can_zero(), "opt_info: no trim or zero on a snapshot")
h.set_export_name(ODD)
expect_ok("opt_info %s" % ODD, h.opt_info)
check(h.get_size() == len(ODD_IMG), "opt_info: odd size %d" % h.get_size())
check(h.get_block_size(nbd.SIZE_MINIMUM) == 1,
      "opt_info: minimum block size 1 for a size that is no multiple of 512")

for name in ("nope", "vol-0123456789abcdef0", "snap-0123456789abcdef0", ""):
    del log[:]
    h.set_export_name(name)
    expect_error("opt_info %r" % name, (errno.ENOENT,), h.opt_info)
    msgs = [m for m in log if "server error message" in m]
    check(name == "" or any(name in m for m in msgs),
          "opt_info %r: the server's message names the export: %s" % (name, msgs))
    check(h.aio_is_negotiating(), "opt_info %r: the session goes on after the error" % name)

h.set_export_name(VOL)
ctxs = []
n = h.opt_list_meta_context(lambda c: ctxs.append(c))
check(ctxs == ["base:allocation"] and n == 1, "opt_list_meta_context (all): %s" % ctxs)
h.clear_meta_contexts()
h.add_meta_context("base:")
ctxs = []
h.opt_list_meta_context(lambda c: ctxs.append(c))
check(ctxs == ["base:allocation"], "opt_list_meta_context 'base:': %s" % ctxs)
h.clear_meta_contexts()
h.add_meta_context("x-kiln:nothing")
ctxs = []
n = h.opt_list_meta_context(lambda c: ctxs.append(c))
check(ctxs == [] and n == 0, "opt_list_meta_context of an unknown namespace: %s" % ctxs)
h.clear_meta_contexts()
h.add_meta_context("base:allocation")
expect_ok("opt_go %s" % VOL, h.opt_go)
check(h.aio_is_ready(), "opt_go: transmission")
check(h.can_meta_context("base:allocation"), "opt_go: base:allocation negotiated")
check(bytes(h.pread(CS, 0)) == IMG[:CS], "read after opt_go")
h.shutdown()

h = handle(VOL)
h.set_opt_mode(True)
h.connect_unix(SOCK)
expect_ok("opt_abort", h.opt_abort)
check(h.aio_is_closed(), "opt_abort closes the session")

print("--- NBD_OPT_GO of unknown exports")
for name in ("nope", "snap-0123456789abcdef0"):
    log = []
    h = handle(name, log=log)
    expect_error("connect to export %r" % name, (errno.ENOENT,), lambda: h.connect_unix(SOCK))
    msgs = [m for m in log if "server error message" in m]
    check(any(name in m for m in msgs), "the server's message names %r: %s" % (name, msgs))

print("--- STARTTLS: refused, the session goes on in plain text")
log = []
h = handle(VOL, log=log)
h.set_tls(nbd.TLS_ALLOW)
expect_ok("connect with TLS_ALLOW", lambda: h.connect_unix(SOCK))
check(not h.get_tls_negotiated(), "no TLS negotiated")
check(bytes(h.pread(CS, CS)) == IMG[CS:2 * CS], "read after a refused STARTTLS")
h.shutdown()
if h.supports_tls():
    h = handle(VOL)
    h.set_tls(nbd.TLS_REQUIRE)
    expect_error("connect with TLS_REQUIRE", (errno.ENOTSUP, errno.EPROTO, errno.ECONNRESET),
                 lambda: h.connect_unix(SOCK))

# ====================================================================
print("--- transmission, structured replies")
model = bytearray(IMG)
h = connect(VOL)
check(h.get_structured_replies_negotiated(), "structured replies negotiated")
check(bytes(h.pread(len(IMG), 0)) == IMG, "read the whole volume")

data = os.urandom(CS + 1024)
h.pwrite(data, CS + 512)
model[CS + 512:CS + 512 + len(data)] = data
check(bytes(h.pread(3 * CS, 0)) == model[:3 * CS], "write across chunks, read back")
data = os.urandom(4096)
h.pwrite(data, 10 * CS, nbd.CMD_FLAG_FUA)
model[10 * CS:10 * CS + 4096] = data
check(bytes(h.pread(4096, 10 * CS)) == data, "FUA write")
expect_ok("flush", h.flush)
expect_ok("cache", lambda: h.cache(4 * CS, 0))
h.trim(CS, 20 * CS)
model[20 * CS:21 * CS] = bytes(CS)
check(bytes(h.pread(CS, 20 * CS)) == bytes(CS), "a trimmed chunk reads as zeroes")
check(extents(h, CS, 20 * CS)[0][1] & 1, "a trimmed chunk is a hole")
h.trim(512, 21 * CS + 1024, nbd.CMD_FLAG_FUA)
model[21 * CS + 1024:21 * CS + 1536] = bytes(512)
h.zero(2 * CS, 24 * CS)
model[24 * CS:26 * CS] = bytes(2 * CS)
check(bytes(h.pread(2 * CS, 24 * CS)) == bytes(2 * CS), "zero (may punch)")
h.zero(CS, 28 * CS, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
model[28 * CS:29 * CS] = bytes(CS)
check(bytes(h.pread(CS, 28 * CS)) == bytes(CS), "zero with NO_HOLE")
check(extents(h, CS, 28 * CS) == [(CS, 0)], "zero with NO_HOLE stays allocated: %s"
      % extents(h, CS, 28 * CS))
h.zero(CS, 30 * CS, nbd.CMD_FLAG_FAST_ZERO)
model[30 * CS:31 * CS] = bytes(CS)
check(bytes(h.pread(CS, 30 * CS)) == bytes(CS), "zero with FAST_ZERO")
expect_error("zero with FAST_ZERO|NO_HOLE", (errno.ENOTSUP,),
             lambda: h.zero(CS, 32 * CS, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE))
check(bytes(h.pread(CS, 32 * CS)) == model[32 * CS:33 * CS],
      "a failed fast zero leaves the data alone")
check(bytes(h.pread(len(model), 0)) == model, "the whole volume matches the model")
h.shutdown()

print("--- pipelining: many requests in flight on one connection")


def drain(h):
    while h.aio_in_flight() > 0:
        h.poll(-1)


def completed(h, cookie):
    """0, or the errno of a finished aio command."""
    try:
        h.aio_command_completed(cookie)
        return 0
    except nbd.Error as e:
        return err_of(e) or -1


h = connect(VOL, strict=False)
for sr in (True, False):
    if not sr:
        h.shutdown()
        h = connect(VOL, strict=False, sr=False, meta=False)
    base = (48 if sr else 56) * CS
    writes, reads = [], []
    for i in range(64):
        data = os.urandom(8192)
        writes.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), base + i * 8192,
                                   flags=nbd.CMD_FLAG_FUA if i % 16 == 0 else 0))
        model[base + i * 8192:base + (i + 1) * 8192] = data
        buf = nbd.Buffer(4096 + 512 * i)
        reads.append((h.aio_pread(buf, 512 * i), buf, 512 * i))
    flush = h.aio_flush()
    drain(h)
    check(all(completed(h, c) == 0 for c in writes) and completed(h, flush) == 0,
          "64 pipelined writes and a flush (structured=%s)" % sr)
    check(all(completed(h, c) == 0 and bytes(b.to_bytearray()) == bytes(model[o:o + len(b.to_bytearray())])
              for c, b, o in reads), "64 pipelined reads (structured=%s)" % sr)
    check(bytes(h.pread(64 * 8192, base)) == model[base:base + 64 * 8192],
          "the pipelined writes read back (structured=%s)" % sr)
    # bad requests in the middle of a pipeline fail alone
    size = len(model)
    good_w = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"G" * 4096)), base)
    bad_w = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"B" * 4096)), size - 2048)
    rbuf = nbd.Buffer(4096)
    good_r = h.aio_pread(rbuf, 4096)
    bad_r = h.aio_pread(nbd.Buffer(4096), size)
    good_w2 = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(b"H" * 4096)), base + 4096)
    drain(h)
    model[base:base + 4096] = b"G" * 4096
    model[base + 4096:base + 8192] = b"H" * 4096
    got = [completed(h, c) for c in (good_w, bad_w, good_r, bad_r, good_w2)]
    check(got[0] == 0 and got[1] in (errno.ENOSPC, errno.EINVAL) and got[2] == 0 and
          got[3] == errno.EINVAL and got[4] == 0,
          "errors in a pipeline hit only the bad requests: %s (structured=%s)" % (got, sr))
    check(bytes(rbuf.to_bytearray()) == model[4096:8192], "the read between the bad ones (structured=%s)" % sr)
    still_works(h, model, "a pipeline with errors", base, 8192)
h.shutdown()

print("--- large writes (the writer thread) in flight with small ones, reads and flushes")
h = connect(VOL, strict=False)
slot = 256 * 1024
for rnd in range(3):
    cookies, reads = [], []
    for i in range(len(model) // slot):
        big = os.urandom(128 * 1024 + 4096 * rnd)
        small = os.urandom(4096)
        o = i * slot
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(big)), o,
                                    flags=nbd.CMD_FLAG_FUA if i % 5 == rnd else 0))
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(small)), o + slot - 4096))
        model[o:o + len(big)] = big
        model[o + slot - 4096:o + slot] = small
        buf = nbd.Buffer(8192)
        reads.append((h.aio_pread(buf, o + 192 * 1024), buf, o + 192 * 1024))
        if i % 7 == 6:
            cookies.append(h.aio_flush())
    bad = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(MIB)), len(model) - slot)
    cookies.append(h.aio_flush())
    drain(h)
    check(all(completed(h, c) == 0 for c in cookies), "large and small writes with flushes, round %d" % rnd)
    check(completed(h, bad) in (errno.ENOSPC, errno.EINVAL), "a large write past the end fails alone, round %d" % rnd)
    check(all(completed(h, c) == 0 and bytes(b.to_bytearray()) == bytes(model[o:o + 8192])
              for c, b, o in reads), "reads beside the large writes, round %d" % rnd)
    check(bytes(h.pread(len(model), 0)) == model, "the large writes read back, round %d" % rnd)
h.shutdown()

print("--- holes: structured reads, DF, BLOCK_STATUS with and without REQ_ONE")
bmodel = bytearray(4 * MIB)
h = connect(BLANK)
data = os.urandom(CS)
h.pwrite(data, 2 * CS)
bmodel[2 * CS:3 * CS] = data
got, buf = chunks(h, 4 * CS, 0)
check(buf == bytes(bmodel[:4 * CS]), "pread_structured over holes and data: bytes")
check(sum(n for _, n, _ in got) == 4 * CS, "chunks cover the request exactly: %s" % got)
check(any(s == nbd.READ_HOLE for _, _, s in got), "a hole comes as an OFFSET_HOLE chunk: %s" % got)
check((2 * CS, CS, nbd.READ_DATA) in got, "the written chunk is one OFFSET_DATA chunk: %s" % got)
got, buf = chunks(h, 4 * CS, 0, nbd.CMD_FLAG_DF)
check(got == [(0, 4 * CS, nbd.READ_DATA)] and buf == bytes(bmodel[:4 * CS]),
      "pread_structured with DF: one data chunk: %s" % got)
ext = extents(h, 4 * MIB, 0)
check(ext == [(2 * CS, 3), (CS, 0), (4 * MIB - 3 * CS, 3)], "block_status: %s" % ext)
ext = extents(h, 4 * MIB, 0, nbd.CMD_FLAG_REQ_ONE)
check(ext == [(2 * CS, 3)], "block_status REQ_ONE: one extent: %s" % ext)
ext = extents(h, CS + 512, CS, nbd.CMD_FLAG_REQ_ONE)
check(len(ext) == 1 and ext[0][0] <= CS + 512, "block_status REQ_ONE within the request: %s" % ext)
ext = extents(h, 512, 2 * CS + 1024, nbd.CMD_FLAG_REQ_ONE)
check(ext == [(512, 0)], "block_status REQ_ONE inside a data chunk: %s" % ext)
h.shutdown()

print("--- FUA is valid on every command (proto.md: the server MUST accept it)")
h = connect(VOL, strict=False)
check(bytes(h.pread(4 * CS, 3 * CS, nbd.CMD_FLAG_DF)) == model[3 * CS:7 * CS], "pread with DF")
check(bytes(h.pread(512, 5 * CS + 512, nbd.CMD_FLAG_FUA)) == model[5 * CS + 512:5 * CS + 1024],
      "pread with FUA")
expect_ok("flush with FUA", lambda: h.flush(nbd.CMD_FLAG_FUA))
still_works(h, model, "flush with FUA")
expect_ok("cache with FUA", lambda: h.cache(CS, 0, nbd.CMD_FLAG_FUA))
still_works(h, model, "cache with FUA")
expect_ok("block_status with FUA", lambda: extents(h, CS, 0, nbd.CMD_FLAG_FUA))
still_works(h, model, "block_status with FUA")
h.shutdown()

print("--- structured replies off")
h = connect(VOL, sr=False, meta=False)
check(not h.get_structured_replies_negotiated(), "no structured replies")
check(bytes(h.pread(len(model), 0)) == model, "simple replies: the whole volume")
data = os.urandom(CS)
h.pwrite(data, 40 * CS)
model[40 * CS:41 * CS] = data
h.flush()
check(bytes(h.pread(CS, 40 * CS)) == data, "simple replies: write and read back")
h.set_strict_mode(0)
expect_error("simple replies: read past the end", (errno.EINVAL,), lambda: h.pread(CS, len(model) - 512))
still_works(h, model, "a failed simple read", 40 * CS)
expect_error("simple replies: read with DF", (errno.EINVAL,), lambda: h.pread(512, 0, nbd.CMD_FLAG_DF))
still_works(h, model, "DF without structured replies")
expect_error("simple replies: BLOCK_STATUS", (errno.EINVAL,), lambda: extents(h, CS, 0))
still_works(h, model, "BLOCK_STATUS without structured replies")
h.shutdown()

# ====================================================================
print("--- errors (strict mode off); the connection goes on after each")
size = len(model)
h = connect(VOL, strict=False)
for what, want, fn in (
        ("read past the end", (errno.EINVAL,), lambda: h.pread(1024, size - 512)),
        ("read starting past the end", (errno.EINVAL,), lambda: h.pread(512, size + 512)),
        ("read of more than 32 MiB", (errno.EINVAL,), lambda: h.pread(32 * MIB + 512, 0)),
        ("write past the end", (errno.ENOSPC, errno.EINVAL), lambda: h.pwrite(b"x" * 1024, size - 512)),
        ("write starting past the end", (errno.ENOSPC, errno.EINVAL), lambda: h.pwrite(b"x" * 512, size)),
        ("write of more than 32 MiB (proto.md: EINVAL)", (errno.EINVAL,),
         lambda: h.pwrite(b"x" * (32 * MIB + 512), 0)),
        ("trim past the end (proto.md: EINVAL)", (errno.EINVAL,), lambda: h.trim(1024, size - 512)),
        ("zero past the end", (errno.ENOSPC,), lambda: h.zero(1024, size - 512)),
        ("unaligned read (offset)", (errno.EINVAL,), lambda: h.pread(512, 100)),
        ("unaligned read (length)", (errno.EINVAL,), lambda: h.pread(100, 0)),
        ("unaligned write", (errno.EINVAL,), lambda: h.pwrite(b"x" * 512, 3)),
        ("unaligned trim", (errno.EINVAL,), lambda: h.trim(700, 0)),
        ("unaligned zero", (errno.EINVAL,), lambda: h.zero(512, 1)),
        ("read with an unknown flag (bit 7)", (errno.EINVAL,), lambda: h.pread(512, 0, 1 << 7)),
        ("read with REQ_ONE", (errno.EINVAL,), lambda: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE)),
        ("write with NO_HOLE", (errno.EINVAL,), lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_NO_HOLE)),
        ("trim with NO_HOLE", (errno.EINVAL,), lambda: h.trim(512, 0, nbd.CMD_FLAG_NO_HOLE)),
        ("flush with an unknown flag", (errno.EINVAL,), lambda: h.flush(1 << 9)),
        ("block_status with DF", (errno.EINVAL,), lambda: extents(h, 512, 0, nbd.CMD_FLAG_DF)),
        ):
    expect_error(what, want, fn)
    still_works(h, model, what)
# Zero lengths: behaviour unspecified, but the server SHOULD NOT disconnect.
for what, fn in (("zero-length read", lambda: h.pread(0, 0)),
                 ("zero-length write", lambda: h.pwrite(b"", 0)),
                 ("zero-length trim", lambda: h.trim(0, 0))):
    try:
        fn()
    except nbd.Error:
        pass
    still_works(h, model, what)
check(bytes(h.pread(size, 0)) == model, "after all the errors the volume is unchanged")
h.shutdown()

h = connect(VOL, strict=False, meta=False)
expect_error("BLOCK_STATUS without a meta context", (errno.EINVAL,), lambda: extents(h, CS, 0))
still_works(h, model, "BLOCK_STATUS without a meta context")
h.shutdown()

h = connect(VOL, strict=False, block_size=False)
check(bytes(h.pread(100, 3)) == model[3:103],
      "without block size negotiation an unaligned read is served")
h.pwrite(b"unaligned", 12345)
model[12345:12354] = b"unaligned"
check(bytes(h.pread(CS, 0)) == model[:CS], "without block size negotiation an unaligned write is served")
h.shutdown()

for name, sock, why in ((SNAP, SOCK, "a snapshot"), (VOL, RO_SOCK, "kiln-nbd --read-only")):
    h = connect(name, sock=sock, strict=False)
    check(h.is_read_only(), "%s is read-only" % why)
    smodel = IMG if name == SNAP else model
    for what, fn in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                     ("FUA write", lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FUA)),
                     ("trim", lambda: h.trim(512, 0)),
                     ("zero", lambda: h.zero(512, 0))):
        expect_error("%s to %s" % (what, why), (errno.EPERM,), fn)
        still_works(h, smodel, "%s to %s" % (what, why))
    expect_ok("flush of %s" % why, h.flush)
    check(bytes(h.pread(len(smodel), 0)) == bytes(smodel), "%s is unchanged" % why)
    h.shutdown()

print("--- odd size: minimum block 1, the last byte")
h = connect(ODD)
check(h.get_block_size(nbd.SIZE_MINIMUM) == 1, "minimum block size 1")
check(bytes(h.pread(7, len(ODD_IMG) - 7)) == ODD_IMG[-7:], "read the last 7 bytes")
h.pwrite(b"Z", len(ODD_IMG) - 1)
check(bytes(h.pread(1, len(ODD_IMG) - 1)) == b"Z", "write the last byte")
h.pwrite(ODD_IMG[-1:], len(ODD_IMG) - 1)
h.set_strict_mode(0)
expect_error("write one byte past the end", (errno.ENOSPC, errno.EINVAL), lambda: h.pwrite(b"Z", len(ODD_IMG)))
h.shutdown()

# ====================================================================
print("--- kiln-nbd -s under connect_command, and socket activation")
smodel = bytearray(IMG)
h = handle(SOLO)
h.connect_command([KILN_NBD, "-s", "--store", STORE])
check(h.get_size() == len(IMG) and not h.is_read_only(), "-s: a writable %d-byte volume" % h.get_size())
data = os.urandom(2 * CS)
h.pwrite(data, 7 * CS + 512)
smodel[7 * CS + 512:9 * CS + 512] = data
h.flush()
check(bytes(h.pread(len(smodel), 0)) == smodel, "-s: write and read back")
h.shutdown()
del h
h = handle(SOLO)
h.connect_command([KILN_NBD, "-s", "--store", STORE, "--read-only"])
check(h.is_read_only(), "-s --read-only is read-only")
check(bytes(h.pread(len(smodel), 0)) == smodel, "-s: the write of the last session persisted")
h.shutdown()
del h
h = handle(SNAP)
h.connect_systemd_socket_activation([KILN_NBD, "--socket-activation", "--store", STORE])
check(h.is_read_only(), "socket activation: the snapshot is read-only")
check(bytes(h.pread(len(IMG), 0)) == IMG, "socket activation: the snapshot's bytes")
h.shutdown()
del h
h = handle(SOLO)
h.connect_systemd_socket_activation([KILN_NBD, "--socket-activation", "--store", STORE])
check(bytes(h.pread(len(smodel), 0)) == smodel, "socket activation: the volume's bytes")
h.shutdown()
del h

# ====================================================================
print("--- raw protocol: what libnbd hides")
NBDMAGIC, IHAVEOPT, REPMAGIC = 0x4e42444d41474943, 0x49484156454F5054, 0x3e889045565a9
REP_ACK, REP_INFO = 1, 3
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN = (0x80000000 | n for n in (1, 2, 3, 6))
FLAG_SEND_DF = 1 << 7


class Raw:
    def __init__(self, cflags=1, sock=SOCK):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(sock)
        magic, opt, self.hflags = struct.unpack(">QQH", self.rx(18))
        check(magic == NBDMAGIC and opt == IHAVEOPT, "raw: greeting magic")
        self.s.sendall(struct.pack(">I", cflags))

    def rx(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("closed after %d of %d bytes" % (len(b), n))
            b += c
        return b

    def closed(self):
        try:
            return self.s.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def opt(self, o, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, o, len(data)) + data)

    def reply(self, o):
        magic, ro, t, n = struct.unpack(">QIII", self.rx(20))
        check(magic == REPMAGIC and ro == o, "raw: option reply header for option %d" % o)
        return t, self.rx(n)

    def info(self, o, name, infos=()):
        n = name.encode()
        self.opt(o, struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos)) +
                 b"".join(struct.pack(">H", i) for i in infos))
        out = []
        while True:
            t, d = self.reply(o)
            if t != REP_INFO:
                return t, d, out
            out.append((struct.unpack(">H", d[:2])[0], d[2:]))

    def request(self, typ, off, count, flags=0, cookie=0x1122334455667788, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, off, count) + payload)

    def simple(self):
        magic, err, cookie = struct.unpack(">IIQ", self.rx(16))
        check(magic == 0x67446698, "raw: simple reply magic")
        return err, cookie


r = Raw()
check(r.hflags == 3, "raw: handshake flags FIXED_NEWSTYLE|NO_ZEROES (%d)" % r.hflags)
r.opt(5)
t, msg = r.reply(5)
check(t == ERR_POLICY, "raw: STARTTLS -> NBD_REP_ERR_POLICY (0x%x) %r" % (t, msg))
r.opt(99, b"whatever")
t, msg = r.reply(99)
check(t == ERR_UNSUP, "raw: unknown option -> NBD_REP_ERR_UNSUP (0x%x)" % t)
r.opt(3, b"x")
t, msg = r.reply(3)
check(t == ERR_INVALID, "raw: NBD_OPT_LIST with data -> NBD_REP_ERR_INVALID (0x%x)" % t)
r.opt(10, struct.pack(">I", len(VOL)) + VOL.encode() + struct.pack(">I", 0))
t, msg = r.reply(10)
check(t == ERR_INVALID, "raw: SET_META_CONTEXT before STRUCTURED_REPLY -> NBD_REP_ERR_INVALID (0x%x)" % t)
t, msg, infos = r.info(7, "nope-export", (3,))
check(t == ERR_UNKNOWN, "raw: GO of an unknown export -> NBD_REP_ERR_UNKNOWN (0x%x)" % t)
check(b"nope-export" in msg, "raw: the error message names the export: %r" % msg)
check(infos == [], "raw: no NBD_REP_INFO before NBD_REP_ERR_UNKNOWN")
t, msg, infos = r.info(6, ODD, (3, 1, 2))
got = dict(infos)
check(t == REP_ACK, "raw: INFO %s acked" % ODD)
check(struct.unpack(">QH", got.get(0, b"\0" * 10)) [0] == len(ODD_IMG), "raw: INFO_EXPORT size")
check(struct.unpack(">III", got.get(3, b"\0" * 12)) == (1, CS, 32 * MIB),
      "raw: INFO_BLOCK_SIZE of the odd volume %s" % (got.get(3, b"").hex(),))
check(got.get(1) == ODD.encode(), "raw: INFO_NAME")
check(ODD.encode() in got.get(2, b""), "raw: INFO_DESCRIPTION %r" % got.get(2))
t, msg, infos = r.info(7, VOL)
got = dict(infos)
size, tflags = struct.unpack(">QH", got.get(0, b"\0" * 10))
check(t == REP_ACK and size == len(model), "raw: GO %s after the errors above" % VOL)
check(not tflags & FLAG_SEND_DF, "raw: no NBD_FLAG_SEND_DF without structured replies "
      "(proto.md: MUST leave this flag clear), flags 0x%x" % tflags)
r.request(0, 512, 512, cookie=42)
err, cookie = r.simple()
check(err == 0 and cookie == 42 and r.rx(512) == model[512:1024], "raw: simple read after GO")
r.request(9, 0, 512, cookie=43)
err, cookie = r.simple()
check(err == errno.EINVAL and cookie == 43, "raw: unknown command type 9 -> EINVAL (%d)" % err)
r.request(0, 0, 512, cookie=44)
err, cookie = r.simple()
check(err == 0 and cookie == 44 and r.rx(512) == model[:512], "raw: read after the unknown command")
r.s.sendall(struct.pack(">IHHQQI", 0x12560953, 0, 0, 45, 0, 512))
check(r.closed(), "raw: bad request magic closes the connection")

r = Raw()
r.opt(8)
t, _ = r.reply(8)
check(t == REP_ACK, "raw: STRUCTURED_REPLY acked")
t, msg, infos = r.info(7, VOL)
tflags = struct.unpack(">QH", dict(infos)[0])[1]
check(t == REP_ACK and tflags & FLAG_SEND_DF, "raw: NBD_FLAG_SEND_DF with structured replies")
r.request(2, 0, 0)
check(r.closed(), "raw: NBD_CMD_DISC closes the connection")

# Meta contexts: LIST answers with the reserved id 0; SET replaces the
# selection even when it fails, and holds only for the export it named
# (proto.md); BLOCK_STATUS without a selection gets EINVAL.
def meta_query(name, queries):
    n = name.encode()
    d = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        d += struct.pack(">I", len(q)) + q.encode()
    return d


def meta_replies(r, o):
    got = []
    while True:
        t, d = r.reply(o)
        if t != 4:                          # NBD_REP_META_CONTEXT
            return t, got
        got.append((struct.unpack(">I", d[:4])[0], d[4:]))


def block_status_error(r, cookie):
    r.request(7, 0, CS, cookie=cookie)
    magic, flags, typ, ck, n = struct.unpack(">IHHQI", r.rx(20))
    payload = r.rx(n)
    check(magic == 0x668e33ef and ck == cookie and flags & 1, "raw: one structured reply to BLOCK_STATUS")
    return struct.unpack(">I", payload[:4])[0] if typ & 0x8000 else 0


def raw_with_meta(go_name, *sets):
    r = Raw()
    r.opt(8)
    r.reply(8)
    for name in sets:
        r.opt(10, meta_query(name, ["base:allocation"]))
        meta_replies(r, 10)
    t, _, _ = r.info(7, go_name)
    check(t == REP_ACK, "raw: GO %s" % go_name)
    return r


r = Raw()
r.opt(8)
r.reply(8)
r.opt(9, meta_query(VOL, ["base:allocation"]))
t, ctxs = meta_replies(r, 9)
check(t == REP_ACK and ctxs == [(0, b"base:allocation")], "raw: LIST_META_CONTEXT ids are 0: %r" % ctxs)
r.opt(10, meta_query(VOL, ["base:allocation"]))
t, ctxs = meta_replies(r, 10)
check(t == REP_ACK and len(ctxs) == 1 and ctxs[0][0] != 0, "raw: SET_META_CONTEXT selects with an id: %r" % ctxs)
check(block_status_error(raw_with_meta(VOL, VOL), 60) == 0, "raw: BLOCK_STATUS with base:allocation set for its export")
check(block_status_error(raw_with_meta(VOL, VOL, "nope-export"), 61) == errno.EINVAL,
      "raw: a failed SET_META_CONTEXT leaves nothing selected: BLOCK_STATUS -> EINVAL")
check(block_status_error(raw_with_meta(ODD, VOL), 62) == errno.EINVAL,
      "raw: base:allocation set for %s does not hold for %s: BLOCK_STATUS -> EINVAL" % (VOL, ODD))

# An export's description is the same in LIST and in INFO.
r = Raw()
r.opt(3)
listed = {}
while True:
    t, d = r.reply(3)
    if t != 2:                              # NBD_REP_SERVER
        break
    n = struct.unpack(">I", d[:4])[0]
    listed[d[4:4 + n].decode()] = d[4 + n:]
for name in (VOL, SNAP):
    t, _, infos = r.info(6, name, (2,))
    check(dict(infos).get(2) == listed.get(name) and listed.get(name),
          "raw: description of %s in LIST %r and INFO %r" % (name, listed.get(name), dict(infos).get(2)))

for cflags, tail in ((3, 0), (1, 124)):
    r = Raw(cflags)
    r.opt(1, VOL.encode())
    b = r.rx(10 + tail)
    size, tflags = struct.unpack(">QH", b[:10])
    check(size == len(model) and tflags & 1 and b[10:] == bytes(tail),
          "raw: NBD_OPT_EXPORT_NAME with client flags %d: size, flags and %d zeroes" % (cflags, tail))
    r.request(0, CS, CS, cookie=7)
    err, cookie = r.simple()
    check(err == 0 and cookie == 7 and r.rx(CS) == model[CS:2 * CS], "raw: read after EXPORT_NAME")
    r.request(1, 3 * CS, 512, payload=b"E" * 512, cookie=8)
    err, cookie = r.simple()
    model[3 * CS:3 * CS + 512] = b"E" * 512
    check(err == 0 and cookie == 8, "raw: write after EXPORT_NAME")
    r.request(3, 0, 0, cookie=9)
    check(r.simple() == (0, 9), "raw: flush after EXPORT_NAME")
    r.request(2, 0, 0)
    check(r.closed(), "raw: NBD_CMD_DISC after EXPORT_NAME")

r = Raw()
r.opt(1, b"nope-export")
check(r.closed(), "raw: EXPORT_NAME of an unknown export closes the connection")
r = Raw()
r.opt(2)
t, _ = r.reply(2)
check(t == REP_ACK and r.closed(), "raw: ABORT is acked, then the connection closes")

# libnbd takes the NBD_OPT_EXPORT_NAME path only for a plain (not fixed)
# newstyle server: handshake flags 0 make it send client flags 0 and then
# NBD_OPT_EXPORT_NAME alone, as proto.md's newstyle negotiation allows.
h = handle(VOL, sr=False, meta=False)
h.set_handshake_flags(0)
if expect_ok("libnbd with handshake flags 0 (client flags 0, NBD_OPT_EXPORT_NAME)",
             lambda: h.connect_unix(SOCK)) is None and h.aio_is_ready():
    check(h.get_size() == len(model) and bytes(h.pread(CS, 0)) == model[:CS],
          "export-name path: size and bytes")
    h.shutdown()

h = connect(VOL)
check(bytes(h.pread(len(model), 0)) == model, "the volume matches the model at the end")
h.shutdown()

if failures:
    with open(os.environ["FAILURES"], "w") as f:
        f.write("%d check(s) failed:\n" % len(failures))
        for what in failures:
            f.write("  %s\n" % what)
    sys.exit(1)
print("all checks passed")
EOF
rc=0
FAILURES=$TMPDIR/failures.txt nbdsh_run "$TMPDIR/nbdsh-test.py" || rc=$?

stop_nbd "$ro_pid"
stop_nbd "$main_pid"
if [ "$rc" -ne 0 ]; then
	nbd_log_tail
	[ -s "$TMPDIR/failures.txt" ] || fail "the nbdsh script failed (exit $rc, see above)"
	cat "$TMPDIR/failures.txt" >&2
	fail "nbdsh checks failed"
fi
echo PASS
