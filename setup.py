"""Maps the top-level folders onto sub-packages of ``flexnpu`` (a top-level ``operator`` would shadow the stdlib)."""

from setuptools import find_packages, setup

FOLDERS = {
    "flexnpu": "flexnpu",
    "flexnpu.protos": "protos",
    "flexnpu.deviceplugin": "deviceplugin",
    "flexnpu.extender": "extender",
    "flexnpu.operator": "operator",
    "flexnpu.shim": "shim",
    "flexnpu.bench": "bench",
}

packages = []
for package, folder in FOLDERS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDERS)
