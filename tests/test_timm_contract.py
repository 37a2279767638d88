"""timm's model contract, for every registered model: the arguments timm's create_model and scripts pass,
global pooling, forward_features/forward_head, reset_classifier, group_matcher and no_weight_decay under
create_optimizer_v2's layer decay, and the save_for_hf / local-dir round trip."""
import math

import pytest
import timm
import torch
from timm.models import group_parameters, save_for_hf
from timm.optim import create_optimizer_v2

import msvit
from msvit.config import check_model_kwargs
from msvit.errors import ConfigError
from msvit.models import ARCHS, SpikingTransformer
from msvit.neurons import LIF
from msvit.models._timm import GLOBAL_POOLS

NAMES = msvit.MODEL_NAMES
# an image model and an event-frame model, for the checks that need not run on every model
CIFAR, DVS = "msvit_cifar_4_384", "qkformer_dvs_2_256"


def tiny(name: str, **kwargs) -> dict:
    depths = (1, 1) if "dvs" in name else (1, 1, 1)
    return {**dict(embed_dim=32, num_heads=2, depths=depths, img_size=32, T=2, num_classes=5), **kwargs}


def sample(name: str, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    if "dvs" in name:  # [B, T, polarity, H, W] event counts
        return (torch.rand(batch, 2, 2, 32, 32) > 0.7).float()
    return torch.rand(batch, 3, 32, 32) * 2 - 1


def create(name: str, seed: int = 0, **kwargs) -> SpikingTransformer:
    torch.manual_seed(seed)
    return timm.create_model(name, **tiny(name, **kwargs))


def features(model: SpikingTransformer, seed: int = 2) -> torch.Tensor:
    """Random last-stage features [B, T, C, H, W] (a fresh model in evaluation mode is silent)."""
    torch.manual_seed(seed)
    return torch.rand(2, 2, model.num_features, 4, 4)


def at_rest(model: torch.nn.Module) -> bool:
    return all(isinstance(m.v, float) and m.v == 0.0 for m in model.modules() if isinstance(m, LIF))


# ------------------------------------------------------------------ arguments

@pytest.mark.parametrize("name", NAMES)
def test_the_arguments_of_timm_scripts_are_accepted(name):
    # train.py passes these (None when not set on its command line), benchmark.py global_pool 'fast'
    train = timm.create_model(name, pretrained=False, in_chans=2 if "dvs" in name else 3, drop_rate=0.0,
                              drop_path_rate=None, drop_block_rate=None, global_pool=None, bn_momentum=None,
                              bn_eps=None, scriptable=None, checkpoint_path=None, pretrained_cfg_overlay=None,
                              **tiny(name))
    bench = timm.create_model(name, in_chans=2 if "dvs" in name else 3, global_pool="fast", drop_rate=0.0,
                              drop_path_rate=None, drop_block_rate=None, **tiny(name))
    direct = SpikingTransformer(**{**ARCHS[name], **tiny(name)}, drop_rate=None, drop_path_rate=None,
                                global_pool=None, drop_block_rate=None, bn_momentum=None, bn_eps=None)
    assert train(sample(name)).shape == (2, 5)
    assert train.global_pool == direct.global_pool == "avg" and direct.drop_rate == 0.0
    assert direct.config["drop_path_rate"] == 0.0 and bench.global_pool == "fast"
    assert list(direct.state_dict()) == list(train.state_dict()) == list(bench.state_dict())


@pytest.mark.parametrize("name", [CIFAR, DVS, "qkformer_10_384"])
def test_drop_rate_drops_before_the_head_only_in_training(name):
    default, zero, half = create(name), create(name, drop_rate=0.0), create(name, drop_rate=0.5)
    assert list(half.state_dict()) == list(default.state_dict())
    assert msvit.count_parameters(half) == msvit.count_parameters(default)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), zero.state_dict().values()))
    half.load_state_dict(default.state_dict())
    x, f = sample(name), features(default)
    torch.manual_seed(3)
    reference = default.train()(x)
    torch.manual_seed(3)
    assert not torch.equal(half.train()(x), reference)
    torch.manual_seed(3)
    assert torch.equal(zero.train().forward_head(f), default.forward_head(f))
    assert torch.equal(half.eval().forward_head(f), default.eval().forward_head(f))


