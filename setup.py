"""Maps the top-level folders onto sub-packages of ``flexnpu``.

The operator lives in ``operator_/``: a folder named ``operator`` in the working directory shadows the standard
library's ``operator`` for any ``python -m ...`` run from the repository root.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "flexnpu": "flexnpu",
    "flexnpu.protos": "protos",
    "flexnpu.deviceplugin": "deviceplugin",
    "flexnpu.extender": "extender",
    "flexnpu.operator": "operator_",
    "flexnpu.shim": "shim",
    "flexnpu.bench": "bench",
}

packages = []
for package, folder in FOLDERS.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDERS)
