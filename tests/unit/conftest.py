"""Unit-test setup: keep hypothesis' on-disk caches out of the repository."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "traverz-hypothesis")
