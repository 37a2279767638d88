"""The config parser: YAML recipes, command-line overrides, validation messages, saving."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from msvit.config import DEFAULTS, ConfigError, load_config, model_kwargs, parse_args, save_config
from msvit.errors import UserError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(REPO.glob("*/*.yml"))


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
    assert raw["batch_coupled_ssa"] is True  # every recipe states the release's SSA, visibly


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


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"], default_config="cifar10/cifar10.yml")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--warmup_lr" in out and "cifar10/cifar10.yml" in out


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
