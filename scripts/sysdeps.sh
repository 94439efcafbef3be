#!/usr/bin/env bash
# Installs the system tools loadgen's lab, tests and benchmarks use (nft, ping, fping, hping3;
# chromium and its driver for the report's browser test), once; `sysdeps.sh bench` also the
# bench's peers that nothing else needs (irtt, the STAMP/UDP peer).
# Runs apt-get update at most once, and only when something is missing.
set -euo pipefail
need=()
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v fping >/dev/null 2>&1 || need+=(fping)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v hping3 >/dev/null 2>&1 || need+=(hping3)  # the bench's SYN peer
if [ "${1:-}" = bench ]; then
  command -v irtt >/dev/null 2>&1 || need+=(irtt)  # the bench's UDP round-trip peer
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing ${need[*]}: install them (apt-get install -y ${need[*]}) or run make as root" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
