"""Build information and loading of the extension modules."""
import importlib
import os

import torch

__version__ = "0.1.0"

#: Which extension modules were imported: {"_C": bool, "_C_cuda": bool}.
loaded = {"_C": False, "_C_cuda": False}
#: Why _C_cuda was not loaded (None when it was).
cuda_unavailable_reason = None


def load_extensions():
    """Import fastnorm._C, then fastnorm._C_cuda when torch has CUDA and the module was built."""
    global cuda_unavailable_reason
    importlib.import_module("fastnorm._C")
    loaded["_C"] = True
    if torch.version.cuda is None:
        cuda_unavailable_reason = "torch has no CUDA"
        return
    try:
        importlib.import_module("fastnorm._C_cuda")
        loaded["_C_cuda"] = True
    except ImportError as e:  # built without CUDA kernels
        cuda_unavailable_reason = f"fastnorm._C_cuda not importable: {e}"


def cuda_archs():
    """CUDA architectures compiled into _C_cuda (from the build configuration), or [] if none."""
    path = os.path.join(os.path.dirname(__file__), "_cuda_archs.txt")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [a for a in f.read().split(";") if a.strip()]


def info():
    """A dict describing this build, printed by ``python -m fastnorm``."""
    return {
        "fastnorm": __version__,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "CUDA archs compiled": ";".join(cuda_archs()) or "none",
        "modules loaded": ", ".join(k for k, v in loaded.items() if v),
        "CUDA kernels": "loaded" if loaded["_C_cuda"] else f"not loaded ({cuda_unavailable_reason})",
        "CPU threads": torch.get_num_threads(),
    }
