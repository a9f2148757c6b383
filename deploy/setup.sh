#!/usr/bin/env bash
# Set up the farm on a Debian/Ubuntu machine: system packages, then a virtual environment in .venv.
#   bash deploy/setup.sh          what rendering needs (ffmpeg, espeak-ng, CJK fonts)
#   bash deploy/setup.sh --test   also what the tests need (an S3 server: OpenStack Swift + memcached;
#                                 Prometheus, promtool and a Pushgateway; torch's CPU build and
#                                 diffusers, to run the diffusers backends' tiny test pipelines)
# Safe to run again: the system packages are checked every time; the venv is left alone when nothing
# changed since the last run (.venv/.farm-setup holds a hash of pyproject.toml, this script and what
# was asked for; delete it to install again). A plain run after --test does nothing; --test after a
# plain run installs the test extras.
#
# torch (--test only): FARM_TORCH_VERSION (2.13.0) from FARM_TORCH_INDEX
# (https://download.pytorch.org/whl/cpu). The index's last path segment names the build pip is asked
# for: .../whl/cpu -> torch==2.13.0+cpu, .../whl/cu128 -> torch==2.13.0+cu128 (a GPU node); any
# other index gets plain torch==VERSION. A wheel that pip's configured find-links already hold is
# installed without asking the index. With the CPU build, setup fails if anything of CUDA's got in.
set -euo pipefail
cd "$(dirname "$0")/.."

testing=""
case "${1:-}" in
  "") ;;
  --test) testing=1 ;;
  -h | --help) sed -n '2,16s/^# \{0,1\}//p' "$0"; exit 0 ;;
  *) echo "usage: bash deploy/setup.sh [--test]" >&2; exit 2 ;;
esac
step() { echo "setup: $*" >&2; }

packages=(ffmpeg espeak-ng fonts-noto-cjk fonts-noto-core fonts-symbola python3-venv)
extras=""
if [ -n "$testing" ]; then
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
  step "installing system packages with apt-get (may take minutes): ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

torch_version="${FARM_TORCH_VERSION:-2.13.0}"
torch_index="${FARM_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
torch_build="${torch_index%/}"
torch_build="${torch_build##*/}"
case "$torch_version" in
  *+*) torch_build="${torch_version#*+}" ;;  # a version that names its build keeps it
  *) case "$torch_build" in
       cpu | cu[0-9]* | rocm[0-9]*) torch_version="$torch_version+$torch_build" ;;
       *) torch_build="" ;;
     esac ;;
esac

# what a run installs, as a hash: a plain run is satisfied by a --test run's stamp (a superset)
stamp=.venv/.farm-setup
stamp_of() {
  { cat pyproject.toml deploy/setup.sh; echo "extras=$1"; [ -z "$1" ] || echo "torch=$torch_version from $torch_index"; } |
    sha256sum | cut -d' ' -f1
}
want="$(stamp_of "$extras")"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ -x .venv/bin/farm ] && { [ "$have" = "$want" ] || { [ -z "$testing" ] && [ "$have" = "$(stamp_of "[test,diffusers]")" ]; }; }; then
  step "nothing changed since the last run: .venv is up to date"
  echo "ready: .venv/bin/farm --help" >&2
  exit 0
fi

pip=(.venv/bin/python -m pip)
installed() { .venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true; }

fresh=""
if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv
  fresh=1
fi
if [ -z "$have" ] || [ "$fresh" ]; then
  step "upgrading pip in .venv"
  "${pip[@]}" install -q --upgrade pip
fi

if [ -n "$testing" ]; then
  if [ "$(installed torch)" = "$torch_version" ]; then
    step "torch $torch_version is installed"
  else
    step "installing torch==$torch_version (a large download: may take minutes)"
    # pip's configured sources (find-links, a mirror) first: asking an index pip cannot reach costs
    # 5 retries per package (here 78 s for torch and its dependencies); PyPI has no +cpu/+cu builds
    if "${pip[@]}" install -q --dry-run --ignore-installed --no-deps --no-index "torch==$torch_version" >/dev/null 2>&1; then
      "${pip[@]}" install "torch==$torch_version"
    else
      "${pip[@]}" install "torch==$torch_version" --extra-index-url "$torch_index"
    fi
  fi
fi

# pip's own progress for a first install (minutes: Ray, and for --test diffusers and transformers),
# quiet for an update that installs little
quiet=(-q)
if [ -z "$(installed ray)" ] || { [ -n "$testing" ] && [ -z "$(installed diffusers)" ]; }; then
  quiet=()
  step "installing the farm${extras:+ with $extras} and its dependencies into .venv (may take minutes)"
else
  step "updating the farm${extras:+ with $extras} in .venv"
fi
"${pip[@]}" install "${quiet[@]}" -e ".${extras}"

if [ -n "$testing" ] && [ "$torch_build" = cpu ]; then
  # the CPU build was asked for: nothing of CUDA's may have come with torch or anything else
  cuda="$(.venv/bin/python - <<'EOF'
import importlib.metadata as m
names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in m.distributions()}
print(" ".join(sorted(n for n in names if n.startswith(("nvidia-", "cuda-")))))
EOF
)"
  torch_now="$(installed torch)"
  if [ -n "$cuda" ] || [ "${torch_now#*+}" != cpu ]; then
    echo "setup: error: the CPU build of torch was asked for, but .venv has torch ${torch_now:-(none)}" \
      "${cuda:+and CUDA packages: $cuda}; remove .venv and run again" >&2
    exit 1
  fi
fi

echo "$want" >"$stamp"
echo "ready: .venv/bin/farm --help" >&2
