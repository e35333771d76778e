"""Where telesurg's installed files (config, description, launch) are. Pure Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "telesurg"


def share_dir() -> Path:
    """The package's share directory: the source tree when running from a checkout (editable
    install), else `<prefix>/share/telesurg` (pip or colcon install)."""
    source_root = Path(__file__).resolve().parents[2]  # telesurg/contract/ in a checkout
    if (source_root / "package.xml").is_file() and (source_root / "config").is_dir():
        return source_root
    for prefix in (Path(sys.prefix), *_ament_prefixes()):
        candidate = prefix / "share" / PACKAGE
        if (candidate / "package.xml").is_file():
            return candidate
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} share directory (package.xml, config/, description/): "
        "install the package with `make setup`, `pip install .` or `colcon build`")


def _ament_prefixes() -> list[Path]:
    return [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]


def default_config() -> Path:
    return share_dir() / "config" / "telesurg.yaml"


def arm_urdf() -> Path:
    return share_dir() / "description" / "psm.urdf"


#: The environment variable that names Fast DDS's profile file (fastdds_profile()).
FASTDDS_PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def fastdds_profile() -> Path:
    return share_dir() / "config" / "fastdds_profile.xml"
