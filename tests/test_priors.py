"""Prior providers (SAM, FastSAM, user masks) offline, their checkpoint errors, and the prior flags of the CLI."""
import numpy as np
import pytest
from PIL import Image

import spam_stream
from spam_stream import SPAM
from spam_stream.cli import main
from spam_stream.priors import Prior, PriorCheckpointError, make_provider
from spam_stream.priors.fastsam import FastSamProvider
from spam_stream.priors.masks import MaskProvider
from spam_stream.priors.sam import SamProvider

from helpers import assert_connected, assert_superpixels_respect_prior, synthetic_image, voronoi_partition
from prior_models import build_tiny_sam


def assert_prior(prior, shape):
    """Partition (H, W) int32 with ids 0..n-1 (and -1); proposals (M, H, W) bool."""
    p = prior.partition
    assert p.shape == shape and p.dtype == np.int32 and p.min() >= -1
    ids = np.unique(p[p >= 0])
    assert ids.tolist() == list(range(len(ids)))
    assert prior.proposals.dtype == bool and prior.proposals.ndim == 3 and prior.proposals.shape[1:] == shape


def write_image(path, img):
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def fastsam(fastsam_checkpoint):
    return FastSamProvider(fastsam_checkpoint, imgsz=320)


@pytest.fixture(scope="module")
def tiny_sam(tiny_sam_checkpoint):
    return make_provider("sam", tiny_sam_checkpoint, points_per_side=4, build=build_tiny_sam,
                         generator_options={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})


# --- FastSAM --------------------------------------------------------------------------------------------------------

def test_fastsam_proposals_are_aggregated_into_a_partition(fastsam):
    img = synthetic_image()
    prior = fastsam(img)
    assert_prior(prior, img.shape[:2])
    assert len(prior.proposals) > 0  # the random model's raised class bias makes it propose masks
    assert np.array_equal(fastsam(img).partition, prior.partition)  # deterministic


def test_fastsam_prior_through_segment_and_spam(fastsam, fastsam_checkpoint):
    img = synthetic_image(seed=1)
    partition = fastsam(img).partition
    labels = spam_stream.segment(img, 80, prior="fastsam", prior_checkpoint=fastsam_checkpoint,
                                 prior_options={"imgsz": 320}, encoder=None)
    assert labels.dtype == np.int32
    assert_superpixels_respect_prior(labels, partition)
    assert_connected(labels)
    model = SPAM(encoder=None, prior=fastsam)  # the provider is loaded once, used for every image
    assert np.array_equal(model.segment(img, 80), labels)


def test_fastsam_through_the_cli(tmp_path, fastsam, fastsam_checkpoint):
    img = synthetic_image(seed=2)
    src = write_image(tmp_path / "pic.png", img)
    out = tmp_path / "out"
    assert main(["image", str(src), "-o", str(out), "-k", "60", "--encoder", "none", "--prior", "fastsam",
                 "--prior-checkpoint", str(fastsam_checkpoint), "--imgsz", "320"]) == 0
    labels = np.asarray(Image.open(out / "pic_labels.png")).astype(np.int64)
    assert_superpixels_respect_prior(labels, fastsam(img).partition)
    assert_connected(labels)


# --- SAM ------------------------------------------------------------------------------------------------------------

def test_tiny_sam_prior_invariants_and_segment(tiny_sam):
    img = synthetic_image(seed=3)
    prior = tiny_sam(img)
    assert isinstance(tiny_sam, SamProvider)
    assert_prior(prior, img.shape[:2])
    labels = SPAM(encoder=None, prior=tiny_sam).segment(img, 60)
    assert_superpixels_respect_prior(labels, prior.partition)
    assert_connected(labels)


def test_sam_partition_from_mask_crops_equals_the_full_stack(tiny_sam):
    from spam_stream.aggregation import aggregate_crops, aggregate_reference

    img = synthetic_image(seed=4)
    records = tiny_sam.records(img)
    assert records
    crops, offsets = tiny_sam.crops(records)
    stack = tiny_sam.stack(records, img.shape[:2])
    assert [np.count_nonzero(c) for c in crops] == [int(m.sum()) for m in stack]
    assert np.array_equal(aggregate_crops(crops, offsets, img.shape[:2]), aggregate_reference(stack))


