"""The package as people install and call it: pyproject.toml declares every import (figures and the digits demo
as extras), figures leave the caller's matplotlib as it was, `import msvit` neither prints nor touches the
logging setup, `--threads` reaches torch, and a reduced model's energy figures name its arguments.

The messages for a missing optional package are in tests/test_dataset_runs.py (PACKAGE_REFUSED)."""
import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # 3.10: the pyproject test skips
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"] if tomllib else {}


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


# ------------------------------------------------------------------------------------------ dependencies

def _imported_modules() -> set[str]:
    """The top-level modules that msvit's own code imports (absolute imports only)."""
    names = set()
    for path in (ROOT / "msvit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"msvit"}


def _with_requirements(names: set[str]) -> set[str]:
    """`names` and, recursively, what their installed distributions require (extras' requirements left out)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r.replace('"', "").replace("'", "")]
    return seen


def test_pyproject_declares_every_import():
    """pyproject.toml is the one list: every third-party module msvit imports comes from a declared dependency
    (or one of theirs), or from an extra; matplotlib and scikit-learn only from extras, which the test extra
    gathers."""
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11's tomllib")
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["optional-dependencies"].items()}
    core = _with_requirements({_name(r) for r in PYPROJECT["dependencies"]})
    everything = _with_requirements(core | set().union(*extras.values()))
    distributions = importlib.metadata.packages_distributions()
    for module in _imported_modules():
        if module not in distributions:  # not installed here: only the GPU extras may provide it
            assert any(name.startswith(module) for name in extras["cupy12"] | extras["cupy13"]), module
            continue
        provided = {_name(d) for d in distributions[module]}
        assert provided & everything, f"msvit imports {module} ({provided}), which pyproject.toml does not declare"
    assert "matplotlib" in extras["figures"] and "scikit-learn" in extras["demo"]
    assert not {"matplotlib", "scikit-learn"} & {_name(r) for r in PYPROJECT["dependencies"]}
    assert extras["figures"] | extras["demo"] | {"pytest"} <= extras["test"]


def test_setup_installs_from_pyproject_alone():
    """`make setup` installs the test extra of the package itself; requirements.txt lists no package of its own."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'pip install .*-e "\.\[test\]"', makefile)
    stamp = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M).group(1).split()
    assert "pyproject.toml" in stamp and all((ROOT / path).exists() for path in stamp)
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all(line.startswith("-e .[") for line in lines if line and not line.startswith("#"))


# ------------------------------------------------------------------------------------------ figures

