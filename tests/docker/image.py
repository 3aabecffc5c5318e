"""forwardd's image, built from the repository's Dockerfile on a machine that cannot pull python:3.11 nor
reach the package index from a build container (what issue 17 found).

- The base: Debian bookworm's python3 (3.11, as the image needs) from debootstrap, trimmed and
  `docker import`-ed as ``forwardd-base:test``; the tarball is cached for the session (and across sessions
  in ``$FORWARDD_TEST_BASE_CACHE`` when that names a directory), since debootstrap is the slow step.
- The wheels: ``pip wheel`` of forwardd (C extensions included) and its dependencies on the host, into the
  build context's ``deploy/docker/wheels/``; the image installs them with ``--no-index``, and the build runs
  with ``--network none`` to prove it needs nothing else. A host wheel fits bookworm: the extensions need
  glibc symbols no newer than 2.14 (``objdump -T``), the dependencies are manylinux wheels, and the build's
  import of the extensions on the runtime image fails the build if either were not so.
- The build: BuildKit, because the legacy builder commits a container per instruction and with dockerd's
  vfs storage (no overlayfs here) each one is a full copy of the image: 3 minutes against 30 s. Debian's
  docker.io CLI has BuildKit built in; a newer CLI needs its buildx plugin, so the first that has it is used.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.conftest import ROOT

BASE_TAG = "forwardd-base:test"
IMAGE_TAG = "forwardd:test"
#: What the build context holds (the Dockerfile's .dockerignore says the same).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "forwardd", "conf", "deploy/docker")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def debian_mirror() -> str:
    """The Debian archive apt uses on this machine (the base must come from where the host's packages do)."""
    files = [*sorted(glob.glob("/etc/apt/sources.list.d/*.sources")), "/etc/apt/sources.list"]
    files += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("URIs:"):
                uris = line.split()[1:]
            elif line.startswith("deb "):
                uris = [w for w in line.split()[1:] if "://" in w][:1]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def _debootstrap(work: Path) -> subprocess.Popen[bytes]:
    assert shutil.which("debootstrap"), "debootstrap is not installed (scripts/test installs it)"
    with (work / "debootstrap.log").open("wb") as log:
        return subprocess.Popen(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm",
             str(work / "root"), debian_mirror()],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _pack(work: Path, tarball: Path) -> None:
    """Trim what an image never uses (package caches and lists, docs, locales, device nodes) and tar it."""
    root = work / "root"
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                 "usr/share/locale", "dev"):  # fmt: skip
        shutil.rmtree(root / junk, ignore_errors=True)
    (root / "dev").mkdir()
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, capture_output=True)
    partial.rename(tarball)
    shutil.rmtree(root, ignore_errors=True)


def _context(dest: Path) -> None:
    """The build context: the files the Dockerfile copies, never a host-built extension or cache."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.whl", "build", "*.egg-info")
    for name in CONTEXT:
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)


def _wheels(context: Path) -> None:
    """forwardd and its dependencies as wheels, made on the host into the context (pip builds in a copy,
    so the work tree gets no build/ or egg-info)."""
    src = context.parent / "src"
    _context(src)
    subprocess.run(
        ["python3", "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(context / "deploy" / "docker" / "wheels"), f"{src}[kafka,http]"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    shutil.rmtree(src)


def _build_cli(env: dict[str, str]) -> str:
    """A docker CLI that speaks BuildKit: this one's buildx plugin, else Debian's docker.io CLI."""
    for cli in (shutil.which("docker"), "/usr/bin/docker"):
        if cli and os.access(cli, os.X_OK):
            r = subprocess.run([cli, "buildx", "version"], env=env, capture_output=True, check=False)
            if r.returncode == 0:
                return cli
            v = subprocess.run([cli, "--version"], env=env, capture_output=True, text=True, check=False)
            if v.stdout.startswith("Docker version 20.10") or v.stdout.startswith("Docker version 19.03"):
                return cli  # BuildKit built into the CLI (DOCKER_BUILDKIT=1)
    raise AssertionError("no docker CLI with BuildKit (Debian's docker.io CLI or docker-buildx)")


def build(env: dict[str, str], cache: Path) -> dict[str, float]:
    """Import the base, build forwardd:test; returns the seconds each step took (the test reports them)."""
    took: dict[str, float] = {}
    t0 = time.monotonic()
    keep = os.environ.get("FORWARDD_TEST_BASE_CACHE")
    tarball = (Path(keep) if keep and Path(keep).is_dir() else cache) / "forwardd-base-bookworm.tar"
    work = cache / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    boot = None if tarball.exists() else _debootstrap(work)
    try:
        context = work / "context"
        _context(context)
        _wheels(context)  # on the host, while debootstrap downloads and unpacks
        took["wheels"] = time.monotonic() - t0
        if boot is not None:
            rc = boot.wait(timeout=600)
            assert rc == 0, (work / "debootstrap.log").read_text()[-3000:]
            _pack(work, tarball)
        took["base"] = time.monotonic() - t0
    finally:
        if boot is not None and boot.poll() is None:
            boot.kill()
    docker = shutil.which("docker") or "docker"
    subprocess.run([docker, "import", str(tarball), BASE_TAG], env=env, check=True, capture_output=True)
    t1 = time.monotonic()
    r = subprocess.run(
        [_build_cli(env), "build", "--network", "none", "--progress", "plain",
         "--build-arg", f"BASE={BASE_TAG}", "--build-arg", f"BUILD_BASE={BASE_TAG}",
         "-t", IMAGE_TAG, str(context)],
        env=dict(env, DOCKER_BUILDKIT="1"), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    took["build"] = time.monotonic() - t1
    shutil.rmtree(work, ignore_errors=True)
    return took
