"""NTRENet: parity with the public code (LIUYUANWEI98/NERTNet), logits and training loss terms, k shots,
the masking places, the memory bank, bad options, reference checkpoints.

Parity. ``seeded_ntrenet`` builds a full-width NTRENet (dilated ResNet-50, reduce_dim 256, bins 60, 30,
15, 8) and fills every tensor from a seeded generator (``randomize_`` of the BAM test); ``episode`` draws
seeded inputs. The golden file ``tests/models/data/ntrenet_reference.pt`` holds the outputs of the
*reference* ``model/ourmodel.py`` (``NTRENet``) loaded with exactly these weights, on these inputs:

* ``1shot`` / ``2shot``: its eval-mode logits at the 65 px output;
* ``train``: two training-mode forwards (1 shot) with the backbone's BatchNorm and every dropout in
  eval mode (so that both sides compute the same function; the reference trains with its backbone's
  BatchNorm in train mode, see docs/models.md), the negative bank carried from the first to the
  second: its ``main_loss``, its combined auxiliary loss, the contrastive term and the bank afterwards.

It was produced by ``python -m tests.models.test_ntrenet /path/to/clone/of/NERTNet`` (this file's
``__main__``): it copies the clone's ``model/`` into a temporary folder with the four local fixes the
public code needs to run (a full-width comma in ``NTRENet.__init__``'s signature, ``aux_bg_loss`` used
before assignment, ``.cuda()`` calls on this CPU machine; ``prototype_neg_dict`` is passed by its name),
loads our weights under its names and runs it on CPU. With ``FSS_NTRENET_REF`` set to such a clone,
``test_parity_with_the_reference_code`` runs the reference live instead of reading the golden.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fss.backbones import VGG16BN, DilatedResNet, ResNet
from fss.models import NTRENet
from fss.models.ntrenet import PrototypeContrast, background_loss, reference_ntrenet_key
from tests.models.conftest import relative_error
from tests.models.test_bam import REFERENCE_STEM, episode, randomize_

SIZE = 65  # (SIZE - 1) divisible by 8: the reference's output size is the input size
GOLDEN = Path(__file__).parent / "data" / "ntrenet_reference.pt"
TRAIN_CLASSES = (torch.tensor([3, 7]), torch.tensor([7, 7]))  # two steps: class 7 meets its bank again


@functools.cache
def seeded_ntrenet() -> NTRENet:
    """The full-width NTRENet of the golden, every tensor seeded (see ``randomize_``)."""
    net = NTRENet(DilatedResNet("resnet50", weights=None), masking="fm")
    randomize_(net, 0)
    net.eval()
    # these weights predict background everywhere (the contrastive loss's anchor would be empty): move the
    # final classifier's foreground bias to between the middle two logit differences of the first
    # training episode, rounded to an integer (both sides read the same bias)
    with torch.no_grad():
        batch = train_episode(0)
        out = net.forward_outputs(batch["query_img"], batch["support_imgs"], batch["support_masks"])["out"]
        diff = (out[:, 1] - out[:, 0]).flatten().sort().values
        middle = diff.numel() // 2
        net.learner.cls[3].bias[1] -= float(torch.round((diff[middle - 1] + diff[middle]) / 2))
    return net


def _dropout_off(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout2d):
            m.eval()


def train_episode(step: int) -> dict[str, torch.Tensor]:
    """A 1-shot training batch: seeded images and masks, the query label with an ignored border."""
    query, supports, masks = episode(1, seed=10 + step)
    _, _, query_masks = episode(1, seed=20 + step)
    label = query_masks[:, 0].long()
    label[:, :3] = 255
    return {
        "query_img": query, "support_imgs": supports, "support_masks": masks, "query_mask": label,
        "class_id": TRAIN_CLASSES[step],
    }  # fmt: skip


def our_outputs() -> dict:
    net = seeded_ntrenet()
    outputs = {}
    with torch.inference_mode():
        for shots in (1, 2):
            outputs[f"{shots}shot"] = net.forward_shots(*episode(shots))[:, 0]
    # training mode: dropout off, the bank carried over two steps
    contrast = PrototypeContrast()
    net.contrast, saved = contrast, net.contrast
    net.train()
    _dropout_off(net)
    steps = []
    try:
        with torch.no_grad():
            for step in range(2):
                criterion = functools.partial(F.cross_entropy, ignore_index=255)
                _, _, terms = net.training_loss(train_episode(step), criterion)
                aux = terms["background"] + 0.4 * terms["aux_inner"] + 0.6 * terms["aux_initial"]
                steps.append(
                    {
                        "main": terms["main"],
                        "aux": aux + 0.01 * terms["contrast"],
                        "contrast": terms["contrast"],
                    }
                )
    finally:
        net.contrast = saved
        net.eval()
    outputs["train"] = {"steps": steps, "bank": {c: v.clone() for c, v in contrast.bank.items()}}
    return outputs


# -- the reference, run on our weights -------------------------------------------------------------
#: the local fixes the public code needs to run here: (file, text, replacement)
REFERENCE_FIXES = (
    ("ourmodel.py", "vgg=False\uff0cbgpro_num", "vgg=False, bgpro_num"),  # a full-width comma
    ("ourmodel.py", ".cuda()", ""),
    (
        "ourmodel.py",
        "            for j,supp_bg_out in enumerate(supp_bg_out_list):",
        "            aux_bg_loss = 0\n            for j,supp_bg_out in enumerate(supp_bg_out_list):",
    ),
    ("prototypical_contrast.py", ".cuda()", ""),
)


def _reference_package(clone: Path, workdir: Path) -> Path:
    """A copy of the clone's ``model/`` under ``workdir`` with ``REFERENCE_FIXES`` applied."""
    target = workdir / "ref"
    shutil.copytree(clone / "model", target / "model")
    for name, text, replacement in REFERENCE_FIXES:
        path = target / "model" / name
        source = path.read_text(encoding="utf-8")
        assert text in source, f"{path}: the reference changed, {text!r} not found"
        path.write_text(source.replace(text, replacement), encoding="utf-8")
    return target


