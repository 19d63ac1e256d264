"""The paper's reproduction as one resumable job: run every study, then write the results document.

``paper.toml`` (beside this module) lists the studies (each a preset with its overrides), the truth
families (:mod:`~fastmoe.experiments.family`) and the sections of the document: which studies,
comparisons, figures and metrics each shows, where its theory slopes come from, and its prose.

- :func:`run_paper` runs (or resumes) every study into ``<root>/<name>`` (a result store each) and appends
  one entry per invocation to the study's ``runs.json`` (dates, wall time, jobs, machine, commit);
- :func:`write_paper` exports every study that has a store to ``<results>/<archive>`` (``results.csv``,
  ``experiment.toml``, ``slopes.csv``, ``summary.csv``, ``runs.json``) and writes the document and its
  figures from those archives alone, so a clean checkout regenerates the same document from the
  committed CSVs, and a study not run yet is listed with the command that runs it.

``fastmoe rates paper`` does both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import time
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import _toml
from ._atomic import atomic_open
from .analysis import DEFAULT_INCLUDE, Report, analyse, compare_runs, pooled_slope
from .definition import Experiment
from .family import family_members
from .presets import get_preset
from .store import (CSV_FILENAME, DEFINITION_FILENAME, STORE_FILENAME, archive_conflict, import_archive, load_run,
                    utc_now)

__all__ = ["ArchiveConflict", "Paper", "Study", "Section", "load_paper", "run_paper", "resume_from_archive",
           "write_paper", "PAPER_FILE", "RUN_LOG"]

#: The shipped group.
PAPER_FILE = Path(__file__).resolve().parent / "paper.toml"
#: Per-study log of the invocations that ran it (a list of JSON objects).
RUN_LOG = "runs.json"


@dataclasses.dataclass(frozen=True)
class Study:
    """One run of the reproduction: a definition, its run directory name and its archive folder."""

    experiment: Experiment
    preset: str  #: the preset it is; planned comparisons name presets
    archive: str  #: folder under the results folder holding its export
    note: str = ""  #: provenance of a run made before run logs were kept
    family: Optional[str] = None  #: the truth family it belongs to
    d: Optional[int] = None  #: its input dimension, for a family member

    @property
    def name(self) -> str:
        return self.experiment.name


@dataclasses.dataclass(frozen=True)
class Section:
    """A part of the document."""

    id: str
    title: str
    studies: Tuple[str, ...]
    families: Tuple[str, ...]
    comparisons: Tuple[Tuple[str, ...], ...]
    figures: Tuple[dict, ...]
    metrics: Tuple[str, ...]
    theory: str
    text: str


@dataclasses.dataclass(frozen=True)
class Paper:
    """The group: studies by name (families expanded), families, sections."""

    title: str
    intro: str
    studies: Dict[str, Study]
    families: Dict[str, List[str]]
    sections: Tuple[Section, ...]

    def select(self, only: Optional[Sequence[str]] = None) -> List[Study]:
        """Studies in document order; ``only`` keeps the names, family names or section ids given.

        A name means a study where a study has it, else a family, else a section: the section
        ``over-fit`` holds 18 studies, the study ``over-fit`` one, and ``--only over-fit`` means the
        study (the section's studies can be named one by one).
        """
        ordered = []
        for section in self.sections:
            names = list(section.studies) + [m for f in section.families for m in self.families[f]]
            ordered += [(section.id, self.studies[n]) for n in names]
        if not only:
            return [s for _, s in ordered]
        wanted = set(only)
        unknown = wanted - set(self.studies) - set(self.families) - {s.id for s in self.sections}
        if unknown:
            raise KeyError(f"no study, family or section {', '.join(sorted(unknown))} in the paper")
        families = wanted - set(self.studies)
        sections = families - set(self.families)
        return [s for sid, s in ordered if s.name in wanted or s.family in families or sid in sections]


def _study(entry: dict) -> Study:
    entry = dict(entry)
    preset = entry.pop("preset")
    name = entry.pop("name")
    exp = get_preset(preset)
    changes = {"name": name}
    for key in ("losses", "primary_loss"):
        if key in entry:
            changes[key] = tuple(entry.pop(key)) if key == "losses" else entry.pop(key)
    exp = dataclasses.replace(exp, **changes).with_grid(sample_sizes=entry.pop("sample_sizes", None),
                                                        n_replications=entry.pop("replications", None))
    study = Study(exp, preset, entry.pop("archive", name), entry.pop("note", ""))
    if entry:
        raise ValueError(f"paper study {name!r}: unknown keys {sorted(entry)}")
    return study


def load_paper(path=PAPER_FILE) -> Paper:
    """Read the group from ``path`` (default: the shipped ``paper.toml``)."""
    data = _toml.loads(Path(path).read_text())
    studies = {}
    for entry in data.get("study", []):
        study = _study(entry)
        studies[study.name] = study
    families = {}
    for entry in data.get("family", []):
        members = family_members(get_preset(entry["preset"]), entry["name"], entry["dims"], entry["truths"],
                                 entry["seed"], entry.get("sample_sizes"), entry.get("replications"))
        families[entry["name"]] = [m.name for m in members]
        for member in members:
            d = member.truth.beta1.shape[1]
            studies[member.name] = Study(member, entry["preset"], f"families/{member.name}", family=entry["name"],
                                         d=d)
    sections = []
    for entry in data.get("section", []):
        section = Section(entry["id"], entry["title"], tuple(entry.get("studies", ())),
                          tuple(entry.get("families", ())), tuple(tuple(c) for c in entry.get("comparisons", ())),
                          tuple(entry.get("figures", ())), tuple(entry.get("metrics", ())),
                          entry.get("theory", "").strip(), entry.get("text", "").strip())
        missing = [n for n in section.studies if n not in studies]
        missing += [n for c in section.comparisons for n in c if n not in section.studies]
        missing += [f for f in section.families if f not in families]
        missing += [n for fig in section.figures for n in fig["studies"] if n not in section.studies]
        if missing:
            raise ValueError(f"paper section {section.id!r} names unknown studies or families: {missing}")
        sections.append(section)
    placed = {n for s in sections for n in s.studies} | {m for s in sections for f in s.families for m in families[f]}
    unplaced = sorted(set(studies) - placed)
    if unplaced:
        raise ValueError(f"paper studies in no section (they would never run): {unplaced}")
    return Paper(data.get("title", ""), data.get("intro", "").strip(), studies, families, tuple(sections))


# -- running ----------------------------------------------------------------------------------------------
def _commit() -> str:
    """The source tree's commit (``+dirty`` when it has changes), or "" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if rev.returncode:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _machine() -> dict:
    from .. import __version__
    from .._dispatch import _cpu_model

    return {"host": socket.gethostname(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "system": platform.platform(terse=True), "fastmoe": __version__, "commit": _commit()}


def _merge_run_logs(path: Path, other: Path) -> None:
    """Add to the run log ``path`` the entries of ``other`` it lacks (an archive's, whose jobs a store
    took in), in the order the runs started."""
    if not other.is_file():
        return
    entries = json.loads(path.read_text()) if path.is_file() else []
    known = {json.dumps(e, sort_keys=True) for e in entries}
    entries += [e for e in json.loads(other.read_text()) if json.dumps(e, sort_keys=True) not in known]
    entries.sort(key=lambda e: str(e.get("started", "")))
    with atomic_open(path, "w") as fh:
        json.dump(entries, fh, indent=1)


def _append_log(path: Path, entry: dict) -> None:
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append(entry)
    with atomic_open(path, "w") as fh:
        json.dump(entries, fh, indent=1)


def resume_from_archive(study: Study, out: Path, archive: Path, echo=print) -> int:
    """Seed a study's missing store from its committed archive, so that a run on another machine (or a
    fresh clone) goes on where the exported one stopped instead of starting again.

    Only when ``out`` holds no store yet and the archive's definition has the study's digest and its
    rows this fastmoe version (:func:`~fastmoe.experiments.store.import_archive`; else the rows must not
    be mixed: the study starts afresh, says so, and its export will not replace the archive until it
    has every job the archive has). The archive's run log comes along. Returns the number of jobs taken
    over.
    """
    added, why_not = import_archive(study.experiment, out, archive)
    if why_not:
        echo(f"{study.name}: not resumed from its archive: {why_not}. It starts afresh here; its archive is "
             "replaced only once this run has every job the archive has (or with --replace-archive)")
        return 0
    if added:
        if (archive / RUN_LOG).is_file():
            shutil.copyfile(archive / RUN_LOG, out / RUN_LOG)
        echo(f"{study.name}: {added} jobs taken over from {archive}")
    return added


def run_paper(paper: Paper, root, only: Optional[Sequence[str]] = None, *, scheduler=None,
              n_jobs: Optional[int] = None, threads_per_job: Optional[int] = None, progress: bool = True,
              results=None, order="size", stop_after=None, echo=print) -> List:
    """Run (or resume) the selected studies into ``<root>/<name>``, in document order.

    Each invocation that runs jobs appends its facts to the study's ``runs.json``: start and end (UTC),
    wall seconds, jobs run, executor, workers, threads, and the machine (host, CPU, cores, fastmoe
    version, git commit). With ``results`` (the archives' folder), a study without a store resumes from
    its archive (:func:`resume_from_archive`). ``order`` is the jobs' order within a study
    (:func:`~fastmoe.experiments.runner.plan_batches`). ``stop_after`` (seconds, over all the selected
    studies): no job starts after it, and the studies not reached by then are left for the next run
    (:func:`~fastmoe.experiments.runner.run_experiment`). Returns the
    :class:`~fastmoe.experiments.runner.RunSummary` of every study started.
    """
    from .runner import run_experiment
    from .store import ResultStore

    root = Path(root)
    summaries = []
    end = None if stop_after is None else time.monotonic() + stop_after
    for study in paper.select(only):
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            echo(f"{study.name}: not started, the time limit has passed")
            continue
        out = root / study.name
        new = not (out / STORE_FILENAME).exists()
        if results is not None:
            resume_from_archive(study, out, Path(results) / study.archive, echo)
        with ResultStore(out) as store:
            store.register(study.experiment)
            if results is None and new:
                store.mark_fresh()  # its exports never take the archive's rows in (archive_conflict)
        study.experiment.save(out / DEFINITION_FILENAME)
        echo(f"{study.name}: {study.experiment.n_jobs} jobs ({out})")
        # The machine and the commit as the run starts: the checkout may move on while a long run works.
        started, clock, machine = utc_now(), time.perf_counter(), _machine()
        with ResultStore(out, read_only=True) as store:
            before = store.count(study.name)
        summary = None
        try:
            summary = run_experiment(study.experiment, out, scheduler=scheduler, n_jobs=n_jobs,
                                     threads_per_job=threads_per_job, progress=progress, order=order,
                                     stop_after=left)
            if summary.timed_out:
                echo(f"{study.name}: stopped at the time limit; run again to resume")
        finally:
            # Logged also when the run is interrupted: its finished jobs are stored, and so is its time.
            with ResultStore(out, read_only=True) as store:
                added = store.count(study.name) - before
            if added:
                entry = {"started": started, "finished": utc_now(), "wall_s": round(time.perf_counter() - clock, 1),
                         "jobs_run": added, "already_stored": before}
                if summary is None:
                    entry["interrupted"] = True
                else:
                    entry.update(executor=summary.executor, workers=summary.n_workers,
                                 threads_per_job=summary.threads_per_job)
                _append_log(out / RUN_LOG, {**entry, **machine})
        summaries.append(summary)
    return summaries


# -- the document ---------------------------------------------------------------------------------------
def _stored(out: Path, name: str) -> bool:
    """Whether the store in ``out`` holds rows of the study ``name`` (a run stopped before its first job
    finished leaves a store without any)."""
    from .store import ResultStore

    if not (out / STORE_FILENAME).is_file():
        return False
    with ResultStore(out, read_only=True) as store:
        return store.count(name) > 0


def _export(study: Study, root: Path, results: Path, n_boot: int) -> Report:
    """Write a study's store to its archive (records, definition, slopes, summaries, run log) and return
    the archive's report."""
    from .store import write_csv, write_rows

    source = root / study.name
    archive = results / study.archive
    archive.mkdir(parents=True, exist_ok=True)
    exp, records, _ = load_run(source, study.name)
    write_csv(records, archive / CSV_FILENAME)
    exp.save(archive / DEFINITION_FILENAME)
    if (source / RUN_LOG).is_file():
        shutil.copyfile(source / RUN_LOG, archive / RUN_LOG)
    report = analyse(archive, n_boot=n_boot)
    write_rows(report.slope_rows(), archive / "slopes.csv")
    write_rows(report.summary_rows(), archive / "summary.csv")
    if report.agreement:
        write_rows(report.agreement, archive / "agreement.csv")
    return report


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def _ci(low: float, high: float) -> str:
    return "–" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:+.2f}, {high:+.2f}]"


