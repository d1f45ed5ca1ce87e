"""The examples in the docs are run, so they stay true."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, held_out_digits

from triton_score.http.app import create_app
from triton_score.local import LocalTriton
from triton_score.settings import Settings


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


def test_processors_page_example_is_the_code_directorys_own() -> None:
    """One digits example: the page shows score/processors.py itself, not a variant of it."""
    blocks = python_blocks(ROOT / "docs" / "processors.md")
    assert blocks, "docs/processors.md has no python example"
    assert blocks[0] == (ROOT / "score" / "processors.py").read_text()


def test_processors_page_curl_example_answers_what_the_page_says(triton: LocalTriton) -> None:
    text = (ROOT / "docs" / "processors.md").read_text()
    body = re.search(r"-d '(\{\"image\": \[\[[0-9,\[\]]+\]\]\})'", text)
    claimed = re.search(r'# (\{"predictions":\[\{"digit":(\d+),"label":"(\w+)")', text)
    assert body is not None and claimed is not None
    app = create_app(Settings(triton_url=triton.url, code_directory=str(ROOT / "score")))
    client = app.test_client()
    response = client.post(
        "/score/digits_onnx", data=body.group(1), content_type="application/json"
    )
    assert response.status_code == 200, response.text
    prediction = response.json["predictions"][0]
    assert (prediction["digit"], prediction["label"]) == (int(claimed.group(2)), claimed.group(3))
    images, labels = held_out_digits()
    many = client.post("/score/digits_onnx", json={"images": images[:17].tolist()})
    assert many.status_code == 400 and many.json["error"] == "send at most 16 images at a time"
    app.extensions["triton_score"].close()


@pytest.fixture()
def more_example(tmp_path: Path) -> Path:
    """The runnable example of the page's "When you need more" section."""
    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## When you need more") :]
    path = tmp_path / "more_processors.py"
    path.write_text(re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[0])
    return path


