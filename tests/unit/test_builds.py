"""The build step (triton_score.repository.builds): model builders beside the repository,
before Triton."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from triton_score.cli import main
from triton_score.local import LocalTriton, TritonStartError
from triton_score.repository import builds
from triton_score.repository.builds import BuildError, find_builders, run_builds

WRITES_A_MODEL = """
    from pathlib import Path

    def build(repository, force=False, log=print):
        model = Path(repository) / "generated"
        stamp = model / "stamp"
        if stamp.is_file() and not force:
            log("[generated] up to date")
            return model
        (model / "1").mkdir(parents=True, exist_ok=True)
        stamp.write_text(str(int(stamp.read_text()) + 1 if stamp.is_file() else 1))
        log("[generated] built")
        return model
"""
NOT_A_BUILDER = """
    raise SystemExit("a build_*.py without build(repository, force) must not even be imported")

    def build(out, verbose=True):
        pass
"""
NEEDS_AN_EXTRA = """
    def build(repository, force=False):
        raise ImportError("fancy_model needs the weights (fancy-weights): pip install fancy")
"""
BROKEN = """
    def build(repository, force=False):
        raise ValueError("the weights are corrupt\\nsecond line")
"""


def layout(tmp_path: Path, **builders: str) -> Path:
    """``tmp/models/triton`` with ``tmp/models/build_<name>.py`` for each builder."""
    repository = tmp_path / "models" / "triton"
    repository.mkdir(parents=True)
    for name, source in builders.items():
        (tmp_path / "models" / f"build_{name}.py").write_text(textwrap.dedent(source))
    return repository


def test_builders_are_the_build_files_with_a_force_parameter(tmp_path: Path) -> None:
    repository = layout(tmp_path, b_writes=WRITES_A_MODEL, a_other=NOT_A_BUILDER)
    (tmp_path / "models" / "helper.py").write_text("raise SystemExit('not a build file')\n")
    assert [p.name for p in find_builders(repository)] == ["build_b_writes.py"]


def test_builds_run_once_then_are_up_to_date(tmp_path: Path) -> None:
    repository = layout(tmp_path, writes=WRITES_A_MODEL, other=NOT_A_BUILDER)
    lines: list[str] = []
    results = run_builds(repository, progress=lines.append)
    assert [(r.script.name, r.skipped) for r in results] == [("build_writes.py", "")]
    assert (repository / "generated" / "stamp").read_text() == "1"
    run_builds(repository, progress=lines.append)
    assert (repository / "generated" / "stamp").read_text() == "1"
    run_builds(repository, force=True, progress=lines.append)
    assert (repository / "generated" / "stamp").read_text() == "2"
    assert lines == ["[generated] built", "[generated] up to date", "[generated] built"]


def test_a_missing_extra_skips_that_builder_with_one_line(tmp_path: Path) -> None:
    repository = layout(tmp_path, a_needs=NEEDS_AN_EXTRA, b_writes=WRITES_A_MODEL)
    lines: list[str] = []
    results = run_builds(repository, progress=lines.append)
    assert [r.skipped for r in results] == [
        "fancy_model needs the weights (fancy-weights): pip install fancy",
        "",
    ]
    assert lines[0].startswith("warning: fancy_model needs the weights (fancy-weights): pip")
    assert "build_a_needs.py skipped" in lines[0]
    assert lines[1:] == ["[generated] built"]  # the other builders still run
    with pytest.raises(BuildError, match=r"^fancy_model needs the weights .*could not run\)$"):
        run_builds(repository, strict=True, progress=lines.append)


def test_a_failing_builder_stops_the_step_with_one_line(tmp_path: Path) -> None:
    repository = layout(tmp_path, broken=BROKEN)
    with pytest.raises(BuildError) as info:
        run_builds(repository, progress=print)
    message = str(info.value)
    assert "\n" not in message
    assert "build_broken.py failed: ValueError: the weights are corrupt second line" in message
    assert run_builds(tmp_path / "nowhere") == []


def test_score_build_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = layout(tmp_path / "empty")
    assert main(["build", "--models", str(empty)]) == 0
    assert "nothing to build" in capsys.readouterr().err
    repository = layout(tmp_path / "two", a_writes=WRITES_A_MODEL, b_needs=NEEDS_AN_EXTRA)
    # What `score build` was asked for must be built: a missing extra is an error there.
    assert main(["build", "--models", str(repository)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: fancy_model needs the weights")
    assert (repository / "generated" / "stamp").is_file()


def test_local_triton_does_not_start_when_a_build_fails(tmp_path: Path) -> None:
    repository = layout(tmp_path, broken=BROKEN)
    triton = LocalTriton(repository, http_port=1)  # never bound: the build fails first
    with pytest.raises(TritonStartError, match="build_broken.py failed"):
        triton.start()
    assert triton.process is None and triton.shm_regions() == []


def test_a_read_only_repository_is_served_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AzureML mounts the model read-only; the image serves as a user who cannot write."""
    repository = layout(tmp_path, writes=WRITES_A_MODEL)
    # As if it were a read-only mount (chmod does not stop root, who runs these tests in CI).
    monkeypatch.setattr(builds.os, "access", lambda path, mode: Path(path) != repository)
    lines: list[str] = []
    results = run_builds(repository, progress=lines.append)
    assert [r.skipped for r in results] == [f"{repository} is read-only"]
    assert lines == [
        f"build: {repository} is read-only: serving it as it is, without running "
        "build_writes.py (run score build before deploying it)"
    ]
    assert not (repository / "generated").exists()
    with pytest.raises(BuildError, match="read-only"):
        run_builds(repository, strict=True)
