#!/usr/bin/env bash
# Benchmark (not a test): one container's whole lifecycle (create + start + delete of
# /bin/true) on the same busybox rootfs, in ONE hyperfine run: `burrow run`, `runc run`, `runc
# run` with a user namespace (a copy of the rootfs chowned to the map's IDs, as a runtime
# without ID-mapped mounts needs), `crun run`, and LXC 5's `lxc-execute` with an idmap (the
# same kind of work as Burrow: a user namespace, its own /dev, proc and sys).
# Prints medians and ratios against LXC and runc, per round (ROUNDS=N invocations, 3 by
# default) and the median of the rounds' ratios. If DOCKER_HOST points at a dockerd that has
# runtime "burrow", also `docker run --rm` with burrow vs runc.
# Needs root, an installed Burrow (`make install`) and a running system bus with polkitd (as
# `make run` leaves them). LXC maps through newuidmap: the script adds `root:200000:65536` to
# /etc/subuid and /etc/subgid if they lack it. PAUSE=S sleeps S seconds (untimed) before
# each run: one container now and then, as most hosts make them, where what is cached for
# less than that (lxcfs keeps a lookup for half a second) is cold again.
set -euo pipefail
for tool in hyperfine runc crun lxc-execute burrow busybox python3; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine runc crun lxc busybox-static; make install)" >&2; exit 1; }
done
runs=${RUNS:-30}
rounds=${ROUNDS:-3}
pause=()
[ "${PAUSE:-0}" = 0 ] || pause=(--prepare "sleep $PAUSE")
map_base=200000
work=$(mktemp -d /tmp/burrow-bench.XXXXXX)
# The user namespace's root must reach its rootfs.
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
bundle=$work/bundle
userns=$work/userns
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/tmp" "$userns" "$work/lxc"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
(cd "$bundle" && runc spec)
# The user-namespace copy: the same files, owned by the map's first ID.
cp -a "$bundle/rootfs" "$userns/rootfs"
chown -R "$map_base:$map_base" "$userns/rootfs"
python3 - "$bundle/config.json" "$userns/config.json" "$map_base" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(sys.argv[1], "w"))
c["linux"]["namespaces"].append({"type": "user"})
c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": int(sys.argv[3]), "size": 65536}]
c["linux"]["gidMappings"] = c["linux"]["uidMappings"]
json.dump(c, open(sys.argv[2], "w"))
PY
for ids in /etc/subuid /etc/subgid; do
    grep -q "^root:$map_base:65536$" $ids 2>/dev/null || echo "root:$map_base:65536" >>$ids
done
cat >"$work/lxc.conf" <<CONF
lxc.uts.name = bench
lxc.rootfs.path = dir:$userns/rootfs
lxc.idmap = u 0 $map_base 65536
lxc.idmap = g 0 $map_base 65536
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.autodev = 1
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
CONF
# crun 1.8 refuses the hybrid cgroup layout unless cgroup2 at /sys/fs/cgroup/unified is
# hidden, and then cannot make a cgroup in it either (nor, on cgroup2 alone, raise
# RLIMIT_MEMLOCK for its device program without CAP_SYS_RESOURCE): it runs without a cgroup,
# a lower bound for it.
crun_cmd="unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --cgroup-manager=disabled --root $work/crun run -b $bundle c\$\$'"
# Warm the helpers (bus activation) and the page cache, and check each command works.
for i in 1 2 3; do burrow --root "$work/burrow" run -b "$bundle" warm$i; done
runc --root "$work/runc" run -b "$userns" warm
sh -c "$crun_cmd"
lxc-execute -n warm -f "$work/lxc.conf" -P "$work/lxc" -- /bin/true
# Prints a table of the rounds (hyperfine's JSON files, after `--`): each command's median per
# round, its ratio to the first baseline per round, and the median of its ratios to each
# baseline. Arguments: the table's title, the decimals of a time in ms, the baselines.
summarize() {
    python3 - "$@" <<'PY'
import json, statistics, sys
args = sys.argv[1:]
title, decimals, baselines, files = args[0], int(args[1]), args[2:args.index("--")], args[args.index("--") + 1:]
files.sort(key=lambda f: int(f.rsplit("-", 1)[1].split(".")[0]))
rounds = [{x["command"]: x["median"] for x in json.load(open(f))["results"]} for f in files]
medians = [f"vs {b}, median" for b in baselines]
print(" | ".join([f"| {title}", "median per round", f"vs {baselines[0]} per round", *medians]) + " |")
print("|---" * (3 + len(baselines)) + "|")
for name in rounds[0]:
    times = ", ".join(f"{r[name]*1000:.{decimals}f}" for r in rounds)
    ratios = {b: [r[name] / r[b] for r in rounds] for b in baselines}
    per_round = ", ".join(f"{x:.2f}" for x in ratios[baselines[0]])
    cells = [f"{statistics.median(ratios[b]):.2f}x" for b in baselines]
    print(" | ".join([f"| {name}", f"{times} ms", per_round, *cells]) + " |")
PY
}
# Each round is one hyperfine invocation of all five; the host's load comes and goes, and
# hyperfine runs one command's runs after another's, so a busy spell can fall on one command
# of a round only: the median of the rounds' ratios is the result.
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    hyperfine -N --warmup 3 --runs "$runs" "${pause[@]}" --export-json "$work/run-$round.json" \
        -n burrow "burrow --root $work/burrow run -b $bundle b" \
        -n runc "runc --root $work/runc run -b $bundle r" \
        -n "runc, user namespace" "runc --root $work/runc run -b $userns u" \
        -n "crun (no cgroup)" "$crun_cmd" \
        -n lxc "lxc-execute -n l -f $work/lxc.conf -P $work/lxc -- /bin/true" >&2
done
summarize "runtime (/bin/true, busybox rootfs, whole lifecycle)" 1 lxc runc -- "$work"/run-*.json
if [ -n "${DOCKER_HOST:-}" ]; then
    for round in $(seq "$rounds"); do
        hyperfine --warmup 2 --runs 15 --export-json "$work/docker-$round.json" \
            -n "docker run --runtime=burrow" "docker run --rm --runtime=burrow bb true" \
            -n "docker run --runtime=runc" "docker run --rm --runtime=runc bb true" >&2
    done
    echo
    summarize docker 0 "docker run --runtime=runc" -- "$work"/docker-*.json
fi
