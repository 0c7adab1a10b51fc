"""Colab, simulated: the path most learners take, run offline in the smoke profile.

What Colab does, and how this test does it:
- A notebook opened from its badge runs alone, in a runtime of its own whose disk (/content) is empty:
  each notebook is copied alone into a fresh folder, and runs there in a fresh kernel.
- Colab's kernel imports google.colab and has a shell class of its own: a kernelspec starts IPython with
  the stand-in package in tests/colab_standin (drive.mount links the mount point to a temporary folder,
  the test's Google Drive; flush_and_unmount removes the link; userdata holds a fake HF_TOKEN secret).
- Colab's packages: with TEST_COLAB_VERSIONS=1 (.ci/run sets it) each runtime's kernel runs on a fresh copy of an
  environment built from Colab's published versions (tests/colab_versions.txt; Python stays this machine's), and
  the setup cell's real install runs there, from the package registry. Without it, the kernel runs on this
  machine's packages and the install is skipped (RLHF_SKIP_INSTALL=1).
- The setup cell clones the series: from a local git repository of this working tree, through RLHF_REPO_URL.
- The three notebooks share nothing but the Drive folder. Then a runtime recycled in the middle of PPO: its kernel is
  killed once a checkpoint is on Drive, its folder deleted, and notebook 3 runs again in a fresh one; it must resume
  and end with the same figures as a run that was never interrupted.
Not simulated: Drive's own behaviour (upload delays, quotas, revisions, how its FUSE mount renames folders), Colab's
Python (3.13 there), its CUDA, and its own kernel and UI (the Drive consent dialog, the "restart session" prompt).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from conftest import read_without_outputs

import rlhf_utils as ru
from rlhf_support import checkpoints, colab

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "colab_standin"
NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]
FAKE_TOKEN = "hf_" + "StandInSecretTokenNeverPrinted0123"
MODEL_FILES = ("*.safetensors", checkpoints.MANIFEST, "training_state.pt")


@pytest.fixture(autouse=True)
def forget_the_colab_stand_in():
    """Tests here import the stand-in google.colab; once imported, ru.in_colab() would say Colab to later tests."""
    yield
    for name in [m for m in sys.modules if m == "google.colab" or m.startswith("google.colab.")]:
        del sys.modules[name]


def code_cells(notebook: str) -> list[str]:
    nbformat = pytest.importorskip("nbformat")
    return [c.source for c in nbformat.read(ROOT / notebook, as_version=4).cells if c.cell_type == "code"]


# ---------------------------------------------------------------------------
# The install: only what the notebooks import, never Colab's torch, ipykernel or jupyter


def requirement_names(path: Path) -> set[str]:
    from packaging.requirements import Requirement

    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {Requirement(line).name.lower().replace("_", "-") for line in lines if line}


def imported_distributions() -> dict[str, set[str]]:
    """The distributions whose modules the notebooks import, directly or through the project's modules."""

    def python_only(cell: str) -> str:  # IPython's shell (!) and magic (%) lines are not Python
        return "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("!", "%")))

    sources = {f"{name} cell {i}": python_only(cell) for name in NOTEBOOKS for i, cell in enumerate(code_cells(name))}
    sources.update({p.name: p.read_text() for p in [ROOT / "rlhf_utils.py", *(ROOT / "rlhf_support").glob("*.py")]})
    # A benchmark script a notebook imports (notebook 3 draws the comparison's frontier with one): what importing it
    # runs is its module-level imports; its functions' own imports serve the benchmark, not the learner.
    notebook_code = "\n".join(s for where, s in sources.items() if " cell " in where)
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if f"benchmarks import {script.stem}" in notebook_code or f"benchmarks.{script.stem}" in notebook_code:
            body = ast.parse(script.read_text()).body
            sources[script.name] = "\n".join(
                ast.unparse(n) for n in body if isinstance(n, (ast.Import, ast.ImportFrom))
            )
    modules: dict[str, set[str]] = {}
    for where, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(where)
    project = {"rlhf_utils", "rlhf_support", "benchmarks", "google"}  # google: google.colab, Colab's own
    packages = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for module, where in modules.items():
        if module in sys.stdlib_module_names or module in project:
            continue
        for distribution in packages.get(module, [module]):
            found.setdefault(distribution.lower().replace("_", "-"), set()).update(where)
    return found


