#!/bin/bash
# make-disk-image: build the two disk images bench-snapshot.sh backs up,
# reproducibly, and keep them in a cache.
#
# v1: a raw disk (default 2 GiB) with an MBR partition table (sfdisk) and
#     one ext4 partition from 1 MiB to the end, holding a Debian bookworm
#     root file system made with `debootstrap --variant=minbase` from this
#     machine's apt mirror, with a kernel and systemd as a machine image
#     has them (--include=linux-image-amd64,systemd-sysv: about 770 MiB, so
#     that a 2 GiB image has about 62% zero 64 KiB chunks, as the images
#     the peers were first measured on); the rest of the file system is
#     free space. The ext4 is populated without mounting (mke2fs -d at the
#     partition offset).
# v2: v1 after a package installation: a few .debs (fetched once with
#     `apt-get download`) unpacked into it, dpkg's status and file lists,
#     dpkg.log, passwd/group/shadow rewritten — about 2% of its 4 KiB blocks
#     change. The changes are made with debugfs, again without mounting.
#
# --small builds a ~256 MiB image from a small tree of this machine's files
# instead (no debootstrap, no network, no root): the quick image that
# `bench-snapshot.sh --small` uses to keep the bench from rotting.
#
# Timestamps, UUIDs and the directory hash seed are fixed and every list is
# sorted, so a rebuild from the same rootfs and .debs gives the same bytes.
# The cache is $KILN_BENCH_CACHE (default bench/.cache; git ignores it).
#
#   bench/make-disk-image.sh [--size SIZE] [--small] [--force]
#
# Prints three lines: the paths of v1, v2, and a stats file (key=value).
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
cache=${KILN_BENCH_CACHE:-$here/.cache}
recipe=r2               # bump when the recipe changes: old images are not reused
size=
small=false
force=false
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift ;;
	--small) small=true ;;
	--force) force=true ;;
	*) echo "usage: $0 [--size SIZE] [--small] [--force]" >&2; exit 2 ;;
	esac
	shift
done
if [ -z "$size" ]; then
	if $small; then size=256M; else size=2G; fi
fi
bytes=$(numfmt --from=iec "$size")
if [ $((bytes % 1048576)) -ne 0 ] || [ "$bytes" -lt $((64 * 1048576)) ]; then
	echo "make-disk-image: --size must be a whole number of MiB, at least 64M" >&2
	exit 2
fi
for t in sfdisk mke2fs debugfs e2fsck dpkg-deb numfmt flock; do
	command -v $t >/dev/null || { echo "make-disk-image: $t is missing (fdisk, e2fsprogs, dpkg, coreutils, util-linux)" >&2; exit 1; }
done

# Fixed identities, so that two builds agree byte for byte.
export E2FSPROGS_FAKE_TIME=1735689600        # 2025-01-01T00:00:00Z
export SOURCE_DATE_EPOCH=$E2FSPROGS_FAKE_TIME
fs_uuid=6b696c6e-6265-6e63-6800-000000000001
hash_seed=6b696c6e-6265-6e63-6800-000000000002
part_start=1048576                             # 2048 sectors: the usual first partition

mkdir -p "$cache"
[ -f "$cache/.gitignore" ] || printf '# bench images and trees: never committed\n*\n' >"$cache/.gitignore"
exec 9>"$cache/.lock"
flock 9                                        # one builder at a time

if $small; then
	name=$recipe-small-$size
else
	name=$recipe-bookworm-$size
fi
v1=$cache/$name-v1.raw
v2=$cache/$name-v2.raw
stats=$cache/$name.stats
if ! $force && [ -f "$v1" ] && [ -f "$v2" ] && [ -f "$stats" ]; then
	printf '%s\n%s\n%s\n' "$v1" "$v2" "$stats"
	exit 0
fi

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { echo "make-disk-image: $*" >&2; }

# ---- the Debian mirror of this machine's apt sources -----------------------

