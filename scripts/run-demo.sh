#!/usr/bin/env bash
# `make run`: on a fresh Debian 12 machine as root, install what is missing, build and install
# Burrow, make sure a system bus and polkitd run, and run one system container from a bundled
# busybox rootfs that shows its ID map, capabilities, /dev and a refused sysrq write.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make run needs root" >&2; exit 1; }
./.ci/deps.sh
make install PREFIX=/usr/local
# A system bus and polkitd, if none runs (machines without systemd as PID 1).
if [ ! -S /run/dbus/system_bus_socket ] || ! busctl --system status >/dev/null 2>&1; then
    echo "starting the system bus"
    mkdir -p /run/dbus
    rm -f /run/dbus/pid /run/dbus/system_bus_socket
    dbus-daemon --system --fork
fi
if ! busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1; then
    echo "starting polkitd"
    setsid -f /usr/lib/polkit-1/polkitd --no-debug >/var/log/burrow-polkitd.log 2>&1 </dev/null
    for _ in $(seq 50); do busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1 && break; sleep 0.1; done
fi
# New activation files: make a running bus reread them.
busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true

bundle=/var/cache/burrow/demo-bundle
rm -rf "$bundle" && mkdir -p "$bundle/rootfs/bin"
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$bundle/rootfs/bin/$applet"; done
mkdir -p "$bundle/rootfs/proc" "$bundle/rootfs/sys" "$bundle/rootfs/dev" "$bundle/rootfs/etc" "$bundle/rootfs/tmp"
cd "$bundle"
/usr/local/bin/burrow spec
script='echo "uid_map: $(cat /proc/self/uid_map)"; grep Cap /proc/self/status; echo "/dev: $(ls /dev | tr "\n" " ")"; for f in /proc/sys/kernel/sysrq /proc/sys/kernel/panic; do if [ ! -e $f ]; then echo "$f: not in this kernel"; elif echo 1 > $f; then echo "$f: WRITTEN (must not happen)"; else echo "$f: refused, as it must be"; fi; done'
python3 - "$script" <<'PY'
import json, sys
c = json.load(open("config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", sys.argv[1]]
json.dump(c, open("config.json", "w"), indent=2)
PY
echo "--- burrow run demo (a system container from $bundle) ---"
/usr/local/bin/burrow run demo-$$
