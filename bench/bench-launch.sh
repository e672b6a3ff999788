#!/bin/bash
# bench-launch: `kiln instance launch --count N` of one image (N=100 by
# default) on a store whose region's kiln-nbd already runs (one launch
# before it started the daemon; that one is timed apart). Prints the
# seconds, and what the launch copied: the change in the store's
# StoredBytes, PackBytes, UniqueChunks and OverlayBytes (kiln store stats)
# and the sum of the blocks allocated to the new volumes' overlays
# (volumes/VOL.data), plus the volumes' metadata (.map, .parent) for
# information. Targets: under 1 s and 0 bytes copied. Then it checks that
# the instances are real (each is served as i-…/xvda; one root, read over
# NBD, holds the image), times `instance terminate` of all of them, and
# prints the machine. With --record, appends the result to bench/RESULTS.md.
# A missed target is reported, not an error: the script fails only when a
# command fails or an instance reads back wrong.
#
#   bench/bench-launch.sh [--record] [--count N] [--image RAW-FILE]
#
# The image is tests/fixtures' boot-bios.raw (built once by make-disks.sh into
# $KILN_FIXTURES, default tests/data-cache) unless --image names a raw disk.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-$here/../build/kiln}
count=100
image=""
record=false
usage() { echo "usage: $0 [--record] [--count N] [--image RAW-FILE]" >&2; exit 2; }
while [ $# -gt 0 ]; do
	case $1 in
	--record) record=true ;;
	--count) [ $# -ge 2 ] || usage; count=$2; shift ;;
	--image) [ $# -ge 2 ] || usage; image=$2; shift ;;
	*) usage ;;
	esac
	shift
done
[[ $count =~ ^[1-9][0-9]*$ ]] && [ "$count" -le 1000 ] || { echo "bench-launch: --count 1 to 1000" >&2; exit 2; }
die() { echo "bench-launch: $*" >&2; exit 1; }
[ -x "$KILN" ] || die "no kiln at $KILN (make)"
[ -x "$(dirname "$KILN")/kiln-nbd" ] || die "no kiln-nbd beside $KILN (make)"
for t in nbdinfo nbdcopy cmp python3; do
	command -v $t >/dev/null || die "$t is missing (make deps)"
done
if [ -z "$image" ]; then
	fixtures=${KILN_FIXTURES:-$here/../tests/data-cache}
	"$here/../tests/fixtures/make-disks.sh" "$fixtures" >/dev/null || die "cannot build the fixture disks in $fixtures"
	image=$fixtures/boot-bios.raw
fi
[ -r "$image" ] || die "cannot read $image"

