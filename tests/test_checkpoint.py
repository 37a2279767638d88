"""Loading the authors' checkpoint layouts (tests/data/keys/*.tsv: their exact state_dict names and
shapes) and our own, and clear errors for checkpoints that do not fit."""
import argparse
import re
from pathlib import Path

import pytest
import timm
import torch

import msvit
from msvit import CheckpointError, load_checkpoint

KEYS = Path(__file__).parent / "data" / "keys"
# key file -> the model (and arguments) it belongs to
UPSTREAM = {
    "upstream_msvit_cifar10": ("msvit_cifar_4_384", {}),
    "upstream_msvit_10_384": ("msvit_10_384", {}),
    "upstream_msvit_10_512": ("msvit_10_512", {}),
    "upstream_msvit_10_768": ("msvit_10_768", {}),
    "upstream_qkformer_cifar10": ("qkformer_cifar_4_384", {}),
    "upstream_qkformer_cifar100": ("qkformer_cifar_4_384", dict(num_classes=100)),
    "upstream_qkformer_10_384": ("qkformer_10_384", {}),
    "upstream_qkformer_10_512": ("qkformer_10_512", {}),
    "upstream_qkformer_10_768": ("qkformer_10_768", {}),
    "upstream_qkformer_cifar10dvs": ("qkformer_dvs_2_256", dict(num_classes=10, mlp_ratio=1)),
    "upstream_qkformer_dvs128": ("qkformer_dvs_2_256", dict(num_classes=11, mlp_ratio=4)),
    # the baselines (Spikformer, Spikingformer, SDT): their releases' layouts, dead parameters included
    "upstream_spikformer_8_384": ("spikformer_8_384", {}),
    "upstream_spikformer_8_512": ("spikformer_8_512", {}),
    "upstream_spikformer_8_768": ("spikformer_8_768", {}),
    "upstream_spikformer_cifar_4_384": ("spikformer_cifar_4_384", {}),
    "upstream_spikformer_dvs_2_256": ("spikformer_dvs_2_256", {}),
    "upstream_spikingformer_8_768": ("spikingformer_8_768", {}),
    "upstream_spikingformer_cifar10_4_384": ("spikingformer_cifar_4_384", {}),
    "upstream_spikingformer_cifar100_4_384": ("spikingformer_cifar_4_384", dict(num_classes=100, num_heads=8)),
    "upstream_spikingformer_cifar10dvs_2_256": ("spikingformer_dvs_2_256", dict(num_classes=10)),
    "upstream_spikingformer_dvs128_2_256": ("spikingformer_dvs_2_256", {}),
    "upstream_sdt_8_384": ("sdt_8_384", {}),
    "upstream_sdt_6_512": ("sdt_6_512", {}),
    "upstream_sdt_8_512": ("sdt_8_512", {}),
    "upstream_sdt_10_512": ("sdt_10_512", {}),
    "upstream_sdt_8_768": ("sdt_8_768", {}),
    "upstream_sdt_cifar10_2_512": ("sdt_cifar_2_512", {}),
    "upstream_sdt_cifar10dvs_2_256": ("sdt_dvs_2_256", dict(num_classes=10, pooling_stat="0011", dvs_mode=True,
                                                             img_size=64)),
    "upstream_sdt_dvs128_2_256": ("sdt_dvs_2_256", {}),
}
# parameters the releases build but never use, left out of our models and dropped on load (and how many)
DEAD = re.compile(r"\.norm[12]\.|^pos_embed$|^norm\.|\.talking_heads\.")


def expected_name(key: str) -> str:
    """An authors' key under our name, by the renames the README lists."""
    key = key.replace(".tssa.", ".attn.").replace(".ssa.", ".attn.")
    key = key.replace(".mlp1_", ".fc1_").replace(".mlp2_", ".fc2_").replace("_linear.", "_conv.")
    return re.sub(r"^patch_embed\.block(\d)_", lambda m: f"patch_embed.proj{m[1] if m[1] != '0' else ''}_", key)