def reference_outputs(clone: Path, workdir: Path) -> dict:
    """Run the reference ``NTRENet`` with ``seeded_ntrenet``'s weights on the golden's inputs."""
    ours = seeded_ntrenet().state_dict()
    saved_modules = {k: v for k, v in sys.modules.items() if k == "model" or k.startswith("model.")}
    for key in saved_modules:
        del sys.modules[key]
    root = _reference_package(clone, workdir)
    sys.path.insert(0, str(root))
    outputs = {}
    try:
        from model.ourmodel import NTRENet as Reference

        for shots in (1, 2):
            ref = Reference(layers=50, classes=2, zoom_factor=8, pretrained=False, shot=shots)
            ref.load_state_dict({k: ours[reference_ntrenet_key(k)] for k in ref.state_dict()})
            ref.eval()
            query, supports, masks = episode(shots)
            with torch.no_grad():
                outputs[f"{shots}shot"] = ref(s_x=supports, s_y=masks, x=query, y=None, classes=None)
        # training mode with the backbone's BatchNorm and every dropout in eval mode
        ref.train()
        for name in ("layer0", "layer1", "layer2", "layer3", "layer4"):
            getattr(ref, name).eval()
        _dropout_off(ref)
        ref.shot = 1
        contrast_terms = []
        contrast_forward = ref.contrast_loss.forward

        def recording(*args, **kwargs):
            loss, bank = contrast_forward(*args, **kwargs)
            contrast_terms.append(loss.reshape(()))
            return loss, bank

        ref.contrast_loss.forward = recording
        bank: dict = {}
        steps = []
        with torch.no_grad():
            for step in range(2):
                batch = train_episode(step)
                _, main, aux, bank = ref(
                    s_x=batch["support_imgs"], s_y=batch["support_masks"], x=batch["query_img"],
                    y=batch["query_mask"], classes=[batch["class_id"]], prototype_neg_dict=bank,
                )  # fmt: skip
                steps.append(
                    {"main": main.reshape(()), "aux": aux.reshape(()), "contrast": contrast_terms[-1]}
                )
        outputs["train"] = {"steps": steps, "bank": {c: v.clone() for c, v in bank.items()}}
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k == "model" or k.startswith("model.")]:
            del sys.modules[key]
        sys.modules.update(saved_modules)
    return outputs


