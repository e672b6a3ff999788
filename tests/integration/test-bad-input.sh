#!/bin/bash
# Bad input gets a clear one-line error on stderr, a non-zero exit, nothing
# on stdout, and changes nothing that was good (DESIGN rule 5): unknown,
# malformed and other-region ids, impossible sizes, stores that are not
# stores, init over a store, bad accounts, options and arguments, files
# that cannot be images; a truncated pack leaves new data snapshottable;
# a full disk (root only: a 64 MiB ext4 on a loop device) fails the import
# with "No space left" and leaves the store verified, exportable and
# reclaimable; store recompress on it either fits or says so, changing
# nothing.
source "$(dirname "$0")/functions.sh"
requires openssl cmp sha256sum

unknown_vol=vol-0123456789abcdef0
unknown_snap=snap-0123456789abcdef0
img=$TMPDIR/img

new_store
make_random "$img" 1M
vol=$(kiln volume import "$img")
snap=$(kiln snapshot create "$vol")
evol=$(kiln volume import "$img" --region eu-west-1)
esnap=$(kiln snapshot create "$evol" --region eu-west-1)
keep=$TMPDIR/keep
echo "precious bytes" >"$keep"

fingerprint() {
	store_state "$1"
	(cd "$KILN_STORE" && find . -type f ! -name 'catalog.db*' ! -name lock -print0 | sort -z |
		xargs -0 sha256sum) >>"$1"
	sha256sum "$keep" >>"$1"
}
fingerprint "$TMPDIR/before"

# bad [VAR=VALUE]... PATTERN ARGS...: kiln ARGS (with those variables in
# its environment) fails, says PATTERN (an extended regex, any case) in one
# line on stderr, prints nothing on stdout, and changes nothing in the store
bad() {
	local envs=() pattern
	while [[ $1 == [A-Z_]*=* ]]; do
		envs+=("$1")
		shift
	done
	pattern=$1
	shift
	expect_fail env "${envs[@]}" "$KILN" "$@"
	[ "$(printf '%s\n' "$ERR" | wc -l)" -eq 1 ] || fail "more than one line on stderr: kiln $*: $ERR"
	[[ $ERR == kiln:* ]] || fail "message does not start with 'kiln:': $ERR"
	printf '%s\n' "$ERR" | grep -qiE -- "$pattern" || fail "kiln $*: message does not match /$pattern/: $ERR"
	[ ! -s "$TMPDIR/.stdout" ] || fail "kiln $* printed on stdout: $(cat "$TMPDIR/.stdout")"
	fingerprint "$TMPDIR/after"
	cmp -s "$TMPDIR/before" "$TMPDIR/after" ||
		fail "kiln $* changed the store: $(diff "$TMPDIR/before" "$TMPDIR/after")"
}

# ---- unknown ids ------------------------------------------------------------
nx="does not exist"
bad "$unknown_vol.*$nx" volume describe $unknown_vol
bad "$unknown_vol.*$nx" volume export $unknown_vol "$keep"
bad "$unknown_vol.*$nx" volume delete $unknown_vol
bad "$unknown_vol.*$nx" volume import "$img" --volume-id $unknown_vol
bad "$unknown_vol.*$nx" snapshot create $unknown_vol
bad "$unknown_snap.*$nx" snapshot describe $unknown_snap
bad "$unknown_snap.*$nx" snapshot export $unknown_snap "$keep"
bad "$unknown_snap.*$nx" snapshot delete $unknown_snap
bad "$unknown_snap.*$nx" snapshot diff "$snap" $unknown_snap
bad "$unknown_snap.*$nx" snapshot diff $unknown_snap "$snap"
bad "$unknown_snap.*$nx" volume create --snapshot-id $unknown_snap

# ---- malformed ids ----------------------------------------------------------
for id in vol-xyz vol-0123456789ABCDEF0 vol-0123456789abcdef vol-0123456789abcdef01 \
	ami-0123456789abcdef0 "$snap" "" "vol-0123456789abcdef0 "; do
	bad "invalid volume id" volume describe "$id"
	bad "invalid volume id" snapshot create "$id"
	bad "invalid volume id" volume import "$img" --volume-id "$id"
done
for id in snap-123 snap-xyz0123456789abcd ami-0123456789abcdef0 i-0123456789abcdef0 "$vol"; do
	bad "invalid snapshot id" snapshot describe "$id"
	bad "invalid snapshot id" snapshot export "$id" "$keep"
	bad "invalid snapshot id" volume create --snapshot-id "$id"
	bad "invalid snapshot id" snapshot delete "$id"
