import numpy as np
import pytest

from spam_stream.seeding import allocate_seeds, grid_seeds, grid_shape, object_seeds


@pytest.mark.parametrize("h,w,k", [(321, 481, 400), (481, 321, 200), (50, 50, 1), (10, 300, 30), (7, 9, 63)])
def test_grid_shape_is_close_to_k_and_fits_the_image(h, w, k):
    nh, nw = grid_shape(h, w, k)
    assert 1 <= nh <= h and 1 <= nw <= w
    assert abs(nh * nw - k) / k <= 0.1


def test_grid_seeds_start_every_pixel_in_its_cell():
    s = grid_seeds(30, 40, 12)
    nh, nw = s.grid
    init = s.init_labels.reshape(30, 40)
    assert init.min() == 0 and init.max() == nh * nw - 1
    assert len(np.unique(init)) == nh * nw


def test_allocation_follows_area_with_at_least_one_seed_and_sums_to_k():
    sizes = np.array([10000, 5000, 100, 3, 2])
    counts = allocate_seeds(sizes, 100)
    assert counts.sum() == 100
    assert (counts >= 1).all()
    assert counts[0] == pytest.approx(2 * counts[1], abs=2)


def test_density_factor_scales_an_objects_share():
    sizes = np.array([5000, 5000])
    counts = allocate_seeds(sizes, 60, density=np.array([2.0, 1.0]))
    assert counts.tolist() == [40, 20]


def test_object_seeds_lie_inside_their_objects_and_cover_them():
    part = np.full((60, 80), -1, np.int32)
    part[5:55, 5:40] = 0
    part[10:30, 45:75] = 1
    yy, xx = np.mgrid[:60, :80]
    part[((yy - 45) ** 2 + (xx - 60) ** 2) < 60] = 2
    s = object_seeds(part, 20)
    assert len(s) == 20
    # the pixels that start in a seed (the k-means sample) start in a seed of their own object; uncertain pixels
    # start nowhere
    init = s.init_labels.reshape(part.shape)
    assert (init[part < 0] == -1).all()
    started = init >= 0
    assert started.sum() >= len(s) and (s.obj[init[started]] == part[started]).all()
    # seeds of a large object are spread: each covers a reasonable share of it
    sizes = np.bincount(s.init_labels[s.init_labels >= 0], minlength=len(s))
    assert sizes.min() > 0


def _split_objects():
    """Object 0: a big block cut into 3 components by a column and a row of uncertain pixels (like the oracle
    prior's band); object 1: a block plus two 1-px islands of it, isolated by uncertain pixels."""
    part = np.full((40, 60), -1, np.int32)
    part[:, :40] = 0
    part[:, 20] = -1
    part[20, :20] = -1
    part[5:35, 42:58] = 1
    part[0, 59] = part[39, 41] = 1
    return part


def test_object_components_split_objects_at_uncertain_pixels():
    from spam_stream.seeding import object_components

    part = _split_objects()
    comp, comp_obj, comp_size = object_components(part)
    assert sorted(comp_obj.tolist()) == [0, 0, 0, 1, 1, 1]
    assert comp_size.sum() == (part >= 0).sum()
    assert (comp.reshape(part.shape)[part < 0] == -1).all()
    assert (comp_obj[comp[part.ravel() >= 0]] == part.ravel()[part.ravel() >= 0]).all()


@pytest.mark.parametrize("k", [6, 20, 50])
def test_every_component_gets_a_seed_inside_it_and_the_total_is_k(k):
    from spam_stream.seeding import object_components

    part = _split_objects()
    comp, _, comp_size = object_components(part)
    s = object_seeds(part, k)
    assert len(s) == k
    seed_comp = comp[(np.round(s.yx[:, 0]).astype(int) * part.shape[1] + np.round(s.yx[:, 1]).astype(int))]
    init_comp = np.array([np.unique(comp[s.init_labels == i]) for i in range(k)], dtype=object)
    # every seed starts with pixels of exactly one component, and every component has a seed
    assert all(len(c) == 1 for c in init_comp)
    assert set(np.concatenate(init_comp).tolist()) == set(range(len(comp_size)))
    started = s.init_labels >= 0
    assert (s.obj[s.init_labels[started]] == part.ravel()[started]).all()
    # seeds sit in (or next to, after k-means) their component
    assert (seed_comp[seed_comp >= 0] == np.concatenate(init_comp)[seed_comp >= 0]).all()


