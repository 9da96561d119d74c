#!/usr/bin/env bash
# Check docker/Dockerfile without any image registry (issue 13): build a Debian bookworm base
# locally with debootstrap, import it into podman (storage driver vfs: works without overlayfs
# privileges), build the image's `prebuilt` target on it from this tree's release binary, then
# run the image: `check-config` on the shipped config, `serve` as the non-root user, and the
# HEALTHCHECK command until /readyz says 200.
#
# Not in the default test run (minutes, needs root for debootstrap, a Debian mirror and podman).
# The `build` stage (Rust toolchain image) is NOT exercised here: no Rust image can be pulled.
#
#   sudo docker/check-image.sh            # MIRROR=http://deb.debian.org/debian by default
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
mirror="${MIRROR:-http://deb.debian.org/debian}"
base=localhost/trunkline-bookworm-minbase
image=localhost/trunkline:check
work="${WORK:-/tmp/trunkline-image-check}"
podman=(podman --storage-driver vfs --cgroup-manager cgroupfs)
# Containers here (a build machine, itself maybe a container) may not manage cgroups.
run_opts=(--cgroups=disabled --ulimit host --no-healthcheck)
# (--no-healthcheck: podman schedules HEALTHCHECK with systemd timers; the script runs the same
# command itself below.)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "check-image: $tool missing (apt-get install podman debootstrap)" >&2; exit 1; }
done
mkdir -p "$work"

# 1. The base: debootstrap --variant=minbase bookworm, imported as an image (once).
if ! "${podman[@]}" image exists "$base"; then
  echo "== debootstrap bookworm (minbase) from $mirror"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/*
  tar -C "$work/rootfs" -c . | "${podman[@]}" import - "$base"
fi

# 2. The binary (release), and a small build context: only what the prebuilt stage copies.
if [ -z "${SKIP_CARGO:-}" ]; then
  # libopus (Opus recordings) linked statically: the image has no libopus0.
  LIBOPUS_STATIC=1 cargo build --release --locked -p trunkline-gateway --features opus --bin trunkline
fi
ctx="$work/context"
rm -rf "$ctx" && mkdir -p "$ctx/config" "$ctx/target/release" "$ctx/docker"
cp config/trunkline.toml "$ctx/config/"
cp "$CARGO_TARGET_DIR/release/trunkline" "$ctx/target/release/"
cp docker/Dockerfile "$ctx/docker/"

# 3. Build the image on the local base (the default `runtime` target needs the Rust image).
echo "== podman build --target prebuilt"
"${podman[@]}" build --isolation chroot --format docker -f "$ctx/docker/Dockerfile" --target prebuilt \
  --build-arg RUNTIME_IMAGE="$base" --build-arg RUST_IMAGE="$base" -t "$image" "$ctx"

# 4. Run it.
echo "== inspect"
"${podman[@]}" image inspect "$image" --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} healthcheck={{.Config.Healthcheck.Test}}'
user="$("${podman[@]}" image inspect "$image" --format '{{.Config.User}}')"
[ "$user" = "trunkline:trunkline" ] || { echo "image user is '$user', not trunkline" >&2; exit 1; }
# Where the OCI runtime cannot start containers (a build sandbox without CAP_SYS_RESOURCE: crun's
# setrlimit fails), run the image's own filesystem with chroot instead, as its user: that checks the
# binary on the image's userland, the user, the config and the healthcheck command, not the runtime.
if "${podman[@]}" run "${run_opts[@]}" --rm "$image" --help >/dev/null 2>"$work/run.err"; then
  mode=podman
else
  echo "podman run failed here ($(tail -n 1 "$work/run.err")): checking with chroot into the image"
  mode=chroot
  mnt="$("${podman[@]}" image mount "$image")"
  trap '"${podman[@]}" image unmount "$image" >/dev/null 2>&1 || true' EXIT
  uid="$(chroot "$mnt" id -u trunkline)"
  gid="$(chroot "$mnt" id -g trunkline)"
fi
in_image() { # in_image [ENV=VAL…] -- CMD…: the entrypoint's environment, as the image's user
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  if [ "$mode" = podman ]; then
    "${podman[@]}" run "${run_opts[@]}" --rm --network host "${envs[@]/#/-e}" --entrypoint "$1" "$image" "${@:2}"
  else
    local cfg_env
    cfg_env=$("${podman[@]}" image inspect "$image" --format '{{range .Config.Env}}{{.}} {{end}}')
    # shellcheck disable=SC2086
    env -i $cfg_env HOME=/var/lib/trunkline "${envs[@]}" \
      chroot --userspec="$uid:$gid" "$mnt" sh -c 'cd /var/lib/trunkline && exec "$@"' sh "$@"
  fi
}

echo "== check-config (as the image's user)"
in_image -- id
in_image -- trunkline check-config --config /etc/trunkline/trunkline.toml | head -n 20
echo "== serve + the HEALTHCHECK command"
log="$work/serve.log"
in_image TRUNKLINE_API_TOKEN=check:0123456789abcdef0123 TRUNKLINE__HTTP__LISTEN=127.0.0.1:18080 \
  TRUNKLINE_HEALTH_PORT=18080 TRUNKLINE__SIP__LISTEN=127.0.0.1:15099 \
  TRUNKLINE__RECORDS__DATABASE_URL=sqlite:///tmp/check.db -- \
  trunkline serve --config /etc/trunkline/trunkline.toml >"$log" 2>&1 &
serve=$!
health=$("${podman[@]}" image inspect "$image" --format '{{index .Config.Healthcheck.Test 3}}')
ok=""
for _ in $(seq 1 50); do
  if in_image TRUNKLINE_HEALTH_PORT=18080 -- bash -c "$health" 2>/dev/null; then ok=1; break; fi
  sleep 0.2
done
kill -TERM "$serve" 2>/dev/null || true
wait "$serve" || true
tail -n 5 "$log"
[ -n "$ok" ] || { echo "check-image: the HEALTHCHECK command never passed (/readyz)" >&2; exit 1; }
echo "check-image: OK ($image via $mode: non-root user, check-config, serve, HEALTHCHECK /readyz)"
