#!/bin/bash
# bench-snapshot: kiln's snapshots against restic, borg (buzhash and fixed
# chunks) and casync, on the same disk images, same machine, one run, warm
# page cache. For each tool: a full backup of image v1, an incremental
# backup of v2 (~2% of blocks changed), a restore of v2 (checked with cmp),
# the repository's size, CPU seconds and peak RSS (GNU time -v). kiln's
# incremental is measured three ways: `volume import v2 --volume-id` +
# `snapshot create`; `snapshot create` after only the changed 4 KiB blocks
# were written through kiln-nbd (what a guest writes); and `snapshot create`
# after `nbdcopy v2.raw` rewrote the whole image through kiln-nbd (each of
# these two in a store holding only v1, so the new chunks must be stored). Prints
# the tables, the ratios kiln/peer and the targets; with --record, appends
# them to bench/RESULTS.md.
#
#   bench/bench-snapshot.sh [--record] [--size SIZE] [--small] [--runs N]
#
# --runs N repeats every measurement N times and reports medians (the
# largest peak RSS): on a shared or noisy machine, one run of a command
# that takes 0.05 s can be off by 2x.
#
# --small: a ~256 MiB image of this machine's files (no debootstrap); peers
# that are not installed are skipped (except under CI=true). `make check`
# runs it so the script keeps working; it still checks every kiln restore
# with cmp and fails on any error. Images are built by bench/make-disk-image.sh and cached in
# $KILN_BENCH_CACHE (default bench/.cache).
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
KILN=${KILN:-$here/../build/kiln}
KILN_NBD=${KILN_NBD:-$here/../build/kiln-nbd}
size=
record=false
small=false
runs=1
while [ $# -gt 0 ]; do
	case $1 in
	--record) record=true ;;
	--size) size=$2; shift ;;
	--small) small=true ;;
	--runs) runs=$2; shift ;;
	*) echo "usage: $0 [--record] [--size SIZE] [--small] [--runs N]" >&2; exit 2 ;;
	esac
	shift
done
case $runs in
'' | *[!0-9]* | 0) echo "bench-snapshot: --runs takes a positive number" >&2; exit 2 ;;
esac
[ -x "$KILN" ] && [ -x "$KILN_NBD" ] || { echo "bench-snapshot: build kiln first (make)" >&2; exit 1; }
for t in /usr/bin/time nbdcopy cmp; do
	command -v $t >/dev/null || { echo "bench-snapshot: $t is missing (make deps)" >&2; exit 1; }
done
/usr/bin/python3 -c 'import nbd' 2>/dev/null || { echo "bench-snapshot: python3-libnbd is missing" >&2; exit 1; }
peers=()
for p in restic borg casync; do
	if command -v $p >/dev/null; then
		peers+=("$p")
	elif ! $small || [ "${CI:-}" = true ]; then
		# under CI a skip is a failure (.ci/run installs every tool)
		echo "bench-snapshot: $p is missing (apt-get install restic borgbackup casync)" >&2
		exit 1
	else
		echo "bench-snapshot: $p is not installed: skipped"
	fi
