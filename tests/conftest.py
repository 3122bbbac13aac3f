"""Test session set-up: a loopback Hub on 127.0.0.1 and a private Hugging Face cache.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and the offline flag once, at import, and importing
collab_zoo imports it (through timm); so the port is chosen and the variables are set here, before any test
module imports anything. Tests then use the real client against a real HTTP server.
"""
import atexit
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import socket  # noqa: E402


def _free_port() -> int:
    # Not collab_zoo.loopback_hub.free_port: importing any collab_zoo module imports huggingface_hub.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One Hub and one cache per process: a tool that runs several pytest sessions in one process (mutmut does)
# executes this file again for each, but huggingface_hub keeps the endpoint and cache it read at the first import.
_SESSION = sys.modules.setdefault("_collab_zoo_test_session", types.ModuleType("_collab_zoo_test_session"))
if not hasattr(_SESSION, "port"):
    _SESSION.port, _SESSION.cache = _free_port(), tempfile.mkdtemp(prefix="collab-zoo-test-hf-")
_PORT, _CACHE = _SESSION.port, _SESSION.cache
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{_PORT}",
    HF_HUB_CACHE=_CACHE,
    HF_HOME=os.path.join(_CACHE, "home"),
    HF_TOKEN="hf_loopback_test_token",
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_HUB_ETAG_TIMEOUT="2",
    TOKENIZERS_PARALLELISM="false",
    # Built data sets are cached on disk; the suite keeps its cache out of the user's ~/.cache.
    COLLAB_ZOO_CACHE=os.path.join(_CACHE, "collab_zoo"),
)
os.environ.pop("HF_HUB_OFFLINE", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from collab_zoo.loopback_hub import LoopbackHub  # noqa: E402

# Two threads on the 2-core machines the suite is sized for; fewer when OMP_NUM_THREADS asks (mutation testing
# runs two single-threaded test processes side by side).
torch.set_num_threads(min(2, os.cpu_count() or 1, int(os.environ.get("OMP_NUM_THREADS") or 2)))
if not hasattr(_SESSION, "hub"):
    _SESSION.hub = LoopbackHub(port=_PORT).start()

    @atexit.register
    def _stop_hub_and_remove_cache():
        # At interpreter exit, not at session finish: a later session in this process reuses both.
        _SESSION.hub.stop()
        shutil.rmtree(_SESSION.cache, ignore_errors=True)
_HUB = _SESSION.hub


@pytest.fixture(scope="session")
def hub():
    """The loopback Hub every test in the session shares (its URL is HF_ENDPOINT)."""
    return _HUB


@pytest.fixture(scope="session")
def hf_cache():
    return Path(_CACHE)


def subprocess_env(**extra):
    """Environment for a child Python that sees the same Hub and cache (and the repository on its path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env
