"""Importing the media modules stays cheap: numpy, PyAV and Pillow load only when used."""

from __future__ import annotations

import subprocess
import sys


def test_media_imports_are_lazy() -> None:
    code = (
        "import sys\n"
        "import gemmapipe.core.media, gemmapipe.core.media.source, gemmapipe.core.media.audio\n"
        "import gemmapipe.core.media.frames, gemmapipe.core.media.image, gemmapipe.core.media.probe\n"
        "import gemmapipe.core.media.geometry, gemmapipe.core.plan\n"
        "heavy = [m for m in ('numpy', 'av', 'PIL', 'soundfile') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