done
have() { case " ${peers[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- images ----------------------------------------------------------------

mdi_args=()
$small && mdi_args+=(--small)
[ -n "$size" ] && mdi_args+=(--size "$size")
images=$("$here/make-disk-image.sh" "${mdi_args[@]}")
v1=$(sed -n 1p <<<"$images")
v2=$(sed -n 2p <<<"$images")
stats=$(sed -n 3p <<<"$images")
stat_of() { sed -n "s/^$1=//p" "$stats"; }
bytes=$(stat -c %s "$v1")
[ "$(stat -c %s "$v2")" = "$bytes" ] || { echo "bench-snapshot: v1 and v2 differ in size" >&2; exit 1; }

work=$(mktemp -d /tmp/kiln-bench-snapshot.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # FILE
	for _ in $(seq 1 200); do [ -e "$1" ] && return 0; sleep 0.05; done
	echo "bench-snapshot: $1 did not appear" >&2
	exit 1
}
warm() { cat "$v1" "$v2" >/dev/null; }

# ---- measuring -------------------------------------------------------------

# timed KEY CMD...: run CMD under GNU time; wall[KEY] (s, monotonic
# enough: date +%s.%N), cpu[KEY] (user+sys s), rss[KEY] (KiB).
declare -A wall cpu rss
timed() {
	local key=$1 t0 t1
	shift
	t0=$(date +%s.%N)
	/usr/bin/time -v -o "$work/time.$key" "$@"
	t1=$(date +%s.%N)
	wall[$key]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	cpu[$key]=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f", u + s }' "$work/time.$key")
	rss[$key]=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.$key")
}
# combine NEW KEY...: wall and cpu summed, rss the largest
combine() {
	local new=$1 k w=0 c=0 r=0
	shift
	for k in "$@"; do
		w=$(awk -v a="$w" -v b="${wall[$k]}" 'BEGIN { printf "%.3f", a + b }')
		c=$(awk -v a="$c" -v b="${cpu[$k]}" 'BEGIN { printf "%.2f", a + b }')
		[ "${rss[$k]}" -gt "$r" ] && r=${rss[$k]}
	done
	wall[$new]=$w cpu[$new]=$c rss[$new]=$r
}
ticks=$(getconf CLK_TCK)
proc_cpu() { awk -v t="$ticks" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
proc_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
declare -A repo
# link_disk FILE: $rw/disk.raw is the image the peers back up: one path
# for both versions, as a backed-up disk would be.
link_disk() { ln -f "$1" "$rw/disk.raw" 2>/dev/null || cp --sparse=always "$1" "$rw/disk.raw"; }
check_restore() { # WHAT FILE
	if ! cmp -s "$2" "$v2"; then
		echo "bench-snapshot: $1: the restored image differs from v2" >&2
		exit 1
	fi
	rm -f "$2"
}

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "images: $(stat_of description)"
echo "        $(numfmt --to=iec "$bytes") each; v1 $(stat_of v1_nonzero_pct)% non-zero 64 KiB chunks;" \
	"v2 changes $(stat_of changed_blocks_pct)% of 4 KiB blocks, $(stat_of changed_chunks_pct)% of 64 KiB chunks"

# The NBD writer: "delta" writes only the 4 KiB blocks where v2 differs from
# v1 (what the guest wrote); "copy" only connects (nbdcopy does the writing).
# Either then holds its connection until its stdin closes.
cat >"$work/nbd-writer.py" <<'EOF'
import nbd, sys
mode, uri = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
written = 0
if mode == "delta":
    B, STEP = 4096, 1 << 20
    with open(sys.argv[3], "rb") as a, open(sys.argv[4], "rb") as b:
        off = 0
        while True:
            x, y = a.read(STEP), b.read(STEP)
            if not y:
                break
            i = 0
            while x != y and i < len(y):
                if x[i:i + B] == y[i:i + B]:
                    i += B
                    continue
                j = i + B
                while j < len(y) and x[j:j + B] != y[j:j + B]:
                    j += B
                h.pwrite(y[i:j], off + i)
                written += j - i
                i = j
            off += len(y)
    h.flush()
print("ready", written, flush=True)
sys.stdin.read()            # hold the connection until told
h.shutdown()
EOF
declare -A nbd_written nbd_write_s nbd_write_cpu

# one_run: every measurement once, in a fresh directory $rw.
one_run() {
	rw=$work/run
	rm -rf "$rw"
	mkdir "$rw"
	warm
	# kiln
	export KILN_STORE=$rw/store
	"$KILN" init >/dev/null
	region=$KILN_STORE/regions/us-east-1
	echo "kiln: import + snapshot of v1, v2..."
	timed k_imp1 "$KILN" volume import "$v1" >"$rw/out"
	vol=$(cat "$rw/out")
	timed k_snap1 "$KILN" snapshot create "$vol" >"$rw/out"
	snap1=$(cat "$rw/out")
	timed k_imp2 "$KILN" volume import "$v2" --volume-id "$vol" >/dev/null
	timed k_snap2 "$KILN" snapshot create "$vol" >"$rw/out"
	snap2=$(cat "$rw/out")
	combine kiln_full k_imp1 k_snap1
	combine kiln_incr k_imp2 k_snap2
	# The repository: chunk packs, index, manifests, catalog. Not volumes/:
	# the overlays of live volumes are disks in use, not backups.
	repo[kiln]=$(du -sb --exclude=volumes "$region" | cut -f1)
	kiln_packs=$(du -sb "$region/packs" | cut -f1)
	kiln_manifests=$(du -sb "$region/manifests" | cut -f1)
	echo "kiln: restore (snapshot export) of v2..."
	timed kiln_restore "$KILN" snapshot export "$snap2" "$rw/kiln-out.raw"
	check_restore "kiln snapshot export" "$rw/kiln-out.raw"
	# The chunks compressed again at rest (zstd 9), as a store would be
	# after `kiln store recompress`; then the restore from that.
	echo "kiln: store recompress, and restore of v2 from it..."
	timed kiln_recompress "$KILN" store recompress --region us-east-1 >/dev/null
	repo[kiln_rc]=$(du -sb --exclude=volumes "$region" | cut -f1)
	timed kiln_restore_rc "$KILN" snapshot export "$snap2" "$rw/kiln-out.raw"
	check_restore "kiln snapshot export after store recompress" "$rw/kiln-out.raw"

	# The change written through kiln-nbd onto a volume made from snapshot 1:
	# "delta" writes only the 4 KiB blocks that differ (as the guest did);
	# "copy" rewrites the whole image with nbdcopy. Each case has a store of
	# its own holding only v1, so its snapshot must compress and store the
	# new chunks, as for a real guest. A client stays connected while `kiln
	# snapshot create` runs, so the request goes to the daemon over the
	# volume's control socket, as it would for a running guest.
	nbd_hwm=0
	# nbd_case KEY MODE [DAEMON-ARGS]: set up, connect (and for delta,
	# write), snapshot, export, cmp.
	nbd_case() {
		local key=$1 mode=$2 st=$rw/store-$1 sock=$rw/nbd-$1.sock ready n t0 t1 cw c0 c1 s v snap wpid pid hwm uri
		shift 2
		"$KILN" --store "$st" init >/dev/null
		v=$("$KILN" --store "$st" volume import "$v1")
		s=$("$KILN" --store "$st" snapshot create "$v")
		v=$("$KILN" --store "$st" volume create --snapshot-id "$s")
		uri="nbd+unix:///$v?socket=$sock"
		"$KILN_NBD" --store "$st" --unix "$sock" --pidfile "$rw/nbd-$key.pid" --foreground --export "$v" \
			"$@" 2>"$rw/nbd-$key.log" &
		pid=$!
		pids+=($pid)
		wait_for "$rw/nbd-$key.pid"
		cw=$(proc_cpu "$pid")
		t0=$(date +%s.%N)
		coproc WRITER { /usr/bin/python3 "$work/nbd-writer.py" "$mode" "$uri" "$v1" "$v2"; }
		wpid=$WRITER_PID
		read -r ready n <&"${WRITER[0]}"
		[ "$ready" = ready ] || { echo "bench-snapshot: the NBD writer failed" >&2; exit 1; }
		if [ "$mode" = copy ]; then
			nbdcopy "$v2" "$uri"
			n=$bytes
		fi
		t1=$(date +%s.%N)
		nbd_written[$key]=$n
		nbd_write_s[$key]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
		c0=$(proc_cpu "$pid")
		nbd_write_cpu[$key]=$(awk -v a="$cw" -v b="$c0" 'BEGIN { printf "%.2f", b - a }')
		timed "$key" "$KILN" --store "$st" snapshot create "$v" >"$rw/out"
		c1=$(proc_cpu "$pid")
		snap=$(cat "$rw/out")
		# the work is the daemon's: add its CPU; its RSS is reported apart
		cpu[$key]=$(awk -v a="${cpu[$key]}" -v b="$c0" -v c="$c1" 'BEGIN { printf "%.2f", a + c - b }')
		eval "exec ${WRITER[1]}>&-"
		wait "$wpid"
		hwm=$(proc_hwm "$pid")
		if [ "$hwm" -gt "$nbd_hwm" ]; then nbd_hwm=$hwm; fi
		kill -TERM "$pid"
		wait "$pid" || true
		pids=()
		"$KILN" --store "$st" snapshot export "$snap" "$rw/nbd-out.raw"
		check_restore "snapshot after writes through kiln-nbd ($mode)" "$rw/nbd-out.raw"
	}
	echo "kiln: the change written through kiln-nbd, then snapshot..."
	nbd_case kiln_nbd_delta delta
	nbd_case kiln_nbd_delta_off delta --precapture-interval 0
	nbd_case kiln_nbd_copy copy
	combine kiln_cli k_imp1 k_snap1 k_imp2 k_snap2 kiln_restore kiln_nbd_delta kiln_nbd_copy

	# the peers
	if have restic; then
		echo "restic: backup v1, v2, restore..."
		warm
		export RESTIC_REPOSITORY=$rw/restic RESTIC_CACHE_DIR=$rw/restic-cache
		rargs=(-q)
		if grep -q -- --insecure-no-password <<<"$(restic init --help)"; then
			rargs+=(--insecure-no-password)
		else
			echo bench >"$rw/restic-pass"
			export RESTIC_PASSWORD_FILE=$rw/restic-pass
		fi
		restic init "${rargs[@]}" >/dev/null
		link_disk "$v1"
		timed restic_full restic backup "${rargs[@]}" --host kiln-bench "$rw/disk.raw"
		link_disk "$v2"
		timed restic_incr restic backup "${rargs[@]}" --host kiln-bench "$rw/disk.raw"
		ropt=()
		if grep -q -- --sparse <<<"$(restic restore --help)"; then ropt+=(--sparse); fi
		timed restic_restore restic restore "${rargs[@]}" "${ropt[@]}" latest --target "$rw/restic-out"
		check_restore restic "$rw/restic-out$rw/disk.raw"
		repo[restic]=$(du -sb "$rw/restic" | cut -f1)
	fi

	if have borg; then
		export BORG_BASE_DIR=$rw/borg-base BORG_PASSPHRASE='' \
			BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
		# borg_case NAME CREATE-OPTIONS...
		borg_case() {
			local name=$1 r=$rw/$1
			shift
			echo "$name: create v1, v2, extract..."
			warm
			borg init -e none "$r"
			link_disk "$v1"
			timed "${name}_full" borg create "$@" "$r::v1" "$rw/disk.raw"
			link_disk "$v2"
			timed "${name}_incr" borg create "$@" "$r::v2" "$rw/disk.raw"
			mkdir "$rw/$name-out"
			timed "${name}_restore" env -C "$rw/$name-out" borg extract --sparse "$r::v2"
			check_restore "$name" "$rw/$name-out$rw/disk.raw"
			repo[$name]=$(du -sb "$r" | cut -f1)
		}
		borg_case borg                                   # buzhash, lz4: borg's defaults
		borg_case borg_fixed --chunker-params fixed,524288 --compression zstd,3   # as in MEASURED.md
	fi

	if have casync; then
		echo "casync: make v1, v2, extract..."
		warm
		link_disk "$v1"
		timed casync_full casync make --store="$rw/casync.castr" "$rw/casync-v1.caibx" "$rw/disk.raw" >/dev/null
		link_disk "$v2"
		timed casync_incr casync make --store="$rw/casync.castr" "$rw/casync-v2.caibx" "$rw/disk.raw" >/dev/null
		timed casync_restore casync extract --store="$rw/casync.castr" "$rw/casync-v2.caibx" "$rw/casync-out.raw"
		check_restore casync "$rw/casync-out.raw"
		repo[casync]=$(du -sb "$rw/casync.castr" "$rw/casync-v1.caibx" "$rw/casync-v2.caibx" | awk '{ s += $1 } END { print s }')
	fi
}

# Each metric is the median over --runs (the largest, for peak RSS).
declare -A runs_wall runs_cpu runs_rss
nbd_hwm_max=0
for ((run = 1; run <= runs; run++)); do
	if [ "$runs" -gt 1 ]; then echo "== run $run of $runs"; fi
	one_run
	for k in "${!wall[@]}"; do
		runs_wall[$k]+="${wall[$k]} "
		runs_cpu[$k]+="${cpu[$k]} "
		runs_rss[$k]+="${rss[$k]} "
	done
	if [ "$nbd_hwm" -gt "$nbd_hwm_max" ]; then nbd_hwm_max=$nbd_hwm; fi
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
largest() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -n 1; }
for k in "${!runs_wall[@]}"; do
	wall[$k]=$(median "${runs_wall[$k]}")
	cpu[$k]=$(printf '%.2f' "$(median "${runs_cpu[$k]}")")
	rss[$k]=$(largest "${runs_rss[$k]}")
done
nbd_hwm=$nbd_hwm_max

# ---- report ----------------------------------------------------------------

mbs() { awk -v b="$bytes" -v s="${wall[$1]}" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
sec() { awk -v s="${wall[$1]}" 'BEGIN { printf (s < 1 ? "%.3f" : "%.2f"), s }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "-" }'; }
peak() { # TOOL: the largest RSS (KiB) of its full, incr and restore runs
	local m=0 k
	for k in "$1_full" "$1_incr" "$1_restore"; do
		[ "${rss[$k]}" -gt "$m" ] && m=${rss[$k]}
	done
	echo "$m"
}
cpus() { echo "${cpu[$1_full]} / ${cpu[$1_incr]} / ${cpu[$1_restore]}"; }
label() {
	case $1 in
	borg) echo "borg $(borg --version | cut -d' ' -f2) (buzhash, lz4)" ;;
	borg_fixed) echo "borg $(borg --version | cut -d' ' -f2) (fixed 512 KiB, zstd 3)" ;;
	restic) echo "restic $(restic version | cut -d' ' -f2)" ;;
	casync) echo "casync $(casync --version | awk '{ print $2 }')" ;;
	esac
}
tools=()
for t in restic borg borg_fixed casync; do
	[ -n "${repo[$t]:-}" ] && tools+=("$t")
