#!/usr/bin/env bash
# Make sure a `prometheus` binary is on PATH: Debian's package (2.42 on bookworm),
# installed with apt-get when missing. Used by `make monitor`, `make test`,
# .ci/run and tests/e2e/test_prometheus.py, so all of them install it one way.
#
#   scripts/deploy/install_prometheus.sh              exit 1 when it cannot be installed
#   scripts/deploy/install_prometheus.sh --if-possible   say why and exit 0 (the test then skips)
#
# Installing needs root and apt-get. --no-install-recommends keeps out the node
# exporter. Debian's package also ships a system service; where an init system runs
# (not in CI containers), apt starts it on :9090, which `make monitor` then finds
# taken: stop it (`systemctl stop prometheus`) or pick PROMETHEUS_PORT.
set -euo pipefail

soft=0
[[ "${1:-}" == "--if-possible" ]] && soft=1

if command -v prometheus >/dev/null 2>&1; then
  echo "==> $(prometheus --version 2>&1 | head -n 1)"
  exit 0
fi

why=""
if ! command -v apt-get >/dev/null 2>&1; then
  why="apt-get is not available"
elif [[ "$(id -u)" != 0 ]]; then
  why="installing needs root"
fi
if [[ -n "$why" ]]; then
  echo "prometheus is not installed and $why: run \`sudo apt-get install --no-install-recommends prometheus\`" \
       "(Debian/Ubuntu), or put a Prometheus 2.x binary on PATH" >&2
  exit $(( soft ? 0 : 1 ))
fi

echo "==> prometheus not found: installing Debian's package with apt-get (about 20 MB)"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (podman, Java) may hold the lock for a while: wait rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends prometheus
echo "==> $(prometheus --version 2>&1 | head -n 1)"