done

# ---- ids of the other region -----------------------------------------------
other="another region|other region"
bad "$vol.*($other)" volume describe "$vol" --region eu-west-1
bad "$vol.*($other)" volume export "$vol" "$keep" --region eu-west-1
bad "$vol.*($other)" volume delete "$vol" --region eu-west-1
bad "$vol.*($other)" snapshot create "$vol" --region eu-west-1
bad "$vol.*($other)" volume import "$img" --volume-id "$vol" --region eu-west-1
bad "$snap.*($other)" snapshot describe "$snap" --region eu-west-1
bad "$snap.*($other)" snapshot export "$snap" "$keep" --region eu-west-1
bad "$snap.*($other)" snapshot delete "$snap" --region eu-west-1
bad "$snap.*($other)" volume create --snapshot-id "$snap" --region eu-west-1
bad "$esnap.*($other)" snapshot diff "$esnap" "$snap"
bad "$evol.*($other)" volume describe "$evol"
bad KILN_REGION=eu-west-1 "$snap.*($other)" snapshot describe "$snap"

# ---- sizes ------------------------------------------------------------------
bad "smaller" volume create --snapshot-id "$snap" --size 512K
bad "smaller" volume create --snapshot-id "$snap" --size 1023K
for size in 0 -1 12Q huge 1.5G 0x10 "" 99999999999999999999 9999999999T 8388608T; do
	bad "invalid --size" volume create --size "$size"
	bad "invalid --size" volume create --snapshot-id "$snap" --size "$size"
done
big=$TMPDIR/big
make_random "$big" $((1024 * 1024 + 1))
bad "larger than" volume import "$big" --volume-id "$vol"

# ---- stores -----------------------------------------------------------------
mkdir "$TMPDIR/notastore"
echo "not a store" >"$TMPDIR/notastore/config"
bad "not a kiln store" volume describe --store "$TMPDIR/notastore"
bad "not a kiln store" snapshot describe --store "$TMPDIR/notastore"
bad "not a kiln store" store verify --store "$TMPDIR/notastore"
bad "not a kiln store" volume import "$img" --store "$TMPDIR/notastore"
assert_eq "$(ls "$TMPDIR/notastore")" config "files in the directory that is not a store"
bad "missing \(--store\) is not a kiln store: make one with 'kiln init'" volume describe --store "$TMPDIR/missing"
bad "not a kiln store" volume import "$img" --store "$TMPDIR/missing"
bad "not a kiln store" store gc --store "$TMPDIR/missing"
bad KILN_STORE="$TMPDIR/missing" "missing \(KILN_STORE\) is not a kiln store" volume describe
(cd "$TMPDIR" && expect_fail env -u KILN_STORE "$KILN" volume describe &&
	[[ $ERR == *"./.kiln is not a kiln store: give --store DIR or set KILN_STORE"* ]]) ||
	fail "the default store, missing: $ERR"
[ ! -e "$TMPDIR/missing" ] || fail "a command on a missing store created it"
bad "not a kiln store" volume describe --store "$img"
bad "already exists|not empty" init
bad "already exists|not empty" init --store "$KILN_STORE"
bad "already exists|not empty" init --store "$KILN_STORE/regions"
bad "already exists|not empty" init --store "$TMPDIR/notastore"
assert_eq "$(cat "$TMPDIR/notastore/config")" "not a store" "a file init refused to overwrite"
bad "region .*ap-south-1.* does not exist" volume describe --region ap-south-1
bad "invalid region" volume describe --region EU
bad "invalid region" volume describe --region ../us-east-1
bad "invalid --chunk-size" init --store "$TMPDIR/new" --chunk-size 3K
bad "invalid --chunk-size" init --store "$TMPDIR/new" --chunk-size 8M
bad "invalid --chunk-size" init --store "$TMPDIR/new" --chunk-size 0
[ ! -e "$TMPDIR/new" ] || fail "a failed init left $TMPDIR/new"

# ---- accounts -----------------------------------------------------------------
for account in 123 1234567890123 12345678901a "" -12345678901; do
	bad "account" volume describe --account "$account"
	bad "account" volume import "$img" --account "$account"
	bad "account" snapshot create "$vol" --account "$account"
done
bad KILN_ACCOUNT=123 "account" volume create --size 1M

