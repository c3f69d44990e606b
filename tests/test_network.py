"""Tests of the Med-SORA image network (bundle/scripts/networks)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from scripts.networks import FUSION_MODES, CrossAttentionFusion, MedSORAImageNet

TINY = dict(
    num_organs=7,
    img_size=(32, 32, 8),
    slice_patch_size=8,
    hidden_size=32,
    mlp_dim=64,
    num_layers_2d=1,
    num_heads=2,
    volume_patch_size=(16, 16, 8),
    num_layers_3d=1,
)
EXPECTED_HEADS = {
    "2d": {"2d"},
    "3d": {"3d"},
    "concat": {"2d", "3d", "fusion"},
    "cross_attention": {"2d", "3d", "fusion"},
}


def tiny_net(**overrides) -> MedSORAImageNet:
    torch.manual_seed(0)
    return MedSORAImageNet(**{**TINY, **overrides})


def sample(batch: int = 2, size=(32, 32, 8)) -> torch.Tensor:
    return torch.rand(batch, 1, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_output_shapes_and_keys(mode):
    net = tiny_net(fusion=mode)
    x = sample(batch=3)
    out = net.train()(x)
    assert set(out) == EXPECTED_HEADS[mode] | {"slice_features"}
    for head in EXPECTED_HEADS[mode]:
        assert out[head].shape == (3, 7)
    expected_slices = 1 if mode == "3d" else 8
    assert out["slice_features"].shape == (3, expected_slices, 32)
    net.eval()
    with torch.no_grad():
        logits = net(x)
        assert torch.is_tensor(logits) and logits.shape == (3, 7)
        main = "fusion" if mode in ("concat", "cross_attention") else mode
        assert torch.allclose(logits, net.train()(x)[main], atol=1e-6)
        assert net.slice_features(x).shape == (3, expected_slices, 32)


def test_each_mode_builds_only_its_parts():
    names = {mode: {n.split(".")[0] for n, _ in tiny_net(fusion=mode).named_parameters()} for mode in FUSION_MODES}
    assert names["2d"] == {"slice_encoder", "heads"}
    assert names["3d"] == {"volume_encoder", "heads"}
    assert names["concat"] == {"slice_encoder", "volume_encoder", "heads"}
    assert names["cross_attention"] == {"slice_encoder", "volume_encoder", "fusion", "heads"}
    for mode in FUSION_MODES:
        assert set(tiny_net(fusion=mode).heads) == EXPECTED_HEADS[mode]
    assert tiny_net(fusion="concat").heads["fusion"][0].normalized_shape == (64,)


def test_slice_features_are_per_slice_encodings():
    net = tiny_net(fusion="2d", in_channels=2).eval()
    x = torch.rand(2, 2, 32, 32, 8)
    with torch.no_grad():
        features = net.slice_features(x)
        third_slice = net.slice_encoder(x[..., 2])
    assert torch.allclose(features[:, 2], third_slice, atol=1e-5)


def test_cross_attention_fusion_is_residual_broadcast():
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(hidden_size=16, num_heads=2).eval()
    f3d, f2d = torch.randn(2, 16), torch.randn(2, 5, 16)
    f_bar = fusion(f3d, f2d)
    assert f_bar.shape == (2, 5, 16)
    f_out = f_bar - f2d
    assert f_out.abs().max() > 1e-3
    assert torch.allclose(f_out, f_out[:, :1].expand_as(f_out), atol=1e-6)
    assert not torch.allclose(fusion(f3d + torch.randn(2, 16), f2d), f_bar, atol=1e-4)
    torch.nn.init.zeros_(fusion.cross_attention.out_proj.weight)
    torch.nn.init.zeros_(fusion.cross_attention.out_proj.bias)
    assert torch.equal(fusion(f3d, f2d), f2d)
    with pytest.raises(ValueError, match="feature size"):
        fusion(torch.randn(2, 8), f2d)


def test_network_fusion_output_is_f2d_when_attention_is_zeroed():
    net = tiny_net(fusion="cross_attention").eval()
    x = sample()
    with torch.no_grad():
        before = net.slice_features(x)
        torch.nn.init.zeros_(net.fusion.cross_attention.out_proj.weight)
        torch.nn.init.zeros_(net.fusion.cross_attention.out_proj.bias)
        assert torch.equal(net.slice_features(x), net.encode_slices(x))
    assert not torch.allclose(before, net.encode_slices(x), atol=1e-4)


def test_gradients_reach_both_encoders_through_fusion_head():
    net = tiny_net(fusion="cross_attention").train()
    out = net(sample())
    F.cross_entropy(out["fusion"], torch.tensor([0, 1])).backward()
    for encoder in (net.slice_encoder, net.volume_encoder):
        grads = [p.grad for p in encoder.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in net.heads["2d"].parameters())


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_image_loss_reaches_every_parameter(mode):
    """DDP without find_unused_parameters needs a gradient for every parameter."""
    net = tiny_net(fusion=mode).train()
    out = net(sample())
    sum(F.cross_entropy(out[head], torch.tensor([0, 1])) for head in EXPECTED_HEADS[mode]).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="fusion") as err:
        tiny_net(fusion="sum")
    assert "cross_attention" in str(err.value)
    with pytest.raises(ValueError, match="slice_backbone"):
        tiny_net(slice_backbone="timm")
    with pytest.raises(ValueError, match="pretrained_dir"):
        tiny_net(slice_backbone="huggingface")
    with pytest.raises(ValueError, match=r"img_size.*slice_patch_size"):
        tiny_net(img_size=(36, 32, 8))
    with pytest.raises(ValueError, match=r"img_size.*volume_patch_size"):
        tiny_net(img_size=(32, 32, 12))
    with pytest.raises(ValueError, match=r"img_size.*volume_patch_size"):
        tiny_net(fusion="3d", img_size=(40, 40, 8))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=16
    )
    ViTModel(config).save_pretrained(path)
    preprocessor = {"do_normalize": True, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.4]}
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


def test_huggingface_backbone_matches_reference_cls(hf_dir):
    from transformers import ViTModel

    net = tiny_net(
        slice_backbone="huggingface",
        pretrained_dir=hf_dir,
        img_size=(24, 24, 4),
        volume_patch_size=(8, 8, 4),
        hidden_size=16,
    ).eval()
    assert net.feature_size == 32 and net.volume_projection is not None
    reference = ViTModel.from_pretrained(hf_dir, local_files_only=True, add_pooling_layer=False).eval()
    x = sample(batch=2, size=(24, 24, 4))
    slices = x.permute(0, 4, 1, 2, 3).reshape(8, 1, 24, 24).repeat(1, 3, 1, 1)
    pixels = F.interpolate(slices, size=(32, 32), mode="bilinear", align_corners=False)
    pixels = (pixels - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state[:, 0].view(2, 4, 32)
        assert torch.allclose(net.encode_slices(x), expected, atol=1e-5)
        assert net(x).shape == (2, 7)
        assert net.slice_features(x).shape == (2, 4, 32)


def test_huggingface_missing_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        tiny_net(slice_backbone="huggingface", pretrained_dir=tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        tiny_net(slice_backbone="huggingface", pretrained_dir=tmp_path)


def test_overfits_two_samples():
    net = tiny_net(fusion="cross_attention").train()
    x = torch.rand(2, 1, 32, 32, 8, generator=torch.Generator().manual_seed(3))
    x[1] = 0.5 * x[1] + 0.5  # same noise statistics would average out over the slices of F2D
    y = torch.tensor([2, 5])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        out = net(x)
        return sum(F.cross_entropy(out[head], y) for head in ("2d", "3d", "fusion"))

    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = loss_fn().item()
        assert net.eval()(x).argmax(dim=1).tolist() == y.tolist()
    assert final < 0.25 * initial
