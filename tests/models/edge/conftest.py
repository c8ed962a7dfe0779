import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The edge models are tiny: one intra-op thread is faster than two and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
