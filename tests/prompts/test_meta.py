"""Meta-learned prompt initialisation: learn2learn MAML step, clone independence, meta-gradient."""
from __future__ import annotations

import pytest
import torch

import models
import prompts
from prompts import meta
from prompts.tuning import support_loss

WAY, SHOT, QUERY = 3, 2, 2


def _frozen(dtype=torch.float32):
    torch.manual_seed(0)
    bb = models.create_backbone("test_vig").eval().to(dtype)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb


def _task(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(WAY * SHOT, 1, 28, 28, generator=g, dtype=dtype)
    q = torch.randn(WAY * QUERY, 1, 28, 28, generator=g, dtype=dtype)
    return s, torch.arange(WAY).repeat_interleave(SHOT), q, torch.arange(WAY).repeat_interleave(QUERY)


def _prompt(bb, seed=3):
    p = prompts.create("gpf", bb)
    with torch.no_grad():
        p.vectors.copy_(0.1 * torch.randn(p.vectors.shape, generator=torch.Generator().manual_seed(seed),
                                          dtype=p.vectors.dtype))
    return p


def test_learn2learn_imports_and_one_maml_step_moves_the_meta_prompt():
    import learn2learn as l2l
    assert hasattr(l2l.algorithms, "MAML")
    bb = _frozen()
    prompt = _prompt(bb)
    before = prompt.vectors.detach().clone()
    _, losses = meta.meta_train(prompt, bb, iter(_task(i) for i in range(10)), "maml",
                                inner_steps=1, inner_lr=0.5, meta_batch=2, meta_lr=1e-2, iterations=1)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0]))
    assert not torch.equal(prompt.vectors, before)
    assert all(p.grad is None for p in bb.parameters())


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd"])
def test_inner_loop_changes_clone_but_not_meta_prompt(method):
    bb = _frozen()
    prompt = _prompt(bb)
    learner_meta = meta.wrap(prompt, method, inner_lr=0.5)
    before = prompt.vectors.detach().clone()
    s, sl, q, ql = _task(1)
    learner = learner_meta.clone()
    for _ in range(2):
        learner.adapt(support_loss(learner.module, bb, s, sl))
    assert not torch.allclose(learner.module.vectors, before)
    assert torch.equal(prompt.vectors, before)
    loss, _ = meta.episode_loss(learner.module, bb, s, sl, q, ql)
    loss.backward()
    assert torch.equal(prompt.vectors, before)          # unchanged until the outer step
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0


class _TinyGraphNet(torch.nn.Module):
    """A smooth stand-in for a ViG (patch nodes -> linear+tanh blocks, mean pooling), with the same
    hook interface, so a finite-difference check is not broken by k-NN selection."""

    def __init__(self, dim=6, depth=2):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.embed_dim, self.grid_size = dim, (2, 2)
        self.stem = torch.nn.Linear(49, dim).double()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(dim, dim).double() for _ in range(depth))
        for b in self.blocks:
            b.grapher = None
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64) * 0.5)
                prm.requires_grad_(False)

    def forward_features(self, x, node_mask=None, block_hook=None, return_mask=False, **_):
        x = self.stem(x.reshape(x.shape[0], 1, 4, 7, 28).permute(0, 2, 1, 3, 4).reshape(x.shape[0], 4, -1)[..., :49])
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        for i, block in enumerate(self.blocks):
            if block_hook is not None:
                x, mask = block_hook(i, x, mask)
            x = x + torch.tanh(block(x))
        return (x, mask) if return_mask else x

    def forward_head(self, x, pre_logits=True, node_mask=None):
        return x.mean(1)


def test_maml_meta_gradient_matches_finite_differences():
    bb = _TinyGraphNet()
    prompt = _prompt(bb).double()
    lr = 0.3
    s, sl, q, ql = _task(2, torch.float64)

    def objective(vectors):                 # query loss after one inner SGD step from `vectors`
        p = prompts.create("gpf", bb).double()
        with torch.no_grad():
            p.vectors.copy_(vectors)
        g, = torch.autograd.grad(support_loss(p, bb, s, sl), p.vectors)
        with torch.no_grad():
            p.vectors.sub_(lr * g)
            return float(meta.episode_loss(p, bb, s, sl, q, ql)[0])

    wrapped = meta.wrap(prompt, "maml", inner_lr=lr)
    meta.meta_step(wrapped, bb, [(s, sl, q, ql)], inner_steps=1)
    grad = prompt.vectors.grad.detach().clone()
    direction = torch.randn(grad.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    eps = 1e-6
    theta = prompt.vectors.detach().clone()
    fd = (objective(theta + eps * direction) - objective(theta - eps * direction)) / (2 * eps)
    analytic = float((grad * direction).sum())
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9)
    # first-order MAML drops the second-order term: its gradient differs from the true one
    prompt.vectors.grad = None
    meta.meta_step(meta.wrap(prompt, "fomaml", inner_lr=lr), bb, [(s, sl, q, ql)], inner_steps=1)
    assert float((prompt.vectors.grad * direction).sum()) != pytest.approx(fd, rel=1e-3)


