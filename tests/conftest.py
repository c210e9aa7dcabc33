import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: on a small shared CPU, OpenMP threads waiting on each
    other make two threads slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_model():
    from diffdict.models import ToyDiffusion

    return ToyDiffusion.from_pretrained()


@pytest.fixture(scope="session")
def shapes_clip():
    from diffdict.models import ShapesClip

    return ShapesClip.from_pretrained()
