"""The wheel version scheme (docs/install.md "Versions"): scripts/fastnorm_version.py and the variant table
scripts/cuda_variant.sh that the cibuildwheel configuration evaluates."""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _provider():
    spec = importlib.util.spec_from_file_location("fastnorm_version", ROOT / "scripts" / "fastnorm_version.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _variant(major, field):
    return subprocess.run(["sh", str(ROOT / "scripts" / "cuda_variant.sh"), field], env={"FASTNORM_CUDA_MAJOR": major,
                          "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout.strip()


def test_base_version_is_written_once_and_agrees():
    fv = _provider()
    base = fv.base_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", base)
    cmake = re.search(r"^project\(fastnorm VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text(), re.M)
    assert cmake and cmake.group(1) == base
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_local_labels(monkeypatch):
    fv = _provider()
    base = fv.base_version()
    monkeypatch.delenv("FASTNORM_LOCAL_VERSION", raising=False)
    assert fv.dynamic_metadata("version") == base
    monkeypatch.setenv("FASTNORM_LOCAL_VERSION", "cu126")
    assert fv.dynamic_metadata("version") == f"{base}+cu126"
    monkeypatch.setenv("FASTNORM_LOCAL_VERSION", " ")
    assert fv.dynamic_metadata("version") == base
    for bad in ("CU126", "cu-126", "+cu126", "cu126."):
        with pytest.raises(ValueError, match="FASTNORM_LOCAL_VERSION"):
            fv.full_version(local=bad)
    with pytest.raises(RuntimeError):
        fv.dynamic_metadata("description")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_cuda_variant_table():
    # The default (PyPI torch's CUDA major) has the plain version and the full release arch list.
    assert _variant("13", "local") == ""
    assert _variant("13", "archs") == "80-real;90a-real;100f-real;120f-real;90-virtual"
    assert _variant("13", "index").endswith("/whl/cu130")
    # Other majors: a local label that names the torch index they pair with.
    assert _variant("12", "local") == "cu126" == _variant("12", "tag")
    assert _variant("12", "index").endswith("/whl/cu126")
    assert "100f" not in _variant("12", "archs") and "120f" not in _variant("12", "archs")
    for major in ("12", "13"):
        label = _variant(major, "local")
        assert _provider().full_version(local=label, base="1.2.3") == ("1.2.3" + (f"+{label}" if label else ""))
    with pytest.raises(subprocess.CalledProcessError):
        _variant("11", "archs")
