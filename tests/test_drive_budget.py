"""Google Drive's budget: what one full-profile series writes to the Drive folder, and what it sends to the Trash.

A free Google account has 15 GB for Drive, mail and photos together, and a file deleted through Colab's Drive mount
goes to Drive's Trash, which counts against the quota until it is emptied. This test replays every save the three
notebooks make, at the full profile's sizes (GPT-2 small's shape: 124M parameters, random weights) and on its
checkpoint schedule, into a stand-in Drive folder: a deletion there moves the file to a Trash folder, and every file
written is counted.

The budget: the whole series writes at most 6 GB and sends at most 1.5 GB to the Trash, and a recycled runtime loses
at most about 10 minutes of PPO. The PPO time is the series' target for a T4 (20 minutes for 100 iterations; not
measured yet); each further 10 minutes adds one checkpoint (`ru.ppo_write_plan` prints the figures).

Not shown by the stand-in: the tokenizer files of GPT-2 (the smoke tokenizer stands in; GPT-2's add about 3.5 MB per
saved folder), and how Drive keeps earlier revisions of a file that is overwritten in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import rlhf_utils as ru

BUDGET_WRITTEN, BUDGET_TRASHED = 6e9, 1.5e9
T4_TARGET_PPO_MINUTES = 20  # the series' target for 100 iterations on a T4 (README, "Expected runtimes")


class StandInDrive:
    """A folder standing in for Google Drive: deletions inside it go to a Trash folder beside it; writes are counted.

    Counting compares snapshots (inode, size, mtime) taken after each save: a new or changed file counts its size as
    written (Drive uploads it), a file that vanished counts as trashed. Everything Python deletes there goes through
    os.unlink / os.remove / os.rmdir / shutil.rmtree or a rename over an existing file, which move it to the Trash.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.trash = root / "MyDrive", root / "Trash"
        self.root.mkdir(parents=True)
        self.trash.mkdir()
        self.before = self.snapshot()
        self.rows: list[tuple[str, int, int]] = []
        self._rename, self._n = os.rename, 0
        real_unlink, real_rmtree, real_replace = os.unlink, shutil.rmtree, os.replace

        def unlink(path, *args, dir_fd=None, **kwargs):
            if dir_fd is None and self._inside(path) and Path(path).is_file():
                return self._to_trash(Path(path))
            return real_unlink(path, *args, dir_fd=dir_fd, **kwargs)

        def rmtree(path, *args, **kwargs):
            if self._inside(path) and Path(path).exists():
                return self._to_trash(Path(path))
            return real_rmtree(path, *args, **kwargs)

        def rename_over(real):
            def rename(src, dst, *args, **kwargs):
                if self._inside(dst) and Path(dst).is_file():
                    self._to_trash(Path(dst))  # the file that was there is deleted by the rename
                return real(src, dst, *args, **kwargs)

            return rename

        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(os, "remove", unlink)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        monkeypatch.setattr(os, "rename", rename_over(self._rename))
        monkeypatch.setattr(os, "replace", rename_over(real_replace))

    def _inside(self, path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(self.root)

    def _to_trash(self, path: Path) -> None:
        self._n += 1
        self._rename(path, self.trash / f"{self._n}-{path.name}")

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return {(st := p.stat()).st_ino: (st.st_size, st.st_mtime_ns) for p in self.root.rglob("*") if p.is_file()}

    def record(self, what: str) -> None:
        """Add what was written and trashed since the last record to the row `what` (call it after every save)."""
        after = self.snapshot()
        written = sum(size for ino, (size, mtime) in after.items() if self.before.get(ino) != (size, mtime))
        vanished = sum(size for ino, (size, _) in self.before.items() if ino not in after)
        trashed = self.trash_bytes() - sum(row[2] for row in self.rows)
        assert vanished <= trashed, "a file vanished from Drive without going to the Trash"
        if self.rows and self.rows[-1][0] == what:
            _, w, t = self.rows.pop()
            written, trashed = written + w, trashed + t
        self.rows.append((what, written, trashed))
        self.before = after

    def trash_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.trash.rglob("*") if p.is_file())


