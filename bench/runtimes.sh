#!/usr/bin/env bash
# Benchmark (not a test): `burrow run` vs `runc run` vs `crun run` on the same busybox bundle
# (/bin/true; create + start + delete), with hyperfine, helpers warm; and, if DOCKER_HOST points
# at a dockerd that has runtime "burrow", `docker run --rm` with burrow vs runc.
# Needs root, an installed Burrow (`make install`) and a running system bus with polkitd (as
# `make run` leaves them). Prints medians and ratios.
set -euo pipefail
for tool in hyperfine runc crun burrow busybox; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine runc crun busybox-static; make install)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/burrow-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(sys.argv[1], "w"))
PY
# Warm the helpers (bus activation, page cache).
for i in 1 2 3; do burrow --root "$work/burrow" run -b "$bundle" warm$i; done
# crun refuses the hybrid cgroup layout unless cgroup2 at /sys/fs/cgroup/unified is hidden.
crun_cmd="unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; crun --root $work/crun run -b $bundle c\$\$'"
hyperfine -N --warmup 3 --runs 30 --export-json "$work/run.json" \
    -n burrow "burrow --root $work/burrow run -b $bundle b" \
    -n runc "runc --root $work/runc run -b $bundle r" \
    -n crun "$crun_cmd" >&2 || hyperfine --warmup 3 --runs 30 --export-json "$work/run.json" \
    -n burrow "burrow --root $work/burrow run -b $bundle b" \
    -n runc "runc --root $work/runc run -b $bundle r" \
    -n crun "$crun_cmd" >&2
python3 - "$work/run.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
print("| runtime (run /bin/true, busybox bundle) | median | vs runc |")
print("|---|---|---|")
for name in ("burrow", "runc", "crun"):
    print(f"| {name} | {r[name]*1000:.1f} ms | {r[name]/r['runc']:.2f}x |")
PY
if [ -n "${DOCKER_HOST:-}" ]; then
    hyperfine --warmup 2 --runs 15 --export-json "$work/docker.json" \
        -n "docker run --runtime=burrow" "docker run --rm --runtime=burrow bb true" \
        -n "docker run --runtime=runc" "docker run --rm --runtime=runc bb true" >&2
    python3 - "$work/docker.json" <<'PY'
import json, sys
r = [(x["command"], x["median"]) for x in json.load(open(sys.argv[1]))["results"]]
base = r[1][1]
print()
print("| docker | median | vs runc |")
print("|---|---|---|")
for name, m in r:
    print(f"| {name} | {m*1000:.0f} ms | {m/base:.2f}x |")
PY
fi