def _assert_parity(ours: dict, ref: dict) -> None:
    for key in ("1shot", "2shot"):
        assert ours[key].shape == ref[key].shape == (2, 2, SIZE, SIZE), key
        assert relative_error(ours[key], ref[key]) <= 1e-4, key
    for step, (mine, theirs) in enumerate(zip(ours["train"]["steps"], ref["train"]["steps"], strict=True)):
        for term in ("main", "aux", "contrast"):
            assert relative_error(mine[term], theirs[term]) <= 1e-4, (step, term)
    assert ours["train"]["bank"].keys() == ref["train"]["bank"].keys()
    for cls, negatives in ref["train"]["bank"].items():
        assert ours["train"]["bank"][cls].shape == negatives.shape, cls
        assert relative_error(ours["train"]["bank"][cls], negatives) <= 1e-4, cls


@functools.cache
def _ours() -> dict:
    return our_outputs()


def test_parity_with_the_reference_golden():
    _assert_parity(_ours(), torch.load(GOLDEN, map_location="cpu", weights_only=True))


def test_parity_with_the_reference_code(tmp_path):
    clone = os.environ.get("FSS_NTRENET_REF")
    if not clone:
        pytest.skip(
            "set FSS_NTRENET_REF to a clone of github.com/LIUYUANWEI98/NERTNet to run the reference live"
        )
    if not (Path(clone) / "model" / "ourmodel.py").is_file():
        pytest.skip(f"FSS_NTRENET_REF={clone} has no model/ourmodel.py")
    _assert_parity(_ours(), reference_outputs(Path(clone), tmp_path))


# -- reference checkpoints -----------------------------------------------------------------------------
def small_ntrenet(masking: str = "fm", **kwargs) -> NTRENet:
    torch.manual_seed(0)
    options = {"reduce_dim": 16, "ppm_scales": [4, 2]} | kwargs
    return NTRENet(DilatedResNet("resnet50", weights=None, width=8), masking=masking, **options)


def reference_name(key: str) -> str:
    """Our state_dict key -> the reference NTRENet's (written from model/ourmodel.py's attribute names)."""
    if key.startswith("backbone."):
        head, _, rest = key.removeprefix("backbone.").partition(".")
        return f"{REFERENCE_STEM.get(head, head)}.{rest}"
    assert key.startswith("learner."), key
    return key.removeprefix("learner.").replace("initial_", "inital_")


def test_reference_checkpoint_names_load():
    """A state_dict in the reference's names (its train_epoch_*.pth: ``module.`` prefix) loads key for key."""
    net = small_ntrenet()
    randomize_(net, 3)
    sd = {"module." + reference_name(k): v.clone() for k, v in net.state_dict().items()}
    assert {"module.layer0.6.weight", "module.inital_beta_conv.1.2.weight", "module.bg_prototype",
            "module.alpha_conv.0.0.weight", "module.cls.3.bias"} <= set(sd)  # fmt: skip
    other = small_ntrenet()
    other.load_reference_state_dict({"state_dict": sd, "epoch": 3})
    for key, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    del sd["module.down_bg.0.weight"]
    with pytest.raises(KeyError, match="down_bg"):
        other.load_reference_state_dict(sd)