def test_batch_norm_overrides_and_rejected_arguments():
    model = create(CIFAR, bn_momentum=0.01, bn_eps=1e-3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    assert {m.momentum for m in create(CIFAR).modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    assert create(CIFAR, drop_block_rate=0.0).drop_rate == 0.0
    for bad, match in [(dict(drop_block_rate=0.1), "no DropBlock"), (dict(drop_rate=1.0), "drop_rate"),
                       (dict(bn_eps=0.0), "bn_eps"), (dict(bn_momentum=2.0), "bn_momentum"),
                       (dict(global_pool="token"), "'avg', 'fast', 'max', 'avgmax', ''")]:
        with pytest.raises(ConfigError, match=match):
            create(CIFAR, **bad)
    with pytest.raises(TypeError, match="embed_dimm"):
        timm.create_model(CIFAR, embed_dimm=96)
    # the command-line check (config.check_model_kwargs) knows them too, under the user's spelling
    assert check_model_kwargs(CIFAR, dict(drop_rate=0.1, global_pool="max")) == dict(drop_rate=0.1, global_pool="max")
    with pytest.raises(ConfigError, match="model_kwargs.global_pool 'token' is not a pooling"):
        check_model_kwargs(CIFAR, dict(global_pool="token"), dict(global_pool="model_kwargs.global_pool"))


def test_img_size_as_timm_records_it():
    assert create(CIFAR, img_size=(32, 32)).img_size == 32
    model = create(CIFAR, img_size=[48, 48])
    assert model.img_size == model.config["img_size"] == 48 and model.pretrained_cfg["input_size"] == (3, 48, 48)
    with pytest.raises(ConfigError, match=r"img_size \[32, 48\] must be an integer, or two equal"):
        create(CIFAR, img_size=[32, 48])


# ------------------------------------------------------------------ pooling, features and head

@pytest.mark.parametrize("pool", GLOBAL_POOLS)
def test_global_pool(pool):
    default, model = create(CIFAR), create(CIFAR, global_pool=pool)
    f = features(model)
    logits, pooled = model.forward_head(f), model.forward_head(f, pre_logits=True)
    if pool in ("avg", "fast"):
        assert torch.equal(logits, default.forward_head(f))
        assert torch.equal(pooled, f.flatten(3).mean(3).mean(1))  # over tokens, then time
    elif pool:
        assert logits.shape == (2, 5) and not torch.allclose(logits, default.forward_head(f))
        assert torch.equal(pooled, f.flatten(3).amax(3).mean(1)) or pool == "avgmax"
    else:  # unpooled: the features themselves, or per position and time step logits
        assert torch.equal(pooled, f)
        assert logits.shape == (2, 2, 4, 4, 5)
        assert torch.allclose(logits[:, 1, 3, 2], model.head(f[:, 1, :, 3, 2]))
        assert model(sample(CIFAR)).shape == (2, 2, 8, 8, 5)


@pytest.mark.parametrize("name", NAMES)
def test_forward_head_of_forward_features_is_forward(name):
    model = create(name, drop_path_rate=0.1).train()  # training: batch statistics, so the neurons fire
    x = sample(name)
    # a membrane left charged before the call does not leak into it: forward_features starts from rest
    next(m for m in model.modules() if isinstance(m, LIF)).v = 5.0
    torch.manual_seed(5)
    f = model.forward_features(x)
    assert at_rest(model)  # and ends at rest, as forward does
    torch.manual_seed(5)
    logits = model(x)
    assert f.shape == (2, 2, model.num_features) + f.shape[3:] and f.sum() > 0
    assert torch.equal(model.forward_head(f), logits)


def test_forward_features_keeps_grad_checkpointing():
    model = create(CIFAR, drop_path_rate=0.2).train()
    model.set_grad_checkpointing(True)
    x = sample(CIFAR)
    torch.manual_seed(7)
    model.forward_features(x).sum().backward()
    assert at_rest(model) and all(p.grad is not None for n, p in model.named_parameters() if "head" not in n)


@pytest.mark.parametrize("name", [CIFAR, DVS])
def test_reset_classifier(name):
    model = create(name)
    f = features(model)
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier() is model.head and model.head.out_features == 7
    assert model(sample(name)).shape == (2, 7) and model.global_pool == "avg"
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model.num_classes == 0
    assert torch.equal(model.forward_head(f), f.flatten(3).mean(3).mean(1))
    model.reset_classifier(3, global_pool="max")
    assert model.global_pool == model.config["global_pool"] == "max" and model.forward_head(f).shape == (2, 3)
    model.reset_classifier(0, "")
    assert torch.equal(model.forward_head(f), f)
    with pytest.raises(ConfigError, match="global_pool 'token'"):
        model.reset_classifier(3, "token")


# ------------------------------------------------------------------ optimizer groups

def units(name: str) -> str:
    """The module whose parameters must share a group: a patch embedding, a block, the head."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0].startswith("stage") else parts[0]


@pytest.mark.parametrize("name", NAMES)
def test_layer_decay_groups(name):
    model = create(name)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    group_of = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            assert id(p) not in group_of, "a parameter in two groups"
            group_of[id(p)] = group
    params = dict(model.named_parameters())
    assert set(group_of) == {id(p) for p in params.values()}
    scale = {}
    for key, p in params.items():
        group = group_of[id(p)]
        assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.05), key
        assert scale.setdefault(units(key), group["lr_scale"]) == group["lr_scale"], f"{key}: a block split"
    # in depth order: stem, stage 1 blocks, each later stage's downsampler and blocks, head
    order = ["patch_embed1"] + [unit for i in range(1, model.num_stages + 1)
                                for unit in ([f"patch_embed{i}"] if i > 1 else [])
                                + [f"stage{i}.{j}" for j in range(len(getattr(model, f"stage{i}")))]] + ["head"]
    assert list(scale) == order
    assert [scale[u] for u in order] == pytest.approx([0.75 ** (len(order) - 1 - k) for k in range(len(order))])
    assert model.no_weight_decay() == set()


def test_coarse_groups_are_stages():
    model = create("qkformer_10_768", depths=(1, 2, 7))
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert [sorted({units(n) for n in names}) for _, names in sorted(groups.items())] == [
        ["patch_embed1"], ["stage1.0"], ["patch_embed2", "stage2.0", "stage2.1"],
        ["patch_embed3"] + [f"stage3.{j}" for j in range(7)], ["head"]]
    fine = group_parameters(model, model.group_matcher(), reverse=True)
    assert max(fine.values()) + 1 == 14  # 13 units and the head: the release's qkformer_10_768 at layer decay
    assert math.isclose(0.75 ** (13 - fine["patch_embed3.proj3_conv.weight"]), 0.75 ** 8)


# ------------------------------------------------------------------ save_for_hf and local-dir

@pytest.mark.parametrize("name", [CIFAR, DVS])
def test_save_for_hf_then_local_dir_round_trip(name, tmp_path):
    model = create(name, num_classes=4, global_pool="max")
    save_for_hf(model, tmp_path)
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert type(loaded) is SpikingTransformer and loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert torch.equal(loaded.train()(sample(name)), model.train()(sample(name)))
