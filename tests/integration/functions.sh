# Shared helpers for the integration tests: source it first.
#   requires CMD...      skip (exit 77) unless every command exists
#   cleanup_fn CMD...    run CMD when the test exits, whatever happens
#   new_store [ARGS]     a fresh store in $TMPDIR; sets KILN_STORE
#   kiln ARGS            the kiln binary under test
#   fail MSG             print MSG and exit 1
#   expect_fail CMD...   CMD must exit non-zero and say something on stderr;
#                        its stderr is left in $ERR
#   make_random F SIZE, make_sparse F SIZE, make_mixed F SIZE
#   json FILE EXPR       evaluate a python expression on parsed JSON (as j)
set -euo pipefail

# python3-libnbd and friends live in Debian's python, not in a pyenv one.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
# sort order and error messages (strerror) the same everywhere
export LC_ALL=C
: "${KILN:?KILN must name the kiln binary}"

TMPDIR=$(mktemp -d /tmp/kiln-test.XXXXXX)
export TMPDIR
_cleanups=()

cleanup_fn() {
	_cleanups+=("$*")
}

_run_cleanups() {
	local rc=$?
	local i
	for ((i = ${#_cleanups[@]} - 1; i >= 0; i--)); do
		eval "${_cleanups[$i]}" || true
	done
	rm -rf "$TMPDIR"
	exit $rc
}
trap _run_cleanups EXIT

requires() {
	local c
	for c in "$@"; do
		if ! command -v "$c" >/dev/null 2>&1; then
			echo "requires $c: not found"
			exit 77
		fi
	done
}

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

kiln() {
	"$KILN" "$@"
}

new_store() {
	KILN_STORE=$TMPDIR/store
	export KILN_STORE
	rm -rf "$KILN_STORE"
	kiln init "$@" 2>/dev/null
}

ERR=""
expect_fail() {
	local errf=$TMPDIR/.stderr rc=0
	"$@" >"$TMPDIR/.stdout" 2>"$errf" || rc=$?
	ERR=$(cat "$errf")
	[ "$rc" -ne 0 ] || fail "expected failure, got success: $*"
	[ -n "$ERR" ] || fail "failed without a message on stderr: $*"
	echo "ok (exit $rc): $* -> $ERR"
}

# Deterministic pseudo-random bytes: the same seed gives the same file.
# openssl exits 1 when head closes the pipe: under pipefail only head's
# status may count.
_prng() { # SEED BYTES
	{ openssl enc -aes-128-ctr -nosalt -pass "pass:$1" -pbkdf2 </dev/zero 2>/dev/null || true; } |
		head -c "$2"
}

# A size in bytes: "5M" and "5242880" both work (K, M, G are 1024-based).
_bytes() {
	numfmt --from=iec "$1"
}

make_random() { # FILE SIZE [SEED]
	_prng "${3:-random}" "$(_bytes "$2")" >"$1"
}

make_sparse() { # FILE SIZE: holes with a few islands of data, all inside SIZE
	local size off n
	size=$(_bytes "$2")
	rm -f "$1"
	truncate -s "$size" "$1"
	for off in 0 $((size / 3)) $((size / 2 + 12345)); do
		[ "$off" -lt "$size" ] || continue
		n=$((size - off < 5000 ? size - off : 5000))
		_prng "island$off" "$n" | dd of="$1" bs=64K seek="$off" oflag=seek_bytes \
			conv=notrunc status=none
	done
}

make_mixed() { # FILE SIZE: random, zero, text-like and repeated runs of 256 KiB
	local size step=$((256 * 1024)) off=0 i=0 n
	size=$(_bytes "$2")
	rm -f "$1"
	truncate -s "$size" "$1"
	while [ $off -lt "$size" ]; do
		n=$((size - off < step ? size - off : step))
		case $((i % 4)) in
		0) _prng "mixed$i" "$n" | dd of="$1" bs=64K seek="$off" oflag=seek_bytes conv=notrunc status=none ;;
		1) ;; # zeroes
		2) { yes "kiln mixed line $i" || true; } | head -c "$n" |
			dd of="$1" bs=64K seek="$off" oflag=seek_bytes conv=notrunc status=none ;;
		3) _prng "mixed0" "$n" | dd of="$1" bs=64K seek="$off" oflag=seek_bytes conv=notrunc status=none ;;
		esac
		off=$((off + step))
		i=$((i + 1))
	done
}

