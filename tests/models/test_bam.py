"""BAM: parity with the public code (chunbolang/BAM), the ensemble by hand, k shots, masking places, training.

Parity, for each of the reference's backbones (``resnet50``: the dilated ResNet-50; ``vgg``: VGG-16-BN,
its ``vgg: True``). ``seeded_bam`` builds a full-width BAM on it (15 PASCAL base classes) and fills
every tensor from a seeded generator; ``episode`` draws seeded inputs. The golden files
``tests/models/data/bam_reference.pt`` (ResNet, 65 px inputs) and ``bam_vgg_reference.pt`` (VGG,
97 px) hold the outputs of the *reference* ``model/BAM.py`` (``OneModel``, eval mode) loaded with
exactly these weights, on these inputs: ``final``/``meta`` at the output size (the input's) and the
``base`` logits on the feature grid (stride 8 / 16), for 1 and 2 shots. They were produced by
``python -m tests.models.test_bam /path/to/clone/of/chunbolang/BAM [resnet50|vgg]`` (this file's
``__main__``: it imports the reference model with a stub for its ``util.util`` import, writes the
``initmodel`` files its constructor reads into a temporary folder, loads our weights under its names
and runs it on CPU); the VGG file on 2026-12-03 from chunbolang/BAM at its latest commit. The same
run writes ``bam_loss_reference.pt``: the reference's three training losses (``main_loss``,
``aux_loss1``, ``aux_loss2``, in training mode with dropout off, its CUDA-only ``torch.arange`` sent
to the CPU) on ``training_batch``, per backbone and K. With
``FSS_BAM_REF`` set to such a clone, ``test_parity_with_the_reference_code`` runs the reference live
instead of reading the golden.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fss.backbones import VGG16BN, DilatedResNet, FeatureBackbone, ResNet
from fss.masking import MASKINGS
from fss.models import BAM
from fss.models.bam import base_class_labels, gram_matrix, prior_mask, reference_bam_key
from tests.models.conftest import relative_error

#: per backbone: input size ((size - 1) divisible by the stride: the reference's output size is the
#: input size, and the stride-s grid is every s-th output pixel), stride of the grid, golden file
PARITY = {
    "resnet50": (65, 8, Path(__file__).parent / "data" / "bam_reference.pt"),
    "vgg": (97, 16, Path(__file__).parent / "data" / "bam_vgg_reference.pt"),
}
SIZE = PARITY["resnet50"][0]
#: the reference's three training losses on ``training_batch``, per backbone and K (written by ``__main__``)
LOSS_GOLDEN = Path(__file__).parent / "data" / "bam_loss_reference.pt"
PASCAL_FOLD0_BASE = list(range(5, 20))


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every floating tensor of ``module`` from a seeded generator (in state_dict order).

    Convolutions: N(0, 2 / fan_in); BatchNorm: weight U(0.5, 1.5), bias and mean U(-0.1, 0.1),
    variance U(0.5, 1.5); other tensors N(0, 0.1). Activations keep their scale through ResNet-50.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() == 4:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("running_var", "weight")) and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_((torch.rand(tensor.shape, generator=gen) - 0.5) * 0.2)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)


def full_backbone(backbone: str) -> FeatureBackbone:
    """The reference's backbone at full width, random weights."""
    return VGG16BN(weights=None) if backbone == "vgg" else DilatedResNet(backbone, weights=None)


@functools.cache
def seeded_bam(backbone: str = "resnet50") -> BAM:
    """The full-width 2-shot BAM of the golden, every tensor seeded (see ``randomize_``).

    Its 1-shot outputs are those of a 1-shot BAM with the same weights (``kshot_rw`` is only used
    for K = 2): the 1-shot reference loads every tensor but ``kshot_rw``.
    """
    net = BAM(full_backbone(backbone), masking="fm", shots=2, num_base_classes=15)
    randomize_(net, 0)
    return net.eval()


