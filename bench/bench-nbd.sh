#!/bin/bash
# bench-nbd: kiln-nbd against nbdkit (file, file+cow) and qemu-nbd (qcow2
# overlay on a raw backing file), same data, same machine, one run, over
# Unix sockets, with fio's nbd engine and nbdcopy. Prints MB/s, IOPS and
# the ratio kiln/peer; with --record, appends the table to bench/RESULTS.md.
#
#   bench/bench-nbd.sh [--record] [--seconds N] [--size SIZE]
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

here=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-$here/../build/kiln}
KILN_NBD=${KILN_NBD:-$here/../build/kiln-nbd}
seconds=10
size=1G
record=false
while [ $# -gt 0 ]; do
	case $1 in
	--record) record=true ;;
	--seconds) seconds=$2; shift ;;
	--size) size=$2; shift ;;
	*) echo "usage: $0 [--record] [--seconds N] [--size SIZE]" >&2; exit 2 ;;
	esac
	shift
done
for t in fio nbdkit qemu-nbd qemu-img nbdcopy; do
	command -v $t >/dev/null || { echo "bench-nbd: $t is missing (make deps)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/kiln-bench-nbd.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # FILE
	for _ in $(seq 1 200); do [ -e "$1" ] && return 0; sleep 0.05; done
	echo "bench-nbd: $1 did not appear" >&2
	exit 1
}

echo "preparing $size of random data..."
# (openssl dies of SIGPIPE when head has enough: not an error)
{ openssl enc -aes-128-ctr -nosalt -pass pass:bench -pbkdf2 </dev/zero 2>/dev/null || true; } |
	head -c "$(numfmt --from=iec "$size")" >"$work/base.raw"
[ "$(stat -c %s "$work/base.raw")" = "$(numfmt --from=iec "$size")" ] || { echo "bench-nbd: cannot make data" >&2; exit 1; }
cp "$work/base.raw" "$work/nbdkit-file.raw"
qemu-img create -q -f qcow2 -b "$work/base.raw" -F raw "$work/overlay.qcow2"

export KILN_STORE=$work/store
"$KILN" init >/dev/null 2>&1
# A volume whose chunks are all in its overlay (written over NBD), and a
# volume created from a snapshot whose chunks are all still in packs.
vol_snap=$("$KILN" volume import "$work/base.raw")
snap=$("$KILN" snapshot create "$vol_snap")
vol_local=$("$KILN" volume create --size "$size")

"$KILN_NBD" --unix "$work/kiln.sock" --pidfile "$work/kiln.pid" --foreground & pids+=($!)
nbdkit --unix "$work/file.sock" --pidfile "$work/file.pid" --foreground file "$work/nbdkit-file.raw" & pids+=($!)
nbdkit --unix "$work/cow.sock" --pidfile "$work/cow.pid" --foreground --filter=cow file "$work/base.raw" & pids+=($!)
qemu-nbd --persistent --shared=8 --socket="$work/qemu.sock" --pid-file="$work/qemu.pid" -f qcow2 --cache=writeback --aio=threads \
	--discard=unmap "$work/overlay.qcow2" & pids+=($!)
for f in kiln.pid file.pid cow.pid qemu.pid; do wait_for "$work/$f"; done
nbdcopy "$work/base.raw" "nbd+unix:///$vol_local?socket=$work/kiln.sock"

uri_kiln_local="nbd+unix:///$vol_local?socket=$work/kiln.sock"
uri_kiln_cow="nbd+unix:///$vol_snap?socket=$work/kiln.sock"
uri_file="nbd+unix:///?socket=$work/file.sock"
uri_cow="nbd+unix:///?socket=$work/cow.sock"
uri_qemu="nbd+unix:///?socket=$work/qemu.sock"

# nbdcopy whole export -> null, MB/s
copy_rate() {
	local start end
	start=$(date +%s.%N)
	nbdcopy --no-extents "$1" null: 2>/dev/null
	end=$(date +%s.%N)
	echo "$(numfmt --from=iec "$size") $start $end" | awk '{printf "%.0f", $1 / ($3 - $2) / 1e6}'
}
median3() { tr ' ' '\n' <<<"$*" | sort -n | sed -n 2p; }

