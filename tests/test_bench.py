"""`python -m msvit.bench`: timings of a tiny model add up, the JSON CLI parses, bad arguments exit 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import msvit
import msvit.bench as bench
from msvit.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), img_size=8)


@pytest.fixture(autouse=True)
def restore_threads():  # BenchSettings(threads=1) changes the process-wide setting
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_run(**kwargs):
    settings = dict(batch_size=4, T=2, device="cpu", backend="torch", warmup=1, repeats=3,
                    model_kwargs=TINY, threads=1)
    return bench.benchmark(bench.BenchSettings("msvit_cifar_4_384", **{**settings, **kwargs}))


def test_timings_add_up_and_settings_are_reported():
    r = tiny_run()
    assert all(r[k] > 0 for k in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms", "peak_memory_mb"))
    # each step is exactly fwd + bwd + opt; the medians of the parts add up to the median step only roughly
    assert r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"] == pytest.approx(r["step_ms"], rel=0.5)
    assert r["images_per_s"] == pytest.approx(4 / (r["step_ms"] / 1000))
    assert sorted(r["step_ms_all"])[1] == pytest.approx(r["step_ms"], abs=1e-3)
    assert r["input_shape"] == [4, 3, 8, 8] and r["img_size"] == 8 and r["T"] == 2
    assert r["backend"] == "torch" and r["threads"] == 1 and r["device"] == "cpu" and r["gpu"] is None
    assert r["params"] == msvit.count_parameters(timm.create_model("msvit_cifar_4_384", **TINY))
    assert r["torch"] == torch.__version__ and r["cpu"]


def test_dvs_models_get_event_frames_and_model_defaults():
    r = bench.benchmark(bench.BenchSettings("qkformer_dvs_2_256", batch_size=2, T=None, warmup=0, repeats=1,
                                            threads=1, model_kwargs=dict(embed_dim=32, num_heads=2, img_size=16)))
    assert r["T"] == 16 and r["input_shape"] == [2, 16, 2, 16, 16] and r["num_classes"] == 11


def test_reference_runs_switch_the_model_once(monkeypatch):
    called = []
    monkeypatch.setattr("msvit.bench.step.use_reference_implementation", lambda m: called.append(m))
    assert tiny_run(reference=True, repeats=1)["reference"] and len(called) == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(device="cpu", backend="cupy"), "cupy runs on CUDA"),
    (dict(model_kwargs=dict(embed_dimm=32)), "embed_dimm"),
    (dict(repeats=0), "repeats"),
])
def test_bad_settings_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        tiny_run(**kwargs)


def test_unknown_model_exits_2_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", "msvit_tiny"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model 'msvit_tiny'")
    assert "qkformer_cifar_4_384" in err[0]


def test_time_step_is_the_flag_and_T_its_alias():
    parser = bench.build_parser()
    assert parser.parse_args(["--time-step", "3"]).T == parser.parse_args(["--T", "3"]).T == 3
    args = parser.parse_args(["--models", "a", "--T", "2"])
    assert "--time-step" in bench.child_argv(args, "msvit_cifar_4_384")


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size must be 1 or more, got 0"),
    (["--time-step", "0"], "--time-step 0 must be 1 or more"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (["--model-kwargs", "{embed_dim:48}"], "model_kwargs.embed_dim:48 has no value: YAML needs a space after the"),
    (["--model-kwargs", "{embed_dim: 30}"], "not all divisible by num_heads 8 (the model's default)"),
    (["--model-kwargs", "[1]"], "--model-kwargs: key 'model_kwargs' expects a mapping"),
])
def test_bad_arguments_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", "msvit_cifar_4_384", *argv])
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", "msvit_cifar_4_384", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --device cuda but torch sees no CUDA device; use --device cpu\n"


def test_the_command_lines_defaults_are_the_settings_defaults():
    args = bench.build_parser().parse_args(["--model", "msvit_cifar_4_384"])
    settings = bench.cli.settings_from_args(args, {})
    assert settings == bench.BenchSettings("msvit_cifar_4_384", model_kwargs={})
    args = bench.build_parser().parse_args(["--model", "m", "--batch-coupled-ssa", "false", "--profile", "3"])
    settings = bench.cli.settings_from_args(args, {})
    assert settings.batch_coupled_ssa is False and settings.profile_rows == 3
    with pytest.raises(AttributeError):
        settings.repeats = 1  # frozen


def test_json_is_one_rounded_object_on_stdout(monkeypatch, capsys):
    def fake_benchmark(*args, **kwargs):
        print("a library's chatter")
        return dict(step_ms=1 / 3, profile=None)
    monkeypatch.setattr(bench.cli, "benchmark", fake_benchmark)  # where main looks it up
    bench.main(["--model", "msvit_cifar_4_384", "--json"])
    out, err = capsys.readouterr()
    assert json.loads(out) == {"step_ms": 0.333333, "profile": None} and len(out.splitlines()) == 1
    assert "a library's chatter" in err


def test_all_runs_each_model_through_a_child(monkeypatch, capsys):
    args = bench.build_parser().parse_args(["--models", "a", "--batch-size", "4", "--T", "2", "--amp",
                                            "--threads", "1", "--model-kwargs", json.dumps(TINY)])
    back = bench.build_parser().parse_args(bench.child_argv(args, "msvit_cifar_4_384"))
    same = {k for k in vars(args) if k not in ("model", "models", "all", "json")}
    assert {k: getattr(back, k) for k in same} == {k: getattr(args, k) for k in same}
    assert back.model == "msvit_cifar_4_384" and back.json

    children = []
    monkeypatch.setattr(bench.cli, "run_child", lambda argv: children.append(argv) or dict(
        tiny_run(), model=argv[argv.index("--model") + 1]))
    bench.main(["--models", "msvit_cifar_4_384,qkformer_cifar_4_384", "--json"])
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["model"] for r in results] == ["msvit_cifar_4_384", "qkformer_cifar_4_384"]
    assert len(children) == 2
    table = bench.format_table(results + [dict(model="x", error="boom")])
    assert "qkformer_cifar_4_384" in table and "x: error: boom" in table


def test_a_childs_warnings_reach_stderr(monkeypatch, capsys):
    done = subprocess.CompletedProcess([], 0, stdout='{"model": "m", "compile": false}\n',
                                       stderr="warning: torch.compile failed (X); benchmarking the eager model\n")
    monkeypatch.setattr(bench.cli.subprocess, "run", lambda *args, **kwargs: done)
    assert bench.run_child(["--model", "m"]) == {"model": "m", "compile": False}
    assert "warning: torch.compile failed (X)" in capsys.readouterr().err


def test_json_cli_in_a_subprocess():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "msvit.bench", "--model", "qkformer_cifar_4_384",
                           "--batch-size", "2", "--time-step", "2", "--warmup", "1", "--repeats", "2", "--json",
                           "--model-kwargs", json.dumps(TINY)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["model"] == "qkformer_cifar_4_384" and r["batch_size"] == 2 and r["threads"] == 1
    # --json rounds to 6 significant digits: each side is off by up to 5e-6 of itself
    assert r["step_ms"] > 0 and r["images_per_s"] == pytest.approx(2000 / r["step_ms"], rel=2e-5)
    assert r["memory"] == "process peak RSS" and r["peak_memory_mb"] >= r["rss_before_model_mb"] > 0


@pytest.mark.parametrize("reference", [False, True])
def test_lif_bandwidth_counts_bytes_and_times_both_directions(reference):
    r = bench.lif_bandwidth((3, 2, 5, 7), device="cpu", backend="torch", warmup=1, repeats=3, reference=reference)
    assert r["neurons"] == 70 and r["T"] == 3 and r["backend"] == "torch" and r["reference"] is reference
    assert r["forward_bytes"] == (3 * 3 + 2) * 70 * 4 and r["backward_bytes"] == (3 * 3 + 2) * 70 * 4
    assert r["forward_ms"] > 0 and r["backward_ms"] > 0 and r["kernel_forward_ms"] is None
    assert r["forward_gbps"] == pytest.approx(r["forward_bytes"] / r["forward_ms"] / 1e6)
    assert 0 < r["spike_rate"] < 1 and r["nominal_gbps"] is None
    text = bench.format_lif(r)
    assert "forward call" in text and "backward call" in text and "kernel" not in text


@pytest.mark.parametrize("argv,match", [
    (["--lif", "--lif-shape", "4xa"], "--lif-shape must look like"),
    (["--lif", "--lif-shape", "4"], "at least one positive neuron dimension"),
    (["--lif", "--lif-dtype", "float16"], "float16 on CUDA"),
    (["--all", "--profile", "5"], "--profile times one model"),
])
def test_lif_and_profile_arguments_are_checked(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_profile_reports_the_busiest_operators(capsys):
    r = tiny_run(repeats=1, warmup=0, profile_rows=5)
    assert "convolution" in r["profile"] and "Self CPU" in r["profile"]
    assert tiny_run(repeats=1, warmup=0)["profile"] is None


def test_gpu_report_script_parses_and_rejects_unknown_parts(tmp_path):
    script = ROOT / "tools" / "gpu_report.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(script), str(tmp_path / "out"), "bogus"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2 and "unknown part bogus" in proc.stderr
    assert (tmp_path / "out" / "gpu.txt").exists()


def test_alternate_times_both_paths_on_one_model(monkeypatch):
    calls = []
    real_switch = msvit.use_reference_implementation
    monkeypatch.setattr("msvit.bench.step.use_reference_implementation",
                        lambda model, enabled=True: calls.append(enabled) or real_switch(model, enabled))
    r = tiny_run(alternate=True, warmup=1, repeats=2)
    assert calls == [True, False] * 4  # each step pair, then each path's held memory, ending optimised
    assert len(r["step_ms_all"]) == len(r["reference_step_ms_all"]) == 2
    assert r["speedup"] == pytest.approx(r["reference_step_ms"] / r["step_ms"])
    assert r["alternate"] and r["reference_peak_memory_mb"] is None  # CPU: one process RSS for both
    assert r["reference_held_mb"] > r["held_mb"] > 0  # the optimised path keeps less for backward
    assert "speed-up" in bench.format_table([r])
    with pytest.raises(UserError, match="--alternate already includes it"):
        tiny_run(alternate=True, reference=True)


def test_alternate_with_compile_times_reference_eager_and_compiled(monkeypatch):
    real_compile, compiled = torch.compile, []

    def quick_compile(model, *, mode, **kwargs):  # dynamo without inductor: the same alternation, in seconds
        compiled.append(mode)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", quick_compile)
    calls = []
    real_switch = msvit.use_reference_implementation
    monkeypatch.setattr("msvit.bench.step.use_reference_implementation",
                        lambda model, enabled=True: calls.append(enabled) or real_switch(model, enabled))
    r = tiny_run(compile=True, alternate=True, warmup=1, repeats=2, compile_mode="reduce-overhead")
    assert compiled == ["reduce-overhead"] and r["compile"] and r["compile_s"] > 0
    assert r["compile_mode"] == "reduce-overhead" and "compile mode reduce-overhead" in bench.format_table([r])
    assert calls == [True, False, False] * 4  # reference, eager, compiled each round, then their held memory
    assert len(r["step_ms_all"]) == len(r["eager_step_ms_all"]) == len(r["reference_step_ms_all"]) == 2
    assert r["speedup"] == pytest.approx(r["eager_step_ms"] / r["step_ms"])
    assert r["speedup_over_reference"] == pytest.approx(r["reference_step_ms"] / r["step_ms"])
    table = bench.format_table([r])
    assert "eager ms/step" in table and "reference ms/step" in table and "over reference" in table


def test_a_failed_compile_is_reported_and_the_reference_still_alternates(monkeypatch, capsys):
    def broken_compile(model, *args, **kwargs):  # as on the H200 on 2026-12-04: the first call raises
        def call(*a, **k):
            raise RuntimeError("LoweringException: no lowering\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    r = tiny_run(compile=True, alternate=True, warmup=0, repeats=2)
    assert not r["compile"] and r["compile_error"] == "RuntimeError: LoweringException: no lowering"
    assert "torch.compile failed (RuntimeError: LoweringException: no lowering)" in capsys.readouterr().err
    assert len(r["reference_step_ms_all"]) == len(r["step_ms_all"]) == 2 and r["speedup"] > 0


def test_alternate_ssa_times_both_settings_on_one_model(monkeypatch):
    settings = []
    real_set = bench.step.set_batch_coupled_ssa
    monkeypatch.setattr(bench.step, "set_batch_coupled_ssa",
                        lambda model, coupled: settings.append(coupled) or real_set(model, coupled))
    r = tiny_run(alternate_ssa=True, warmup=1, repeats=2)
    assert settings == [False, True] * 4  # per-sample then coupled each round and for the held memory
    assert r["batch_coupled_ssa"] is True and r["alternate_ssa"] and not r["alternate"]
    assert len(r["step_ms_all"]) == len(r["per_sample_step_ms_all"]) == 2
    assert r["coupling_cost"] == pytest.approx(r["step_ms"] / r["per_sample_step_ms"])
    assert "coupled/per-sample" in bench.format_table([r])
    assert tiny_run(batch_coupled_ssa=False, repeats=1, warmup=0)["batch_coupled_ssa"] is False
    for kwargs in (dict(alternate=True), dict(batch_coupled_ssa=True)):
        with pytest.raises(UserError, match="--alternate"):
            tiny_run(alternate_ssa=True, **kwargs)


def test_grad_checkpointing_switch_reaches_the_model(monkeypatch):
    switched = []
    set_grad_checkpointing = msvit.SpikingTransformer.set_grad_checkpointing

    def spy(model, enable=True):
        switched.append(enable)
        set_grad_checkpointing(model, enable)
    monkeypatch.setattr(msvit.SpikingTransformer, "set_grad_checkpointing", spy)
    assert tiny_run(grad_checkpointing=True)["grad_checkpointing"] is True
    assert tiny_run()["grad_checkpointing"] is False
    assert switched == [True, False]
    assert "grad_checkpointing" in bench.child_argv(bench.build_parser().parse_args(
        ["--all", "--grad-checkpointing"]), "msvit_cifar_4_384")[-1].replace("-", "_")


def test_firing_watch_cost_times_both_forwards_in_turns(monkeypatch, capsys):
    """--firing-watch: both medians, the overhead between them, the neurons hooked, and the one-line report."""
    import msvit.bench.watch

    rounds = []
    real = msvit.bench.watch.FiringWatch.measuring
    monkeypatch.setattr(msvit.bench.watch.FiringWatch, "measuring",
                        lambda self: rounds.append(len(rounds)) or real(self))
    bench.main(["--model", "msvit_cifar_4_384", "--model-kwargs", "{embed_dim: 32, num_heads: 2, depths: [1, 1, 1]}",
                "--img-size", "8", "--batch-size", "2", "--time-step", "2", "--warmup", "1", "--repeats", "3",
                "--threads", "1", "--firing-watch", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert len(rounds) == 4  # one watched forward per round, warm-up included
    assert result["plain_ms"] > 0 and result["watched_ms"] > 0 and result["read_ms"] >= 0
    assert len(result["rounds_ms"]) == 3 and result["plain_ms"] == sorted(p for p, _ in result["rounds_ms"])[1]
    ratios = sorted(w / p for p, w in result["rounds_ms"])
    assert result["overhead"] == pytest.approx(ratios[1] - 1, abs=2e-4)  # the JSON rounds to 6 digits
    assert result["neurons"] == 30 and result["T"] == 2 and result["batch_size"] == 2
    line = msvit.bench.watch.format_watch_cost(result)
    assert "with the firing watch" in line and "30 neurons hooked" in line
