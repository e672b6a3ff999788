#!/bin/bash
# kiln-nbd with the stock clients: nbdinfo (--list, --map, --json, --can,
# --is), nbdcopy both ways, qemu-img (compare, convert to qcow2 and back)
# and qemu-io (pattern writes and reads, discard, write -z, aio writes with
# FUA then aio_flush). Every step checks bytes against a local model file.
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/nbd-functions.sh"
requires openssl cmp nbdinfo nbdcopy qemu-img qemu-io
requires_libnbd_python

new_store
size=$((6 * 1024 * 1024 + 5 * 512))     # not a whole number of 64 KiB chunks
img=$TMPDIR/img.raw
make_mixed "$img" "$size"
imported=$(kiln volume import "$img")
snap=$(kiln snapshot create "$imported")
blank=$(kiln volume create --size 8M)
copy=$(kiln volume create --size 8M)
assert_id vol "$imported"
assert_id snap "$snap"

start_nbd

# ---- nbdinfo --list: every volume and completed snapshot, nothing else
nbdinfo --list "$(nbd_uri "")" >"$TMPDIR/list.txt"
cat "$TMPDIR/list.txt"
for id in "$imported" "$snap" "$blank" "$copy"; do
	grep -q "^export=\"$id\":" "$TMPDIR/list.txt" || fail "nbdinfo --list does not list $id"
done
nbdinfo --list --json "$(nbd_uri "")" >"$TMPDIR/list.json"
assert_eq "$(json "$TMPDIR/list.json" "' '.join(sorted(e['export-name'] for e in j['exports']))")" \
	"$(printf '%s\n' "$imported" "$snap" "$blank" "$copy" | sort | tr '\n' ' ' | sed 's/ $//')" \
	"exports in nbdinfo --list --json"
assert_eq "$(json "$TMPDIR/list.json" "[e['is_read_only'] for e in j['exports'] if e['export-name'] == '$snap'][0]")" \
	True "is_read_only of $snap in --list --json"
assert_eq "$(json "$TMPDIR/list.json" "[e['export-size'] for e in j['exports'] if e['export-name'] == '$imported'][0]")" \
	"$size" "export-size of $imported in --list --json"

# ---- nbdinfo --json on one export: it parses and says what we serve
nbdinfo --json "$(nbd_uri "$blank")" >"$TMPDIR/blank.json"
assert_eq "$(json "$TMPDIR/blank.json" "j['exports'][0]['export-size']")" 8388608 "export-size of $blank"
assert_eq "$(json "$TMPDIR/blank.json" "j['exports'][0]['is_read_only']")" False "is_read_only of $blank"
assert_eq "$(json "$TMPDIR/blank.json" "j['exports'][0]['block_size_minimum']")" 512 "block_size_minimum of $blank"
assert_eq "$(json "$TMPDIR/blank.json" "j['exports'][0]['block_size_maximum']")" 33554432 "block_size_maximum of $blank"
assert_eq "$(json "$TMPDIR/blank.json" "'base:allocation' in j['exports'][0]['contexts']")" True "base:allocation offered"

# ---- nbdinfo --can / --is: exit 0 for true, 2 for false
can() { # URI WHAT WANT(0|2)
	local rc=0
	nbdinfo "$2" "$3" "$1" || rc=$?
	assert_eq "$rc" "$4" "nbdinfo $2 $3 on $1"
}
for what in write trim zero fast-zero fua multi-conn flush cache df; do
	can "$(nbd_uri "$blank")" --can "$what" 0
done
can "$(nbd_uri "$blank")" --is read-only 2
can "$(nbd_uri "$snap")" --is read-only 0
for what in write trim zero; do
	can "$(nbd_uri "$snap")" --can "$what" 2
done
can "$(nbd_uri "$snap")" --can flush 0

# ---- nbdinfo --map: a blank volume is one hole; written chunks are data
map() { # URI: "offset length type" lines
	nbdinfo --map "$1" | awk '{ print $1, $2, $3 }'
}
assert_eq "$(map "$(nbd_uri "$blank")")" "0 8388608 3" "map of blank $blank"
nbdsh -u "$(nbd_uri "$blank")" -c 'h.pwrite(b"\xa5" * 65536, 1048576)' -c 'h.pwrite(b"\x5a" * 512, 4194304 + 512)'
assert_eq "$(map "$(nbd_uri "$blank")" | tr '\n' ';')" \
	"0 1048576 3;1048576 65536 0;1114112 3080192 3;4194304 65536 0;4259840 4128768 3;" \
	"map of $blank after two writes"

# ---- nbdcopy: file -> volume -> file, snapshot -> file
nbdcopy "$img" "$(nbd_uri "$copy")"
nbdcopy "$(nbd_uri "$copy")" "$TMPDIR/copy.raw"
cp "$img" "$TMPDIR/want-copy.raw"
truncate -s 8M "$TMPDIR/want-copy.raw"
cmp "$TMPDIR/copy.raw" "$TMPDIR/want-copy.raw" || fail "nbdcopy file -> $copy -> file changed bytes"
nbdcopy "$(nbd_uri "$snap")" "$TMPDIR/snap.raw"
cmp "$TMPDIR/snap.raw" "$img" || fail "nbdcopy of snapshot $snap differs from the imported image"
nbdcopy "$(nbd_uri "$imported")" "$TMPDIR/imported.raw"
cmp "$TMPDIR/imported.raw" "$img" || fail "nbdcopy of volume $imported differs from the imported image"

# ---- qemu-img: compare, convert to qcow2 and back into another volume
qemu-img compare -f raw -F raw "$img" "$(nbd_uri "$snap")" || fail "qemu-img compare: image vs $snap"
qemu-img compare -f raw -F raw "$(nbd_uri "$imported")" "$(nbd_uri "$snap")" ||
	fail "qemu-img compare: $imported vs $snap"
rc=0
qemu-img compare -q -f raw -F raw "$(nbd_uri "$blank")" "$(nbd_uri "$copy")" || rc=$?
assert_eq "$rc" 1 "qemu-img compare of two different volumes (1 = they differ)"
qemu-img convert -f raw -O qcow2 "$(nbd_uri "$imported")" "$TMPDIR/img.qcow2"
back=$(kiln volume create --size "$(((size + 1023) / 1024))K")
# the daemon serves volumes made after it started
qemu-img convert -n -f qcow2 -O raw "$TMPDIR/img.qcow2" "$(nbd_uri "$back")"
qemu-img compare -f raw -F raw "$(nbd_uri "$back")" "$img" || fail "qcow2 round trip through $back"
qemu-img compare -f qcow2 -F raw "$TMPDIR/img.qcow2" "$(nbd_uri "$snap")" || fail "qcow2 vs $snap"

# ---- qemu-io: patterns, discard, write -z, aio writes with FUA
model=$TMPDIR/model.raw
cp "$TMPDIR/want-copy.raw" "$model"
pattern() { # OFFSET LENGTH BYTE: the same change to the model
	head -c "$2" /dev/zero | tr '\0' "\\$(printf '%03o' "$3")" |
		dd of="$model" bs=64K seek="$1" oflag=seek_bytes conv=notrunc status=none
}
qio() { # qemu-io commands; fails on any failed command or pattern
	local args=() c
	for c in "$@"; do args+=(-c "$c"); done
	qemu-io -f raw "${args[@]}" "$(nbd_uri "$copy")" >"$TMPDIR/qio.out" 2>&1 ||
		{ cat "$TMPDIR/qio.out"; fail "qemu-io $*"; }
	! grep -q "Pattern verification failed" "$TMPDIR/qio.out" || { cat "$TMPDIR/qio.out"; fail "qemu-io $*"; }
}
qio "write -P 0xab 0 64k" "read -P 0xab 0 64k" "write -P 0x11 100k 3k" "read -P 0x11 100k 3k"
pattern 0 65536 0xab
pattern $((100 * 1024)) 3072 0x11
qio "discard 1M 128k" "read -P 0 1M 128k"
pattern $((1024 * 1024)) $((128 * 1024)) 0
qio "write -z 2M 64k" "read -P 0 2M 64k" "write -z -u 2560k 4k" "read -P 0 2560k 4k"
pattern $((2 * 1024 * 1024)) 65536 0
pattern $((2560 * 1024)) 4096 0
qio "aio_write -f -P 0xcd 3M 64k" "aio_write -f -P 0xce 3136k 4k" "aio_write -P 0xcf 4M 512" \
	"aio_flush" "read -P 0xcd 3M 64k" "read -P 0xce 3136k 4k" "read -P 0xcf 4M 512"
pattern $((3 * 1024 * 1024)) 65536 0xcd
pattern $((3136 * 1024)) 4096 0xce
pattern $((4 * 1024 * 1024)) 512 0xcf
# a pattern check that must fail, so we know qemu-io's checks bite
if qemu-io -f raw -c "read -P 0xab 0 64k" -c "read -P 0xac 0 64k" "$(nbd_uri "$copy")" \
	>"$TMPDIR/qio.out" 2>&1 && ! grep -q "Pattern verification failed" "$TMPDIR/qio.out"; then
	fail "qemu-io read -P with a wrong pattern did not fail"
fi
nbdcopy "$(nbd_uri "$copy")" "$TMPDIR/copy2.raw"
cmp "$TMPDIR/copy2.raw" "$model" || fail "$copy after qemu-io differs from the model"
qemu-img compare -f raw -F raw "$model" "$(nbd_uri "$copy")" || fail "qemu-img compare: model vs $copy"

stop_nbd
# the daemon flushed and let go: the tool sees the same bytes
cmp_volume "$copy" "$model"
cmp_snapshot "$snap" "$img"
echo PASS
