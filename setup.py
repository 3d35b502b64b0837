"""Builds the one extension module, cwr_fast._C.

CPU kernels always. CUDA kernels when torch was built with CUDA and nvcc is found.

Environment variables:
  CWR_FAST_CUDA=0|1        0: CPU only. 1: CUDA required (error if it cannot be built). Unset: auto.
  TORCH_CUDA_ARCH_LIST     CUDA archs, default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer).
  CWR_FAST_CPU_ISA=avx512|avx2|none   vector ISA of the CPU kernels; default: the best this CPU has.
  CUDA_HOME                toolkit root; found from nvcc when unset (also behind wrapper scripts).
  MAX_JOBS                 parallel compile jobs (ninja).
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup


def find_cuda_home():
    """The toolkit root, asking nvcc itself (torch's guess is wrong when nvcc is a wrapper)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    out = subprocess.run([nvcc, "-dryrun", "-x", "cu", os.devnull], capture_output=True, text=True)
    here = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
    return os.path.dirname(here.group(1)) if here else os.path.dirname(os.path.dirname(nvcc))


def pip_cuda_include_dirs():
    """Headers of torch's nvidia-* pip packages (cuBLAS, cuSPARSE, ...) that ATen's CUDA headers need
    and a minimal toolkit may lack."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        dirs += sorted(d for d in glob.glob(os.path.join(root, "*", "include")) if os.path.isdir(d))
    return dirs


def cpu_isa_flags():
    isa = os.environ.get("CWR_FAST_CPU_ISA")
    if isa is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            has = lambda *names: all(f" {n}" in flags for n in names)  # noqa: E731
            isa = ("avx512" if has("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c") else
                   "avx2" if has("avx2", "fma", "f16c") else "none")
        except OSError:
            isa = "none"
    if isa == "avx512":
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if isa == "avx2":
        # ATen's Vectorized<T> picks its implementation from CPU_CAPABILITY; its code lives in an
        # inline namespace per capability, so this does not clash with libtorch's own copies.
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if isa == "none":
        return []
    raise ValueError(f"CWR_FAST_CPU_ISA must be avx512, avx2 or none, got {isa!r}")


want_cuda = os.environ.get("CWR_FAST_CUDA", "auto")
if want_cuda not in ("0", "1", "auto"):
    raise ValueError(f"CWR_FAST_CUDA must be 0, 1 or unset, got {want_cuda!r}")
cuda_home = find_cuda_home() if want_cuda != "0" else None
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

with_cuda = want_cuda != "0" and torch.version.cuda is not None and cuda_home is not None
if want_cuda == "1" and not with_cuda:
    raise RuntimeError(
        f"CWR_FAST_CUDA=1 but CUDA cannot be built: torch.version.cuda={torch.version.cuda}, "
        f"nvcc {'found at ' + cuda_home if cuda_home else 'not found'}")

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
# -fopenmp: at::parallel_for is header code and runs serially unless the extension itself is
# compiled with OpenMP (libtorch's libgomp is the one loaded at run time).
cxx_flags = ["-O3", "-fopenmp", "-fdiagnostics-color=always"] + cpu_isa_flags()
extra = {"cxx": cxx_flags}
include_dirs = [os.path.join(here, "csrc")]
if with_cuda:
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    extra["nvcc"] = ["-O3", "-lineinfo"] + [f"-I{d}" for d in pip_cuda_include_dirs()]
    extension_cls = CUDAExtension
else:
    extension_cls = CppExtension

print(f"cwr_fast: building cwr_fast._C with CPU kernels{' and CUDA kernels (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if with_cuda else ' only'}")

class IncrementalBuildExtension(BuildExtension):
    """Keeps object files in ./build/temp (pip's editable install would use a fresh temporary folder
    each time), so ninja recompiles only the sources that changed."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(here, "build", "temp")


setup(
    packages=find_packages(include=["cwr_fast", "cwr_fast.*"]),
    ext_modules=[
        extension_cls(
            "cwr_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    ],
    cmdclass={"build_ext": IncrementalBuildExtension},
    include_package_data=True,
)
