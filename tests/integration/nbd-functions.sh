# Helpers for the kiln-nbd tests: source functions.sh first, then this.
#   requires_libnbd_python   skip (exit 77) unless nbdsh's python has libnbd
#   start_nbd [ARGS]         start kiln-nbd on a fresh Unix socket in $TMPDIR (or
#                            on $NBD_SOCK_AT when set) and wait for its pidfile; sets NBD_SOCK, NBD_PIDFILE,
#                            NBD_PID, NBD_LOG. The EXIT hook stops it (SIGTERM,
#                            10 s) and fails loudly if it does not exit.
#   start_nbd_tcp [HOST:]PORT [ARGS]  the same, listening on TCP
#   stop_nbd [PID]           SIGTERM; fail unless it exits 0 within 10 s
#   signal_nbd SIG [PID]     the same with another signal (INT)
#   kill9_nbd [PID]          SIGKILL it and reap it (crash tests)
#   nbd_alive [PID]          true while the daemon runs (not a zombie)
#   nbd_uri EXPORT [SOCK]    nbd+unix:///EXPORT?socket=SOCK (default $NBD_SOCK)
#   nbd_tcp_uri EXPORT PORT  nbd://127.0.0.1:PORT/EXPORT
#   free_tcp_port            a port on 127.0.0.1 nobody listens on now
#   wait_until SECS CMD...   poll CMD every 0.1 s until it succeeds; 1 at timeout
#   nbdsh_run FILE [ARGS]    run the python FILE in /usr/bin/nbdsh (no implicit
#                            handle), sys.argv = [FILE, ARGS...]
#   nbd_log_tail             the last lines of every daemon log, for failures
# KILN_NBD names the server (default: kiln-nbd next to $KILN).

: "${KILN_NBD:=$(dirname "$KILN")/kiln-nbd}"
export KILN_NBD
[ -x "$KILN_NBD" ] || fail "KILN_NBD=$KILN_NBD is not an executable"

NBD_SOCK="" NBD_PIDFILE="" NBD_PID="" NBD_LOG=""
_nbd_logs=()
declare -A _nbd_done=()        # pid -> 1 once stopped and reaped

requires_libnbd_python() {
	requires nbdsh
	if ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
		echo "requires python3-libnbd (/usr/bin/python3 cannot import nbd)"
		exit 77
	fi
}

