"""Put a fast CBLAS under MLX's CPU backend on Linux.

Why this exists: the Linux `mlx[cpu]` wheel links `libmlx.so` against a bundled *reference* BLAS
(`mlx_cpu.libs/libblas-*.so`), so every float32 matmul (`cblas_sgemm`) runs a naive triple loop
(~3 GFLOP/s on a 1000x1000 matmul, ~30x slower than an optimised BLAS). libmlx.so resolves
`cblas_*` and the LAPACK `*_` symbols through the dynamic linker, which searches the process's global
scope before a library's own dependencies. Loading an optimised BLAS with RTLD_GLOBAL *before* libmlx
binds those symbols therefore makes MLX call it, with no rebuild of MLX.

The library is Intel MKL's single dynamic library `libmkl_rt.so` from the `mkl` PyPI wheel (a Linux
x86-64 dependency of trainyard-dtgcnn): it exports the plain `cblas_*` and LAPACK names, and it is
self-contained (the OpenBLAS wheels with plain names need a system libgfortran; NumPy's and
scipy-openblas' export only `scipy_`-prefixed names). MKL runs on its GNU OpenMP threading layer when
libgomp is present, which is the runtime PyTorch uses too, so a process that also loads torch keeps one
OpenMP runtime (tested in both import orders).

Controls (environment, read once at `import dtgcnn`):
  DTGCNN_FAST_BLAS=0            keep MLX's bundled reference BLAS (opt out)
  DTGCNN_BLAS_LIBRARY=/path.so  load this CBLAS/LAPACK library instead of MKL (e.g. a system OpenBLAS)
  MKL_THREADING_LAYER, MKL_NUM_THREADS   honoured as set; defaults: GNU (if libgomp loads), physical cores
  OMP_WAIT_POLICY, KMP_BLOCKTIME         honoured as set; defaults PASSIVE and 0 (idle BLAS threads sleep)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dtgcnn.blas")

OPT_OUT_ENV = "DTGCNN_FAST_BLAS"
LIBRARY_ENV = "DTGCNN_BLAS_LIBRARY"


@dataclass
class BlasStatus:
    """What `use_fast_blas` did; `describe()` is the line the CLIs log."""

    name: (
        str  # "Intel MKL 2026.2 ...", "reference BLAS (bundled with mlx)", or the custom library's file name
    )
    path: str | None  # the loaded library, None for the reference BLAS
    fast: bool  # True when cblas_sgemm now resolves to the loaded library
    note: str = ""  # why the reference BLAS is in use, or a caveat

    def describe(self) -> str:
        where = f" [{self.path}]" if self.path else ""
        note = f" ({self.note})" if self.note else ""
        return f"BLAS for MLX CPU matmul: {self.name}{where}{note}"


STATUS: BlasStatus = BlasStatus("reference BLAS (bundled with mlx)", None, False, "not configured yet")


def _mkl_rt_path() -> Path | None:
    """Locate libmkl_rt.so.* installed by the `mkl` wheel (it lands in <prefix>/lib via the wheel's data dir)."""
    try:
        dist = importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name.startswith("libmkl_rt.so"):
            path = Path(dist.locate_file(f)).resolve()
            if path.exists():
                return path
    return None


def _choose_mkl_threading() -> None:
    """GNU OpenMP when libgomp loads (shared with torch), else MKL's own default (Intel OpenMP from the wheel).

    MKL aborts the process if the requested layer's runtime cannot be loaded, so probe libgomp first.
    """
    # Idle OpenMP workers spin by default; MLX runs its own CPU threads between BLAS calls, so spinning
    # workers steal those cores (measured: a small training step 15x slower on 2 cores). Sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")  # the same for Intel OpenMP
    if "MKL_THREADING_LAYER" in os.environ:
        return
    try:
        ctypes.CDLL("libgomp.so.1")
        os.environ["MKL_THREADING_LAYER"] = "GNU"
    except OSError:
        os.environ["MKL_THREADING_LAYER"] = "INTEL"


def _mkl_version(lib: ctypes.CDLL) -> str:
    buf = ctypes.create_string_buffer(256)
    try:
        lib.MKL_Get_Version_String(buf, len(buf))
        return buf.value.decode(errors="replace").strip() or "Intel MKL"
    except AttributeError:
        return "Intel MKL"


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def sgemm_provider() -> str | None:
    """File of the library that provides `cblas_sgemm` in the global symbol scope (what libmlx binds to first).

    None when no globally visible library exports it, i.e. MLX falls back to its bundled reference BLAS.
    """
    try:
        addr = ctypes.cast(ctypes.CDLL(None).cblas_sgemm, ctypes.c_void_p).value
    except AttributeError:
        return None
    info = _DlInfo()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not libc.dladdr(ctypes.c_void_p(addr), ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname.decode()


def use_fast_blas() -> BlasStatus:
    """Load an optimised CBLAS globally so MLX's CPU matmuls use it; never raises (a problem becomes a warning)."""
    global STATUS
    if not sys.platform.startswith("linux"):
        STATUS = BlasStatus("platform BLAS (mlx links Accelerate on macOS)", None, True, "")
        return STATUS
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        STATUS = BlasStatus(
            "reference BLAS (bundled with mlx)", None, False, f"opted out with {OPT_OUT_ENV}=0"
        )
        return STATUS
    late = "mlx.core" in sys.modules  # libmlx already bound its BLAS symbols at load (measured): too late
    custom = os.environ.get(LIBRARY_ENV)
    path = Path(custom) if custom else _mkl_rt_path()
    if path is None:
        STATUS = BlasStatus(
            "reference BLAS (bundled with mlx)",
            None,
            False,
            "the `mkl` package is not installed; CPU training will be ~30x slower "
            "(pip install mkl, or set DTGCNN_BLAS_LIBRARY to an OpenBLAS/MKL library)",
        )
        warnings.warn(STATUS.describe(), RuntimeWarning, stacklevel=2)
        return STATUS
    try:
        if not custom:
            _choose_mkl_threading()
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        STATUS = BlasStatus("reference BLAS (bundled with mlx)", None, False, f"could not load {path}: {exc}")
        warnings.warn(STATUS.describe(), RuntimeWarning, stacklevel=2)
        return STATUS
    name = path.name if custom else f"{_mkl_version(lib)}, threading {os.environ.get('MKL_THREADING_LAYER')}"
    provider = sgemm_provider()
    fast = provider is not None and Path(provider).resolve() == path.resolve() and not late
    note = "" if fast else f"cblas_sgemm resolves to {provider}"
    if late:
        note = "mlx.core was imported before dtgcnn, so MLX keeps its reference BLAS: import dtgcnn first"
        warnings.warn(f"{note}", RuntimeWarning, stacklevel=2)
    STATUS = BlasStatus(name, str(path), fast, note)
    log.info(STATUS.describe())
    return STATUS
