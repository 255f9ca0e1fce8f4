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
