"""How often the dendrogram of mixing measures, BIC and AIC choose the true number of experts (issue 15).

For each job (k*, n, contamination, seed) the script draws a random truth with k* experts (d = 2
features, K = 3 classes, standard gating, X ~ Uniform[-1, 1]^2), samples n labels from it (a fraction
``contamination`` of them from another model instead: one multinomial-logistic regression with its own
random coefficients), and then

- fits once with k* + 2 experts (``fastmoe.fit``, maximum likelihood, the default search) and builds the
  dendrogram of that fit; the chosen k is ``Dendrogram.select()``, with the criterion's default weight
  ``omega_n = log n`` (method ``dendrogram``) and, from the same tree, ``omega_n = sqrt(n)`` and
  ``n / log n`` (``dendrogram_sqrt_n``, ``dendrogram_n_over_log_n``); then with every merged level
  refined by 50 EM iterations (``dendrogram_refined``, ``dendrogram_refined_n_over_log_n``);
- sweeps k = 1 .. k* + 2 with ``select_n_experts`` (nested fits, ``l2 = 0``) and reads the BIC and the
  AIC choice off its table.

One CSV row per (k*, n, contamination, seed, method): the chosen k, whether it is k*, the seconds the
method took (the dendrogram: one fit plus the tree; BIC and AIC: the whole sweep, shared). Rows are
appended as jobs finish; a rerun skips the jobs already in the file, so the script can be stopped and
resumed, or rerun with more seeds.

    python examples/dendrogram_accuracy.py --seeds 0-9 --n 2000 10000 --out docs/data/dendrogram_accuracy.csv
    python examples/dendrogram_accuracy.py --report --out docs/data/dendrogram_accuracy.csv
    python examples/dendrogram_accuracy.py --write-docs      # the tables of README.md and docs/dendrogram.md

``--write-docs`` rewrites the blocks between ``<!-- accuracy:begin -->`` and ``<!-- accuracy:end -->`` of
README.md and docs/dendrogram.md from the CSV alone (the tests check that they agree with it); where and
when each part of the study ran is said beside the blocks, by hand.

Cells of the table: the share of seeds whose chosen k is k*, and the mean chosen k in brackets.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import time
import warnings

import numpy as np

import fastmoe

FIELDS = ("kstar", "n", "contamination", "seed", "method", "chosen", "correct", "seconds", "fit_experts",
          "fit_diverged", "machine")
#: The dendrogram's default (omega_n = log n, merged models scored as they are), two other weights read
#: off the same tree, the same with each merged model refined by 50 EM iterations, and the sweep's two.
METHODS = ("dendrogram", "dendrogram_sqrt_n", "dendrogram_n_over_log_n", "dendrogram_refined",
           "dendrogram_refined_n_over_log_n", "bic", "aic")


def random_truth(n_experts, rng, n_features=2, n_classes=3, min_distance=4.0):
    """A truth whose experts' atoms are at least ``min_distance`` apart.

    Gating slopes point in evenly spaced directions (a random rotation) with length 4, so that each
    expert owns a wedge of the square; expert coefficients are N(0, 3^2), intercepts N(0, 1).
    """
    while True:
        angle = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n_experts) / n_experts
        beta1 = 4.0 * np.column_stack([np.cos(angle), np.sin(angle)])
        a = rng.normal(0.0, 3.0, (n_experts, n_classes, n_features))
        b = rng.normal(0.0, 1.0, (n_experts, n_classes))
        a[:, -1], b[:, -1] = 0.0, 0.0
        theta = np.hstack([beta1, a.reshape(n_experts, -1), b])
        gaps = np.linalg.norm(theta[:, None] - theta[None, :], axis=2) + np.eye(n_experts) * 1e9
        if gaps.min() >= min_distance:
            return fastmoe.MoEParams(beta0=rng.normal(0.0, 0.3, n_experts), beta1=beta1, a=a, b=b).normalized()


def draw(kstar, n, contamination, seed):
    """The truth and the data of one job (deterministic in its arguments)."""
    rng = np.random.default_rng([kstar, seed, 15])
    truth = random_truth(kstar, rng)
    X, y = fastmoe.sample(truth, n, random_state=rng)
    if contamination > 0:
        other = fastmoe.MoEParams(beta0=[0.0], beta1=[[0.0, 0.0]],
                                  a=np.concatenate([rng.normal(0, 3, (1, 2, 2)), np.zeros((1, 1, 2))], axis=1),
                                  b=np.concatenate([rng.normal(0, 1, (1, 2)), np.zeros((1, 1))], axis=1))
        _, y_other = fastmoe.sample(other, X=X, random_state=rng)
        swap = rng.random(n) < contamination
        y = np.where(swap, y_other, y)
    return truth, X, y


def run_job(kstar, n, contamination, seed, n_threads=1):
    """Rows (dicts) of one job, one per method."""
    _, X, y = draw(kstar, n, contamination, seed)
    k_max = kstar + 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and search warnings: recorded as fit_diverged
        started = time.perf_counter()
        result = fastmoe.fit(X, y, k_max, random_state=seed, n_threads=n_threads)
        tree = fastmoe.dendrogram(result, X, y, n_threads=n_threads)
        chosen = tree.select()[0]
        dendro_seconds = time.perf_counter() - started
        chosen_sqrt = tree.select(omega=np.sqrt(n))[0]
        chosen_nlog = tree.select(omega=n / np.log(n))[0]
        started = time.perf_counter()
        refined = fastmoe.dendrogram(result, X, y, refine_iter=50, n_threads=n_threads)
        refine_seconds = dendro_seconds + time.perf_counter() - started
        chosen_refined = refined.select()[0]
        chosen_refined_nlog = refined.select(omega=n / np.log(n))[0]

        started = time.perf_counter()
        sweep = fastmoe.select_n_experts(X, y, range(1, k_max + 1), l2=0.0, random_state=seed,
                                         n_threads=n_threads)
        sweep_seconds = time.perf_counter() - started
    table, ok = sweep.table, sweep.admissible
    aic_choice = int(table["n_experts"][int(np.argmin(np.where(ok, table["aic"], np.inf)))])
    common = dict(kstar=kstar, n=n, contamination=contamination, seed=seed, machine=_machine())
    out = []
    for method, k, seconds, diverged in (
        ("dendrogram", chosen, dendro_seconds, result.diverged),
        ("dendrogram_sqrt_n", chosen_sqrt, dendro_seconds, result.diverged),
        ("dendrogram_n_over_log_n", chosen_nlog, dendro_seconds, result.diverged),
        ("dendrogram_refined", chosen_refined, refine_seconds, result.diverged),
        ("dendrogram_refined_n_over_log_n", chosen_refined_nlog, refine_seconds, result.diverged),
        ("bic", sweep.best_n_experts, sweep_seconds, bool(table["diverged"][-1])),
        ("aic", aic_choice, sweep_seconds, bool(table["diverged"][-1])),
    ):
        out.append(dict(common, method=method, chosen=int(k), correct=int(k == kstar), seconds=round(seconds, 3),
                        fit_experts=k_max, fit_diverged=int(diverged)))
    return out


def _machine():
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} ({platform.node()})"


def _done(path):
    if not os.path.exists(path):
        return set()
    with open(path, newline="") as handle:
        return {(int(r["kstar"]), int(r["n"]), float(r["contamination"]), int(r["seed"]), r["method"])
                for r in csv.DictReader(handle)}


def _seeds(text):
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


#: Markers of the generated blocks in README.md and docs/dendrogram.md.
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
#: Seeds and sample sizes the issue asks for (issue 15: >= 50 seeds, n in {2e3, 1e4, 5e4}).
ASKED_SEEDS, ASKED_N = 50, (2000, 10000, 50000)


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _ranges(values):
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    values, parts = sorted(values), []
    for v in values:
        if parts and v == parts[-1][1] + 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def _seed_text(jobs, cells):
    """``"seeds 0-13 (and partly 14: 6 of 12 jobs), 14 complete of the >= 50 the issue asks for"``.

    ``jobs`` are those of one sample size, ``cells`` the ``(k*, contamination)`` pairs a seed is complete with.
    """
    seeds = sorted({job[3] for job in jobs})
    count = {s: sum(job[3] == s for job in jobs) for s in seeds}
    full = [s for s in seeds if count[s] == len(cells)]
    text = f"seeds {_ranges(full)}" if full else "no seed"
    partial = {}
    for s in seeds:
        if s not in full:
            partial.setdefault(count[s], []).append(s)
    if partial:
        text += " (and partly " + ", ".join(
            f"{_ranges(group)}: {c} of {len(cells)} jobs" + (" each" if len(group) > 1 else "")
            for c, group in sorted(partial.items(), reverse=True)) + ")"
    return text + f", {len(full)} complete of the >= {ASKED_SEEDS} the issue asks for"


def _coverage(jobs):
    """Per sample size (sizes with the same seeds run together): which seeds ran, and the sizes not run."""
    cells = sorted({(job[0], job[2]) for job in jobs})
    texts = {}
    for n in sorted({job[1] for job in jobs}):
        texts.setdefault(_seed_text({job for job in jobs if job[1] == n}, cells), []).append(n)
    parts = [f"n = {' and '.join(_short(n) for n in sizes)}: {text}" for text, sizes in texts.items()]
    missing = [n for n in ASKED_N if n not in {job[1] for job in jobs}]
    if missing:
        parts.append(f"n = {', '.join(_short(n) for n in missing)} **not run**")
    return "; ".join(parts)


def _short(n):
    return f"{n:.0e}".replace("e+0", "e")


def _jobs(rows):
    return {(int(r["kstar"]), int(r["n"]), float(r["contamination"]), int(r["seed"])) for r in rows}


def what_was_run(rows):
    """One paragraph: which seeds, sizes and cells the CSV holds, and what the issue asks that it lacks."""
    jobs = _jobs(rows)
    kstars = sorted({job[0] for job in jobs})
    eps = sorted({job[2] for job in jobs})
    # Each job's own seconds: the fit, its trees and the refined tree (dendrogram_refined) plus the sweep.
    seconds = sum(float(r["seconds"]) for r in rows if r["method"] in ("dendrogram_refined", "bic"))
    return (f"**What was run**: {_coverage(jobs)}; k* in {{{', '.join(map(str, kstars))}}}, "
            f"contamination {' and '.join(f'{e:g}' for e in eps)}: {len(jobs)} jobs ({len(rows)} rows); the jobs' "
            f"own seconds, summed: {seconds / 60:.0f} min.")


def readme_table(rows):
    """The README's short table: share right over k* = 2, 3, 4 (in brackets k* = 3, 4) per method."""
    methods = ("dendrogram", "bic", "aic")
    lines = ["| contamination | n | jobs | " + " | ".join(m if m == "dendrogram" else m.upper() for m in methods) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for (eps, n), (jobs, shares) in _shares(rows, methods).items():
        out = [f"{shares[m][0]:.0%} ({shares[m][1]:.0%})" for m in methods]
        lines.append(f"| {eps:g} | {n} | {jobs} | " + " | ".join(out) + " |")
    ratios = [sweep / tree for _, _, tree, sweep in _times(rows)]
    jobs = _jobs(rows)
    lines += ["", f"Share of jobs whose chosen k is k* over k* = 2, 3, 4 (in brackets: k* = 3, 4 only); {len(jobs)} "
              f"jobs: {_coverage(jobs)}. One dendrogram selection (one fit with "
              f"k* + 2 experts, then the tree) took {min(ratios):.1f} to {max(ratios):.1f} times less time than the "
              "BIC sweep over k = 1..k* + 2 (medians per (n, k*))."]
    return "\n".join(lines)


def _shares(rows, methods):
    """Per ``(contamination, n)``: the jobs, and per method the share right over every k* and over k* >= 3."""
    out = {}
    for eps, n in sorted({(float(r["contamination"]), int(r["n"])) for r in rows}):
        here = [r for r in rows if (float(r["contamination"]), int(r["n"])) == (eps, n)]
        shares = {}
        for m in methods:
            hits = [int(r["correct"]) for r in here if r["method"] == m]
            hard = [int(r["correct"]) for r in here if r["method"] == m and int(r["kstar"]) >= 3]
            shares[m] = (np.mean(hits), np.mean(hard) if hard else np.nan)
        out[(eps, n)] = (len({(r["seed"], r["kstar"]) for r in here}), shares)
    return out


def _times(rows):
    """``(n, k*, median seconds of one dendrogram selection, median seconds of the BIC sweep)`` per cell."""
    out = []
    for n, kstar in sorted({(int(r["n"]), int(r["kstar"])) for r in rows}):
        here = [r for r in rows if (int(r["n"]), int(r["kstar"])) == (n, kstar)]
        tree = np.median([float(r["seconds"]) for r in here if r["method"] == "dendrogram"])
        sweep = np.median([float(r["seconds"]) for r in here if r["method"] == "bic"])
        out.append((n, kstar, tree, sweep))
    return out


def replace_block(text, block):
    """``text`` with what lies between the markers replaced by ``block``."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected one {BEGIN} ... {END} block")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text)


def write_docs(path, readme="README.md", page="docs/dendrogram.md"):
    """Rewrite the generated blocks of ``readme`` and ``page`` from the CSV at ``path``."""
    rows = _read(path)
    blocks = {readme: readme_table(rows), page: what_was_run(rows) + "\n\n" + report(path)}
    for target, block in blocks.items():
        with open(target) as handle:
            text = handle.read()
        with open(target, "w") as handle:
            handle.write(replace_block(text, block))


def report(path):
    """Markdown tables from the CSV: share of correct choices (and mean chosen k), and median seconds."""
    rows = _read(path)
    cells = sorted({(float(r["contamination"]), int(r["n"]), int(r["kstar"])) for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["Cells: share of seeds whose chosen k is k*, mean chosen k in brackets. Times: medians per cell.", "",
             "| contamination | n | k* | seeds | " + " | ".join(methods) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for eps, n, kstar in cells:
        here = [r for r in rows if (float(r["contamination"]), int(r["n"]), int(r["kstar"])) == (eps, n, kstar)]
        out = []
        for m in methods:
            chosen = np.array([int(r["chosen"]) for r in here if r["method"] == m])
            out.append(f"{np.mean(chosen == kstar):.0%} ({chosen.mean():.1f})" if chosen.size else "")
        seeds = len({r["seed"] for r in here})
        lines.append(f"| {eps:g} | {n} | {kstar} | {seeds} | " + " | ".join(out) + " |")
    lines += ["", "| contamination | n | jobs (k* = 2, 3, 4) | " + " | ".join(methods) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |"]
    for (eps, n), (jobs, shares) in _shares(rows, methods).items():
        out = [f"{shares[m][0]:.0%}" for m in methods]
        lines.append(f"| {eps:g} | {n} | {jobs} | " + " | ".join(out) + " |")
    lines += ["", "| n | k* | dendrogram: one fit + tree (s) | BIC/AIC sweep k = 1..k*+2 (s) | ratio |",
              "| --- | --- | --- | --- | --- |"]
    for n, kstar, tree, sweep in _times(rows):
        lines.append(f"| {n} | {kstar} | {tree:.1f} | {sweep:.1f} | {sweep / tree:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,3,5-7")
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--kstar", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--contamination", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--out", default="docs/data/dendrogram_accuracy.csv")
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="print the tables of --out and stop")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the tables of README.md and docs/dendrogram.md from --out and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    if args.write_docs:
        write_docs(args.out)
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    done = _done(args.out)
    new_file = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for seed in _seeds(args.seeds):  # seeds outermost: a stopped run covers every cell evenly
            for n in args.n:
                for contamination in args.contamination:
                    for kstar in args.kstar:
                        if all((kstar, n, contamination, seed, m) in done for m in METHODS):
                            continue
                        started = time.perf_counter()
                        rows = run_job(kstar, n, contamination, seed, args.n_threads)
                        writer.writerows(rows)
                        handle.flush()
                        print(f"k*={kstar} n={n} eps={contamination} seed={seed}: "
                              + " ".join(f"{r['method']}={r['chosen']}" for r in rows)
                              + f"  ({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
