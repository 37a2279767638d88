"""Every registered model, as timm's tests go over every model: it builds small, runs forward and backward on its
kind of input, honours its default config and timm's head contract, and is registered from its family's module."""
import pytest
import timm
import torch

import msvit
from msvit.models import ALL_ARCHS, MetaSpikeFormer, SpikingTransformer, model_class
from msvit.models._inputs import make_batch
from msvit.models._timm import input_kind

# the family modules of msvit.models, by the prefix of their model names
FAMILIES = {"msvit": "msvit", "qkformer": "qkformer", "spikformer": "spikformer", "spikingformer": "spikingformer",
            "sdt": "spike_driven_transformer", "metaspikformer": "spike_driven_transformer_v2", "stmixer": "stmixer"}
B, T, SIZE, CLASSES = 2, 2, 32, 3


def small(name: str) -> dict:
    """The model `name` at a width, depth and size that build and run in milliseconds."""
    kwargs = dict(T=T, embed_dim=32, num_heads=2, img_size=SIZE, num_classes=CLASSES)
    if model_class(name) is SpikingTransformer:
        kwargs["depths"] = (1,) * len(ALL_ARCHS[name]["depths"])  # one block per stage, every stage kept
    elif model_class(name) is MetaSpikeFormer:
        kwargs["embed_dim"] = [8, 16, 16, 32]  # four stages of fixed depth (1, 1, 2 conv blocks; 6, 2 blocks)
    else:
        kwargs["depth"] = 1
    return kwargs


def batch(name: str, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return make_batch(input_kind(ALL_ARCHS[name]), B, T, model.in_chans, SIZE, CLASSES, torch.device("cpu"))


def test_the_families_partition_the_registry():
    listed = {family: set(timm.list_models(module=module)) for family, module in FAMILIES.items()}
    assert set().union(*listed.values()) == set(msvit.ALL_MODEL_NAMES)
    assert sum(map(len, listed.values())) == len(msvit.ALL_MODEL_NAMES)  # no model in two modules
    for family, names in listed.items():
        assert names and all(name.startswith(family + "_") for name in names), family


@pytest.mark.parametrize("name", msvit.ALL_MODEL_NAMES)
def test_forward_backward_and_default_config(name):
    model = timm.create_model(name, **small(name)).train()
    x, y = batch(name, model)
    logits = model(x)
    assert logits.shape == (B, CLASSES) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:4]}"
    assert model.head.weight.grad.abs().sum() > 0  # the last stage fired: the input reached the head

    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and cfg["num_classes"] == CLASSES
    assert cfg["input_size"] == (model.in_chans, SIZE, SIZE)
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert model.get_submodule(cfg["first_conv"]).in_channels == model.in_chans


@pytest.mark.parametrize("name", msvit.ALL_MODEL_NAMES)
def test_head_contract_and_reset_classifier(name):
    model = timm.create_model(name, **small(name)).train()  # batch statistics: the neurons fire at random weights
    x, _ = batch(name, model)
    with torch.no_grad():
        logits = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        head = model.get_classifier()
        model.reset_classifier(0)
        features = model(x)
    assert torch.allclose(head(pooled), logits, atol=1e-6)  # logits = head(pooled features)
    assert features.shape == (B, model.num_features) and model.num_classes == 0
    assert features.abs().sum() > 0 and torch.allclose(features, pooled)


# the other families: tests/test_baselines.py and tests/test_compile.py
@pytest.mark.parametrize("name", ["metaspikformer_8_256", "stmixer_cifar_4_384"])
def test_the_newer_families_trace_as_one_graph(name):
    torch._dynamo.reset()
    model = timm.create_model(name, **small(name)).train()
    x, _ = batch(name, model)
    explanation = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
