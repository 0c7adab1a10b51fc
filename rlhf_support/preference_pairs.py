"""The preference pairs of notebook 3's DPO (section 8.3): sampled responses, two per prompt, paired by their scores
(the higher one chosen, ties dropped) and re-padded to one width. rlhf_utils.sample_preference_pairs samples and
scores them; this is the bookkeeping that turns those batches into pairs."""

from __future__ import annotations

import typing
from collections.abc import Sequence

import torch


class PreferencePairs(typing.NamedTuple):
    """Pairs of responses to the same prompts, the chosen one first: prompt + response ids and masks (N, P + R) with
    the response from column `start`; the reference's sequence log-probs (N,); the scores that ranked them (N,)."""

    chosen_ids: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_ids: torch.Tensor
    rejected_mask: torch.Tensor
    start: int
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen_scores: torch.Tensor
    rejected_scores: torch.Tensor
    ties: int  # pairs dropped: both responses scored the same (identical texts, mostly)


def widen(
    ids: torch.Tensor, mask: torch.Tensor, start: int, prompt_width: int, width: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + response rows (B, start + R) re-padded to (B, width): prompts left-padded to prompt_width, responses
    right-padded after them (position ids follow the mask, so the extra padding changes nothing)."""
    batch = ids.shape[0]
    out_ids, out_mask = ids.new_full((batch, width), pad_id), mask.new_zeros((batch, width))
    left, right = prompt_width - start, ids.shape[1] - start
    out_ids[:, left : prompt_width + right], out_mask[:, left : prompt_width + right] = ids, mask
    return out_ids, out_mask


def pairs_from_samples(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]],
    pad_id: int,
    device: torch.device,
) -> PreferencePairs:
    """Preference pairs from sampled batches, each (prompt + response ids, mask, the response's first column, scores,
    the reference's sequence log-probs) with a prompt's two responses in consecutive rows: the higher score is chosen,
    ties are dropped, and every row is re-padded to one width (`widen`)."""
    if not rows:  # n_pairs = 0: nothing to sample
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return PreferencePairs(
            empty[:, None], empty[:, None], empty[:, None], empty[:, None], 0, *[empty.float()] * 4, 0
        )
    prompt_width = max(r[2] for r in rows)
    width = prompt_width + max(r[0].shape[1] - r[2] for r in rows)
    ids, masks = zip(*(widen(r[0], r[1], r[2], prompt_width, width, pad_id) for r in rows))
    ids, masks = torch.cat(ids).view(-1, 2, width), torch.cat(masks).view(-1, 2, width)  # (N, 2, P + R)
    scores, ref_logps = torch.cat([r[3] for r in rows]).view(-1, 2), torch.cat([r[4] for r in rows]).view(-1, 2)
    kept = scores[:, 0] != scores[:, 1]  # (N,)
    first_wins = (scores[:, 0] > scores[:, 1]).long()  # (N,)
    chosen, rejected = 1 - first_wins, first_wins  # the column of each pair's chosen and rejected response
    rows_ = torch.arange(len(scores), device=scores.device)

    def pick(x: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        return x[rows_, column][kept]

    return PreferencePairs(
        pick(ids, chosen), pick(masks, chosen), pick(ids, rejected), pick(masks, rejected), prompt_width,
        pick(ref_logps, chosen), pick(ref_logps, rejected), pick(scores, chosen), pick(scores, rejected),
        int((~kept).sum()),
    )  # fmt: skip
