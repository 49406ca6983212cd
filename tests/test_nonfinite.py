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
    """A float TIFF (read lazily, tile by tile) holding NaN is one line naming the file and its tile; the other
    inputs are written. Its finite twin segments (floats are values in [0, 1], as for arrays)."""
    import tifffile

    good = tmp_path / "good.png"
    Image.fromarray(synthetic_image(40, 50, seed=2)).save(good)
    data = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    tifffile.imwrite(tmp_path / "fine.tif", data, tile=(32, 32))
    data[40, 50] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data, tile=(32, 32))
    code = main(["image", str(tmp_path / "nan.tif"), str(good), str(tmp_path / "fine.tif"), "-o",
                 str(tmp_path / "out"), "--encoder", "none", "-k", "10"])
    err = capsys.readouterr().err
    assert code == 1
    assert "nan.tif" in err and "non-finite" in err and "Traceback" not in err
    assert (tmp_path / "out" / "good_labels.png").is_file() and (tmp_path / "out" / "fine_labels.png").is_file()
    assert not list((tmp_path / "out").glob("nan_*"))
    # read lazily (as a TIFF too large for one decode is), the tile holding the NaN is named
    from spam_stream.io import InputError
    from spam_stream.largeio import LargeImage

    with LargeImage(tmp_path / "nan.tif") as im:
        assert im.read(0, 32, 0, 80).shape == (32, 80, 3)  # the rows above it are fine
        with pytest.raises(InputError, match=r"nan.tif: tile 4 .*non-finite"):
            im.read(0, 64, 0, 80)
