#!/usr/bin/env bash
# Benchmark (not a test) of system containers: boot time of systemd to "running" under Docker
# and with `burrow run` alone (beside LXC 5 booting the same rootfs, in turn in the same run), latency of `docker run` inside one (vs the host's own `docker run` with runc), and host
# memory per idle system container. Needs root, an installed Burrow (`make install`), a running
# system bus with polkitd (as `make run` leaves them) and DOCKER_HOST pointing at a dockerd that
# has runtime "burrow". Uses the cached Debian image (tests/fixtures/debian-rootfs.sh system).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DOCKER_HOST:?point DOCKER_HOST at a dockerd with runtime burrow}"
for tool in hyperfine docker busybox python3 lxc-start nsenter burrow; do
    command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
runs=${RUNS:-5}
rootfs=$(bash tests/fixtures/debian-rootfs.sh system)
work=$(mktemp -d /tmp/burrow-bench-system.XXXXXX)
cleanup() { docker ps -aq --filter label=burrow-bench | xargs -r docker rm -f >/dev/null; rm -rf "$work"; }
trap cleanup EXIT
echo "importing the system image" >&2
tar -C "$rootfs" -c . | docker import - burrow-bench-system >/dev/null
mkdir -p "$work/bb/bin"
cp "$(command -v busybox)" "$work/bb/bin/busybox"
for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$work/bb/bin/$applet"; done
tar -C "$work/bb" -cf "$work/bb.tar" .
docker image inspect bb >/dev/null 2>&1 || docker import "$work/bb.tar" bb >/dev/null

now() { date +%s.%N; }
# Every boot below is waited for the same way, from the host: `systemctl is-system-running
# --wait` in all the init's namespaces and root (nsenter), which returns when systemd says its
# boot is over, so that the tool's own latency (`docker exec` takes about 100 ms, `lxc-attach`
# 15) is not part of a number. Until systemd's socket is there it fails at once and is retried
# every 5 ms. (Polling every 20 ms, as before, rounded each boot up to the next poll, and the
# polls' own CPU slowed the boots on a two-CPU machine.)
wait_running() { # label start-time init-pid -> seconds from start to "running"
    local state deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        state=$(timeout 60 nsenter -t "$3" -a -r -w systemctl is-system-running --wait 2>/dev/null || true)
        case $state in running|degraded) break ;; esac
        sleep 0.005
    done
    [ "$state" = running ] || echo "warning: $1 is $state" >&2
    python3 -c "print(f'{$(now) - $2:.3f}')"
}
boot() { # name -> seconds from `docker run` to "running"
    local start
    start=$(now)
    docker run -d --label burrow-bench --runtime=burrow --name "$1" -v "$work/bb.tar:/bb.tar:ro" \
        burrow-bench-system /sbin/init >/dev/null
    wait_running "$1" "$start" "$(docker inspect -f '{{.State.Pid}}' "$1")"
}

