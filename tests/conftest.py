"""Shared test setup: offline, few threads, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("ACT_TEST_THREADS", "1")))


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print measurements that tests recorded (e.g. the map-file fuzz counts)."""
    for line in getattr(config, "_act_report", []):
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_inductor_pointer_in_children():
    """torch.compile's C++ backend leaves ``_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR`` (an address in
    this process) in os.environ; a child process started later (torchrun in the distributed tests)
    must not inherit it. Inductor sets it again before every library it loads."""
    yield
    os.environ.pop("_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR", None)