def synthesize(key_file: str) -> dict[str, torch.Tensor]:
    """A state_dict with exactly the names and shapes of an authors' release, filled with random values."""
    state = {}
    gen = torch.Generator().manual_seed(0)
    for line in (KEYS / f"{key_file}.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        else:
            state[name] = torch.rand(dims, generator=gen)
    return state


def test_key_files_cover_every_release():
    assert sorted(p.stem for p in KEYS.glob("*.tsv")) == sorted(UPSTREAM)


@pytest.mark.parametrize("key_file", sorted(UPSTREAM))
def test_authors_state_dict_loads_strictly(key_file):
    name, kwargs = UPSTREAM[key_file]
    model = timm.create_model(name, **kwargs)
    upstream = synthesize(key_file)
    result = load_checkpoint(model, {"model": upstream}, strict=True)
    assert result.missing == [] and result.unexpected == [] and result.mismatched == []
    ours = model.state_dict()
    renamed = {expected_name(k): v for k, v in upstream.items() if not DEAD.search(k)}
    assert sorted(renamed) == sorted(ours)
    for key, value in renamed.items():  # a Linear [C, C'] or a 1x1 Conv2d's [C, C', 1, 1] may be [C, C', 1] here
        assert torch.equal(ours[key], value.reshape(ours[key].shape)), key


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "state_dict_ema", "bare"])
def test_authors_checkpoint_files_with_namespace_args(tmp_path, wrapper):
    upstream = synthesize("upstream_qkformer_cifar10")
    upstream = {f"module.{k}": v for k, v in upstream.items()}  # as saved from a DDP model
    payload = upstream if wrapper == "bare" else {
        wrapper: upstream, "epoch": 395, "arch": "QKFormer", "optimizer": {},
        "args": argparse.Namespace(lr=1e-3, model="QKFormer", mean=(0.4914,), amp=True)}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(payload, path)
    model = timm.create_model("qkformer_cifar_4_384")
    load_checkpoint(model, path)
    assert torch.equal(model.stage1[0].attn.q_conv.weight, upstream["module.stage1.0.tssa.q_conv.weight"])
    assert torch.equal(model.stage3[1].mlp.fc2_bn.running_var,
                       upstream["module.stage3.1.mlp.mlp2_bn.running_var"])


def test_ema_weights_are_chosen_on_request():
    model = timm.create_model("qkformer_dvs_2_256", num_classes=10, mlp_ratio=1)
    regular, ema = synthesize("upstream_qkformer_cifar10dvs"), synthesize("upstream_qkformer_cifar10dvs")
    ema["head.bias"] = torch.full((10,), 3.0)
    load_checkpoint(model, {"state_dict": regular, "state_dict_ema": ema})
    assert torch.equal(model.head.bias, regular["head.bias"])
    load_checkpoint(model, {"state_dict": regular, "state_dict_ema": ema}, use_ema=True)
    assert torch.equal(model.head.bias, ema["head.bias"])


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema", "ema"])  # ours and timm's, the authors', ours before
def test_ema_weights_are_found_under_each_layout_and_their_absence_is_an_error(key):
    model = timm.create_model("qkformer_dvs_2_256", num_classes=10, mlp_ratio=1)
    regular, ema = synthesize("upstream_qkformer_cifar10dvs"), synthesize("upstream_qkformer_cifar10dvs")
    ema["head.bias"] = torch.full((10,), 3.0)
    load_checkpoint(model, {"model": regular, key: ema}, use_ema=True)
    assert torch.equal(model.head.bias, ema["head.bias"])
    for without in ({"model": regular, key: None}, {"model": regular}, regular):
        with pytest.raises(CheckpointError, match="holds no EMA weights"):
            load_checkpoint(model, without, use_ema=True)


