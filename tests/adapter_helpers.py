"""Small models and helpers shared by the adapter tests."""

import timm
import torch

from vtab_lily.backbones import create_backbone


def tiny_vit(depth: int = 4, classes: int = 10) -> torch.nn.Module:
    """The project's tiny test ViT; other depths as a bare timm model (no ``.family``)."""
    torch.manual_seed(0)
    if depth == 4:
        return create_backbone("vit-tiny-test", classes, img_size=None).eval()
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4,
                              embed_dim=48, depth=depth, num_heads=3, num_classes=classes)
    return model.eval()


def randomize_trainable(model: torch.nn.Module, seed: int = 1, std: float = 0.3) -> None:
    """B starts at zero; give every trainable tensor random values so the tests see real updates."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
