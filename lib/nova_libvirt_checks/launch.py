"""Start a check from its executable in checks/, installed or straight from a checkout.

In a checkout the executables run with whatever `python3` is first on PATH; when that one
lacks our dependencies and the checkout has its .venv (made by `make venv`), we re-run
the same executable with the venv's interpreter.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn


def run(check: str, script: str) -> NoReturn:
    try:
        module = importlib.import_module(f"nova_libvirt_checks.{check}")
    except ImportError as exc:
        checkout_python = os.path.join(os.path.dirname(os.path.realpath(script)), os.pardir,
                                       ".venv", "bin", "python")
        if os.path.exists(checkout_python) and not sys.prefix.startswith(
                os.path.realpath(os.path.join(checkout_python, os.pardir, os.pardir))):
            os.execv(checkout_python, [checkout_python, script] + sys.argv[1:])
        sys.stdout.write(f"{check.upper()} UNKNOWN - a dependency is missing: {exc}\n")
        sys.stdout.flush()
        os._exit(3)
    module.main()