def test_full_resolution_proposals_are_made_on_access_only(fastsam, monkeypatch):
    made = []
    full_resolution = FastSamProvider.full_resolution
    monkeypatch.setattr(FastSamProvider, "full_resolution",
                        staticmethod(lambda masks, shape: made.append(shape) or full_resolution(masks, shape)))
    img = synthetic_image(seed=5)
    prior = fastsam(img)
    assert made == []  # the partition came from network-resolution masks
    assert_prior(prior, img.shape[:2])
    assert made == [img.shape[:2]] and len(prior.proposals) > 0


# --- checkpoint errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,file", [("sam", "sam_vit_b_01ec64.pth"), ("fastsam", "FastSAM-s.pt")])
def test_missing_checkpoint_is_a_one_line_error_naming_it(tmp_path, capsys, monkeypatch, name, file):
    monkeypatch.chdir(tmp_path)  # a bare official name that is absent: ultralytics would download it
    src = write_image(tmp_path / "x.png", synthetic_image())
    code = main(["image", str(src), "-o", "out", "--prior", name, "--prior-checkpoint", file, "--encoder", "none"])
    err = capsys.readouterr().err
    assert code != 0 and file in err and "never downloads" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / file).exists()


@pytest.mark.parametrize("name,suffix", [("sam", ".pth"), ("fastsam", ".pt")])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys, name, suffix):
    bad = tmp_path / f"garbage{suffix}"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    src = write_image(tmp_path / "x.png", synthetic_image())
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "--prior", name, "--prior-checkpoint", str(bad),
                 "--encoder", "none"]) != 0
    err = capsys.readouterr().err
    assert "garbage" in err and "checkpoint" in err
    with pytest.raises(PriorCheckpointError, match="garbage"):
        make_provider(name, bad)


def test_checkpoint_of_another_sam_size_is_a_clear_error(tmp_path, capsys, tiny_sam_checkpoint):
    src = write_image(tmp_path / "x.png", synthetic_image())
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "--prior", "sam", "--sam-model", "vit_b",
                 "--prior-checkpoint", str(tiny_sam_checkpoint), "--encoder", "none"]) != 0
    err = capsys.readouterr().err
    assert "tiny_sam.pth" in err and "vit_b" in err and "segment-anything#model-checkpoints" in err


def test_a_sam_checkpoint_is_not_a_fastsam_checkpoint(tmp_path, tiny_sam_checkpoint):
    renamed = tmp_path / "sam.pt"
    renamed.write_bytes(tiny_sam_checkpoint.read_bytes())
    with pytest.raises(PriorCheckpointError, match="sam.pt"):
        make_provider("fastsam", renamed)


def test_model_prior_without_checkpoint_names_the_missing_flag(tmp_path, capsys):
    src = write_image(tmp_path / "x.png", synthetic_image())
    for name in ("sam", "fastsam"):
        assert main(["image", str(src), "-o", str(tmp_path / "o"), "--prior", name]) != 0
        err = capsys.readouterr().err
        assert f"--prior {name} needs --prior-checkpoint" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="checkpoint"):
        spam_stream.segment(synthetic_image(), 50, prior="sam", encoder=None)


# --- user masks -----------------------------------------------------------------------------------------------------