def test_wrong_checkpoint_lists_missing_unexpected_and_mismatched_keys():
    model = timm.create_model("msvit_cifar_4_384")  # MSViT needs p_conv; QKFormer's file has none
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, {"state_dict": synthesize("upstream_qkformer_cifar100")})
    message = str(info.value)
    assert "does not fit msvit_cifar_4_384" in message
    assert "missing keys" in message and "stage1.0.attn.p_conv.weight" in message
    assert "shape mismatches" in message and "patch_embed1.proj_conv.weight" in message
    assert "\n" not in message
    cifar10 = timm.create_model("qkformer_cifar_4_384", num_classes=10)
    with pytest.raises(CheckpointError, match=r"2 shape mismatches \(head.weight: checkpoint \(100, 384\) "
                                              r"vs model \(10, 384\), head.bias"):
        load_checkpoint(cifar10, {"state_dict": synthesize("upstream_qkformer_cifar100")})


def test_unexpected_keys_are_listed_and_non_strict_loads_the_rest():
    model = timm.create_model("qkformer_cifar_4_384")
    state = synthesize("upstream_qkformer_cifar10")
    state["stage9.0.extra.weight"] = torch.zeros(3)
    del state["head.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(head.bias\); 1 unexpected keys \(stage9"):
        load_checkpoint(model, state)
    result = load_checkpoint(model, state, strict=False)
    assert result.missing == ["head.bias"] and result.unexpected == ["stage9.0.extra.weight"]
    assert torch.equal(model.head.weight, state["head.weight"])


def test_our_own_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("msvit_dvs_2_256", embed_dim=64, num_heads=4)
    path = tmp_path / "ours.pth"
    torch.save({"model": source.state_dict(), "epoch": 3, "config": {"lr": 1e-3}}, path)
    target = timm.create_model("msvit_dvs_2_256", embed_dim=64, num_heads=4)
    load_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_unreadable_inputs_give_one_line_errors(tmp_path):
    model = timm.create_model("qkformer_dvs_2_256", embed_dim=64, num_heads=4)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "missing.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(model, broken)
    torch.save({"model": model.state_dict()}, broken)
    broken.write_bytes(broken.read_bytes()[:5000])  # a copy cut short
    with pytest.raises(CheckpointError, match="cannot read checkpoint .* damaged or incomplete"):
        load_checkpoint(model, broken)
    with pytest.raises(CheckpointError, match="no state_dict in checkpoint"):
        load_checkpoint(model, {"epoch": 3, "optimizer": {}})
    assert issubclass(CheckpointError, msvit.errors.UserError)


@pytest.mark.parametrize("key_file,name,kwargs", [
    ("upstream_sdt_dvs128_2_256", "sdt_dvs_2_256", {}),
    ("upstream_spikingformer_cifar10dvs_2_256", "spikingformer_dvs_2_256", dict(num_classes=10))])
def test_baseline_release_files_in_timm_checkpoint_saver_layout(tmp_path, key_file, name, kwargs):
    """The Spikingformer and SDT releases save with timm's CheckpointSaver: state_dict (and state_dict_ema),
    optimizer, epoch, arch, args (a Namespace), version, metric; DDP's module. prefix on every key."""
    upstream = {f"module.{k}": v for k, v in synthesize(key_file).items()}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in upstream.items()}
    path = tmp_path / "checkpoint-284.pth.tar"
    torch.save({"epoch": 284, "arch": name, "state_dict": upstream, "state_dict_ema": ema, "optimizer": {},
                "version": 2, "args": argparse.Namespace(model="sdt", lr=3e-4), "metric": 96.2}, path)
    model = timm.create_model(name, **kwargs)
    for use_ema, source in ((False, upstream), (True, ema)):
        load_checkpoint(model, path, use_ema=use_ema)
        weight = source["module.block.1.attn.v_conv.weight"]  # a Conv1d [C, C, 1] here; SDT's is [C, C, 1, 1]
        assert torch.equal(model.block[1].attn.v_conv.weight, weight.reshape(model.block[1].attn.v_conv.weight.shape))
        assert torch.equal(model.head.bias, source["module.head.bias"])


# ---- msvit.load_model: one call from a checkpoint to its model; timm's pretrained=True on the authors' files

TINY = ["--model-kwargs", "{embed_dim: 32, num_heads: 2, depths: [1, 1, 1]}", "--time-step", "2"]


