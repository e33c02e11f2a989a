"""The paper's ablations at small scale: Fashion-MNIST, the `fashion-mnist-cpu` preset, the same budget per row.

Every row is one pretraining run of the preset with one change, for the same number of epochs (``--epochs``,
so the same images seen; the batch-size rows therefore take fewer steps at larger batches, as in the paper),
through the library's own trainer (`vicreg.train.train`, with its ``objective`` hook for the SimSiam-style
rows). Each run is then evaluated with `_quick_eval.quick_eval`: kNN top-1 (k = 20) on the full 60k/10k split,
optionally the linear probe, and the collapse diagnostics of the embedding (expander output) and of the
representation on 2048 test images: the per-dimension standard deviation (-> 0 under collapse) and the
effective rank (-> 1 under collapse).

    python benchmarks/ablations.py                      # every row, 1 epoch each, runs/ablations
    python benchmarks/ablations.py --groups loss views  # some groups only
    python benchmarks/ablations.py --table              # print the markdown table of what has run

Results are appended to ``<out>/results.jsonl`` as rows finish; a row already there is not run again (delete
the line, or the file, to rerun). The paper's values (ImageNet, ResNet-50, linear top-1) are printed beside
ours; see docs/ablations.md for their sources and how to read the comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vicreg.config import PRESETS, config_to_dict, merge
from vicreg.loss import VICRegOutput, covariance_term, variance_term
from vicreg.train import NonFiniteLossError, Objective, train


def simsiam_style(stop_gradient: bool, std_coeff: float, cov_coeff: float, sim_coeff: float = 1.0) -> Objective:
    """SimSiam without predictor: negative cosine similarity between the branches (symmetrised, each side
    against the other's detached output when ``stop_gradient``), plus the VC regulariser of VICReg with the
    given coefficients (variance averaged over the two branches, covariance summed, as in VICReg); the paper's
    Table 4 adds them with mu = 1 and nu = 0.01 to SimSiam's loss of weight 1. ``invariance`` is logged as
    ``1 - cos``, so 0 means identical directions (the constant does not change the gradient)."""

    def objective(z_a: Tensor, z_b: Tensor) -> VICRegOutput:
        a, b = z_a.float(), z_b.float()
        if stop_gradient:
            cos = (F.cosine_similarity(a, b.detach()).mean() + F.cosine_similarity(b, a.detach()).mean()) / 2
        else:
            cos = F.cosine_similarity(a, b).mean()
        inv = 1 - cos
        var = (variance_term(a) + variance_term(b)) / 2
        cov = covariance_term(a) + covariance_term(b)
        return VICRegOutput(sim_coeff * inv + std_coeff * var + cov_coeff * cov, inv, var, cov)

    return objective


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    objective: Objective | None = None
    paper: str = ""  # the paper's value (ImageNet linear top-1, %) or "" when the paper has no such row


def _coeffs(sim: float, std: float, cov: float) -> dict[str, Any]:
    return {"loss": {"sim_coeff": sim, "std_coeff": std, "cov_coeff": cov}}


# Paper values: Bardes, Ponce & LeCun, ICLR 2022, ImageNet linear top-1 (%) of ResNet-50 after 100 epochs:
# Table 7 (loss coefficients), Table 12 (expander width), Table 13 (batch size), Table 4 (SimSiam rows: stop-
# gradient, no predictor, no BN in the projector; the terms added with mu = 1, nu = 0.01). See docs/ablations.md.
ROWS: list[Row] = [
    Row("loss", "full 25/25/1 (inv + var + cov)", _coeffs(25, 25, 1), paper="68.6"),
    Row("loss", "no variance 25/0/1 (inv + cov)", _coeffs(25, 0, 1), paper="collapse"),
    Row("loss", "no invariance 0/25/1 (var + cov)", _coeffs(0, 25, 1), paper="collapse"),
    Row("loss", "inv + var 1/1/0 (no covariance)", _coeffs(1, 1, 0), paper="57.5"),
    Row("loss", "invariance only 1/0/0", _coeffs(1, 0, 0), paper="collapse"),
    Row("coefficients", "1/1/1", _coeffs(1, 1, 1), paper="collapse"),
    Row("coefficients", "5/5/1", _coeffs(5, 5, 1), paper="68.1"),
    Row("coefficients", "10/10/1", _coeffs(10, 10, 1), paper="68.2"),
    Row("coefficients", "50/50/1", _coeffs(50, 50, 1), paper="68.3"),
    Row("coefficients", "10/1/1", _coeffs(10, 1, 1), paper="collapse"),
    Row("coefficients", "1/10/1", _coeffs(1, 10, 1), paper="collapse"),
    *(
        Row("expander", f"expander {w}-{w}-{w}", {"model": {"expander": f"{w}-{w}-{w}"}}, paper=p)
        for w, p in ((256, "55.9"), (512, "59.2"), (1024, "62.4"), (2048, "65.1"), (4096, "67.3"), (8192, "68.6"))
    ),
    *(
        Row("batch", f"batch {b}", {"batch_size": b}, paper=p)
        for b, p in ((64, ""), (128, "67.3"), (256, "67.9"), (512, "68.2"), (1024, "68.3"))
    ),
    Row("views", "symmetric views (blur 0.5, solarize 0.1 on both)", {"views": {"symmetric": True}}),
    # multi-crop (not in the paper; VICRegL's global loss): M local 14 px crops, scale 0.05-0.4, view B's augmentations
    *(
        Row("multicrop", f"{m} local crops (14 px)", {"views": {"local_crops": m, "local_size": 14}})
        for m in (0, 2, 4, 6)
    ),
    Row(
        "simsiam",
        "SimSiam-style: cosine + stop-grad, no predictor",
        objective=simsiam_style(True, 0, 0),
        paper="collapse",
    ),
    Row("simsiam", "  + variance (mu = 1)", objective=simsiam_style(True, 1, 0), paper="56.8"),
    Row(
        "simsiam", "  + variance + covariance (mu = 1, nu = 0.01)", objective=simsiam_style(True, 1, 0.01), paper="66.1"
    ),
    Row("simsiam", "  no stop-grad, + variance + covariance", objective=simsiam_style(False, 1, 0.01)),
]
GROUPS = sorted({r.group for r in ROWS})


def run_row(row: Row, base: Any, out: Path, linear: bool) -> dict[str, Any]:
    from _quick_eval import quick_eval

    cfg = replace(merge(base, row.overrides), out=out / "run")
    shutil.rmtree(cfg.out, ignore_errors=True)
    head = {
        "group": row.group,
        "name": row.name,
        "config": config_key(cfg) if row.objective is None else None,
        "overrides": row.overrides,
        "epochs": cfg.epochs,
    }
    t0 = time.perf_counter()
    try:
        result = train(cfg, objective=row.objective)
    except NonFiniteLossError as err:  # a row that diverges is a result too
        minutes = (time.perf_counter() - t0) / 60
        return {**head, "diverged": str(err), "minutes": round(minutes, 2), "knn_top1": None, "linear_top1": None}
    minutes = (time.perf_counter() - t0) / 60
    metrics = {k: round(v, 5) for k, v in result.metrics.items() if k in ("invariance", "variance", "covariance")}
    return {
        **head,
        "steps": result.step,
        "minutes": round(minutes, 2),
        "final_terms": metrics,
        **quick_eval(cfg.out, linear=linear),
    }


def config_key(cfg: Any) -> str:
    """The run's settings without its output folder: rows with the same key are the same run."""
    return json.dumps(config_to_dict(replace(cfg, out=Path("."))), sort_keys=True, default=str)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict[str, Any]]) -> str:
    paper = {r.name: r.paper for r in ROWS}
    lines = [
        "| group | row | kNN k=20 | linear | emb. std | emb. eff. rank | repr. eff. rank | train var / cov terms "
        "| paper (IN-1k) | min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "diverged" in r:
            paper_value = paper.get(r["name"], "") or "-"
            lines.append(
                f"| {r['group']} | {r['name']} | diverged | - | - | - | - | {paper_value} | {r['minutes']:.1f} |"
            )
            continue
        emb, rep, terms = r["embedding"], r["representation"], r.get("final_terms", {})
        lines.append(
            f"| {r['group']} | {r['name']} | {_fmt(r['knn_top1'])} | {_fmt(r['linear_top1'])} "
            f"| {emb['std_mean']:.3f} | {emb['effective_rank']:.1f} | {rep['effective_rank']:.1f} "
            f"| {terms.get('variance', float('nan')):.3f} / {terms.get('covariance', float('nan')):.3g} "
            f"| {paper.get(r['name'], '') or '-'} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per row (the same for every row)")
    parser.add_argument("--warmup-epochs", type=float, default=0.2)
    parser.add_argument("--max-steps", type=int, default=None, help="cap every row (a dry run of the script)")
    parser.add_argument("--groups", nargs="*", choices=GROUPS, default=GROUPS)
    parser.add_argument("--linear", action="store_true", help="also the linear probe (about a minute a row)")
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args()

    results_path = args.out / "results.jsonl"
    done = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    if args.table:
        print(markdown_table(done))
        return
    base = merge(
        PRESETS["fashion-mnist-cpu"],
        {
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "optim": {"warmup_epochs": args.warmup_epochs},
            "knn_every": 0,
            "progress": False,
        },
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for row in ROWS:
        if row.group not in args.groups or any(d["name"] == row.name for d in done):
            continue
        key = config_key(replace(merge(base, row.overrides), out=args.out / "run"))
        same = next((d for d in done if row.objective is None and d.get("config") == key), None)
        if same is not None:  # e.g. expander 1024 and batch 256 are the preset itself: reuse that run
            result = {**same, "group": row.group, "name": row.name, "overrides": row.overrides, "same_as": same["name"]}
        else:
            print(f"[{row.group}] {row.name} ...", flush=True)
            result = run_row(row, base, args.out, args.linear)
        done.append(result)
        with results_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        if "diverged" in result:
            print(f"  diverged: {result['diverged']}", flush=True)
        else:
            print(
                f"  kNN {result['knn_top1']:.1f}  emb. std {result['embedding']['std_mean']:.3f}  "
                f"emb. rank {result['embedding']['effective_rank']:.1f}  ({result['minutes']:.1f} min)",
                flush=True,
            )
    print(markdown_table(done))


if __name__ == "__main__":
    main()
