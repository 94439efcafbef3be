#!/usr/bin/env bash
# Installs the system tools loadgen's lab, tests and benchmarks use (nft, ping, fping, hping3), once.
# Runs apt-get update at most once, and only when something is missing.
set -euo pipefail
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v fping >/dev/null 2>&1 || need+=(fping)
command -v hping3 >/dev/null 2>&1 || need+=(hping3)  # the bench's SYN peer
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing ${need[*]}: install them (apt-get install -y ${need[*]}) or run make as root" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
