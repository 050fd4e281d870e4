"""Python's libraries served to the sandbox from read-only volumes, not the storage driver.

On this kind of host the storage driver is fuse-overlayfs: every container gets its own FUSE
mount, so its own cold page cache, and each run re-reads numpy, pandas and backtrader
(~60 MB) through FUSE: about 0.2 s of CPU and 0.6 s of wall time per container. A named
volume lives on the host's own filesystem and shares one page cache between containers.

Each library directory of the runner image (the stdlib and the site packages, as the image's
own `sysconfig` names them) gets one volume, named after the image id and seeded by Docker
from the image itself (Docker copies an image's content into an empty named volume on first
mount). Every sandbox mounts them read-only over the same paths, so it sees exactly the
image's files: nothing writable is shared between runs, and isolation is unchanged.

The probe and the seeding run our own code (never a strategy's), and still in containers of
the same hardened spec as a strategy's (`Sandbox.run_own`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

from backtest_sandbox.domain.errors import SandboxError
from backtest_sandbox.image.build import host_lock

LABEL_LIBRARY = "io.backtest-sandbox.library"  # on each volume: the image id it was seeded from
PROBE = (
    "import json, sysconfig; p = sysconfig.get_paths(); "
    "print(json.dumps(sorted({p['stdlib'], p['platstdlib'], p['purelib'], p['platlib']})))"
)
SEED_CHECK = "import backtrader, numpy, pandas"  # the seeded volumes must serve these


# Runs our own Python code with these extra mounts in a hardened container; its stdout.
RunOwn = Callable[[list[str], list[Mount]], str]


def library_mounts(
    client: docker.DockerClient, image: str, lock_dir: Path, run_own: RunOwn
) -> list[Mount]:
    """Read-only mounts of the image's library volumes, seeding them on first use.

    Raises:
        SandboxError: the volumes could not be seeded (the image or the daemon failed).
    """
    try:
        # One process at a time seeds: two concurrent first mounts could copy twice.
        with host_lock(lock_dir / "library-volumes.lock"):
            image_id = str(client.images.get(image).id)
            mounts = _ensure_volumes(client, image_id, run_own)
            _remove_stale(client, image_id)
            return mounts
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxError(f"preparing the library volumes of {image}: {e}") from e


def _ensure_volumes(client: docker.DockerClient, image_id: str, run_own: RunOwn) -> list[Mount]:
    digest = image_id.split(":")[-1][:16]
    volumes = client.volumes.list(filters={"label": f"{LABEL_LIBRARY}={image_id}"})
    if volumes:
        return [Mount(v.attrs["Labels"]["path"], v.name, read_only=True) for v in volumes]
    directories = _outermost(json.loads(run_own(["python3", "-I", "-c", PROBE], [])))
    mounts = [
        Mount(path, f"backtest-sandbox-lib-{digest}-{index}", read_only=False)
        for index, path in enumerate(directories)
    ]
    for mount in mounts:
        client.volumes.create(
            mount["Source"], labels={LABEL_LIBRARY: image_id, "path": mount["Target"]}
        )
    try:
        run_own(["python3", "-I", "-c", SEED_CHECK], mounts)  # the first mount copies the image
    except (docker.errors.DockerException, SandboxError):
        for mount in mounts:  # never leave a half-seeded volume for the next process
            client.volumes.get(mount["Source"]).remove(force=True)
        raise
    return [Mount(m["Target"], m["Source"], read_only=True) for m in mounts]


def _outermost(paths: list[str]) -> list[str]:
    """Drop directories inside another one of the list (python:3.11-slim nests them)."""
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


def _remove_stale(client: docker.DockerClient, image_id: str) -> None:
    """Volumes of older runner images; one still mounted somewhere is left for next time."""
    for volume in client.volumes.list(filters={"label": LABEL_LIBRARY}):
        if volume.attrs["Labels"].get(LABEL_LIBRARY) != image_id:
            # Still in use by a container of a process running the old image: next time.
            with contextlib.suppress(docker.errors.APIError):
                volume.remove()
