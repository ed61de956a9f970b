"""The offline deploy wheelhouse: build identity, cache, tarball, and a real build + install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from torc_stress.cluster import wheelhouse as wh
from torc_stress.errors import ConfigError, WheelhouseError

ROOT = Path(__file__).resolve().parents[2]


def make_project(root: Path, body: str = "X = 1\n") -> Path:
    (root / "torc_stress").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "torc-stress"\nversion = "0.0.1"\n')
    (root / "README.md").write_text("readme\n")
    (root / "torc_stress" / "__init__.py").write_text(body)
    return root


def test_the_digest_is_stable_for_the_same_sources(tmp_path: Path) -> None:
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b")
    assert wh.project_digest(a) == wh.project_digest(a) == wh.project_digest(b)
    assert re.fullmatch(r"[0-9a-f]{16}", wh.project_digest(a))


def test_the_digest_changes_with_a_source_file_or_the_pyproject(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    before = wh.project_digest(project)
    (project / "torc_stress" / "__init__.py").write_text("X = 2\n")
    after_source = wh.project_digest(project)
    (project / "pyproject.toml").write_text('[project]\nname = "torc-stress"\nversion = "0.0.2"\n')
    after_pyproject = wh.project_digest(project)
    (project / "torc_stress" / "new.py").write_text("")
    after_new_file = wh.project_digest(project)
    assert len({before, after_source, after_pyproject, after_new_file}) == 4


def test_bytecode_and_tool_caches_do_not_change_the_digest(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    before = wh.project_digest(project)
    cache = project / "torc_stress" / "__pycache__"
    cache.mkdir()
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\0\1")
    (project / "torc_stress" / "stale.pyc").write_bytes(b"\0")
    assert wh.project_digest(project) == before


def test_a_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pyproject.toml"):
        wh.project_digest(tmp_path)


def test_the_tarball_holds_the_wheels_under_wheelhouse_and_is_reproducible(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    for name in ("b-1-py3-none-any.whl", "a-1-py3-none-any.whl"):
        (wheels / name).write_bytes(name.encode())
    (wheels / "notes.txt").write_text("not a wheel")
    first = wh.pack_wheelhouse(wheels, tmp_path / "1.tar.gz")
    time.sleep(0.01)
    second = wh.pack_wheelhouse(wheels, tmp_path / "2.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["wheelhouse", "wheelhouse/a-1-py3-none-any.whl",
                                  "wheelhouse/b-1-py3-none-any.whl"]


def test_packing_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WheelhouseError, match="no wheels"):
        wh.pack_wheelhouse(tmp_path, tmp_path / "x.tar.gz")


def test_a_finished_build_is_reused_without_running_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p")
    digest = wh.project_digest(project)
    build = tmp_path / "cache" / digest
    (build / "wheelhouse").mkdir(parents=True)
    (build / "wheelhouse" / "torc_stress-0.0.1-py3-none-any.whl").write_bytes(b"x")
    wh.pack_wheelhouse(build / "wheelhouse", build / wh.tarball_name(digest))
    (build / wh.COMPLETE_MARKER).write_text(digest)

    def no_pip(*args: object) -> None:
        raise AssertionError("pip must not run for a cached build")

    monkeypatch.setattr(wh, "_pip_wheel", no_pip)
    house = wh.build_wheelhouse(project, tmp_path / "cache")
    assert house.cached and house.digest == digest
    assert house.tarball == build / wh.tarball_name(digest)
    assert [w.name for w in house.wheels] == ["torc_stress-0.0.1-py3-none-any.whl"]
    assert house.marker == f".deployed-{digest}"


def test_an_unfinished_build_in_the_cache_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p")
    (tmp_path / "cache" / wh.project_digest(project) / "wheelhouse").mkdir(parents=True)
    calls: list[Path] = []

    def failing_pip(project_root: Path, out: Path, timeout: float) -> None:
        calls.append(project_root)
        raise WheelhouseError("pip wheel failed")

    monkeypatch.setattr(wh, "_pip_wheel", failing_pip)
    with pytest.raises(WheelhouseError):
        wh.build_wheelhouse(project, tmp_path / "cache")
    assert calls == [project.resolve()]
    assert not list((tmp_path / "cache").glob(".*"))  # the temp build dir was removed


def test_the_install_command_installs_offline_into_a_venv_under_the_root() -> None:
    cmd = wh.install_command("/srv/torc", python="python3.11", tarball="wheelhouse-ab.tar.gz")
    assert "tar -xzf wheelhouse-ab.tar.gz" in cmd
    assert "python3.11 -m venv /srv/torc/venv" in cmd
    assert "/srv/torc/venv/bin/pip install" in cmd
    assert "--no-index --find-links /srv/torc/wheelhouse torc-stress" in cmd


# --- a real build: needs the package index (or pip's cache) on the controller ----------------


def _copy_sources(dest: Path) -> Path:
    """A snapshot of the project's build inputs, so concurrent edits cannot change the digest."""
    dest.mkdir()
    for rel in wh.source_files(ROOT):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, wh.Wheelhouse]:
    base = tmp_path_factory.mktemp("wheelhouse")
    project = _copy_sources(base / "project")
    cache = base / "cache"
    return project, cache, wh.build_wheelhouse(project, cache)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@pytest.mark.slow
def test_the_wheelhouse_has_the_project_and_every_runtime_dependency(
    built: tuple[Path, Path, wh.Wheelhouse],
) -> None:
    project, _, house = built
    assert not house.cached
    names = {_normalise(w.name.split("-")[0]) for w in house.wheels}
    deps = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {_normalise(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in deps}
    assert "torc_stress" in names
    assert wanted <= names, f"missing wheels: {sorted(wanted - names)}"
    assert not {"pytest", "ansible_core", "mypy"} & names, "dev extras must not be shipped"
    with tarfile.open(house.tarball) as tar:
        members = tar.getnames()
    assert sorted(m for m in members if m.endswith(".whl")) == [
        f"wheelhouse/{w.name}" for w in house.wheels
    ]


@pytest.mark.slow
def test_a_second_build_of_unchanged_sources_reuses_the_cache(
    built: tuple[Path, Path, wh.Wheelhouse], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, cache, cold = built

    def no_pip(*args: object) -> None:
        raise AssertionError("pip must not run for unchanged sources")

    monkeypatch.setattr(wh, "_pip_wheel", no_pip)
    warm = wh.build_wheelhouse(project, cache)
    assert warm.cached and warm.digest == cold.digest and warm.tarball == cold.tarball
    assert warm.seconds < cold.seconds


@pytest.mark.slow
def test_the_wheelhouse_installs_offline_into_a_fresh_venv(
    built: tuple[Path, Path, wh.Wheelhouse], tmp_path: Path
) -> None:
    _, _, house = built
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(house.tarball, root / house.tarball.name)
    cmd = wh.install_command(str(root), python=sys.executable, tarball=house.tarball.name)
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    check = subprocess.run(
        [str(root / "venv" / "bin" / "python"), "-c",
         "import torc_stress, yaml, fabric, paramiko; print(torc_stress.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip().startswith(str(root / "venv"))