def test_figures_leave_the_callers_matplotlib_alone(tmp_path):
    """A notebook's backend and style are as they were after msvit draws, pyplot is never imported, and the PNGs
    are written in the package's own style."""
    proc = _python(f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        matplotlib.rcParams.update({{"font.size": 17.0, "axes.grid": False, "figure.dpi": 42.0}})
        before = dict(matplotlib.rcParams)

        import numpy as np, timm, torch, msvit
        from msvit.energy import EnergyMeter, write_figures
        from msvit.maps.sheet import draw_sheet
        model = timm.create_model("msvit_cifar_4_384", embed_dim=16, num_heads=2, depths=(1, 1, 1), T=2,
                                  num_classes=3, neuron_backend="torch")
        with torch.no_grad(), EnergyMeter(model) as meter:
            model(torch.randn(2, 3, 8, 8))
        paths = write_figures([("tiny", meter.report())], {str(tmp_path)!r})
        maps = {{"input": np.zeros((3, 8, 8)), "stages": [{{"name": "stage1", "spikes": np.ones((4, 4))}}]}}
        paths.append(draw_sheet(maps, {str(tmp_path / "sheet.png")!r}, title="sheet"))

        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        changed = {{k: (before[k], v) for k, v in matplotlib.rcParams.items() if before[k] != v}}
        assert not changed, changed
        assert "matplotlib.pyplot" not in sys.modules
        print("\\n".join(map(str, paths)))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    paths = [Path(line) for line in proc.stdout.split()]
    assert [p.name for p in paths] == ["firing_rates.png", "energy.png", "firing_table.png", "sheet.png"]
    for path in paths:
        with Image.open(path) as image:  # the package's DPI (100), not the caller's 42
            assert image.info["dpi"][0] == pytest.approx(100, abs=0.01)


# ------------------------------------------------------------------------------------------ import msvit

@pytest.mark.parametrize("setup", ["logging.basicConfig(level=logging.INFO)", "logging.getLogger().setLevel(logging.INFO)"])
def test_import_msvit_is_quiet(setup):
    """spikingjelly's import-time 'No module named cupy/lava' lines neither print at INFO nor leave a handler on
    the root logger (which made timm's own scripts print every line twice), nor do the DVS datasets'."""
    proc = _python(f"""
        import logging
        {setup}
        handlers = list(logging.getLogger().handlers)
        import msvit
        from msvit.data.events import import_spikingjelly_datasets
        import_spikingjelly_datasets()
        assert logging.getLogger().handlers == handlers, (handlers, logging.getLogger().handlers)
        assert logging.getLogger().level == logging.INFO and logging.root.manager.disable == 0
        logging.getLogger("check").info("still logging")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cupy" not in proc.stderr and "lava" not in proc.stderr, proc.stderr
    assert ("still logging" in proc.stderr) == ("basicConfig" in setup)


# ------------------------------------------------------------------------------------------ threads

def test_threads_setting_reaches_torch(monkeypatch):
    """`--threads 1` is torch's intra-op thread count from the start of train.py's and test.py's run."""
    import msvit.training.evaluate
    import msvit.training.train
    from msvit.config import parse_args

    class Started(Exception):
        pass

    def stop(*args, **kwargs):
        raise Started

    before = torch.get_num_threads()
    try:
        for module, program in ((msvit.training.train, "train"), (msvit.training.evaluate, "test")):
            torch.set_num_threads(2)
            cfg = parse_args(["--config", str(ROOT / "digits" / "digits.yml"), "--threads", "1",
                              "--checkpoint", "unused.pth"], program=program)
            assert cfg["threads"] == 1
            monkeypatch.setattr(module, "init_distributed", stop)  # the run stops right after its first step
            with pytest.raises(Started):
                module.run(cfg, ["msvit_cifar_4_384"])
            assert torch.get_num_threads() == 1, module.__name__
    finally:
        torch.set_num_threads(before)
    assert parse_args(["--config", str(ROOT / "digits" / "digits.yml")])["threads"] is None  # torch's default


def test_threads_must_be_positive():
    from msvit.config import parse_args
    from msvit.errors import ConfigError

    with pytest.raises(ConfigError, match="threads"):
        parse_args(["--threads", "0"])


# ------------------------------------------------------------------------------------------ energy labels

def test_a_reduced_model_is_labelled_with_its_arguments():
    """The energy text and figures name the arguments that made a reduced model, not just its registered name."""
    from msvit.config import parse_args
    from msvit.energy.cli import _label
    from msvit.energy.text import model_label
    from msvit.config import architecture_kwargs

    cfg = parse_args(["--model", "msvit_cifar_4_384", "--model-kwargs", "{embed_dim: 32, depths: [1, 1, 1]}",
                      "--num-heads", "2", "--time-step", "2"])
    report = {"model": cfg["model"], "model_kwargs": architecture_kwargs(cfg), "checkpoint": None}
    assert report["model_kwargs"] == {"num_heads": 2, "embed_dim": 32, "depths": [1, 1, 1]}  # not T or classes
    assert _label(report) == "msvit_cifar_4_384 (num_heads 2, embed_dim 32, depths [1, 1, 1])"
    full = {"model": "msvit_cifar_4_384", "model_kwargs": architecture_kwargs(parse_args(["--model", "msvit_cifar_4_384"]))}
    assert model_label(full) == "msvit_cifar_4_384"
    assert _label({**report, "checkpoint": "/runs/a/best.pth"}).endswith("depths [1, 1, 1]) (best.pth)")