def _run_checkpoint(path: Path, *argv: str, ema: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A run's last.pth as train.py writes it (`config`: the resolved settings, num_classes set), with EMA weights
    that differ from the raw ones; returns the raw and the EMA model."""
    from msvit.config import parse_args
    from msvit.zoo import create_dataset_model

    cfg = parse_args([*TINY, *argv], Path(__file__).resolve().parents[1] / "cifar10" / "cifar10.yml")
    cfg["num_classes"] = cfg["num_classes"] or 10
    torch.manual_seed(0)
    raw, average = create_dataset_model(cfg, [cfg["model"]]), create_dataset_model(cfg, [cfg["model"]])
    torch.save(dict(model=raw.state_dict(), optimizer={}, scheduler={}, scaler=None,
                    state_dict_ema=average.state_dict() if ema else None, epoch=0, num_updates=5, best_top1=10.0,
                    best_epoch=0, metrics={}, config=cfg, position=None), path)
    return raw.eval(), average.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_load_model_rebuilds_a_runs_model_with_its_weights(tmp_path):
    raw, average = _run_checkpoint(tmp_path / "last.pth", "--batch-coupled-ssa", "false")
    with pytest.raises(CheckpointError, match="39 missing keys"):  # what a default-size model gets
        load_checkpoint(timm.create_model("msvit_cifar_4_384"), tmp_path / "last.pth")
    model = msvit.load_model(tmp_path / "last.pth")
    assert not model.training and model.T == 2 and model.num_classes == 10
    assert model.config["embed_dim"] == 32 and model.config["batch_coupled_ssa"] is False
    assert _same_weights(model, raw) and not _same_weights(model, average)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), raw(images))
    assert _same_weights(msvit.load_model(tmp_path / "last.pth", use_ema=True), average)


def test_load_model_overrides_and_legacy_widths(tmp_path):
    _run_checkpoint(tmp_path / "last.pth", "--model-kwargs", "{depths: [1, 1, 1]}", "--dim", "32",
                    "--num-heads", "2")  # the authors' recipes spell the width dim
    model = msvit.load_model(tmp_path / "last.pth", T=3, batch_coupled_ssa=False)
    assert model.T == 3 and model.config["batch_coupled_ssa"] is False and model.config["embed_dim"] == 32
    _run_checkpoint(tmp_path / "plain.pth", ema=False)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        msvit.load_model(tmp_path / "plain.pth", use_ema=True)


def test_load_model_of_an_authors_file_needs_the_model_name(tmp_path):
    upstream = {f"module.{k}": v for k, v in synthesize("upstream_qkformer_cifar100").items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": upstream, "epoch": 5, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(CheckpointError, match=r"no saved settings.*model=NAME"):
        msvit.load_model(path)
    with pytest.raises(msvit.errors.UserError, match="did you mean 'qkformer_cifar_4_384'"):
        msvit.load_model(path, model="qkformer_cifar_4_38")
    model = msvit.load_model(path, model="qkformer_cifar_4_384")
    assert model.num_classes == 100 and not model.training  # the head's shape, not the registered 10
    assert torch.equal(model.stage1[0].attn.q_conv.weight, upstream["module.stage1.0.tssa.q_conv.weight"])


@pytest.mark.parametrize("key_file,wrapper", [("upstream_qkformer_cifar10", "state_dict"),
                                              ("upstream_qkformer_cifar10", "model"),
                                              ("upstream_sdt_cifar10_2_512", "state_dict")])
def test_timm_pretrained_loads_an_authors_file(tmp_path, key_file, wrapper):
    name, kwargs = UPSTREAM[key_file]
    upstream = {f"module.{k}": v for k, v in synthesize(key_file).items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({wrapper: upstream, "epoch": 395, "args": argparse.Namespace(lr=1e-3)}, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    reference = timm.create_model(name, **kwargs)
    load_checkpoint(reference, path)
    assert _same_weights(model, reference)
    assert not _same_weights(model, timm.create_model(name, **kwargs))  # the file's weights, not a fresh init