def _slope_text(fit) -> str:
    """A slope with its interval, ``-0.50 [-0.56, -0.46]``."""
    return f"{_fmt(fit.slope)} {_ci(fit.ci_low, fit.ci_high)}"


def _lower_gaps(report: Report) -> List[float]:
    """How far below the oracle-started fit's maximum each data-driven fit that ended lower stopped."""
    return sorted(x["oracle_gap"] for x in report.records if x.get("reached_oracle") is False)


def _p(p: float) -> str:
    return "–" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _run_facts(study: Study, archive: Path) -> str:
    log = archive / RUN_LOG
    if log.is_file():
        entries = json.loads(log.read_text())
        wall = sum(e["wall_s"] for e in entries)
        clock = _clock_seconds(entries)
        overlap = clock is not None and clock < wall - 60.0
        parts = [f"{e['started'][:10]}, {e['wall_s']:.0f} s for {e['jobs_run']} jobs on {e['cpu']} "
                 + (f"({e['cores']} cores; interrupted)" if e.get("interrupted") else
                    f"({e['cores']} cores; {e['workers']} x {e['threads_per_job']} threads)")
                 + f", fastmoe {e['fastmoe']}" + (f" at `{e['commit']}`" if e.get("commit") else "") for e in entries]
        total = (f"{clock / 60:.1f} min of wall clock (parts overlapped: {wall / 60:.1f} min summed)" if overlap
                 else f"{wall / 60:.1f} min wall in all")
        return f"run in {len(entries)} part(s), {total}: " + "; ".join(parts)
    return study.note or "run facts not recorded"


