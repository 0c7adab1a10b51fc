"""Colab, simulated: the path most learners take, run offline in the smoke profile.

What Colab does, and how this test does it:
- A notebook opened from its badge runs alone, in a runtime of its own whose disk (/content) is empty:
  each notebook is copied alone into a fresh folder, and runs there in a fresh kernel.
- Colab's kernel imports google.colab and has a shell class of its own: a kernelspec starts IPython with
  the stand-in package in tests/colab_standin (drive.mount links the mount point to a temporary folder,
  the test's Google Drive; userdata holds a fake HF_TOKEN secret).
- The setup cell clones the series: from a local git repository of this working tree, through RLHF_REPO_URL.
- The three notebooks share nothing but the Drive folder. Then a recycled runtime: notebook 3's folder is
  deleted and the notebook runs again in a fresh one; it must resume PPO from the checkpoint on Drive.
The install step is skipped (RLHF_SKIP_INSTALL=1: no network); what it would install is checked against
what the notebooks import. Not simulated: Drive's own behaviour (sync delays, quotas, how its FUSE mount
renames folders) and the package versions Colab has preinstalled.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import rlhf_utils as ru

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "colab_standin"
NOTEBOOKS = ["1-SFT.ipynb", "2-RM Training.ipynb", "3-RLHF.ipynb"]
FAKE_TOKEN = "hf_" + "StandInSecretTokenNeverPrinted0123"
MODEL_FILES = ("*.safetensors", ru.MANIFEST, "training_state.pt")


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
    sources.update({p.name: p.read_text() for p in (ROOT / "rlhf_utils.py", ROOT / "smoke_data.py") if p.exists()})
    modules: dict[str, set[str]] = {}
    for where, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                modules.setdefault(name.split(".")[0], set()).add(where)
    project = {"rlhf_utils", "smoke_data", "google"}  # google: google.colab, Colab's own
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
    kept = {name.replace("_", "-") for name in ru.COLAB_KEEP}
    missing = set(imported) - wanted - kept
    assert not missing, f"imported but not in requirements.txt: { {m: imported[m] for m in missing} }"
    unused = wanted - set(imported) - kept
    assert not unused, f"in requirements.txt but imported nowhere: {unused}"
    assert not requirement_names(ROOT / "tests" / "requirements.txt") & wanted  # test tools stay out of it


def test_the_install_plan_skips_what_colab_has_and_never_replaces_its_torch_or_jupyter(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch>=2.3,<3\ntransformers>=5.24,<6  # a comment\nnumpy>=1.26,<3\npandas>=2.0,<4\n"
                            "vaderSentiment>=3.3.2,<4\nipykernel>=6.29,<8\njupyter>=1.0,<2\n")
    colab = {"torch": "2.1.0", "transformers": "4.57.1", "numpy": "2.0.2", "pandas": "2.2.2", "ipykernel": "5.5.6"}
    plan = ru.colab_install_plan(requirements, installed=colab.get)
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


# ---------------------------------------------------------------------------
# The three notebooks in three runtimes, sharing only Google Drive; then a recycled runtime

def local_repository(tmp_path: Path) -> Path:
    """A git repository of the working tree as it is (committed or not), standing in for GitHub."""
    origin = tmp_path / "github" / "rlhf-in-notebooks"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    files = ([f for f in listed.stdout.decode().split("\0") if f] if listed.returncode == 0 else
             [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
              and "outputs" not in p.parts and "__pycache__" not in p.parts])
    for name in files:
        if (ROOT / name).is_file():
            (origin / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, origin / name)
    git = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", *command], cwd=origin, check=True, env=git)
    return origin


def colab_kernelspec(tmp_path: Path) -> Path:
    """A kernelspec that starts IPython the way Colab does: its shell class, google.colab importable."""
    folder = tmp_path / "jupyter" / "kernels" / "colab-standin"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.kernel_class=google.colab._kernel.Kernel"],
        "display_name": "Colab stand-in", "language": "python", "env": {"PYTHONPATH": str(STANDIN)}}))
    return tmp_path / "jupyter"


def run_in_a_fresh_runtime(notebook: str, runtime: Path) -> str:
    """Open the notebook alone in an empty /content, run every cell in a new kernel; returns all it printed."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    content = runtime / "content"
    content.mkdir(parents=True)
    shutil.copy(ROOT / notebook, content / notebook)
    os.environ["RLHF_DRIVE_MOUNT"] = str(content / "drive")  # Colab mounts Drive at /content/drive
    nb = nbformat.read(content / notebook, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="colab-standin",
                            resources={"metadata": {"path": str(content)}}).execute()
    printed = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            printed.append(output.get("text", "") + "".join(str(v) for v in output.get("data", {}).values()))
    return "\n".join(printed)


