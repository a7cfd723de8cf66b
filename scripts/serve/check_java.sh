#!/usr/bin/env bash
# TorchServe's frontend is Java: fail early, with the install command, when Java 17+ is missing.
set -euo pipefail
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: Java 17 or newer is required by TorchServe and was not found." >&2
  echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  echo "       macOS:         brew install openjdk@17" >&2
  exit 1
fi
version=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
if [ "$major" = "1" ]; then major=$(echo "$version" | cut -d. -f2); fi
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
  echo "error: TorchServe needs Java 17 or newer; found '$version' ($java_bin)." >&2
  echo "       Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi
