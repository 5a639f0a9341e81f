"""Plots used by the notebooks (matplotlib)."""

import matplotlib.pyplot as plt
import torch


def plot_losses(losses: list[float], title: str = "training loss", smoothing: int = 10) -> plt.Figure:
    """Plot per-step losses and their moving average over `smoothing` steps."""
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot(losses, alpha=0.35, label="per step")
    if len(losses) >= smoothing:
        smoothed = torch.tensor(losses).unfold(0, smoothing, 1).mean(dim=1)
        axes.plot(range(smoothing - 1, len(losses)), smoothed, label=f"mean of {smoothing} steps")
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.legend()
    figure.tight_layout()
    return figure
