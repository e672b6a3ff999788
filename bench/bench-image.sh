#!/bin/bash
# bench-image: copy an image between regions, first and incremental,
# against a plain cp of the same raw data, in one run on one machine.
# Prints MB/s (of the image's size) and bytes moved, and the ratios;
# --record appends the table to bench/RESULTS.md.
#
#   bench/bench-image.sh [--record] [--size SIZE]
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

here=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-$here/../build/kiln}
size=1G
record=false
while [ $# -gt 0 ]; do
	case $1 in
	--record) record=true ;;
	--size) size=$2; shift ;;
	*) echo "usage: $0 [--record] [--size SIZE]" >&2; exit 2 ;;
	esac
	shift
done
bytes=$(numfmt --from=iec "$size")
work=$(mktemp -d /tmp/kiln-bench-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KILN_STORE=$work/store
kiln() { "$KILN" "$@"; }
json() { /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
secs() { echo "$2 - $1" | bc; }

# Half data (compressible text and random), half holes: a disk image.
echo "preparing a $size image..."
truncate -s "$bytes" "$work/v1.raw"
{ openssl enc -aes-128-ctr -nosalt -pass pass:bench -pbkdf2 </dev/zero 2>/dev/null || true; } |
	head -c $((bytes / 4)) | dd of="$work/v1.raw" conv=notrunc status=none
{ yes "kiln bench-image: a line of text that compresses" || true; } | head -c $((bytes / 4)) |
	dd of="$work/v1.raw" bs=1M seek=$((bytes / 4)) oflag=seek_bytes conv=notrunc status=none
cp --sparse=always "$work/v1.raw" "$work/v2.raw"
# v2: 2% of the image rewritten
{ openssl enc -aes-128-ctr -nosalt -pass pass:bench2 -pbkdf2 </dev/zero 2>/dev/null || true; } |
	head -c $((bytes / 50)) | dd of="$work/v2.raw" bs=1M seek=$((bytes / 8)) oflag=seek_bytes \
	conv=notrunc status=none
sync

kiln init >/dev/null 2>&1
register() { # FILE NAME -> ami
	local vol snap
	vol=$(kiln volume import "$1")
	snap=$(kiln snapshot create "$vol")
	kiln image register --name "$2" --root-device-name /dev/xvda --architecture x86_64 --no-verify-boot \
		--block-device-mappings "[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"SnapshotId\":\"$snap\"}}]"
}
a1=$(register "$work/v1.raw" bench-v1)
a2=$(register "$work/v2.raw" bench-v2)

copy() { # AMI NAME -> "seconds bytes_moved chunks_moved chunks_total"
	local t0 t1 out
	sync
	t0=$(date +%s.%N)
	out=$(kiln image copy --source-region us-east-1 --source-image-id "$1" --region eu-west-1 \
		--name "$2" --output json)
	t1=$(date +%s.%N)
	echo "$(secs "$t0" "$t1") $(echo "$out" | json '"%d %d %d" % (j["Copy"]["BytesMoved"], j["Copy"]["ChunksMoved"], j["Copy"]["ChunksTotal"])')"
}
read -r k1_s k1_b k1_m k1_t < <(copy "$a1" copy-v1)
read -r k2_s k2_b k2_m k2_t < <(copy "$a2" copy-v2)

cpy() { # SRC DST -> seconds
	local t0 t1
	sync
	t0=$(date +%s.%N)
	cp --sparse=always "$1" "$2"
	sync "$2"
	t1=$(date +%s.%N)
	secs "$t0" "$t1"
}
c1_s=$(cpy "$work/v1.raw" "$work/cp-v1.raw")
c2_s=$(cpy "$work/v2.raw" "$work/cp-v2.raw")
c1_b=$(du -B1 "$work/cp-v1.raw" | cut -f1)
c2_b=$(du -B1 "$work/cp-v2.raw" | cut -f1)

rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
table=$(
	echo "| copy | kiln image copy MB/s | bytes moved | cp --sparse MB/s | bytes written | speed kiln/cp | bytes kiln/cp |"
	echo "| --- | --- | --- | --- | --- | --- | --- |"
	echo "| first ($k1_m of $k1_t chunks) | $(rate "$k1_s") | $k1_b | $(rate "$c1_s") | $c1_b | $(ratio "$c1_s" "$k1_s") | $(ratio "$k1_b" "$c1_b") |"
	echo "| incremental, 2% changed ($k2_m of $k2_t chunks) | $(rate "$k2_s") | $k2_b | $(rate "$c2_s") | $c2_b | $(ratio "$c2_s" "$k2_s") | $(ratio "$k2_b" "$c2_b") |"
)
echo
echo "$table"
kiln store verify --region eu-west-1 >/dev/null

if $record; then
	{
		echo
		echo "## bench-image, $(date -u +%Y-%m-%d), commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
		echo
		echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME")."
		echo "A $size image: a quarter random, a quarter text, half holes; v2 rewrites 2% of it."
		echo "MB/s are of the image's size; cp copies the raw file (sparse) and syncs it; kiln moves"
		echo "the chunks eu-west-1 lacks, verified by id, and syncs them."
		echo
		echo "$table"
	} >>"$here/RESULTS.md"
	echo "recorded in bench/RESULTS.md"
fi
