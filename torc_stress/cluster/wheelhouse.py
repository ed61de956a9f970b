"""The offline deploy artifact: a wheelhouse of the project and all its runtime dependencies.

Hosts need no package index: the controller runs ``pip wheel <project>`` with its own interpreter,
packs the wheels into one tarball (top directory ``wheelhouse/``) and the deploy playbook copies
it to ``{{ torc_root }}``, unpacks it and runs ``pip install --no-index --find-links``.

Builds are cached by a digest of the project's sources, ``pyproject.toml`` and the interpreter
(wheels of compiled dependencies are ABI-specific). The same digest is the deploy marker
``{{ torc_root }}/.deployed-<digest>``: redeploying the same build is "ok", not "changed".
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torc_stress.errors import ConfigError, WheelhouseError

logger = logging.getLogger(__name__)

PACKAGE_DIR = "torc_stress"
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")
"""Top-level files that go into the wheel's metadata (hatchling reads the readme)."""

SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
DIGEST_LEN = 16
DIST_NAME = "torc-stress"
WHEELHOUSE_DIR = "wheelhouse"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Wheelhouse:
    """A built wheelhouse.

    Attributes:
        path: the directory holding the wheels.
        tarball: ``wheelhouse-<digest>.tar.gz`` with the wheels under ``wheelhouse/``.
        digest: the build's identity (sources + pyproject + interpreter), 16 hex digits.
        cached: whether this call reused an earlier build.
        seconds: wall time of this call.
    """

    path: Path
    tarball: Path
    digest: str
    cached: bool = False
    seconds: float = 0.0

    @property
    def wheels(self) -> list[Path]:
        """The wheel files, sorted by name."""
        return sorted(self.path.glob("*.whl"))

    @property
    def marker(self) -> str:
        """File name of the deploy marker written under ``torc_root`` after an install."""
        return deployed_marker(self.digest)


def source_files(project_root: Path) -> list[Path]:
    """The files whose content defines a build: the package tree and the top-level metadata.

    Args:
        project_root: the directory holding ``pyproject.toml``.

    Returns:
        Paths relative to ``project_root``, sorted; caches and bytecode are left out.
    """
    root = Path(project_root)
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"{root} has no pyproject.toml; pass the project's root directory")
    files = [Path(name) for name in PROJECT_FILES if (root / name).is_file()]
    for dirpath, dirnames, filenames in os.walk(root / PACKAGE_DIR):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix not in SKIP_SUFFIXES:
                files.append(path.relative_to(root))
    return sorted(files)


