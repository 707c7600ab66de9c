"""Build hook for the optional native shift kernel; all metadata lives in pyproject.toml.

The kernel is plain C with OpenMP (no torch headers, see src/timeshift/ops/_kernels.c). It is
optional: where it cannot be compiled the package installs without it and timeshift uses its
PyTorch implementation (``timeshift.ops.native_kernel_available()`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "timeshift.ops._kernels",
            sources=["src/timeshift/ops/_kernels.c"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
