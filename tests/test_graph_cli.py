"""--graph and --start-label on image, batch and video: the .npz files describe the label PNGs written beside them."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage.measure import regionprops

import spam_stream
from spam_stream.cli import main

from helpers import synthetic_image, voronoi_partition
from test_graph import reference_graph
from video_helpers import write_index_video


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def assert_graph_describes(g, labels, image=None):
    """The graph's node ids, areas, centroids, edges (as id pairs) and colours are those of ``labels``."""
    ref = reference_graph(labels, image)
    assert (g["ids"] == ref["ids"]).all() and (g["area"] == ref["area"]).all()
    np.testing.assert_allclose(g["centroid"], ref["centroid"], atol=1e-3)
    assert (g["ids"][g["edges"]] == ref["ids"][ref["edges"]]).all() and (g["boundary"] == ref["boundary"]).all()
    if image is not None:
        np.testing.assert_allclose(g["mean_rgb"], ref["mean_rgb"], atol=1e-3)


def test_start_label_api():
    image = synthetic_image(40, 56)
    base = spam_stream.segment(image, 30, encoder=None)
    one = spam_stream.segment(image, 30, encoder=None, start_label=1)
    assert one.dtype == base.dtype and (one == base + 1).all()
    assert len(regionprops(one)) == base.max() + 1 == len(regionprops(base)) + 1  # regionprops skips label 0
    with pytest.raises(ValueError, match="start_label"):
        spam_stream.segment(image, 30, encoder=None, start_label=-1)


def test_image_graph_and_start_label(tmp_path):
    img = synthetic_image(48, 64)
    prior = voronoi_partition(48, 64, 4, band=False)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(prior.astype(np.uint8)).save(tmp_path / "a_prior.png")
    out = tmp_path / "out"
    assert main(["image", str(tmp_path / "a.png"), "-o", str(out), "-k", "30", "--encoder", "none", "--graph",
                 "--start-label", "1", "--prior-mask", str(tmp_path / "a_prior.png")]) == 0
    labels = np.asarray(Image.open(out / "a_labels.png")).astype(np.int64)
    assert labels.min() == 1
    g = load(out / "a_graph.npz")
    assert_graph_describes(g, labels, img)
    assert (g["object"] >= 0).all() and not g["same_object"].all() and g["same_object"].any()
    assert sorted(p.name for p in out.iterdir()) == ["a_graph.npz", "a_labels.png", "a_overlay.png"]


def test_batch_graph_named_in_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_image(40, 50, seed=i)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    assert main(["batch", str(src), "-o", str(out), "-k", "20", "--encoder", "none", "--graph"]) == 0
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for entry in lines:
        assert entry["status"] == "ok"
        g = load(entry["outputs"]["graph"])
        labels = np.asarray(Image.open(entry["outputs"]["labels"])).astype(np.int64)
        assert_graph_describes(g, labels)
    # resume: complete with graphs, nothing redone; a missing graph makes the image incomplete
    (out / "im0_graph.npz").unlink()
    assert main(["batch", str(src), "-o", str(out), "-k", "20", "--encoder", "none", "--graph", "--resume"]) == 0
    assert (out / "im0_graph.npz").is_file()


def test_video_graph_ids_match_label_maps_frame_by_frame(tmp_path):
    clip = write_index_video(tmp_path / "clip.mkv", 6, codec="ffv1")
    out = tmp_path / "out"
    assert main(["video", str(clip), "-o", str(out), "-k", "24", "--encoder", "none", "--graph",
                 "--start-label", "5", "--no-overlay"]) == 0
    g = load(out / "clip_graph.npz")
    maps = list(spam_stream.read_labels(out / "clip_labels.mkv"))  # the default label video
    assert [f for f, _ in maps] == list(range(6)) and sorted(set(g["frame"].tolist())) == list(range(6))
    for f, labels in maps:
        labels = labels.astype(np.int64)
        assert labels.min() >= 5
        nodes = g["frame"] == f
        sub = {k: g[k][nodes] for k in ("ids", "area", "centroid")}
        rows = np.flatnonzero(nodes)
        edges = g["edges"][g["edge_frame"] == f]
        assert np.isin(edges, rows).all()
        sub["edges"] = edges - rows[0]
        sub["boundary"] = g["boundary"][g["edge_frame"] == f]
        assert_graph_describes(sub, labels)
    # a persistent id's track: every row with that id, one per frame while it lives
    ids, counts = np.unique(g["ids"], return_counts=True)
    assert counts.max() == 6 and (counts <= 6).all()


def test_readme_pyg_lines_load_a_graph_file(tmp_path):
    torch_geometric = pytest.importorskip("torch_geometric", reason="PyTorch Geometric is not installed")
    import torch

    labels = spam_stream.segment(synthetic_image(40, 56), 30, encoder=None)
    graph = spam_stream.region_graph(labels, synthetic_image(40, 56))
    from spam_stream.graph import save_graph

    save_graph(tmp_path / "photo_graph.npz", graph)
    z = np.load(tmp_path / "photo_graph.npz")  # the README's three lines
    data = torch_geometric.data.Data(x=torch.from_numpy(z["mean_rgb"]), pos=torch.from_numpy(z["centroid"]),
                                     edge_index=torch_geometric.utils.to_undirected(torch.from_numpy(z["edges"]).T))
    ref = graph.to_pyg()
    assert data.num_nodes == ref.num_nodes and torch.equal(data.edge_index, torch_geometric.utils.coalesce(ref.edge_index))


def test_segment_batch_and_segment_video_start_label(tmp_path):
    images = [synthetic_image(30, 40, seed=i) for i in range(2)]
    plain = [r.labels for r in spam_stream.segment_batch(images, 12, encoder=None)]
    shifted = [r.labels for r in spam_stream.segment_batch(images, 12, encoder=None, start_label=3)]
    assert all((s == p + 3).all() for s, p in zip(shifted, plain))
    clip = write_index_video(tmp_path / "c.mkv", 3, codec="ffv1")
    plain = [lab for _, _, lab in spam_stream.segment_video(clip, 12, encoder=None)]
    shifted = [lab for _, _, lab in spam_stream.segment_video(clip, 12, encoder=None, start_label=1)]
    assert len(plain) == 3 and all((s == p + 1).all() for s, p in zip(shifted, plain))


def test_batch_video_graph_in_manifest_and_resume(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_index_video(src / "clip.mkv", 4, codec="ffv1")
    Image.fromarray(synthetic_image(30, 40)).save(src / "im.png")
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), "-k", "12", "--encoder", "none", "--graph", "--no-overlay"]
    assert main(args) == 0
    lines = {json.loads(line)["input"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    video = lines[str(src / "clip.mkv")]
    g = load(video["outputs"]["graph"])
    assert video["outputs"]["graph"].endswith("clip/clip_graph.npz") and sorted(set(g["frame"])) == [0, 1, 2, 3]
    # a finished video missing its graph is redone by --resume
    (out / "clip" / "clip_graph.npz").unlink()
    assert main(args + ["--resume"]) == 0
    assert (out / "clip" / "clip_graph.npz").is_file()
