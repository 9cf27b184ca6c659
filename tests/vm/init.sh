#!/bin/sh
# /init of the VM-tier initramfs that `cargo xtask vm` builds (xtask/src/vm.rs, DESIGN.md §5).
#
# Stage 1 (PID 1 on the initramfs): copy everything onto a tmpfs and switch_root into it,
# because pivot_root(2) refuses to move the initramfs (rootfs) and every agent sandbox pivots.
# Stage 2: mount the pseudo filesystems with a pure cgroup v2 hierarchy, run the daemon, wait
# until memhog has been OOM-killed at its memory.max and started again, check that the escape
# artist was contained and the fork bomb held at pids.max (this kernel's seccomp and namespaces
# for real, on both architectures), every hostile act refused (by BPF LSM on x86_64, by the
# fallback chain on arm64), check the posture, stop the daemon with SIGTERM. Stage 3: install
# the release tarball and become BusyBox init, whose rcS starts the daemon with the shipped
# init script; tests/vm/release.sh checks it. One `NANOCLAW-VM-RESULT:` line, then power off.
# NC_TIMEOUT (seconds, kernel command line) bounds the wait.

export PATH=/bin

if [ "$1" != stage2 ]; then
	/bin/busybox --install -s /bin
	mount -t tmpfs -o mode=0755 root /newroot &&
		cp -a /bin /etc /var /init /newroot/ &&
		mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run /newroot/tmp &&
		exec switch_root /newroot /init stage2
	echo "NANOCLAW-VM-RESULT: FAIL stage 1 could not switch to a tmpfs root"
	poweroff -f
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ifconfig lo 127.0.0.1 up

uptime_s() {
	read -r up _ </proc/uptime
	echo "${up%.*}"
}

echo "NANOCLAW-VM: booted $(uname -r) $(uname -m) in $(cut -d' ' -f1 /proc/uptime) s;" \
	"cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

AGENT=/sys/fs/cgroup/nanoclaw/agents/memhog
daemon_pid=

finish() {
	echo "NANOCLAW-VM-RESULT: $*"
	poweroff -f
}

fail() {
	echo "--- failure diagnostics"
	nanoclaw audit -n 50
	nanoclaw logs memhog -n 20
	finish "FAIL $*"
}

nanoclaw --version
nanoclaw daemon --config /etc/nanoclaw/device.json &
daemon_pid=$!
deadline=$(($(uptime_s) + ${NC_TIMEOUT:-90}))

# `kill -0` would also succeed on a zombie that the shell has not reaped yet.
daemon_alive() {
	read -r _ _ state _ 2>/dev/null </proc/"$daemon_pid"/stat && [ "$state" != Z ]
}

# Passes once an oom_kill of memhog is followed by a later start (by audit sequence number).
restarted_after_oom() {
	nanoclaw audit --agent memhog -n 200 --json 2>/dev/null | awk -F'"' '
		/"seq":/ { s = $3; gsub(/[^0-9]/, "", s) }
		/"kind":/ { k = $4 }
		/^ *}/ {
			if (k == "oom_kill" && (oom == "" || s + 0 < oom)) oom = s + 0
			if (k == "start") starts[s + 0] = 1
			k = ""; s = ""
		}
		END {
			if (oom == "") exit 1
			for (x in starts) if (x + 0 > oom) exit 0
			exit 1
		}'
}

while ! restarted_after_oom; do
	daemon_alive || {
		wait "$daemon_pid"
		fail "daemon exited early with status $?"
	}
	[ "$(uptime_s)" -lt "$deadline" ] || fail "no oom_kill followed by a restart of memhog within ${NC_TIMEOUT:-90} s"
	sleep 1
done
echo "NANOCLAW-VM: memhog OOM-killed and restarted at $(cut -d' ' -f1 /proc/uptime) s"

echo "--- nanoclaw status"
nanoclaw status
echo "--- nanoclaw agents"
nanoclaw agents
echo "--- nanoclaw audit --agent memhog"
nanoclaw audit --agent memhog -n 20
echo "--- $AGENT/memory.max"
cat "$AGENT/memory.max"
echo "--- $AGENT/memory.high"
cat "$AGENT/memory.high"
echo "--- $AGENT/memory.events"
cat "$AGENT/memory.events"

nanoclaw status --json | grep -q '"cgroup": "v2"' || fail "status posture does not report cgroup v2"
# memhog restarts all the time: its cgroup may be between two instances for a moment.
i=0
until max=$(cat "$AGENT/memory.max" 2>/dev/null) && [ -n "$max" ]; do
	i=$((i + 1))
	[ "$i" -lt 50 ] || break
	sleep 0.1
done
[ "$max" = 33554432 ] || fail "memhog memory.max is '$max', expected 33554432 (32MiB)"

