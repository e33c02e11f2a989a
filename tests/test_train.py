"""The training loop and the `vicreg train` CLI, end to end on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import REPO, free_port, run_cli, tiny_config, tiny_npz
from vicreg.build import data_kind
from vicreg.checkpoint import load_checkpoint, read_backbone_state
from vicreg.cli import main, parse_train_args
from vicreg.config import PRESETS, LossConfig, ModelConfig, OptimConfig, TrainConfig, ViewsConfig, load_config_file
from vicreg.distributed import DistInfo
from vicreg.loss import VICRegOutput
from vicreg.train import NonFiniteLossError, train


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_tiny_run_writes_the_run_folder(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    result = train(cfg)
    run = cfg.out
    steps_per_epoch = 96 // 16
    assert result.step == 2 * steps_per_epoch and not result.interrupted
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["backbone"] == "small_cnn"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for r in steps:
        assert {"lr", "invariance", "variance", "covariance", "images_per_s", "epoch"} <= set(r)
        assert np.isfinite(r["loss"])
    assert any("diag.effective_rank" in r for r in steps)
    assert all(0 <= r["probe.acc"] <= 100 and r["probe.loss"] > 0 for r in steps)  # the online linear probe
    knn = [r for r in rows if "online_knn.top1" in r]
    assert len(knn) == 2 and all(0 <= r["online_knn.top1"] <= 100 and "k=20" in r["online_knn.protocol"] for r in knn)
    assert list((run / "tb").iterdir()), "TensorBoard events are written"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12
    backbone = read_backbone_state(run / "backbone.safetensors")
    assert set(backbone) == {k.removeprefix("backbone.") for k in _weights(run) if k.startswith("backbone.")}
    # learning rate: warm-up then cosine
    lrs = [r["lr"] for r in steps]
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[3]


def test_knn_monitor_on_one_array_file_holds_out_disjoint_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vicreg.monitors

    seen: list[torch.Tensor] = []
    real = vicreg.monitors.extract_features

    def spy(embed, images, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(images.clone())
        return real(embed, images, **kwargs)

    monkeypatch.setattr(vicreg.monitors, "extract_features", spy)
    cfg = tiny_config(tmp_path, epochs=1)  # a single .npz: no test split of its own
    train(cfg)
    neighbours, queries = seen[0], seen[1]
    assert len(queries) == 96 // 5 and len(neighbours) == 96 - 96 // 5
    flat_n, flat_q = neighbours.flatten(1), queries.flatten(1)
    assert not (flat_q[:, None, :] == flat_n[None, :, :]).all(-1).any(), "a query is also a neighbour"


def test_objective_replaces_the_loss_and_its_terms_are_logged(tmp_path: Path) -> None:
    calls: list[tuple[int, ...]] = []

    def cosine_only(z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegOutput:
        calls.append(tuple(z_a.shape))
        inv = 1 - torch.nn.functional.cosine_similarity(z_a.float(), z_b.float()).mean()
        zero = inv.detach() * 0
        return VICRegOutput(inv, inv, zero + 7.0, zero)

    cfg = tiny_config(tmp_path, epochs=1, knn_every=0)
    result = train(cfg, objective=cosine_only)
    assert len(calls) == result.step == 6 and calls[0] == (16, 32)
    rows = [json.loads(line) for line in (cfg.out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert all(r["variance"] == 7.0 and r["loss"] == r["invariance"] for r in rows)
    # the same run with the default objective differs: the hook really replaced the VICReg loss
    plain = train(replace(cfg, out=tmp_path / "plain"))
    assert plain.metrics["variance"] != 7.0


def test_symmetric_views_take_their_probabilities_from_the_config(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, views=ViewsConfig(size=16, symmetric=True, symmetric_blur_prob=0.0))
    info = DistInfo()
    views = data_kind("image").training_data(cfg, info, torch.device("cpu")).views
    assert views.view_a == views.view_b
    assert views.view_a.blur_p == 0.0 and views.view_a.solarize_p == 0.1
    asym = data_kind("image").training_data(tiny_config(tmp_path), info, torch.device("cpu")).views
    assert (asym.view_a.blur_p, asym.view_b.blur_p, asym.view_b.solarize_p) == (1.0, 0.1, 0.2)


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """N steps == N/2 steps, a fresh start from the checkpoint, N/2 steps: the same weights on CPU."""
    full = train(tiny_config(tmp_path / "a", max_steps=8, knn_every=0))
    half = tiny_config(tmp_path / "b", max_steps=4, knn_every=0)
    train(half)
    assert load_checkpoint(half.out / "checkpoints" / "last.pt")["step"] == 4
    resumed = train(replace(half, max_steps=8))
    assert full.step == resumed.step == 8
    wa, wb = _weights(full.run_dir), _weights(resumed.run_dir)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_steps=2, knn_every=0)
    train(cfg)
    other = replace(cfg, max_steps=4, model=ModelConfig(backbone="small_cnn", expander="64-64", width=4))
    with pytest.raises(Exception, match=r"resuming would change model\.expander"):
        train(other)


def test_every_parameter_changes_in_training(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_steps=3, knn_every=0, optim=OptimConfig(name="sgd", base_lr=0.5, warmup_epochs=0))
    torch.manual_seed(cfg.seed)
    initial = data_kind("image").training_data(cfg, DistInfo(), torch.device("cpu")).model(cfg)[0].state_dict()
    train(cfg)
    after = _weights(cfg.out)
    for key, value in initial.items():
        if key.endswith("num_batches_tracked"):
            continue
        assert not torch.equal(value, after[key]), f"{key} did not change"


def test_non_finite_loss_stops_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vicreg.build as build_module

    real_training_data = build_module.ImageKind.training_data
    calls = {"n": 0}

    class Poisoned:
        """The real views (mean, std, ... delegated), with NaN in view A from the 5th call on."""

        def __init__(self, views):
            self.views = views

        def __getattr__(self, name):
            return getattr(self.views, name)

        def __call__(self, x, generator=None):
            calls["n"] += 1
            v_a, v_b = self.views(x, generator=generator)
            if calls["n"] >= 5:  # from step 4 (0-based) on
                v_a = v_a * float("nan")
            return v_a, v_b

    def poisoned(self, cfg, info, device):
        data = real_training_data(self, cfg, info, device)
        data.views = Poisoned(data.views)
        return data

    monkeypatch.setattr(build_module.ImageKind, "training_data", poisoned)
    cfg = tiny_config(tmp_path, ckpt_every=2, log_every=3, knn_every=0, on_collapse="stop")
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 4 \(terms: loss, invariance"):
        train(cfg)
    # the last good checkpoint (after 4 good steps) is kept, not overwritten by the poisoned weights
    state = load_checkpoint(cfg.out / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TrainConfig(epochs=0), "epochs must be >= 1"),
        (lambda: TrainConfig(batch_size=1), "batch_size must be at least 2"),
        (lambda: TrainConfig(max_steps=0), "max_steps"),
        (lambda: TrainConfig(data=""), "data is empty"),
        (lambda: LossConfig(eps=0), "loss.eps"),
        (lambda: LossConfig(std_coeff=-1), "loss.std_coeff"),
        (lambda: OptimConfig(base_lr=0), "optim.base_lr"),
        (lambda: OptimConfig(momentum=1.0), "optim.momentum"),
        (lambda: ModelConfig(expander="8192-abc"), "expander"),
        (lambda: ViewsConfig(blur_prob_a=1.5), "views.blur_prob_a"),
    ],
)
def test_bad_config_values(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_config_file_overrides_preset_and_flags_override_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatch_size: 64\noptim:\n  base_lr: 0.5\nmodel:\n  expander: 128-128\n")
    cfg = parse_train_args(["--preset", "fashion-mnist-cpu", "--config", str(path), "--epochs", "7"])
    assert cfg.epochs == 7  # flag
    assert cfg.batch_size == 64 and cfg.optim.base_lr == 0.5 and cfg.model.expander == "128-128"  # file
    assert cfg.model.backbone == PRESETS["fashion-mnist-cpu"].model.backbone  # preset
    assert cfg.data == "fashion-mnist"
    cfg = parse_train_args(["--optim.name", "adamw", "--max-steps", "5", "--out", str(tmp_path / "x")])
    assert cfg.optim.name == "adamw" and cfg.max_steps == 5 and cfg.out == tmp_path / "x"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_print_config_writes_a_file_that_loads_back_to_the_same_config(
    preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["train", "--preset", preset, "--epochs", "7", "--print-config"])
    path = tmp_path / "recipe.yaml"
    path.write_text(capsys.readouterr().out)
    expected = replace(PRESETS[preset], epochs=7)
    assert parse_train_args(["--config", str(path)]) == expected
    assert not expected.out.exists(), "printing the config trains nothing"


def test_config_file_reads_exponents_without_a_dot_as_floats(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 1e-4 as the string "1e-4"; a float field takes it as the number it means
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 1e-4\n  lars_eta: 2E-3\n  base_lr: 1.5e+0\n")
    cfg = load_config_file(path)
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.lars_eta == 2e-3 and cfg.optim.base_lr == 1.5
    path.write_text("optim:\n  weight_decay: 1e-4x\n")
    with pytest.raises(ValueError, match="must be of type float"):
        load_config_file(path)
    path.write_text("epochs: 1e3\n")  # an int field still wants an int
    with pytest.raises(ValueError, match="must be of type int"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs: ten\n", "'epochs' must be of type int"),
        ("epoch: 3\n", "unknown config key 'epoch'"),
        ("optim:\n  nme: sgd\n", "unknown config key 'optim.nme'"),
        ("optim: 3\n", "is a section"),
        ("optim:\n  name: adam\n", "must be one of"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("epochs: [\n", "not valid YAML"),
        ("loss:\n  gamma: -1\n", "loss.gamma"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config_file(path)


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="unknown preset 'nope'"):
        parse_train_args(["--preset", "nope"])
    with pytest.raises(SystemExit, match="vicreg train: batch_size must be at least 2"):  # one line, no box
        parse_train_args(["--batch-size", "1"])
    with pytest.raises(SystemExit, match="does not exist"):
        parse_train_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit, match="--epochs: invalid literal for int"):
        parse_train_args(["--epochs", "many"])


def test_help_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for command in ("train", "export", "info"):
        assert command in top
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--preset", "--config", "--out", "--data", "--epochs", "--max-steps", "--batch-size", "--device",
        "--precision", "--seed", "--model.backbone", "--optim.base-lr", "--loss.sim-coeff", "--views.size",
    ):  # fmt: skip
        assert flag in text, flag
    for preset in PRESETS:
        assert preset in text


# ------------------------------------------------------------------------------------------------ end to end


def _image_folder(root: Path, n: int = 40, size: int = 20) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        cls = root / ("cats" if i % 2 else "dogs")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(cls / f"{i}.png")
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.slow
def test_cli_end_to_end_on_an_image_folder(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    args = [
        "train", "--data", str(folder), "--out", str(out), "--device", "cpu",
        "--epochs", "2", "--batch-size", "8", "--views.size", "16", "--model.backbone", "small_cnn",
        "--model.width", "4", "--model.expander", "32-32", "--workers", "1", "--log-every", "2",
        "--precision", "bf16",
    ]  # fmt: skip
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "warning" in line and "broken.png" in line]
    assert warned and warned[0].startswith("vicreg train: warning: "), done.stderr  # one CLI line, no source line
    assert "run folder" in done.stdout
    assert (out / "backbone.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 * (40 // 8)
    exported = tmp_path / "b.pt"
    done = run_cli("export", out, "--out", exported)
    assert done.returncode == 0, done.stderr
    assert set(read_backbone_state(exported)) == set(read_backbone_state(out / "backbone.safetensors"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    data = tiny_npz(tmp_path / "d.npz", n=256)
    out = tmp_path / "run"
    args = [
        sys.executable, "-m", "vicreg", "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--epochs", "50", "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn",
        "--model.width", "4", "--model.expander", "32-32", "--log-every", "1", "--knn-every", "0",
        "--ckpt-every", "100000",
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600  # a guard against a hung process only: a loaded machine is slow to start
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    assert "stopped by signal" in err
    step = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert step >= 3
    # resume and finish a few more steps
    proc2 = subprocess.run([*args, "--max-steps", str(step + 3)], cwd=REPO, capture_output=True, text=True)
    assert proc2.returncode == 0, proc2.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == step + 3


@pytest.mark.slow
def test_two_process_torchrun(tmp_path: Path) -> None:
    """A real torchrun with 2 gloo processes: one run folder, identical weights on both ranks."""
    data = tiny_npz(tmp_path / "d.npz", n=64)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
        "-m", "vicreg", "train", "--data", str(data), "--out", str(out), "--device", "cpu",
        "--epochs", "1", "--batch-size", "16", "--views.size", "16", "--model.backbone", "small_cnn",
        "--model.width", "4", "--model.expander", "32-32", "--log-every", "1", "--knn-every", "0",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 64 // 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone writes
    assert proc.stdout.count("run folder:") == proc.stdout.count("starting a new run") == 1  # and prints
    assert "deprecated" not in proc.stderr


class _StepsCost:
    """A step timer whose steps take ``cost[threads]`` seconds (the count set when the step ends); ``clock`` reads
    the same time without advancing it, so a budget sees exactly those step times."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.calls = cost, 0.0, 0

    def timer(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # called when a step begins and when it ends
            self.now += self.cost[torch.get_num_threads()]
        return self.now

    def clock(self) -> float:
        return self.now


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four cores, no OMP_NUM_THREADS and no torchrun: the thread count is chosen by measurement."""
    monkeypatch.setattr("vicreg.threads.available_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.usefixtures("four_cores")
def test_the_thread_count_is_chosen_by_timing_the_first_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = torch.get_num_threads()
    fake = _StepsCost({1: 0.25, 2: 0.5, 4: 1.0})  # a busy machine: one thread is fastest
    cfg = tiny_config(tmp_path, threads=None, epochs=3, knn_every=0)
    result = train(cfg, step_timer=fake.timer)
    assert result.step == 18 and torch.get_num_threads() == before  # the caller's count is put back
    out = capsys.readouterr().out
    line = "  threads     1 (measured: 1 -> 0.25 s, 2 -> 0.5 s, 4 -> 1 s per step; --threads N fixes it)"
    assert line in out.splitlines()
    assert out.index("starting a new run") < out.index(line)  # after the header
    rows = [json.loads(r) for r in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if "threads" in r]  # a warm round of 3 steps, then 3 timed rounds
    assert chosen == [{"step": 12, "threads": 1, "threads.seconds.1": 0.25, "threads.seconds.2": 0.5,
                       "threads.seconds.4": 1.0}]  # fmt: skip
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


@pytest.mark.usefixtures("four_cores")
def test_the_budget_times_its_steps_at_the_chosen_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = _StepsCost({1: 0.9, 2: 0.5, 4: 0.25})  # an idle machine: four threads are fastest
    cfg = tiny_config(tmp_path, threads=None, epochs=3, knn_every=0, budget_minutes=1.0, max_steps=30)
    train(cfg, clock=fake.clock, step_timer=fake.timer)
    out = capsys.readouterr().out
    assert "  threads     4 (measured:" in out
    budget_line = next(line for line in out.splitlines() if line.startswith("budget:"))
    assert "(0.25 s per step measured" in budget_line  # not a mix of the trial's counts


def test_threads_fixes_the_count(tmp_path: Path, capsys: pytest.CaptureFixture[str], four_cores: None) -> None:
    fake = _StepsCost({1: 0.3, 2: 0.5, 4: 0.9})
    cfg = tiny_config(tmp_path, threads=2, max_steps=4, knn_every=0)
    train(cfg, step_timer=fake.timer)
    assert "  threads     2 (fixed by --threads)" in capsys.readouterr().out
    assert not [r for r in (cfg.out / "metrics.jsonl").read_text().splitlines() if '"threads"' in r]
    with pytest.raises(ValueError, match="threads must be >= 1"):
        tiny_config(tmp_path, threads=0)
