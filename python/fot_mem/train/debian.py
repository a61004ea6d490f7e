"""Debian packages as a source of real long documents, fetched through apt (no other network).

Invariant: `fetch` leaves, per package, one `NAME_*.deb` in the cache directory and its contents
under `cache_dir/extract/NAME`, and reports the version of exactly that file (the archive moves,
so a build records versions in its manifest). Both steps are skipped when already done, and
both are atomic: a download lands in a scratch directory and is renamed into place, an
extraction goes to `NAME.tmp` and is renamed to `NAME` only when complete, so an interrupted run
never leaves something a later run would take for finished. A command that fails raises
`InvalidValueError` (the package does not exist) or `StoreIOError` (an `OSError`: apt or dpkg
failed otherwise) naming the package and the tail of the command's stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..exceptions import InvalidValueError, StoreIOError

__all__ = ["Package", "available", "fetch", "unpack_tarball"]

STDERR_TAIL = 2000
# Marker next to an extraction: which .deb it came from (a new download means a new extraction).
SOURCE_SUFFIX = ".source"


@dataclass(frozen=True)
class Package:
    """A fetched package: its name and version (from the .deb itself), the .deb file and the
    directory its contents were extracted into."""

    name: str
    version: str
    deb: Path
    root: Path


def _run(args: Sequence[str], package: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            list(args), cwd=cwd, capture_output=True, text=True, errors="replace", check=False
        )
    except FileNotFoundError as e:
        raise StoreIOError(
            f"{package}: {args[0]} not found; building data from Debian packages needs a Debian "
            f"system with apt and dpkg"
        ) from e
    if done.returncode != 0:
        tail = done.stderr.strip()[-STDERR_TAIL:] or "(no stderr)"
        message = f"{package}: `{' '.join(args)}` exited with {done.returncode}: {tail}"
        if "Unable to locate package" in tail or "No packages found" in tail:
            raise InvalidValueError(message)
        raise StoreIOError(message)
    return done.stdout


def available(name: str) -> bool:
    """Whether apt knows a package of that name (`apt-cache show`; virtual packages are not)."""
    try:
        done = subprocess.run(["apt-cache", "show", name], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _check_name(name: str) -> None:
    # Debian package names: lower-case alphanumerics and + - . (policy 5.6.1); no underscore, so
    # `NAME_*.deb` matches this package and no other.
    ok = len(name) >= 2 and name[0].isalnum() and all(c.isalnum() or c in "+-." for c in name)
    if not ok or name != name.lower():
        raise InvalidValueError(f"{name!r} is not a Debian package name")


def _find_deb(cache_dir: Path, name: str) -> Path | None:
    debs = sorted(cache_dir.glob(f"{name}_*.deb"), key=lambda p: (p.stat().st_mtime, p.name))
    return debs[-1] if debs else None  # the newest download if several versions accumulated


def _download(cache_dir: Path, name: str) -> Path:
    scratch = cache_dir / f".download-{name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        _run(["apt-get", "download", name], name, cwd=scratch)
        debs = sorted(scratch.glob(f"{name}_*.deb"))
        if len(debs) != 1:
            raise StoreIOError(f"{name}: apt-get download left {[p.name for p in debs]} behind")
        deb = cache_dir / debs[0].name
        os.replace(debs[0], deb)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return deb


def _fields(deb: Path, name: str) -> dict[str, str]:
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], name)
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("Package") != name or not fields.get("Version"):
        raise StoreIOError(f"{name}: {deb.name} says {fields}, expected Package: {name}")
    return fields


def _extract(deb: Path, dest: Path, name: str) -> None:
    marker = dest.with_name(dest.name + SOURCE_SUFFIX)
    if dest.is_dir() and marker.is_file() and marker.read_text() == deb.name:
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)], name)
    os.replace(tmp, dest)
    marker.write_text(deb.name)


def fetch(packages: Iterable[str], cache_dir: str | os.PathLike[str]) -> list[Package]:
    """Download (`apt-get download`, unless a `NAME_*.deb` is already in `cache_dir`) and extract
    (`dpkg-deb -x` into `cache_dir/extract/NAME`, once per .deb) each package, in order."""
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name in packages:
        _check_name(name)
        deb = _find_deb(cache, name) or _download(cache, name)
        version = _fields(deb, name)["Version"]
        root = cache / "extract" / name
        _extract(deb, root, name)
        fetched.append(Package(name=name, version=version, deb=deb, root=root))
    return fetched


def _safe_member(member: tarfile.TarInfo) -> PurePosixPath | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


def unpack_tarball(
    tarball: str | os.PathLike[str], dest: str | os.PathLike[str], *, max_file_bytes: int
) -> Path:
    """Unpack the regular files of at most `max_file_bytes` of a (compressed) tarball into `dest`,
    once, streaming (the archive is read front to back, never seeked). Links, devices, members
    outside `dest` and larger files are left out: the corpus reads only small text files, and
    this keeps e.g. the 1.4 GB kernel tree to what it needs."""
    src, out = Path(tarball), Path(dest)
    marker = out.with_name(out.name + SOURCE_SUFFIX)
    stamp = f"{src.name} {src.stat().st_size} {max_file_bytes}"
    if out.is_dir() and marker.is_file() and marker.read_text() == stamp:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(src, mode="r|*") as archive:
            for member in archive:
                path = _safe_member(member)
                if not member.isfile() or member.size > max_file_bytes or path is None:
                    continue
                target = tmp.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                reader = archive.extractfile(member)
                assert reader is not None  # a regular file always has data
                with reader, open(target, "wb") as f:
                    shutil.copyfileobj(reader, f, 1 << 20)
    except (tarfile.TarError, EOFError) as e:
        raise StoreIOError(f"{src}: cannot unpack: {e}") from e
    os.replace(tmp, out)
    marker.write_text(stamp)
    return out