def test_adapt_prompt_tunes_a_copy_and_lowers_the_support_loss():
    bb = _frozen()
    prompt = _prompt(bb)
    s, sl, _, _ = _task(5)
    before = prompt.vectors.detach().clone()
    tuned = meta.adapt_prompt(prompt, bb, s, sl, steps=5, lr=1e-3)
    assert torch.equal(prompt.vectors, before)
    with torch.no_grad():
        assert float(support_loss(tuned, bb, s, sl)) < float(support_loss(prompt, bb, s, sl))
    assert torch.equal(meta.adapt_prompt(prompt, bb, s, sl, steps=0, lr=0.5).vectors, before)


def test_bf16_autocast_on_cpu_runs_the_meta_step():
    bb = _frozen()
    prompt = _prompt(bb)
    _, losses = meta.meta_train(prompt, bb, iter(_task(i) for i in range(4)), "fomaml", inner_steps=1,
                                inner_lr=0.5, meta_batch=2, iterations=1, device="cpu",
                                autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.isfinite(torch.tensor(losses)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_meta_step():
    bb = _frozen().cuda()
    prompt = _prompt(bb).cuda()
    _, losses = meta.meta_train(prompt, bb, iter(_task(i) for i in range(4)), "maml", inner_steps=1,
                                inner_lr=0.5, meta_batch=2, iterations=1, device="cuda",
                                autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    assert torch.isfinite(torch.tensor(losses)).all()


def test_wrap_rejects_unknown_method():
    bb = _frozen()
    with pytest.raises(ValueError, match="meta-init must be one of"):
        meta.wrap(_prompt(bb), "reptile", 0.1)


def test_train_learner_keeps_metasgd_rates_and_test_time_adaptation_uses_them():
    """meta_train drops its wrapper; train_learner trains the caller's learner, so Meta-SGD's learned
    per-parameter rates stay on it, and a clone adapted on a support set moves by those rates."""
    bb = _frozen()
    learner = meta.wrap(_prompt(bb), "metasgd", inner_lr=0.5)
    losses = meta.train_learner(learner, bb, iter(_task(i) for i in range(10)), inner_steps=1, meta_batch=2,
                                meta_lr=5e-2, iterations=3)
    assert len(losses) == 3
    rates = learner.lrs[0].detach()
    assert rates.shape == learner.module.vectors.shape and not torch.allclose(rates, torch.full_like(rates, 0.5))
    s, sl, _, _ = _task(11)
    clone = learner.clone()
    loss = support_loss(clone.module, bb, s, sl)
    (grad,) = torch.autograd.grad(loss, learner.module.vectors, retain_graph=True)
    clone.adapt(loss)
    torch.testing.assert_close(clone.module.vectors.detach(), (learner.module.vectors - rates * grad).detach())


@pytest.mark.parametrize("method", ["metasgd", "fomaml"])
def test_a_cluster_no_image_reaches_is_left_alone_by_the_inner_step(method):
    """DAM-VP routes every image of this task to cluster 0: the inner step moves cluster 0's prompt
    (Meta-SGD by its rates) and leaves cluster 1's as it is, instead of raising on the unused one."""
    from prompts.damvp import ClusterPrompts

    bb = _frozen()
    prompt = ClusterPrompts.around(_prompt(bb), torch.zeros(2, bb.embed_dim))
    with torch.no_grad():
        prompt.centroids[1].fill_(1e6)   # nothing is near cluster 1
    learner = meta.wrap(prompt, method, inner_lr=0.5)
    s, sl, _, _ = _task(2)
    clone = learner.clone()
    loss = support_loss(clone.module, bb, s, sl)
    (g0,) = torch.autograd.grad(loss, clone.module.prompts[0].vectors, retain_graph=True)
    clone.adapt(loss)
    assert type(clone) is type(learner)
    torch.testing.assert_close(clone.module.prompts[0].vectors.detach(),
                               (prompt.prompts[0].vectors - 0.5 * g0).detach())
    torch.testing.assert_close(clone.module.prompts[1].vectors.detach(), prompt.prompts[1].vectors.detach())
