"""Build wiring for the optional compiled part of mhd (everything else is in pyproject.toml).

``mhd.maglev._fast`` runs the Maglev table population loop in C (see mhd/maglev/_fast.c). It
is optional: when it cannot be built (no compiler, no Python headers) the install goes on
without it and mhd.maglev.table uses its numpy builder. It uses only the limited C API of
Python 3.11 (abi3) and no numpy headers.

    .venv/bin/python setup.py build_ext --inplace      # for the tests, in the source tree
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mhd.maglev._fast",
            ["mhd/maglev/_fast.c"],
            optional=True,
            py_limited_api=True,
        )
    ],
    # Only the limited API is used, so one wheel serves CPython 3.11 and later.
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
    # The C source is for building; installs need only the module.
    exclude_package_data={"mhd.maglev": ["*.c"]},
)
