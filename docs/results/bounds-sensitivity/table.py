"""The sensitivity table of docs/bounds.md (issue 14), printed as Markdown from the run directories in the
current folder (rates-b5, rates-over-fit-bounded, ...; see docs/bounds.md for the commands)."""
import sys
from fastmoe.experiments import analyse

VARIANTS = [("rates-b5", "box B = 5"), ("rates-over-fit-bounded", "box B = 10 (over-fit-bounded)"),
            ("rates-b20", "box B = 20"), ("rates-b50", "box B = 50"),
            ("rates-l2-0.003", "ridge l2 = 0.003"), ("rates-over-fit", "ridge l2 = 0.03 (over-fit)"),
            ("rates-l2-0.0", "none (l2 = 0)")]
METRICS = ("D2", "beta1_max_0", "a_max_0", "b_max_0", "mass_err_0")
print("| constraint | dropped (div) | bound active: all / n = 1e5 | D2 slope [95% CI] | "
      + " | ".join(f"{m} slope" for m in METRICS[1:]) + " | mean D2 n = 5000 / 1e5 | median D2 n = 1e5 |")
print("|" + " --- |" * (6 + len(METRICS) - 1))
for d, label in VARIANTS:
    try:
        rep = analyse(d, n_boot=1000, statistic="mean")  # the table in docs/bounds.md: slopes of means
    except Exception as exc:  # a run not there (yet)
        print(f"| {label} | not run ({exc}) |")
        continue
    div = sum(r["status"] == "diverged" for r in rep.records)
    act = sum(bool(r.get("bound_active")) for r in rep.records)
    act_top = sum(bool(r.get("bound_active")) for r in rep.records if r["n"] == 100000)
    n_top = sum(r["n"] == 100000 for r in rep.records)
    s = rep.slopes["D2"]
    others = " | ".join(f"{rep.slopes[m].slope:+.2f}" for m in METRICS[1:])
    d2 = {row["n"]: row for row in rep.summaries["D2"]}
    boxed = rep.experiment.fit.bounds is not None
    print(f"| {label} | {div} / {len(rep.records)} | " + (f"{act} / {act_top} of {n_top}" if boxed else "-")
          + f" | {s.slope:+.2f} [{s.ci_low:+.2f}, {s.ci_high:+.2f}] | {others} | "
          f"{d2[5000]['mean']:.1f} / {d2[100000]['mean']:.1f} | {d2[100000]['median']:.1f} |")