def test_reference_vgg_checkpoint_names_load():
    """On VGG-16-BN the reference's backbone keys are ours (``layer<k>.<j>``, no stem renaming): an
    NTRENet checkpoint of the public code's VGG variant (none is published) would load key for key."""
    net = NTRENet(VGG16BN(weights=None, width=8), reduce_dim=16, ppm_scales=[4, 2])
    randomize_(net, 4)
    sd = {"module." + reference_name(k): v.clone() for k, v in net.state_dict().items()}
    assert "module.layer0.1.running_var" in sd and "module.layer4.7.weight" in sd
    other = NTRENet(VGG16BN(weights=None, width=8), reduce_dim=16, ppm_scales=[4, 2])
    other.load_reference_state_dict({"state_dict": sd})
    for key, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_the_memory_bank_is_not_part_of_the_state_dict():
    net = small_ntrenet()
    net.contrast.bank[4] = torch.ones(3, 16)
    assert not any("bank" in k or k.startswith("contrast") for k in net.state_dict())


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ppm_scales": []}, "ppm_scales must be a non-empty list"),
        ({"ppm_scales": [8, 0]}, "ppm_scales"),
        ({"bg_prototypes": 0}, r"bg_prototypes must be an integer >= 1"),
        ({"reduce_dim": 0}, "reduce_dim must be positive"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        small_ntrenet(**options)


def test_two_background_prototypes_widen_the_background_inputs():
    """``bg_prototypes: 2`` (the reference config's ``bgpro_num``, which its code cannot run) runs here."""
    net = small_ntrenet(bg_prototypes=2).eval()
    assert net.learner.bg_prototype.shape == (1, 32, 1, 1)
    assert net.learner.init_merge1[0][0].in_channels == net.learner.down_bg[0].in_channels == 48
    with torch.inference_mode():
        assert net(*episode(1, batch=1, size=33)).shape == (1, 2, 33, 33)


def test_fractional_bins_follow_the_feature_grid():
    net = small_ntrenet(ppm_scales=[1.0, 0.5, 3])
    assert net.learner.bin_sizes(9) == [9, 4, 3]


# -- pieces by hand -----------------------------------------------------------------------------------
def test_background_loss_by_hand():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2, 1, 2]: pixel 0 says 0, pixel 1 says 1
    label = torch.tensor([[[1, 255]]])  # pixel 0 is the target, pixel 1 ignored
    p = logits.softmax(dim=1)[0, :, 0]  # [2 classes, 2 pixels]
    on_target = -torch.log(p[0, 0]) / (1 + 1e-5)
    everywhere = -torch.log(p[1]).mean()
    torch.testing.assert_close(background_loss(logits, label), on_target + 0.5 * everywhere)


def test_the_bank_keeps_the_newest_per_class_and_samples_with_torch_generator():
    contrast = PrototypeContrast(sample=3, keep=5)
    first = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # B=2 episodes, query + 2 shots, D=2
    contrast.update(first, torch.tensor([1, 2]))
    assert torch.equal(contrast.bank[1], first[0]) and torch.equal(contrast.bank[2], first[1])
    second = -first - 1
    contrast.update(second, torch.tensor([1, 1]))
    # this batch first (both queries, then each shot of both episodes), then the older ones, 5 kept
    expected = torch.cat([second[:, 0], second[:, 1], second[:, 2], first[0]])[:5]
    assert torch.equal(contrast.bank[1], expected)

    def run(seed: int) -> torch.Tensor:
        contrast.bank = {1: torch.randn(5, 4, generator=torch.Generator().manual_seed(0))}
        torch.manual_seed(seed)
        feats = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
        mask = torch.zeros(1, 1, 3, 3)
        mask[..., :2, :2] = 1
        logits = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(2))
        return contrast(feats, feats[:, None], logits, mask[:, 0].long(), mask, logits, logits[:, None],
                        torch.tensor([1]))  # fmt: skip

    assert torch.equal(run(0), run(0))  # 3 of the 5 + 3 negatives drawn from torch's seeded generator
    assert not torch.equal(run(0), run(1))


# -- k shots, masking places ----------------------------------------------------------------------------
def test_k_shots_average_prototypes_and_priors():
    net = small_ntrenet().eval()
    query, supports, masks = episode(3, batch=1, size=33)
    with torch.inference_mode():
        three = net.forward_outputs(query, supports, masks)
        assert three["out"].shape == (1, 2, 5, 5)
        singles = [net.forward_outputs(query, supports[:, k], masks[:, k]) for k in range(3)]
        for key in ("prototype", "prior"):
            torch.testing.assert_close(three[key], torch.stack([o[key] for o in singles]).mean(dim=0))
        # the order of the shots does not matter; one shot given three times is the 1-shot result
        order = [2, 0, 1]
        torch.testing.assert_close(
            net(query, supports[:, order], masks[:, order]), net(query, supports, masks)
        )
        repeated = net(query, supports[:, :1].expand(-1, 3, -1, -1, -1), masks[:, :1].expand(-1, 3, -1, -1))
        torch.testing.assert_close(repeated, net(query, supports[:, :1], masks[:, :1]))


