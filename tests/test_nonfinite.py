"""A float image holding NaN or ±inf is refused in one line (issue 29 item 3), in segment() and in the commands."""
import numpy as np
import pytest
from PIL import Image

import spam_stream
from spam_stream.cli import main

from helpers import synthetic_image


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_segment_refuses_non_finite_float_images(bad):
    img = synthetic_image(40, 50, seed=1).astype(np.float32) / 255
    assert spam_stream.segment(img, 10, encoder=None).shape == (40, 50)  # the finite image is fine
    img[3, 4, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        spam_stream.segment(img, 10, encoder=None)
