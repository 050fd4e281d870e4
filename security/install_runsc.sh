#!/usr/bin/env bash
# Installs gVisor (Debian's `runsc` package) and registers it with the running dockerd as the
# runtime "runsc", without restarting the daemon. Idempotent: a second run changes nothing.
#
#   sudo security/install_runsc.sh            install, register, reload, verify
#   RUNSC_PLATFORM=kvm security/install_runsc.sh   pick the gVisor platform explicitly
#
# What it does, and why:
# 1. apt-get install runsc (signed Debian package; no registry needed, none is reachable in CI).
# 2. Merges {"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": [...]}}} into
#    /etc/docker/daemon.json, keeping every other key as it is. `--network=none` makes gVisor
#    build no network stack of its own: the sandbox has no network even inside the sentry.
#    `--oci-seccomp` makes gVisor apply the container's seccomp profile (server/backtest_sandbox/sandbox/seccomp.json)
#    to the guest's system calls too; without it runsc ignores the profile, and inside the
#    sentry unshare(CLONE_NEWUSER), io_uring_setup and AF_PACKET sockets succeed (emulated, so
#    not a host escape, but attack surface and a different answer than under runc).
# 3. SIGHUP to dockerd: `runtimes` is one of the settings the daemon reloads on SIGHUP, so the
#    containers and the other tenants already running are not disturbed by a restart.
# 4. Verifies that `docker info` lists runsc, and that runsc really starts a container here
#    (a package that installs but cannot run is a failure, not a success).
#
# The platform: Debian bookworm's runsc (20221219) knows `ptrace` (its default) and `kvm` (no
# `systrap` yet). `ptrace` needs nothing from the machine and is what we register. On the
# Firecracker VM this was written on (kernel 6.18) `kvm` hangs at start, spinning a CPU, although
# /dev/kvm exists (no usable nested virtualisation); override with RUNSC_PLATFORM=kvm only where
# it has been seen to work.
#
# The ptrace platform runs one host stub process per guest address space plus the Sentry's own
# threads, all inside the container's pids cgroup: ~57 host tasks for an idle Python. With the
# sandbox's pids limit alone (64) the Sentry panics ("error initializing first thread: resource
# temporarily unavailable") and every run ends with exit code 2; sandbox/containers.py therefore adds
# RUNSC_PIDS_HEADROOM under runsc.
set -euo pipefail

RUNSC_PATH=/usr/bin/runsc
DAEMON_JSON=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
DOCKER_PID_FILE=${DOCKER_PID_FILE:-/run/docker.pid}
RUNSC_PLATFORM=${RUNSC_PLATFORM:-ptrace}
# The image the smoke test runs `sh` in: a local image only, never pulled. By default the
# runner image (or its debootstrap base) once `backtest-sandbox build-image` has run; before
# that the run check is skipped (the corpus runs under runsc later anyway).
SMOKE_IMAGE=${RUNSC_SMOKE_IMAGE:-$(docker images -q --filter label=org.backtest-sandbox.component=runner 2>/dev/null | head -n 1)}
SMOKE_IMAGE=${SMOKE_IMAGE:-backtest-sandbox-base:bookworm}

log() { echo "install_runsc: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, $DAEMON_JSON, signalling dockerd)"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable"

# 1. The package.
if ! dpkg-query -W -f='${Status}' runsc 2>/dev/null | grep -q 'install ok installed'; then
  log "installing Debian's runsc package"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null
fi
[ -x "$RUNSC_PATH" ] || die "$RUNSC_PATH missing after installing the runsc package"
log "$("$RUNSC_PATH" --version | head -n 1)"

# 2. daemon.json: merge, never overwrite. Python is used (not jq) because it is always on a
# Debian host with Docker's tooling and its json module keeps every key and value as it was.
desired_args=("--network=none" "--platform=$RUNSC_PLATFORM" "--oci-seccomp")
changed=$(python3 - "$DAEMON_JSON" "$RUNSC_PATH" "${desired_args[@]}" <<'PY'
import json
import os
import sys

path, runsc, *args = sys.argv[1:]
try:
    with open(path) as stream:
        config = json.load(stream)
except FileNotFoundError:
    config = {}
if not isinstance(config, dict):
    sys.exit(f"{path} is not a JSON object")
wanted = {"path": runsc, "runtimeArgs": args}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == wanted:
    print("unchanged")
    sys.exit(0)
runtimes["runsc"] = wanted
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = f"{path}.install_runsc.tmp"
with open(tmp, "w") as stream:
    json.dump(config, stream, indent=2)
    stream.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)  # atomic: dockerd never reads half a file
print("changed")
PY
)
log "$DAEMON_JSON: runsc entry $changed"

# 3. Reload. Done even when unchanged: a daemon started before the file was edited by hand
# (or by a previous run that failed before this step) has not read it yet. SIGHUP is harmless.
if [ -r "$DOCKER_PID_FILE" ]; then
  dockerd_pid=$(cat "$DOCKER_PID_FILE")
else
  dockerd_pid=$(pidof dockerd) || die "no $DOCKER_PID_FILE and no dockerd process: is it local?"
fi
kill -HUP "$dockerd_pid"

# 4. Verify: the daemon lists it (the reload is asynchronous), and it runs a container.
for _ in $(seq 1 50); do
  if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; then
    break
  fi
  sleep 0.2
done
docker info --format '{{json .Runtimes}}' | grep -q '"runsc"' \
  || die "dockerd did not pick up the runsc runtime after SIGHUP (see: journalctl -u docker)"
log "docker info lists runsc"

if docker image inspect "$SMOKE_IMAGE" >/dev/null 2>&1; then
  if ! out=$(docker run --rm --runtime=runsc --network=none "$SMOKE_IMAGE" \
      sh -c 'echo "kernel $(uname -r)"; echo runsc-ok' 2>&1); then
    die "runsc is registered but cannot run a container here: $out"
  fi
  grep -q runsc-ok <<<"$out" || die "runsc smoke test printed no marker: $out"
  # gVisor reports its own kernel version (4.4.0), not the host's: proof it really ran there.
  log "runsc ran a container (platform $RUNSC_PLATFORM, guest $(head -n 1 <<<"$out"))"
else
  log "smoke image $SMOKE_IMAGE not present; skipped the run check (build the runner image)"
fi