def _clock_seconds(entries) -> Optional[float]:
    """Seconds of wall clock the run log's parts cover together (parts that ran at the same time, e.g. on
    two machines, counted once); None when a part lacks its start or end."""
    from datetime import datetime

    try:
        spans = sorted((datetime.fromisoformat(e["started"]).timestamp(), datetime.fromisoformat(e["finished"]).timestamp())
                       for e in entries)
    except (KeyError, TypeError, ValueError):
        return None
    total, end = 0.0, -math.inf
    for start, finish in spans:
        total += max(0.0, finish - max(start, end))
        end = max(end, finish)
    return total


def _definition_facts(exp: Experiment) -> str:
    t = exp.truth
    fit = exp.fit
    how = {"truth": "oracle start near the truth", "search": "fastmoe.fit's default search"}.get(fit.init, fit.init)
    extra = []
    if fit.l2:
        extra.append(f"{fit.ridge} ridge l2 = {fit.l2:g}")
    if fit.bounds is not None:
        extra.append(f"box {fit.bounds}")
    return (f"k* = {t.n_experts}, k = {exp.n_experts}, {t.gating} gating, d = {t.beta1.shape[1]}, K = {t.n_classes}; "
            f"{how}" + (", " + ", ".join(extra) if extra else ""))


def _grid_facts(report: Report) -> str:
    sizes = sorted({int(r["n"]) for r in report.records})
    statuses = ", ".join(f"{c} {s}" for s, c in sorted(report.status_counts.items()))
    done, planned = len(report.records), report.experiment.n_jobs
    fits = f"{done} fits" if done >= planned else f"{done} of its {planned} fits so far (the rest resume from here)"
    return f"n = {sizes[0]:,} .. {sizes[-1]:,} ({len(sizes)} sizes), {fits}: {statuses}"