done
kiln_peak=$(peak kiln)
[ "${rss[kiln_cli]}" -gt "$kiln_peak" ] && kiln_peak=${rss[kiln_cli]}

table=$(
	echo "| tool | full backup MB/s | incremental s | restore MB/s | repository MiB | CPU s full / incr / restore | peak RSS MiB |"
	echo "| --- | --- | --- | --- | --- | --- | --- |"
	echo "| kiln, import + snapshot | $(mbs kiln_full) | $(sec kiln_incr) | $(mbs kiln_restore) | $(mib "${repo[kiln]}") | $(cpus kiln) | $(kib_mib "$kiln_peak") |"
	echo "| kiln, the same after \`kiln store recompress\` (zstd 9 at rest) | — | — | $(mbs kiln_restore_rc) | $(mib "${repo[kiln_rc]}") | — / — / ${cpu[kiln_restore_rc]} | — |"
	echo "| kiln, snapshot after the changed blocks were written via kiln-nbd | — | $(sec kiln_nbd_delta) | — | — | — / ${cpu[kiln_nbd_delta]} / — | daemon $(kib_mib "$nbd_hwm") |"
	echo "| kiln, the same with kiln-nbd --precapture-interval 0 (no capture ahead) | — | $(sec kiln_nbd_delta_off) | — | — | — / ${cpu[kiln_nbd_delta_off]} / — | daemon $(kib_mib "$nbd_hwm") |"
	echo "| kiln, snapshot after nbdcopy of all of v2 via kiln-nbd | — | $(sec kiln_nbd_copy) | — | — | — / ${cpu[kiln_nbd_copy]} / — | daemon $(kib_mib "$nbd_hwm") |"
	for t in "${tools[@]}"; do
		echo "| $(label "$t") | $(mbs "${t}_full") | $(sec "${t}_incr") | $(mbs "${t}_restore") | $(mib "${repo[$t]}") | $(cpus "$t") | $(kib_mib "$(peak "$t")") |"
	done
	if [ ${#tools[@]} -gt 0 ]; then
		echo
		echo "| kiln against | full MB/s kiln/peer | incremental: peer s / kiln s (import; nbd blocks; nbdcopy) | restore MB/s kiln/peer | repository kiln/peer (as written; recompressed) | CPU s kiln/peer full / incr / restore | peak RSS kiln/peer |"
		echo "| --- | --- | --- | --- | --- | --- | --- |"
		for t in "${tools[@]}"; do
			echo "| $(label "$t") | $(ratio "$(mbs kiln_full)" "$(mbs "${t}_full")") |" \
				"$(ratio "${wall[${t}_incr]}" "${wall[kiln_incr]}"); $(ratio "${wall[${t}_incr]}" "${wall[kiln_nbd_delta]}"); $(ratio "${wall[${t}_incr]}" "${wall[kiln_nbd_copy]}") |" \
				"$(ratio "$(mbs kiln_restore)" "$(mbs "${t}_restore")") | $(ratio "${repo[kiln]}" "${repo[$t]}"); $(ratio "${repo[kiln_rc]}" "${repo[$t]}") |" \
				"$(ratio "${cpu[kiln_full]}" "${cpu[${t}_full]}") / $(ratio "${cpu[kiln_incr]}" "${cpu[${t}_incr]}") / $(ratio "${cpu[kiln_restore]}" "${cpu[${t}_restore]}") |" \
				"$(ratio "$kiln_peak" "$(peak "$t")") |"
		done
	fi
	echo
	echo "Writes through kiln-nbd before those snapshots (not in the times): $(mib "${nbd_written[kiln_nbd_delta]}") MiB of changed blocks in ${nbd_write_s[kiln_nbd_delta]} s;" \
		"nbdcopy of the whole image in ${nbd_write_s[kiln_nbd_copy]} s."
	echo "kiln store recompress (zstd 9) after both snapshots: $(sec kiln_recompress) s, ${cpu[kiln_recompress]} CPU-s; repository $(mib "${repo[kiln]}") -> $(mib "${repo[kiln_rc]}") MiB."
	if [ -n "${wall[restic_full]:-}" ]; then
		echo "All of kiln's work to that repository (import + snapshot of v1 and v2, then recompress): $(awk -v a="${wall[kiln_full]}" -v b="${wall[kiln_incr]}" -v c="${wall[kiln_recompress]}" 'BEGIN { printf "%.2f", a + b + c }') s; restic's backups of v1 and v2: $(awk -v a="${wall[restic_full]}" -v b="${wall[restic_incr]}" 'BEGIN { printf "%.2f", a + b }') s."
	fi
	echo "kiln-nbd's CPU while the changed blocks were written: ${nbd_write_cpu[kiln_nbd_delta]} s capturing ahead," \
		"${nbd_write_cpu[kiln_nbd_delta_off]} s with --precapture-interval 0 (the difference is the snapshot work done early); during the nbdcopy of the whole image, ${nbd_write_cpu[kiln_nbd_copy]} s."
	if [ "$runs" -gt 1 ]; then
		echo "Medians of $runs runs; the seconds of each run:"
		for t in kiln kiln_recompress kiln_restore_rc kiln_nbd_delta kiln_nbd_delta_off kiln_nbd_copy "${tools[@]}"; do
			line=""
			for k in "${t}_full" "${t}_incr" "${t}_restore" "$t"; do
				if [ -n "${runs_wall[$k]:-}" ]; then line+="; $k ${runs_wall[$k]% }"; fi
			done
			echo "- ${line#; }"
		done
	fi
	echo "kiln's repository: packs $(mib "$kiln_packs") MiB, manifests $(mib "$kiln_manifests") MiB, the rest (catalog, index, reserve) $(mib $((repo[kiln] - kiln_packs - kiln_manifests))) MiB."
)

# target NAME HOLDS DETAIL: one line of the target check
targets=""
target() { targets+="- $1: $3 — $2"$'\n'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if (v == "-") print "n/a"; else if ((op == ">=" && v + 0 >= t + 0) || (op == "<=" && v + 0 <= t + 0)) print "MET"; else print "MISSED" }'; }
check_peer() { # PEER: is it measured?
	[ -n "${repo[$1]:-}" ]
}
for t in restic borg borg_fixed; do
	check_peer "$t" || continue
	x=$(ratio "$(mbs kiln_full)" "$(mbs "${t}_full")")
	target "full snapshot >= 5x $(label "$t") throughput" "$(verdict "$x" 5 '>=')" "$(mbs kiln_full) / $(mbs "${t}_full") MB/s = ${x}x"
done
if check_peer restic; then
	x=$(ratio "${wall[restic_incr]}" "${wall[kiln_nbd_delta]}")
	y=$(ratio "${wall[restic_incr]}" "${wall[kiln_nbd_copy]}")
	z=$(ratio "${wall[restic_incr]}" "${wall[kiln_nbd_delta_off]}")
	target "incremental after writes through kiln-nbd >= 20x faster than restic's" "$(verdict "$x" 20 '>=') (changed blocks written); $(verdict "$y" 20 '>=') (whole image nbdcopy'd); $(verdict "$z" 20 '>=') (changed blocks, no capture ahead)" \
		"$(sec restic_incr) s / $(sec kiln_nbd_delta) s = ${x}x; after nbdcopy of all of v2 $(sec restic_incr) s / $(sec kiln_nbd_copy) s = ${y}x; changed blocks with --precapture-interval 0 $(sec restic_incr) s / $(sec kiln_nbd_delta_off) s = ${z}x"
fi
if check_peer borg_fixed; then
	x=$(ratio "${wall[borg_fixed_incr]}" "${wall[kiln_incr]}")
	target "incremental via import >= 3x faster than borg fixed" "$(verdict "$x" 3 '>=')" "$(sec borg_fixed_incr) s / $(sec kiln_incr) s = ${x}x"
fi
if check_peer restic; then
	x=$(ratio "$(mbs kiln_restore)" "$(mbs restic_restore)")
	target "restore >= 3x restic" "$(verdict "$x" 3 '>=')" "$(mbs kiln_restore) / $(mbs restic_restore) MB/s = ${x}x"
	x=$(ratio "${repo[kiln]}" "${repo[restic]}")
	y=$(ratio "${repo[kiln_rc]}" "${repo[restic]}")
	target "repository no larger than restic's" "$(verdict "$x" 1 '<=') (as snapshots write it, zstd 1); $(verdict "$y" 1 '<=') (after kiln store recompress, zstd 9)" \
		"$(mib "${repo[kiln]}") / $(mib "${repo[restic]}") MiB = ${x}; recompressed $(mib "${repo[kiln_rc]}") / $(mib "${repo[restic]}") MiB = ${y}"
fi
x=$(awk -v a="$kiln_peak" -v b="$nbd_hwm" 'BEGIN { print (a > b ? a : b) / 1024 }')
target "kiln peak RSS <= 256 MiB" "$(verdict "$x" 256 '<=')" "CLI $(kib_mib "$kiln_peak") MiB, kiln-nbd daemon $(kib_mib "$nbd_hwm") MiB"

echo
echo "$table"
echo
echo "Targets:"
printf '%s' "$targets"

if $record; then
	commit() { # without running git: HEAD's commit, abbreviated
		local g=$here/../.git h
		h=$(cat "$g/HEAD" 2>/dev/null) || { echo '?'; return; }
		case $h in
		ref:*) h=${h#ref: }
			if [ -f "$g/$h" ]; then h=$(cat "$g/$h"); else h=$(awk -v r="$h" '$2 == r { print $1 }' "$g/packed-refs" 2>/dev/null); fi ;;
		esac
		echo "${h:0:7}"
	}
	{
		echo
		echo "## bench-snapshot, $(date -u +%Y-%m-%d), commit $(commit)"
		echo
		echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); warm page cache; load average at the start $load."
		echo "Images: $(stat_of description). v1 has $(stat_of v1_nonzero_pct)% non-zero 64 KiB chunks; v2 changes $(stat_of changed_blocks_pct)% of 4 KiB blocks, $(stat_of changed_chunks_pct)% of 64 KiB chunks."
		echo "kiln $("$KILN" --version | cut -d' ' -f2): 64 KiB chunks, zstd 1 (store defaults). Full = \`volume import v1\` + \`snapshot create\`; recompressed = after \`kiln store recompress\` (zstd 9) of both snapshots; incremental = \`volume import v2 --volume-id\` + \`snapshot create\`, or \`snapshot create\` alone after writes through kiln-nbd (daemon CPU included); restore = \`snapshot export\`. Repository = the region without volumes/."
		if [ "$runs" -gt 1 ]; then echo "Each figure is the median of $runs runs (peak RSS: the largest)."; fi
		echo "Peers back up one path holding v1 then v2; borg and restic with their caches in a fresh directory; restores checked with cmp. MB/s are of the image size (10^6 bytes)."
		echo
		echo "$table"
		echo
		echo "Targets:"
		echo
		printf '%s' "$targets"
	} >>"$here/RESULTS.md"
	echo "recorded in bench/RESULTS.md"
fi
