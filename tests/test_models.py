"""The model registry: exact parameter counts, forward/backward of every family, determinism, DropPath."""
import pytest
import timm
import torch

import msvit
from msvit.layers import DropPath
from msvit.neurons import LIF

# Trainable parameters of the published models (the papers' tables and the authors' logs).
EXPECTED_PARAMS = [
    ("msvit_cifar_4_384", dict(num_classes=10), 7_558_762),
    ("msvit_cifar_4_384", dict(num_classes=100), 7_593_412),
    ("qkformer_cifar_4_384", dict(num_classes=10), 6_706_234),
    ("qkformer_cifar_4_384", dict(num_classes=100), 6_740_884),
    ("msvit_10_384", dict(num_classes=1000), 17_686_216),
    ("msvit_10_512", dict(num_classes=1000), 31_232_616),
    ("msvit_10_768", dict(num_classes=1000), 69_802_408),
    ("qkformer_10_384", dict(num_classes=1000), 16_473_688),
    ("qkformer_10_512", dict(num_classes=1000), 29_079_336),
    ("qkformer_10_768", dict(num_classes=1000), 64_962_760),
    ("qkformer_dvs_2_256", dict(num_classes=10, mlp_ratio=1), 1_504_138),
    ("qkformer_dvs_2_256", dict(num_classes=11, mlp_ratio=4), 1_999_371),
    # MSViT-DVS = QKFormer-DVS + the stage-1 p branch (3*128^2 conv weights + 2*128 BN)
    ("msvit_dvs_2_256", dict(num_classes=10, mlp_ratio=1), 1_504_138 + 49_408),
    ("msvit_dvs_2_256", dict(num_classes=11, mlp_ratio=4), 1_999_371 + 49_408),
]


def test_every_model_is_registered_with_timm():
    assert set(msvit.MODEL_NAMES) <= set(timm.list_models())
    assert sorted(msvit.MODEL_NAMES) == sorted(
        ["msvit_cifar_4_384", "msvit_10_384", "msvit_10_512", "msvit_10_768", "msvit_dvs_2_256",
         "qkformer_cifar_4_384", "qkformer_10_384", "qkformer_10_512", "qkformer_10_768",
         "qkformer_dvs_2_256"])
    assert {name for name, _, _ in EXPECTED_PARAMS} == set(msvit.MODEL_NAMES)


@pytest.mark.parametrize("name,kwargs,expected", EXPECTED_PARAMS,
                         ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in kw.items())}" for n, kw, _ in EXPECTED_PARAMS])
def test_parameter_count_is_exact(name, kwargs, expected):
    model = timm.create_model(name, **kwargs)
    assert msvit.count_parameters(model) == expected


def test_default_num_classes_and_pretrained_cfg():
    cifar = timm.create_model("msvit_cifar_4_384", num_classes=100)
    assert cifar.pretrained_cfg["input_size"] == (3, 32, 32)
    assert cifar.pretrained_cfg["num_classes"] == 100
    assert cifar.pretrained_cfg["classifier"] == "head"
    assert cifar.pretrained_cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
    dvs = timm.create_model("qkformer_dvs_2_256")
    assert dvs.num_classes == 11 and dvs.T == 16 and dvs.pretrained_cfg["input_size"] == (2, 128, 128)
    imagenet = timm.create_model("msvit_10_384", T=4, num_classes=1000)
    assert imagenet.pretrained_cfg["input_size"] == (3, 224, 224)
    assert imagenet.pretrained_cfg["crop_pct"] == 0.875
    assert imagenet.get_classifier() is imagenet.head and imagenet.head.out_features == 1000


def test_timm_extra_keywords_are_tolerated():
    model = timm.create_model("msvit_cifar_4_384", pretrained_cfg=None, pretrained_cfg_overlay=None,
                              cache_dir=None, num_classes=10)
    assert model.num_classes == 10


def test_unknown_keyword_is_an_error():
    with pytest.raises(TypeError, match="embed_dimm"):
        timm.create_model("msvit_cifar_4_384", embed_dimm=96)


