"""Draw the explanatory diagrams used by the RLHF notebooks.

Run from anywhere:

    python images/make_diagrams.py

It writes four PNG files next to this script:

    rlhf_pipeline.png   the three stages (SFT -> reward model -> PPO)
    reward_model.png    GPT-2 trunk + scalar head read at the last real token: the EOS appended to the sentence
    ppo_loop.png        one PPO iteration as a cycle of eight steps
    sft_masking.png     why the SFT loss mask must come from the attention mask

Only matplotlib is needed. Every figure uses one axes that covers the whole
canvas with data units equal to inches, so positions and sizes below can be
read directly as inches (1 inch = 72 pt = 150 px at the chosen dpi).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent
DPI = 150

# ---------------------------------------------------------------------------
# Palette and fonts
# ---------------------------------------------------------------------------
TEXT = "#1F2933"
MUTED = "#66707D"
ARROW = "#4A5563"

SFT = {"fill": "#E4EEF9", "edge": "#3E6FA8"}  # calm blue
RM = {"fill": "#E3F1E7", "edge": "#3C8A5A"}  # calm green
PPO = {"fill": "#FCECDD", "edge": "#C46F2C"}  # calm orange
GREY = {"fill": "#F1F2F4", "edge": "#8A919B"}  # neutral
PURPLE = {"fill": "#EEE8F6", "edge": "#6E56A0"}  # accents / bookkeeping
BAD = {"fill": "#FBE4E1", "edge": "#C0392B"}
GOOD = {"fill": "#E3F1E7", "edge": "#2E7D4F"}

plt.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 12,
        "mathtext.fontset": "dejavusans",
        "savefig.facecolor": "white",
    }
)


# ---------------------------------------------------------------------------
# Small drawing helpers
# ---------------------------------------------------------------------------
def new_canvas(width, height, y_min=0.0):
    """Figure + one axes spanning it, with data units in inches.

    y_min shifts the visible window up, to trim a bottom margin without
    rewriting every coordinate of a drawing.
    """
    fig = plt.figure(figsize=(width, height), facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(y_min, y_min + height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def box(ax, cx, cy, w, h, fill, edge, lw=1.6, radius=0.08, ls="-", z=2):
    """Rounded rectangle centred at (cx, cy)."""
    patch = FancyBboxPatch(
        (cx - w / 2, cy - h / 2),
        w,
        h,
        boxstyle=f"round,pad=0,rounding_size={radius}",
        facecolor=fill,
        edgecolor=edge,
        linewidth=lw,
        linestyle=ls,
        zorder=z,
    )
    ax.add_patch(patch)
    return patch


def text(ax, x, y, s, size=12, color=TEXT, weight="normal", ha="center", va="center", z=5, **kw):
    return ax.text(x, y, s, fontsize=size, color=color, fontweight=weight, ha=ha, va=va, zorder=z, **kw)


def text_box(ax, cx, cy, w, h, s, style, size=12, weight="normal", solid=False, **kw):
    """Box with centred (possibly multi-line) text.

    solid=True fills the box with the edge colour and writes white text;
    used for the artefacts a stage produces (SFT model, reward model, ...).
    """
    fill = style["edge"] if solid else style["fill"]
    color = "white" if solid else TEXT
    box(ax, cx, cy, w, h, fill, style["edge"], **kw)
    text(ax, cx, cy, s, size=size, color=color, weight=weight, linespacing=1.35)


def arrow(ax, points, color=ARROW, lw=1.8, head=12, ls="-", z=3):
    """Arrow along a polyline given as a list of (x, y) points."""
    path = MplPath(points, [MplPath.MOVETO] + [MplPath.LINETO] * (len(points) - 1))
    patch = FancyArrowPatch(
        path=path,
        arrowstyle="-|>,head_length=0.9,head_width=0.38",
        mutation_scale=head,
        color=color,
        linewidth=lw,
        linestyle=ls,
        joinstyle="round",
        capstyle="round",
        zorder=z,
    )
    ax.add_patch(patch)
    return patch


def save(fig, name):
    path = OUT_DIR / name
    fig.savefig(path, dpi=DPI, facecolor="white")
    plt.close(fig)
    print(f"wrote {path.name:<20} {path.stat().st_size / 1024:6.1f} KB")
    return path


# ---------------------------------------------------------------------------
# 1. The three-stage pipeline
# ---------------------------------------------------------------------------
def _stage_panel(ax, x0, w, y0, y1, number, title, notebook, style):
    """Light panel with a small 'STAGE n' kicker, title and notebook pill."""
    cx = x0 + w / 2
    box(ax, cx, (y0 + y1) / 2, w, y1 - y0, style["fill"], style["edge"], lw=1.4, radius=0.15, z=1)
    text(ax, cx, y1 - 0.3, f"STAGE {number}", size=11, color=style["edge"], weight="bold")
    text(ax, cx, y1 - 0.62, title, size=15, weight="bold")
    box(ax, cx, y1 - 1.0, 2.25, 0.34, "white", style["edge"], lw=1.0, radius=0.17, z=2)
    text(ax, cx, y1 - 1.0, notebook, size=11, color=style["edge"], family="DejaVu Sans Mono")
    return cx


def draw_rlhf_pipeline():
    fig, ax = new_canvas(11.8, 5.85, y_min=0.05)
    y0, y1 = 1.2, 5.75  # vertical extent of the stage panels
    pw = 3.5  # panel width
    xs = [0.15, 4.15, 8.15]  # panel left edges

    # --- Stage 1: supervised fine-tuning ---------------------------------
    c1 = _stage_panel(ax, xs[0], pw, y0, y1, 1, "Supervised fine-tuning", "1-SFT.ipynb", SFT)
    text_box(ax, c1 - 0.82, 3.85, 1.5, 0.75, "GPT-2\n(pretrained)", GREY)
    text_box(ax, c1 + 0.82, 3.85, 1.5, 0.75, "SST-2\nsentences", GREY)
    text_box(ax, c1, 2.75, 2.9, 0.7, "next-token\ncross-entropy loss", {"fill": "white", "edge": SFT["edge"]}, size=11)
    text_box(ax, c1, 1.72, 2.2, 0.6, "SFT model", SFT, size=13, weight="bold", solid=True)
    for dx in (-0.82, 0.82):
        arrow(ax, [(c1 + dx, 3.47), (c1 + dx, 3.1)])
    arrow(ax, [(c1, 2.4), (c1, 2.02)])

    # --- Stage 2: reward model -------------------------------------------
    c2 = _stage_panel(ax, xs[1], pw, y0, y1, 2, "Reward model", "2-RM Training.ipynb", RM)
    text_box(ax, c2 - 0.82, 3.85, 1.5, 0.75, "GPT-2 +\nscalar head", GREY)
    text_box(ax, c2 + 0.82, 3.85, 1.5, 0.75, "SST-2\nsentiment labels", GREY, size=11)
    text_box(
        ax,
        c2,
        2.75,
        2.9,
        0.7,
        "learn one score per text:\nhigh = positive",
        {"fill": "white", "edge": RM["edge"]},
        size=11,
    )
    text_box(ax, c2, 1.72, 2.2, 0.6, "Reward model", RM, size=13, weight="bold", solid=True)
    for dx in (-0.82, 0.82):
        arrow(ax, [(c2 + dx, 3.47), (c2 + dx, 3.1)])
    arrow(ax, [(c2, 2.4), (c2, 2.02)])

    # --- Stage 3: PPO -----------------------------------------------------
    c3 = _stage_panel(ax, xs[2], pw, y0, y1, 3, "RL with PPO", "3-RLHF.ipynb", PPO)
    pol_x, ref_x = c3 - 0.85, c3 + 0.85
    text_box(
        ax, pol_x, 1.85, 1.6, 0.75, "Policy $\\pi_\\theta$\ninit = SFT", {"fill": "white", "edge": PPO["edge"]}, size=11
    )
    text_box(
        ax,
        ref_x,
        1.85,
        1.6,
        0.75,
        "Reference $\\pi_{\\mathrm{ref}}$\nfrozen SFT copy",
        {"fill": "white", "edge": GREY["edge"]},
        size=11,
        ls="--",
    )
    text_box(
        ax,
        c3,
        3.05,
        3.0,
        0.8,
        "PPO: score $-$ $\\beta\\cdot$KL,\nGAE, clipped update",
        {"fill": "white", "edge": PPO["edge"]},
        size=11,
    )
    text_box(ax, c3, 4.12, 2.2, 0.5, "PPO policy", PPO, size=13, weight="bold", solid=True)
    arrow(ax, [(pol_x, 2.23), (pol_x, 2.65)])
    arrow(ax, [(ref_x, 2.23), (ref_x, 2.65)])
    text(ax, ref_x + 0.12, 2.44, "KL", size=11, color=MUTED, ha="left")
    arrow(ax, [(c3, 3.45), (c3, 3.87)])

    # --- Cross-stage arrows -----------------------------------------------
    lane_y = 0.55
    sft_col = SFT["edge"]
    # SFT model -> down to the lane -> along the bottom -> up into stage 3,
    # where it splits into the trainable policy and the frozen reference.
    arrow(ax, [(c1, 1.42), (c1, lane_y), (ref_x, lane_y), (ref_x, 1.47)], color=sft_col, lw=2.2)
    arrow(ax, [(pol_x, lane_y), (pol_x, 1.47)], color=sft_col, lw=2.2)
    ax.add_patch(Circle((pol_x, lane_y), 0.05, color=sft_col, zorder=4))
    text(
        ax,
        c2,
        lane_y + 0.22,
        "SFT weights: initialise the policy  +  frozen copy as KL reference",
        size=11,
        color=sft_col,
    )
    text(ax, pol_x - 0.1, 1.1, "init", size=11, color=sft_col, ha="right")
    text(ax, ref_x + 0.1, 1.1, "copy", size=11, color=sft_col, ha="left")

    # Reward model -> through the gap between panels -> into the PPO box.
    gap_x = (xs[1] + pw + xs[2]) / 2
    rm_col = RM["edge"]
    arrow(ax, [(c2 + 1.1, 1.72), (gap_x, 1.72), (gap_x, 3.05), (c3 - 1.5, 3.05)], color=rm_col, lw=2.2)
    text(ax, gap_x - 0.13, 2.35, "scores $s(x, y)$", size=11, color=rm_col, rotation=90)
    text(
        ax,
        0.15,
        0.2,
        "as in the full profile (pretrained GPT-2 small); the cpu and smoke profiles train a small GPT-2 from scratch",
        size=9.5,
        color=MUTED,
        ha="left",
        style="italic",
    )

    return save(fig, "rlhf_pipeline.png")


# ---------------------------------------------------------------------------
# 2. Reward model: GPT-2 trunk + scalar head at the last real token
# ---------------------------------------------------------------------------
def draw_reward_model():
    fig, ax = new_canvas(12.9, 6.85, y_min=0.0)
    tokens = ["the", "film", "is", "a", "triumph", "EOS", "pad", "pad"]
    n_real = 6  # the sentence's tokens and the EOS appended to it (tokenize_sentences); then padding
    last = n_real - 1
    step = 1.0
    x0 = 1.85
    xs = [x0 + i * step for i in range(len(tokens))]
    tok_y, trunk_y, hid_y = 0.75, 2.35, 3.95
    head_y, out_y = 5.3, 6.3
    accent = PPO["edge"]

    # token row
    for i, (x, tok) in enumerate(zip(xs, tokens)):
        is_pad = i >= n_real
        style = GREY if is_pad else (PPO if i == last else SFT)
        box(
            ax,
            x,
            tok_y,
            0.9,
            0.52,
            "#F7F7F8" if is_pad else style["fill"],
            style["edge"],
            lw=2.0 if i == last else 1.3,
            ls="--" if is_pad else "-",
        )
        text(
            ax,
            x,
            tok_y,
            tok,
            size=12,
            color=MUTED if is_pad else TEXT,
            family="DejaVu Sans Mono" if is_pad else "DejaVu Sans",
        )
        arrow(ax, [(x, tok_y + 0.28), (x, trunk_y - 0.5)], color=GREY["edge"] if is_pad else ARROW, lw=1.4, head=9)
    text(ax, xs[0] - 0.6, tok_y, "tokens", size=11, color=MUTED, ha="right")
    text(ax, xs[last], tok_y - 0.45, "appended", size=10, color=accent, style="italic")
    text(
        ax, (xs[n_real] + xs[-1]) / 2, tok_y - 0.45, "padding (also EOS in GPT-2)", size=10, color=MUTED, style="italic"
    )

    # transformer trunk
    trunk_w = xs[-1] - xs[0] + 1.08
    cx = (xs[0] + xs[-1]) / 2
    box(ax, cx, trunk_y, trunk_w, 0.95, SFT["fill"], SFT["edge"], lw=1.6, radius=0.12)
    text(ax, cx, trunk_y + 0.15, "GPT-2 transformer trunk", size=14, weight="bold")
    text(
        ax,
        cx,
        trunk_y - 0.2,
        "12 blocks, causal self-attention: position t only sees tokens $\\leq$ t",
        size=11,
        color=MUTED,
    )

    # hidden states, one per position
    for i, x in enumerate(xs):
        is_pad = i >= n_real
        arrow(ax, [(x, trunk_y + 0.5), (x, hid_y - 0.3)], color=GREY["edge"] if is_pad else ARROW, lw=1.4, head=9)
        if i == last:
            box(ax, x, hid_y, 0.8, 0.56, PPO["fill"], accent, lw=2.6)
        elif is_pad:
            box(ax, x, hid_y, 0.8, 0.56, "#F7F7F8", GREY["edge"], lw=1.2, ls="--")
        else:
            box(ax, x, hid_y, 0.8, 0.56, "white", SFT["edge"], lw=1.3)
        text(ax, x, hid_y, f"$h_{i + 1}$", size=13, color=MUTED if is_pad else TEXT)
    text(ax, xs[0] - 0.6, hid_y, "hidden\nstates", size=11, color=MUTED, ha="right")

    # pad note: bracket over the padded hidden states
    pad_l, pad_r = xs[n_real] - 0.4, xs[-1] + 0.4
    by = hid_y + 0.42
    ax.plot([pad_l, pad_l, pad_r, pad_r], [by - 0.08, by, by, by - 0.08], color=MUTED, lw=1.2, zorder=3)
    text(ax, (pad_l + pad_r) / 2, by + 0.22, "not read", size=11, color=MUTED, style="italic")

    # last-token callout, left of the arrow into the head
    text(
        ax,
        xs[last] - 0.2,
        (hid_y + head_y) / 2,
        "read here: the last real token, the appended EOS\n(its index comes from the attention mask)",
        size=11,
        color=accent,
        ha="right",
        linespacing=1.35,
    )

    # linear head and scalar output
    hx = xs[last]
    arrow(ax, [(hx, hid_y + 0.3), (hx, head_y - 0.3)], color=accent, lw=2.2)
    box(ax, hx, head_y, 4.0, 0.58, PPO["fill"], accent, lw=1.8)
    text(ax, hx, head_y, "linear head: hidden (768) $\\rightarrow$ 1 scalar", size=12, weight="bold")
    arrow(ax, [(hx, head_y + 0.3), (hx, out_y - 0.27)], color=accent, lw=2.2)
    box(ax, hx, out_y, 3.7, 0.52, accent, accent, lw=1.8)
    text(
        ax, hx, out_y, "score  $s_\\phi(x, y) = w \\cdot h_{\\mathrm{EOS}} + b$", size=13, color="white", weight="bold"
    )
    text(
        ax,
        0.2,
        0.15,
        "sizes of the full profile (GPT-2 small: 12 blocks, 768 wide); the cpu profile's model is smaller",
        size=9.5,
        color=MUTED,
        ha="left",
        style="italic",
    )

    # side note: the same head as a value function in PPO
    nx, ny, nw, nh = 11.2, 4.45, 2.7, 1.9
    box(ax, nx, ny, nw, nh, PURPLE["fill"], PURPLE["edge"], lw=1.3, ls="--", radius=0.12)
    text(ax, nx, ny + 0.62, "In PPO (notebook 3)", size=11, color=PURPLE["edge"], weight="bold")
    text(
        ax,
        nx,
        ny - 0.18,
        "the same kind of scalar\nhead, read at every\nresponse position t,\ngives the value $V(s_t)$",
        size=11,
        color=TEXT,
        linespacing=1.4,
    )

    return save(fig, "reward_model.png")


# ---------------------------------------------------------------------------
# 3. One PPO iteration as a cycle
# ---------------------------------------------------------------------------
PPO_STEPS = [
    ("Sample", "responses from the policy $\\pi_\\theta$\n(batched, KV cache)", SFT),
    ("Score", "prompt + response with\nthe reward model", SFT),
    ("Log-probs & values", "$\\log\\pi_\\theta$, $\\log\\pi_{\\mathrm{ref}}$ per token,\nvalues $V(s_t)$", SFT),
    (
        "KL-shaped rewards",
        "$r_t = -\\beta\\,(\\log\\pi_\\theta - \\log\\pi_{\\mathrm{ref}})$\n+ score on the last token",
        RM,
    ),
    ("GAE", "advantages $\\hat A_t$ and\nreturns $R_t$  ($\\gamma$, $\\lambda$)", RM),
    ("PPO epochs", "over minibatches: clipped\npolicy loss + clipped value loss", PPO),
    ("Update $\\beta$", "nudge $\\beta$ towards a target KL\n(or keep it fixed)", PURPLE),
    ("Log, evaluate", "metrics; every few iterations\nthe curve; a checkpoint", PURPLE),
]


def _step_card(ax, cx, cy, w, h, number, title, body, style):
    box(ax, cx, cy, w, h, style["fill"], style["edge"], lw=1.6, radius=0.12)
    # numbered badge in the top-left corner
    bx, by = cx - w / 2 + 0.3, cy + h / 2 - 0.3
    ax.add_patch(Circle((bx, by), 0.18, color=style["edge"], zorder=4))
    text(ax, bx, by, str(number), size=12, color="white", weight="bold")
    text(ax, bx + 0.3, by, title, size=12, weight="bold", ha="left")
    text(ax, cx, cy - 0.2, body, size=11, linespacing=1.45)


def draw_ppo_loop():
    fig, ax = new_canvas(12.0, 5.8, y_min=0.1)
    w, h = 2.66, 1.55
    pitch = w + 0.36
    col_x = [0.14 + w / 2 + i * pitch for i in range(4)]
    top_y, bot_y = 4.75, 1.25
    # clockwise: steps 1-4 along the top (left -> right),
    # steps 5-8 along the bottom (right -> left)
    positions = [(x, top_y) for x in col_x] + [(x, bot_y) for x in reversed(col_x)]

    for n, ((cx, cy), (title, body, style)) in enumerate(zip(positions, PPO_STEPS), 1):
        _step_card(ax, cx, cy, w, h, n, title, body, style)

    # arrows between consecutive cards
    gap = 0.05
    for i in range(3):  # top row, rightwards
        xa = col_x[i] + w / 2 + gap
        xb = col_x[i + 1] - w / 2 - gap
        arrow(ax, [(xa, top_y), (xb, top_y)], lw=2.0)
    for i in range(3, 0, -1):  # bottom row, leftwards
        xa = col_x[i] - w / 2 - gap
        xb = col_x[i - 1] + w / 2 + gap
        arrow(ax, [(xa, bot_y), (xb, bot_y)], lw=2.0)
    # right side: 4 -> 5 ; left side: 8 -> back to 1
    arrow(ax, [(col_x[3], top_y - h / 2 - gap), (col_x[3], bot_y + h / 2 + gap)], lw=2.0)
    arrow(ax, [(col_x[0], bot_y + h / 2 + gap), (col_x[0], top_y - h / 2 - gap)], lw=2.2, color=PPO["edge"])
    text(
        ax,
        col_x[0] + 0.15,
        (top_y + bot_y) / 2,
        "back to (1):\nnext iteration",
        size=11,
        color=PPO["edge"],
        ha="left",
        weight="bold",
        linespacing=1.3,
    )

    # centre: title and a 2 x 2 colour legend
    mid_x, mid_y = (col_x[1] + col_x[2]) / 2, (top_y + bot_y) / 2
    text(ax, mid_x, mid_y + 0.45, "one PPO iteration", size=14, weight="bold")
    legend = [
        (SFT, "rollout (no gradients)"),
        (RM, "rewards & advantages"),
        (PPO, "optimise (gradients)"),
        (PURPLE, "bookkeeping"),
    ]
    for k, (style, label) in enumerate(legend):
        lx = mid_x - 2.35 + (k % 2) * 2.65
        ly = mid_y - 0.05 - (k // 2) * 0.4
        box(ax, lx, ly, 0.3, 0.22, style["fill"], style["edge"], lw=1.3, radius=0.04)
        text(ax, lx + 0.25, ly, label, size=11, color=MUTED, ha="left")

    return save(fig, "ppo_loop.png")


# ---------------------------------------------------------------------------
# 4. SFT loss masking when pad id == eos id
# ---------------------------------------------------------------------------
def draw_sft_masking():
    fig, ax = new_canvas(9.6, 4.5)
    tokens = ["a", "gripping", "film", "<eos>", "<pad>", "<pad>"]
    attn = [1, 1, 1, 1, 0, 0]
    step, cw, ch = 0.94, 0.88, 0.48
    x0 = 2.6  # centre of the first token column
    xs = [x0 + i * step for i in range(len(tokens))]
    label_x = x0 - cw / 2 - 0.2  # right edge of the row labels
    left_x = x0 - cw / 2  # left edge of the token grid
    right_x = xs[-1] + cw / 2  # right edge of the token grid
    eos_id = 50256

    def cell(x, y, s, style, dashed=False, col=TEXT):
        box(ax, x, y, cw, ch, style["fill"], style["edge"], lw=1.3, ls="--" if dashed else "-")
        special = s.startswith("<") or s == "-100"
        text(
            ax, x, y, s, size=11 if special else 12, color=col, family="DejaVu Sans Mono" if special else "DejaVu Sans"
        )

    # input tokens, ids and attention mask
    y_tok, y_id, y_att = 4.07, 3.57, 3.17
    for i, (x, tok) in enumerate(zip(xs, tokens)):
        is_pad = tok == "<pad>"
        cell(x, y_tok, tok, GREY if is_pad else SFT, dashed=is_pad, col=MUTED if is_pad else TEXT)
        if tok.startswith("<"):
            text(ax, x, y_id, str(eos_id), size=11, color=BAD["edge"], family="DejaVu Sans Mono")
        text(ax, x, y_att, str(attn[i]), size=12, family="DejaVu Sans Mono")
    text(ax, label_x, y_tok, "input", size=12, ha="right", weight="bold")
    text(ax, label_x, y_id, "token id", size=11, ha="right", color=MUTED)
    text(ax, label_x, y_att, "attention mask", size=11, ha="right", color=MUTED)
    text(ax, right_x + 0.2, y_id, "pad id == eos id", size=11, color=BAD["edge"], ha="left", weight="bold")
    text(
        ax,
        right_x + 0.2,
        y_id - 0.3,
        "(50256: GPT-2 small's;\nthe cpu profile's is 0)",
        size=9.5,
        color=MUTED,
        ha="left",
        style="italic",
        linespacing=1.2,
    )

    ax.plot([0.3, right_x], [2.85, 2.85], color="#D5D9DE", lw=1.0)
    text(ax, left_x, 2.59, "labels for the loss  (-100 = ignored)", size=11, color=MUTED, ha="left", style="italic")

    # two ways to build the labels
    rows = [
        (
            2.12,
            BAD,
            "mask by token id\n(label != pad)",
            [True, True, True, False, False, False],
            "\u2717  <eos> is masked too \u2192 the model never learns to stop",
        ),
        (
            0.97,
            GOOD,
            "mask by\nattention mask",
            [True, True, True, True, False, False],
            "\u2713  <eos> kept in the loss, pads ignored",
        ),
    ]
    for y, style, name, keep, verdict in rows:
        text(ax, label_x, y, name, size=11, ha="right", weight="bold", color=style["edge"], linespacing=1.3)
        for i, (x, tok) in enumerate(zip(xs, tokens)):
            if keep[i]:
                cell(x, y, tok, GOOD)
            elif tok == "<eos>":  # the bug: a real token dropped from the loss
                box(ax, x, y, cw, ch, BAD["fill"], BAD["edge"], lw=2.6)
                text(ax, x, y, "-100", size=11, color=BAD["edge"], weight="bold", family="DejaVu Sans Mono")
            else:
                cell(x, y, "-100", GREY, dashed=True, col=MUTED)
        text(ax, left_x, y - 0.5, verdict, size=11.5, color=style["edge"], ha="left", weight="bold")

    return save(fig, "sft_masking.png")


def main():
    draw_rlhf_pipeline()
    draw_reward_model()
    draw_ppo_loop()
    draw_sft_masking()


if __name__ == "__main__":
    main()
