"""Suite-wide setup.

The Triton kernels run here under the Triton interpreter (no GPU): ``TRITON_INTERPRET`` must be set before anything
imports triton, hence at conftest import. ``setdefault`` lets a GPU run override it with ``TRITON_INTERPRET=0``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

# Prior models (ultralytics) must never try the network: set before anything imports ultralytics.
os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fastsam_checkpoint(tmp_path_factory):
    """A random-weight FastSAM-compatible checkpoint (tests/prior_models.py)."""
    from prior_models import save_random_fastsam

    return save_random_fastsam(tmp_path_factory.mktemp("fastsam") / "fastsam-random.pt")


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory):
    """A random-weight tiny SAM state_dict; load it with ``build=prior_models.build_tiny_sam``."""
    from prior_models import save_tiny_sam

    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")