def test_the_colab_install_is_exactly_what_the_notebooks_import():
    wanted = requirement_names(ROOT / "requirements.txt")
    imported = imported_distributions()
    kept = {name.replace("_", "-") for name in colab.COLAB_KEEP}
    missing = set(imported) - wanted - kept
    assert not missing, f"imported but not in requirements.txt: { {m: imported[m] for m in missing} }"
    unused = wanted - set(imported) - kept
    assert not unused, f"in requirements.txt but imported nowhere: {unused}"
    assert not requirement_names(ROOT / "tests" / "requirements.txt") & wanted  # test tools stay out of it


def test_the_install_plan_skips_what_colab_has_and_never_replaces_its_torch_or_jupyter(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "torch>=2.3,<3\ntransformers>=5.24,<6  # a comment\nnumpy>=1.26,<3\npandas>=2.0,<4\n"
        "vaderSentiment>=3.3.2,<4\nipykernel>=6.29,<8\njupyter>=1.0,<2\n"
    )
    installed = {"torch": "2.1.0", "transformers": "4.57.1", "numpy": "2.0.2", "pandas": "2.2.2", "ipykernel": "5.5.6"}
    plan = colab.colab_install_plan(requirements, installed=installed.get)
    assert plan == ["transformers<6,>=5.24", "vaderSentiment<4,>=3.3.2"]  # too old, and missing; nothing else


def test_the_setup_cell_is_the_same_in_every_notebook_and_names_one_repository():
    setups = [code_cells(name)[0] for name in NOTEBOOKS]
    assert setups[0] == setups[1] == setups[2]
    url = re.search(r'RLHF_REPO_URL", "([^"]+)"', setups[0]).group(1)
    repo = url.removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/", readme)
    for name in NOTEBOOKS:
        first = json.loads((ROOT / name).read_text())["cells"][0]["source"]
        badges += re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/", "".join(first))
    assert len(badges) == 6 and set(badges) == {repo}, badges  # a fork changes these (README, "Forks")
    for name in NOTEBOOKS:  # each notebook, opened from its badge, asks Colab for a T4
        metadata_ = json.loads((ROOT / name).read_text())["metadata"]
        assert metadata_["accelerator"] == "GPU" and metadata_["colab"]["gpuType"] == "T4", name