def test_masking_places_fm_and_im():
    """FM: the prototype averages ``down_supp(plain) * m``, the prior reads ``layer4(layer3 * m) * m``;
    IM: the reduced map and ``layer4`` of the masked image."""
    net = small_ntrenet("fm").eval()
    query, supports, masks = episode(1, batch=1, size=33)
    s_img, s_mask = supports[:, 0], masks[:, 0]
    bb, learner = net.backbone, net.learner

    def resized(size):
        return F.interpolate(s_mask[:, None], size, mode="bilinear", align_corners=True)

    with torch.inference_mode():
        _, _, q4 = bb(query)
        f2, f3, _ = bb(s_img)
        reduced = learner.down_supp(torch.cat([f3, f2], dim=1))
        m = resized(reduced.shape[-2:])
        fm = net.forward_outputs(query, supports, masks)
        torch.testing.assert_close(
            fm["prototype"][:, :, 0, 0], (reduced * m).sum((2, 3)) / (m.sum((2, 3)) + 5e-4)
        )
        support4 = bb.layer4(f3 * m) * m
        q, sp = q4.flatten(2)[0], support4.flatten(2)[0]  # [C, hw]
        cos = (sp.T @ q) / (sp.norm(dim=0)[:, None] * q.norm(dim=0)[None] + 1e-7)  # [support, query]
        best = cos.max(dim=0).values[None]
        prior = (best - best.min()) / (best.max() - best.min() + 1e-7)
        torch.testing.assert_close(fm["prior"].flatten(1), prior, atol=1e-5, rtol=1e-4)

        net.masking = small_ntrenet("im").masking
        im = net.forward_outputs(query, supports, masks)
        g2, g3, _ = bb(s_img * s_mask[:, None])
        masked_reduced = learner.down_supp(torch.cat([g3, g2], dim=1))
        torch.testing.assert_close(
            im["prototype"][:, :, 0, 0], masked_reduced.sum((2, 3)) / (m.sum((2, 3)) + 5e-4)
        )
        assert not torch.allclose(im["prior"], fm["prior"])


@pytest.mark.parametrize("masking", ["hm", "none"])
def test_other_maskings_change_the_prototype(masking):
    net = small_ntrenet("fm").eval()
    batch = episode(1, batch=1, size=33)
    with torch.inference_mode():
        fm = net.forward_outputs(*batch)["prototype"]
        net.masking = small_ntrenet(masking).masking
        other = net.forward_outputs(*batch)["prototype"]
    assert other.shape == fm.shape and not torch.allclose(other, fm)


# -- training -------------------------------------------------------------------------------------------
def _batch(shots: int) -> dict[str, torch.Tensor]:
    query, supports, masks = episode(shots, batch=2, seed=4, size=33)
    return {
        "query_img": supports[:, 0], "support_imgs": supports, "support_masks": masks,
        "query_mask": masks[:, 0].long(), "class_id": torch.tensor([5, 6]),
    }  # fmt: skip


@pytest.mark.parametrize("shots", [1, 2])
def test_trains_end_to_end_with_every_term(shots):
    """SGD steps on one batch fit it (the loss falls); the backbone does not move; the bank grows."""
    net = small_ntrenet("hm").train()
    batch = _batch(shots)
    frozen = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    optimizer = torch.optim.Adam(net.learner.parameters(), lr=5e-3)
    criterion = functools.partial(F.cross_entropy, ignore_index=255)
    losses, mains = [], []
    for _ in range(12):
        optimizer.zero_grad()
        loss, logits, terms = net.training_loss(batch, criterion)
        assert set(terms) == {"main", "aux_inner", "aux_initial", "background", "contrast"}
        assert logits.shape == (2, 2, 33, 33)
        aux = (
            terms["background"]
            + 0.4 * terms["aux_inner"]
            + 0.6 * terms["aux_initial"]
            + 0.01 * terms["contrast"]
        )
        torch.testing.assert_close(loss, terms["main"] + aux)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        mains.append(terms["main"].item())
    assert mains[-1] < 0.8 * mains[0] and losses[-1] < 0.9 * losses[0]
    assert net.learner.bg_prototype.grad.abs().sum() > 0
    assert {k: v.shape[0] for k, v in net.contrast.bank.items()} == {5: 12 * (1 + shots), 6: 12 * (1 + shots)}
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, frozen[key]), key


def test_seeded_training_steps_repeat():
    """Dropout, the bank and its sampling draw from torch's seeded generators: two seeded runs agree."""

    def run() -> list[float]:
        net = small_ntrenet("fm").train()
        net.contrast.sample = 4  # the bank outgrows it: negatives are drawn
        torch.manual_seed(7)
        optimizer = torch.optim.SGD(net.learner.parameters(), lr=1e-3, momentum=0.9)
        losses = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = net.training_loss(_batch(1), F.cross_entropy)[0]
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    assert run() == run()


