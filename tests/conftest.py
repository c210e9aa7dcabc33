import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_model():
    from diffdict.models import ToyDiffusion

    return ToyDiffusion.from_pretrained()


@pytest.fixture(scope="session")
def shapes_clip():
    from diffdict.models import ShapesClip

    return ShapesClip.from_pretrained()