def test_when_you_need_more_example_runs_against_triton(triton: LocalTriton, more_example) -> None:
    app = create_app(
        Settings(triton_url=triton.url, processors=(str(more_example),), metadata_refresh_s=0)
    )
    rt = app.extensions["triton_score"]
    calls: list[int] = []
    real_infer = rt.gateway.infer
    rt.gateway.infer = lambda model, inputs, *a, **k: (
        calls.append(len(inputs["image"])) or real_infer(model, inputs, *a, **k)
    )
    client = app.test_client()
    images, labels = held_out_digits()
    body = {"images": images[:40].reshape(40, 64).tolist()}  # more than max_batch_size 16
    response = client.post("/score/digits_onnx", json=body)
    assert response.status_code == 200, response.text
    # predict's two calls of 20 rows, each split at max_batch_size 16 by the runtime
    assert calls == [16, 4, 16, 4]
    digits = response.json["digits"]
    assert (np.array(digits) == labels[:40]).mean() >= 0.9
    as_csv = client.post("/score/digits_onnx", json=body, headers={"accept": "text/csv"})
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    lines = as_csv.get_data(as_text=True).splitlines()
    assert lines[0] == "image,digit" and lines[1:] == [f"{i},{d}" for i, d in enumerate(digits)]

    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## When you need more") :]
    pixels = re.search(r"'\{\"images\": (\[\[[0-9,]+\]\])\}'", section)
    assert pixels is not None
    shown = client.post(
        "/score/digits_onnx",
        data=f'{{"images": {pixels.group(1)}}}',
        content_type="application/json",
        headers={"accept": "text/csv"},
    )
    assert "# " + "\n# ".join(shown.get_data(as_text=True).splitlines()) in section
    bad = client.post("/score/digits_onnx", json={"images": [[1, 2, 3]]})
    assert bad.status_code == 400
    claimed = re.search(r'# (\{"error":"field .*?),"request_id"', section)
    assert claimed is not None
    assert (
        json.dumps({k: bad.json[k] for k in ("error", "code", "field")}, separators=(",", ":"))
        == claimed.group(1) + "}"
    )
    doc = client.get("/openapi.json").json["paths"]["/score/digits_onnx"]["post"]
    assert doc["requestBody"]["content"]["application/json"]["example"] == {"images": [[0] * 64]}
    assert set(doc["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    rt.close()


def test_processors_page_testing_example_runs(
    triton_score_client, triton_score_model_info, triton_score_preprocess, monkeypatch
) -> None:
    """The plugin example of "Testing a processor", with the fixtures it names."""
    text = (ROOT / "docs" / "processors.md").read_text()
    section = text[text.index("## Testing a processor") : text.index("## When you need more")]
    namespace: dict[str, object] = {}
    exec(python_blocks_of(section)[0], namespace)  # the page's own example
    assert namespace["pytest_plugins"] == ["triton_score.testing"]
    monkeypatch.chdir(ROOT)  # its paths are the project's
    namespace["test_digits"](triton_score_client)  # type: ignore[operator]
    namespace["test_preprocess_offline"](  # type: ignore[operator]
        triton_score_model_info, triton_score_preprocess
    )


def python_blocks_of(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_architecture_diagram_names_modules_that_exist() -> None:
    """docs/architecture.md draws the request path with module names: each must exist, and
    the modules that own the path must be in it."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    diagram = re.search(r"```text\n(.*?)```", text, flags=re.DOTALL)
    assert diagram is not None
    named = set(re.findall(r"(?:triton_score/)?([a-z_]+(?:/[a-z_0-9]+)*\.py)", diagram.group(1)))
    package = ROOT / "triton_score"
    missing = sorted(name for name in named if not (package / name).is_file())
    assert not missing, f"the diagram names modules that do not exist: {missing}"
    owners = {
        "http/score_wsgi.py",
        "http/envelope.py",
        "http/score_route.py",
        "scoring/pipeline.py",
        "scoring/telemetry.py",
        "codecs/v2.py",
    }
    assert owners <= named, owners - named


# -- install and deployment commands ----------------------------------------------------------
DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEPLOY = ROOT / "docs" / "deploy.md"
TUTORIAL = ROOT / "docs" / "first-processor.md"


def install_commands(text: str) -> list[str]:
    """Every ``pip install`` the page gives: in code blocks (each command of a line, comments
    dropped) and in inline code, line breaks inside a span joined."""
    found = []
    for language, block in re.findall(r"```([\w-]*)\n(.*?)```", text, flags=re.DOTALL):
        if language not in ("bash", "sh", "dockerfile", ""):  # output: a message quoted
            joined = " ".join(block.split())
            found += [
                joined[m.start() : m.start() + 40] for m in re.finditer("pip install", joined)
            ]
            continue
        for line in block.splitlines():
            found += [c for c in re.split(r"&&|;", line.split(" #", 1)[0]) if "pip install" in c]
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        found += [span[span.index("pip install") :]] if "pip install" in span else []
    return [" ".join(c.split()) for c in found]


def test_every_install_command_uses_the_constraints() -> None:
    """The exact versions CI passed with, wherever the docs install something."""
    unconstrained = [
        f"{page.relative_to(ROOT)}: {command}"
        for page in DOC_PAGES
        for command in install_commands(page.read_text())
        if "-c constraints.txt" not in command
    ]
    assert not unconstrained, "\n".join(unconstrained)
    # The scan sees what it should: the README's own install and a span broken over lines.
    readme = install_commands((ROOT / "README.md").read_text())
    assert any("-e '.[local]'" in c for c in readme), readme
    assert install_commands("a `pip install -e\n '.[x]'` b\n```bash\npip install y  # z\n```") == [
        "pip install y",
        "pip install -e '.[x]'",
    ]


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a markdown heading line), up to the next heading of the
    same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, flags=re.MULTILINE)
    assert match, f"no heading {heading!r}"
    level = len(match.group(1))
    lines, fenced = [], False
    for line in text[match.end() :].splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        lines.append(line)
    return "".join(lines)


def az_commands(text: str) -> list[str]:
    """The ``az ml`` commands of the section's bash blocks, in order, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("az ml "):
                commands.append(" ".join(line.split()))
    return commands


#: What each `az ml ... -f FILE` command takes: the $schema of the file.
AZ_SCHEMAS = {
    "az ml environment create": "environment.schema.json",
    "az ml online-endpoint create": "managedOnlineEndpoint.schema.json",
    "az ml online-deployment create": "managedOnlineDeployment.schema.json",
    "az ml online-deployment update": "managedOnlineDeployment.schema.json",
}


def check_az_files(commands: list[str]) -> None:
    yaml = pytest.importorskip("yaml")
    for command in commands:
        verb = next((v for v in AZ_SCHEMAS if command.startswith(v + " ")), None)
        if verb is None or " -f " not in command:
            continue
        path = ROOT / command.split(" -f ", 1)[1].split()[0]
        assert path.is_file(), f"{command}: no {path.relative_to(ROOT)}"
        schema = yaml.safe_load(path.read_text())["$schema"].rsplit("/", 1)[-1]
        assert schema == AZ_SCHEMAS[verb], f"{command}: {path.name} is a {schema}"


def test_deploy_doc_gives_the_first_deployment_in_order() -> None:
    """Environment, endpoint, then the deployment created with all the traffic; the generated
    models built before the upload."""
    first = section(DEPLOY.read_text(), "First deployment")
    commands = az_commands(first)
    order = [
        "az ml environment create -f environments/environment.yml",
        "az ml online-endpoint create -f environments/endpoint.yml",
        "az ml online-deployment create -f environments/deployment.yml --all-traffic",
    ]
    assert [c for c in commands if c in order] == order, commands
    check_az_files(commands)
    assert first.index("score build") < first.index("az ml online-deployment create")


def test_deploy_doc_updates_for_a_new_model_or_processor_without_a_new_image() -> None:
    """A model or processor change is an update of the existing deployment; the image is
    rebuilt (a new environment version) only for what it is made from."""
    text = DEPLOY.read_text()
    change = section(text, "A new model or a processor change")
    blocks = re.findall(r"```bash\n(.*?)```", change, flags=re.DOTALL)
    assert blocks, "no commands"
    plain = az_commands("```bash\n" + blocks[0] + "```")
    assert plain == ["az ml online-deployment update -f environments/deployment.yml"], plain
    assert "score build" in blocks[0] and "score check" in blocks[0]
    assert "az ml online-deployment create" not in change
    check_az_files(az_commands(change))
    # The image's rebuild: a new environment version, named in both files, then the update.
    rebuild = az_commands(change[change.index("Rebuild the image") :])
    assert rebuild == [
        "az ml environment create -f environments/environment.yml",
        "az ml online-deployment update -f environments/deployment.yml",
    ], rebuild
    assert "score/requirements.txt" in change[change.index("Rebuild the image") :]
    # What the image is made from, as the page's table says it, is what the Dockerfile copies.
    dockerfile = (ROOT / "Dockerfile").read_text()
    table_row = next(line for line in text.splitlines() if line.startswith("| the **image**"))
    for source in re.findall(r"`([\w./-]+)`", table_row.split("|")[2]):
        if "/" in source or "." in source:
            assert re.search(rf"^COPY [^\n]*{re.escape(source)}", dockerfile, re.M), source


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_the_tutorial_deploys_by_the_deploy_doc() -> None:
    """One deployment story: the tutorial's step 5 links to deploy.md's two sequences, gives
    no commands of its own and no image rebuild for a processor."""
    text = TUTORIAL.read_text()
    step = section(text, "5. Deploy it to AzureML")
    assert az_commands(step) == [], "the tutorial gives its own az ml commands"
    assert "environment.yml's version" not in step and "bump" not in step
    linked = set(re.findall(r"\(deploy\.md#([\w-]+)\)", step))
    assert {"first-deployment", "a-new-model-or-a-processor-change"} <= linked, linked
    missing = linked - heading_anchors(DEPLOY.read_text())
    assert not missing, f"deploy.md has no {missing}"
    # Every link into deploy.md, from any page, lands on a heading.
    for page in DOC_PAGES:
        for anchor in re.findall(r"deploy\.md#([\w-]+)\)", page.read_text()):
            assert anchor in heading_anchors(DEPLOY.read_text()), f"{page.name}: #{anchor}"


def test_the_default_model_is_explained_where_it_is_set() -> None:
    yaml = pytest.importorskip("yaml")
    deployment = ROOT / "environments" / "deployment.yml"
    default = yaml.safe_load(deployment.read_text())["environment_variables"]["SCORE_MODEL"]
    lines = deployment.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.strip().startswith("SCORE_MODEL:"))
    comment = " ".join(
        line.strip("# ") for line in lines[max(0, at - 12) : at] if line.lstrip().startswith("#")
    )
    assert "SCORE_MODEL" in comment and "/score/<model>" in comment, comment
    assert "default" in comment, comment
    called = section(DEPLOY.read_text(), "Call the endpoint")
    assert f"`{default}`" in called and "`SCORE_MODEL`" in called and "$SCORING_URI" in called
    assert "/score/<model>" in called


def test_the_missing_dependency_message_is_the_one_the_page_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy.md shows what `score check` says of a processor importing pandas, which is not
    in the image: the real message (with a module that is missing here, renamed)."""
    from triton_score.processors.loading import ProcessorLoadError, load_processors

    shown = section(DEPLOY.read_text(), "A processor's dependencies")
    block = re.search(r"```text\n(.*?)```", shown, flags=re.DOTALL)
    assert block is not None
    (tmp_path / "score").mkdir()
    (tmp_path / "score" / "tabular_processor.py").write_text("import frame_tools_missing\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProcessorLoadError) as raised:
        load_processors(code_directory="score", use_entry_points=False)
    real = f"processors cannot be loaded: {raised.value}".replace("frame_tools_missing", "pandas")
    assert " ".join(block.group(1).split()) == real
