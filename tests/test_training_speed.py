"""The training loss's fast paths equal the plain formulas they replace."""
import torch
import torch.nn.functional as F

from spam_stream.candidates import grid_candidates
from spam_stream.kernels import reference
from spam_stream.kernels.candidates import candidate_table
from spam_stream.seeding import grid_seeds
from spam_stream.training import reconstruct, reconstruct_true_label


def test_true_label_reconstruction_equals_the_one_hot_reconstruction_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    h, w, k, n_labels = 23, 31, 12, 5
    seeds = grid_seeds(h, w, k)
    cands = grid_candidates(h, w, seeds)
    table = candidate_table(cands)
    f = torch.randn(h * w, 7, generator=g)
    c = torch.randn(len(seeds), 7, generator=g)
    labels = torch.randint(0, n_labels, (h * w,), generator=g)
    grads = []
    for fast in (False, True):
        f1 = f.clone().requires_grad_()
        q = reference.associate(f1, c, cands)
        if fast:
            recon = reconstruct_true_label(q, table, labels, n_labels, len(seeds))
        else:
            recon = reconstruct(q, table, F.one_hot(labels, n_labels).float(), len(seeds))[torch.arange(h * w), labels]
        loss = -torch.log(recon.clamp(min=1e-8)).mean()
        loss.backward()
        grads.append((recon.detach(), f1.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6)
    assert (grads[1][0] > 0).all() and (grads[1][0] <= 1 + 1e-6).all()