work=$(mktemp -d /tmp/kiln-bench-launch.XXXXXX)
export KILN_STORE=$work/store
region=us-east-1
rdir=$KILN_STORE/regions/$region
# The daemon `kiln instance launch` started forks away from us: stop it by
# its pidfile, and say so if SIGTERM is not enough.
stop_daemon() {
	local pid
	pid=$(cat "$rdir/nbd.pid" 2>/dev/null) || return 0
	grep -q kiln-nbd "/proc/$pid/cmdline" 2>/dev/null || return 0
	kill -TERM "$pid"
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "bench-launch: kiln-nbd (pid $pid) still runs 10 s after SIGTERM; SIGKILL" >&2
	kill -KILL "$pid" 2>/dev/null || true
	return 1
}
cleanup() {
	local rc=$?
	stop_daemon || rc=1
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT

kiln() { "$KILN" "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
stat_json() { kiln store stats --output json --region $region >"$1"; }
field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Regions"][0][sys.argv[2]])' "$1" "$2"; }

kiln init >/dev/null 2>&1
vol=$(kiln volume import "$image")
snap=$(kiln snapshot create "$vol")
size=$(stat -c %s "$image")
ami=$(kiln image register --name bench-launch --root-device-name /dev/xvda --architecture x86_64 \
	--no-verify-boot --block-device-mappings "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$snap\"}}]")
gib=$(kiln image describe --image-ids "$ami" --output json |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"])')

# The first launch starts the region's kiln-nbd.
t0=$(now)
first=$(kiln instance launch "$ami")
t1=$(now)
first_s=$(secs "$t0" "$t1")
[ -s "$rdir/nbd.pid" ] || die "no kiln-nbd pidfile after the first launch"

stat_json "$work/before.json"
t0=$(now)
kiln instance launch "$ami" --count "$count" >"$work/ids"
t1=$(now)
launch_s=$(secs "$t0" "$t1")
stat_json "$work/after.json"
mapfile -t ids <"$work/ids"
[ "${#ids[@]}" -eq "$count" ] || die "launch --count $count printed ${#ids[@]} ids"
[ "$(sort -u "$work/ids" | wc -l)" -eq "$count" ] || die "launch --count $count printed duplicate ids"

delta() { echo $(($(field "$work/after.json" "$1") - $(field "$work/before.json" "$1"))); }
d_stored=$(delta StoredBytes)
d_packs=$(delta PackBytes)
d_unique=$(delta UniqueChunks)
d_overlay=$(delta OverlayBytes)

# The new instances' volumes, and the blocks their files hold.
# (describe and terminate take at most 64 ids: describe them all, pick ours)
kiln instance describe --output json >"$work/instances.json"
python3 - "$work/instances.json" "$work/ids" >"$work/vols" <<'EOF'
import json, sys
ours = set(open(sys.argv[2]).read().split())
for r in json.load(open(sys.argv[1]))["Reservations"]:
    for i in r["Instances"]:
        if i["InstanceId"] not in ours:
            continue
        for d in i["BlockDeviceMappings"]:
            print((d.get("Ebs") or d.get("InstanceStore"))["VolumeId"])
EOF
nvols=$(wc -l <"$work/vols")
[ "$nvols" -eq "$count" ] || die "$count instances have $nvols volumes (one root each expected)"
read -r data_alloc meta_alloc meta_size < <(python3 - "$rdir/volumes" "$work/vols" <<'EOF'
import os, sys
d, vols = sys.argv[1], open(sys.argv[2]).read().split()
data = meta = size = 0
seen = set()
for v in vols:
    st = os.stat(os.path.join(d, v + ".data"))
    data += st.st_blocks * 512
    for ext in (".map", ".parent"):
        p = os.path.join(d, v + ext)
        if not os.path.exists(p):
            continue
        st = os.stat(p)
        if (st.st_dev, st.st_ino) in seen:      # .parent is a hard link shared by all
            continue
        seen.add((st.st_dev, st.st_ino))
        meta += st.st_blocks * 512
        size += st.st_size
print(data, meta, size)
EOF
)

# The instances are real: each is an export of the daemon, and one root
# (the last) reads back as the image.
sock=$rdir/nbd.sock
for i in "${ids[@]}"; do
	nbdinfo --size "nbd+unix:///$i/xvda?socket=$sock" >/dev/null || die "$i/xvda is not served"
done
nbdcopy "nbd+unix:///${ids[-1]}/xvda?socket=$sock" "$work/root.raw"
cmp -n "$size" "$work/root.raw" "$image" || die "the root of ${ids[-1]} does not read back as $image"
rm -f "$work/root.raw"

t0=$(now)
{ cat "$work/ids"; echo "$first"; } | xargs -n 64 "$KILN" instance terminate >/dev/null
t1=$(now)
term_s=$(secs "$t0" "$t1")

per_ms=$(awk -v s="$launch_s" -v n="$count" 'BEGIN { printf "%.2f", s * 1000 / n }')
copied=$((d_stored + d_packs + d_overlay + data_alloc))
verdict_time=$(awk -v s="$launch_s" 'BEGIN { print (s < 1) ? "MET" : "MISSED" }')
verdict_bytes=MISSED
[ "$d_stored" -eq 0 ] && [ "$d_packs" -eq 0 ] && [ "$d_unique" -eq 0 ] && [ "$d_overlay" -eq 0 ] &&
	[ "$data_alloc" -eq 0 ] && verdict_bytes=MET
machine="$(nproc) cores, $(free -g | awk '/Mem:/ { print $2 }') GiB, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"), $(findmnt -no FSTYPE -T "$work" 2>/dev/null || echo '?') under $work"
table=$(
	echo "| instances | launch s | ms per instance | StoredBytes Δ | PackBytes Δ | UniqueChunks Δ | OverlayBytes Δ | overlay blocks allocated | metadata (.map, .parent) allocated | terminate s |"
	echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	echo "| $count | $launch_s | $per_ms | $d_stored | $d_packs | $d_unique | $d_overlay | $data_alloc | $meta_alloc ($meta_size bytes long) | $term_s |"
	echo
	echo "Image: $(basename "$image"), $size bytes, VolumeSize $gib GiB; snapshot of $(field "$work/after.json" UniqueChunks) unique chunks, $(field "$work/after.json" StoredBytes) bytes stored."
	echo "First launch (starting the region's kiln-nbd): $first_s s. Each of the $count roots is served as i-…/xvda; the last read back as the image (nbdcopy, cmp)."
	echo
	echo "Targets:"
	echo
	echo "- $count launches under 1 s: $launch_s s — $verdict_time"
	echo "- 0 bytes copied (stored, pack, overlay deltas and overlay blocks): $copied — $verdict_bytes"
)
echo
echo "Machine: $machine; load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "$table"

if $record; then
	{
		echo
		echo "## bench-launch, $(date -u +%Y-%m-%d), commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
		echo
		echo "Machine: $machine; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
		echo "\`kiln instance launch IMAGE --count $count\` with the region's kiln-nbd already running; $("$KILN" --version 2>/dev/null | head -n 1)."
		echo
		echo "$table"
	} >>"$here/RESULTS.md"
	echo "recorded in bench/RESULTS.md"
fi
