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
    # every pixel of an object starts in a seed of that object; uncertain pixels start nowhere
    init = s.init_labels.reshape(part.shape)
    assert (init[part < 0] == -1).all()
    assert (s.obj[init[part >= 0]] == part[part >= 0]).all()
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
    assert (s.obj[s.init_labels[part.ravel() >= 0]] == part.ravel()[part.ravel() >= 0]).all()
    # seeds sit in (or next to, after k-means) their component
    assert (seed_comp[seed_comp >= 0] == np.concatenate(init_comp)[seed_comp >= 0]).all()


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
