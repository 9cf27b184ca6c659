#!/bin/sh
# Stage 3 of the VM tier (tests/vm/init.sh): run by BusyBox init (`::once:` in /etc/inittab)
# after its rcS has started the daemon with the release tarball's /etc/init.d/S50nanoclaw.
# Checks that the rc script's start returned a serving daemon detached from it (its parent is
# init) with the idle agent running, that `upgrade` hands the agent over to a freshly
# installed binary (same agent process, new daemon), and that `stop` stops agent and daemon;
# then prints the VM tier's one `NANOCLAW-VM-RESULT:` line and powers off.

export PATH=/usr/sbin:/bin
RC=/etc/init.d/S50nanoclaw
NC=/usr/sbin/nanoclaw

finish() {
	echo "NANOCLAW-VM-RESULT: $*"
	poweroff -f
}

fail() {
	echo "--- failure diagnostics"
	cat /var/log/nanoclaw.log
	$NC agents --json
	$NC audit -n 30
	finish "FAIL (release tarball under BusyBox init) $*"
}

# True while pid $1 runs (a zombie that init has not reaped yet does not).
alive() {
	state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' /proc/"$1"/status 2>/dev/null)
	[ -n "$state" ] && [ "$state" != Z ]
}

daemon_pid() {
	sed -n 1p /var/run/nanoclaw.pid 2>/dev/null
}

# The idle agent's pid while it runs (the agents' own keys are the ones indented by 4).
idle_pid() {
	$NC agents --json 2>/dev/null | awk -F: '
		/^    "name":/ { n = $2 }
		/^    "pid":/ { p = $2; gsub(/[^0-9]/, "", p) }
		/^    "state":/ { s = $2 }
		/^  }/ { if (n ~ /"idle"/ && s ~ /"running"/) print p; n = ""; p = ""; s = "" }'
}

# Sets $idle to the idle agent's pid once it runs (30 s at most).
wait_idle() {
	read -r up _ </proc/uptime
	deadline=$((${up%.*} + 30))
	until idle=$(idle_pid) && [ -n "$idle" ]; do
		read -r up _ </proc/uptime
		[ "${up%.*}" -lt "$deadline" ] || fail "the idle agent is not running"
		sleep 0.2
	done
}

echo "--- BusyBox init ran rcS: $RC status"
$RC status || fail "$RC status: not running after rcS"
pid=$(daemon_pid)
[ "$(readlink /proc/"$pid"/exe)" = $NC ] || fail "pid $pid is not $NC"
ppid=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/"$pid"/status)
[ "$ppid" = 1 ] || fail "the daemon's parent is $ppid, not init"
$NC status | head -n 5
$NC status --json | grep '"board'
$NC status --json | grep -q '"board_description": "QEMU' || fail "the example's board auto did not detect the QEMU board"
wait_idle
agent=$idle
echo "NANOCLAW-VM: daemon $pid (parent init), idle agent $agent"

echo "--- a new binary, then $RC upgrade: the agent is handed over, not restarted"
cp /bin/nanoclaw $NC.new && chmod 0755 $NC.new && mv $NC.new $NC || fail "cannot install the new binary"
$RC upgrade || fail "$RC upgrade failed"
new=$(daemon_pid)
[ -n "$new" ] && [ "$new" != "$pid" ] || fail "no new daemon after upgrade (pid file: '$new')"
wait_idle
[ "$idle" = "$agent" ] || fail "the idle agent was restarted ($idle), not handed over ($agent)"
$NC audit -n 10 | grep -q " adopt " || fail "the new daemon adopted nothing"
echo "NANOCLAW-VM: daemon $new took over idle agent $agent"

echo "--- $RC stop: agents first, then the daemon"
$RC stop || fail "$RC stop failed"
alive "$new" && fail "daemon $new still runs after stop"
alive "$agent" && fail "agent $agent still runs after stop"
[ ! -e /var/run/nanoclaw.pid ] || fail "stop left the pid file"
$RC status && fail "$RC status says running after stop"
tail -n 3 /var/log/nanoclaw.log
echo "NANOCLAW-VM: release tarball checks done at $(cut -d' ' -f1 /proc/uptime) s"

finish PASS
