"""Mixed precision: every model runs under bf16 autocast, and the correlation stays in float32."""

from __future__ import annotations

import pytest
import torch

from fss.models import MODELS, build_model
from fss.models.conv import Conv3d
from fss.models.correlation import cosine_correlation

#: tiny, fast instances of every registered model (VAT's learner at feature_size 8 as in
#: tests/models/test_vat.py); default: a ResNet-18
OPTIONS = {
    "vat": {"backbone": "resnet50", "benchmark": "coco", "feature_size": 8},
    "bam": {"backbone": "resnet18", "reduce_dim": 16},
    "ntrenet": {"backbone": "resnet18", "reduce_dim": 16, "ppm_scales": [4, 2]},
}


def options(name: str) -> dict:
    return OPTIONS.get(name, {"backbone": "resnet18"})


def test_correlation_is_float32_and_close_to_fp32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    query, support = torch.randn(2, 64, 6, 6, generator=gen), torch.randn(2, 64, 5, 5, generator=gen)
    reference = cosine_correlation(query, support)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # bf16 features, as a backbone under autocast hands them over
        mixed = cosine_correlation(query.bfloat16(), support.bfloat16())
    assert mixed.dtype == torch.float32 and mixed.shape == (2, 6, 6, 5, 5)
    # only the bf16 rounding of the inputs (8 bits of mantissa) remains; a bf16 dot product is ~10x worse
    torch.testing.assert_close(mixed, reference, atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_under_autocast(name: str, dtype: torch.dtype) -> None:
    """``bf16-mixed`` and ``16-mixed``: finite logits close to float32's, also for an empty support mask."""
    torch.manual_seed(0)
    model = build_model(name, masking="hm", weights=None, **options(name)).eval()
    gen = torch.Generator().manual_seed(1)
    query, supports = torch.randn(1, 3, 64, 64, generator=gen), torch.randn(1, 2, 3, 64, 64, generator=gen)
    masks = torch.zeros(1, 2, 64, 64)
    masks[:, 0, 16:48, 16:48] = 1  # the second shot's mask is empty: ASNet masks every key
    with torch.no_grad():
        reference = model.forward_shots(query, supports, masks).float()
        with torch.autocast("cpu", dtype=dtype):
            mixed = model.forward_shots(query, supports, masks).float()
    assert mixed.shape == reference.shape == (1, 1 if model.fuses_shots else 2, 2, 64, 64)
    assert torch.isfinite(mixed).all()
    # bf16 keeps ~3 significant digits through the learner: same logits up to a few percent of their range
    scale = reference.abs().max()
    assert (mixed - reference).abs().max() < 0.1 * scale + 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_under_autocast_has_finite_gradients(name: str, dtype: torch.dtype) -> None:
    """At 64 px the learners squeeze the support dims to 1x1/2x2 under 3x3/5x5 kernels, where
    oneDNN's bf16 weight gradient used to come out NaN (fss/models/conv.py); under float16,
    ASNet's -1e9 attention mask used to overflow (fss/models/aslayer.py)."""
    torch.manual_seed(0)
    model = build_model(name, masking="hm", weights=None, **options(name)).train()
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 20:44, 20:44] = 1
    # bf16's NaNs were erratic: 3 episodes; float16 overflow is deterministic, and CPU float16
    # backward passes are slow (no native kernels): 1 episode
    for seed in range(3 if dtype == torch.bfloat16 else 1):
        gen = torch.Generator().manual_seed(seed)
        query, supports = (
            torch.randn(2, 3, 64, 64, generator=gen),
            torch.randn(2, 1, 3, 64, 64, generator=gen),
        )
        masks = (torch.rand(2, 1, 64, 64, generator=gen) > 0.5).float()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            logits = model(query, supports, masks)
        torch.nn.functional.cross_entropy(logits.float(), target).backward()
        grads = {n: p.grad for n, p in model.learner.named_parameters() if p.grad is not None}
        assert grads and all(torch.isfinite(g).all() for g in grads.values()), [
            n for n, g in grads.items() if not torch.isfinite(g).all()
        ]


def test_overhanging_convolution_runs_in_float32_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    conv = Conv3d(8, 16, (1, 5, 5), stride=(1, 4, 4), padding=(0, 2, 2))
    tiny, large = torch.randn(2, 8, 4, 2, 2), torch.randn(2, 8, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_tiny, out_large = conv(tiny), conv(large)
        with torch.no_grad():  # inference keeps bf16: only the weight gradient is affected
            assert conv(tiny).dtype == torch.bfloat16
    assert out_tiny.dtype == torch.float32 and out_large.dtype == torch.bfloat16
    (out_tiny.sum() + out_large.float().sum()).backward()
    assert torch.isfinite(conv.weight.grad).all()
