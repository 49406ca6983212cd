"""Start-up: SPAM() pays the one-time costs (numba's CPU target and its cached kernels, the int8 encoder's first run)
at load, so that the first frame of a fresh process costs what a steady one does (issue 30's start-up target)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# counts numba dispatcher loads/compilations during the first frame of a fresh process, after SPAM()
CODE = r"""
import sys
import numpy as np
from numba.core import dispatcher
from spam_stream import SPAM
from helpers import synthetic_image

loads = []
original = dispatcher.Dispatcher._compile_for_args

def counted(self, *args, **kwargs):
    loads.append(self.py_func.__qualname__)
    return original(self, *args, **kwargs)

rng = np.random.default_rng(1)
image = np.clip(synthetic_image(203, 307).astype(np.int16) // 2 + 64 + rng.integers(-8, 9, (203, 307, 3)), 0, 255)
image = image.astype(np.uint8)  # natural-image colours (the int8 encoder's calibrated range)
prior = np.zeros((203, 307), np.int32)
prior[:, 150:] = 1
for encoder in ("default", "fast", "none"):  # each model's own kernels (guided upsampling for fast) at its load
    dispatcher.Dispatcher._compile_for_args = original
    m = SPAM(encoder=encoder)
    dispatcher.Dispatcher._compile_for_args = counted
    m.segment(image, 150)
    m.segment(image, 150, prior=prior)
    print("LOADS", encoder, ",".join(loads))
"""


def test_first_frames_load_no_kernel_after_spam():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [x.split(" ", 2) for x in out.stdout.splitlines() if x.startswith("LOADS")]
    assert [x[1] for x in lines] == ["default", "fast", "none"]
    for _, encoder, loads in lines:
        assert loads == "", f"SPAM(encoder={encoder!r}): kernels loaded by its first frames, not at load: {loads}"
