# attack: look for the container engine's sockets, configuration and credentials, and for any
#   host directory mounted into the container
# expect: completed
# checks: none of them exists inside; the only mounts from the host are /job, /out, the three
#   files Docker itself provides (resolv.conf, hostname, hosts), docker-init, and the image's
#   own Python libraries as read-only volumes (library_volumes.py)
# control: the container spec (nothing mounted but the run dir); the read-only image
# proof: ATTEMPTED engine paths: 0 of \d+ exist
# proof: ATTEMPTED host mounts: .*/job /out
import os

import backtrader as bt

PATHS = [
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/lib/docker",
    "/etc/docker", "/root/.docker/config.json", "/tmp/.docker/config.json", "/run/secrets",
    "/var/run/secrets/kubernetes.io", "/etc/kubernetes", "/var/lib/kubelet",
]  # fmt: skip
# Docker provides the three /etc files, and docker-init (the container's PID 1) read-only.
EXPECTED_BINDS = {
    "/job",
    "/out",
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/hosts",
    "/usr/sbin/docker-init",
}
# The runner image's own library directories, served from volumes Docker seeded from the image
# (server/backtest_sandbox/library_volumes.py); they must be read-only.
LIBRARY_VOLUMES = {"/usr/lib/python3.11", "/usr/local/lib/python3.11/dist-packages"}
PSEUDO = ("proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay")


class SandboxBreach(Exception):
    """Raised when an attack that must fail succeeded: the verdict flips to runtime_error."""


class DockerSocket(bt.Strategy):
    def start(self):
        present = [path for path in PATHS if os.path.lexists(path)]
        print(f"ATTEMPTED engine paths: {len(present)} of {len(PATHS)} exist", flush=True)
        binds, writable = set(), set()
        with open("/proc/self/mountinfo") as table:
            for line in table:
                fields = line.split()
                mount_point, fs_type = fields[4], fields[fields.index("-") + 1]
                if fs_type not in PSEUDO and mount_point != "/" and "fuse" not in fs_type:
                    binds.add(mount_point)
                    if not fields[5].startswith("ro"):
                        writable.add(mount_point)
        print(f"ATTEMPTED host mounts: {' '.join(sorted(binds))}", flush=True)
        unexpected = sorted(binds - EXPECTED_BINDS - LIBRARY_VOLUMES)
        unexpected += sorted(f"{path} (writable)" for path in LIBRARY_VOLUMES & writable)
        if present or unexpected:
            raise SandboxBreach(f"engine paths {present}, unexpected mounts {unexpected}")