def test_a_clone_that_fails_names_repo_url_and_what_to_check(tmp_path):
    """The setup cell, run as in a fresh Colab runtime (google.colab imported, empty /content), with a bad URL."""
    content = tmp_path / "content"
    content.mkdir()
    script = "import google.colab\n" + code_cells("1-SFT.ipynb")[0]
    env = {
        **os.environ,
        "PYTHONPATH": str(STANDIN),
        "RLHF_REPO_URL": str(tmp_path / "no-such-repository"),
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run([sys.executable, "-c", script], cwd=content, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert f"Could not clone REPO_URL = {tmp_path / 'no-such-repository'}" in done.stderr
    assert "does not exist" in done.stderr  # git's own reason comes with it
    assert "that the repository is public" in done.stderr and "run this cell again" in done.stderr
    assert list(content.iterdir()) == []  # nothing half-cloned left behind


# ---------------------------------------------------------------------------
# Colab's own package versions: an environment built from tests/colab_versions.txt (Colab's published list)

COLAB_VERSIONS = ROOT / "tests" / "colab_versions.txt"
WITH_COLAB_VERSIONS = os.environ.get("TEST_COLAB_VERSIONS", "") == "1"  # .ci/run sets it (a 3.5 GB download once)


def pinned_versions() -> dict[str, str]:
    lines = [line.split("#", 1)[0].strip() for line in COLAB_VERSIONS.read_text().splitlines()]
    return {
        name.lower().replace("_", "-"): version for name, _, version in (line.partition("==") for line in lines if line)
    }


def colab_environment() -> Path:
    """A virtual environment with Colab's versions, built once per version list and Python, then kept in a cache."""
    digest = hashlib.sha256(COLAB_VERSIONS.read_bytes() + sys.version.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("TEST_COLAB_ENV_CACHE") or Path.home() / ".cache" / "rlhf-in-notebooks")
    env = cache / f"colab-env-{digest}"
    if (env / "ready").exists():
        return env
    building = cache / f"colab-env-{digest}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
    done = subprocess.run(
        [
            str(building / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-r",
            str(COLAB_VERSIONS),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"building Colab's environment failed:\n{(done.stdout + done.stderr)[-3000:]}"
    (building / "ready").write_text(COLAB_VERSIONS.read_text())
    shutil.rmtree(env, ignore_errors=True)
    building.rename(env)
    return env


def fresh_colab_python(runtime: Path) -> Path:
    """A new runtime's Python with exactly Colab's packages: a copy (hard links: seconds, no space) of the base
    environment, so what the setup cell installs in one runtime is gone in the next, as in Colab."""
    copy = runtime / "python-env"
    runtime.mkdir(parents=True, exist_ok=True)
    linked = subprocess.run(["cp", "-al", str(colab_environment()), str(copy)], capture_output=True)
    if linked.returncode != 0:  # another filesystem than the cache's: a real copy (slower, 5 GB)
        shutil.rmtree(copy, ignore_errors=True)
        subprocess.run(["cp", "-a", str(colab_environment()), str(copy)], check=True)
    return copy / "bin" / "python"


@pytest.mark.skipif(
    not WITH_COLAB_VERSIONS, reason="TEST_COLAB_VERSIONS=1 builds Colab's environment (.ci/run sets it)"
)
def test_the_colab_environment_has_colab_versions(tmp_path):
    python = fresh_colab_python(tmp_path / "runtime")
    frozen = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    have = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(frozen.stdout)}
    wrong = {
        name: (version, have.get(name))
        for name, version in pinned_versions().items()
        if have.get(name, "").split("+")[0] != version
    }
    assert not wrong, wrong
    # the requirements' lower bounds accept every version Colab has: the setup cell installs only what Colab lacks
    from packaging.requirements import Requirement

    plan = colab.colab_install_plan(
        ROOT / "requirements.txt", installed=lambda name: have.get(name.lower().replace("_", "-"))
    )
    assert [Requirement(r).name for r in plan] == ["vaderSentiment"], plan


@pytest.mark.skipif(
    not WITH_COLAB_VERSIONS, reason="TEST_COLAB_VERSIONS=1 builds Colab's environment (.ci/run sets it)"
)
def test_the_labelling_buttons_work_on_colabs_ipywidgets(tmp_path):
    """Notebook 2's labelling widget, clicked programmatically on Colab's ipywidgets (7.7.1, where this machine has
    8.x): tests/test_labelling.py run in a fresh Colab runtime, with pytest added to that runtime only."""
    python = fresh_colab_python(tmp_path / "runtime")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest"], check=True)
    widgets = subprocess.run(
        [str(python), "-c", "import ipywidgets; print(ipywidgets.__version__)"], capture_output=True, text=True
    )
    assert widgets.stdout.strip() == pinned_versions()["ipywidgets"], widgets.stdout + widgets.stderr
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_labelling.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-500:]


# ---------------------------------------------------------------------------
# The three notebooks in three runtimes, sharing only Google Drive; a runtime recycled in the middle of PPO


def local_repository(tmp_path: Path) -> Path:
    """A git repository of the working tree as it is (committed or not), standing in for GitHub."""
    origin = tmp_path / "github" / "rlhf-in-notebooks"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    files = (
        [f for f in listed.stdout.decode().split("\0") if f]
        if listed.returncode == 0
        else [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and ".git" not in p.parts and "outputs" not in p.parts and "__pycache__" not in p.parts
        ]
    )
    for name in files:
        if (ROOT / name).is_file():
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, origin / name)
    git = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", *command], cwd=origin, check=True, env=git)
    return origin


def colab_kernelspec(runtime: Path, python: Path) -> None:
    """A kernelspec (in the runtime's JUPYTER_PATH) that starts IPython the way Colab does: its shell class,
    google.colab importable, on the runtime's own Python."""
    folder = runtime / "jupyter" / "kernels" / "colab-standin"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(python),
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                    "--IPKernelApp.kernel_class=google.colab._kernel.Kernel",
                ],
                "display_name": "Colab stand-in",
                "language": "python",
                "env": {"PYTHONPATH": str(STANDIN)},
            }
        )
    )


