#!/usr/bin/env bash
# Set up the farm on a Debian/Ubuntu machine: system packages, then a virtual environment in .venv.
#   bash deploy/setup.sh          what rendering needs (ffmpeg, espeak-ng, CJK fonts)
#   bash deploy/setup.sh --test   also what the tests need (an S3 server: OpenStack Swift + memcached;
#                                 Prometheus, promtool and a Pushgateway; torch's CPU build and
#                                 diffusers, to run the diffusers backends' tiny test pipelines)
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(ffmpeg espeak-ng fonts-noto-cjk python3-venv)
extras=""
if [ "${1:-}" = "--test" ]; then
  packages+=(swift swift-proxy swift-account swift-container swift-object memcached prometheus prometheus-pushgateway)
  extras="[test,diffusers]"
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing system packages: ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
  # the CPU build of torch, pinned: an unpinned torch would pull the newest CUDA build (gigabytes)
  .venv/bin/python -m pip install -q "torch==${FARM_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".${extras}"
echo "ready: .venv/bin/farm --help" >&2