# ---- options and arguments -----------------------------------------------
bad "unknown option.*--bogus" volume describe --bogus
bad "unknown option.*--bogus" --bogus volume describe
bad "unknown option.*-x" volume describe -x
bad "unknown option.*--volume-id" snapshot create "$vol" --volume-id "$vol"
bad "unknown command" frob
bad "unknown volume command" volume frob
bad "missing" volume
bad "missing" snapshot
bad "missing command"
bad "unknown command" ""
bad "missing.*FILE" volume import
bad "missing.*FILE" volume export "$vol"
bad "missing.*VOLUME-ID" snapshot create
bad "missing.*SNAPSHOT-B" snapshot diff "$snap"
bad "unexpected argument" volume delete "$vol" "$vol"
bad "unexpected argument" snapshot export "$snap" "$keep" extra
bad "needs a value" volume create --size
bad "needs a value" volume describe --store
bad "needs a value" volume describe --output
bad "--size|--snapshot-id" volume create
bad "takes no value" volume describe --debug=yes
bad "invalid --output" volume describe --output yaml
bad "description.*long" snapshot create "$vol" --description "$(printf 'x%.0s' {1..300})"

# ---- files that are not images -------------------------------------------
: >"$TMPDIR/empty"
bad "empty" volume import "$TMPDIR/empty"
bad "No such file" volume import "$TMPDIR/nonexistent"
bad "directory" volume import "$TMPDIR"
bad "not a regular file" volume import /dev/null
# a FIFO is refused at once (opening one would wait for a writer)
mkfifo "$TMPDIR/fifo"
expect_fail timeout 10 "$KILN" volume import "$TMPDIR/fifo"
[[ $ERR == *"fifo is not a regular file or a block device"* ]] || fail "import of a FIFO: $ERR"
bad "snapshot export|$TMPDIR/nodir" snapshot export "$snap" "$TMPDIR/nodir/out.img"
bad "volume export|$TMPDIR/nodir" volume export "$vol" "$TMPDIR/nodir/out.img"
bad "Is a directory|directory" snapshot export "$snap" "$TMPDIR"

# ---- a volume another process has open for writing ---------------------
# a stand-in for that process: a lock on the volume's map, the kind the
# engine takes (POSIX and open-file-description locks conflict)
coproc HOLDER {
	/usr/bin/python3 -c '
import fcntl, sys
f = open(sys.argv[1], "r+b")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()' "$KILN_STORE/regions/us-east-1/volumes/$vol.map"
}
# (bash forgets HOLDER and HOLDER_PID once the coprocess is gone)
holder_pid=$HOLDER_PID holder_in=${HOLDER[1]}
read -r line <&"${HOLDER[0]}"
assert_eq "$line" locked "the lock holder"
assert_eq "$(vol_field "$vol" State)" in-use "State of a volume open elsewhere"
fingerprint "$TMPDIR/before"
bad "in use" volume import "$img" --volume-id "$vol"
bad "in use" snapshot create "$vol"
bad "in use" volume delete "$vol"
cmp_volume "$vol" "$img"                 # reading is fine
exec {holder_in}>&-
wait "$holder_pid" || true
assert_eq "$(vol_field "$vol" State)" available "State of a volume closed elsewhere"
fingerprint "$TMPDIR/before"

# and after all that, the good is still good
cmp_snapshot "$snap" "$img"
cmp_volume "$vol" "$img"
KILN_REGION=eu-west-1 cmp_snapshot "$esnap" "$img"
verify_clean

# ---- a truncated pack: new data can still be snapshotted -----------------
new_store
cs=65536
make_random "$img" $((16 * cs)) t1
vol=$(kiln volume import "$img")
snap=$(kiln snapshot create "$vol")
pack=$KILN_STORE/regions/us-east-1/packs/00000001.pack
truncate -s -1000 "$pack"
expect_fail kiln store verify
grep -q "$snap" "$TMPDIR/.stdout" || fail "verify does not name $snap: $(cat "$TMPDIR/.stdout")"
expect_fail kiln snapshot export "$snap" "$TMPDIR/out.img"
new=$TMPDIR/new.img
make_random "$new" $((16 * cs)) t2               # every chunk new
kiln volume import "$new" --volume-id "$vol" --output json >"$TMPDIR/import.json"
assert_eq "$(json "$TMPDIR/import.json" "j['ChangedChunks']")" 16 "chunks changed over a truncated pack"
snap2=$(kiln snapshot create "$vol")
assert_eq "$(snap_field "$snap2" State)" completed "state of a snapshot after a pack was truncated"
cmp_snapshot "$snap2" "$new"
make_random "$TMPDIR/other.img" $((3 * cs)) t3
vol2=$(kiln volume import "$TMPDIR/other.img")
snap3=$(kiln snapshot create "$vol2")
cmp_snapshot "$snap3" "$TMPDIR/other.img"
expect_fail kiln store verify
grep 'corrupt chunk' "$TMPDIR/.stdout" | grep -qE "$snap2|$snap3" &&
	fail "verify blames a snapshot of new data: $(cat "$TMPDIR/.stdout")"