echo "--- nanoclaw logs escape"
nanoclaw logs escape
nanoclaw logs escape | grep -q "every attempt was contained" || fail "escape was not contained"
nanoclaw logs escape | grep -q "SUCCEEDED" && fail "an escape attempt succeeded"

echo "--- nanoclaw logs netcheck (eBPF egress on this kernel)"
nanoclaw logs netcheck
nanoclaw status --json | grep -q '"egress": "bpf allowlist' || fail "egress control unavailable on this kernel"
nanoclaw status --json | grep -q '"syscall_monitor": "bpf tracepoint' || fail "syscall monitoring unavailable on this kernel"
nanoclaw logs netcheck | grep "connect 127.0.0.1:1:" | grep -q "Operation not permitted" &&
	fail "the granted endpoint was refused"
for dest in 127.0.0.1:2 '\[::ffff:127.0.0.1\]:2' '\[::1\]:2' udp:127.0.0.1:2; do
	nanoclaw logs netcheck | grep "connect $dest:" | grep -q "Operation not permitted" ||
		fail "$dest (not granted) was not refused with EPERM"
done
nanoclaw audit --agent netcheck --json | grep -q denied_connect || fail "no denied_connect audit record"

# BPF LSM: enforced (and self-tested by the daemon) where the kernel has it (NC_LSM=bpf, the
# x86_64 kernel with lsm=landlock,bpf), reported unavailable with the fallback chain elsewhere.
echo "--- nanoclaw logs hostile; bpf-lsm posture (expected: ${NC_LSM:-?})"
nanoclaw logs hostile
nanoclaw status --json | grep '"lsm"'
for act in raw-socket mount-tmpfs ptrace-sibling scratch-exec memfd-exec proc-root-host-file; do
	nanoclaw logs hostile | grep -q "hostile $act: denied" || fail "hostile $act was not denied"
done
nanoclaw logs hostile | grep -q "SUCCEEDED" && fail "a hostile act succeeded"
nanoclaw audit --agent needlsm -n 20
if [ "$NC_LSM" = bpf ]; then
	nanoclaw status --json | grep -q '"lsm": "bpf-lsm (' || fail "BPF LSM is not enforced on this kernel"
	nanoclaw status --json | grep -q '"lsm": "bpf-lsm"' || fail "no agent is held by BPF LSM"
	# memfd_create is allowed under the LSM; the fileless exec is refused by the exec hook.
	nanoclaw audit --agent hostile -n 50 | grep denied_exec | grep -q "/proc/self/fd/.*bpf-lsm exec" ||
		fail "the memfd exec was not denied and audited by bpf-lsm"
	nanoclaw audit --agent needlsm -n 20 | grep -q " start " ||
		fail "needlsm (require bpf-lsm) did not start"
else
	nanoclaw status --json | grep -q '"lsm": "unavailable: ' || fail "posture does not say BPF LSM is unavailable"
	nanoclaw status --json | grep -q '"lsm": "landlock+seccomp (bpf-lsm unavailable: ' ||
		fail "agents do not report the Landlock+seccomp fallback"
	nanoclaw audit --agent needlsm -n 20 | grep -q "requires bpf-lsm" ||
		fail "needlsm (require bpf-lsm) was not refused with the reason"
fi

echo "--- a denial flood stays bounded in the audit"
n=$(nanoclaw logs flooder -n 1000 | grep -c "Operation not permitted")
recs=$(nanoclaw audit --agent flooder -n 1000 | grep -c denied_connect)
echo "NANOCLAW-VM: flooder: $n denied connections, $recs audit records"
[ "$n" = 200 ] || fail "flooder saw $n EPERMs, expected 200"
[ "$recs" -lt 60 ] || fail "the denial flood flooded the audit ($recs records)"
nanoclaw audit --agent flooder -n 1000 | grep -q "more denied connections" || fail "no rate-limit summary"

echo "--- a syscall storm trips the rate rule"
i=0
until nanoclaw audit --agent stormy -n 50 | grep -q "learned the syscall baseline"; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || fail "stormy learned no baseline"
	sleep 0.2
done
touch /var/lib/nanoclaw/agents/stormy/rootfs/go
i=0
until nanoclaw audit --agent stormy -n 50 | grep syscall_anomaly | grep -q "jumped"; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || fail "the syscall storm raised no rate anomaly"
	sleep 0.2
done
nanoclaw audit --agent stormy -n 5

