"""Suite-wide setup.

The Triton kernels run here under the Triton interpreter (no GPU): ``TRITON_INTERPRET`` must be set before anything
imports triton, hence at conftest import. ``setdefault`` lets a GPU run override it with ``TRITON_INTERPRET=0``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