def test_mask_folder_is_matched_to_inputs_by_stem(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    inputs, priors = [], {}
    for i, stem in enumerate(["b_first", "a_second"]):
        img = synthetic_image(seed=10 + i)
        inputs.append(write_image(tmp_path / f"{stem}.png", img))
        priors[stem] = voronoi_partition(96, 128, 3 + 2 * i, seed=i)
        np.save(masks / f"{stem}.npy", priors[stem])
    out = tmp_path / "out"
    assert main(["image", *map(str, inputs), "-o", str(out), "-k", "50", "--prior-masks", str(masks),
                 "--encoder", "none"]) == 0
    for stem, prior in priors.items():
        labels = np.asarray(Image.open(out / f"{stem}_labels.png")).astype(np.int64)
        assert_superpixels_respect_prior(labels, prior)
    # without a key a folder is read in sorted order
    provider = MaskProvider(masks)
    assert provider.file_for().name == "a_second.npy"
    assert provider.file_for(1).name == "b_first.npy"


def test_mask_folder_without_the_inputs_mask_fails_that_input_only(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    np.save(masks / "has.npy", voronoi_partition(96, 128, 3))
    has = write_image(tmp_path / "has.png", synthetic_image())
    lacks = write_image(tmp_path / "lacks.png", synthetic_image(seed=1))
    out = tmp_path / "out"
    assert main(["image", str(has), str(lacks), "-o", str(out), "-k", "30", "--prior", "masks", "--prior-masks",
                 str(masks), "--encoder", "none"]) == 1
    assert "lacks" in capsys.readouterr().err
    assert (out / "has_labels.png").is_file() and not (out / "lacks_labels.png").exists()


def test_stack_of_binary_masks_is_aggregated(tmp_path):
    stack = np.zeros((3, 96, 128), bool)
    stack[0, :, :70] = True
    stack[1, 20:60, 20:50] = True  # inside mask 0: keeps its overlap
    stack[2, :, 72:] = True
    np.save(tmp_path / "stack.npy", stack)
    prior = make_provider("masks", masks=tmp_path / "stack.npy")(synthetic_image())
    assert_prior(prior, (96, 128))
    assert prior.proposals.shape == (3, 96, 128)
    assert prior.partition[40, 30] != prior.partition[5, 5]
    assert (prior.partition[:, 70:72] == -1).all()  # the 2-px strip between masks 0 and 2


def test_label_image_prior_and_wrong_size(tmp_path):
    labels = np.zeros((96, 128), np.uint8)
    labels[:, 64:] = 7
    Image.fromarray(labels).save(tmp_path / "l.png")
    prior = MaskProvider(tmp_path / "l.png")(synthetic_image())
    assert isinstance(prior, Prior) and prior.partition.max() == 1 and len(prior.proposals) == 0
    from spam_stream.io import InputError

    with pytest.raises(InputError, match="l.png"):
        MaskProvider(tmp_path / "l.png")(synthetic_image(50, 60))


# --- flags ----------------------------------------------------------------------------------------------------------

def test_attention_and_focus_flags(tmp_path, capsys):
    src = write_image(tmp_path / "x.png", synthetic_image())
    np.save(tmp_path / "p.npy", voronoi_partition(96, 128, 4))
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "--attention", "saliency", "--encoder", "none"]) != 0
    assert "need a --prior" in capsys.readouterr().err
    assert main(["image", str(src), "-o", str(tmp_path / "o"), "-k", "40", "--prior-mask", str(tmp_path / "p.npy"),
                 "--attention", "saliency", "--attention-ratio", "3", "--focus", "10,10,2", "--focus", "100,50,0.5",
                 "--encoder", "none"]) == 0
    with pytest.raises(SystemExit):
        main(["image", str(src), "-o", str(tmp_path / "o"), "--focus", "1,2"])


def test_help_lists_the_prior_flags(capsys):
    with pytest.raises(SystemExit):
        main(["image", "--help"])
    out = capsys.readouterr().out
    for flag in ("--prior ", "--prior-checkpoint", "--prior-masks", "--prior-mask ", "--sam-model", "--points-per-side",
                 "--imgsz", "--attention ", "--attention-ratio", "--focus", "model-checkpoints", "FastSAM-s.pt"):
        assert flag in out


def test_fastsam_prior_on_a_video_uses_network_resolution_masks(tmp_path, fastsam, fastsam_checkpoint, monkeypatch):
    """``spam-stream video --prior fastsam``: every frame's partition comes from the masks at the network's
    resolution (no full-resolution stack is ever made), each frame's superpixels stay inside that frame's FastSAM
    objects, and the frame count survives."""
    pytest.importorskip("av")
    from spam_stream.labelio import read_labels
    from video_helpers import decode_all, write_index_video

    made = []
    full_resolution = FastSamProvider.full_resolution
    monkeypatch.setattr(FastSamProvider, "full_resolution",
                        staticmethod(lambda masks, shape: made.append(shape) or full_resolution(masks, shape)))
    src = write_index_video(tmp_path / "clip.mkv", 5, codec="ffv1", h=64, w=96)
    out = tmp_path / "out"
    assert main(["video", str(src), "-o", str(out), "-k", "40", "--encoder", "none", "--prior", "fastsam",
                 "--prior-checkpoint", str(fastsam_checkpoint), "--imgsz", "320", "--no-overlay"]) == 0
    assert made == []
    frames, _ = decode_all(src)
    maps = [labels for _, labels in read_labels(out / "clip_labels.mkv")]  # the default: one label video
    assert len(maps) == len(frames) == 5
    for frame, labels in zip(frames, maps):
        assert_superpixels_respect_prior(labels, fastsam(frame).partition)
        assert_connected(np.unique(labels, return_inverse=True)[1].reshape(labels.shape))  # ids tracked: not 0..n-1