FORK=/sys/fs/cgroup/nanoclaw/agents/forkbomb
echo "--- nanoclaw logs forkbomb; $FORK/pids.max, pids.current, pids.events"
nanoclaw logs forkbomb
cat "$FORK/pids.max" "$FORK/pids.current" "$FORK/pids.events"
nanoclaw logs forkbomb | grep -q "the kernel refused child" || fail "the fork bomb was never refused"
[ "$(cat "$FORK/pids.max")" = 16 ] || fail "forkbomb pids.max is not 16"
[ "$(cat "$FORK/pids.current")" -le 16 ] || fail "forkbomb exceeds pids.max"

echo "--- kill -9 of the daemon: the pinned eBPF state keeps holding the running agents"
denied_exec_count() {
	nanoclaw audit --agent lsmloop -n 1000 | grep -c denied_exec
}
before=$(denied_exec_count)
kill -KILL "$daemon_pid"
wait "$daemon_pid"
sleep 2
nanoclaw daemon --config /etc/nanoclaw/device.json &
daemon_pid=$!
i=0
until nanoclaw status >/dev/null 2>&1; do
	i=$((i + 1))
	[ "$i" -lt 100 ] || fail "the restarted daemon did not answer"
	sleep 0.1
done
sleep 2
nanoclaw audit --agent lsmloop -n 5
nanoclaw logs lsmloop | grep -q "SUCCEEDED" && fail "a hostile act succeeded around the daemon's kill -9"
nanoclaw audit --agent lsmloop -n 20 | grep -q " adopt " || fail "lsmloop was not re-adopted"
if [ "$NC_LSM" = bpf ]; then
	after=$(denied_exec_count)
	echo "NANOCLAW-VM: lsmloop denied_exec records: $before before the kill, $after after the restart"
	[ "$after" -gt "$before" ] || fail "no bpf-lsm denials of lsmloop audited after the restart"
fi

echo "--- SIGTERM to the daemon"
kill -TERM "$daemon_pid"
(sleep 15 && kill -KILL "$daemon_pid") 2>/dev/null &
watchdog=$!
wait "$daemon_pid"
status=$?
kill "$watchdog" 2>/dev/null
[ "$status" = 0 ] || fail "daemon exited with status $status on SIGTERM, expected 0"
[ ! -d "$AGENT" ] || fail "$AGENT still exists after the daemon stopped"

echo "--- the release tarball under BusyBox init (tests/vm/release.sh), at $(cut -d' ' -f1 /proc/uptime) s"
# Installed as its README says, onto a fresh device: the example device.json (bundle
# directories are not `nanoclaw install`ed here, hence allow_unsigned) and one idle agent.
cp /var/lib/nanoclaw/agents/memhog/rootfs/bin/demo-agent /tmp/demo-agent
rm -rf /var/lib/nanoclaw
mkdir -p /tmp/release && tar -xzf /var/tmp/nanoclaw.tar.gz -C /tmp/release || fail "cannot unpack the tarball"
rel=$(echo /tmp/release/nanoclaw-*-linux-musl)
# BusyBox has no `install` applet in every build (Debian's has none): mkdir, cp -p.
mkdir -p /usr/sbin /etc/init.d /var/lib/nanoclaw/agents &&
	cp -p "$rel/sbin/nanoclaw" /usr/sbin/nanoclaw &&
	cp -p "$rel/busybox/S50nanoclaw" /etc/init.d/S50nanoclaw &&
	sed 's/"allow_unsigned": false/"allow_unsigned": true/' "$rel/device.example.json" >/etc/nanoclaw/device.json ||
	fail "cannot install from the tarball"
cat >/etc/nanoclaw/policy.json <<'END'
{ "version": 1, "signers": [], "device": { "memory_reserve": "64MiB" },
  "agents": { "idle": { "memory": "16MiB", "cpus": 0.25, "pids": 8, "scratch": "1MiB",
                        "syscalls": "default" } } }
END
mkdir -p /var/lib/nanoclaw/agents/idle/rootfs/bin
cp /tmp/demo-agent /var/lib/nanoclaw/agents/idle/rootfs/bin/demo-agent
cat >/var/lib/nanoclaw/agents/idle/manifest.json <<'END'
{ "name": "idle", "version": "1.0.0", "mode": "service", "exec": ["/bin/demo-agent", "sleep"],
  "requests": { "memory": "16MiB", "scratch": "1MiB" } }
END
# BusyBox's usual rcS (every /etc/init.d/S??* with `start`), then the checks once it is done.
cat >/etc/init.d/rcS <<'END'
#!/bin/sh
for s in /etc/init.d/S??*; do
	[ -x "$s" ] && "$s" start
done
END
chmod 0755 /etc/init.d/rcS
printf '::sysinit:/etc/init.d/rcS\n::once:/bin/sh /etc/vm/release.sh\n' >/etc/inittab
# A failed exec would end PID 1 without a result line.
[ -x /bin/init ] || fail "this busybox has no init applet"
exec /bin/init