def digest_files(root: Path, files: Iterable[Path], salt: str = "") -> str:
    """A sha256 over relative names and contents of ``files`` (pure apart from reading them).

    Args:
        root: the directory the names are relative to.
        files: relative paths.
        salt: extra text that takes part (e.g. the interpreter's identity).

    Returns:
        The first 16 hex digits.
    """
    h = hashlib.sha256(salt.encode())
    for rel in sorted(files):
        data = (Path(root) / rel).read_bytes()
        h.update(f"\0{rel.as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:DIGEST_LEN]


def interpreter_tag() -> str:
    """The identity of the running interpreter that decides which wheels pip picks."""
    return f"{sys.implementation.cache_tag}-{platform.machine()}-{sys.platform}"


def project_digest(project_root: Path) -> str:
    """The digest of a build of ``project_root`` with the running interpreter."""
    return digest_files(project_root, source_files(project_root), salt=interpreter_tag())


def deployed_marker(digest: str) -> str:
    """File name of the deploy marker for a build (``.deployed-<digest>``)."""
    return f".deployed-{digest}"


def install_command(torc_root: str, python: str = "python3", tarball: str | None = None) -> str:
    """The shell command a host runs to install a copied wheelhouse tarball into a venv.

    Args:
        torc_root: the host's install root (the tarball was copied there).
        python: the host's interpreter.
        tarball: the tarball's file name under ``torc_root`` (default ``wheelhouse.tar.gz``).

    Returns:
        One ``sh`` command line: unpack, create the venv, ``pip install --no-index``.
    """
    name = tarball or "wheelhouse.tar.gz"
    return (
        f"cd {torc_root} && rm -rf {WHEELHOUSE_DIR} && tar -xzf {name} && "
        f"{python} -m venv {torc_root}/venv && "
        f"{torc_root}/venv/bin/pip install -q --disable-pip-version-check "
        f"--no-index --find-links {torc_root}/{WHEELHOUSE_DIR} {DIST_NAME}"
    )


def build_wheelhouse(project_root: Path, cache_dir: Path, *, timeout: float = 900) -> Wheelhouse:
    """Build (or reuse) the wheelhouse of ``project_root`` and its runtime dependencies.

    Runs ``<this python> -m pip wheel <project_root> -w <dir>`` (needs a package index on the
    controller on a cold cache), then packs the wheels into one tarball. A second call with
    unchanged sources returns the cached build without running pip.

    Args:
        project_root: the project (the directory holding ``pyproject.toml``).
        cache_dir: where builds are kept, one directory per digest.
        timeout: seconds pip may take.

    Returns:
        The wheelhouse.

    Raises:
        WheelhouseError: pip failed (its last output lines are in the message).
    """
    started = time.monotonic()
    project_root = Path(project_root).resolve()
    digest = project_digest(project_root)
    build_dir = Path(cache_dir).resolve() / digest
    if (build_dir / COMPLETE_MARKER).is_file():
        wh = _wheelhouse_at(build_dir, digest, cached=True, started=started)
        logger.info("wheelhouse cached digest=%s wheels=%d seconds=%.3f", digest, len(wh.wheels),
                    wh.seconds)
        return wh
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=build_dir.parent))
    try:
        _pip_wheel(project_root, tmp / WHEELHOUSE_DIR, timeout)
        pack_wheelhouse(tmp / WHEELHOUSE_DIR, tmp / tarball_name(digest))
        (tmp / COMPLETE_MARKER).write_text(digest + "\n")
        shutil.rmtree(build_dir, ignore_errors=True)
        tmp.rename(build_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wh = _wheelhouse_at(build_dir, digest, cached=False, started=started)
    logger.info("wheelhouse built digest=%s wheels=%d seconds=%.1f", digest, len(wh.wheels),
                wh.seconds)
    return wh


def tarball_name(digest: str) -> str:
    """File name of the tarball of a build."""
    return f"wheelhouse-{digest}.tar.gz"


def _wheelhouse_at(build_dir: Path, digest: str, *, cached: bool, started: float) -> Wheelhouse:
    return Wheelhouse(path=build_dir / WHEELHOUSE_DIR, tarball=build_dir / tarball_name(digest),
                      digest=digest, cached=cached, seconds=time.monotonic() - started)


def _pip_wheel(project_root: Path, out: Path, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
           str(project_root), "-w", str(out)]
    logger.info("wheelhouse building cmd=%s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WheelhouseError(f"pip wheel took longer than {timeout:g} s; is the package index "
                              "reachable from the controller?") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise WheelhouseError(
            f"pip wheel {project_root} failed (exit {proc.returncode}); the controller needs a "
            f"package index (or a pip cache) to build the wheelhouse:\n{tail}"
        )


def pack_wheelhouse(wheel_dir: Path, tarball: Path) -> Path:
    """Pack the wheels of ``wheel_dir`` into ``tarball`` under a top directory ``wheelhouse/``.

    The tarball is reproducible for the same wheels (sorted names, zeroed times and owners).

    Args:
        wheel_dir: directory with ``*.whl`` files.
        tarball: the ``.tar.gz`` to write.

    Returns:
        ``tarball``.
    """
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    if not wheels:
        raise WheelhouseError(f"no wheels in {wheel_dir}; nothing to pack")

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with (
        open(tarball, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        tar.add(wheel_dir, arcname=WHEELHOUSE_DIR, recursive=False, filter=normalise)
        for wheel in wheels:
            tar.add(wheel, arcname=f"{WHEELHOUSE_DIR}/{wheel.name}", filter=normalise)
    return tarball
