#!/usr/bin/env bash
# `make run`: on a fresh Debian 12 machine as root, install what is missing, build and install
# Burrow, make sure a system bus, polkitd and dockerd (with runtime "burrow") run, and boot a
# stock Debian 12 system container under Docker: systemd to "running", Docker inside running a
# container of its own, the container's own `free -m` and its exclusive ID range. The image is
# built once (debootstrap, a few minutes) and cached; a second `make run` takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make run needs root" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }
image=burrow-demo/debian:12
name=burrow-demo
memory=512m

install_burrow() {
    step "installing packages Burrow needs, if missing"
    ./.ci/deps.sh
    step "building and installing Burrow (cargo; the first build takes minutes)"
    make --no-print-directory install PREFIX=/usr/local >/dev/null
}

# A system bus, polkitd and lxcfs, if they do not run (machines without systemd as PID 1).
start_services() {
    if [ ! -S /run/dbus/system_bus_socket ] || ! busctl --system status >/dev/null 2>&1; then
        step "starting the system bus"
        mkdir -p /run/dbus
        rm -f /run/dbus/pid /run/dbus/system_bus_socket
        dbus-daemon --system --fork
    fi
    if ! busctl --system status org.freedesktop.PolicyKit1 >/dev/null 2>&1; then
        step "starting polkitd"
        setsid -f /usr/lib/polkit-1/polkitd --no-debug >/var/log/burrow-polkitd.log 2>&1 </dev/null
        wait_until "polkitd" busctl --system status org.freedesktop.PolicyKit1
    fi
    # A truthful /proc in containers (their memory, CPUs, uptime), where systemd does not run
    # lxcfs.service.
    step "starting lxcfs, if it does not run"
    ./scripts/start-lxcfs
    # New activation files: make a running bus reread them.
    busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true
}

# Docker with runtime "burrow" in /etc/docker/daemon.json (kept settings merged in); a running
# dockerd rereads its runtimes on SIGHUP.
start_docker() {
    python3 - <<'PY'
import json, os
path = "/etc/docker/daemon.json"
config = json.load(open(path)) if os.path.exists(path) else {}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("burrow", {}).get("path") != "/usr/local/bin/burrow":
    runtimes["burrow"] = {"path": "/usr/local/bin/burrow"}
    os.makedirs("/etc/docker", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)
PY
    if docker info >/dev/null 2>&1; then
        kill -HUP "$(cat /var/run/docker.pid)"
    else
        step "starting dockerd (log: /var/log/burrow-dockerd.log)"
        setsid -f dockerd >/var/log/burrow-dockerd.log 2>&1 </dev/null
        wait_until "dockerd" docker info
    fi
    wait_until "dockerd to know runtime burrow" sh -c 'docker info 2>/dev/null | grep -q "Runtimes:.*burrow"'
}

# The stock Debian 12 image (systemd, dbus, docker.io; nothing masked), built once and cached
# under /var/cache/burrow, imported into Docker once. Busybox as a tar, for Docker inside.
prepare_images() {
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        step "building the Debian 12 system image (first run only)"
        rootfs=$(bash tests/fixtures/debian-rootfs.sh system)
        step "importing $rootfs into Docker as $image"
        tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
    fi
    busybox_tar=/var/cache/burrow/demo-busybox.tar
    if [ ! -s "$busybox_tar" ]; then
        local tree
        tree=$(mktemp -d)
        mkdir -p "$tree/bin"
        cp "$(command -v busybox)" "$tree/bin/busybox"
        for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$tree/bin/$applet"; done
        tar -C "$tree" -cf "$busybox_tar.tmp" . && mv "$busybox_tar.tmp" "$busybox_tar"
        rm -rf "$tree"
    fi
}

wait_until() { # what, command...
    local what=$1
    shift
    for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $what" >&2
    return 1
}

boot_and_show() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    step "docker run --runtime=burrow -m $memory $image /sbin/init"
    local start state
    start=$(date +%s%N)
    docker run -d --runtime=burrow --name "$name" -m "$memory" "$image" /sbin/init >/dev/null
    # Polled: `systemctl --wait` needs systemd's bus, which is not up at once.
    for _ in $(seq 600); do
        state=$(docker exec "$name" systemctl is-system-running 2>/dev/null || true)
        case $state in running | degraded | maintenance | stopping) break ;; esac
        sleep 0.05
    done
    echo "    systemd inside: $state after $(( ($(date +%s%N) - start) / 1000000 )) ms"
    step "its user namespace: an exclusive range of host IDs"
    docker exec "$name" cat /proc/self/uid_map
    step "free -m inside: the container's $memory (lxcfs)"
    docker exec "$name" free -m
    step "Docker inside: docker run busybox"
    docker exec -i "$name" docker import - bb </var/cache/burrow/demo-busybox.tar >/dev/null
    docker exec "$name" docker run --rm bb sh -c 'echo "hello from an inner container; its uid_map, as the outer container sees it:"; cat /proc/self/uid_map'
    step "a write to /proc/sys/kernel/panic as the container's root"
    docker exec "$name" sh -c 'echo 1 > /proc/sys/kernel/panic' 2>&1 | sed 's/^/    /' || true
    step "removing the demo container"
    docker rm -f "$name" >/dev/null
    [ "$state" = running ]
}

install_burrow
start_services
start_docker
prepare_images
boot_and_show
