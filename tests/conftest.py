import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_make(makefile: str, tmp: Path, *extra: str, timeout: int = 900):
    """``make -f makefile`` with every output root (results, data, sizes, archives) under ``tmp``."""
    import subprocess
    paths = [f"RD={tmp}/results", f"DATA={tmp}/data", f"SIZES={tmp}/sizes", f"ARCH={tmp}/archives"]
    return subprocess.run(["make", "-f", makefile, f"CC={sys.executable}", *paths, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
