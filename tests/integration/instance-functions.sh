# Helpers for the instance tests: source functions.sh and nbd-functions.sh
# first, then this.
#   requires_fixtures        build (once) or find the cached fixture disks;
#                            sets FIXTURES (KILN_FIXTURES, default
#                            tests/data-cache); skip (77) if they cannot be made
#   requires_qemu            skip (77) without qemu-system-x86_64
#   region_nbd_cleanup REGION...
#                            at exit, stop the kiln-nbd that `kiln instance`
#                            started for REGION (its pidfile in the store):
#                            SIGTERM, and the test fails if it still runs 10 s
#                            later. Call it right after new_store, so that it
#                            runs after every other hook (mounts, clients).
#   stop_region_nbd REGION   the same, now; fail unless it exits
#   region_nbd_pid REGION    the daemon's pid from its pidfile ("" if none)
#   region_sock REGION       $KILN_STORE/regions/REGION/nbd.sock
#   dev_uri INSTANCE [DEV] [REGION]
#                            nbd+unix:///INSTANCE/DEV?socket=… (DEV xvda)
#   make_image FILE NAME [ARGS]
#                            import FILE, snapshot it, register it as NAME
#                            (root /dev/xvda; ARGS go to image register);
#                            sets IMG_VOL, IMG_SNAP, IMG_AMI
#   instance_json INSTANCE [REGION]
#                            `kiln instance describe --output json` of it into
#                            $TMPDIR/.inst.json (fails if describe fails)
#   instance_devices INSTANCE [REGION]
#                            one line per device: NAME VOLUME KIND DOT, KIND
#                            Ebs or InstanceStore, DOT True or False
#   instance_volume INSTANCE DEV [REGION]
#                            the volume behind DEV (e.g. /dev/xvda)
#   volume_exists VOL [REGION]
#                            true while `kiln volume describe VOL` knows it
#   volume_count [REGION]    how many volumes the region holds
#   assert_zero_from FILE OFFSET
#                            every byte of FILE from OFFSET on is zero (holes
#                            are skipped with SEEK_DATA, data is read)
#   cmp_device URI REF SIZE  nbdcopy the export URI to a file: it must be SIZE
#                            bytes, begin with REF and be zero after it
#   boot_instance INSTANCE [REGION]
#                            `kiln instance boot --expect KILN-BOOT-OK
#                            --timeout 60`; fails unless it exits 0 and the
#                            marker is in what it printed; sets BOOT_SECS
#   now_ns                   nanoseconds since the epoch

FIXTURES=${KILN_FIXTURES:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/tests/data-cache}
BOOT_MARKER=KILN-BOOT-OK

requires_fixtures() {
	local make
	make=$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures" && pwd)/make-disks.sh
	if ! "$make" "$FIXTURES" >"$TMPDIR/.make-disks.log" 2>&1; then
		echo "requires the fixture disks: $make $FIXTURES failed: $(tail -n 1 "$TMPDIR/.make-disks.log")"
		exit 77
	fi
	[ -s "$FIXTURES/boot-bios.raw" ] || fail "no $FIXTURES/boot-bios.raw after make-disks.sh"
}

requires_qemu() {
	requires qemu-system-x86_64
}

now_ns() {
	date +%s%N
}

region_sock() { # REGION
	echo "$KILN_STORE/regions/$1/nbd.sock"
}

region_nbd_pid() { # REGION
	cat "$KILN_STORE/regions/$1/nbd.pid" 2>/dev/null || true
}

dev_uri() { # INSTANCE [DEV] [REGION]
	echo "nbd+unix:///$1/${2:-xvda}?socket=$(region_sock "${3:-us-east-1}")"
}

# Stop REGION's daemon. Returns 1 (after SIGKILL) if SIGTERM did not stop it.
_region_nbd_term() { # REGION
	local pid
	pid=$(region_nbd_pid "$1")
	[ -n "$pid" ] || return 0
	nbd_alive "$pid" || return 0
	# the daemon forked away from kiln: it is not our child, and nobody
	# else must be using the pid (a stale pidfile)
	grep -q kiln-nbd "/proc/$pid/cmdline" 2>/dev/null || return 0
	_nbd_term "$pid"
}

stop_region_nbd() { # REGION
	local pid
	pid=$(region_nbd_pid "$1")
	[ -n "$pid" ] || fail "no kiln-nbd pidfile for region $1"
	nbd_alive "$pid" || fail "the kiln-nbd of region $1 (pid $pid) is not running"
	_region_nbd_term "$1" || fail "the kiln-nbd of region $1 (pid $pid) ignored SIGTERM"
	echo "kiln-nbd of $1 (pid $pid) stopped by SIGTERM"
}

