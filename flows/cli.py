"""The ``hotswap`` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="hotswap: upgrade a retrieval model without re-extracting the gallery.", no_args_is_help=True
)
console = Console()


@app.callback()
def main() -> None:
    """hotswap: upgrade a retrieval model without re-extracting the gallery."""


@app.command()
def demo(
    epochs: int = typer.Option(None, help="training epochs (default: settings)"),
    seed: int = typer.Option(None, help="random seed (default: settings)"),
) -> None:
    """Train an old model on digits 0-4 of MNIST-5k and print its retrieval metrics."""
    import torch

    from components.backbones import BackboneSpec, build_model
    from components.data import load_mnist5k
    from components.metrics import retrieval_metrics
    from components.settings import load_settings
    from components.training import TrainConfig, extract_features, train_model

    settings = load_settings()
    torch.set_num_threads(settings.torch_threads)
    seed = settings.seed if seed is None else seed
    epochs = settings.training.epochs if epochs is None else epochs
    data = load_mnist5k(seed=seed)
    old_classes = range(5)
    train = data.split("train").with_classes(old_classes)
    test = data.split("test").with_classes(old_classes)
    spec = BackboneSpec(
        arch=settings.training.old_arch, embedding_dim=settings.training.embedding_dim, num_classes=5
    )
    model = build_model(spec, seed=seed)
    console.print(f"training a '{spec.arch}' model on {len(train)} digits 0-4 for {epochs} epochs")
    config = TrainConfig(epochs=epochs, seed=seed, device=settings.torch_device)
    history = train_model(model, train, config)
    result = retrieval_metrics(
        extract_features(model, test.images, device=settings.torch_device), test.labels
    )
    table = Table(title=f"leave-one-out retrieval on {len(test)} held-out digits 0-4")
    for column in ("mAP", "top-1", "top-5", "chance mAP"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.map:.3f}", f"{result.top1:.3f}", f"{result.top5:.3f}", f"{1 / 5:.3f}")
    console.print(table)
    console.print(f"trained in {history.seconds:.1f} s ({history.images_per_second:.0f} img/s)")


if __name__ == "__main__":
    app()
