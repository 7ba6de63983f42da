#!/usr/bin/env bash
# Installs the Debian 12 packages Burrow's build and tests need, if any is missing.
set -euo pipefail
packages=(dbus-daemon dbus-bin polkitd systemd util-linux passwd procps busybox-static docker.io containerd runc containernetworking-plugins protobuf-compiler iptables iproute2 passt openssh-client xfsprogs btrfs-progs python3 fuse-overlayfs lxcfs gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
