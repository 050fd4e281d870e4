"""The runner image: built once, air-gapped, and tagged by a hash of what goes into it.

The tag is `<settings.image_repository>:<input hash[:16]>`, where the input hash covers
Dockerfile.runner, every runner_image/*.py and runner_image/requirements.lock. The base image
is deliberately left out of it, so that the sandbox can name the image without asking Docker
(`expected_tag`); the base's id is recorded in a label instead, and `ensure_image` rebuilds
under the same tag when the base it would choose now has another id.

`ensure_image` does three things, each skipped when its output already exists:

1. the base: `settings.base_image` when present or pullable at once; else Debian bookworm from
   `debootstrap --variant=minbase`, imported as `backtest-sandbox-base:bookworm`;
2. the wheels in the lock, downloaded by the host's pip into `<cache_dir>/wheels`;
3. the runner image, built with networking off from a context assembled here.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests

from backtest_sandbox.domain.errors import ImageBuildError, SandboxError
from backtest_sandbox.domain.settings import Settings

Progress = Callable[[str], None]

DOCKERFILE = "Dockerfile.runner"
RUNNER_DIR = "runner_image"
LOCK = f"{RUNNER_DIR}/requirements.lock"
DEBOOTSTRAP_BASE = "backtest-sandbox-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"  # plain http is fine: apt checks the signatures

LABEL_INPUTS = "org.backtest-sandbox.inputs"  # the full input hash (the tag has 16 digits)
LABEL_BASE = "org.backtest-sandbox.base"
LABEL_BASE_ID = "org.backtest-sandbox.base-id"

# Bump when this module changes what goes into the image, so that the tag changes with it.
_RECIPE = b"backtest-sandbox runner image, recipe 1\n"
# A registry that answers nothing for this long is taken as unreachable.
_PULL_TIMEOUT_SECONDS = 20
_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")
# What a container never needs from the debootstrap rootfs (~140 MB of ~260 MB).
_ROOTFS_TRIM = (
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "var/log/*",
)
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LOCK_LINE = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)"
    r"(?P<hashes>(?:[ \t]+--hash=sha256:[0-9a-f]{64})+)"
)


@dataclass(frozen=True)
class LockedWheel:
    """One line of the lock: a distribution, its exact version, the sha256 of its wheel."""

    name: str
    version: str
    hashes: frozenset[str]


def _print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Where a wheel carries the runner (pyproject.toml's force-include): beside this module.
PACKAGED_RUNNER = Path(__file__).resolve().parent / "runner"
# Where a source checkout has it: the repository's top, three levels above this module.
CHECKOUT_ROOT = Path(__file__).resolve().parents[3]


def runner_root() -> Path:
    """The tree holding Dockerfile.runner and runner_image/: the wheel's copy, or the checkout.

    Raises:
        ImageBuildError: neither has Dockerfile.runner (a broken install).
    """
    for root in (PACKAGED_RUNNER, CHECKOUT_ROOT):
        if (root / DOCKERFILE).is_file():
            return root
    raise ImageBuildError(
        f"{DOCKERFILE} is neither in {PACKAGED_RUNNER} (an installed wheel) nor in "
        f"{CHECKOUT_ROOT} (a source checkout): reinstall backtest-sandbox"
    )


def _runner_sources(root: Path) -> list[Path]:
    # Flat on purpose: the image gets runner_image/*.py, nothing below it.
    return sorted(p for p in (root / RUNNER_DIR).glob("*.py") if p.is_file())


def input_hash(root: Path) -> str:
    """sha256 (hex) over Dockerfile.runner, every runner_image/*.py and the lock.

    Needs no Docker. Independent of where `root` is; each file enters with its relative path
    and length, so that renaming or moving bytes between files changes the hash too.

    Raises:
        ImageBuildError: Dockerfile.runner or the lock cannot be read.
    """
    digest = hashlib.sha256(_RECIPE)
    for path in [root / DOCKERFILE, *_runner_sources(root), root / LOCK]:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageBuildError(f"runner image input {path}: {e.strerror or e}") from e
        name = path.relative_to(root).as_posix().encode()
        digest.update(b"%s\0%d\0" % (name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def _tag(settings: Settings, digest: str) -> str:
    return f"{settings.image_repository}:{digest[:16]}"


def expected_tag(settings: Settings) -> str:
    """The tag of the runner image for the current sources; computed without Docker.

    Raises:
        ImageBuildError: the image's sources are missing or unreadable.
    """
    return _tag(settings, input_hash(runner_root()))


def image_present(client: docker.DockerClient, settings: Settings) -> bool:
    """Whether the runner image for the current sources exists in the daemon.

    Raises:
        ImageBuildError: the image's sources are missing or unreadable.
        SandboxError: Docker could not be asked.
    """
    tag = expected_tag(settings)
    try:
        return _image_id(client, tag) is not None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise SandboxError(f"cannot look up the runner image {tag}: {e}") from e


def parse_lock(path: Path) -> list[LockedWheel]:
    """The wheels pinned by a lock file: one `name==version --hash=sha256:<hex>` per line.

    Raises:
        ImageBuildError: the file cannot be read, is empty, or has a line that is not an
            exact, hash-pinned requirement on one line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ImageBuildError(f"cannot read the wheel lock {path}: {e.strerror or e}") from e
    wheels = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LOCK_LINE.fullmatch(line)
        if match is None:
            raise ImageBuildError(
                f"{path}:{number}: expected `name==version --hash=sha256:<64 hex>` "
                f"on one line, got {raw!r}"
            )
        hashes = frozenset(re.findall(r"sha256:([0-9a-f]{64})", match["hashes"]))
        wheels.append(LockedWheel(match["name"].lower(), match["version"], hashes))
    if not wheels:
        raise ImageBuildError(f"{path}: pins no wheels")
    return wheels


def ensure_image(
    client: docker.DockerClient,
    settings: Settings,
    progress: Progress = _print_stderr,
    force: bool = False,
) -> str:
    """Return the runner image's tag, building whatever is missing first.

    A no-op (a few image look-ups) when the image for the current sources exists and was
    built on the base that would be chosen now. `force` rebuilds the runner image without the
    layer cache; it reuses an existing debootstrap base (remove that tag to refresh it).
    Progress lines (build output) go to `progress`.

    Raises:
        ImageBuildError: a source is missing, Docker failed, the base, the wheel download or
            the build failed; the message says which, with the last lines of output.
    """
    root = runner_root()
    digest = input_hash(root)
    tag = _tag(settings, digest)
    try:
        if not force and _is_current(client, settings, tag, digest):
            return tag
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        # Two builders sharing a cache dir would share the rootfs and the wheel directory.
        with host_lock(settings.cache_dir / "image-build.lock"):
            if not force and _is_current(client, settings, tag, digest):
                return tag
            base, base_id = _ensure_base(client, settings, progress)
            wheels = _ensure_wheels(root, settings, progress)
            started = time.monotonic()
            _build(client, root, wheels, tag, digest, base, base_id, progress, nocache=force)
            progress(f"built {tag} on {base} in {time.monotonic() - started:.1f} s")
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise ImageBuildError(f"runner image {tag}: Docker failed: {e}") from e
    except OSError as e:
        raise ImageBuildError(f"runner image {tag}: {e}") from e
    return tag


@contextmanager
def host_lock(path: Path) -> Iterator[None]:
    """One process of this host at a time in the block (an flock on `path`, created if need
    be; released when the file is closed, a crash included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _image_id(client: docker.DockerClient, ref: str) -> str | None:
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


def _local_base(client: docker.DockerClient, settings: Settings) -> tuple[str, str] | None:
    """The base a build would use now without pulling or building: (ref, image id)."""
    for ref in (settings.base_image, DEBOOTSTRAP_BASE):
        image_id = _image_id(client, ref)
        if image_id is not None:
            return ref, image_id
    return None


def _is_current(client: docker.DockerClient, settings: Settings, tag: str, digest: str) -> bool:
    try:
        labels: dict[str, str] = client.images.get(tag).labels or {}
    except docker.errors.ImageNotFound:
        return False
    if labels.get(LABEL_INPUTS) != digest:
        return False  # a 16-digit tag collision, or an image tagged by someone else
    # With no base left locally, the image itself is still good: it does not need its base.
    base = _local_base(client, settings)
    return base is None or labels.get(LABEL_BASE_ID) == base[1]


def _ensure_base(
    client: docker.DockerClient, settings: Settings, progress: Progress
) -> tuple[str, str]:
    """The base to build on, as (ref, image id): pulled or built when there is none.

    Raises:
        ImageBuildError: no base could be found, pulled or built.
    """
    ref = settings.base_image
    image_id = _image_id(client, ref)
    if image_id is None and _try_pull(client, ref, progress):
        image_id = _image_id(client, ref)
    if image_id is not None:
        return ref, image_id
    image_id = _image_id(client, DEBOOTSTRAP_BASE)
    if image_id is None:
        started = time.monotonic()
        _build_debootstrap_base(client, settings, progress)
        image_id = _image_id(client, DEBOOTSTRAP_BASE)
        if image_id is None:
            raise ImageBuildError(f"the base {DEBOOTSTRAP_BASE} is missing after its import")
        progress(f"built {DEBOOTSTRAP_BASE} in {time.monotonic() - started:.1f} s")
    return DEBOOTSTRAP_BASE, image_id


def _try_pull(client: docker.DockerClient, ref: str, progress: Progress) -> bool:
    progress(f"pulling {ref} (failing is normal where no registry is reachable)")
    saved = client.api.timeout
    client.api.timeout = _PULL_TIMEOUT_SECONDS  # a read timeout: a slow but live pull goes on
    try:
        client.images.pull(ref)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        progress(f"cannot pull {ref}: {e}")
        return False
    finally:
        client.api.timeout = saved
    return True


def _build_debootstrap_base(
    client: docker.DockerClient, settings: Settings, progress: Progress
) -> None:
    """debootstrap Debian bookworm (minbase + python3), trim it, import it as the base.

    Raises:
        ImageBuildError: not root, debootstrap missing and not installable, or a step failed.
    """
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"{settings.base_image} is not available and building the base with debootstrap "
            "needs root: run `backtest-sandbox build-image` once as root, or `docker load` "
            f"{settings.base_image}"
        )
    debootstrap = _debootstrap(progress)
    work = settings.cache_dir / "base"
    rootfs = work / "rootfs"
    _remove_rootfs(rootfs)  # a leftover of an interrupted run
    debs = work / "debs"  # debootstrap --cache-dir: the .debs survive for the next base build
    debs.mkdir(parents=True, exist_ok=True)
    try:
        _run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3",
                f"--cache-dir={debs}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            progress,
            "debootstrap",
        )
        _trim_rootfs(rootfs)
        _import_rootfs(client, rootfs, work / "rootfs.tar", progress)
    finally:
        _remove_rootfs(rootfs)


def _debootstrap(progress: Progress) -> str:
    """The path of debootstrap, installed with apt-get when it is missing.

    Raises:
        ImageBuildError: it is missing and apt-get is not there or fails.
    """
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # root's tools, in any PATH
    found = shutil.which("debootstrap", path=search)
    if found is not None:
        return found
    apt_get = shutil.which("apt-get", path=search)
    if apt_get is None:
        raise ImageBuildError("debootstrap is missing and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([apt_get, "update", "-qq"], progress, "apt-get update", env)
    _run([apt_get, "install", "-y", "-qq", "debootstrap"], progress, "apt-get install", env)
    found = shutil.which("debootstrap", path=search)
    if found is None:
        raise ImageBuildError("debootstrap is still missing after apt-get install debootstrap")
    return found


def _trim_rootfs(rootfs: Path) -> None:
    for pattern in _ROOTFS_TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # Documentation goes, but each package's copyright file stays, as in Debian's own images.
    for directory, _subdirs, files in os.walk(rootfs / "usr/share/doc"):
        for name in files:
            if name != "copyright":
                os.unlink(os.path.join(directory, name))


def _import_rootfs(
    client: docker.DockerClient, rootfs: Path, tar_path: Path, progress: Progress
) -> None:
    """Pack the rootfs with tar and `docker import` it as DEBOOTSTRAP_BASE.

    Through a file rather than a pipe: tar's exit status is known before Docker sees a byte,
    so a truncated archive can never become a half-empty base image.

    Raises:
        ImageBuildError: tar failed.
    """
    try:
        # /dev, /proc and /sys are Docker's to provide at run time.
        excludes = ["--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*"]
        _run(
            ["tar", "-C", str(rootfs), "--numeric-owner", *excludes, "-cf", str(tar_path), "."],
            progress,
            "packing the base rootfs",
        )
        repository, _, tag = DEBOOTSTRAP_BASE.partition(":")
        progress(f"importing {DEBOOTSTRAP_BASE} ({tar_path.stat().st_size / 1e6:.0f} MB)")
        client.api.import_image(
            src=str(tar_path),
            repository=repository,
            tag=tag,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                f"LABEL {LABEL_BASE}=debootstrap-bookworm-minbase-python3",
                'CMD ["python3"]',
            ],
        )
    finally:
        tar_path.unlink(missing_ok=True)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        fields = [line.split(" ")[4] for line in handle]
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f) for f in fields]


def _remove_rootfs(rootfs: Path) -> None:
    """Delete a rootfs, unmounting first anything debootstrap left mounted inside it.

    debootstrap mounts /proc and /sys in the target while it installs and unmounts them on
    exit; killed half-way it leaves them mounted, and rmtree must never walk through a mount.

    Raises:
        ImageBuildError: something under it stays mounted.
    """
    if not rootfs.exists():
        return
    inside = [m for m in _mount_points() if Path(m).is_relative_to(rootfs)]
    for mount in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
    still = [m for m in _mount_points() if Path(m).is_relative_to(rootfs)]
    if still:
        raise ImageBuildError(f"cannot remove {rootfs}: still mounted: {', '.join(still)}")
    shutil.rmtree(rootfs)


def _ensure_wheels(root: Path, settings: Settings, progress: Progress) -> list[Path]:
    """The wheel files of the lock in `<cache_dir>/wheels`, downloaded when any is missing.

    A file counts only when its sha256 is the locked one, whatever its name.

    Raises:
        ImageBuildError: the lock is malformed or lacks pip, pip is missing on the host, the
            download failed, or a locked wheel is still missing afterwards.
    """
    lock = root / LOCK
    locked = parse_lock(lock)
    if not any(wheel.name == "pip" for wheel in locked):
        raise ImageBuildError(f"{lock}: must pin pip, which installs the rest in the image")
    wheel_dir = settings.cache_dir / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found = _match_wheels(wheel_dir, locked)
    if len(found) < len(locked):
        if find_spec("pip") is None:
            raise ImageBuildError(f"pip is needed in {sys.executable}'s environment")
        platforms = [arg for platform in _PLATFORMS for arg in ("--platform", platform)]
        command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:"]
        command += ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
        command += [*platforms, "--require-hashes", "--progress-bar", "off"]
        command += ["--disable-pip-version-check", "-r", str(lock), "-d", str(wheel_dir)]
        _run(command, progress, "downloading the wheels")
        found = _match_wheels(wheel_dir, locked)
    missing = [f"{w.name}=={w.version}" for w in locked if w.name not in found]
    if missing:
        raise ImageBuildError(f"no wheel in {wheel_dir} matches the lock for {missing}")
    return sorted(found.values())


def _match_wheels(wheel_dir: Path, locked: Iterable[LockedWheel]) -> dict[str, Path]:
    by_hash = {}
    for path in wheel_dir.glob("*.whl"):
        with path.open("rb") as handle:
            by_hash[hashlib.file_digest(handle, "sha256").hexdigest()] = path
    return {w.name: by_hash[h] for w in locked for h in w.hashes if h in by_hash}


def _write_context(root: Path, wheels: Iterable[Path], out: IO[bytes]) -> None:
    """Write the build context Dockerfile.runner expects, as a tar, to `out`."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, DOCKERFILE, root / DOCKERFILE)
        _add(tar, "requirements.lock", root / LOCK)
        _add(tar, "runner", None)  # present even while runner_image/ has no .py files yet
        for source in _runner_sources(root):
            _add(tar, f"runner/{source.name}", source)
        _add(tar, "wheels", None)
        for wheel in wheels:
            _add(tar, f"wheels/{wheel.name}", wheel)


def _add(tar: tarfile.TarFile, name: str, path: Path | None) -> None:
    # Root-owned, fixed modes, mtime 0: the same inputs give the same context, so the
    # builder's layer cache holds, and the files in the image are not writable by the sandbox.
    info = tarfile.TarInfo(name)
    if path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.size, info.mode = path.stat().st_size, 0o644
    with path.open("rb") as handle:
        tar.addfile(info, handle)


def _build(
    client: docker.DockerClient,
    root: Path,
    wheels: list[Path],
    tag: str,
    digest: str,
    base: str,
    base_id: str,
    progress: Progress,
    nocache: bool,
) -> None:
    """Build the runner image with networking off, streaming the builder's output.

    Raises:
        ImageBuildError: the builder reported an error, or the tag is missing afterwards.
    """
    tail: deque[str] = deque(maxlen=20)
    with tempfile.TemporaryFile() as context:
        _write_context(root, wheels, context)
        context.seek(0)
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=DOCKERFILE,
            tag=tag,
            buildargs={"BASE_IMAGE": base},
            labels={LABEL_INPUTS: digest, LABEL_BASE: base, LABEL_BASE_ID: base_id},
            network_mode="none",  # air-gapped: everything the build needs is in the context
            pull=False,
            rm=True,
            forcerm=True,
            nocache=nocache,
            decode=True,
            timeout=None,  # pip install and compileall print nothing for a while
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(
                    f"building {tag} failed: {str(chunk['error']).strip()}\n" + "\n".join(tail)
                )
            # The classic builder wraps a step's stderr in colour codes.
            text = _ANSI_COLOUR.sub("", str(chunk.get("stream", "")))
            for line in text.splitlines():
                if line.strip():
                    tail.append(line)
                    progress(line)
    if _image_id(client, tag) is None:
        raise ImageBuildError(f"the build finished but {tag} is missing:\n" + "\n".join(tail))


def _run(
    command: list[str], progress: Progress, what: str, env: dict[str, str] | None = None
) -> None:
    """Run a command, streaming its output lines (stdout and stderr) to `progress`.

    Raises:
        ImageBuildError: it cannot be started or exits non-zero; the message ends with its
            last lines of output.
    """
    tail: deque[str] = deque(maxlen=20)
    try:
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        ) as process:
            assert process.stdout is not None  # stdout=PIPE
            for line in process.stdout:
                if line.strip():
                    tail.append(line.rstrip())
                    progress(line.rstrip())
            returncode = process.wait()
    except OSError as e:
        raise ImageBuildError(f"{what}: cannot run {command[0]}: {e}") from e
    if returncode != 0:
        output = "\n".join(tail)
        raise ImageBuildError(f"{what} failed (exit {returncode}):\n{output}")
