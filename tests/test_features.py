"""The models as backbones for detection and segmentation, as timm's are: `feature_info`, `forward_intermediates`
and `timm.create_model(name, features_only=True, out_indices=...)`, for every registered model of the families
that give them: MSViT, QKFormer and the Spike-driven Transformer V2 (a map per stage), Spikformer, Spikingformer,
the Spike-driven Transformer v1 and STMixer (a map per block, at the stem's stride). Each map is its unit's output in the normal forward, averaged over the
T time steps (`[B, C, H, W]`) or per step (`[B, T, C, H, W]`)."""
import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet

import msvit
from msvit.models import ALL_ARCHS, OneStageTransformer, SpikingTransformer, model_class
from msvit.models.spike_driven_transformer_v2 import MetaSpikeFormer
from msvit.models._inputs import make_batch
from msvit.models._timm import input_kind
from msvit.neurons import LIF

NAMES = [name for name in msvit.ALL_MODEL_NAMES
         if issubclass(model_class(name), (SpikingTransformer, OneStageTransformer, MetaSpikeFormer))]
B, T, SIZE, CLASSES, DEPTH = 2, 2, 32, 3, 3
HIERARCHICAL, ONE_STAGE = "msvit_10_384", "sdt_8_384"  # for the checks that need not run on every model


def tiny(name: str, **kwargs) -> dict:
    """The model `name` small: a first stage of two blocks and one block in each other (MSViT, QKFormer), or
    DEPTH blocks (the one-stage families)."""
    small = dict(T=T, embed_dim=32, num_heads=2, img_size=SIZE, num_classes=CLASSES)
    if model_class(name) is SpikingTransformer:
        small["depths"] = (2,) + (1,) * (len(ALL_ARCHS[name]["depths"]) - 1)
    elif model_class(name) is MetaSpikeFormer:  # its depths are the release's: 4 conv blocks, 6 + 2 transformer blocks
        small["embed_dim"] = (16, 32, 64, 48)
    else:
        small["depth"] = DEPTH
    return {**small, **kwargs}


def create(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **tiny(name, **kwargs)).train()  # batch statistics: a fresh model fires


def sample(name: str) -> torch.Tensor:
    torch.manual_seed(1)
    return make_batch(input_kind(ALL_ARCHS[name]), B, T, 2 if "dvs" in name else 3, SIZE, CLASSES,
                      torch.device("cpu"))[0]


def at_rest(model: torch.nn.Module) -> bool:
    return all(isinstance(m.v, float) and m.v == 0.0 for m in model.modules() if isinstance(m, LIF))


def last_units(model: torch.nn.Module) -> list[str]:
    """The unit whose output is each feature map: a stage's last block (its embedding if it has none), a block."""
    if isinstance(model, SpikingTransformer):
        depths = model.config["depths"]
        return [f"stage{i + 1}.{d - 1}" if d else f"patch_embed{i + 1}" for i, d in enumerate(depths)]
    if isinstance(model, MetaSpikeFormer):
        return ["ConvBlock1_2.0", "ConvBlock2_2.0", "block3.5", "block4.1"]
    return [f"block.{i}" for i in range(model.config["depth"])]


def test_the_backbone_families_are_all_tested():
    families = {name.split("_")[0] for name in NAMES}
    assert families == {"msvit", "qkformer", "spikformer", "spikingformer", "sdt", "metaspikformer", "stmixer"}


@pytest.mark.parametrize("name", NAMES)
def test_the_maps_are_the_forward_s_averaged_over_time(name):
    model, x = create(name), sample(name)
    info = model.feature_info
    assert [f["module"] for f in info] == last_units(model)
    captured = {}
    hooks = [model.get_submodule(f["module"]).register_forward_hook(
        lambda module, args, out, key=f["module"]: captured.__setitem__(key, out.detach().clone())) for f in info]
    with torch.no_grad():
        logits = model(x)  # the normal forward: captured holds each map's unit output, [T, B, C, H, W]
        for hook in hooks:
            hook.remove()
        for lif in (m for m in model.modules() if isinstance(m, LIF)):
            lif.v = 0.7  # membranes off rest: forward_intermediates must start from rest all the same
        final, maps = model.forward_intermediates(x)
        steps = model.forward_intermediates(x, per_step=True, intermediates_only=True)
        features = model.forward_features(x)
    assert at_rest(model) and len(maps) == len(steps) == len(info)
    for f, averaged, per_step in zip(info, maps, steps):
        side = SIZE // f["reduction"]
        assert averaged.shape == (B, f["num_chs"], side, side)
        assert per_step.shape == (B, T, f["num_chs"], side, side)
        unit = captured[f["module"]]
        assert torch.allclose(per_step, unit.transpose(0, 1), atol=1e-6)
        assert torch.allclose(averaged, unit.mean(0), atol=1e-6)
    assert maps[-1].abs().sum() > 0  # the last map fired: the comparison is not of zeros
    assert torch.equal(final, features)
    assert torch.allclose(model.forward_head(final), logits, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_features_only_gives_the_maps_at_out_indices(name):
    model, x = create(name), sample(name)
    count = len(model.feature_info)
    backbone = create(name, features_only=True, out_indices=(0, -1))
    assert isinstance(backbone, FeatureGetterNet)
    assert backbone.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in (0, count - 1)]
    assert backbone.feature_info.reduction() == [model.feature_info[i]["reduction"] for i in (0, count - 1)]
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=(0, -1), intermediates_only=True)
        got = backbone(x)
    assert len(got) == 2 and all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
    assert backbone.model.num_classes == 0 and isinstance(backbone.model.head, torch.nn.Identity)
    assert backbone.pretrained_cfg["input_size"] == (model.in_chans, SIZE, SIZE)


@pytest.mark.parametrize("name", [HIERARCHICAL, "qkformer_dvs_2_256", ONE_STAGE, "spikformer_cifar_4_384"])
def test_features_only_prunes_and_keeps_time_steps_when_asked(name):
    model, x = create(name), sample(name)
    every = create(name, features_only=True)  # default: every map
    first = create(name, features_only=True, out_indices=(0,), per_step_features=True)
    assert every.feature_info.out_indices == tuple(range(len(model.feature_info)))
    assert len(first.model.units()) == len(model.feature_groups()[0])  # the units after the first map are gone
    assert first.model.num_features == model.feature_info[0]["num_chs"]
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        (steps,) = first(x)
        assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(every(x), maps))
    assert steps.shape == (B, T, *maps[0].shape[1:]) and torch.allclose(steps.mean(1), maps[0], atol=1e-6)


@pytest.mark.parametrize("name", [HIERARCHICAL, ONE_STAGE])
def test_output_format_stop_early_and_last_n(name):
    model, x = create(name), sample(name)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert all(torch.equal(a, b) for a, b in zip(last_two, maps[-2:]))
    assert all(torch.equal(a.permute(0, 3, 1, 2), b) for a, b in zip(nhwc, maps))
    assert torch.allclose(early.mean(1), first[0], atol=1e-6)  # stopped at the first map: it is the output
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", [HIERARCHICAL, ONE_STAGE])
def test_the_maps_train_with_activation_checkpointing(name):
    model, x = create(name), sample(name)
    maps = model.forward_intermediates(x, intermediates_only=True)
    model.set_grad_checkpointing(True)
    checkpointed = model.forward_intermediates(x, intermediates_only=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(maps, checkpointed))
    sum(m.sum() for m in checkpointed).backward()
    stem = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert torch.isfinite(stem.weight.grad).all() and stem.weight.grad.abs().sum() > 0
    assert at_rest(model)
