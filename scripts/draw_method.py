"""Draw an illustration of Residual Prompt Tuning (Razdaibiedina et al., 2023).

Usage (from the project root, with the venv active):

    python scripts/draw_method.py [OUTPUT_PNG]

OUTPUT_PNG defaults to ``images/residual_pt_method.png`` relative to the project root.
The soft prompt x [P x H] is passed through a shared residual MLP
phi(x) = LN(W2 relu(W1 x + b1) + b2) + x, and the result is prepended to the input
embeddings of a frozen T5. Only the prompt and the MLP are trained; the MLP is discarded afterwards.
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch, Patch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN, TRAIN_EDGE = "#F8B26A", "#C0600A"   # trainable: orange
FROZEN, FROZEN_EDGE = "#C9D6E3", "#4A6A8A"  # frozen: grey-blue
FS = 10


def box(ax, x, y, w, h, text, fc, ec, fs=FS, **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                fc=fc, ec=ec, lw=1.4, **kw))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fs)


def tokens(ax, x0, y0, n, fc, ec, cw=0.26, ch=0.26, rows=4, gap=0.06):
    """n token vectors drawn as columns of `rows` small squares; returns (x_left, x_right, y_top)."""
    for i in range(n):
        for r in range(rows):
            ax.add_patch(Rectangle((x0 + i * (cw + gap), y0 + r * ch), cw, ch, fc=fc, ec=ec, lw=1.0))
    return x0, x0 + n * (cw + gap) - gap, y0 + rows * ch


def arrow(ax, pts, color="black"):
    """Polyline through pts with an arrow head on the last segment."""
    xs, ys = zip(*pts)
    ax.plot(xs[:-1], ys[:-1], color=color, lw=1.4, solid_capstyle="round")
    ax.annotate("", xy=pts[-1], xytext=pts[-2],
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.4, mutation_scale=14,
                                shrinkA=0, shrinkB=0))


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(1600 / 150, 700 / 150), dpi=150)
    fig.subplots_adjust(0, 0, 1, 1)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 7)
    ax.axis("off")
    ax.text(8, 6.65, "Residual Prompt Tuning", ha="center", va="center", fontsize=15, weight="bold")

    # 1. soft prompt
    px0, px1, ptop = tokens(ax, 0.45, 4.43, 5, TRAIN, TRAIN_EDGE)
    pmid = (px0 + px1) / 2
    ax.text(pmid, ptop + 0.5, "soft prompt", ha="center", fontsize=11, weight="bold")
    ax.text(pmid, ptop + 0.15, r"$x\in\mathbb{R}^{P\times H}$", ha="center", fontsize=11)
    ax.text(pmid, 4.25, "P tokens, trainable", ha="center", va="top", fontsize=FS, color=TRAIN_EDGE)

    # 2. residual reparameterization phi (vertical pipeline)
    cx, bw, bh = 5.35, 2.1, 0.5
    ys = [4.95, 4.2, 3.45, 2.7]
    ax.add_patch(FancyBboxPatch((3.7, 1.35), 3.3, 4.55, boxstyle="round,pad=0,rounding_size=0.2",
                                fc="#FFF4E8", ec=TRAIN_EDGE, lw=1.3, ls="--"))
    ax.text(cx, 5.72, r"shared MLP  $\phi$", ha="center", va="center", fontsize=11, weight="bold")
    ax.text(cx, 5.43, "(trainable, discarded after training)", ha="center", va="center",
            fontsize=8.5, color=TRAIN_EDGE)
    for y, label in zip(ys, ["Linear H→M", "ReLU", "Linear M→H", "LayerNorm"]):
        box(ax, cx - bw / 2, y - bh / 2, bw, bh, label, TRAIN, TRAIN_EDGE)
    for y0, y1 in zip(ys[:-1], ys[1:]):
        arrow(ax, [(cx, y0 - bh / 2), (cx, y1 + bh / 2)])
    oy, r = 1.75, 0.2
    ax.add_patch(Circle((cx, oy), r, fc="white", ec="black", lw=1.4))
    ax.text(cx, oy, "+", ha="center", va="center", fontsize=14, weight="bold")
    arrow(ax, [(cx, ys[-1] - bh / 2), (cx, oy + r)])

    # input into the block and the skip connection around it
    jx, ymid = 3.3, 4.07
    arrow(ax, [(px1 + 0.08, ys[0]), (cx - bw / 2 - 0.02, ys[0])])
    ax.add_patch(Circle((jx, ys[0]), 0.06, fc="black", ec="black"))
    arrow(ax, [(jx, ys[0]), (jx, oy), (cx - r - 0.02, oy)])
    ax.text(jx - 0.12, 3.3, "skip connection (+ x)", rotation=90, ha="right", va="center", fontsize=9)
    ax.text(cx, 0.95, r"$\phi(x)=\mathrm{LN}(W_2\,\mathrm{ReLU}(W_1x+b_1)+b_2)+x$",
            ha="center", va="center", fontsize=11)

    # 3. projected prompt concatenated with input embeddings
    sy = 3.55
    qx0, qx1, qtop = tokens(ax, 7.75, sy, 5, TRAIN, TRAIN_EDGE)
    ex0, ex1, _ = tokens(ax, qx1 + 0.18, sy, 7, FROZEN, FROZEN_EDGE)
    qmid, emid = (qx0 + qx1) / 2, (ex0 + ex1) / 2
    arrow(ax, [(cx + r, oy), (qmid, oy), (qmid, sy - 0.05)])
    ax.text(qmid, qtop + 0.15, r"$\phi(x)$  [P×H]", ha="center", fontsize=FS)
    ax.text(emid, qtop + 0.15, "[T×H]", ha="center", fontsize=FS)
    ax.text(emid, qtop + 0.85, "input embeddings of", ha="center", fontsize=9)
    ax.text(emid, qtop + 0.55, "'premise: … hypothesis: … </s>'", ha="center", fontsize=9,
            family="DejaVu Sans Mono")
    ax.plot([qx0, qx0, ex1, ex1], [sy - 0.5, sy - 0.6, sy - 0.6, sy - 0.5], color="black", lw=1.0)
    ax.text((qx0 + ex1) / 2 + 0.6, sy - 0.75, "concatenate → [(P+T)×H]", ha="center", va="top",
            fontsize=9)

    # frozen T5 and output
    tx, tw, ty, th = 12.85, 2.55, 3.1, 1.95
    arrow(ax, [(ex1 + 0.08, ymid), (tx - 0.02, ymid)])
    box(ax, tx, ty, tw, th, "", FROZEN, FROZEN_EDGE)
    ax.text(tx + tw / 2, ty + th - 0.4, "❄", ha="center", va="center", fontsize=16,
            color=FROZEN_EDGE)
    ax.text(tx + tw / 2, ty + th / 2 - 0.2, "frozen T5\nencoder–decoder", ha="center",
            va="center", fontsize=11, linespacing=1.3)
    arrow(ax, [(tx + tw / 2, ty - 0.02), (tx + tw / 2, 2.35)])
    ax.text(tx + tw / 2, 2.15, "target: 'entailment'", ha="center", va="top", fontsize=FS,
            family="DejaVu Sans Mono")

    # 4. legend
    ax.legend(handles=[Patch(fc=TRAIN, ec=TRAIN_EDGE, label="trainable"),
                       Patch(fc=FROZEN, ec=FROZEN_EDGE, label="frozen")],
              loc="lower right", bbox_to_anchor=(0.985, 0.03), fontsize=FS, frameon=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, facecolor="white")
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "images" / "residual_pt_method.png")
