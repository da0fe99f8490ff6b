"""The wheel's version, a scikit-build-core metadata provider ([tool.scikit-build.metadata.version]).

version = the base version (``__version__`` in python/fastnorm/_build.py, the one place it is written)
          + ``+<FASTNORM_LOCAL_VERSION>`` when that variable is set and not empty.

The wheel for the CUDA major of PyPI's torch gets the plain version; the other variants a local label:
``cu126`` (CUDA 12), ``cpu`` (no CUDA kernels); scripts/cuda_variant.sh holds the table and
docs/install.md explains it. Plain ``pip install .`` (no variable) gives the plain version.
"""
import os
import re
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_BASE_FILE = _ROOT / "python" / "fastnorm" / "_build.py"
# PEP 440 local version label: alphanumerics separated by dots.
_LOCAL_RE = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")


def base_version(path=_BASE_FILE):
    m = re.search(r'^__version__ = "([^"]+)"', Path(path).read_text(encoding="utf-8"), re.MULTILINE)
    if not m:
        raise RuntimeError(f"fastnorm_version: no __version__ = \"...\" line in {path}")
    return m.group(1)


def full_version(local=None, base=None):
    """base[+local]; ``local`` defaults to $FASTNORM_LOCAL_VERSION."""
    base = base_version() if base is None else base
    local = os.environ.get("FASTNORM_LOCAL_VERSION", "") if local is None else local
    local = local.strip()
    if not local:
        return base
    if not _LOCAL_RE.fullmatch(local):
        raise ValueError(f"fastnorm_version: FASTNORM_LOCAL_VERSION={local!r} is not a PEP 440 local label "
                         "(lower-case letters and digits, dot-separated, e.g. cu126 or cpu)")
    return f"{base}+{local}"


def dynamic_metadata(field, settings=None):
    if field != "version":
        raise RuntimeError(f"fastnorm_version provides only 'version', not {field!r}")
    if settings:
        raise RuntimeError(f"fastnorm_version takes no settings, got {sorted(settings)}")
    return full_version()


if __name__ == "__main__":  # `python scripts/fastnorm_version.py` prints the version a build would get
    print(full_version())
