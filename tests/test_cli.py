import numpy as np
from PIL import Image

import pytest

from spam_stream.cli import main

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image, voronoi_partition


def write_image(path, img):
    Image.fromarray(img).save(path)
    return path


def test_image_command_writes_uint16_labels_and_overlay(tmp_path):
    img = synthetic_image()
    src = write_image(tmp_path / "photo.png", img)
    assert main(["image", str(src), "-o", str(tmp_path / "out"), "--superpixels", "60", "--encoder", "none"]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "photo_labels.png"))
    assert labels.dtype == np.uint16 and labels.shape == img.shape[:2]
    assert_connected(labels.astype(np.int64))
    overlay = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.png"))
    assert overlay.shape == img.shape and (overlay != img).any()


def test_prior_mask_shorthand_keeps_superpixels_inside_objects(tmp_path):
    img = synthetic_image(seed=2)
    prior = voronoi_partition(96, 128, 6, seed=2)
    src = write_image(tmp_path / "a.png", img)
    np.save(tmp_path / "prior.npy", prior)
    out = tmp_path / "out"
    assert main(["image", str(src), "-o", str(out), "-k", "80", "--prior-mask", str(tmp_path / "prior.npy"),
                 "--encoder", "none"]) == 0
    labels = np.asarray(Image.open(out / "a_labels.png")).astype(np.int64)
    assert_superpixels_respect_prior(labels, prior)


def test_bad_inputs_are_listed_and_good_ones_still_written(tmp_path, capsys):
    good = write_image(tmp_path / "good.png", synthetic_image())
    gray = write_image(tmp_path / "gray.png", synthetic_image()[:, :, 0])
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([synthetic_image(), np.full((96, 128), 200, np.uint8)])).save(rgba)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    code = main(["image", str(good), str(corrupt), str(gray), str(text), str(missing), str(rgba), "-o", str(out),
                 "-k", "40", "--encoder", "none"])
    assert code != 0
    err = capsys.readouterr().err
    for name in ("corrupt.jpg", "notes.txt", "missing.png"):
        assert name in err
    assert "3 input(s) failed" in err
    for stem in ("good", "gray", "rgba"):
        assert (out / f"{stem}_labels.png").is_file()
        assert (out / f"{stem}_overlay.png").is_file()


def test_prior_shape_mismatch_and_bad_k_name_the_input(tmp_path, capsys):
    src = write_image(tmp_path / "x.png", synthetic_image())
    np.save(tmp_path / "small.npy", np.zeros((10, 10), np.int32))
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "--prior-mask", str(tmp_path / "small.npy"),
                 "--encoder", "none"]) != 0
    assert "x.png" in capsys.readouterr().err
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "-k", "99999999", "--encoder", "none"]) != 0
    assert "x.png" in capsys.readouterr().err


def test_missing_prior_mask_file_is_an_error(tmp_path, capsys):
    src = write_image(tmp_path / "x.png", synthetic_image())
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "--prior-mask", str(tmp_path / "none.png")]) != 0
    assert "none.png" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["image", "batch", "video"])
def test_missing_or_corrupt_encoder_weights_are_a_one_line_error(tmp_path, capsys, command):
    src = write_image(tmp_path / "x.png", synthetic_image())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for weights in (tmp_path / "missing.pt", bad):
        assert main([command, str(src), "-o", str(tmp_path / "o"), "--encoder", str(weights)]) == 2
        err = capsys.readouterr().err.strip()
        assert weights.name in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_help_explains_every_command(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["image", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--superpixels", "--prior-mask", "--compactness", "--iterations", "-o"):
        assert flag in out


def test_unreadable_image_stays_a_one_line_error_after_ultralytics_is_imported(tmp_path, capsys):
    """ultralytics patches PIL.Image.open to fetch a HEIF plugin on unidentifiable files; inputs must not trigger it."""
    import ultralytics  # noqa: F401  (applies the patch)

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["image", str(corrupt), "-o", str(tmp_path / "o"), "--encoder", "none"]) == 1
    assert "corrupt.jpg: not an image file" in capsys.readouterr().err
