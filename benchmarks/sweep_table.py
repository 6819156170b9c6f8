"""One markdown table from the JSON rows of design-family runs, one row per candidate setting.

Reads files of ``benchmarks/design_family.py`` output (its JSON rows; other lines are
skipped), one file per candidate, named ``LABEL.rows`` (``benchmarks/gpu_sweep.sh`` writes
them). Each cell is the worse motion's |Pearson| (z as inference reports it) at the training
SNR, then, where the run was also applied to another SNR, the same there; a run whose
rotation failed is flagged with its Fisher-Lee and share of half-turned particles. The last
column is the mean of the first numbers over the jobs: the rule a sweep decides by, fixed
before any result.

    python benchmarks/sweep_table.py OUT/defaults.rows OUT/deeper.rows
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_spatial_vae.core.designs import DESIGNS

# a rotation this far off is reported with the cell: it decides the score, not z
FAILED_FISHER_LEE = 0.9
FAILED_HALF_TURNED = 0.03


def read_rows(path: Path) -> list[dict]:
    """The JSON rows of one candidate's output, in file order."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def job_name(row: dict) -> str:
    """``design s<seed>`` plus the SNR where it was trained at another than the design's."""
    name = f"{row['design']} s{row['seed']}"
    design = DESIGNS.get(row["design"])
    if design is not None and row["snr"] == design.snr:
        return name
    return f"{name}, SNR {row['snr']:g}"


def cell(row: dict, full_epochs: int) -> str:
    """``worse motion [/ applied]``, then what else decided it: a failed rotation, a short run."""
    text = f"{min(row['pearson_each']):.3f}"
    if "applied" in row and row.get("applied_snr") != row["snr"]:
        text += f" / {min(row['applied']['pearson_each']):.3f}"
    notes = []
    if row["circ_fl"] < FAILED_FISHER_LEE or row["half_turned"] > FAILED_HALF_TURNED:
        notes.append(f"FL {row['circ_fl']:.2f}, {100 * row['half_turned']:.0f} % half-turned")
    if row["epochs"] < full_epochs:
        notes.append(f"{row['epochs']} epochs")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def table(candidates: dict[str, list[dict]]) -> str:
    """Markdown: one row per candidate, one column per job (its last row), the mean last.

    The mean is over the jobs, only where the candidate has every job: a crashed run must
    not raise its mean.
    """
    by_candidate = {
        label: {job_name(row): row for row in rows} for label, rows in candidates.items()
    }
    jobs = list(dict.fromkeys(job for by_job in by_candidate.values() for job in by_job))
    full_epochs = max(
        (row["epochs"] for by_job in by_candidate.values() for row in by_job.values()), default=0
    )
    lines = [
        "| " + " | ".join(["candidate", *jobs, "mean"]) + " |",
        "|---" * (len(jobs) + 2) + "|",
    ]
    for label, by_job in by_candidate.items():
        cells = [cell(by_job[job], full_epochs) if job in by_job else "(missing)" for job in jobs]
        scores = [min(row["pearson_each"]) for row in by_job.values()]
        complete = bool(scores) and len(by_job) == len(jobs)
        mean = f"{sum(scores) / len(scores):.3f}" if complete else "(incomplete)"
        lines.append("| " + " | ".join([label, *cells, mean]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", type=Path, help="LABEL.rows files")
    args = parser.parse_args()
    try:
        candidates = {path.stem: read_rows(path) for path in args.rows}
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the rows: {error}")
    print(table(candidates))


if __name__ == "__main__":
    main()
