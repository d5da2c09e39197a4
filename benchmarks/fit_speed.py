"""Fit the speed model's coefficients (plan_speed.SpeedCoefficients) to every committed speed measurement.

Rows: those `benchmarks/planner_speed.py` compares (the step matrices and the H200 runs of
`results/speed-measured.json`) and the H200 planner matrix (`results/planner-matrix.json`, eager steps, and
`results/planner-matrix-recorded.json`, as `train` runs them: tokens/s and hours per epoch), each without its known
misses (`known_miss` there, `planner_matrix.KNOWN_MISSES` here). Plans do not depend on these coefficients (but for
whether a plan records its steps, which stays as today's coefficients chose), so each row's workload is taken once,
from the very `estimate_speed` call that priced it, and only the speed model runs again for each candidate.
Objective: the worst absolute log error plus half the RMS one (scipy's differential evolution, seeded). Prints the
coefficients and every row's error; writes nothing: the numbers go into plan_speed.py by hand, with what pins each
one down.

    python benchmarks/fit_speed.py [--iterations 300] [--hold "llama-1b attention 24"]

Needs scipy (for this script only, not a dependency of the package).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import falcon_desktop.plan_time as plan_time
from falcon_desktop.plan_speed import SPEED, SpeedCoefficients, Workload, estimate_speed
from falcon_desktop.shapes import ModelShape

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import planner_matrix  # noqa: E402
import planner_speed  # noqa: E402

# The search box: each coefficient within a range that keeps its physical meaning (plan_speed.py says what it is).
BOUNDS = {
    "compute_efficiency": (0.30, 0.60), "nf4_dequantize_seconds_per_weight": (1e-12, 6e-12),
    "lora_element_seconds": (3e-12, 15e-12), "layer_seconds": (3e-3, 7e-3), "lora_module_seconds": (0.1e-3, 0.6e-3),
    "nf4_linear_seconds": (0.0, 0.3e-3), "forward_share": (0.5, 1.0), "micro_batch_seconds": (0.005, 0.05),
    "step_seconds": (0.02, 0.10), "unhidden_share": (0.0, 0.3),
    "recorded_launch_share": (0.0, 0.3), "recorded_step_seconds": (0.0, 0.05),
    "fused_lora_element_seconds": (0.0, 15e-12), "fused_lora_module_seconds": (0.0, 0.6e-3),
    "fused_rms_norm_saved_seconds": (0.0, 1.0e-3), "rotary_fast_path_saved_seconds": (0.0, 3.0e-3),
}


@dataclass(frozen=True)
class Priced:
    """One `estimate_speed` call: enough to price the same workload with other coefficients."""

    shape: ModelShape
    workload: Workload
    tflops: float
    tokens_per_second: float

    def __call__(self, c: SpeedCoefficients) -> float:
        return estimate_speed(self.shape, self.workload, self.tflops, c).tokens_per_second


@dataclass(frozen=True)
class FitRow:
    name: str
    measured: float                    # tokens/s
    priced: Priced
    hours_ratio: float | None = None   # predicted hours x predicted tokens/s / measured hours (planner matrix rows)

    def errors(self, c: SpeedCoefficients) -> list[float]:
        """Log errors of tokens/s, and of hours where measured."""
        predicted = self.priced(c)
        errors = [math.log(predicted / self.measured)]
        if self.hours_ratio is not None:
            errors.append(math.log(self.hours_ratio / predicted))
        return errors


class Recorder:
    """Stands in for `estimate_speed` in the modules that call it, remembering every call."""

    def __init__(self) -> None:
        self.calls: list[Priced] = []

    def __call__(self, shape, workload, tflops, c=SPEED):
        result = estimate_speed(shape, workload, tflops, c)
        self.calls.append(Priced(shape, workload, tflops, result.tokens_per_second))
        return result

    def pricing(self, estimate: float) -> Priced:
        """The call that produced `estimate` (the planner prices alternatives too)."""
        return next(call for call in reversed(self.calls) if call.tokens_per_second == estimate)


def fit_rows(hold: tuple[str, ...] = ()) -> list[FitRow]:
    """Every row to fit: planner_speed's and the planner matrix's, their known misses left out but for those whose
    name contains a `hold` string."""
    recorder = Recorder()
    plan_time.estimate_speed = planner_speed.estimate_speed = recorder  # the two callers of the speed model
    try:
        rows = [FitRow(f"{row.gpu} {row.name} [{row.settings}]", row.measured, recorder.pricing(row.estimated))
                for row in planner_speed.speed_rows()
                if not row.known_miss or any(text in row.name for text in hold)]
        for document in _matrix_documents():
            for row in document["rows"]:
                fitted = _matrix_row(recorder, document, row, hold)
                if fitted is not None:
                    rows.append(fitted)
    finally:
        plan_time.estimate_speed = planner_speed.estimate_speed = estimate_speed
    return rows


def _matrix_documents() -> list[dict]:
    """The H200 planner matrix: eager rows, and those measured as `train` runs them (`run --recorded`)."""
    return [json.loads(result.read_text(encoding="utf-8"))
            for result in (planner_matrix.RESULT, planner_matrix.RECORDED_RESULT)]


def _matrix_row(recorder: Recorder, document: dict, row: dict, hold: tuple[str, ...]) -> FitRow | None:
    """A measured matrix row, priced as the planner plans it today; None for a row without a speed or a known miss
    not held."""
    measured = row.get("measured") or {}
    if row.get("status") != "ok" or not measured.get("tokens_per_second"):
        return None
    recorded = row.get("recorded", False)
    name = f"H200 matrix {row['model']} {row['targets']} {row['cap_gib']:g} GiB{' recorded' if recorded else ''}"
    known_miss = (row["model"], row["targets"], row["cap_gib"]) in planner_matrix.KNOWN_MISSES
    if known_miss and not any(text in name for text in hold):
        return None
    config = document["models"][row["model"]]["config"]
    shape = planner_matrix.shape_from_config(config, row["model"], "directory")
    plan = planner_matrix.plan_for(shape, row["targets"], row["cap_gib"], row["gpu"], row["effective_batch"],
                                   row["epoch_examples"], recorded)
    hours_ratio = plan.estimated_hours * plan.estimated_tokens_per_second / measured["hours_per_epoch"]
    return FitRow(name, measured["tokens_per_second"], recorder.pricing(plan.estimated_tokens_per_second), hours_ratio)


def loss(rows: list[FitRow], c: SpeedCoefficients) -> float:
    errors = [error for row in rows for error in row.errors(c)]
    return max(abs(e) for e in errors) + 0.5 * math.sqrt(sum(e * e for e in errors) / len(errors))


def report(rows: list[FitRow], c: SpeedCoefficients) -> None:
    for row in rows:
        shown = ", ".join(f"{math.exp(e) - 1:+.1%}" for e in row.errors(c))
        print(f"{row.name}: {shown}")
    worst = max(abs(math.exp(e) - 1) for row in rows for e in row.errors(c))
    print(f"{len(rows)} rows; worst error {worst:.1%}; objective {loss(rows, c):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--hold", action="append", default=[], metavar="TEXT",
                        help="fit a row marked as a known miss too, by part of its name (repeatable)")
    parser.add_argument("--only", help="fit only these coefficients (comma-separated), the others held at today's")
    args = parser.parse_args()
    from scipy.optimize import differential_evolution

    rows = fit_rows(tuple(args.hold))
    names = args.only.split(",") if args.only else [f.name for f in fields(SpeedCoefficients)]

    def coefficients(x) -> SpeedCoefficients:
        return replace(SPEED, **dict(zip(names, x)))

    print("today's coefficients:")
    report(rows, SPEED)
    result = differential_evolution(lambda x: loss(rows, coefficients(x)), [BOUNDS[n] for n in names],
                                    x0=[getattr(SPEED, n) for n in names], seed=16, maxiter=args.iterations,
                                    polish=False, tol=1e-8)
    fitted = coefficients(result.x)
    print("\nfitted:")
    report(rows, fitted)
    for name in names:
        print(f"    {name} = {getattr(fitted, name):.4g}   (today {getattr(SPEED, name):.4g})")


if __name__ == "__main__":
    main()