def test_fscs_ways_are_ntrenet_episodes():
    """FS-CS (``way_logits``): way n's logits are those of NTRENet on the FS-S episode of way n's shots,
    at the feature grid; a 1-way episode, upsampled, is exactly ``forward_shots``."""
    net = small_ntrenet("hm").eval()
    query, supports, masks = episode(4, batch=2, size=33)
    supports, masks = supports.view(2, 2, 2, 3, 33, 33), masks.view(2, 2, 2, 33, 33)
    with torch.no_grad():
        one_way = net.way_logits(query, supports[:, :1], masks[:, :1])
        assert one_way.shape == (2, 1, 1, 2, 5, 5)
        fs_s = net.forward_shots(query, supports[:, 0], masks[:, 0])  # [B, 1, 2, 33, 33]
        torch.testing.assert_close(
            F.interpolate(one_way[:, 0, 0], (33, 33), mode="bilinear", align_corners=True),
            fs_s[:, 0],
            rtol=0,
            atol=1e-6,
        )
        logits = net.way_logits(query, supports, masks, torch.tensor([[5, 12], [19, 6]]))
        for n in range(2):
            expected = net.forward_outputs(query, supports[:, n], masks[:, n])["out"]
            torch.testing.assert_close(logits[:, n, 0], expected, rtol=1e-5, atol=1e-6)


def test_fscs_training_leaves_the_auxiliary_parts_without_gradient():
    """FS-CS training minimises the iFSL loss alone (docs/fscs.md): the parts only NTRENet's auxiliary
    terms train (background mining's head, the bins' inner and initial classifiers) get no gradient,
    which is why DDP needs ``ddp_find_unused_parameters_true`` there; everything else does."""
    from fss.models.ifsl import episode_way_logits, predict_episode, segmentation_loss

    net = small_ntrenet("hm").train()
    query, supports, masks = episode(2, batch=2, size=33)
    supports, masks = supports.view(2, 2, 1, 3, 33, 33), masks.view(2, 2, 1, 33, 33)
    target = masks[:, 0, 0].long() + 2 * masks[:, 1, 0].long().clamp(max=1 - masks[:, 0, 0].long())
    logits = episode_way_logits(net, query, supports, masks, torch.tensor([[5, 12], [19, 6]]))
    segmentation_loss(predict_episode(logits, (33, 33)).merged, target).backward()
    without = {
        n.split(".")[0] for n, p in net.learner.named_parameters() if p.grad is None or not p.grad.any()
    }
    assert without == {"down_bg", "bg_res1", "bg_cls", "inner_cls", "initial_inner_cls"}


def test_runs_on_another_backbone():
    """On a torchvision ResNet the levels are resized to the middle one's grid."""
    torch.manual_seed(0)
    net = NTRENet(ResNet("resnet18", weights=None), masking="hm", reduce_dim=16).eval()
    with torch.inference_mode():
        assert net(*episode(2, batch=1, size=64)).shape == (1, 2, 64, 64)


def test_runs_and_trains_on_vgg16_bn():
    """VGG-16-BN (the reference's ``vgg: True`` branch): layer2 (stride 8) is resized to layer3's grid,
    the reduced features take 256 + 512 channels; a training step reaches every learner part."""
    torch.manual_seed(0)
    net = NTRENet(VGG16BN(weights=None), masking="hm", reduce_dim=16)
    assert net.learner.down_query[0].in_channels == 256 + 512
    with torch.inference_mode():
        assert net.eval()(*episode(2, batch=1, size=65)).shape == (1, 2, 65, 65)
    net.train()
    loss, logits, terms = net.training_loss(_batch(1), functools.partial(F.cross_entropy, ignore_index=255))
    loss.backward()
    assert logits.shape == (2, 2, 33, 33) and all(torch.isfinite(t) for t in terms.values())
    assert net.learner.bg_prototype.grad.abs().sum() > 0 and net.learner.cls[-1].weight.grad.abs().sum() > 0


if __name__ == "__main__":  # regenerate the golden: python -m tests.models.test_ntrenet /path/to/NERTNet
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        golden = reference_outputs(Path(sys.argv[1]), Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save(golden, GOLDEN)
    print(f"wrote {GOLDEN}")
