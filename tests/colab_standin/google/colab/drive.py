"""google.colab.drive: mount() links the mount point to the test's stand-in Drive (STANDIN_DRIVE); flush_and_unmount() removes the link."""

import os
from pathlib import Path

_mounted: list[Path] = []  # where this kernel mounted Drive


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    """Like Colab's: the user's Drive appears at `mountpoint`, its files under MyDrive/; refused if STANDIN_DRIVE is unset."""
    drive = os.environ.get("STANDIN_DRIVE")
    if not drive:
        raise ValueError("mount failed")  # what Colab raises when the user declines or the mount times out
    (Path(drive) / "MyDrive").mkdir(parents=True, exist_ok=True)
    point = Path(mountpoint)
    if point.is_symlink() or point.exists():
        if not force_remount and point.resolve() == Path(drive).resolve():
            print(
                f'Drive already mounted at {mountpoint}; to attempt to forcibly remount, call drive.mount("{mountpoint}", force_remount=True).'
            )
            _mounted.append(point)
            return
        point.unlink() if point.is_symlink() else point.rmdir()
    point.parent.mkdir(parents=True, exist_ok=True)
    point.symlink_to(Path(drive).resolve(), target_is_directory=True)
    _mounted.append(point)
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms: int = 86400000) -> None:
    """Like Colab's: waits for Drive's uploads (here they are done at once), then unmounts /content/drive."""
    point = _mounted[-1] if _mounted else None
    if point is None or not point.is_symlink():
        raise ValueError("Drive not mounted, so nothing to flush and unmount.")
    point.unlink()
    print("All changes made in this colab session should now be visible in Drive.")
