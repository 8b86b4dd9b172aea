"""The published SD v1.4 mitigation table the lab figures are shown beside (its one copy in the project).

Chen, Liu, Xu, "Towards Memorization-Free Diffusion Models" (CVPR 2024): Stable Diffusion v1.4 on LAION
memorized prompts, SSCD similarity of each generation to its nearest training image; the baselines are
Somepalli et al.'s (NeurIPS 2023). A different model and data from the lab's: for shape only.
"""

from __future__ import annotations

__all__ = ["PAPER_SD", "SSCD_COLUMNS", "paper_cell"]

# Chen, Liu, Xu, "Towards Memorization-Free Diffusion Models" (CVPR 2024), results of SD v1.4 on LAION
# memorized prompts, SSCD similarity to the nearest training image: Top5%, Top1, %>0.5, %>0.4, FID.
PAPER_SD: dict[str, tuple[float, float, float, float, float]] = {
    "none": (0.91, 0.93, 44.85, 59.23, 106.41),
    "gni": (0.91, 0.94, 42.75, 58.18, 97.81),
    "rt": (0.61, 0.84, 15.07, 26.75, 101.69),
    "cwr": (0.79, 0.85, 26.45, 40.93, 96.25),
    "rna": (0.75, 0.82, 17.78, 29.05, 99.68),
    "amg-paper": (0.41, 0.47, 0.00, 7.07, 99.12),
    "amg-strong": (0.34, 0.39, 0.00, 0.00, 100.45),
}
SSCD_COLUMNS = ["Top5%", "Top1", "%>0.5", "%>0.4"]  # the memorization columns of that table


def paper_cell(method: str) -> str:
    """The paper's row for ``method`` as ``Top5% / Top1 / %>0.5 / %>0.4 / FID`` (``-``: not in the paper)."""
    paper = PAPER_SD.get(method)
    return "-" if paper is None else " / ".join(f"{v:g}" for v in paper)