json() { # FILE EXPR
	/usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

# ---- kiln helpers ---------------------------------------------------
#   assert_eq GOT WANT WHAT      fail unless GOT = WANT
#   check_eq GOT WANT WHAT       the same, but the test goes on (to see what
#                                else breaks) and fails at `finish`
#   finish                       exit 1 after a failed check_eq, else PASS
#   assert_id vol|snap ID        fail unless ID is that kind of id
#   stat_field FIELD [REGION]    a field of `kiln store stats --output json`
#   snap_field SNAP FIELD        a field of `kiln snapshot describe SNAP`
#   vol_field VOL FIELD          a field of `kiln volume describe VOL`
#   snapshot_ids                 completed and other snapshots, one a line
#   cmp_snapshot SNAP FILE       export SNAP, compare with FILE
#   cmp_volume VOL FILE          export VOL, compare with FILE
#   overwrite FILE OFF LEN SEED  replace LEN bytes at OFF with random ones
#   expect_killed CMD...         CMD must die of SIGKILL (exit 137)
#   verify_clean                 `kiln store verify` exits 0, finds nothing
#   store_state FILE             stats and describe output, to compare later
#   flip_byte FILE OFFSET        invert the bits of one byte in place
#   hex_at FILE OFFSET LENGTH    those bytes of FILE in lowercase hex

assert_eq() { # GOT WANT WHAT
	[ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
}

_checks_failed=0
check_eq() { # GOT WANT WHAT
	if [ "$1" != "$2" ]; then
		echo "FAIL: $3: expected '$2', got '$1'" >&2
		_checks_failed=$((_checks_failed + 1))
	fi
}

finish() {
	[ "$_checks_failed" -eq 0 ] || fail "$_checks_failed check(s) failed (see above)"
	echo PASS
}

assert_id() { # vol|snap ID
	[[ $2 =~ ^$1-[0-9a-f]{17}$ ]] || fail "not a $1 id: '$2'"
}

stat_field() { # FIELD [REGION]
	kiln store stats --output json --region "${2:-us-east-1}" >"$TMPDIR/.stats.json"
	json "$TMPDIR/.stats.json" "j['Regions'][0]['$1']"
}

snap_field() { # SNAP FIELD
	kiln snapshot describe "$1" --output json >"$TMPDIR/.snap.json"
	json "$TMPDIR/.snap.json" "j['Snapshots'][0]['$2']"
}

vol_field() { # VOL FIELD
	kiln volume describe "$1" --output json >"$TMPDIR/.vol.json"
	json "$TMPDIR/.vol.json" "j['Volumes'][0]['$2']"
}

snapshot_ids() {
	kiln snapshot describe --output json >"$TMPDIR/.snaps.json"
	json "$TMPDIR/.snaps.json" "'\\n'.join(s['SnapshotId'] for s in j['Snapshots'])"
}

cmp_snapshot() { # SNAP FILE
	rm -f "$TMPDIR/.export"
	kiln snapshot export "$1" "$TMPDIR/.export" || fail "snapshot export $1 failed"
	cmp "$TMPDIR/.export" "$2" || fail "snapshot $1 differs from $2"
	rm -f "$TMPDIR/.export"
}

cmp_volume() { # VOL FILE
	rm -f "$TMPDIR/.export"
	kiln volume export "$1" "$TMPDIR/.export" || fail "volume export $1 failed"
	cmp "$TMPDIR/.export" "$2" || fail "volume $1 differs from $2"
	rm -f "$TMPDIR/.export"
}

overwrite() { # FILE OFFSET LENGTH SEED
	_prng "$4" "$3" | dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none
}

expect_killed() { # CMD...
	local rc=0
	"$@" >"$TMPDIR/.stdout" 2>"$TMPDIR/.stderr" || rc=$?
	[ "$rc" -eq 137 ] || fail "expected death by SIGKILL (137), got exit $rc: $* ($(cat "$TMPDIR/.stderr"))"
}

verify_clean() {
	local rc=0
	kiln store verify --output json >"$TMPDIR/.verify.json" 2>"$TMPDIR/.verify.err" || rc=$?
	[ "$rc" -eq 0 ] || fail "store verify exit $rc: $(cat "$TMPDIR/.verify.err" "$TMPDIR/.verify.json")"
	[ "$(json "$TMPDIR/.verify.json" "(j['CorruptChunks'], j['BadManifests'], j['Problems'])")" = "(0, 0, [])" ] ||
		fail "store verify: $(cat "$TMPDIR/.verify.json")"
}

store_state() { # FILE
	{
		kiln store stats --output json
		kiln volume describe --output json --region us-east-1
		kiln snapshot describe --output json --region us-east-1
		kiln volume describe --output json --region eu-west-1
		kiln snapshot describe --output json --region eu-west-1
	} >"$1"
}

flip_byte() { # FILE OFFSET
	/usr/bin/python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]))
    b = f.read(1)
    assert len(b) == 1, "offset past the end"
    f.seek(int(sys.argv[2]))
    f.write(bytes([b[0] ^ 0xff]))' "$1" "$2"
}

hex_at() { # FILE OFFSET LENGTH
	xxd -p -s "$2" -l "$3" "$1" | tr -d '\n'
}
