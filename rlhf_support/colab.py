"""Colab: what the setup cell does there. Each notebook opened from its badge gets a runtime of its own, and a
recycled runtime loses its disk, so the three notebooks share one output folder on Google Drive."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .config import ENV_PREFIX
from .errors import RLHFError

COLAB_KEEP = {
    "torch",
    "torchvision",
    "torchaudio",
    "ipykernel",
    "ipython",
    "jupyter",
    "jupyter-client",
    "jupyter-core",
    "notebook",
    "jupyter-server",
}  # Colab's own builds: never replaced


PIP_LOG = "pip-install.log"  # the whole output of the setup cell's pip run, in the clone


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports google.colab at start)."""
    return "google.colab" in sys.modules


def _installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def colab_install_plan(
    requirements: str | Path = "requirements.txt", installed: Callable[[str], str | None] | None = None
) -> list[str]:
    """The requirements this environment lacks or has too old, never Colab's torch, ipykernel or jupyter.

    `installed(name)` gives a distribution's version or None (default: importlib.metadata).
    """
    from packaging.requirements import Requirement

    installed = installed or _installed_version
    plan = []
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        have = installed(requirement.name)
        if have is not None and requirement.specifier.contains(have, prereleases=True):
            continue
        if name in COLAB_KEEP:
            if have is not None:
                print(
                    f"Keeping Colab's {requirement.name} {have}, though the series was tested with {requirement}: "
                    "replacing Colab's own build could break the runtime."
                )
            continue
        plan.append(str(requirement))
    return plan


def imported_distributions() -> dict[str, str]:
    """{distribution: version} of every installed package a module of this process was imported from."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    found = {}
    for module in {name.split(".")[0] for name in list(sys.modules)}:
        for distribution in owners.get(module, []):
            version = _installed_version(distribution)
            if version is not None:
                found[distribution] = version
    return found


def colab_constraints() -> dict[str, str]:
    """The versions pip must keep: Colab's own builds (torch and its companions: torch*, triton, nvidia-*; the kernel),
    numpy, and every package already imported (upgrading one under a running kernel leaves the old code loaded)."""
    from importlib import metadata

    companions = {
        d.metadata["Name"]
        for d in metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower().startswith(("torch", "triton", "nvidia-"))
    }
    keep = {name: _installed_version(name) for name in COLAB_KEEP | companions | {"numpy"}}
    return {**{k: v for k, v in keep.items() if v is not None}, **imported_distributions()}


def colab_install(requirements: str | Path = "requirements.txt", log: str | Path = PIP_LOG) -> list[str]:
    """pip-install `colab_install_plan` with every preloaded package held at its version; says what it did.

    pip's whole output goes to `log`; a failure shows its last lines. If a package that was already imported changed
    version anyway, the notebook stops with the one fix (restart the session). RLHF_SKIP_INSTALL=1 only prints the plan.
    """
    import subprocess
    import tempfile

    plan = colab_install_plan(requirements)
    if os.environ.get(ENV_PREFIX + "SKIP_INSTALL", "") in ("1", "true", "yes"):
        print(f"RLHF_SKIP_INSTALL is set: not installing {plan or 'anything'}.")
        return plan
    if not plan:
        print("Colab already has everything the series needs: nothing installed.")
        return plan
    imported, held = imported_distributions(), colab_constraints()
    with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as constraints:
        constraints.write("".join(f"{name}=={version}\n" for name, version in sorted(held.items())))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", constraints.name, *plan],
        capture_output=True,
        text=True,
    )
    Path(constraints.name).unlink(missing_ok=True)
    output = done.stdout + done.stderr
    Path(log).write_text(output)
    lines = [line for line in output.splitlines() if line.strip()]
    if done.returncode != 0:
        tail = "\n".join(lines[-15:])
        raise RLHFError(
            f"pip could not install {', '.join(plan)} (exit status {done.returncode}). The last lines of "
            f"its output (all of it is in {Path(log).resolve()}):\n{tail}\n"
            f"The install holds the {len(held)} packages Colab preloaded at their versions; a conflict "
            "with one of them means this Colab is newer or older than the series supports: say so in an "
            "issue of the series, with that file."
        )
    for line in lines:  # what -q would hide: the resolver's warnings and the one-line summary
        if line.startswith(("WARNING: pip", "ERROR", "Successfully installed")) or "conflict" in line.lower():
            print(line)
    print(f"installed {', '.join(plan)} in {time.perf_counter() - started:.0f} s (pip's output: {log})")
    now = {name: _installed_version(name) for name in imported}
    changed = [f"{name} {before} -> {now[name]}" for name, before in imported.items() if now[name] != before]
    if changed:
        raise RLHFError(
            f"Already imported, and changed by the install: {', '.join(changed)}. This kernel still runs "
            "the old code. Restart it (Runtime > Restart session), then run all cells again: the "
            "install is done and will not run again."
        )
    return plan


DRIVE_DISCONNECTED = {107, 5}  # ENOTCONN, EIO: what a Drive mount that went away raises


def drive_error_hint(error: OSError) -> str:
    """A sentence for an OSError that a disconnected Google Drive mount raises, else ''."""
    if getattr(error, "errno", None) in DRIVE_DISCONNECTED:
        return (
            f" This looks like Google Drive disconnecting (errno {error.errno}): run the setup cell again to "
            "remount it (what was saved before is on Drive), then this cell."
        )
    return ""


def drive_mount_point() -> Path:
    """Where Google Drive is mounted: RLHF_DRIVE_MOUNT, by default Colab's /content/drive."""
    return Path(os.environ.get(ENV_PREFIX + "DRIVE_MOUNT") or "/content/drive")