def _metrics(section: Section, reports: Sequence[Report]) -> List[str]:
    return [m for m in section.metrics if all(m in r.metrics for r in reports)]


def _slope_table(report: Report, metrics: Sequence[str]) -> List[str]:
    lines = ["| metric | theory | slope of medians | 95% CI | slope of means | sizes |", "|---|---:|---:|---|---:|---:|"]
    for m in metrics:
        s, mean = report.slopes[m], report.mean_slopes.get(m)
        lines.append(f"| {m} | {_fmt(s.theory)} | {_fmt(s.slope)} | {_ci(s.ci_low, s.ci_high)} | "
                     f"{_fmt(mean.slope) if mean else '–'} | {s.n_sizes} |")
    return lines


def _comparison_table(paper: Paper, names: Sequence[str], reports: Sequence[Report], metrics: Sequence[str],
                      n_boot: int) -> List[str]:
    presets = [paper.studies[n].preset for n in names]
    table = compare_runs(reports, metrics, names=presets, n_boot=n_boot)
    lines = [f"Against `{names[0]}`: difference = slope(run) - slope(`{names[0]}`) on the sizes both have.", "",
             "| metric | run | slope | baseline slope | difference | 95% CI | planned | p | Holm p |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for metric, row in zip(metrics, table):
        for c in row:
            d = c.difference
            plan = {"two-sided": "!=", "less": "< 0", "greater": "> 0"}[d.alternative] if c.planned else ""
            mark = " *" if c.significant else ""
            lines.append(f"| {metric} | `{names[c.index]}` | {_fmt(d.slope_b)} | {_fmt(d.slope_a)} | "
                         f"{_fmt(d.difference)}{mark} | {_ci(d.ci_low, d.ci_high)} | {plan} | {_p(d.p_value)} | "
                         f"{'' if c.planned else _p(c.p_holm)} |")
    lines += ["", "*: below 0.05 (the planned p-value as it is, the others after Holm's adjustment)."]
    return lines


#: ``{{kind arg ...}}`` in a section's text or theory: a number read off the stored results (:func:`_facts`).
_FACT = re.compile(r"\{\{\s*([a-z]+)((?:\s+[^\s}]+)*)\s*\}\}")


def _facts(text: str, paper: Paper, reports: Dict[str, Report], n_boot: int) -> str:
    """``text`` with every ``{{kind arg ...}}`` replaced by the number it names, so that prose quoting a
    result is regenerated with the tables (a study not run yet reads "(not run yet)"):

    - ``{{slope STUDY METRIC}}``: slope of the medians with its 95% interval, ``-0.50 [-0.56, -0.46]``;
    - ``{{meanslope STUDY METRIC}}``: slope of the means;
    - ``{{excludes STUDY METRIC VALUE}}``: whether that slope's interval ``excludes`` or ``contains`` VALUE
      (so that a verdict in the prose follows the data), or ``cannot yet test`` it (no interval);
    - ``{{decides STUDY METRIC A B}}``: which of two candidate slopes (``-1/8`` or ``-0.125``) that
      interval decides for (:func:`_decision`);
    - ``{{fits STUDY}}``: rows stored, ``200`` or ``27 of 280``; ``{{status STUDY}}``: their statuses,
      ``5 diverged, 195 ok``;
    - ``{{seconds STUDY}}``: the median fit time at the largest size stored and the fits' hours in all;
    - ``{{reach STUDY}}``: jobs whose data-driven fit reached the oracle-started fit's maximum,
      ``191 of 200``; ``{{lower STUDY}}``: those that ended lower and by how much;
    - ``{{diff RUN BASE METRIC}}``: slope(RUN) - slope(BASE) with its interval and p-value (planned
      where one of the two definitions declared it, unadjusted otherwise);
    - ``{{pooled FAMILY METRIC [D]}}``: the family's pooled slope (over its truths with D inputs).
    """
    def fill(match):
        kind, args = match.group(1), match.group(2).split()
        wanted = {"slope": 2, "meanslope": 2, "excludes": 3, "decides": 4, "fits": 1, "status": 1, "seconds": 1, "reach": 1,
                  "lower": 1, "diff": 3}.get(kind)
        if kind == "pooled" and len(args) in (2, 3):
            if args[0] not in paper.families:
                raise ValueError(f"paper text: {match.group(0)!r} names an unknown family")
            members = [paper.studies[n] for n in paper.families[args[0]]]
            if len(args) == 3:
                members = [m for m in members if m.d == int(args[2])]
            runs = [reports[m.name].records for m in members if m.name in reports]
            if not runs:
                return "(not run yet)"
            f = pooled_slope(runs, args[1], include=DEFAULT_INCLUDE, n_boot=n_boot)
            return _slope_text(f)
        if wanted is None or len(args) != wanted:
            raise ValueError(f"paper text: cannot read {match.group(0)!r}")
        studies = args[:2] if kind == "diff" else args[:1]
        unknown = [a for a in studies if a not in paper.studies]
        if unknown:
            raise ValueError(f"paper text: {match.group(0)!r} names unknown studies {unknown}")
        if kind == "fits" and studies[0] not in reports:
            return f"0 of {paper.studies[studies[0]].experiment.n_jobs}"
        if any(a not in reports for a in studies):
            return "(not run yet)"
        r = reports[args[0]]
        if kind == "slope":
            f = r.slopes[args[1]]
            return _slope_text(f)
        if kind == "meanslope":
            return _fmt(r.mean_slopes[args[1]].slope)
        if kind == "excludes":
            inside = _contains(r.slopes[args[1]], args[2])
            return "cannot yet test" if inside is None else "contains" if inside else "excludes"
        if kind == "decides":
            return _decision(r.slopes[args[1]], args[2], args[3])
        if kind == "status":
            return ", ".join(f"{c} {st}" for st, c in sorted(r.status_counts.items()))
        if kind == "seconds":
            timed = [x for x in r.records if isinstance(x.get("fit_time"), (int, float))]
            if not timed:
                return "(no fit times stored)"
            largest = max(int(x["n"]) for x in timed)
            at = [float(x["fit_time"]) for x in timed if int(x["n"]) == largest]
            threads = sorted({int(x.get("n_threads") or 1) for x in timed})
            return (f"a median {statistics.median(at):.0f} s per fit at n = {largest:,} ({len(at)} fits), "
                    f"{sum(float(x['fit_time']) for x in timed) / 3600:.1f} h of fits in all "
                    f"({'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''} per fit)")
        if kind == "fits":
            done, planned = len(r.records), r.experiment.n_jobs
            return f"{done}" if done >= planned else f"{done} of {planned}"
        if kind in ("reach", "lower"):
            agreement = {row["n"]: row for row in r.agreement}.get("all")
            if not agreement:
                raise ValueError(f"paper text: {args[0]} has no oracle check for {match.group(0)!r}")
            if kind == "reach":
                return f"{agreement['reached']} of {agreement['checked']}"
            lower = _lower_gaps(r)
            return f"{len(lower)}" + (f" (by {lower[0]:.2g} to {lower[-1]:.2g} nats)" if lower else "")
        run, base = args[0], args[1]
        (c,), = compare_runs([reports[base], r], [args[2]],
                             names=[paper.studies[base].preset, paper.studies[run].preset], n_boot=n_boot)
        d = c.difference
        return (f"{_fmt(d.difference)} {_ci(d.ci_low, d.ci_high)}, "
                + (f"planned p = {_p(d.p_value)}" if c.planned else f"p = {_p(d.p_value)} unadjusted"))

    return _FACT.sub(fill, text)


def _contains(fit, value: str):
    """Whether a slope's interval contains ``value`` (text: ``-1/8`` or ``-0.125``); None without an
    interval (too few replications)."""
    if not (math.isfinite(fit.ci_low) and math.isfinite(fit.ci_high)):
        return None
    return fit.ci_low <= float(Fraction(value)) <= fit.ci_high


def _decision(fit, first: str, second: str) -> str:
    """What a slope's 95% interval says between two candidate slopes given as text (``-1/8``, ``-0.25``).

    It decides for a candidate when it contains that one and excludes the other; it decides neither
    when it contains both, or excludes both (then it says on which side it lies); without an interval
    (one replication at some size) it cannot yet test either.
    """
    if _contains(fit, first) is None:
        return "cannot yet test either"
    values = {text: float(Fraction(text)) for text in (first, second)}
    inside = [text for text in values if _contains(fit, text)]
    if len(inside) == 1:
        other = second if inside[0] == first else first
        return f"contains {inside[0]} and excludes {other}: it decides for {inside[0]}"
    if inside:
        return f"contains both {first} and {second}: it decides neither"
    side = "below" if fit.ci_high < min(values.values()) else "above" if fit.ci_low > max(values.values()) \
        else "between"
    return f"excludes both {first} and {second} (it lies {side} them): it decides neither"


def _family_table(paper: Paper, family: str, reports: Dict[str, Report], metrics: Sequence[str],
                  n_boot: int) -> List[str]:
    members = [paper.studies[n] for n in paper.families[family]]
    done = [m for m in members if m.name in reports]
    metrics = [x for x in metrics if any(x in reports[m.name].metrics for m in done)] or list(metrics)
    lines = [f"**Truth family `{family}`** ({len(done)} of {len(members)} truths run; slopes of medians, "
             "pooled = mean over truths with a 95% bootstrap interval):", "",
             "| d | truth | fits | " + " | ".join(metrics) + " |", "|---|---|---:|" + "---:|" * len(metrics)]
    for m in done:
        r = reports[m.name]
        cells = " | ".join(_fmt(r.slopes[x].slope) if x in r.slopes else "–" for x in metrics)
        lines.append(f"| {m.d} | {m.name.rsplit('-', 1)[1]} | {len(r.records)} | {cells} |")
    for label, group in ([(f"pooled d = {d}", [m for m in done if m.d == d]) for d in sorted({m.d for m in done})]
                         + [("pooled, all", done)]):
        if not group:
            continue
        cells = []
        for x in metrics:
            fits = [reports[m.name].records for m in group if x in reports[m.name].metrics]
            s = pooled_slope(fits, x, include=DEFAULT_INCLUDE, n_boot=n_boot)
            cells.append(_slope_text(s))
        lines.append(f"| {label} |  | {sum(len(reports[m.name].records) for m in group)} | " + " | ".join(cells) + " |")
    return lines


class ArchiveConflict(ValueError):
    """Some studies were not exported: their archives hold jobs their stores lack (the document was
    written from the archives as they are)."""


def write_paper(paper: Paper, root, results, doc, *, figures=None, n_boot: int = 2000,
                only: Optional[Sequence[str]] = None, replace_archives: bool = False, merge_archives: bool = True,
                echo=print) -> Path:
    """Export the studies that have stores and write the document (and its figures) from the archives.

    An export never loses an archived job silently (:func:`~fastmoe.experiments.store.archive_conflict`):
    archived jobs a store lacks are taken into it first where they are of its definition and version
    (with their run log's entries; not with ``merge_archives=False``, for studies run afresh to measure
    new code), and a store that would still drop some (a study run afresh, not finished yet) is not
    exported unless ``replace_archives``; the document then reads that study's archive, and
    :class:`ArchiveConflict` is raised once the document is written. With no store under ``root`` and
    no archive under ``results`` for any study, nothing is written (``ValueError``: a mistyped path).

    Parameters
    ----------
    paper : Paper
    root : path
        Folder of the run directories (``<root>/<name>/results.sqlite``); studies without one are read
        from their archive.
    results : path
        Folder of the archives (``docs/results``).
    doc : path
        The Markdown document to write (``docs/results.md``).
    figures : path, optional
        Folder of the figures (default: ``<doc's folder>/figures``).
    n_boot : int
        Bootstrap resamples of every interval.
    only : sequence of str, optional
        Export only these studies (the document always covers every study).
    replace_archives : bool, default=False
        Export a store over its archive even where the archive holds jobs the store lacks and cannot
        take in.
    merge_archives : bool, default=True
        Take an archive's jobs of the store's definition and version into the store before its export.
    """
    root, results, doc = Path(root), Path(results), Path(doc)
    figures = Path(figures) if figures is not None else doc.parent / "figures"
    chosen = {s.name for s in paper.select(only)}
    reports: Dict[str, Report] = {}  # every study's report, read from its archive
    conflicts = []
    for study in paper.studies.values():
        archive = results / study.archive
        stored = study.name in chosen and _stored(root / study.name, study.name)
        conflict, merged = (archive_conflict(root / study.name, archive, study.name, merge=merge_archives)
                            if stored else (None, 0))
        if merged:
            echo(f"{study.name}: {merged} jobs of {archive} that its store lacked taken into the store")
            _merge_run_logs(root / study.name / RUN_LOG, archive / RUN_LOG)
        if conflict and replace_archives:
            echo(f"{study.name}: replacing its archive (--replace-archive): {conflict}")
            conflict = None
        if conflict:
            echo(f"{study.name}: not exported: {conflict}")
            conflicts.append(f"{study.name}: {conflict}")
        if stored and not conflict:
            echo(f"export {study.name} -> {archive}")
            reports[study.name] = _export(study, root, results, n_boot)
        elif (archive / CSV_FILENAME).is_file():
            reports[study.name] = analyse(archive, n_boot=n_boot)
    if not reports:
        raise ValueError(f"no study has a store under {root} or an archive under {results}: nothing to write "
                         f"(are --root and --results right?)")
    out = [f"# {paper.title}", "", "<!-- generated by `fastmoe rates paper --report-only` from paper.toml and "
           "docs/results/: edit those, not this file -->", "", paper.intro, ""]
    for section in paper.sections:
        out += [f"## {section.title}", "", _facts(section.text, paper, reports, n_boot), ""]
        if section.theory:
            out += [f"*{_facts(section.theory, paper, reports, n_boot)}*", ""]
        present = [n for n in section.studies if n in reports]
        for name in section.studies:
            study = paper.studies[name]
            out += [f"### `{name}`", ""]
            if name not in reports:
                out += [f"Not run yet: `fastmoe rates paper --only {name}` runs it "
                        f"({study.experiment.n_jobs} jobs; {_definition_facts(study.experiment)}).", ""]
                continue
            r = reports[name]
            out += [f"{_definition_facts(r.experiment)}; {_grid_facts(r)}. Archive `docs/results/{study.archive}/`; "
                    f"{_run_facts(study, results / study.archive)}.", ""]
            agreement = {row["n"]: row for row in r.agreement}.get("all")
            if agreement:
                lower = _lower_gaps(r)
                out += [f"The data-driven fit reached the maximum of the fit started near the truth in "
                        f"{agreement['reached']} of {agreement['checked']} jobs (95% Wilson interval "
                        f"[{agreement['share_low']:.2f}, {agreement['share_high']:.2f}]): the same maximum in "
                        f"{agreement['same']}, a higher one in {agreement['higher']}"
                        + (f"; it ended lower in {len(lower)}, by {lower[0]:.2g} to {lower[-1]:.2g} nats" if lower
                           else "") + ".", ""]
            out += _slope_table(r, _metrics(section, [r])) + [""]
        for group in section.comparisons:
            if all(n in reports for n in group):
                out += _comparison_table(paper, group, [reports[n] for n in group],
                                         _metrics(section, [reports[n] for n in group]), n_boot) + [""]
        for family in section.families:
            out += _family_table(paper, family, reports, section.metrics, n_boot) + [""]
        for fig in section.figures:
            runs = [reports[n] for n in fig["studies"] if n in reports]
            if len(runs) == len(fig["studies"]):
                from .plots import plot_scaled

                path = plot_scaled(runs, fig["metrics"], fig["exponent"], figures / f"{fig['name']}.png")
                rel = os.path.relpath(path, doc.parent)
                out += [f"![{fig['name']}]({rel})", "",
                        f"*Median error x n^{fig['exponent']:g} against n, {', '.join(fig['metrics'])}; bars: "
                        "10%-90% of the replications.*", ""]
        if section.studies and not present and not section.families:
            out += ["No study of this section has been run yet.", ""]
    text = "\n".join(out).rstrip() + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(doc, "w") as fh:
        fh.write(text)
    if conflicts:
        raise ArchiveConflict(f"wrote {doc} from the archives, but did not export " + "; ".join(conflicts))
    return doc
