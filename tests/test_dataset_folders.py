"""Each dataset folder is a thin entry to the shared package: its YAML builds the right model, and
`model.py` works both from inside the folder and from the repository root."""
import subprocess
import sys
from pathlib import Path

import pytest

import msvit
from msvit.config import parse_args
from msvit.errors import ConfigError
from msvit.zoo import create_dataset_model

ROOT = Path(__file__).resolve().parents[1]
# folder -> (default model, classes, parameter count of that published model)
FOLDERS = {
    "cifar10": ("msvit_cifar_4_384", 10, 7_558_762),
    "cifar100": ("msvit_cifar_4_384", 100, 7_593_412),
    "imagenet": ("msvit_10_384", 1000, 17_686_216),
    "dvs128-gesture": ("msvit_dvs_2_256", 11, 2_048_779),
    "cifar10-dvs": ("msvit_dvs_2_256", 10, 1_553_546),
}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_folder_yaml_builds_the_published_model(folder):
    name, classes, params = FOLDERS[folder]
    cfg = parse_args([], ROOT / folder / f"{folder}.yml")
    assert cfg["model"] == name
    for script in ("model.py", "train.py", "test.py"):
        assert (ROOT / folder / script).is_file()
    model = create_dataset_model(cfg, msvit.MODEL_NAMES)
    assert model.num_classes == classes
    assert msvit.count_parameters(model) == params


def test_model_py_runs_from_the_folder_and_from_the_root():
    inside = subprocess.run([sys.executable, "-c", "import model; m = model.create_model(embed_dim=64, "
                             "num_heads=2); print(m.num_classes, m.dims)"],
                            cwd=ROOT / "cifar100", capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split()[0] == "100"
    outside = subprocess.run([sys.executable, "cifar10-dvs/model.py", "--model", "qkformer_dvs_2_256"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert outside.returncode == 0, outside.stderr
    assert "qkformer_dvs_2_256 for cifar10_dvs: 1,504,138 parameters" in outside.stdout


def test_a_model_that_does_not_suit_the_dataset_is_refused():
    cfg = parse_args(["--model", "msvit_10_384"], ROOT / "cifar10" / "cifar10.yml")
    with pytest.raises(ConfigError, match="does not suit dataset 'cifar10'"):
        create_dataset_model(cfg, ("msvit_cifar_4_384", "qkformer_cifar_4_384"))
    run = subprocess.run([sys.executable, "cifar10/model.py", "--model", "msvit_10_384"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("error: model 'msvit_10_384' does not suit")
