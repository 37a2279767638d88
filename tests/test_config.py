"""The config parser: YAML recipes, command-line overrides, validation messages, saving."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import msvit
from msvit.config import (DEFAULTS, GROUPS, NO_EFFECT, SETTINGS, ArgumentParser, ConfigError, check_model_kwargs,
                          load_config, model_kwargs, parse_args, parse_model_kwargs, restore_run_settings, save_config)
from msvit.errors import UserError
from msvit.neurons import cupy_unavailable_reason
from msvit.zoo import create_dataset_model

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(REPO.glob("*/*.yml"))
CIFAR10 = REPO / "cifar10" / "cifar10.yml"


def write(tmp_path: Path, text: str, name: str = "recipe.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write(tmp_path, "dataset: cifar10\nmodel: msvit_cifar_4_384\nlr: 1.0e-3\nepochs: 400\n"
                           "data_dir: ./data/cifar10\nmean: [0.5, 0.5, 0.5]\n")


# ---------------------------------------------------------------- the repo's recipes

def test_repo_has_recipes():
    names = {p.parent.name for p in RECIPES}
    assert {"cifar10", "cifar100", "imagenet", "dvs128-gesture", "cifar10-dvs"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.parent.name)
def test_every_recipe_loads(path: Path):
    raw = yaml.safe_load(path.read_text())
    loaded = load_config(path)
    assert set(loaded) == set(raw)
    cfg = parse_args([], default_config=path)
    assert cfg["config"] == str(path)
    assert cfg["dataset"] == raw["dataset"]
    assert set(cfg) == set(DEFAULTS) | {"config"}
    # every recipe states its release's SSA, visibly: coupled for MSViT/QKFormer, per sample for the baselines
    assert raw["batch_coupled_ssa"] is (raw["model"] not in msvit.BASELINE_NAMES)


def test_recipe_values_are_typed():
    cfg = load_config(REPO / "imagenet" / "imagenet.yml")
    assert cfg["lr"] is None and cfg["blr"] == pytest.approx(6e-4)
    assert cfg["warmup_lr"] == 0.0 and isinstance(cfg["warmup_lr"], float)
    assert cfg["warmup_prefix"] is True and cfg["accum_iter"] == 2


def test_authors_legacy_recipe_loads(tmp_path: Path):
    # the shape of the authors' cifar10.yml: legacy keys, 1e-3 without a dot, timm dataset name
    path = write(tmp_path, "epochs: 400\ntime_step: 4\nlayer: 4\ndim: 384\nnum_heads: 8\npatch_size: 4\n"
                           "mlp_ratio: 4\ndataset: torch/cifar10\nmean:\n    - 0.4914\n    - 0.4822\n"
                           "    - 0.4465\nratio: [1.0,1.0]\ncolor_jitter: 0.\namp: True\nlr: 1e-3\n"
                           "weight_decay: 6e-2\ndepths: 4\n")
    cfg = load_config(path)
    assert cfg["dataset"] == "cifar10"
    assert cfg["lr"] == pytest.approx(1e-3) and isinstance(cfg["lr"], float)
    assert cfg["weight_decay"] == pytest.approx(0.06)
    assert cfg["mlp_ratio"] == 4.0 and isinstance(cfg["mlp_ratio"], float)
    assert cfg["mean"] == [0.4914, 0.4822, 0.4465]


# ---------------------------------------------------------------- command line

def test_precedence_defaults_yaml_cli(recipe: Path):
    cfg = parse_args(["--lr", "5e-4"], default_config=recipe)
    assert cfg["lr"] == pytest.approx(5e-4)            # command line over YAML
    assert cfg["epochs"] == 400                         # YAML over default
    assert cfg["batch_size"] == DEFAULTS["batch_size"]  # default
    assert cfg["config"] == str(recipe)


def test_config_option_picks_the_yaml(recipe: Path, tmp_path: Path):
    other = write(tmp_path, "epochs: 7\n", "other.yml")
    assert parse_args(["--config", str(other)], default_config=recipe)["epochs"] == 7
    assert parse_args([f"--config={other}"], default_config=recipe)["epochs"] == 7
    assert parse_args([], default_config=None)["epochs"] == DEFAULTS["epochs"]


def test_defaults_are_not_shared():
    cfg = parse_args([])
    cfg["scale"].append(3.0)
    cfg["model_kwargs"]["x"] = 1
    assert parse_args([])["scale"] == [0.08, 1.0] and DEFAULTS["model_kwargs"] == {}


@pytest.mark.parametrize("argv", [["--data-dir", "/x"], ["--data_dir", "/x"], ["--data-dir=/x"],
                                  ["--data_dir=/x"]])
def test_dash_underscore_equivalent(argv):
    assert parse_args(argv)["data_dir"] == "/x"


@pytest.mark.parametrize("argv", [["--mean", "0.5,0.4,0.3"], ["--mean", "0.5", "0.4", "0.3"],
                                  ["--mean", "[0.5, 0.4, 0.3]"], ["--mean=0.5,0.4,0.3"]])
def test_list_values(argv):
    assert parse_args(argv)["mean"] == [0.5, 0.4, 0.3]


def test_list_edge_values():
    assert parse_args(["--scale", "[1, 1]"])["scale"] == [1.0, 1.0]
    assert parse_args(["--mean", "0.1307"])["mean"] == [0.1307]
    assert parse_args(["--mean", "null"])["mean"] is None
    with pytest.raises(ConfigError, match="list of floats"):
        parse_args(["--scale", "a,b"])


def test_mapping_value():
    cfg = parse_args(["--model-kwargs", "{embed_dim: 96, depths: [1, 1]}"])
    assert cfg["model_kwargs"] == {"embed_dim": 96, "depths": [1, 1]}
    with pytest.raises(ConfigError, match="expects a mapping"):
        parse_args(["--model-kwargs", "[1, 2]"])


def test_bool_flags():
    cfg = parse_args(["--download", "--json"])
    assert cfg["download"] is True and cfg["json"] is True
    assert parse_args(["--verify-data", "false"])["verify_data"] is False
    assert parse_args(["--amp", "0"])["amp"] is False
    assert parse_args(["--amp=no"])["amp"] is False
    assert parse_args(["--pin-mem", "yes"])["pin_mem"] is True
    with pytest.raises(ConfigError, match="expects a boolean"):
        parse_args(["--amp", "2"])


def test_value_options_need_a_value():
    with pytest.raises(ConfigError, match="needs a value"):
        parse_args(["--epochs"])
    with pytest.raises(ConfigError, match="one value"):
        parse_args(["--epochs", "1", "2"])


def test_negative_numbers_are_values():
    assert parse_args(["--warmup-lr", "-1e-3"])["warmup_lr"] == pytest.approx(-1e-3)


def test_string_keys_keep_text():
    cfg = parse_args(["--experiment", "2024", "--data-dir", "~", "--aa", "null"])
    assert cfg["experiment"] == "2024" and cfg["data_dir"] == "~" and cfg["aa"] is None


@pytest.mark.parametrize("argv", [["--local_rank", "3"], ["--local-rank", "3"], ["--local-rank=3"]])
def test_legacy_local_rank_ignored(argv):
    cfg = parse_args(argv + ["--epochs", "2"])
    assert cfg["epochs"] == 2
    assert "local_rank" not in cfg


def test_unknown_option_suggests():
    with pytest.raises(ConfigError, match=r"unknown option '--lrr'; did you mean '--lr'\?"):
        parse_args(["--lrr", "1"])
    with pytest.raises(ConfigError, match=r"'--data-dri'.*'--data_dir'"):
        parse_args(["--data-dri", "x"])


def test_positional_argument_rejected():
    with pytest.raises(ConfigError, match="unexpected argument 'cifar10'"):
        parse_args(["cifar10"])


def test_choices():
    assert parse_args(["--neuron-backend", "torch"])["neuron_backend"] == "torch"
    with pytest.raises(ConfigError, match="must be one of auto, cupy, torch; got 'cuda'"):
        parse_args(["--neuron-backend", "cuda"])
    with pytest.raises(ConfigError, match="dvs128_gesture"):
        parse_args(["--dataset", "mnist"])
    with pytest.raises(ConfigError, match="batch, pair, elem"):
        parse_args(["--mixup-mode", "row"])
    with pytest.raises(ConfigError, match="--sched: key 'sched' must be one of cosine; got 'step'"):
        parse_args(["--sched", "step"])


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "command line --batch-size: batch_size must be 1 or more, got 0"),
    (["--batch-size", "-4"], "batch_size must be 1 or more, got -4"),
    (["--val-batch-size", "0"], "val_batch_size must be 1 or more, got 0"),
    (["--accum-iter", "0"], "accum_iter must be 1 or more"),
    (["--time-step", "0"], "time_step must be 1 or more"),
    (["--workers", "-1"], "workers must be 0 or more, got -1"),
    (["--epochs", "0"], "epochs must be 1 or more, got 0"),
    (["--epochs", "-1"], "epochs must be 1 or more, got -1"),
    (["--cooldown-epochs", "-1"], "cooldown_epochs must be 0 or more"),
    (["--warmup-epochs", "-2"], "warmup_epochs must be 0 or more"),
    (["--log-interval", "0"], "log_interval must be 1 or more"),
    (["--checkpoint-interval", "-1"], "checkpoint_interval must be 0 or more"),
    (["--opt", "adamx"], "unknown optimizer 'adamx'; did you mean 'adamax'?"),
    (["--lr", "null", "--blr", "null"], "lr and blr are both null: set --lr"),
    (["--batch-size", "3"], "batch_size 3 is odd, but mixup pairs the samples of a batch (mixup 0.5 from "),
    (["--batch-size", "5", "--mixup", "0", "--cutmix", "1"], "or --cutmix 0"),
])
def test_out_of_range_settings(argv, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(argv, CIFAR10)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_ranges_accept_their_edges():
    cfg = parse_args(["--workers", "0", "--checkpoint-interval", "0", "--cooldown-epochs", "0", "--epochs", "1",
                      "--batch-size", "3", "--mixup", "0", "--opt", "lookahead_SGD"], CIFAR10)
    assert cfg["batch_size"] == 3 and cfg["opt"] == "lookahead_SGD"
    assert parse_args(["--lr", "null", "--blr", "1e-3"], CIFAR10)["blr"] == pytest.approx(1e-3)
    assert parse_args([])["lr"] is None  # no recipe, no dataset: nothing to train, nothing to refuse


def test_a_recipe_value_out_of_range_names_the_file(tmp_path: Path):
    path = write(tmp_path, "dataset: cifar10\nlr: 0.1\nbatch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: batch_size must be 1 or more, got 0$"):
        parse_args([], path)


def help_lines(capsys, argv: list[str], default_config: Path | str | None) -> dict[str, str]:
    """`--help` output: each key's line by key, and the whole text under ''."""
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, default_config=default_config)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0][2:].replace("-", "_"): line for line in out.splitlines() if line.startswith("  --")}
    return {**lines, "": out}


