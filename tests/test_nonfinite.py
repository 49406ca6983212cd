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


def test_image_command_refuses_a_float_tiff_with_nan_and_writes_the_others(tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(synthetic_image(40, 50, seed=2)).save(good)
    data = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    data[5, 5] = np.nan
    Image.fromarray(data, mode="F").save(tmp_path / "nan.tif")
    code = main(["image", str(tmp_path / "nan.tif"), str(good), "-o", str(tmp_path / "out"), "--encoder", "none",
                 "-k", "10"])
    err = capsys.readouterr().err
    assert code == 1
    assert "nan.tif" in err and "non-finite" in err and "Traceback" not in err
    assert (tmp_path / "out" / "good_labels.png").is_file()
    assert not (tmp_path / "out" / "nan_labels.png").exists()
