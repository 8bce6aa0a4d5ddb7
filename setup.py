"""The compiled hot loops (shared/compiled/*.pyx), built where a C compiler is.

Everything else is in pyproject.toml. Without Cython or a compiler the build says so and
installs the pure-Python path, which runs the same (shared/compiled/__init__.py); set
BRIDGE_REQUIRE_COMPILED=1 to make a missing compiler an error instead (CI, the Docker image).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

REQUIRED = os.environ.get("BRIDGE_REQUIRE_COMPILED", "").strip() not in ("", "0")


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python path, unless REQUIRED."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if REQUIRED:
            raise exc
        print(
            f"pg-nats-bridge: the compiled hot path was not built ({exc}); the pure-Python "
            "path runs instead (bridge --version says which)",
            file=sys.stderr,
        )


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRED:
            raise
        print("pg-nats-bridge: Cython is not installed; pure-Python path only", file=sys.stderr)
        return []
    modules = [
        Extension(f"shared.compiled.{name}", [f"shared/compiled/{name}.pyx"])
        for name in ("_rows", "_frames", "_changes")
    ]
    return cythonize(modules, language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
