"""glibc malloc tuning: applied once per process, and never over the user's own allocator settings."""
import os
import subprocess
import sys

import pytest

import effdet

# The module alone, loaded from its file in a fresh interpreter: what it does to malloc is process-wide
PROBE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("host_memory", {os.path.join(os.path.dirname(effdet.__file__), "hardware", "host_memory.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.keep_large_buffers_in_heap(), module.keep_large_buffers_in_heap())
"""


def probe(**env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True,
                          check=True).stdout.split()


def test_applies_on_glibc():  # Linux with glibc, as everywhere this project runs
    assert probe() == ["True", "True"]


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}])
def test_the_users_malloc_settings_win(env):
    assert probe(**env) == ["False", "False"]
