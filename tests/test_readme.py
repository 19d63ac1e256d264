"""The README works as written: its Python blocks run in order, its commands and links hold from a clone."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(language):
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


@pytest.mark.readme
def test_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    """Every ``python`` block, in order, each in a fresh namespace (a block must not lean on the one
    before it), with warnings as errors (pyproject's filterwarnings); each block prints something."""
    pytest.importorskip("sklearn")
    pytest.importorskip("pandas")
    blocks = _blocks("python")
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    for i, code in enumerate(blocks):
        namespace = {"__name__": f"readme_block_{i}"}
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README python block {i + 1} failed: {exc!r}\n{code}") from exc
        assert capsys.readouterr().out.strip(), f"README python block {i + 1} prints nothing"


def test_first_screen_has_the_two_commands():
    """Clone, install with the extra, run the main job; then the test command, which CI runs verbatim."""
    shell = _blocks("bash")[0].strip().splitlines()
    assert len(shell) == 2
    main_job, test_command = shell
    assert main_job.startswith("git clone ") and "&& cd fastmoe &&" in main_job
    assert main_job.endswith('pip install ".[experiments]" && fastmoe rates run exact-fit')
    assert test_command == 'pip install ".[test]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, ".ci/run must run exactly the README's test command"
    # The first screen: the commands come within the page's first 25 lines.
    assert README.read_text().splitlines().index(main_job) < 25


def test_the_main_job_is_a_shipped_preset():
    from fastmoe.experiments.presets import get_preset

    assert get_preset("exact-fit").name == "exact-fit"


def test_links_stay_inside_the_repository():
    text = README.read_text()
    assert "../" not in text, "the README points outside the repository"
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert "://" not in target, f"external link {target}"
        assert (ROOT / target.split("#")[0]).exists(), f"README links to missing {target}"


def test_readme_examples_are_installed_by_the_experiments_extra():
    """What the README's blocks import comes with ``pip install ".[experiments]"``."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=\[; ]", req)[0].lower() for req in project["optional-dependencies"]["experiments"]}
    base = {re.split(r"[<>=\[; ]", req)[0].lower() for req in project["dependencies"]}
    imported = set()
    for code in _blocks("python"):
        imported |= {m.split(".")[0] for m in re.findall(r"^\s*(?:from|import) (\w[\w.]*)", code, re.M)}
    distribution = {"sklearn": "scikit-learn"}
    for module in imported - {"fastmoe"}:
        assert distribution.get(module, module) in extra | base, f"README imports {module}, not installed by the extra"
    # to_frame() in the README needs pandas, and the TOML presets need tomli before Python 3.11.
    assert "pandas" in extra
    assert any(req.startswith("tomli") and "python_version < '3.11'" in req for req in project["dependencies"])
