"""google.colab.drive: mount() links the mount point to the test's stand-in Drive (STANDIN_DRIVE)."""
import os
from pathlib import Path


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    """Like Colab's: the user's Drive appears at `mountpoint`, its files under MyDrive/; refused if STANDIN_DRIVE is unset."""
    drive = os.environ.get("STANDIN_DRIVE")
    if not drive:
        raise ValueError("mount failed")  # what Colab raises when the user declines or the mount times out
    (Path(drive) / "MyDrive").mkdir(parents=True, exist_ok=True)
    point = Path(mountpoint)
    if point.is_symlink() or point.exists():
        if not force_remount and point.resolve() == Path(drive).resolve():
            print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call drive.mount(\"{mountpoint}\", force_remount=True).")
            return
        point.unlink() if point.is_symlink() else point.rmdir()
    point.parent.mkdir(parents=True, exist_ok=True)
    point.symlink_to(Path(drive).resolve(), target_is_directory=True)
    print(f"Mounted at {mountpoint}")
