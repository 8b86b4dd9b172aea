"""Packaging: map the top-level code folders into the single `copyguard` namespace.

``common`` holds the shared basics (errors, config loading, file ops, formatting, runtime info) that every
stage may import; the four stages are ``curation <- mitigation <- train <- pipelines``.

The package list is computed from the folders, so a nested package (e.g. ``curation/io``) is never
dropped. ``copyguard`` itself is an implicit namespace package: there is no top-level module to install
besides these subpackages, and nothing called ``train`` or ``pipelines`` lands top-level.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("common", "curation", "mitigation", "train", "pipelines")


def _package_map() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder in SUBPACKAGES:
        root = f"copyguard.{folder}"
        packages.append(root)
        package_dir[root] = folder
        for nested in find_packages(where=folder):
            name = f"{root}.{nested}"
            packages.append(name)
            package_dir[name] = f"{folder}/{nested.replace('.', '/')}"
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _package_map()

setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