# Burrow without Docker: `burrow run -d` of a bundle around the same tree (burrow spec's
# config, /sbin/init), ID-mapped by mountd as under Docker.
# A copy, as for LXC below: systemd writes its tree, which must not be the cached one.
mkdir -p "$work/bundle"
cp -a "$rootfs" "$work/bundle/rootfs"
(cd "$work/bundle" && burrow spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["args"] = ["/sbin/init"]
spec["process"]["terminal"] = False
spec["root"]["readonly"] = False
json.dump(spec, open(path, "w"), indent=1)
PY
direct_boot() { # name -> seconds from `burrow run -d` to "running"
    local start
    start=$(now)
    burrow run -d -b "$work/bundle" "$1" </dev/null >/dev/null 2>&1
    wait_running "$1" "$start" "$(burrow state "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')"
    burrow delete -f "$1" >/dev/null
}

# LXC 5 booting the same rootfs: a copy with its IDs shifted into the map (LXC mounts no
# ID-mapped rootfs here), polled the same way through lxc-attach.
map_base=200000
for ids in /etc/subuid /etc/subgid; do
    grep -q "^root:$map_base:65536$" $ids 2>/dev/null || echo "root:$map_base:65536" >>$ids
done
chmod 755 "$work"
cp -a "$rootfs" "$work/lxc-rootfs"
python3 - "$work/lxc-rootfs" "$map_base" <<'PY'
import os, stat, sys
root, base = sys.argv[1], int(sys.argv[2])
def shift(p):
    st = os.lstat(p)
    os.lchown(p, base + st.st_uid, base + st.st_gid)
    # chown clears set-id bits: put them back.
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(p, stat.S_IMODE(st.st_mode))
shift(root)
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        shift(os.path.join(d, n))
PY
cat >"$work/lxc.conf" <<CONF
lxc.uts.name = bench-system
lxc.rootfs.path = dir:$work/lxc-rootfs
lxc.idmap = u 0 $map_base 65536
lxc.idmap = g 0 $map_base 65536
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.init.cmd = /sbin/init
CONF
lxc_boot() { # name -> seconds from lxc-start to "running"
    local start
    start=$(now)
    lxc-start -n "$1" -f "$work/lxc.conf" -P "$work" -d
    wait_running "lxc $1" "$start" "$(lxc-info -n "$1" -P "$work" -p -H)"
    lxc-stop -n "$1" -P "$work" -k
}

echo "booting $runs system containers each under Docker with burrow, with burrow alone and with LXC, in turn" >&2
for i in $(seq "$runs"); do
    boot "boot$i" >>"$work/boot.txt"
    docker rm -f "boot$i" >/dev/null
    direct_boot "bench-direct-$i" >>"$work/direct-boot.txt"
    lxc_boot "lxc$i" >>"$work/lxc-boot.txt"
done

boot sys >/dev/null
docker exec sys docker import /bb.tar bb >/dev/null
hyperfine --warmup 2 --runs 15 --export-json "$work/inner.json" \
    -n "inner docker run (in a burrow system container)" "docker exec sys docker run --rm bb true" \
    -n "host docker run --runtime=runc" "docker run --rm --runtime=runc bb true" \
    -n "docker exec alone (overhead included above)" "docker exec sys true" >&2

# Idle footprint: let the boot settle, then the proportional set size of every process in the
# container (systemd, journald, dbus, containerd, dockerd...) and its memory cgroup's usage.
sleep 10
pid=$(docker inspect -f '{{.State.Pid}}' sys)
# systemd moved itself to init.scope: the container's cgroup is the one above.
cgroup=$(awk -F: '$2 == "memory" {print $3}' "/proc/$pid/cgroup")
cgroup=${cgroup%/init.scope}
pss_kb=0
procs=0
for p in $(find "/sys/fs/cgroup/memory$cgroup" -name cgroup.procs -exec cat {} +); do
    kb=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    pss_kb=$((pss_kb + ${kb:-0}))
    procs=$((procs + 1))
done
usage=$(cat "/sys/fs/cgroup/memory$cgroup/memory.usage_in_bytes" 2>/dev/null || echo 0)

python3 - "$work/boot.txt" "$work/inner.json" "$pss_kb" "$usage" "$procs" "$work/lxc-boot.txt" "$work/direct-boot.txt" <<'PY'
import json, statistics, sys
boots = [float(x) for x in open(sys.argv[1]).read().split()]
lxc = [float(x) for x in open(sys.argv[6]).read().split()]
direct = [float(x) for x in open(sys.argv[7]).read().split()]
inner = [(x["command"], x["median"]) for x in json.load(open(sys.argv[2]))["results"]]
pss_kb, usage, procs = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print("| system container (Debian 12, systemd + dockerd) | value |")
print("|---|---|")
print(f"| boot to `running` (docker run -> is-system-running), median of {len(boots)} | {statistics.median(boots)*1000:.0f} ms (min {min(boots)*1000:.0f}, max {max(boots)*1000:.0f}) |")
print(f"| the same with `burrow run -d` of a bundle, no Docker, median of {len(direct)} | {statistics.median(direct)*1000:.0f} ms (min {min(direct)*1000:.0f}, max {max(direct)*1000:.0f}) |")
print(f"| LXC booting the same rootfs (lxc-start -> is-system-running), median of {len(lxc)} | {statistics.median(lxc)*1000:.0f} ms (min {min(lxc)*1000:.0f}, max {max(lxc)*1000:.0f}); burrow under Docker {statistics.median(boots)/statistics.median(lxc):.2f}x, burrow alone {statistics.median(direct)/statistics.median(lxc):.2f}x |")
for name, m in inner:
    print(f"| {name}, median | {m*1000:.0f} ms |")
print(f"| inner docker run less the exec, vs host docker run | {(inner[0][1]-inner[2][1])/inner[1][1]:.2f}x |")
print(f"| idle host memory: PSS of its {procs} processes | {pss_kb/1024:.1f} MiB |")
print(f"| idle host memory: its memory cgroup (incl. page cache) | {usage/2**20:.1f} MiB |")
PY