def test_attention_thresholds_per_family():
    def thresholds(model):
        return {m.v_threshold for name, m in model.named_modules() if name.endswith("attn_lif")}
    assert thresholds(timm.create_model("msvit_cifar_4_384")) == {1.0}
    assert thresholds(timm.create_model("qkformer_cifar_4_384")) == {0.5}
    assert thresholds(timm.create_model("msvit_dvs_2_256")) == {0.5}
    assert thresholds(timm.create_model("msvit_cifar_4_384", attn_threshold=0.5)) == {0.5}
    others = {m.v_threshold for name, m in timm.create_model("qkformer_cifar_4_384").named_modules()
              if isinstance(m, LIF) and not name.endswith("attn_lif")}
    assert others == {1.0}


def test_structure_of_stages():
    msvit_model = timm.create_model("msvit_10_384")
    assert msvit_model.dims == [192, 192, 384]
    assert [len(msvit_model.stage1), len(msvit_model.stage2), len(msvit_model.stage3)] == [1, 2, 7]
    assert msvit_model.stage1[0].attn.multi_scale and msvit_model.stage2[1].attn.multi_scale
    assert type(msvit_model.stage3[0].attn).__name__ == "SpikingSelfAttention"
    qk = timm.create_model("qkformer_10_384")
    assert qk.dims == [96, 192, 384] and not qk.stage1[0].attn.multi_scale


def _grad_check(model, x, expected_logits_shape):
    out = model(x)
    assert out.shape == expected_logits_shape
    assert torch.isfinite(out).all()
    out.float().pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        assert torch.isfinite(p.grad).all(), name
    return [name for name, p in model.named_parameters() if p.grad.abs().sum() == 0]


@pytest.mark.parametrize("name", ["msvit_cifar_4_384", "qkformer_cifar_4_384"])
def test_cifar_forward_backward_at_real_size(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=100)
    silent = _grad_check(model, torch.randn(2, 3, 32, 32), (2, 100))
    assert silent == []


@pytest.mark.parametrize("name,kwargs", [("msvit_dvs_2_256", {}),
                                         ("qkformer_dvs_2_256", dict(num_classes=10, mlp_ratio=1))])
def test_dvs_forward_backward_at_real_size(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    frames = torch.randint(0, 3, (2, 16, 2, 128, 128)).float()  # [B, T, polarity, H, W] event counts
    silent = _grad_check(model, frames, (2, model.num_classes))
    # At initialisation the stage-2 SSA neuron can stay silent on random events (its input is
    # Q(K^T V)/8); then only its output projection sees zeros. Everything else must learn.
    assert set(silent) <= {"stage2.0.attn.proj_conv.weight", "stage2.0.attn.proj_bn.weight"}


def test_imagenet_forward_backward_at_224():
    torch.manual_seed(0)
    model = timm.create_model("msvit_10_384", T=1)
    silent = _grad_check(model, torch.randn(1, 3, 224, 224), (1, 1000))
    assert silent == []


def test_small_family_member_and_drop_path():
    model = timm.create_model("qkformer_10_384", embed_dim=64, depths=(1, 1, 1), num_heads=2,
                              img_size=64, num_classes=5, T=2, drop_path_rate=0.2)
    assert model.dims == [16, 32, 64]
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    assert model(torch.randn(3, 3, 64, 64)).shape == (3, 5)


def test_two_forwards_give_identical_outputs():
    torch.manual_seed(0)
    model = timm.create_model("msvit_cifar_4_384", embed_dim=64, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    # the forward leaves every neuron at rest
    assert all(isinstance(m.v, float) and m.v == 0.0 for m in model.modules() if isinstance(m, LIF))


def test_input_is_repeated_over_time_for_images():
    torch.manual_seed(0)
    model = timm.create_model("msvit_cifar_4_384", embed_dim=64, num_heads=2, T=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.unsqueeze(1).repeat(1, 3, 1, 1, 1)))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(3, 32, 32))


def test_drop_path_drops_whole_samples_for_all_time_steps():
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    y = drop(torch.ones(4, 64, 3, 2, 2))  # [T, B, C, H, W]
    per_sample = y.flatten(2)
    kept = per_sample[0, :, 0] > 0
    assert 0 < kept.sum() < 64
    assert torch.all(per_sample[:, kept] == 2.0) and torch.all(per_sample[:, ~kept] == 0.0)
    assert torch.equal(drop.eval()(torch.ones(2, 3)), torch.ones(2, 3))