def files_outside_drive(runtime: Path) -> list[str]:
    """Model and checkpoint files on the runtime's own disk (the Drive mount is a link: not followed)."""
    found = []
    for folder, _, files in os.walk(runtime, followlinks=False):
        found += [str(Path(folder) / f) for f in files if any(Path(f).match(p) for p in MODEL_FILES)]
    return found


@pytest.mark.usefixtures("no_rlhf_settings")
def test_the_series_in_colab_runtimes_shares_drive_and_resumes_after_a_recycle(tmp_path, monkeypatch):
    drive = tmp_path / "google-drive"
    env = {"JUPYTER_PATH": str(colab_kernelspec(tmp_path)), "RLHF_REPO_URL": str(local_repository(tmp_path)),
           "RLHF_SMOKE": "1", "RLHF_SKIP_INSTALL": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "STANDIN_DRIVE": str(drive), "STANDIN_SECRET_HF_TOKEN": FAKE_TOKEN, "RLHF_DRIVE_MOUNT": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outputs = drive / "MyDrive" / "rlhf-in-notebooks" / "outputs" / "smoke"
    printed = {}
    for i, notebook in enumerate(NOTEBOOKS, start=1):
        runtime = tmp_path / f"runtime-{i}"
        printed[notebook] = run_in_a_fresh_runtime(notebook, runtime)
        assert files_outside_drive(runtime) == [], f"{notebook} wrote models outside the Drive folder"
        assert "Outputs go to Google Drive" in printed[notebook] and "RLHF_SKIP_INSTALL is set" in printed[notebook]
    for folder in ("sft_model", "reward_model", "ppo_checkpoint", "ppo_policy"):
        ru.verify_checkpoint(outputs / folder)  # complete, on Drive
    history = json.loads((outputs / "ppo_checkpoint" / "history.json").read_text())
    done = max(row["step"] for row in history)
    assert "training starts from the SFT model" in printed["3-RLHF.ipynb"]

    # Colab recycles notebook 3's runtime: its disk is gone. Run it again (two more iterations asked for).
    shutil.rmtree(tmp_path / "runtime-3")
    monkeypatch.setenv("RLHF_NUM_ITERATIONS", str(done + 2))
    again = run_in_a_fresh_runtime("3-RLHF.ipynb", tmp_path / "runtime-3-recycled")
    assert f"Resuming from the checkpoint in outputs/smoke/ppo_checkpoint: {done} iterations done" in again
    assert "training starts from the SFT model" not in again
    resumed = json.loads((outputs / "ppo_checkpoint" / "history.json").read_text())
    assert resumed[:len(history)] == history and max(row["step"] for row in resumed) == done + 2
    assert any("curve/judge_positive_share" in row for row in resumed)  # the curve came back with the history
    assert files_outside_drive(tmp_path / "runtime-3-recycled") == []

    everything = "\n".join(printed.values()) + again
    assert FAKE_TOKEN not in everything  # the secret never reaches an output
    for path in drive.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    assert "FutureWarning" not in everything and "DeprecationWarning" not in everything


def test_without_drive_the_setup_says_what_is_lost(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.delenv("STANDIN_DRIVE", raising=False)  # the stand-in's mount then fails, as a declined one does
    monkeypatch.setenv("RLHF_DRIVE_MOUNT", str(tmp_path / "drive"))
    outputs = tmp_path / "clone" / "outputs"
    assert ru.keep_outputs_on_drive(True, outputs) is None
    assert "could not be mounted" in capsys.readouterr().out
    assert ru.keep_outputs_on_drive(False, outputs) is None
    said = capsys.readouterr().out
    assert "recycles the runtime" in said and "push_to_hub=True" in said and "nbconvert" in said
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
    outputs.mkdir()  # a local outputs/ made before the mount: left alone, and said so
    assert ru.keep_outputs_on_drive(True, outputs) is None and "stays where it is" in capsys.readouterr().out
