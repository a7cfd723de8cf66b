#!/usr/bin/env bash
# Make sure `prometheus` and `promtool` are on PATH: Debian's package (2.42 on bookworm)
# ships both, installed with apt-get when either is missing. Used by `make monitor`,
# `make test`, .ci/run and tests/e2e/test_prometheus.py, so all of them install it one way
# (tests/unit/test_adapter_rules.py runs promtool).
#
#   scripts/deploy/install_prometheus.sh              exit 1 when it cannot be installed
#   scripts/deploy/install_prometheus.sh --if-possible   say why and exit 0 (the tests then skip)
#
# REQUIRE_PROMETHEUS=1 (.ci/run exports it) turns --if-possible off, and makes those tests
# fail rather than skip (tests/prerequisites.py): CI cannot skip them unnoticed.
#
# Installing needs root and apt-get. --no-install-recommends keeps out the node
# exporter. Debian's package also ships a system service; where an init system runs
# (not in CI containers), apt starts it on :9090, which `make monitor` then finds
# taken: stop it (`systemctl stop prometheus`) or pick PROMETHEUS_PORT.
set -euo pipefail

soft=0
[[ "${1:-}" == "--if-possible" && "${REQUIRE_PROMETHEUS:-}" != 1 ]] && soft=1

missing() {
  local tool
  for tool in prometheus promtool; do
    command -v "$tool" >/dev/null 2>&1 || echo -n "$tool "
  done
}

if [[ -z "$(missing)" ]]; then
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
  echo "$(missing)not installed and $why: run \`sudo apt-get install --no-install-recommends prometheus\`" \
       "(Debian/Ubuntu), or put Prometheus 2.x's prometheus and promtool on PATH" >&2
  exit $(( soft ? 0 : 1 ))
fi

echo "==> $(missing)not found: installing Debian's prometheus package with apt-get (about 20 MB)"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (podman, Java) may hold the lock for a while: wait rather than fail.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends prometheus
if [[ -n "$(missing)" ]]; then
  echo "$(missing)still missing after installing Debian's prometheus package" >&2
  exit 1
fi
echo "==> $(prometheus --version 2>&1 | head -n 1)"