def _drive_folder() -> Path:
    """The folder on Drive that holds the series' outputs: RLHF_DRIVE_MOUNT / RLHF_DRIVE_FOLDER."""
    return drive_mount_point() / os.environ.get(ENV_PREFIX + "DRIVE_FOLDER", "MyDrive/rlhf-in-notebooks")


def keep_outputs_on_drive(enabled: bool = True, outputs: str | Path = "outputs") -> Path | None:
    """Mount Google Drive and make the output folder `outputs` (in the clone) a link to a folder there.

    Every profile writes under outputs/ (outputs/, outputs/cpu/, outputs/smoke/), so through the link all of
    them land on Drive, whichever profile is chosen later, and the three notebooks share one folder. The mount
    point and the folder on Drive are RLHF_DRIVE_MOUNT (/content/drive) and RLHF_DRIVE_FOLDER
    (MyDrive/rlhf-in-notebooks). When Drive cannot be used (declined, the mount failed, a local outputs/ in the
    way), the notebook stops with how to retry and how to go on without Drive. Returns the folder on Drive,
    or None with enabled=False.
    """
    lost = (
        "Without Drive, outputs stay on this runtime's disk: Colab deletes them when it recycles the runtime, "
        "and the next notebook, opened from its badge, runs in a runtime of its own and will not see them. "
        "Then either run the next notebook in this runtime (a cell with: !jupyter nbconvert --to notebook "
        '--execute "2-RM Training.ipynb"), or push the models to the hub (push_to_hub=True) and point '
        "notebook 3 at them (RLHF_SFT_MODEL_DIR / RLHF_REWARD_MODEL_DIR = your-name/...)."
    )
    if not enabled:
        print("KEEP_OUTPUTS_ON_DRIVE is False. " + lost)
        return None
    mount_point = drive_mount_point()
    folder = _drive_folder()
    on_drive, outputs = folder / "outputs", Path(outputs)
    try:
        from google.colab import drive

        drive.mount(str(mount_point))
        on_drive.mkdir(parents=True, exist_ok=True)
    except Exception as error:  # declined in the browser, no Drive, a timeout: Colab raises several kinds
        raise RLHFError(
            f"Google Drive could not be mounted ({type(error).__name__}: {error}). To retry, run this "
            "cell again and accept Google's dialog within 2 minutes (it may open in another browser "
            "tab). To go on without Drive, set KEEP_OUTPUTS_ON_DRIVE = False in this cell and run it "
            "again. " + lost
        ) from None
    if outputs.is_symlink() and outputs.resolve() == on_drive.resolve():
        pass  # a kernel restart: the link is already there
    elif outputs.exists() or outputs.is_symlink():
        raise RLHFError(
            f"{outputs.resolve()} already exists in this runtime, so the outputs cannot go to Drive "
            f"(a cell ran before this one). Move what it holds to {on_drive} (or delete it), then run "
            "this cell again; or set KEEP_OUTPUTS_ON_DRIVE = False to keep it. " + lost
        )
    else:
        outputs.symlink_to(on_drive.resolve(), target_is_directory=True)
    print(
        f"Outputs go to Google Drive: {outputs}/ is a link to {on_drive}. The three notebooks share it, "
        "and a recycled runtime loses nothing saved: notebook 3 resumes PPO from its last checkpoint, and notebooks 1 "
        "and 2 train again and replace the saved model unless the new one is clearly worse."
    )
    if os.environ.get(ENV_PREFIX + "OUTPUT_DIR"):
        print(
            f"(RLHF_OUTPUT_DIR={os.environ[ENV_PREFIX + 'OUTPUT_DIR']} is set, so this notebook writes there instead.)"
        )
    return folder


def finish_drive_uploads() -> None:
    """In Colab with Drive mounted: wait until Drive has every file this runtime wrote, then unmount it.

    Colab uploads Drive writes in the background; only flush_and_unmount waits for them. It says what it did.
    """
    if not in_colab() or not (drive_mount_point() / "MyDrive").exists():
        print("Not in Colab with Google Drive mounted: nothing to upload.")
        return
    from google.colab import drive

    started = time.perf_counter()
    drive.flush_and_unmount()
    print(
        f"Google Drive has everything this notebook saved ({time.perf_counter() - started:.0f} s to finish the "
        "uploads): you can close this runtime. The next notebook, in its own runtime, will find it."
    )
