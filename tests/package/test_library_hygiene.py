"""The library is a guest in its caller's process: importing it changes nothing there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Imports every module of the package (the CLI's entry module aside: running it is the point of it) and prints the
# environment variables that changed.
PROBE = """
import importlib, os, pkgutil
before = dict(os.environ)
import forgetune
for module in pkgutil.walk_packages(forgetune.__path__, "forgetune."):
    if module.name != "forgetune.__main__":
        importlib.import_module(module.name)
after = dict(os.environ)
print(sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)))
"""


@pytest.mark.slow
def test_importing_every_module_leaves_the_environment_unchanged():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    changed = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert changed.stdout.strip() == "[]", changed.stdout


def test_the_cli_defaults_to_offline_without_overriding_the_user(monkeypatch):
    from forgetune import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # the user's choice stands
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "0"