def replay_the_series(drive: StandInDrive, tokenizer, ppo_minutes: float) -> list[float]:
    """Every save of notebooks 1, 2 and 3 in the full profile, PPO lasting `ppo_minutes`; returns the minutes at
    which PPO checkpoints were written."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = drive.root / "rlhf-in-notebooks" / "outputs"
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(out)})
    assert cfg.profile == "full" and cfg.num_iterations == 100
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape: 124M parameters, fp32
    ru.save_causal_lm(lm, tokenizer, cfg.sft_model_dir)
    drive.record("1-SFT")
    ru.save_reward_model(ru.ScalarHeadModel(lm.transformer), tokenizer, cfg.reward_model_dir, 0.0, 1.0, 0.0)
    drive.record("2-RM Training")

    policy = ru.PolicyWithValueHead(lm)
    optimizer = ru.make_optimizer(policy, cfg.learning_rate)
    scaler = ru.resolve_precision(torch.device("cpu"), "fp32").grad_scaler()
    kl_controller = ru.FixedKLController(cfg.init_kl_coef)
    generator = torch.Generator().manual_seed(0)
    signature = ru.ppo_run_signature(cfg, cfg.sft_model_dir, cfg.reward_model_dir)
    _, history = ru.resume_or_start(cfg, signature, policy, optimizer, scaler, kl_controller, generator)
    drive.record("3-RLHF")
    for p in policy.parameters():  # AdamW's moments exist from the first step on: give them their real size
        p.grad = torch.zeros_like(p)
    optimizer.step()
    seconds_per_iteration, clock, saved_at, saved = ppo_minutes * 60 / cfg.num_iterations, 0.0, 0.0, []
    for iteration in range(1, cfg.num_iterations + 1):  # the notebook's loop, as far as saving goes
        clock += seconds_per_iteration
        if ru.checkpoint_due(iteration, cfg, clock - saved_at):
            ru.save_ppo_checkpoint(
                cfg.checkpoint_dir, policy, optimizer, scaler, kl_controller, iteration, history, generator, signature
            )
            saved_at = clock
            saved.append(clock / 60)
            drive.record("3-RLHF")
    ru.save_causal_lm(policy.lm, tokenizer, cfg.policy_dir)
    drive.record("3-RLHF")
    return saved


@pytest.mark.usefixtures("memory_given_back")
def test_one_full_profile_series_fits_a_free_drive(tmp_path, monkeypatch, tokenizer, capsys):
    drive = StandInDrive(tmp_path, monkeypatch)
    saved = replay_the_series(drive, tokenizer, T4_TARGET_PPO_MINUTES)
    with capsys.disabled():  # the figures, for the README and the notes
        print(f"\nPPO {T4_TARGET_PPO_MINUTES} minutes, checkpoints at {[round(m, 1) for m in saved]} min")
        for what, written, trashed in drive.rows:
            print(f"  {what:14s} written {written / 1e9:.3f} GB, to the Trash {trashed / 1e9:.3f} GB")
    written = sum(row[1] for row in drive.rows)
    trashed = sum(row[2] for row in drive.rows)
    assert written <= BUDGET_WRITTEN, f"the series writes {written / 1e9:.2f} GB to Drive"
    assert trashed <= BUDGET_TRASHED, f"the series sends {trashed / 1e9:.2f} GB to Drive's Trash"
    gaps = [b - a for a, b in zip([0.0] + saved, saved)]
    assert max(gaps) <= 10 + T4_TARGET_PPO_MINUTES / 100, gaps  # a recycled runtime loses at most ~10 minutes
    rm_written = drive.rows[1][1]
    assert 0.45e9 < rm_written < 0.55e9  # GPT-2 small in fp32: the sizes are the real ones
    # what notebook 3's Configuration cell prints is what was written
    cfg = ru.make_config(ru.PPOConfig, {"RLHF_OUTPUT_DIR": str(drive.root / "rlhf-in-notebooks" / "outputs")})
    plan = ru.ppo_write_plan(cfg, minutes=[T4_TARGET_PPO_MINUTES])
    planned = float(plan.rsplit(",", 1)[1].split("GB")[0])
    assert planned == pytest.approx(drive.rows[2][1] / 1e9, abs=0.01), plan
    assert "nothing goes to Drive's Trash" in plan and "every 10 minutes" in plan
