"""Where datasets live on disk, and the small file primitives every fetch relies on.

* :func:`data_dir` resolves the cache root: explicit argument > ``$BIOGRAD_DATA`` >
  ``$XDG_CACHE_HOME/biograd`` > ``~/.cache/biograd``.
* :func:`install_file` copies (and gunzips) a candidate file into place atomically: it is
  written to a temporary file in the destination folder, hashed while written, and renamed over
  the destination only when its SHA-256 matches. A killed fetch leaves at most a ``.part`` file,
  never a half file under the final name.
* A stamp (``.verified.json``) records size and mtime of each verified file so that loading can
  skip re-hashing unchanged files; :func:`fetch` always re-hashes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

ENV_VAR = "BIOGRAD_DATA"
STAMP = ".verified.json"
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The root folder of the dataset cache (not created here).

    Order: ``explicit`` > env ``BIOGRAD_DATA`` > ``$XDG_CACHE_HOME/biograd`` >
    ``~/.cache/biograd``.
    """
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "biograd"


def is_gzip(path: Path) -> bool:
    """True when ``path`` starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content (of the decompressed content if it is gzipped)."""
    h = hashlib.sha256()
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def install_file(src: Path, dest: Path, sha256: str) -> str:
    """Write ``src`` (gunzipped if needed) to ``dest`` atomically if its SHA-256 matches.

    Returns the SHA-256 of the content; ``dest`` is replaced only when it equals ``sha256``
    (otherwise ``dest`` is left untouched and the temporary file removed).
    """
    h = hashlib.sha256()
    opener = gzip.open if is_gzip(src) else open
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, opener(src, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest == sha256:
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; datasets are shareable read-only data
            os.replace(tmp, dest)
        return digest
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _stat_entry(path: Path, sha256: str) -> dict[str, object]:
    st = path.stat()
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_stamp(folder: Path, files: dict[str, str]) -> None:
    """Record that ``files`` (name -> SHA-256) in ``folder`` were verified just now.

    A read-only folder is not an error: loads then re-verify (hash) on each new process.
    """
    stamp = {name: _stat_entry(folder / name, sha) for name, sha in sorted(files.items())}
    try:
        atomic_write_text(folder / STAMP, json.dumps(stamp, indent=1))
    except OSError:
        pass


def stat_key(folder: Path, files: dict[str, str]) -> tuple[object, ...]:
    """(name, size, mtime_ns) of each file: a cache key that changes when a file does."""
    return tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns)
                 for n in sorted(files))


def stamp_key(folder: Path, files: dict[str, str]) -> tuple[object, ...] | None:
    """A hashable key of the verified state of ``files`` in ``folder``, or None.

    None means some file is missing, changed since verification (size or mtime differ), or
    was verified against another checksum: the caller must verify (fetch) again.
    """
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = []
    for name, sha in sorted(files.items()):
        try:
            entry = _stat_entry(folder / name, sha)
        except OSError:
            return None
        if stamp.get(name) != entry:
            return None
        key.append((name, entry["size"], entry["mtime_ns"]))
    return tuple(key)