mirror() {
	if [ -n "${DEBIAN_MIRROR:-}" ]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
	local f
	# deb822 .sources: the first URI of a "deb" stanza whose Suites has bookworm
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'BEGIN { RS = ""; FS = "\n" }
		{
			types = uris = suites = ""
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^Types:/) types = $i
				if ($i ~ /^URIs:/) uris = $i
				if ($i ~ /^Suites:/) suites = $i
			}
			if (types ~ /[ \t]deb([ \t]|$)/ && (" " suites " ") ~ /[ \t]bookworm[ \t]/) {
				split(uris, u, /[ \t]+/); print u[2]; exit
			}
		}' "$f"
	done | sed -n 1p | grep . && return
	# one-line style: deb [options] URI bookworm components
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' "$f"
	done | sed -n 1p | grep . && return
	echo "make-disk-image: no bookworm mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2
	return 1
}

# ---- the two file trees ----------------------------------------------------

# The Debian root file system: made once, kept in the cache.
rootfs_pkgs=linux-image-amd64,systemd-sysv
rootfs_pkgs_tag=minbase-kernel-systemd
debian_rootfs() {
	local root=$cache/rootfs-bookworm-$rootfs_pkgs_tag url
	if [ ! -d "$root" ]; then
		if [ "$(id -u)" != 0 ]; then
			log "debootstrap needs root (or a cache that already holds $root)"
			exit 1
		fi
		command -v debootstrap >/dev/null || { log "debootstrap is missing"; exit 1; }
		url=$(mirror)
		log "debootstrap --variant=minbase --include=$rootfs_pkgs bookworm from $url (a minute or two)"
		rm -rf "$cache/.rootfs.tmp"
		mkdir -p "$cache/debs-bootstrap"
		debootstrap --variant=minbase --include="$rootfs_pkgs" \
			--cache-dir="$cache/debs-bootstrap" bookworm \
			"$cache/.rootfs.tmp" "$url" >"$work/debootstrap.log" 2>&1 ||
			{ tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
		mv "$cache/.rootfs.tmp" "$root"
	fi
	echo "$root"
}

# What v2 installs: real packages that minbase lacks, about 40 MiB unpacked.
extra_pkgs="curl file iproute2 less libcurl4 libmagic-mgc libmagic1 libproc2-0
	libpython3.11-minimal libpython3.11-stdlib openssh-client procps python3.11-minimal
	vim-common vim-tiny"

extra_debs() {
	local dir=$cache/debs-extra
	if [ "$(cat "$dir/.complete" 2>/dev/null)" != "$(echo $extra_pkgs)" ]; then
		log "apt-get download $(echo $extra_pkgs)"
		rm -rf "$dir"
		mkdir -p "$dir"
		(cd "$dir" && apt-get download -q -o APT::Sandbox::User=root $extra_pkgs >"$work/download.log" 2>&1) ||
			{ tail -n 5 "$work/download.log" >&2; log "apt-get download failed (run apt-get update?)"; exit 1; }
		echo $extra_pkgs >"$dir/.complete"
	fi
	echo "$dir"
}

# A small tree of this machine's programs and documentation (for --small).
small_tree() {
	local root=$1 budget=$2 f d n=0
	mkdir -p "$root/etc" "$root/usr/bin" "$root/usr/share/doc"
	echo "kiln-bench" >"$root/etc/hostname"
	while IFS= read -r f; do
		[ $n -lt $((budget / 2)) ] || break
		cp -p "$f" "$root/usr/bin/" 2>/dev/null || continue
		n=$((n + $(stat -c %s "$f")))
	done < <(find /usr/bin -maxdepth 1 -type f -size -300k | sort)
	while IFS= read -r d; do
		[ $n -lt "$budget" ] || break
		cp -a "$d" "$root/usr/share/doc/" 2>/dev/null || continue
		n=$((n + $(du -sb "$d" | cut -f1)))
	done < <(find /usr/share/doc -mindepth 1 -maxdepth 1 -type d | sort)
	find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# ---- building --------------------------------------------------------------

# make_v1 TREE OUT: MBR + one ext4 partition populated from TREE.
make_v1() {
	local tree=$1 out=$2
	truncate -s "$bytes" "$out"
	printf 'label: dos\nlabel-id: 0x6b696c6e\nunit: sectors\n\nstart=%d, type=83, bootable\n' \
		$((part_start / 512)) | sfdisk -q "$out"
	mke2fs -q -F -t ext4 -L kiln-bench -U "$fs_uuid" \
		-E "hash_seed=$hash_seed,offset=$part_start,root_owner=0:0" \
		-d "$tree" "$out" $(((bytes - part_start) / 1024))k
}

# debugfs_install STAGE: debugfs commands that lay the tree STAGE over the
# file system (directories made, files and symlinks replaced), sorted.
# debugfs follows no symlinks, so paths under the merged-/usr links (/bin
# -> usr/bin and so on) are written where dpkg's writes would land.
debugfs_install() {
	local stage=$1 p
	usr_path() {
		case $1 in
		/bin | /sbin | /lib | /lib32 | /lib64 | /libx32) echo "/usr$1" ;;
		/bin/* | /sbin/* | /lib/* | /lib32/* | /lib64/* | /libx32/*) echo "/usr$1" ;;
		*) echo "$1" ;;
		esac
	}
	(cd "$stage" && find . -mindepth 1 -type d | sort) | while IFS= read -r p; do
		printf 'mkdir "%s"\n' "$(usr_path "${p#.}")"
	done
	(cd "$stage" && find . -mindepth 1 ! -type d | sort) | while IFS= read -r p; do
		printf 'rm "%s"\n' "$(usr_path "${p#.}")"
		if [ -L "$stage/$p" ]; then
			printf 'symlink "%s" "%s"\n' "$(usr_path "${p#.}")" "$(readlink "$stage/$p")"
		else
			printf 'write "%s" "%s"\n' "$stage/${p#./}" "$(usr_path "${p#.}")"
		fi
	done
}

# make_v2_debian V1 OUT ROOTFS DEBDIR: install the .debs into a copy of V1
# the way dpkg would leave it, bookkeeping included.
make_v2_debian() {
	local in=$1 out=$2 rootfs=$3 debs=$4 deb pkg stage=$work/stage meta=$work/meta
	mkdir -p "$stage" "$meta/var/lib/dpkg/info" "$meta/var/log" "$meta/etc"
	cp "$rootfs/var/lib/dpkg/status" "$meta/var/lib/dpkg/status"
	cp "$rootfs/var/log/dpkg.log" "$meta/var/log/dpkg.log" 2>/dev/null || : >"$meta/var/log/dpkg.log"
	for deb in $(ls "$debs"/*.deb | sort); do
		pkg=$(dpkg-deb -f "$deb" Package)
		dpkg-deb -x "$deb" "$stage"
		dpkg-deb -e "$deb" "$work/control-$pkg"
		{
			echo
			dpkg-deb -f "$deb" | awk 'NR == 1 { print; print "Status: install ok installed"; next } { print }'
		} >>"$meta/var/lib/dpkg/status"
		dpkg-deb -c "$deb" | awk '{ p = $6; sub(/^\./, "", p); sub(/\/$/, "", p); print (p == "" ? "/." : p) }' \
			>"$meta/var/lib/dpkg/info/$pkg.list"
		[ -f "$work/control-$pkg/md5sums" ] && cp "$work/control-$pkg/md5sums" "$meta/var/lib/dpkg/info/$pkg.md5sums"
		printf '2025-01-01 00:00:00 install %s:amd64 <none> %s\n2025-01-01 00:00:00 status installed %s:amd64 %s\n' \
			"$pkg" "$(dpkg-deb -f "$deb" Version)" "$pkg" "$(dpkg-deb -f "$deb" Version)" >>"$meta/var/log/dpkg.log"
	done
	# A new user, as an ssh package's postinst might add one.
	for f in passwd group shadow; do cp "$rootfs/etc/$f" "$meta/etc/$f"; done
	echo 'bench:x:1000:1000:kiln bench:/home/bench:/bin/bash' >>"$meta/etc/passwd"
	echo 'bench:x:1000:' >>"$meta/etc/group"
	echo 'bench:!:20089:0:99999:7:::' >>"$meta/etc/shadow"
	chmod 0640 "$meta/etc/shadow"
	cp --sparse=always "$in" "$out"
	{ debugfs_install "$stage"; debugfs_install "$meta"; } >"$work/install.debugfs"
	debugfs -w -f "$work/install.debugfs" "$out?offset=$part_start" >/dev/null 2>"$work/debugfs.log" || true
	grep -v -e '^debugfs ' -e 'already exists' -e 'File not found by ext2_lookup' "$work/debugfs.log" | head -n 5 >&2 || true
}

# make_v2_small V1 OUT: the --small change: ~2% of the image in new files,
# a rewritten file and a removed one.
make_v2_small() {
	local in=$1 out=$2 stage=$work/stage f s n=0 budget=$((bytes / 50))
	mkdir -p "$stage/usr/lib/bench" "$stage/etc"
	while IFS= read -r f; do
		s=$(stat -L -c %s "$f")
		[ $((n + s)) -le $budget ] || continue
		cp -L "$f" "$stage/usr/lib/bench/" 2>/dev/null || continue
		n=$((n + s))
	done < <(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name '*.so.*' -size +64k | sort)
	echo "kiln-bench v2" >"$stage/etc/hostname"
	cp --sparse=always "$in" "$out"
	{
		debugfs_install "$stage"
		f=$(cd "$work/tree" && find usr/share/doc -type f | sort | sed -n 1p)
		echo "rm \"/$f\""
	} >"$work/install.debugfs"
	debugfs -w -f "$work/install.debugfs" "$out?offset=$part_start" >/dev/null 2>&1 || true
}

# stats V1 V2: what the change is, as key=value lines.
image_stats() {
	/usr/bin/python3 - "$1" "$2" <<'EOF'
import sys
B, C = 4096, 65536
zero = bytes(C)
n = blocks = changed_blocks = chunks = nz1 = nz2 = changed_chunks = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(C), b.read(C)
        if not x and not y:
            break
        chunks += 1
        nz1 += x != zero[:len(x)]
        nz2 += y != zero[:len(y)]
        blocks += (len(y) + B - 1) // B
        if x != y:
            changed_chunks += 1
            changed_blocks += sum(x[i:i + B] != y[i:i + B] for i in range(0, len(y), B))
print("chunks_64k=%d" % chunks)
print("v1_nonzero_chunks_64k=%d" % nz1)
print("v2_nonzero_chunks_64k=%d" % nz2)
print("blocks_4k=%d" % blocks)
print("changed_blocks_4k=%d" % changed_blocks)
print("changed_chunks_64k=%d" % changed_chunks)
print("changed_blocks_pct=%.2f" % (100.0 * changed_blocks / blocks))
print("changed_chunks_pct=%.2f" % (100.0 * changed_chunks / chunks))
print("v1_nonzero_pct=%.1f" % (100.0 * nz1 / chunks))
EOF
}

if $small; then
	log "building the --small $size images from this machine's files"
	small_tree "$work/tree" $((bytes * 3 / 10))
	make_v1 "$work/tree" "$work/v1.raw"
	make_v2_small "$work/v1.raw" "$work/v2.raw"
	desc="$size raw, MBR, one ext4 partition with $(du -sh "$work/tree" | cut -f1) of this machine's programs and docs; v2 adds shared libraries"
else
	rootfs=$(debian_rootfs)
	debs=$(extra_debs)
	log "building the $size images (v1: debootstrap tree, v2: + $(ls "$debs"/*.deb | wc -l) packages)"
	make_v1 "$rootfs" "$work/v1.raw"
	make_v2_debian "$work/v1.raw" "$work/v2.raw" "$rootfs" "$debs"
	desc="$size raw, MBR, one ext4 partition (1 MiB to the end) with debootstrap --variant=minbase --include=$rootfs_pkgs bookworm ($(du -sh "$rootfs" | cut -f1)); v2 = v1 + $(ls "$debs"/*.deb | sed 's|.*/||; s|_.*||' | tr '\n' ' ' | sed 's/ $//') unpacked, dpkg status/lists, dpkg.log, passwd/group/shadow rewritten (debugfs)"
fi
for v in v1 v2; do
	e2fsck -fn "$work/$v.raw?offset=$part_start" >"$work/fsck.log" 2>&1 ||
		{ tail -n 5 "$work/fsck.log" >&2; log "the $v file system does not check clean"; exit 1; }
done
{
	echo "description=$desc"
	echo "size=$bytes"
	image_stats "$work/v1.raw" "$work/v2.raw"
} >"$work/stats"
mv "$work/v1.raw" "$v1"
mv "$work/v2.raw" "$v2"
mv "$work/stats" "$stats"
log "$(grep -E '^(changed_blocks_pct|changed_chunks_pct|v1_nonzero_pct)=' "$stats" | tr '\n' ' ')"
printf '%s\n%s\n%s\n' "$v1" "$v2" "$stats"
