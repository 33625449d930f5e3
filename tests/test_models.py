"""Tests for funloader.models: architectures checked against shared/design/models.md and the paper."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import funloader.models as fm
from funloader.channels import channel_indices as shared_channel_indices

# Exact counts from shared/design/models.md (sum of p.numel()).
MODELS_MD_PARAMS = {
    "efun_s_plus": 2_540_728, "efun_s": 3_394_390, "efun": 4_233_448, "efun_l": 6_209_180,
    "efun_variant_a": 5_310_060, "efun_variant_b": 5_625_960, "resfun": 10_398_056,
    "lefun": 4_270_312, "lefun_e2e": 4_270_312,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "mobilenetv2_100": 3_504_872,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
}
# Multiply-adds (FlopCounterMode total / 2, batch 1) from models.md; B1 at its 240x240 resolution.
MODELS_MD_MMACS = {
    "efun_s_plus": 516.4, "efun_s": 602.7, "efun": 837.5, "efun_l": 1602.7, "efun_variant_a": 315.8,
    "efun_variant_b": 454.0, "resfun": 2009.7, "efficientnet_b0": 385.8, "efficientnet_b1": 686.8,
    "mobilenetv2_100": 300.8, "resnet18": 1814.1, "resnet34": 3663.8, "resnet50": 4089.2,
}
# The paper's parameter figures in millions (Tables 1, 2, 6, 8).
PAPER_PARAMS_M = {
    "efun": 4.2, "efun_s_plus": 2.5, "efun_s": 3.4, "efun_l": 6.2, "resfun": 10.4, "efun_variant_a": 5.3,
    "efun_variant_b": 5.6, "lefun": 4.3, "lefun_e2e": 4.3, "efficientnet_b0": 5.3, "efficientnet_b1": 7.8,
    "mobilenetv2_100": 3.5, "resnet18": 11.7, "resnet34": 21.8,
}
EXPECTED_NAMES = {
    "resfun", "efun_s_plus", "efun_s", "efun", "efun_l", "efun_variant_a", "efun_variant_b", "lefun",
    "lefun_e2e", "efficientnet_b0", "efficientnet_b1", "mobilenetv2_100", "resnet18", "resnet34",
    "resnet50", "fun_test",
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    """A small input of the right kind: DCT 192x16x16, RGB 3x64x64, YCbCr [0,255] 3x64x64."""
    kind = fm.model_info(name).input
    generator = torch.Generator().manual_seed(0)
    if kind == "dct":
        return torch.randn(batch, 192, 16, 16, generator=generator)
    if kind == "ycbcr":
        return torch.rand(batch, 3, 64, 64, generator=generator) * 255
    return torch.randn(batch, 3, 64, 64, generator=generator)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine parameters and running statistics (so eval mode is not identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                size = layer.num_features
                layer.weight.copy_(0.5 + torch.rand(size, generator=generator))
                layer.bias.copy_(0.2 * torch.randn(size, generator=generator))
                layer.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(size, generator=generator))


def test_registry_lists_every_model():
    assert set(fm.list_models()) == EXPECTED_NAMES
    assert set(fm.list_models("rgb")) == {"efficientnet_b0", "efficientnet_b1", "mobilenetv2_100",
                                          "resnet18", "resnet34", "resnet50"}
    with pytest.raises(ValueError, match="unknown model"):
        fm.create_model("efun_xl")
    with pytest.raises(TypeError, match="unexpected"):
        fm.create_model("efun", dct_init=True)
    with pytest.raises(ValueError, match="3-channel"):
        fm.create_model("lefun", in_channels=192)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_forward_backward(name):
    torch.manual_seed(0)
    model = fm.create_model(name, num_classes=7)
    model.train()
    x = small_input(name)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing
    # The very first layer receives a non-zero gradient (the signal reaches the input).
    first_name, first = trainable[0]
    assert first.grad.abs().sum() > 0, first_name
    if name == "lefun":
        # Only the 8x8 transform trains in front of the frozen eFUN (paper Section 4.6).
        assert [n for n, _ in trainable] == ["transform.weight"]
    else:
        assert len(trainable) == len(list(model.parameters()))


@pytest.mark.parametrize("name", sorted(MODELS_MD_PARAMS))
def test_parameter_count_matches_models_md_and_paper(name):
    model = fm.create_model(name)
    count = n_params(model)
    assert count == MODELS_MD_PARAMS[name]
    assert model.default_cfg["reference_params"] == count
    if name in PAPER_PARAMS_M:
        assert abs(count / 1e6 - PAPER_PARAMS_M[name]) <= 0.02 * PAPER_PARAMS_M[name]


def test_fun_test_is_tiny_and_uses_the_same_blocks():
    model = fm.create_model("fun_test")
    assert n_params(model) < 100_000
    assert model.in_channels == 192
    blocks = [m for m in model.modules() if isinstance(m, fm.MBConv)]
    assert len(blocks) == 3
    assert any(isinstance(m, fm.SqueezeExcite) for m in model.modules())
    assert any(isinstance(m, fm.DropPath) for m in model.modules())


@pytest.mark.parametrize("name", sorted(MODELS_MD_MMACS))
def test_multiply_adds_match_models_md(name):
    from torch.utils.flop_counter import FlopCounterMode

    model = fm.create_model(name).eval()
    x = torch.zeros((1,) + tuple(model.default_cfg["input_size"]))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    assert counter.get_total_flops() / 2e6 == pytest.approx(MODELS_MD_MMACS[name], abs=0.06)


def test_output_resolution_of_fun_models():
    x = torch.zeros(1, 192, 28, 28)
    with torch.inference_mode():
        assert fm.create_model("efun").eval().forward_features(x).shape == (1, 1280, 14, 14)
        assert fm.create_model("efun_s_plus").eval().forward_features(x).shape == (1, 960, 14, 14)
        assert fm.create_model("efun_variant_a").eval().forward_features(x).shape == (1, 1280, 7, 7)
        assert fm.create_model("resfun").eval().forward_features(x).shape == (1, 1024, 7, 7)


def test_efun_stage_table_and_block_structure():
    model = fm.create_model("efun")
    depths = [len(stage) for stage in model.blocks]
    assert depths == [3, 6, 1]
    first = model.blocks[0][0]
    assert first.expand.conv.weight.shape == (768, 192, 1, 1)
    assert first.depthwise.conv.weight.shape == (768, 1, 5, 5)
    assert first.se.conv_reduce.weight.shape == (48, 768, 1, 1)
    assert not first.has_residual
    assert model.blocks[0][1].has_residual
    assert isinstance(first.depthwise.act, nn.SiLU)
    assert fm.make_divisible(140) == 144 and fm.make_divisible(180) == 184 and fm.make_divisible(352) == 352


# ----------------------------------------------------------------------------- input compression

TABLE7 = {"64/64/64": (192, 4.2334), "64/12/12": (88, 3.9930), "44/10/10": (64, 3.9559),
          "32/8/8": (48, 3.9350), "14/5/5": (24, 3.9095)}


def test_channel_helpers_are_reexported():
    assert fm.channel_indices is shared_channel_indices
    assert fm.parse_keep("44/10/10") == (44, 10, 10)
    assert len(fm.channel_indices("44/10/10")) == 64


@pytest.mark.parametrize("keep", sorted(TABLE7))
def test_table7_parameter_counts(keep):
    channels, params_m = TABLE7[keep]
    model = fm.create_model("efun")
    rebuilt = fm.select_input_channels(model, keep, mode="rebuild")
    assert rebuilt.in_channels == channels
    assert round(n_params(rebuilt) / 1e6, 4) == params_m
    assert round(n_params(fm.create_model("efun", in_channels=channels)) / 1e6, 4) == params_m
    # Exact slicing keeps the expand width: each dropped channel saves 768 weights.
    assert n_params(fm.select_input_channels(model, keep)) == 4_233_448 - 768 * (192 - channels)


def test_rebuild_reuses_trained_weights():
    model = fm.create_model("efun").eval()
    randomize_batchnorm(model)
    keep = "44/10/10"
    kept = fm.channel_indices(keep)
    rebuilt = fm.select_input_channels(model, keep, mode="rebuild").eval()
    new_expand = rebuilt.blocks[0][0].expand.conv.weight
    old_expand = model.blocks[0][0].expand.conv.weight[:, kept]
    assert new_expand.shape == (256, 64, 1, 1)
    # Every rebuilt expand filter is one of the trained filters restricted to the kept channels.
    matches = (new_expand[:, None, :, 0, 0] == old_expand[None, :, :, 0, 0]).all(-1).any(-1)
    assert matches.all()
    # All later blocks are shared unchanged.
    assert torch.equal(rebuilt.blocks[1][0].expand.conv.weight, model.blocks[1][0].expand.conv.weight)
    # Keeping everything reproduces the model exactly.
    full = fm.select_input_channels(model, "64/64/64", mode="rebuild").eval()
    x = torch.randn(2, 192, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-4)
        assert rebuilt(x[:, kept]).shape == (2, 1000)


@pytest.mark.parametrize("name,keep", [("efun", "44/10/10"), ("efun", "14/5/5"), ("efun_s_plus", "64/12/12"),
                                       ("efun_variant_b", "32/8/8"), ("resfun", "44/10/10")])
def test_zeroed_inputs_equal_pruned_first_layer(name, keep):
    torch.manual_seed(1)
    model = fm.create_model(name).eval()
    randomize_batchnorm(model)
    kept = fm.channel_indices(keep)
    pruned = fm.select_input_channels(model, keep).eval()
    assert pruned.in_channels == len(kept)
    assert pruned.default_cfg["input_size"][0] == len(kept)
    x = torch.randn(2, 192, 28, 28)
    zeroed = torch.zeros_like(x)
    zeroed[:, kept] = x[:, kept]
    with torch.inference_mode():
        reference = model(zeroed)
        logits = pruned(x[:, kept])
        unzeroed = model(x)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
    # The dropped channels did matter for the full model, so the equality is not vacuous.
    assert not torch.allclose(unzeroed, reference, rtol=1e-3, atol=1e-3)
    # The original model is untouched.
    assert model.in_channels == 192


def test_select_input_channels_rejects_unsupported_models():
    with pytest.raises(ValueError, match="expand"):
        fm.select_input_channels(fm.create_model("efun_variant_a"), "44/10/10")
    with pytest.raises(ValueError, match="192"):
        fm.select_input_channels(fm.create_model("efficientnet_b0"), "44/10/10")
    with pytest.raises(TypeError, match="LeFUN"):
        fm.select_input_channels(fm.create_model("lefun"), "44/10/10")
    with pytest.raises(ValueError, match="keep-spec"):
        fm.select_input_channels(fm.create_model("efun"), "44/10")
    with pytest.raises(ValueError, match="mode"):
        fm.select_input_channels(fm.create_model("efun"), "44/10/10", mode="zero")


# ----------------------------------------------------------------------------- LeFUN


def reference_jpeg_dct(image: torch.Tensor) -> torch.Tensor:
    """JPEG forward DCT of each 8x8 block of a ``(N, 3, H, W)`` YCbCr [0,255] image, written from the
    JPEG standard's formula (level shift 128, C(0) = 1/sqrt(2)), in float64.

    Returns ``(N, 192, H/8, W/8)`` with ``channel = 64 * component + 8 * v + u``.
    """
    n, c, h, w = image.shape
    positions = torch.arange(8, dtype=torch.float64)
    cos_table = torch.cos((2 * positions[None, :] + 1) * positions[:, None] * math.pi / 16)  # [freq, pos]
    norm = torch.tensor([1 / math.sqrt(2)] + [1.0] * 7, dtype=torch.float64)
    blocks = (image.double() - 128).reshape(n, c, h // 8, 8, w // 8, 8)  # n c by y bx x
    coefficients = torch.einsum("ncbyax,vy,ux->ncvuba", blocks, cos_table, cos_table)
    coefficients = coefficients * (0.25 * norm[:, None] * norm[None, :])[None, None, :, :, None, None]
    return coefficients.reshape(n, c * 64, h // 8, w // 8)


def test_reference_dct_sanity():
    flat = torch.full((1, 3, 8, 8), 200.0)
    coefficients = reference_jpeg_dct(flat)
    assert coefficients[0, 0, 0, 0] == pytest.approx(8 * (200 - 128))
    assert coefficients[0, 1:64].abs().max() < 1e-9


def test_lefun_dct_init_reproduces_efun_on_jpeg_dct():
    torch.manual_seed(2)
    lefun = fm.create_model("lefun_e2e").eval()
    randomize_batchnorm(lefun)
    assert lefun.transform.weight.shape == (192, 3, 8, 8) and lefun.transform.bias is None
    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)) * 255
    expected_input = reference_jpeg_dct(image)
    with torch.inference_mode():
        coefficients = lefun.forward_transform(image)
    torch.testing.assert_close(coefficients.double(), expected_input, rtol=1e-5, atol=2e-3)
    # eFUN is trained on normalised coefficients; fold a per-channel scale (here 1/std of the
    # coefficients, as a loader's statistics would give) into the DCT weights, which keeps the
    # random network well conditioned, and compare the logits.
    std = expected_input.transpose(0, 1).reshape(192, -1).std(1)
    lefun.init_dct(channel_scale=1.0 / std)
    normalised = (expected_input / std[None, :, None, None]).float()
    with torch.inference_mode():
        logits = lefun(image)
        efun_logits = lefun.backbone(normalised)
    assert efun_logits.abs().max() > 1e-2
    torch.testing.assert_close(logits, efun_logits, rtol=1e-4, atol=1e-4 * float(efun_logits.abs().max()))
    # The transform is the only thing between the image and eFUN: a random one gives other logits.
    random_lefun = fm.create_model("lefun_e2e", dct_init=False, backbone=lefun.backbone).eval()
    with torch.inference_mode():
        assert not torch.allclose(random_lefun(image), efun_logits, rtol=1e-2, atol=1e-2)


def test_dct_basis_is_orthonormal_and_scalable():
    basis = fm.jpeg_dct_basis().reshape(64, 64)
    torch.testing.assert_close(basis @ basis.T, torch.eye(64, dtype=torch.float64))
    scale = torch.arange(1, 193, dtype=torch.float64)
    weight = fm.jpeg_dct_weight(channel_scale=scale, dtype=torch.float64)
    torch.testing.assert_close(weight[100, 1], fm.jpeg_dct_basis()[36] * 101)
    assert weight[100, 0].abs().max() == 0 and weight[100, 2].abs().max() == 0
    with pytest.raises(ValueError, match="192"):
        fm.jpeg_dct_weight(channel_scale=[1.0] * 64)


def test_lefun_freezes_backbone_but_lefun_e2e_does_not():
    lefun = fm.create_model("lefun")
    assert n_params(lefun) == 4_270_312
    assert not any(p.requires_grad for p in lefun.backbone.parameters())
    lefun.train()
    assert lefun.training and lefun.transform.training
    assert not lefun.backbone.training
    assert not any(m.training for m in lefun.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    stats_before = lefun.backbone.blocks[0][0].expand.bn.running_mean.clone()
    lefun(small_input("lefun")).sum().backward()
    assert torch.equal(lefun.backbone.blocks[0][0].expand.bn.running_mean, stats_before)
    assert lefun.transform.weight.grad is not None

    e2e = fm.create_model("lefun_e2e").train()
    assert all(p.requires_grad for p in e2e.parameters())
    assert e2e.backbone.training
    assert e2e.default_cfg["drop_rate"] == 0.2 and e2e.default_cfg["input"] == "ycbcr"


# ----------------------------------------------------------------------------- defaults and heads


@pytest.mark.parametrize("name,drop_rate,drop_path_rate", [
    ("efun_s_plus", 0.2, 0.2), ("efun_s", 0.2, 0.2), ("efun", 0.2, 0.2), ("efun_l", 0.3, 0.3),
    ("efficientnet_b0", 0.2, 0.2)])
def test_paper_regularisation_defaults(name, drop_rate, drop_path_rate):
    model = fm.create_model(name)
    assert model.dropout.p == drop_rate
    assert model.default_cfg["drop_rate"] == drop_rate
    assert model.default_cfg["drop_path_rate"] == drop_path_rate
    blocks = [m for m in model.modules() if isinstance(m, fm.MBConv)]
    # Stochastic depth grows linearly with the block index (block i of n: rate * i / n), on residual blocks.
    residual_rates = [(i, b.drop_path.p) for i, b in enumerate(blocks) if b.has_residual]
    assert len(residual_rates) >= 5
    for index, rate in residual_rates:
        assert rate == pytest.approx(drop_path_rate * index / len(blocks))
    overridden = fm.create_model(name, drop_rate=0.0, drop_path_rate=0.0)
    assert overridden.dropout.p == 0.0
    assert not any(isinstance(m, fm.DropPath) for m in overridden.modules())


def test_drop_path_behaviour():
    layer = fm.DropPath(0.5)
    x = torch.ones(4000, 3)
    layer.train()
    out = layer(x)
    kept = out[:, 0] != 0
    assert torch.all(out[kept] == 2.0) and torch.all(out[~kept] == 0.0)
    assert 0.4 < kept.float().mean() < 0.6
    layer.eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError):
        fm.DropPath(1.0)


@pytest.mark.parametrize("name", ["efun", "resfun", "lefun", "mobilenetv2_100"])
def test_reset_classifier(name):
    model = fm.create_model(name)
    model.reset_classifier(10)
    model.eval()
    x = small_input(name)
    with torch.inference_mode():
        assert model(x).shape == (2, 10)
    classifier = (model.backbone if isinstance(model, fm.LeFUN) else model).classifier
    assert classifier.weight.shape == (10, model.num_features)
    assert all(p.requires_grad for p in classifier.parameters())
    model.reset_classifier(0)
    with torch.inference_mode():
        assert model(x).shape == (2, model.num_features)


def test_default_cfg_for_plots():
    cfg = fm.create_model("efun").default_cfg
    assert cfg["input_size"] == (192, 28, 28)
    assert cfg["paper_top1"] == 77.0 and cfg["paper_params_m"] == 4.2 and cfg["paper_images_per_s"] == 124
    assert fm.create_model("efficientnet_b1").default_cfg["input_size"] == (3, 240, 240)
    assert fm.create_model("efun", in_channels=64).default_cfg["input_size"] == (64, 28, 28)


# ----------------------------------------------------------------------------- deployment paths


def test_channels_last_matches_contiguous():
    model = fm.create_model("efun").eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 192, 28, 28)
    with torch.inference_mode():
        reference = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)


def test_torchscript_and_export():
    model = fm.create_model("fun_test").eval()
    randomize_batchnorm(model)
    x = small_input("fun_test")
    with torch.no_grad():
        reference = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), reference)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), reference)
    # LeFUN scripts too (the level shift is a float constant).
    lefun = torch.jit.script(fm.create_model("lefun_e2e").eval())
    with torch.no_grad():
        assert lefun(small_input("lefun_e2e")).shape == (2, 1000)


def test_onnx_export_runs_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    model = fm.create_model("fun_test").eval()
    randomize_batchnorm(model)
    x = small_input("fun_test")
    path = tmp_path / "fun_test.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["dct"], output_names=["logits"], dynamo=True)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    (logits,) = ReferenceEvaluator(graph).run(None, {graph.graph.input[0].name: x.numpy()})
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = fm.create_model("fun_test").eval()
    randomize_batchnorm(model)
    x = small_input("fun_test")
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