def test_help_exits_zero(capsys):
    lines = help_lines(capsys, ["--help"], "cifar10/cifar10.yml")
    assert lines[""].startswith("usage:") and "--warmup-lr" in lines[""] and "cifar10/cifar10.yml" in lines[""]


@pytest.mark.parametrize("folder,epochs,lr", [("cifar10", "400", "0.001"), ("imagenet", "200", "null")])
def test_help_shows_the_recipe_values_by_group(capsys, folder, epochs, lr):
    lines = help_lines(capsys, ["-h"], REPO / folder / f"{folder}.yml")
    assert lines["epochs"].split()[1] == epochs and lines["lr"].split()[1] == lr
    assert set(lines) == set(DEFAULTS) | {"config", ""}          # every key once
    assert lines["sched"].split()[1:3] == ["cosine", SETTINGS["sched"].help.split()[0]]
    headers = [line for line in lines[""].splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headers == ["recipes in this folder (--config NAME):"] + [f"{group}:" for group in GROUPS]
    listed = [line.split()[0] for line in lines[""].split("recipes in this folder")[1].split("\n\n")[0].splitlines()
              if line.startswith("  ") and line.split()[0].endswith(".yml")]
    assert listed[0] == f"{folder}.yml" and {"spikformer.yml", "spikingformer.yml"} < set(listed)
    assert "Spikformer-" in lines[""]  # each recipe with its first comment line
    assert NO_EFFECT in lines["patch_size"] and "feeds the model" in lines["dim"]
    assert "(auto/cupy/torch)" in lines["neuron_backend"]


def test_train_and_test_help_fit_their_program(capsys, monkeypatch):
    """train.py --help lists every key; test.py --help only what evaluation reads, under test.py's usage; model.py
    --help the network's keys."""
    for program, script in (("train", "train.py"), ("test", "test.py"), ("model", "model.py")):
        monkeypatch.setattr("sys.argv", [str(REPO / "cifar10" / script), "--help"])
        with pytest.raises(SystemExit):
            parse_args(["--help"], CIFAR10, program=program)
        out = capsys.readouterr().out
        usage = [line for line in out.splitlines() if "usage:" in line]
        assert len(usage) == 1 and usage[0].startswith(f"usage: {script} "), usage
        keys = {line.split()[0] for line in out.splitlines() if line.startswith("  --")}
        training = {"--mixup", "--lr", "--warmup-epochs", "--resume", "--finetune", "--smoothing"}
        if program == "train":
            assert training < keys and "--use-ema" in keys
        elif program == "model":
            assert keys == {"--config", "--model", "--model-kwargs", "--num-classes", "--time-step", "--batch-coupled-ssa",
                            "--neuron-backend", "--dim", "--num-heads", "--mlp-ratio", "--img-size"}, keys
        else:
            assert not training & keys and {"--checkpoint", "--use-ema", "--model-kwargs", "--data-dir"} < keys
            assert usage[0] == "usage: test.py --checkpoint PATH [--KEY VALUE ...]"


def test_an_unknown_model_gets_the_closest_name_a_misfit_the_list():
    with pytest.raises(ConfigError, match=r"'msvit_cifar_4_38' is not a registered model; "
                                          r"did you mean 'msvit_cifar_4_384'\?$"):
        create_dataset_model(parse_args(["--model", "msvit_cifar_4_38"], CIFAR10), ["msvit_cifar_4_384"])
    with pytest.raises(ConfigError, match=r"'msvit_10_384' does not suit dataset 'cifar10'; choose one of "
                                          r"msvit_cifar_4_384, qkformer_cifar_4_384$"):
        create_dataset_model(parse_args(["--model", "msvit_10_384"], CIFAR10),
                             ["msvit_cifar_4_384", "qkformer_cifar_4_384"])


def test_help_follows_the_config_option(capsys, tmp_path: Path):
    other = write(tmp_path, "epochs: 7\n", "other.yml")
    assert help_lines(capsys, ["--config", str(other), "--help"], CIFAR10)["epochs"].split()[1] == "7"
    assert help_lines(capsys, ["--help"], None)["epochs"].split()[1] == str(DEFAULTS["epochs"])


def test_every_key_has_a_group_and_a_description():
    assert DEFAULTS == {key: setting.default for key, setting in SETTINGS.items()}
    for key, setting in SETTINGS.items():
        assert setting.group in GROUPS, key
        assert setting.help.strip() and "\n" not in setting.help, key
    assert {group for _, group, _ in SETTINGS.values()} == set(GROUPS)
    legacy = {key for key, setting in SETTINGS.items() if NO_EFFECT in setting.help}
    assert legacy == {"layer", "depths", "patch_size"}


# ---------------------------------------------------------------- YAML validation

def test_unknown_yaml_key_suggests(tmp_path: Path):
    path = write(tmp_path, "epochs: 3\nlrr: 0.1\n", "cifar10.yml")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in .*cifar10\.yml; did you mean 'lr'\?"):
        load_config(path)


def test_wrong_type(tmp_path: Path):
    path = write(tmp_path, "epochs: ten\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' expects an integer, got 'ten' \(str\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"key 'lr' expects a float or null, got 'fast' \(str\)"):
        parse_args(["--lr", "fast"])


def test_bool_is_not_an_int(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"key 'batch_size' expects an integer, got True \(bool\)"):
        load_config(write(tmp_path, "batch_size: true\n"))
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config(write(tmp_path, "epochs: 10.5\n"))


def test_float_coercion(tmp_path: Path):
    cfg = load_config(write(tmp_path, "lr: 1e-3\nmin_lr: 2\nscale: [1, 1e-1]\n"))
    assert cfg["lr"] == 1e-3 and type(cfg["lr"]) is float
    assert cfg["min_lr"] == 2.0 and type(cfg["min_lr"]) is float
    assert cfg["scale"] == [1.0, 0.1]


def test_malformed_yaml_names_line(tmp_path: Path):
    path = write(tmp_path, "epochs: 3\nlr: 1e-3\nmean: [0.5, 0.5\nstd: [0.2]\n", "cifar10.yml")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "cifar10.yml line " in message and "could not parse" in message and "\n" not in message
    line = int(message.split(" line ")[1].split(":")[0])
    assert 3 <= line <= 5


def test_mapping_error_line(tmp_path: Path):
    path = write(tmp_path, "epochs: 3\nlr: 1e-3\n  bad: indent\n")
    with pytest.raises(ConfigError, match=r"recipe\.yml line 3: could not parse"):
        load_config(path)


def test_duplicate_key_rejected(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"line 3: .*duplicate key 'lr'"):
        load_config(write(tmp_path, "lr: 0.1\nepochs: 3\nlr: 0.2\n"))


def test_top_level_must_be_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="top level must be a mapping.*list"):
        load_config(write(tmp_path, "- lr\n- epochs\n"))
    assert load_config(write(tmp_path, "# nothing set\n")) == {}


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse_args(["--config", str(tmp_path / "nope.yml")])


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


# ---------------------------------------------------------------- model kwargs, saving

def test_model_kwargs_merging():
    cfg = parse_args(["--num-classes", "10", "--time-step", "8", "--dim", "256", "--num-heads", "8",
                      "--model-kwargs", "{num_heads: 16, drop_path_rate: 0.1}"])
    assert model_kwargs(cfg) == {"num_classes": 10, "T": 8, "neuron_backend": "auto", "batch_coupled_ssa": True,
                                 "embed_dim": 256, "num_heads": 16, "drop_path_rate": 0.1}
    off = parse_args(["--batch-coupled-ssa", "false", "--model-kwargs", "{depths: [1, 1, 1]}"])
    assert model_kwargs(off)["batch_coupled_ssa"] is False


@pytest.mark.parametrize("value,message", [
    ("{embed_dim:48}", "model_kwargs.embed_dim:48 has no value: YAML needs a space after the colon, as in "
                       "{embed_dim: 48}"),
    ("{embed_dim: }", "model_kwargs.embed_dim is null: give it a value, as in {embed_dim: 384}"),
    ("{embed_dimm: 32}", "model_kwargs.embed_dimm is not an argument of msvit_cifar_4_384; did you mean 'embed_dim'?"),
    ("{depths: 1}", "model_kwargs.depths expects a list of integers, got 1 (int)"),
    ('{embed_dim: "wide"}', "model_kwargs.embed_dim expects an integer, got 'wide' (str)"),
    ("{num_heads: 0}", "model_kwargs.num_heads 0 must be 1 or more"),
    ("{depths: [1, 1]}", "model_kwargs.depths [1, 1] and width_ratios [0.5, 0.5, 1.0] (the model's default) must"),
    ("{embed_dim: 30}", "model_kwargs.embed_dim 30 gives stage widths 15, 15, 30, not all divisible by num_heads 8 "
                        "(the model's default); use an embed_dim that is a multiple of 16, or a num_heads that "
                        "divides 15"),
])
def test_model_kwargs_are_checked_against_the_model(value, message):
    with pytest.raises(ConfigError) as exc:
        parse_args(["--model-kwargs", value], CIFAR10)
    assert message in str(exc.value)


def test_model_shape_messages_name_what_the_user_set():
    with pytest.raises(ConfigError, match=r"^embed_dim 384 \(the model's default\) gives stage widths 192, 192, "
                                          r"384, not all divisible by num_heads 7; .* multiple of 14"):
        parse_args(["--num-heads", "7"], CIFAR10)
    with pytest.raises(ConfigError, match=r"^dim 40 gives .* num_heads 8 \(the model's default\)"):
        parse_args(["--dim", "40"], CIFAR10)
    # QKFormer's stages are a quarter, half and all of embed_dim
    with pytest.raises(ConfigError, match="widths 8, 16, 32, not all divisible by model_kwargs.num_heads 16"):
        parse_args(["--model", "qkformer_cifar_4_384", "--model-kwargs", "{embed_dim: 32, num_heads: 16}"], CIFAR10)
    with pytest.raises(ConfigError, match="time_step 0 must be 1 or more"):
        check_model_kwargs("msvit_cifar_4_384", {"T": 0}, {"T": "time_step"})


def test_model_kwargs_are_converted_for_the_model():
    checked = check_model_kwargs("msvit_cifar_4_384", {"drop_path_rate": "1e-1", "depths": (1, 1, 1), "mlp_ratio": 2})
    assert checked == {"drop_path_rate": 0.1, "depths": [1, 1, 1], "mlp_ratio": 2.0}
    assert type(checked["mlp_ratio"]) is float
    cfg = parse_args(["--model-kwargs", "{embed_dim: 32, num_heads: 2, drop_path_rate: 1e-1}"], CIFAR10)
    model = create_dataset_model(cfg, msvit.MODEL_NAMES)
    assert model.config["drop_path_rate"] == 0.1 and model.dims == [16, 16, 32]
    with pytest.raises(ConfigError, match="embed_dimm is not an argument"):   # create_model(**overrides)
        create_dataset_model(cfg, msvit.MODEL_NAMES, embed_dimm=3)


def test_parse_model_kwargs_reads_yaml_and_json():
    assert parse_model_kwargs('{"embed_dim": 32, "depths": [1, 1]}') == {"embed_dim": 32, "depths": [1, 1]}
    assert parse_model_kwargs("{embed_dim: 32}") == {"embed_dim": 32}
    with pytest.raises(ConfigError, match="--model-kwargs: key 'model_kwargs' expects a mapping"):
        parse_model_kwargs("[1, 2]")


@pytest.mark.skipif(torch.cuda.is_available() and cupy_unavailable_reason() is None, reason="CuPy works here")
def test_cupy_backend_without_cupy_names_the_reason():
    with pytest.raises(UserError) as exc:
        parse_args(["--neuron-backend", "cupy"], CIFAR10)
    assert cupy_unavailable_reason() in str(exc.value) and "auto or torch" in str(exc.value)


def test_argument_parser_errors_are_user_errors():
    parser = ArgumentParser()
    parser.add_argument("--batches", type=int)
    with pytest.raises(UserError, match="argument --batches: invalid int value: 'x'"):
        parser.parse_args(["--batches", "x"])


def test_model_kwargs_minimal():
    kwargs = model_kwargs(parse_args(["--img-size", "64"]))
    assert kwargs == {"T": 4, "neuron_backend": "auto", "batch_coupled_ssa": True}  # no img_size, no unset legacy keys
    kwargs = model_kwargs(parse_args(["--model-kwargs", "{img_size: 64}", "--mlp-ratio", "1"]))
    assert kwargs["img_size"] == 64 and kwargs["mlp_ratio"] == 1.0


def test_save_config_round_trip(tmp_path: Path):
    cfg = parse_args(["--lr", "5e-4", "--model-kwargs", "{embed_dim: 96}", "--mean", "0.5,0.5,0.5",
                      "--experiment", "run 1"], default_config=REPO / "cifar10" / "cifar10.yml")
    out = tmp_path / "config.yml"
    save_config(cfg, out)
    loaded = load_config(out)
    assert list(loaded) == list(DEFAULTS)
    assert loaded == {key: cfg[key] for key in DEFAULTS}
    assert [p.name for p in tmp_path.iterdir()] == ["config.yml"]      # no temporary file left
    assert parse_args(["--config", str(out)])["lr"] == pytest.approx(5e-4)


def test_config_names_a_recipe_beside_the_folders_own():
    cfg = parse_args(["--config", "spikformer.yml"], default_config=REPO / "cifar10" / "cifar10.yml")
    assert cfg["config"] == str(REPO / "cifar10" / "spikformer.yml") and cfg["model"] == "spikformer_cifar_4_384"
    with pytest.raises(ConfigError, match="cannot read config file 'nosuch.yml'"):
        parse_args(["--config", "nosuch.yml"], default_config=REPO / "cifar10" / "cifar10.yml")


# what each baseline recipe must carry from its release (spec: baselines.md), the traps first
BASELINE_RECIPE_FACTS = [
    ("imagenet/sdt_8_768.yml", dict(opt="lamb", lr=1e-3, batch_size=36, mixup_prob=1.0, scale=[0.08, 1.0],
                                    crop_pct=0.95, smoothing=0.1, reprob=0.0)),        # no BCE: no key for it
    ("imagenet/sdt_10_512.yml", dict(model="sdt_10_512", batch_size=36, mixup_prob=0.75, scale=[0.2, 1.0])),
    ("imagenet/spikformer.yml", dict(opt="adamw", lr=5e-4, scale=[1.0, 1.0], crop_pct=1.0, warmup_epochs=20)),
    ("cifar10/spikformer.yml", dict(batch_size=128, aa_ops=["Equalize", "Rotate", "ShearX", "TranslateXRel",
                                                             "TranslateYRel"])),
    ("cifar10/spikingformer.yml", dict(epochs=400, aa_ops=None)),
    ("cifar10/sdt.yml", dict(lr=3e-4, amp=False)),
    ("cifar10-dvs/sdt.yml", dict(tet=True, tet_means=1.0, tet_lambda=0.001, time_step=10, img_size=64)),
    ("dvs128-gesture/sdt.yml", dict(opt="lamb", time_step=16)),
]


@pytest.mark.parametrize("path,facts", BASELINE_RECIPE_FACTS, ids=[p for p, _ in BASELINE_RECIPE_FACTS])
def test_baseline_recipes_carry_the_release_settings(path, facts):
    cfg = parse_args([], default_config=REPO / path)
    assert {key: cfg[key] for key in facts} == facts
    assert cfg["model_kwargs"].get("drop_path_rate", 0) == 0  # built but never applied in every release
    with torch.device("meta"):
        model = create_dataset_model(cfg, msvit.ALL_MODEL_NAMES)
    assert not model.config["batch_coupled_ssa"]


def test_a_null_class_count_comes_from_a_run_on_the_same_dataset():
    """An ImageFolder run's class count (the imagenet recipes say null) reaches test.py, msvit.energy and msvit.maps;
    a run on another dataset, or a count on the command line, leaves it alone."""
    imagenet = REPO / "imagenet" / "imagenet.yml"
    run = {**parse_args([], imagenet), "num_classes": 100}
    cfg = parse_args([], imagenet)
    assert cfg["num_classes"] is None
    restore_run_settings(cfg, {"config": run}, [])
    assert cfg["num_classes"] == 100
    for argv, saved, expected in ((["--num-classes", "5"], run, 5), ([], {**run, "dataset": "cifar10"}, None)):
        cfg = parse_args(argv, imagenet)
        restore_run_settings(cfg, {"config": saved}, argv[:1] and ["num_classes"])
        assert cfg["num_classes"] == expected
