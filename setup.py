"""Packaging is declared in pyproject.toml; only the package list lives here.

`templates/` (the library of training-ready chat templates) sits at the repository root and is installed as
the package `templatekit.library.templates` through `package-dir` in pyproject.toml. pyproject's
`packages.find` cannot list a package mapped from outside the scanned folder, so the list is built here: every
`templatekit*` package found on disk, plus the library's templates.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["templatekit*"]), "templatekit.library.templates"])