def run_in_a_fresh_runtime(
    notebook: str,
    runtime: Path,
    drive: Path,
    monkeypatch: pytest.MonkeyPatch,
    kill_when: Callable[[], bool] | None = None,
) -> str:
    """Open the notebook alone in an empty /content, with Drive `drive`, run every cell in a new kernel (on Colab's
    packages when WITH_COLAB_VERSIONS); returns all it printed. `kill_when()` true: the runtime dies there."""
    pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    content = runtime / "content"
    content.mkdir(parents=True)
    shutil.copy(ROOT / notebook, content / notebook)
    python = fresh_colab_python(runtime) if WITH_COLAB_VERSIONS else Path(sys.executable)
    colab_kernelspec(runtime, python)
    monkeypatch.setenv("JUPYTER_PATH", str(runtime / "jupyter"))
    monkeypatch.setenv("RLHF_DRIVE_MOUNT", str(content / "drive"))  # Colab mounts Drive at /content/drive
    monkeypatch.setenv("STANDIN_DRIVE", str(drive))
    nb = read_without_outputs(content / notebook)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="colab-standin", resources={"metadata": {"path": str(content)}}
    )
    if kill_when is None:
        client.execute()
    else:
        failure = []
        worker = threading.Thread(target=lambda: failure.append(_execute_until_killed(client)))
        worker.start()
        while worker.is_alive() and not kill_when():
            time.sleep(0.05)
        assert worker.is_alive(), f"{notebook} ended before the moment to kill it: {failure}"
        os.kill(client.km.provisioner.process.pid, signal.SIGKILL)  # Colab recycles the runtime, mid-cell
        worker.join(60)
        assert failure and failure[0] == "DeadKernelError", failure
    printed = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            printed.append(
                output.get("text", "")
                + "".join(str(v) for v in output.get("data", {}).values())
                + output.get("evalue", "")
            )
    return "\n".join(printed)


def _execute_until_killed(client) -> str:
    try:
        client.execute()
    except Exception as error:  # nbclient's DeadKernelError once the kernel is killed
        return type(error).__name__
    return "finished"


def files_outside_drive(runtime: Path) -> list[str]:
    """Model and checkpoint files on the runtime's own disk (the Drive mount is a link: not followed)."""
    found = []
    for folder, _, files in os.walk(runtime, followlinks=False):
        if "python-env" in Path(folder).parts:
            continue
        found += [str(Path(folder) / f) for f in files if any(Path(f).match(p) for p in MODEL_FILES)]
    return found


def checkpoint_iteration(folder: Path) -> int:
    """Iterations done in the PPO checkpoint at `folder`, 0 while there is none."""
    try:
        return json.loads((folder / checkpoints.MANIFEST).read_text())["meta"]["iteration"]
    except (OSError, ValueError, KeyError):
        return 0