def episode(shots: int, batch: int = 2, seed: int = 1, size: int = SIZE):
    """Seeded query [B,3,S,S], supports [B,K,3,S,S] and masks [B,K,S,S] (a rectangle per support)."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=gen)
    supports = torch.randn(batch, shots, 3, size, size, generator=gen)
    masks = torch.zeros(batch, shots, size, size)
    for b in range(batch):
        for k in range(shots):
            y, x = torch.randint(0, size // 2, (2,), generator=gen).tolist()
            h, w = torch.randint(size // 4, size // 2, (2,), generator=gen).tolist()
            masks[b, k, y : y + h, x : x + w] = 1
    return query, supports, masks


def our_outputs(shots: int, backbone: str = "resnet50") -> dict[str, torch.Tensor]:
    """Our ``final``/``meta`` at the image size and ``base`` on the feature grid, as in the golden."""
    net = seeded_bam(backbone)
    size = PARITY[backbone][0]
    query, supports, masks = episode(shots, size=size)
    with torch.inference_mode():
        out = net.forward_outputs(query, supports, masks)
        final = net.forward_shots(query, supports, masks)[:, 0]
    meta = F.interpolate(out["meta"], (size, size), mode="bilinear", align_corners=True)
    return {"final": final, "meta": meta, "base": out["base"]}


# -- the reference, run on our weights -------------------------------------------------------------
def training_batch(shots: int, size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A seeded training batch (``episode`` with class maps: episode classes 5 and 12, another base class
    9, a novel class 2, a 255 band) and, written out by hand, the base labels the reference reads
    (``y_b``: base class c of fold 0 at ``1 + (c - 5)``, other classes 0, 255 kept)."""
    query, supports, masks = episode(shots, size=size)
    gen = torch.Generator().manual_seed(2)
    classes = torch.zeros(2, size, size, dtype=torch.long)
    for b, (own, other) in enumerate(((5, 9), (12, 2))):
        y, x = torch.randint(0, size // 2, (2,), generator=gen).tolist()
        classes[b, size - size // 4 :, :] = other + 1
        classes[b, y : y + size // 3, x : x + size // 3] = own + 1
        classes[b, :2] = 255
    class_id = torch.tensor([5, 12])
    query_mask = (classes == (class_id + 1).view(2, 1, 1)).long()
    query_mask[classes == 255] = 255
    base_labels = torch.zeros_like(classes)
    base_labels[classes == 6], base_labels[classes == 13], base_labels[classes == 10] = 1, 8, 5
    base_labels[classes == 255] = 255
    batch = {
        "query_img": query, "support_imgs": supports, "support_masks": masks, "query_mask": query_mask,
        "class_id": class_id, "query_classes": classes,
    }  # fmt: skip
    return batch, base_labels


def _no_dropout(module: torch.nn.Module) -> None:
    """Training mode with dropout (and BatchNorm, the reference's fix_bn) in eval mode: deterministic."""
    module.train()
    for m in module.modules():
        if isinstance(m, (torch.nn.Dropout2d, torch.nn.BatchNorm2d)):
            m.eval()


def our_losses(shots: int, backbone: str = "resnet50") -> dict[str, torch.Tensor]:
    """Our training loss terms on ``training_batch``, dropout off (as ``reference_outputs``'s ``loss_*``)."""
    net = copy.deepcopy(seeded_bam(backbone))
    net.set_train_classes(PASCAL_FOLD0_BASE)
    _no_dropout(net)
    batch, _ = training_batch(shots, PARITY[backbone][0])
    with torch.no_grad():
        _, _, terms = net.training_loss(batch, lambda logits, t: F.cross_entropy(logits, t, ignore_index=255))
    return terms


def reference_outputs(
    clone: Path, shots: int, workdir: Path, backbone: str = "resnet50"
) -> dict[str, torch.Tensor]:
    """Run the reference ``OneModel`` (model/BAM.py of ``clone``) with ``seeded_bam``'s weights on ``episode``
    (eval mode: ``final``, ``meta``, ``base``) and on ``training_batch`` (training mode, dropout off: its
    three losses ``loss_main``, ``loss_aux_meta``, ``loss_base``)."""
    ours = seeded_bam(backbone)
    size, stride, _ = PARITY[backbone]
    vgg = backbone == "vgg"
    saved_modules = {k: v for k, v in sys.modules.items() if k == "model" or k.startswith(("model.", "util"))}
    for key in saved_modules:
        del sys.modules[key]
    util = types.ModuleType("util")
    util_util = types.ModuleType("util.util")
    util_util.get_train_val_set = None  # imported by model/BAM.py, unused by the model
    sys.modules["util"], sys.modules["util.util"] = util, util_util
    sys.path.insert(0, str(clone))
    cwd = os.getcwd()
    try:
        from model import resnet as ref_resnet
        from model import vgg as ref_vgg
        from model.BAM import OneModel
        from model.PSPNet import OneModel as PSPNet

        os.chdir(workdir)
        folder = "vgg" if vgg else "resnet50"
        (workdir / "initmodel" / "PSPNet" / "pascal" / "split0" / folder).mkdir(parents=True, exist_ok=True)
        torch.save(ref_resnet.resnet50(pretrained=False).state_dict(), "initmodel/resnet50_v2.pth")
        torch.save(ref_vgg.vgg16_bn(pretrained=False).state_dict(), "initmodel/vgg16_bn.pth")
        args = Namespace(
            layers=50, zoom_factor=8, shot=shots, vgg=vgg, data_set="pascal", ignore_label=255,
            print_freq=10, split=0, low_fea="layer2", kshot_trans_dim=2,
        )  # fmt: skip
        psp = PSPNet(args)
        torch.save({"state_dict": psp.state_dict()}, f"initmodel/PSPNet/pascal/split0/{folder}/best.pth")
        ref = OneModel(args, cls_type="Base")
        mine = ours.state_dict()
        ref.load_state_dict(
            {k: mine[reference_bam_key(k, ours.backbone.reference_key)] for k in ref.state_dict()}
        )
        ref.eval()
        query, supports, masks = episode(shots, size=size)
        with torch.no_grad():
            final, meta, base = ref(x=query, s_x=supports, s_y=masks, y_m=None, y_b=None)
        batch, base_labels = training_batch(shots, size)
        _no_dropout(ref)
        ranks = [PASCAL_FOLD0_BASE.index(c) for c in batch["class_id"].tolist()]  # its subcls
        arange = torch.arange
        torch.arange = lambda *args, device=None, **kwargs: arange(*args, **kwargs)  # its device="cuda"
        try:
            with torch.no_grad():
                _, main, aux1, aux2 = ref(
                    x=batch["query_img"], s_x=batch["support_imgs"], s_y=batch["support_masks"],
                    y_m=batch["query_mask"], y_b=base_labels, cat_idx=[torch.tensor(ranks)],
                )  # fmt: skip
        finally:
            torch.arange = arange
    finally:
        os.chdir(cwd)
        sys.path.remove(str(clone))
        for key in [k for k in sys.modules if k == "model" or k.startswith(("model.", "util"))]:
            del sys.modules[key]
        sys.modules.update(saved_modules)
    base = base[..., ::stride, ::stride].contiguous().clone()
    return {
        "final": final,
        "meta": meta,
        "base": base,
        "loss_main": main,
        "loss_aux_meta": aux1,
        "loss_base": aux2,
    }


def _assert_parity(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    for key in ("final", "meta", "base"):
        assert ours[key].shape == ref[key].shape, key
        assert relative_error(ours[key], ref[key]) <= 1e-4, key


def _assert_loss_parity(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    for key in ("main", "aux_meta", "base"):
        assert relative_error(ours[key], ref[f"loss_{key}"]) <= 1e-4, key


@pytest.mark.parametrize("backbone", list(PARITY))
@pytest.mark.parametrize("shots", [1, 2])
def test_parity_with_the_reference_golden(shots, backbone):
    golden = torch.load(PARITY[backbone][2], map_location="cpu", weights_only=True)[f"{shots}shot"]
    _assert_parity(our_outputs(shots, backbone), golden)


@pytest.mark.parametrize("backbone", list(PARITY))
@pytest.mark.parametrize("shots", [1, 2])
def test_training_losses_match_the_reference_golden(shots, backbone):
    """The three loss terms (main, the meta learner's aux, the base learner's) against the reference's
    ``main_loss``, ``aux_loss1``, ``aux_loss2`` in training mode, dropout off (``LOSS_GOLDEN``)."""
    golden = torch.load(LOSS_GOLDEN, map_location="cpu", weights_only=True)[backbone][f"{shots}shot"]
    _assert_loss_parity(our_losses(shots, backbone), golden)


@pytest.mark.parametrize("backbone", list(PARITY))
@pytest.mark.parametrize("shots", [1, 2])
def test_parity_with_the_reference_code(shots, backbone, tmp_path):
    clone = os.environ.get("FSS_BAM_REF")
    if not clone:
        pytest.skip("set FSS_BAM_REF to a clone of github.com/chunbolang/BAM to run the reference live")
    if not (Path(clone) / "model" / "BAM.py").is_file():
        pytest.skip(f"FSS_BAM_REF={clone} has no model/BAM.py")
    ref = reference_outputs(Path(clone), shots, tmp_path, backbone)
    _assert_parity(our_outputs(shots, backbone), ref)
    _assert_loss_parity(our_losses(shots, backbone), ref)


#: our stem names -> the reference's ``layer0`` Sequential
REFERENCE_STEM = {
    "conv1": "layer0.0",
    "bn1": "layer0.1",
    "conv2": "layer0.3",
    "bn2": "layer0.4",
    "conv3": "layer0.6",
    "bn3": "layer0.7",
}
#: our prefixes -> the reference's (first match wins)
REFERENCE_PREFIXES = (
    ("base_learner.ppm.stages.", "learner_base.0.features."),
    ("base_learner.classifier.", "learner_base.1."),
    ("learner.meta_classifier.", "cls_meta."),
    ("learner.res1.", "res1_meta."),
    ("learner.res2.", "res2_meta."),
    ("learner.", ""),
)


def reference_name(key: str) -> str:
    """Our state_dict key -> the reference BAM's (written from model/BAM.py's attribute names)."""
    if key.startswith("backbone."):
        head, _, rest = key.removeprefix("backbone.").partition(".")
        return f"{REFERENCE_STEM.get(head, head)}.{rest}"
    if key.startswith("learner.aspp.branches."):
        index, _, rest = key.removeprefix("learner.aspp.branches.").partition(".")
        return f"ASPP_meta.layer6_{index}.{rest}"
    for ours, theirs in REFERENCE_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise AssertionError(key)


def test_reference_checkpoint_names_load():
    """A state_dict in the reference's names (its train_epoch_*.pth: ``module.`` prefix) loads key for key."""
    net = BAM(DilatedResNet("resnet50", weights=None, width=4), reduce_dim=8, shots=2, num_base_classes=3)
    randomize_(net, 3)
    sd = {"module." + reference_name(k): v.clone() for k, v in net.state_dict().items()}
    assert {"module.layer0.3.weight", "module.ASPP_meta.layer6_3.0.weight", "module.kshot_rw.2.bias"} <= set(
        sd
    )
    other = BAM(DilatedResNet("resnet50", weights=None, width=4), reduce_dim=8, shots=2, num_base_classes=3)
    other.load_reference_state_dict({"state_dict": sd})
    for key, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    del sd["module.cls_merge.weight"]
    with pytest.raises(KeyError, match="cls_merge"):
        other.load_reference_state_dict(sd)


def test_reference_vgg_checkpoints_load(tmp_path):
    """With VGG the reference's backbone keys are ours (``layer<k>.<j>``): its BAM checkpoints and its
    PSPNet ``best.pth`` (``layer*``, ``encoder.*``, ``ppm.features.*``, ``cls.*``) load key for key."""
    net = BAM(VGG16BN(weights=None, width=8), reduce_dim=8, num_base_classes=3)
    randomize_(net, 5)
    sd = net.state_dict()
    reference = {"module." + reference_name(k): v.clone() for k, v in sd.items()}
    assert "module.layer3.7.running_var" in reference and "module.layer0.1.weight" in reference
    other = BAM(VGG16BN(weights=None, width=8), reduce_dim=8, num_base_classes=3)
    other.load_reference_state_dict({"state_dict": reference})
    assert all(torch.equal(other.state_dict()[k], v) for k, v in sd.items())
    psp = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    psp |= {f"encoder.{k[5]}{k[6:]}": v for k, v in psp.items()}  # the reference's encoder: the same layers
    psp |= {
        "ppm.features." + k.removeprefix("base_learner.ppm.stages."): v for k, v in sd.items() if ".ppm." in k
    }
    psp |= {
        "cls." + k.removeprefix("base_learner.classifier."): v for k, v in sd.items() if ".classifier." in k
    }
    torch.save({"state_dict": psp}, tmp_path / "best.pth")
    loaded = BAM(
        VGG16BN(weights=None, width=8),
        base_learner=str(tmp_path / "best.pth"),
        reduce_dim=8,
        num_base_classes=3,
    )
    for key, value in sd.items():
        if not key.startswith("learner."):
            assert torch.equal(loaded.state_dict()[key], value), key


# -- pieces by hand ---------------------------------------------------------------------------------
def test_gram_matrix_and_prior_by_hand():
    feat = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # C=2 channels over 2 positions: (1,0), (1,1)
    cos = 1 / 2**0.5
    torch.testing.assert_close(gram_matrix(feat), torch.tensor([[[1.0, cos], [cos, 1.0]]]), atol=1e-6, rtol=0)
    query = torch.tensor([[[[1.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])  # positions (1,0), (0,1), (1,1)
    support = torch.tensor([[[[1.0]], [[0.0]]]])  # one position, (1,0)
    # cosines 1, 0, 1/sqrt(2) -> min-max normalised
    expected = torch.tensor([1.0, 0.0, cos]).view(1, 1, 1, 3)
    torch.testing.assert_close(prior_mask(query, support), expected, atol=1e-6, rtol=0)


def small_bam(masking: str = "fm", shots: int = 1, **kwargs) -> BAM:
    torch.manual_seed(0)
    return BAM(
        DilatedResNet("resnet50", weights=None, width=8), masking=masking, reduce_dim=16, shots=shots,
        base_classes=PASCAL_FOLD0_BASE, **kwargs,
    )  # fmt: skip


def test_training_leaves_the_episodes_class_out_of_the_base_map():
    """In training the base map sums every base class but the episode's own (channel 1 + its rank)."""
    net = small_bam().eval()
    assert net.base_channels(torch.tensor([5, 19, 12])).tolist() == [1, 15, 8]
    with pytest.raises(ValueError, match="not base classes.*base_learner"):
        net.base_channels(torch.tensor([0]))
    meta, base = torch.randn(2, 2, 3, 3), torch.randn(2, 16, 3, 3)
    difference = torch.rand(2, 1, 1, 1)
    learner = net.learner
    with torch.no_grad():
        learner.gram_merge.weight.copy_(torch.tensor([0.7, 0.2]).view(1, 2, 1, 1))
        learner.cls_merge.weight.copy_(torch.tensor([0.9, -0.4]).view(1, 2, 1, 1))
        own = torch.tensor([3, 15])
        got = learner.ensemble(meta, base, difference, own)
    p_meta, p_base = meta.softmax(1), base.softmax(1)
    others = torch.stack([p_base[b, 1:].sum(0) - p_base[b, own[b]] for b in range(2)]).unsqueeze(1)
    bg = 0.9 * (0.7 * p_meta[:, :1] + 0.2 * difference) - 0.4 * others
    fg = 0.7 * p_meta[:, 1:] + 0.2 * difference
    torch.testing.assert_close(got, torch.cat([bg, fg], 1))


def test_k_shots_are_weighted_by_scene_difference():
    net = small_bam(shots=3).eval()
    query, supports, masks = episode(3, batch=1, size=33)
    with torch.inference_mode():
        assert net.forward_shots(query, supports, masks).shape == (1, 1, 2, 33, 33)
        # the reweighting is a function of the sorted differences, put back in shot order
        diffs = torch.tensor([0.3, 0.1, 0.2]).view(1, 3, 1, 1)
        weights = net.learner.shot_weights(diffs)
        permuted = net.learner.shot_weights(diffs[:, [2, 0, 1]])
        torch.testing.assert_close(permuted, weights[:, [2, 0, 1]])
        torch.testing.assert_close(weights.sum(1), torch.ones(1, 1, 1))
        # another K than trained for: the mean
        assert torch.equal(net.learner.shot_weights(diffs[:, :2]), torch.full((1, 2, 1, 1), 0.5))
        # one shot given three times: the 1-shot result when the weights are uniform
        one = small_bam().eval()
        three = small_bam(shots=3).eval()
        three.learner.load_state_dict(one.learner.state_dict(), strict=False)
        torch.nn.init.zeros_(three.learner.kshot_rw[2].weight)  # constant weights -> 1/3 each
        repeated = three.forward_shots(
            query, supports[:, :1].expand(-1, 3, -1, -1, -1), masks[:, :1].expand(-1, 3, -1, -1)
        )
        torch.testing.assert_close(repeated, one.forward_shots(query, supports[:, :1], masks[:, :1]))


def test_masking_places_fm_and_im():
    """FM multiplies layer3 before layer4 (place 1); IM runs layer4 on the masked image's layer3."""
    net = small_bam("fm").eval()
    query, supports, masks = episode(1, batch=1, size=33)
    s_img, s_mask = supports[:, 0], masks[:, 0]
    with torch.inference_mode():
        _, plain, _, support4, _ = net._backbone_features(query, s_img, s_mask)
        f3 = net.backbone.run_stages(net.backbone.stem(s_img), 1, 3)[2]
        m3 = F.interpolate(s_mask[:, None], f3.shape[-2:], mode="bilinear", align_corners=True)
        torch.testing.assert_close(support4, net.backbone.layer4(f3 * m3))
        net.masking = small_bam("im").masking
        _, _, masked, support4_im, masked4 = net._backbone_features(query, s_img, s_mask)
        full = net.backbone(s_img * s_mask[:, None])
        torch.testing.assert_close(masked4, full[2])
        torch.testing.assert_close(support4_im, full[2])
        torch.testing.assert_close(masked[1], full[1])


def test_trains_end_to_end():
    """Adam steps on one batch fit it (the loss falls); the backbone and the base learner do not move."""
    net = small_bam("hm").train()
    query, supports, masks = episode(1, batch=2, seed=4, size=33)
    batch = {
        "query_img": supports[:, 0], "support_imgs": supports, "support_masks": masks,
        "query_mask": masks[:, 0].long(), "class_id": torch.tensor([5, 6]),
    }  # fmt: skip
    frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("learner.")}
    optimizer = torch.optim.Adam(net.learner.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss, logits, terms = net.training_loss(batch, F.cross_entropy)
        assert set(terms) == {"main", "aux_meta"} and logits.shape == (2, 2, 33, 33)
        torch.testing.assert_close(loss, terms["main"] + terms["aux_meta"])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert not net.backbone.training
    # the base learner's BatchNorm is frozen, its dropout active in training (the reference's fix_bn)
    assert {m.training for m in net.base_learner.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {False}
    assert net.base_learner.classifier[3].training
    for key, value in net.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key


def test_base_learner_loss_is_the_references_aux_loss2():
    """``train/loss_base``: CE of the upsampled base logits against the base labels (base class c at
    channel 1 + its rank, other classes background, 255 ignored), added to the total with weight 1."""
    classes = torch.tensor([[0, 6, 20], [1, 255, 16]])  # class maps: background, class 5, 19, 0, ignore, 15
    base_ids = torch.tensor(PASCAL_FOLD0_BASE)  # classes 5..19 at channels 1..15
    assert base_class_labels(classes, base_ids).tolist() == [[0, 1, 15], [0, 255, 11]]
    assert base_class_labels(classes, torch.tensor([-1, 19])).tolist() == [[0, 0, 2], [0, 255, 0]]

    net = small_bam().eval()  # eval: no dropout, so the base logits are those of forward_outputs
    query, supports, masks = episode(1, batch=2, seed=4, size=33)
    query_classes = torch.zeros(2, 33, 33, dtype=torch.long)
    query_classes[0, 5:20, 5:20] = 6  # class 5: channel 1
    query_classes[1, 10:, :] = 20  # class 19: channel 15
    query_classes[1, :3] = 255
    query_classes[0, 25:] = 3  # class 2, a novel class of fold 0: background for the base learner
    batch = {
        "query_img": query, "support_imgs": supports, "support_masks": masks,
        "query_mask": (query_classes == 6).long(), "class_id": torch.tensor([5, 19]), "query_classes": query_classes,
    }  # fmt: skip
    with torch.no_grad():
        loss, _, terms = net.training_loss(batch, F.cross_entropy)
        base = net.forward_outputs(query, supports, masks, batch["class_id"])["base"]
    logp = F.interpolate(base, (33, 33), mode="bilinear", align_corners=True).log_softmax(dim=1)
    labels = torch.zeros(2, 33, 33, dtype=torch.long)
    labels[0, 5:20, 5:20], labels[1, 10:, :] = 1, 15
    valid = torch.ones(2, 33, 33, dtype=torch.bool)
    valid[1, :3] = False
    expected = -logp.gather(1, labels.unsqueeze(1))[:, 0][valid].mean()
    torch.testing.assert_close(terms["base"], expected)
    torch.testing.assert_close(loss, terms["main"] + terms["aux_meta"] + terms["base"])
    net.base_weight = 0.0
    with torch.no_grad():
        loss_without, _, _ = net.training_loss(batch, F.cross_entropy)
    torch.testing.assert_close(loss_without, terms["main"] + terms["aux_meta"])
    # no class map: no base term, and a warning naming the option
    del batch["query_classes"]
    net.base_weight = 1.0
    with pytest.warns(UserWarning, match="data.class_maps"), torch.no_grad():
        _, _, terms = net.training_loss(batch, F.cross_entropy)
    assert set(terms) == {"main", "aux_meta"}


@pytest.mark.parametrize("masking", sorted(MASKINGS))
def test_every_masking_on_vgg(masking):
    """VGG: layer2 (stride 8) is resized to layer3's grid (16) before the prototype and the Gram matrices;
    every strategy runs through the masked-layer3 path, 2 shots, and the loss has its three terms."""
    torch.manual_seed(0)
    net = BAM(
        VGG16BN(weights=None, width=4),
        masking=masking,
        reduce_dim=8,
        shots=2,
        base_classes=PASCAL_FOLD0_BASE,
    )
    batch, _ = training_batch(2, 49)
    with torch.no_grad():
        out = net.eval().forward_outputs(batch["query_img"], batch["support_imgs"], batch["support_masks"])
        assert [tuple(out[k].shape) for k in ("final", "meta", "base")] == [
            (2, 2, 4, 4),
            (2, 2, 4, 4),
            (2, 16, 4, 4),
        ]
        _, logits, terms = net.train().training_loss(
            batch, lambda x, t: F.cross_entropy(x, t, ignore_index=255)
        )
    assert logits.shape == (2, 2, 49, 49) and set(terms) == {"main", "aux_meta", "base"}
    assert all(torch.isfinite(v) for v in terms.values())


def test_fscs_ways_are_bam_episodes_with_their_own_class_left_out():
    """FS-CS (``way_logits``): way n's logits are those of BAM on the FS-S episode of way n's shots, at
    ``layer3``'s grid; a 1-way episode, upsampled, is exactly ``forward_shots``; with the ways' classes
    (training) each way leaves its own class out of the base map, as ``class_id`` does in FS-S."""
    net = small_bam("hm", shots=2).eval()
    with torch.no_grad():  # the ensemble starts ignoring the base map (weights [1, 0]): let it count
        net.learner.cls_merge.weight.copy_(torch.tensor([1.0, -0.5]).view(1, 2, 1, 1))
    query, supports, masks = episode(4, batch=2, size=49)
    supports, masks = supports.view(2, 2, 2, 3, 49, 49), masks.view(2, 2, 2, 49, 49)
    classes = torch.tensor([[5, 12], [19, 6]])
    with torch.no_grad():
        one_way = net.way_logits(query, supports[:, :1], masks[:, :1])
        assert one_way.shape == (2, 1, 1, 2, 7, 7)
        fs_s = net.forward_shots(query, supports[:, 0], masks[:, 0])  # [B, 1, 2, 49, 49]
        torch.testing.assert_close(
            F.interpolate(one_way[:, 0, 0], (49, 49), mode="bilinear", align_corners=True),
            fs_s[:, 0],
            rtol=0,
            atol=1e-6,
        )
        every_class = net.way_logits(query, supports, masks)
        left_out = net.way_logits(query, supports, masks, classes)
        for n in range(2):
            expected = net.forward_outputs(query, supports[:, n], masks[:, n])["final"]
            torch.testing.assert_close(every_class[:, n, 0], expected, rtol=1e-5, atol=1e-6)
            expected = net.forward_outputs(query, supports[:, n], masks[:, n], classes[:, n])["final"]
            torch.testing.assert_close(left_out[:, n, 0], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(left_out[:, :, :, 0], every_class[:, :, :, 0])  # the class moves the background
    torch.testing.assert_close(left_out[:, :, :, 1], every_class[:, :, :, 1])  # not the foreground


def test_runs_on_another_backbone():
    """On a torchvision ResNet the levels are resized to the middle one's grid."""
    torch.manual_seed(0)
    net = BAM(ResNet("resnet18", weights=None), masking="hm", reduce_dim=16).eval()
    query, supports, masks = episode(2, batch=1, size=64)
    with torch.inference_mode():
        assert net(query, supports, masks).shape == (1, 2, 64, 64)


if __name__ == "__main__":  # regenerate a golden: python -m tests.models.test_bam /path/to/BAM [resnet50|vgg]
    import tempfile

    name = sys.argv[2] if len(sys.argv) > 2 else "resnet50"
    golden = PARITY[name][2]
    outputs, losses = {}, {}
    for k in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = reference_outputs(Path(sys.argv[1]), k, Path(tmp), name)
        outputs[f"{k}shot"] = {key: out[key] for key in ("final", "meta", "base")}
        losses[f"{k}shot"] = {key: out[key] for key in out if key.startswith("loss_")}
    golden.parent.mkdir(exist_ok=True)
    torch.save(outputs, golden)
    all_losses = torch.load(LOSS_GOLDEN, weights_only=True) if LOSS_GOLDEN.is_file() else {}
    torch.save(all_losses | {name: losses}, LOSS_GOLDEN)
    print(f"wrote {golden} and the {name} entry of {LOSS_GOLDEN}")