# Cold reads first, before fio's jobs leave the disk busy writing back:
# three times, each a fresh CoW volume (no chunk copied up) in a fresh
# kiln-nbd, with the packs out of the page cache; and, right after each,
# nbdkit's cow filter with nothing written yet, which reads the raw image
# cold, as what the disk gives at that moment. Only those files leave the
# page cache: a global drop would make the volumes' overlays come back by
# readahead, in large folios, which slows the random writes after.
uncache() { sync; for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done; }
echo "cold sequential reads (3 runs)..."
cold_kiln="" cold_file=""
for run in 1 2 3; do
	vol_cold=$("$KILN" volume create --snapshot-id "$snap")
	"$KILN_NBD" --unix "$work/cold$run.sock" --pidfile "$work/cold$run.pid" --foreground --export "$vol_cold" &
	cold_pid=$!
	pids+=($cold_pid)
	wait_for "$work/cold$run.pid"
	uncache "$KILN_STORE"/regions/us-east-1/packs/*.pack
	cold_kiln+="$(copy_rate "nbd+unix:///$vol_cold?socket=$work/cold$run.sock") "
	kill "$cold_pid"; wait "$cold_pid" || true
	uncache "$work/base.raw"
	cold_file+="$(copy_rate "$uri_cow") "
done
copy_kiln_cold=$(median3 $cold_kiln)
copy_file_cold=$(median3 $cold_file)
echo "  cold: kiln-nbd CoW volume $cold_kiln MB/s; nbdkit cow, raw image $cold_file MB/s"

# fio JOB URI -> "MB/s IOPS"
run_fio() {
	local rw=$1 bs=$2 qd=$3 uri=$4 extra=""
	case $rw in rand*) extra="--norandommap --randrepeat=0" ;; esac
	# Each job starts with no dirty pages, so the writeback of what the
	# job before it wrote (often a peer's) does not run on its time.
	sync
	fio --name=j --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
		--size="$size" --time_based --runtime="$seconds" --ramp_time=1 $extra \
		--output-format=json 2>/dev/null |
		/usr/bin/python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])["jobs"][0]   # the nbd engine prints a line first
d = j["read"] if j["read"]["io_bytes"] else j["write"]
print("%.0f %.0f" % (d["bw_bytes"] / 1e6, d["iops"]))'
}

declare -A res
patterns=("read 1M 16" "write 1M 16" "randread 4k 32" "randwrite 4k 32")
targets=(kiln_local kiln_cow file cow qemu)
for p in "${patterns[@]}"; do
	set -- $p
	for t in "${targets[@]}"; do
		uri_var=uri_$t
		res[$1,$t]=$(run_fio "$1" "$2" "$3" "${!uri_var}")
		echo "  $1 $2 QD$3 $t: ${res[$1,$t]}"
	done
done

copy_kiln_local=$(copy_rate "$uri_kiln_local")
copy_file=$(copy_rate "$uri_file")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
mbs() { echo "${res[$1,$2]}" | cut -d' ' -f1; }
iops() { echo "${res[$1,$2]}" | cut -d' ' -f2; }

table=$(
	echo "| pattern | kiln-nbd volume | kiln-nbd CoW volume | nbdkit file | nbdkit cow | qemu-nbd qcow2 | kiln/file | kiln CoW/nbdkit cow | kiln CoW/qemu-nbd |"
	echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
	for p in "read 1M 16 MB/s" "write 1M 16 MB/s" "randread 4k 32 IOPS" "randwrite 4k 32 IOPS"; do
		set -- $p
		f=mbs; [ "$4" = IOPS ] && f=iops
		echo "| $1 $2 QD$3 ($4) | $($f $1 kiln_local) | $($f $1 kiln_cow) | $($f $1 file) | $($f $1 cow) | $($f $1 qemu) | $(ratio "$($f $1 kiln_local)" "$($f $1 file)") | $(ratio "$($f $1 kiln_cow)" "$($f $1 cow)") | $(ratio "$($f $1 kiln_cow)" "$($f $1 qemu)") |"
	done
	echo
	echo "nbdcopy --no-extents to null, cold (the files read evicted from the page cache, before the fio jobs; median of 3, each a fresh CoW volume in a fresh kiln-nbd): kiln-nbd CoW volume, chunks in packs, $copy_kiln_cold MB/s (runs: ${cold_kiln% }); nbdkit (cow filter, nothing written) on the raw image $copy_file_cold MB/s (runs: ${cold_file% }); ratio $(ratio "$copy_kiln_cold" "$copy_file_cold")."
	echo "nbdcopy --no-extents to null, warm (after the fio jobs): kiln-nbd volume $copy_kiln_local MB/s; nbdkit file $copy_file MB/s (ratio $(ratio "$copy_kiln_local" "$copy_file"))."
)
echo
echo "$table"

if $record; then
	{
		echo
		echo "## bench-nbd, $(date -u +%Y-%m-%d), commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
		echo
		echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")."
		echo "fio $(fio --version) nbd engine, one connection, Unix socket, $size of random data, ${seconds} s per job after 1 s ramp."
		echo "The CoW column writes to a volume made from a snapshot (first write to each chunk copies it up); reads there decompress chunks from packs until written."
		echo
		echo "$table"
	} >>"$here/RESULTS.md"
	echo "recorded in bench/RESULTS.md"
fi
