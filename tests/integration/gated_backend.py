"""A PEP 517 build backend for the integration tests (support.GatedPackage copies it into a
package folder): it builds a one-module wheel, but only once the test has created `release`
beside it, and says that it waits by creating `building`. pip building it is demonstrably in the
middle of an install, for as long as the test likes."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zipfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))  # pip builds a local folder in place
NAME, VERSION = "hpcjob_test_gate", "1.0"


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    open(os.path.join(HERE, "building"), "w").close()
    # A test that is gone (its folder removed) holds nothing any more.
    while os.path.isdir(HERE) and not os.path.exists(os.path.join(HERE, "release")):
        time.sleep(0.1)
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join(record) + f"\n{info}/RECORD,,\n").encode()
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name