def final_figures(outputs: Path) -> tuple[dict, list]:
    """What a run ends with: the saved policy's evaluation, and every logged metric but the timings."""
    evaluation = ru.verify_checkpoint(outputs / "ppo_policy")["eval"]
    history = json.loads((outputs / "ppo_checkpoint" / "history.json").read_text())
    return evaluation, [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


@pytest.mark.usefixtures("no_rlhf_settings")
def test_the_series_in_colab_runtimes_shares_drive_and_resumes_after_a_recycle_mid_ppo(tmp_path, monkeypatch):
    for name, value in {
        "RLHF_REPO_URL": str(local_repository(tmp_path)),
        "RLHF_PROFILE": "smoke",
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "STANDIN_SECRET_HF_TOKEN": FAKE_TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    if not WITH_COLAB_VERSIONS:  # this machine's packages: nothing to install (the registry may be out of reach)
        monkeypatch.setenv("RLHF_SKIP_INSTALL", "1")
    drive = tmp_path / "google-drive"
    outputs = drive / "MyDrive" / "rlhf-in-notebooks" / "outputs" / "smoke"
    printed = {}
    for i, notebook in enumerate(NOTEBOOKS[:2], start=1):
        printed[notebook] = run_in_a_fresh_runtime(notebook, tmp_path / f"runtime-{i}", drive, monkeypatch)
    second_drive = tmp_path / "google-drive-2"  # the same Drive as it was before notebook 3, for the recycled run
    shutil.copytree(drive, second_drive, symlinks=True)

    # Notebook 3 straight through, then on the copy: recycled once the checkpoint holds 10 of 30 iterations
    printed["3-RLHF.ipynb"] = run_in_a_fresh_runtime("3-RLHF.ipynb", tmp_path / "runtime-3", drive, monkeypatch)
    second_outputs = second_drive / "MyDrive" / "rlhf-in-notebooks" / "outputs" / "smoke"
    killed = run_in_a_fresh_runtime(
        "3-RLHF.ipynb",
        tmp_path / "runtime-4",
        second_drive,
        monkeypatch,
        kill_when=lambda: checkpoint_iteration(second_outputs / "ppo_checkpoint") >= 10,
    )
    done = checkpoint_iteration(second_outputs / "ppo_checkpoint")
    assert 10 <= done < 30 and "saved the PPO policy" not in killed
    shutil.rmtree(tmp_path / "runtime-4")  # Colab recycles that runtime: its disk is gone
    again = run_in_a_fresh_runtime("3-RLHF.ipynb", tmp_path / "runtime-5", second_drive, monkeypatch)
    assert f"Resuming from the checkpoint in outputs/smoke/ppo_checkpoint: {done} iterations done" in again
    assert final_figures(second_outputs) == final_figures(outputs)  # as if it had never been interrupted

    everything = "\n".join(printed.values()) + killed + again
    for notebook, said in {**printed, "3-RLHF.ipynb (resumed)": again}.items():
        assert "Outputs go to Google Drive" in said and "you can close this runtime" in said, notebook
        if WITH_COLAB_VERSIONS:  # the real install, on Colab's packages: only what Colab lacks
            assert "Successfully installed vaderSentiment" in said and "Keeping Colab's" not in said, notebook
            assert re.search(r"Successfully installed vaderSentiment-[\d.]+\n", said), said
        else:
            assert "RLHF_SKIP_INSTALL is set" in said
    for i in (1, 2, 3, 5):
        assert files_outside_drive(tmp_path / f"runtime-{i}") == [], (
            f"runtime {i} wrote models outside the Drive folder"
        )
    for folder in ("sft_model", "reward_model", "ppo_checkpoint", "ppo_policy"):
        ru.verify_checkpoint(outputs / folder)  # complete, on Drive
    assert "training starts from the SFT model" in printed["3-RLHF.ipynb"] and "training starts" not in again
    assert FAKE_TOKEN not in everything  # the secret never reaches an output
    for path in list(drive.rglob("*")) + list(second_drive.rglob("*")):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    assert "FutureWarning" not in everything and "DeprecationWarning" not in everything
    assert not list(drive.rglob("*.tmp-*")) and not list(second_drive.rglob("*.tmp-*"))  # no save left half-done


def test_a_drive_that_cannot_be_mounted_stops_the_notebook_with_both_ways_on(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.delenv("STANDIN_DRIVE", raising=False)  # the stand-in's mount then fails, as a declined one does
    monkeypatch.setenv("RLHF_DRIVE_MOUNT", str(tmp_path / "drive"))
    outputs = tmp_path / "clone" / "outputs"
    with pytest.raises(ru.RLHFError, match="could not be mounted") as stopped:
        ru.keep_outputs_on_drive(True, outputs)
    said = str(stopped.value)
    assert "run this cell again" in said and "KEEP_OUTPUTS_ON_DRIVE = False" in said  # retry, or go on without
    assert "recycles the runtime" in said and "push_to_hub=True" in said and "nbconvert" in said  # and what that costs
    assert ru.keep_outputs_on_drive(False, outputs) is None
    assert "recycles the runtime" in capsys.readouterr().out
    assert not outputs.exists()  # nothing linked: the notebooks write to the runtime's own disk


def test_with_drive_every_profile_writes_through_the_link(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("STANDIN_DRIVE", str(tmp_path / "google-drive"))
    monkeypatch.setenv("RLHF_DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    outputs = tmp_path / "content" / "clone" / "outputs"
    outputs.parent.mkdir(parents=True)
    folder = ru.keep_outputs_on_drive(True, outputs)
    assert outputs.is_symlink() and "Outputs go to Google Drive" in capsys.readouterr().out
    (outputs / "cpu").mkdir()  # a profile chosen after the setup cell (RLHF_PROFILE=cpu) still lands on Drive
    assert (tmp_path / "google-drive" / "MyDrive" / "rlhf-in-notebooks" / "outputs" / "cpu").is_dir()
    assert ru.keep_outputs_on_drive(True, outputs) == folder  # a kernel restart: the link is kept
    outputs.unlink()
    outputs.mkdir()  # a local outputs/ made before the mount: left alone, and the notebook stops
    with pytest.raises(ru.RLHFError, match="already exists in this runtime"):
        ru.keep_outputs_on_drive(True, outputs)
    assert outputs.is_dir() and not outputs.is_symlink()


def test_the_last_cell_waits_for_drive_then_says_the_runtime_can_be_closed(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setenv("STANDIN_DRIVE", str(tmp_path / "google-drive"))
    monkeypatch.setenv("RLHF_DRIVE_MOUNT", str(tmp_path / "content" / "drive"))
    assert ru.finish_drive_uploads() is None  # the last cell shows what it printed, and no value after it
    assert "nothing to upload" in capsys.readouterr().out  # not in Colab (google.colab not imported)
    import google.colab  # noqa: F401  (what Colab's kernel imports at start)

    (tmp_path / "content" / "clone").mkdir(parents=True)
    ru.keep_outputs_on_drive(True, tmp_path / "content" / "clone" / "outputs")
    ru.finish_drive_uploads()
    said = capsys.readouterr().out
    assert "should now be visible in Drive" in said and "you can close this runtime" in said
    assert not (tmp_path / "content" / "drive").exists()  # unmounted


# ---------------------------------------------------------------------------
# The install tells the truth: constraints, pip's output, imported packages that changed


def test_the_install_holds_what_colab_preloaded_and_what_is_imported():
    held = colab.colab_constraints()
    for name in ("torch", "numpy", "tqdm", "ipykernel", "pytest"):  # companions, numpy, and anything imported
        assert held[name] == metadata.version(name), name
    assert "vaderSentiment" not in held or "vaderSentiment" in {d for d in colab.imported_distributions()}


def test_a_failed_install_shows_the_tail_of_pips_output_and_keeps_all_of_it(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("rlhf-no-such-package-anywhere>=1\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip fails at once, as with a conflict or a typo
    monkeypatch.delenv("RLHF_SKIP_INSTALL", raising=False)
    log = tmp_path / "pip-install.log"
    with pytest.raises(ru.RLHFError, match="pip could not install rlhf-no-such-package-anywhere") as failed:
        ru.colab_install(requirements, log=log)
    assert "No matching distribution found for rlhf-no-such-package-anywhere" in str(failed.value)
    assert str(log) in str(failed.value) and "rlhf-no-such-package-anywhere" in log.read_text()


def test_an_imported_package_that_the_install_changed_stops_with_restart_the_session(tmp_path, monkeypatch, capsys):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("rlhf-no-such-package-anywhere>=1\n")
    monkeypatch.delenv("RLHF_SKIP_INSTALL", raising=False)
    real_version = colab._installed_version
    installed = {"done": False}

    def fake_pip(command, **kwargs):  # pip "installs", and in doing so upgrades tqdm, which is already imported
        installed["done"] = True
        assert "-c" in command and Path(command[command.index("-c") + 1]).read_text().count("tqdm==") == 1
        return subprocess.CompletedProcess(
            command, 0, "Successfully installed rlhf-no-such-package-anywhere-1.0 tqdm-99.0\n", ""
        )

    monkeypatch.setattr(subprocess, "run", fake_pip)
    monkeypatch.setattr(
        colab, "_installed_version", lambda name: "99.0" if name == "tqdm" and installed["done"] else real_version(name)
    )
    with pytest.raises(ru.RLHFError, match=r"tqdm [\d.]+ -> 99.0") as stopped:
        ru.colab_install(requirements, log=tmp_path / "pip.log")
    assert "Runtime > Restart session" in str(stopped.value)
    assert "Successfully installed" in capsys.readouterr().out  # pip's summary is shown, not hidden by -q
