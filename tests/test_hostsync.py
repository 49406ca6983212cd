"""The host round-trip counter (spam_stream.hostsync): it sees the ops that make a GPU wait, and only those."""
import torch

from spam_stream.hostsync import HostSyncCounter


def test_counts_host_reads_and_data_sized_outputs():
    x = torch.arange(12).reshape(3, 4)
    mask = x % 2 == 0
    with HostSyncCounter() as syncs:
        int(x.max())
        bool(mask.any())
        x[mask]
        torch.nonzero(x)
        torch.unique(x)
        torch.bincount(x.reshape(-1))
        x.cpu().numpy()  # one trip: the copy
        x.tolist()
    assert dict(syncs.by_kind) == {"int": 1, "bool": 1, "bool-mask": 1, "nonzero": 1, "unique": 1, "bincount": 1,
                                   "cpu": 1, "tolist": 1}
    assert syncs.total == 8
    assert all(place == "elsewhere" for place in syncs.by_place)  # no spam_stream frame made them


def test_device_side_ops_are_not_counted():
    x = torch.arange(12).reshape(3, 4)
    mask = x % 2 == 0
    with HostSyncCounter() as syncs:
        y = torch.where(mask, x, -1)
        y = y.scatter_reduce(0, torch.zeros_like(y), y, "amax")
        y[mask] = 0  # a scalar through a mask: a masked fill, no count needed
        torch.cumsum(y, 1)
        x[torch.tensor([0, 2])]
        torch.sort(x.reshape(-1))
        len(x)
    assert syncs.total == 0, dict(syncs.by_kind)


def test_places_name_the_spam_stream_line():
    from spam_stream.kernels.labeling import label_components_torch

    with HostSyncCounter() as syncs:
        label_components_torch(torch.zeros(5, 6, dtype=torch.int64))
    assert syncs.total >= 1
    assert all(place.startswith("labeling.py:") for place in syncs.by_place), dict(syncs.by_place)


def test_uploads_to_another_device_are_counted():
    """A blocking copy from host memory to a device other than the CPU waits (the "meta" device stands in for a
    GPU here); a non-blocking one, a copy within the CPU and a dtype change do not count."""
    x = torch.arange(6, dtype=torch.float32)
    with HostSyncCounter() as syncs:
        x.to("meta")
        x.to(device=torch.device("meta"))
        torch.tensor([1.0, 2.0], device="meta")
        torch.as_tensor(x, device="meta")
        x.to("meta", non_blocking=True)
        x.to(torch.float64)
        x.to("cpu")
    assert dict(syncs.by_kind) == {"upload": 4}