wait_until() { # SECS CMD...
	local tries=$(($1 * 10)) i
	shift
	for ((i = 0; i < tries; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	"$@"
}

nbd_alive() { # [PID]
	local pid=${1:-$NBD_PID} state
	[ -n "$pid" ] || return 1
	state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

nbd_log_tail() {
	local l
	for l in "${_nbd_logs[@]}"; do
		[ -s "$l" ] || continue
		echo "--- last lines of $l:"
		tail -n 10 "$l"
	done >&2
}

# The daemon's exit status once it is gone (only for our own children).
_nbd_reap() { # PID
	local rc=0
	wait "$1" 2>/dev/null || rc=$?
	_nbd_done[$1]=1
	return $rc
}

_nbd_start() { # LISTEN-ARGS... -- ARGS...
	local listen=() i
	while [ "$1" != -- ]; do
		listen+=("$1")
		shift
	done
	shift
	NBD_SOCK=${NBD_SOCK_AT:-$(mktemp -u "$TMPDIR/nbd.XXXXXX.sock")}
	NBD_PIDFILE=$(mktemp -u "$TMPDIR/nbd.XXXXXX.pid")
	NBD_LOG=$(mktemp "$TMPDIR/nbd.XXXXXX.log")
	_nbd_logs+=("$NBD_LOG")
	[ "${listen[0]}" = --unix ] && listen+=("$NBD_SOCK")
	"$KILN_NBD" "${listen[@]}" --pidfile "$NBD_PIDFILE" --foreground "$@" 2>>"$NBD_LOG" &
	NBD_PID=$!
	cleanup_fn _nbd_cleanup "$NBD_PID"
	# Wait for the pidfile: a bounded loop of short polls, never one sleep.
	for ((i = 0; i < 300; i++)); do
		[ -s "$NBD_PIDFILE" ] && break
		if ! nbd_alive "$NBD_PID"; then
			_nbd_reap "$NBD_PID" || true
			nbd_log_tail
			fail "kiln-nbd ${listen[*]} $* exited before writing its pidfile"
		fi
		sleep 0.1
	done
	[ -s "$NBD_PIDFILE" ] || fail "kiln-nbd wrote no pidfile $NBD_PIDFILE in 30 s"
	assert_eq "$(cat "$NBD_PIDFILE")" "$NBD_PID" "the pid in $NBD_PIDFILE"
	echo "kiln-nbd ${listen[*]} $* running as pid $NBD_PID"
}

start_nbd() { # [ARGS]
	_nbd_start --unix -- "$@"
}

start_nbd_tcp() { # [HOST:]PORT [ARGS]
	local spec=$1
	shift
	_nbd_start --tcp "$spec" -- "$@"
}

# Send SIG, then wait up to 10 s. Returns 1 (and says why) if the daemon
# is still alive: it is then killed with SIGKILL.
_nbd_term() { # PID [SIG]
	local pid=$1 sig=${2:-TERM} i
	kill -"$sig" "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		nbd_alive "$pid" || return 0
		sleep 0.1
	done
	echo "FAIL: kiln-nbd (pid $pid) still runs 10 s after SIG$sig; sending SIGKILL" >&2
	kill -KILL "$pid" 2>/dev/null || true
	return 1
}

signal_nbd() { # SIG [PID]
	local sig=$1 pid=${2:-$NBD_PID} rc=0
	[ -z "${_nbd_done[$pid]:-}" ] || fail "kiln-nbd pid $pid was already stopped"
	if ! _nbd_term "$pid" "$sig"; then
		_nbd_reap "$pid" || true
		nbd_log_tail
		fail "kiln-nbd did not exit after SIG$sig"
	fi
	_nbd_reap "$pid" || rc=$?
	[ "$rc" -eq 0 ] || { nbd_log_tail; fail "kiln-nbd exited $rc after SIG$sig (expected 0)"; }
	echo "kiln-nbd pid $pid exited 0 after SIG$sig"
}

stop_nbd() { # [PID]
	signal_nbd TERM "$@"
}

kill9_nbd() { # [PID]
	local pid=${1:-$NBD_PID} rc=0
	kill -KILL "$pid"
	_nbd_reap "$pid" || rc=$?
	assert_eq "$rc" 137 "exit status of kiln-nbd after SIGKILL"
}

# The EXIT hook. A daemon that ignores SIGTERM fails the test even when
# everything else passed: exit 1 from here ends the hooks (the ones
# registered before the daemon started are skipped, which is why tests
# start the daemon first and stack mounts on top of it).
_nbd_cleanup() { # PID
	local pid=$1
	[ -z "${_nbd_done[$pid]:-}" ] || return 0
	if ! _nbd_term "$pid"; then
		nbd_log_tail
		exit 1
	fi
	_nbd_reap "$pid" || true
}

nbd_uri() { # EXPORT [SOCK]
	echo "nbd+unix:///$1?socket=${2:-$NBD_SOCK}"
}

nbd_tcp_uri() { # EXPORT PORT
	echo "nbd://127.0.0.1:$2/$1"
}

free_tcp_port() {
	/usr/bin/python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

nbdsh_run() { # FILE [ARGS]
	local f=$1
	shift
	# the arguments reach the script as a python list literal
	/usr/bin/nbdsh -n -c "import sys; sys.argv = $(/usr/bin/python3 -c \
		'import sys; print(repr(sys.argv[1:]))' "$f" "$@")
exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))"
}