_region_nbd_cleanup() { # REGION
	if ! _region_nbd_term "$1"; then
		echo "FAIL: the kiln-nbd of region $1 did not exit after SIGTERM" >&2
		rm -rf "$TMPDIR"
		exit 1
	fi
}

region_nbd_cleanup() { # REGION...
	local r
	for r in "$@"; do
		cleanup_fn _region_nbd_cleanup "$r"
	done
}

make_image() { # FILE NAME [ARGS]
	local file=$1 name=$2
	shift 2
	IMG_VOL=$(kiln volume import "$file")
	assert_id vol "$IMG_VOL"
	IMG_SNAP=$(kiln snapshot create "$IMG_VOL")
	assert_id snap "$IMG_SNAP"
	IMG_AMI=$(kiln image register --name "$name" --root-device-name /dev/xvda \
		--block-device-mappings "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$IMG_SNAP\"}}]" "$@")
	[[ $IMG_AMI =~ ^ami-[0-9a-f]{17}$ ]] || fail "image register printed '$IMG_AMI', not an image id"
}

instance_json() { # INSTANCE [REGION]
	kiln instance describe "$1" --region "${2:-us-east-1}" --output json >"$TMPDIR/.inst.json" ||
		fail "instance describe $1 failed"
}

instance_devices() { # INSTANCE [REGION]
	instance_json "$@"
	json "$TMPDIR/.inst.json" "'\\n'.join('%s %s %s %s' % (d['DeviceName'], (d.get('Ebs') or d.get('InstanceStore'))['VolumeId'], 'Ebs' if 'Ebs' in d else 'InstanceStore', (d.get('Ebs') or d.get('InstanceStore'))['DeleteOnTermination']) for d in j['Reservations'][0]['Instances'][0]['BlockDeviceMappings'])"
}

instance_volume() { # INSTANCE DEV [REGION]
	instance_devices "$1" "${3:-us-east-1}" | awk -v d="$2" '$1 == d { print $2 }'
}

volume_exists() { # VOL [REGION]
	kiln volume describe "$1" --region "${2:-us-east-1}" >/dev/null 2>&1
}

volume_count() { # [REGION]
	kiln volume describe --region "${1:-us-east-1}" --output json >"$TMPDIR/.vols.json"
	json "$TMPDIR/.vols.json" "len(j['Volumes'])"
}

assert_zero_from() { # FILE OFFSET
	/usr/bin/python3 - "$1" "$2" <<'EOF' || fail "$1 is not all zero from offset $2"
import os
import sys

path, off = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
while off < size:
    try:
        off = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break                       # ENXIO: only a hole is left
    end = os.lseek(fd, off, os.SEEK_HOLE)
    while off < end:
        b = os.pread(fd, min(1 << 20, end - off), off)
        if b.count(0) != len(b):
            i = next(k for k, c in enumerate(b) if c)
            print("%s: byte %d is 0x%02x, not zero" % (path, off + i, b[i]), file=sys.stderr)
            sys.exit(1)
        off += len(b)
EOF
}

cmp_device() { # URI REF SIZE
	local out=$TMPDIR/.device.raw n
	rm -f "$out"
	nbdcopy "$1" "$out" || fail "nbdcopy $1 failed"
	n=$(stat -c %s "$out")
	assert_eq "$n" "$3" "bytes read from $1"
	cmp -n "$(stat -c %s "$2")" "$out" "$2" || fail "$1 does not begin with $2"
	assert_zero_from "$out" "$(stat -c %s "$2")"
	rm -f "$out"
}

BOOT_SECS=""
boot_instance() { # INSTANCE [REGION]
	local region=${2:-us-east-1} out=$TMPDIR/.boot-$1.out err=$TMPDIR/.boot-$1.err rc=0 t0 ms
	t0=$(now_ns)
	kiln instance boot "$1" --region "$region" --expect "$BOOT_MARKER" --timeout 60 \
		>"$out" 2>"$err" || rc=$?
	ms=$((($(now_ns) - t0) / 1000000))
	BOOT_SECS=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
	if [ "$rc" -ne 0 ]; then
		echo "--- kiln instance boot said:" >&2
		cat "$err" >&2
		echo "--- the last lines of the console:" >&2
		tr -d '\r' <"$out" | tail -n 20 >&2
		fail "instance boot $1 exited $rc after $BOOT_SECS s"
	fi
	grep -aq "$BOOT_MARKER" "$out" || fail "instance boot $1 exited 0 but printed no $BOOT_MARKER"
	echo "$1 booted: $(grep -a -m1 -o "$BOOT_MARKER.*" "$out" | tr -d '\r') after $BOOT_SECS s"
}
