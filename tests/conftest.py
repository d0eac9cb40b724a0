"""Shared test set-up.

The Triton kernels run under the Triton interpreter on machines without a CUDA GPU.
TRITON_INTERPRET is read when a kernel is decorated, so it must be set before
anything imports `minigpt_kernels` (or triton); conftest.py is imported first by pytest.
Quantized loads keep their models in a cache folder of the test session, never the user's
(~/.cache/minigpt/quantized); child processes inherit it.
"""

import atexit
import os
import shutil
import tempfile

import torch

if "MINIGPT_QUANTIZED_DIR" not in os.environ:
    os.environ["MINIGPT_QUANTIZED_DIR"] = tempfile.mkdtemp(prefix="minigpt-test-quantized-")
    atexit.register(shutil.rmtree, os.environ["MINIGPT_QUANTIZED_DIR"], ignore_errors=True)

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

import pytest  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", help="also run the tests marked slow (CI runs everything)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--all"):  # the quick default for developers: slow tests are deselected
        slow = [item for item in items if "slow" in item.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if "slow" not in item.keywords]
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread for the tests of tiny training runs: such models gain nothing from a
    second thread, and on a CPU shared with other jobs an OpenMP thread waiting for a
    descheduled sibling made them 5-10x slower. Used with pytest.mark.usefixtures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