# ---- a full disk ------------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
	echo "the full-disk test needs root"
	exit 77
fi
requires losetup mkfs.ext4 mount umount df
disk=$TMPDIR/disk.img
mnt=$TMPDIR/mnt
truncate -s 64M "$disk"
mkfs.ext4 -q -F "$disk"
mkdir "$mnt"
loop=$(losetup -f --show "$disk") || { echo "no loop device"; exit 77; }
cleanup_fn losetup -d "$loop"
mount "$loop" "$mnt" || { echo "cannot mount $loop"; exit 77; }
cleanup_fn umount "$mnt"

KILN_STORE=$mnt/store
kiln init 2>/dev/null
small=$TMPDIR/small.img
make_random "$small" 8M small
vol=$(kiln volume import "$small")
snap=$(kiln snapshot create "$vol")
huge=$TMPDIR/huge.img
make_random "$huge" 100M huge                       # more than the free space
used() { df -B1 --output=used "$mnt" | tail -n 1; }
fingerprint "$TMPDIR/before"
used0=$(used)

bad "No space left" volume import "$huge"
verify_clean
cmp_snapshot "$snap" "$small"
cmp_volume "$vol" "$small"
store_state "$TMPDIR/before"
kiln store gc --output json >"$TMPDIR/gc.json"
assert_eq "$(json "$TMPDIR/gc.json" "j['ChunksRemoved']")" 0 "chunks gc removed after the failed import"
store_state "$TMPDIR/after"
cmp -s "$TMPDIR/before" "$TMPDIR/after" ||
	fail "gc after a failed import changed the store: $(diff "$TMPDIR/before" "$TMPDIR/after")"
# what the import wrote is gone (the catalog may have grown a little)
[ "$(used)" -le $((used0 + 512 * 1024)) ] || fail "disk use $used0 before the import, $(used) after it and gc"