def test_kmeans_sample_is_the_lattice_plus_first_pixels_and_scales_with_k_not_the_frame():
    """The k-means on yx runs on a sample (seeding.sample_pixels): a component's lattice pixels plus its first
    pixel, all of its pixels when it has fewer lattice pixels than seeds. Its size follows K, not H·W."""
    from spam_stream.seeding import SAMPLES_PER_SEED, object_component_runs, sample_pixels, sample_stride

    part = _split_objects()
    runs = object_component_runs(part)
    comp = runs.comp_map(np.arange(-1, runs.n_components))
    counts = np.array([2, 1, 1, 3, 1, 1])  # the two 1-px islands: 1 seed, 1 pixel
    stride = 4
    pix, pc = sample_pixels(runs, stride, counts)
    assert (comp[pix] == pc).all() and (np.diff(pc) >= 0).all()
    for c in range(runs.n_components):
        mine = np.flatnonzero(comp == c)
        y, x = np.divmod(mine, part.shape[1])
        lattice = mine[(y % stride == stride // 2) & (x % stride == stride // 2)]
        expected = mine if counts[c] > len(lattice) else np.union1d(lattice, mine[:1])
        assert pix[pc == c].tolist() == sorted(expected.tolist())
    # a 1000x1500 frame of 30 objects at K=300: about K * SAMPLES_PER_SEED starting pixels, not 1.5M
    rng = np.random.default_rng(0)
    big = np.repeat(np.repeat(rng.integers(0, 30, (20, 30)), 50, 0), 50, 1).astype(np.int32)
    s = object_seeds(big, 300)
    assert len(s) == 300
    assert (s.init_labels >= 0).sum() <= 2 * 300 * SAMPLES_PER_SEED
    assert sample_stride(big.size, 300) > 1


def test_more_components_than_k_keeps_the_object_budgets():
    from spam_stream.seeding import allocate_component_seeds

    comp_obj = np.array([0, 0, 0, 0, 1, 1, 1])
    comp_size = np.array([1000, 5, 3, 1, 600, 2, 1])
    counts = allocate_component_seeds(comp_obj, comp_size, 4)
    budgets = allocate_seeds(np.array([1009, 603]), 4)     # the object-level rule
    assert counts.sum() == 4
    assert counts[:4].sum() == budgets[0] and counts[4:].sum() == budgets[1]
    for o, comps in ((0, [0, 1, 2, 3]), (1, [4, 5, 6])):     # spent on the largest components, one each first
        seeded = [c for c in comps if counts[c] > 0]
        assert seeded == comps[:len(seeded)]


def test_candidate_groups_keep_every_pixel_to_seeds_of_its_own_component():
    from spam_stream.candidates import object_candidates
    from spam_stream.seeding import object_components

    part = _split_objects()
    comp, comp_obj, _ = object_components(part)
    s = object_seeds(part, 12)
    groups, by_comp = s.candidate_groups(part)
    assert (by_comp.obj == s.component).all() and (comp_obj[by_comp.obj] == s.obj).all()
    assert (groups.ravel() == comp).all()                       # every component is seeded at K=12
    table = object_candidates(groups, by_comp).table.numpy()
    inside = part.ravel() >= 0
    rows, slots = np.nonzero(table >= 0)
    keep = inside[rows]
    assert (s.component[table[rows[keep], slots[keep]]] == comp[rows[keep]]).all()
    # without components (grid seeds) nothing changes
    g = grid_seeds(10, 10, 4)
    assert g.candidate_groups(part)[1] is g


# --- the device twins (spam_stream.kernels.nearest / kernels.seeding) against the CPU functions -------------------
# CPU tensors here; CUDA tensors too when a GPU is present. Everything is exact: equal seeds, labels, tables.

import torch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _random_seed_search(rng, n_points=700, n_seeds=60, n_groups=5):
    """Seeds (K, 2) with a group each, some in two groups, one group empty; points anywhere (also outside every
    group's grid) with a group each."""
    yx = rng.uniform(0, [50, 70], (n_seeds, 2))
    yx[:10] = np.round(yx[:10])  # integer positions: exact distance ties with the integer points
    item_seed = np.concatenate([np.arange(n_seeds), rng.choice(n_seeds, 15, replace=False)])
    item_group = rng.integers(0, n_groups - 1, len(item_seed))  # the last group gets no seed
    points = np.concatenate([rng.integers(0, [50, 70], (n_points, 2)), rng.uniform(-40, 110, (50, 2))]).astype(float)
    group = rng.integers(0, n_groups, len(points))
    return yx, item_seed, item_group, n_groups, points, group


@pytest.mark.parametrize("k,limit", [(1, np.inf), (4, 9.0), (9, 14.0), (9, np.inf)])
@pytest.mark.parametrize("radii", [None, (0,), ()], ids=["blocks", "one-cell", "exhaustive"])
@pytest.mark.parametrize("seed", range(3))
def test_nearest_seeds_torch_equals_nearest_seeds(seed, radii, k, limit, device):
    from spam_stream.kernels.nearest import build_seed_grid_torch, nearest_seeds_torch
    from spam_stream.seeding import build_seed_grid, nearest_seeds

    rng = np.random.default_rng(seed)
    yx, item_seed, item_group, n_groups, points, group = _random_seed_search(rng)
    step = 4.0 + seed
    ref = nearest_seeds(points, group, build_seed_grid(yx, item_seed, item_group, n_groups, step), yx, k, limit,
                        width=9)
    t = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
    grid = build_seed_grid_torch(t(yx), t(item_seed), t(item_group), n_groups, step)
    got = nearest_seeds_torch(t(points), t(group), grid, t(yx), k, limit, width=9, radii=radii)
    assert got.device.type == device.type and got.shape == ref.shape
    np.testing.assert_array_equal(got.cpu().numpy(), ref)
    assert (ref[group == n_groups - 1] == -1).all() and (ref[group < n_groups - 1, 0] >= 0).all()


def test_seed_grid_torch_equals_the_cpu_grid(device):
    from spam_stream.kernels.nearest import build_seed_grid_torch
    from spam_stream.seeding import build_seed_grid

    yx, item_seed, item_group, n_groups, _, _ = _random_seed_search(np.random.default_rng(7))
    ref = build_seed_grid(yx, item_seed, item_group, n_groups, 5.0)
    got = build_seed_grid_torch(*(torch.as_tensor(a).to(device) for a in (yx, item_seed, item_group)), n_groups, 5.0)
    for name in ("origin", "cell", "shape", "offset", "start", "items"):
        np.testing.assert_array_equal(getattr(got, name).cpu().numpy(), getattr(ref, name), err_msg=name)
    slots = got.slots.cpu().numpy()  # each cell's seeds, -1 padded, in the items' order
    for j in range(len(ref.start) - 1):
        cell = ref.items[ref.start[j]:ref.start[j + 1]]
        assert slots[j, :len(cell)].tolist() == cell.tolist() and (slots[j, len(cell):] == -1).all()


def _partitions():
    """Random partitions: Voronoi objects with a band and random uncertain pixels; objects split into pieces with
    1-px islands; absent object ids (empty objects) and 1-px objects; a tiny-object soup (more pieces than K)."""
    from helpers import voronoi_partition

    rng = np.random.default_rng(3)
    out = {}
    v = voronoi_partition(45, 62, 6, seed=2)
    v[rng.random(v.shape) < 0.08] = -1
    out["voronoi-band-holes"] = v
    out["split-pieces"] = _split_objects()
    gaps = np.full((30, 41), -1, np.int32)
    gaps[2:20, 3:30] = 4                 # ids 0..3 absent: empty objects
    gaps[22:29, 5:38] = 9
    gaps[25, 20] = -1
    gaps[0, 0] = gaps[29, 40] = 2        # one-pixel objects
    gaps[10, 35] = 7
    out["empty-and-1px-objects"] = gaps
    out["soup"] = rng.integers(-1, 4, (23, 31)).astype(np.int32)
    return out


PARTITIONS = _partitions()


@pytest.mark.parametrize("k", [1, 7, 40, 150])
@pytest.mark.parametrize("name", PARTITIONS)
def test_object_seeds_torch_equal_object_seeds(name, k, device):
    from spam_stream.kernels.seeding import object_seeds_torch

    part = PARTITIONS[name]
    k = min(k, int((part >= 0).sum()))
    density = np.linspace(0.5, 3.0, int(part.max()) + 1) if k == 40 else None
    ref = object_seeds(part, k, density=density, seed=1)
    got = object_seeds_torch(torch.from_numpy(part).to(device), k, density=density, seed=1)
    assert got.yx.device.type == device.type and got.init_labels.dtype == torch.int32
    for field in ("yx", "obj", "init_labels", "component", "component_map"):
        np.testing.assert_array_equal(getattr(got, field).cpu().numpy(), getattr(ref, field), err_msg=field)
    # the invariants hold on their own too: each seed's starting pixels lie in its own piece of its object
    init = got.init_labels.cpu().numpy()
    comp_map = got.component_map.cpu().numpy().ravel()
    inside = init >= 0
    assert (got.component.cpu().numpy()[init[inside]] == comp_map[inside]).all()
    assert (init[part.ravel() < 0] == -1).all()


def test_object_seeds_torch_draws_the_cpus_random_extra_pixels(device):
    """A 2x3 object with 3 seeds has 2 occupied cells of the √(n/k) grid: the third start is drawn at random — the
    device path makes the same generator calls, for any seed."""
    from spam_stream.kernels.seeding import object_seeds_torch

    part = np.full((7, 8), -1, np.int32)
    part[3:5, 5:8] = 0
    starts = []
    for seed in range(4):
        ref = object_seeds(part, 3, seed=seed, kmeans_iterations=0)
        got = object_seeds_torch(torch.from_numpy(part).to(device), 3, seed=seed, kmeans_iterations=0)
        np.testing.assert_array_equal(got.yx.cpu().numpy(), ref.yx)
        starts.append(tuple(map(tuple, ref.yx)))
    assert len(set(starts)) > 1  # the random part of the starts did vary with the seed


@pytest.mark.parametrize("max_distance", [1.0, 3.0])
@pytest.mark.parametrize("name", PARTITIONS)
def test_object_candidates_torch_equal_object_candidates(name, max_distance, device):
    from spam_stream.candidates import object_candidates
    from spam_stream.kernels.seeding import object_candidates_torch, object_seeds_torch

    part = PARTITIONS[name]
    k = min(60, int((part >= 0).sum()))
    ref_seeds = object_seeds(part, k)
    got_seeds = object_seeds_torch(torch.from_numpy(part).to(device), k)
    ref = object_candidates(*ref_seeds.candidate_groups(part), max_distance)
    got = object_candidates_torch(*got_seeds.candidate_groups(torch.from_numpy(part).to(device)), max_distance)
    assert got.table.device.type == device.type and got.table.dtype == torch.int32
    for field in ("table", "pixel_object", "superpixel_object"):
        np.testing.assert_array_equal(getattr(got, field).cpu().numpy(), getattr(ref, field).numpy(), err_msg=field)
    # the plain partition as groups (no pieces) gives the CPU's table too
    plain = object_candidates(part, ref_seeds, max_distance)
    got_plain = object_candidates_torch(torch.from_numpy(part).to(device), got_seeds, max_distance)
    np.testing.assert_array_equal(got_plain.table.cpu().numpy(), plain.table.numpy())


def test_object_seeds_torch_rejects_a_partition_without_objects():
    from spam_stream.kernels.seeding import object_seeds_torch

    with pytest.raises(ValueError, match="no object"):
        object_seeds_torch(torch.full((4, 5), -1, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        object_seeds_torch(torch.zeros(4, dtype=torch.int32), 3)


# --- pieces that connectivity can bridge (issue 11: K with a banded prior) ---------------------------------------

def test_bridge_groups_join_pieces_of_one_object_across_a_narrow_band_only():
    from spam_stream.seeding import bridge_groups, object_components

    part = np.zeros((12, 30), np.int32)
    part[:, 3] = -1                  # 1 px of band: pieces 0 | 1 bridgeable
    part[:, 10:16] = -1              # 6 px of band: too wide for max_gap 4
    part[:, 20] = 1                  # another object between pieces of object 0
    part[:, 25:27] = -1
    part[:, 27:] = 1                 # object 1 again, 2 px of band after object 0's piece 21..24
    comp, comp_obj, comp_size = object_components(part)
    g = bridge_groups(comp, comp_obj, part.shape, max_gap=4)
    piece = lambda y, x: comp[y * 30 + x]  # noqa: E731
    assert g[piece(5, 0)] == g[piece(5, 5)]              # across 1 band pixel
    assert g[piece(5, 5)] != g[piece(5, 17)]             # across 6 band pixels
    assert g[piece(5, 17)] != g[piece(5, 22)]            # across object 1, not band
    assert g[piece(5, 22)] != g[piece(5, 28)]            # different objects across the band
    assert g[piece(5, 20)] != g[piece(5, 28)]            # object 1's pieces: 6 px of object 0 and band apart
    wide = bridge_groups(comp, comp_obj, part.shape, max_gap=6)
    assert wide[piece(5, 5)] == wide[piece(5, 17)]       # 6 px fit a gap of 6


def test_with_more_pieces_than_k_seeds_go_to_bridge_groups_and_specks_get_none():
    from spam_stream.seeding import allocate_component_seeds

    # object 0: a big piece with 30 one-pixel specks bridgeable to it, and 3 pieces it cannot reach; object 1: one
    comp_obj = np.array([0] + [0] * 30 + [0, 0, 0] + [1])
    comp_size = np.array([4000] + [1] * 30 + [300, 200, 100] + [2000])
    groups = np.array([0] + [0] * 30 + [31, 32, 33] + [34])
    k = 20
    counts = allocate_component_seeds(comp_obj, comp_size, k, groups=lambda: groups)
    assert counts.sum() == k
    assert (counts[1:31] == 0).all()                     # specks: none, connectivity bridges them
    assert (counts[31:34] >= 1).all()                    # pieces nothing can reach: one each at least
    assert counts[0] > counts[34] > 0                    # the rest by area
    # without groups the object rule spends object 0's seeds on its largest pieces, specks included
    plain = allocate_component_seeds(comp_obj, comp_size, k)
    assert plain.sum() == k and (plain[1:31] > 0).any()
    # groups are only asked for with more pieces than K
    asked = []
    allocate_component_seeds(comp_obj, comp_size, 100, groups=lambda: asked.append(1) or groups)
    assert asked == []


@pytest.mark.parametrize("max_distance", [3.0, 1.0])
def test_object_candidates_follow_the_block_rule(max_distance):
    """candidates.object_candidates against a plain numpy reading of its rule: the pixels of one group in one block
    of block_size(step) pixels get the ≤ 9 seeds of that group nearest to the block's centre (ties: lower index),
    those beyond max_distance grid steps dropped except the nearest, in increasing seed index; uncertain pixels
    search every seed."""
    from spam_stream.candidates import object_candidates
    from spam_stream.kernels.candidates import block_size
    from helpers import voronoi_partition

    part = voronoi_partition(37, 53, 5, seed=3)
    s = object_seeds(part, 30)
    groups, by_comp = s.candidate_groups(part)
    table = object_candidates(groups, by_comp, max_distance).table.numpy()
    h, w = part.shape
    step = np.sqrt(h * w / len(s))
    b = block_size(step)
    flat = groups.ravel()
    for p in range(h * w):
        y, x = divmod(p, w)
        y0, x0 = y // b * b, x // b * b
        cy, cx = 0.5 * (y0 + min(y0 + b, h) - 1), 0.5 * (x0 + min(x0 + b, w) - 1)
        mine = np.arange(len(s)) if flat[p] < 0 else np.flatnonzero(by_comp.obj == flat[p])
        d = (by_comp.yx[mine, 0] - cy) ** 2 + (by_comp.yx[mine, 1] - cx) ** 2
        order = np.lexsort((mine, d))[:9]
        keep = [mine[j] for i, j in enumerate(order) if i == 0 or d[j] <= (max_distance * step) ** 2]
        expected = sorted(keep) + [-1] * (9 - len(keep))
        assert table[p].tolist() == expected, (p, table[p], expected)


def test_seed_regions_are_the_nearest_seed_of_the_pixels_piece():
    """Seeds.regions_at: object seeds start on their k-means sample only, so a pixel's seed region (what a video's
    warm start hands a moved centroid to) is the nearest seed of its piece; grid seeds read init_labels."""
    from helpers import voronoi_partition

    part = voronoi_partition(41, 57, 4, seed=5)
    s = object_seeds(part, 25)
    h, w = part.shape
    y, x = np.divmod(np.arange(h * w), w)
    got = s.regions_at(y, x, w)
    cmap = s.component_map.ravel()
    assert (got[cmap < 0] == -1).all()
    for p in np.flatnonzero(cmap >= 0)[::7]:
        mine = np.flatnonzero(s.component == cmap[p])
        d = (s.yx[mine, 0] - y[p]) ** 2 + (s.yx[mine, 1] - x[p]) ** 2
        assert got[p] == mine[np.lexsort((mine, d))[0]]
    started = s.init_labels >= 0  # the sample pixels started in exactly that region
    assert (got[started] == s.init_labels[started]).mean() > 0.99
    g = grid_seeds(h, w, 20)
    assert (g.regions_at(y, x, w) == g.init_labels).all()
