"""Gradient accumulation: k micro-batches give the update of one batch k times the size, in fp32, under
bf16 autocast, and in fp16 with the grad scaler.

The comparison needs a model whose output for an image does not depend on the other images of its
micro-batch: BatchNorm is swapped for a per-image GroupNorm and dropout is off (`batch_independent`).
The batches are built so that each loss is a mean of per-image means: as many ignore pixels in
every image (the cross-entropy averages over the counted pixels of a batch) and every class in every
image (the CAC inter term averages over the images that hold two classes).
"""

import contextlib

import pytest
import torch
from runs import tiny_config
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from csfr.engine import distributed
from csfr.engine.precision import autocast
from csfr.engine.trainer import NonFiniteLoss, Trainer
from csfr.models import layers


@pytest.fixture
def batch_independent(monkeypatch):
    monkeypatch.setitem(layers.NORMS, "bn", lambda channels: nn.GroupNorm(1, channels))
    return ("model.options.dropout=0",)


def hand_batch(n, size=32, k=4, seed=0):
    """n images; labels in 8x8 blocks holding all k classes in every image, also at the 1/8 feature size."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=gen)
    blocks = torch.arange(16).view(4, 4) % k
    labels = torch.stack([blocks.flatten()[torch.randperm(16, generator=gen)].view(4, 4) for _ in range(n)])
    labels = labels.repeat_interleave(size // 4, 1).repeat_interleave(size // 4, 2)
    labels[:, :2, :2] = 255  # as many ignore pixels in every image: the means still split evenly
    return images, labels


def one_update(overrides, tmp_path, images, labels, micro_batches):
    """(weights before, weights after, loss values) of one optimiser step over `micro_batches` equal parts."""
    trainer = Trainer(tiny_config(*overrides, f"train.accum_steps={micro_batches}"), tmp_path, progress=False)
    assert trainer.micro_batch == len(images) // micro_batches and isinstance(trainer.micro_batch, int)
    trainer.model.train()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    parts = [{"image": i, "label": lb} for i, lb in zip(images.chunk(micro_batches), labels.chunk(micro_batches))]
    losses = trainer._step(trainer.model, iter(parts))
    assert losses["loss"] == pytest.approx(sum(v for k, v in losses.items() if k != "loss"), rel=1e-6)
    if trainer.scaler.is_enabled():  # a skipped (overflowed) step would compare nothing
        assert trainer.scaler.get_scale() >= 2.0 ** 16, "the fp16 step overflowed and was skipped"
    return before, trainer.model.state_dict(), losses


# tolerance on the update, relative to its size: fp32 differs by summation order only (measured 3e-7);
# under autocast each layer's output is rounded to the low-precision dtype per micro-batch, a few
# units of its eps (measured 2e-3 bf16, 3e-4 fp16). Forgetting to divide by accum_steps errs by 100 %.
UPDATE_RTOL = {"none": 1e-5, "bfloat16": 4 * torch.finfo(torch.bfloat16).eps,
               "float16": 4 * torch.finfo(torch.float16).eps}


@pytest.mark.parametrize("amp", ["none", "bfloat16", "float16"])
def test_accumulated_micro_batches_give_the_update_of_the_whole_batch(amp, tmp_path, batch_independent):
    images, labels = hand_batch(4)
    config = (*batch_independent, f"train.amp={amp}")
    start, whole, whole_losses = one_update(config, tmp_path / "whole", images, labels, 1)
    # the reported losses are the model's own on the whole batch (at the starting weights)
    reference = Trainer(tiny_config(*config), tmp_path / "reference", progress=False).model.train()
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        expected = {k: float(v) for k, v in reference(images, labels)["losses"].items()}
    assert {k: v for k, v in whole_losses.items() if k != "loss"} == pytest.approx(expected, rel=1e-6)
    start2, accumulated, accumulated_losses = one_update(config, tmp_path / "accum", images, labels, 2)
    rtol = UPDATE_RTOL[amp]
    for key in start:
        assert torch.equal(start[key], start2[key]), key
    delta = torch.cat([(whole[k] - start[k]).flatten().double() for k in start if start[k].is_floating_point()])
    delta_acc = torch.cat([(accumulated[k] - start[k]).flatten().double()
                           for k in start if start[k].is_floating_point()])
    assert delta.norm() > 0
    error = (delta_acc - delta).norm() / delta.norm()
    assert error < rtol, f"accumulated update differs from the whole batch's by {error:.3g} (relative)"
    for name in whole_losses:
        assert accumulated_losses[name] == pytest.approx(whole_losses[name], rel=rtol), name


def test_bad_label_in_a_training_batch_is_named_before_the_forward_pass(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    images, labels = hand_batch(4)
    labels[2, 5, 6] = 9
    with pytest.raises(ValueError, match=r"training batch: label value 9 at index \(2, 5, 6\)"):
        trainer._step(trainer.model, iter([{"image": images, "label": labels}]))


class RecordingDDP(DistributedDataParallel):
    """Passes through to the model and records, per forward pass, whether gradient sync was off."""

    def __init__(self, module):
        nn.Module.__init__(self)
        self.module, self.syncing, self.calls = module, True, []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, *args):
        self.calls.append(self.syncing)
        return self.module(*args)


def test_gradients_are_synchronised_on_the_last_micro_batch_only(tmp_path):
    trainer = Trainer(tiny_config("train.accum_steps=2"), tmp_path, progress=False)
    images, labels = hand_batch(4)
    network = RecordingDDP(trainer.model)
    trainer._step(network, iter([{"image": images[:2], "label": labels[:2]},
                                 {"image": images[2:], "label": labels[2:]}]))
    assert network.calls == [False, True]


@pytest.mark.parametrize("poisoned, problem", [
    ("classifier.1.bias", r"ce=nan, aux_ce=[0-9.]+, cac_intra="),
    ("head.csflm.1.0.weight", r"cac_loss: features contain NaN or Inf"),  # raised inside the CAC operator
])
def test_non_finite_loss_stops_before_the_update(poisoned, problem, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    with torch.no_grad():
        dict(trainer.model.named_parameters())[poisoned].fill_(float("nan"))
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    images, labels = hand_batch(4)
    with pytest.raises(NonFiniteLoss, match=rf"^loss is not finite at iteration 1 \({problem}.*\); the weights were "
                       r"not updated\. Last good checkpoint: none written yet\. Lower train\.lr, add warmup "
                       r"\(train\.warmup_iters\), or use train\.amp=bfloat16 instead of float16\.$"):
        trainer._step(trainer.model, iter([{"image": images, "label": labels}]))
    after = dict(trainer.model.named_parameters())  # no backward, no optimiser step
    assert all(torch.equal(before[k], after[k]) and after[k].grad is None for k in before if k != poisoned)


@pytest.mark.parametrize("here, elsewhere", [(True, False), (False, True), (False, False)])
def test_every_rank_learns_of_a_non_finite_loss_anywhere(here, elsewhere, tmp_path, monkeypatch):
    """Under DDP each micro-batch asks all ranks (distributed.any_rank, faked here as a second rank)
    whether any loss was non-finite, and every rank stops together, naming its own problem if it has one."""
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    trainer.ctx = distributed.Context(0, 2, 0, torch.device("cpu"))
    asked = []
    monkeypatch.setattr(distributed, "any_rank", lambda flag, device: asked.append((flag, device)) or flag or elsewhere)
    if here:
        with torch.no_grad():
            trainer.model.classifier[1].bias.fill_(float("nan"))
    images, labels = hand_batch(4)
    batches = iter([{"image": images, "label": labels}])
    if here or elsewhere:
        problem = r"ce=nan" if here else r"on another rank"
        with pytest.raises(NonFiniteLoss, match=rf"loss is not finite at iteration 1 \({problem}"):
            trainer._step(trainer.model, batches)
    else:
        trainer._step(trainer.model, batches)
    assert asked == [(here, torch.device("cpu"))]