# into an existing volume: the volume takes what fits, the snapshot of it
# fails for want of space, and everything before stays good
snapx=$(kiln snapshot create "$vol")
big=$(kiln volume create --size 100M)
expect_fail kiln volume import "$huge" --volume-id "$big"
[[ $ERR == *"No space left"* ]] || fail "import --volume-id on a full disk: $ERR"
expect_fail kiln snapshot create "$big"
[[ $ERR == *"No space left"* ]] || fail "snapshot create on a full disk: $ERR"
assert_eq "$(snapshot_ids)" "$snap"$'\n'"$snapx" "snapshots after failing for want of space"
verify_clean
cmp_snapshot "$snap" "$small"
# recompress needs room for the packs it writes before it deletes the
# old ones: on a full disk it either fits (the reserve given back) or
# fails saying so, and in both cases every snapshot stays whole
(cd "$KILN_STORE/regions/us-east-1" && sha256sum index packs/*) >"$TMPDIR/packs.before"
store_state "$TMPDIR/before"
rc=0
kiln store recompress --region us-east-1 >/dev/null 2>"$TMPDIR/.stderr" || rc=$?
if [ $rc -eq 0 ]; then
	echo "recompress on a full disk: done (it fit)"
	kiln store recompress --region us-east-1 --output json >"$TMPDIR/rc.json"
	assert_eq "$(json "$TMPDIR/rc.json" "j['ChunksRecompressed']")" 0 "chunks left to recompress after it fit"
else
	[[ $(cat "$TMPDIR/.stderr") == *"No space left"* ]] ||
		fail "recompress on a full disk: exit $rc: $(cat "$TMPDIR/.stderr")"
	echo "recompress on a full disk: refused: $(cat "$TMPDIR/.stderr")"
	(cd "$KILN_STORE/regions/us-east-1" && sha256sum index packs/*) >"$TMPDIR/packs.after"
	cmp -s "$TMPDIR/packs.before" "$TMPDIR/packs.after" || fail "a failed recompress changed the packs"
	store_state "$TMPDIR/after"
	cmp -s "$TMPDIR/before" "$TMPDIR/after" || fail "a failed recompress changed the store"
fi
verify_clean
cmp_snapshot "$snap" "$small"
cmp_snapshot "$snapx" "$small"
# the way out of a full disk: delete what filled it, collect garbage
rc=0
kiln snapshot delete "$snapx" 2>"$TMPDIR/.stderr" || rc=$?
check_eq "$rc $(cat "$TMPDIR/.stderr")" "0 " "snapshot delete on a full disk"
rc=0
kiln store gc 2>"$TMPDIR/.stderr" >/dev/null || rc=$?
check_eq "$rc $(cat "$TMPDIR/.stderr")" "0 " "store gc on a full disk"
if ! kiln volume delete "$big" 2>"$TMPDIR/.stderr"; then
	check_eq "$(cat "$TMPDIR/.stderr")" "" "volume delete on a full disk"
	# free the space by hand, to see what else breaks
	truncate -s 0 "$KILN_STORE/regions/us-east-1/volumes/$big.data"
	kiln volume delete "$big"
fi
kiln store gc >/dev/null
[ "$(used)" -le $((used0 + 512 * 1024)) ] || fail "disk use $used0 at first, $(used) after deleting the volume and gc"
# and the store works again
make_random "$TMPDIR/after.img" 4M after
vol2=$(kiln volume import "$TMPDIR/after.img")
snap2=$(kiln snapshot create "$vol2")
cmp_snapshot "$snap2" "$TMPDIR/after.img"
cmp_snapshot "$snap" "$small"
verify_clean

# block devices: one larger than the volume is refused with both sizes;
# one smaller than the volume is not written at all
make_random "$TMPDIR/dev2m.img" 2M dev2m
make_random "$TMPDIR/dev512k.img" 512K dev512k
cp "$TMPDIR/dev512k.img" "$TMPDIR/dev512k.orig"
dev2m=$(losetup -f --show "$TMPDIR/dev2m.img") || fail "losetup"
cleanup_fn losetup -d "$dev2m"
dev512k=$(losetup -f --show "$TMPDIR/dev512k.img") || fail "losetup"
cleanup_fn losetup -d "$dev512k"
small1m=$(kiln volume create --size 1M)
expect_fail kiln volume import "$dev2m" --volume-id "$small1m"
[[ $ERR == *"(2097152 bytes) is larger than volume $small1m (1048576 bytes)"* ]] || fail "a 2 MiB device into 1 MiB: $ERR"
expect_fail kiln volume export "$small1m" "$dev512k"
[[ $ERR == *"smaller than the volume; nothing was written"* ]] || fail "export to a 512 KiB device: $ERR"
losetup -d "$dev512k"
cmp "$TMPDIR/dev512k.img" "$TMPDIR/dev512k.orig" || fail "a refused export wrote to the device"
kiln volume delete "$small1m"

# a disk filled from outside the store, to the last block: the catalog
# cannot even open without the reserve, and with it reading, deleting and
# gc still work
fallocate -l "$(df -B1 --output=avail "$mnt" | tail -n 1)" "$mnt/fill" 2>/dev/null || true
dd if=/dev/zero of="$mnt/fill2" bs=4k 2>/dev/null || true      # root's reserved blocks too
[ "$(df -B1 --output=avail "$mnt" | tail -n 1)" -lt 65536 ] || fail "the disk did not fill: $(df -h "$mnt")"
assert_eq "$(kiln snapshot describe "$snap" --output json | json /dev/stdin "j['Snapshots'][0]['State']")" completed \
	"snapshot describe on a disk filled to the last block"
cmp_snapshot "$snap" "$small"
rc=0
kiln snapshot delete "$snap2" 2>"$TMPDIR/.stderr" || rc=$?
check_eq "$rc $(cat "$TMPDIR/.stderr")" "0 " "snapshot delete on a disk filled to the last block"
rc=0
kiln volume delete "$vol2" 2>"$TMPDIR/.stderr" || rc=$?
check_eq "$rc $(cat "$TMPDIR/.stderr")" "0 " "volume delete on a disk filled to the last block"
rc=0
kiln store gc >/dev/null 2>"$TMPDIR/.stderr" || rc=$?
check_eq "$rc $(cat "$TMPDIR/.stderr")" "0 " "store gc on a disk filled to the last block"
expect_fail kiln volume import "$TMPDIR/after.img"
[[ $ERR == *"No space left"* ]] || fail "import on a disk filled to the last block: $ERR"
rm -f "$mnt/fill" "$mnt/fill2"
verify_clean
cmp_snapshot "$snap" "$small"
finish
