"""The Vim family: Vim-T, Vim-S and Vim-B of the official release, their aliases, their sizes on the
meta device (the Vim paper's 7M, 26M, 98M), Vim-B's key layout and its weights source."""

from __future__ import annotations

import pytest
import torch

from vtab_lily import backbones
from vtab_lily.backbones import create_backbone
from vtab_lily.fetch.sources import weights_source


@pytest.mark.parametrize("name, width, published", [("vim-t", 192, 7), ("vim-s", 384, 26), ("vim-b", 768, 98)])
def test_sizes_on_the_meta_device_are_the_papers(name, width, published):
    """The paper's counts include the 1000-class head; they are printed rounded to 1M, so the
    tolerance is half of that (Vim-T 7.15M, Vim-S 25.80M, Vim-B 97.60M)."""
    spec = backbones.get_spec(name)
    assert (spec.params_m, spec.params_classes) == (published, 1000)
    with torch.device("meta"):
        model = create_backbone(name, spec.params_classes)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total / 1e6 - published) < 0.5, total
    assert (model.embed_dim, model.depth, model.layers[0].mixer.d_state) == (width, 24, 16)


def test_vim_b_has_vim_s_layout_at_twice_the_width():
    with torch.device("meta"):
        small, base = (create_backbone(name, 10).state_dict() for name in ("vim-s", "vim-b"))
    assert list(small) == list(base) and len(base) == 415  # the official file's keys, head included
    # Every width doubles: d_model 384 -> 768, d_inner 768 -> 1536, in_proj rows 1536 -> 3072, dt_rank
    # ceil(d / 16) 24 -> 48, x_proj rows (dt_rank + 2 * 16) 56 -> 80; d_state, the conv, 197 tokens stay.
    doubled = {384: 768, 768: 1536, 1536: 3072, 24: 48, 56: 80}
    for key in small:
        assert tuple(base[key].shape) == tuple(doubled.get(d, d) for d in small[key].shape), key


def test_aliases_name_the_sizes_and_the_demo_config():
    for alias, full in (("vim", "vim-s"), ("vim-t", "vim-t"), ("vim-b", "vim-b")):
        assert backbones.resolve_backbone_name(alias) == full
        assert backbones.resolve_backbone_name(alias, demo=True) == "vim-tiny-test"
        assert backbones.backbone_family(alias) == "vim"


def test_vim_b_weights_come_from_the_official_hub_repo():
    source = weights_source("vim-b")
    assert (source.repo_id, source.file) == ("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth")
    assert source.where().endswith("hustvl/Vim-base-midclstok/resolve/main/vim_b_midclstok_81p9acc.pth")


def test_dry_run_with_vim_b_uses_the_vim_recipe(dry_run_json):
    printed = dry_run_json("--backbone", "vim-b", "--adapter", "lily", "--task", "dtd")
    config = printed["config"]
    assert (config["backbone"], config["lr"], config["drop_path"]) == ("vim-b", 1.25e-3, 0.05)
    assert config["pretrained"] == "vim_b_midclstok_81p9acc.pth" and printed["deviations"] == []
    assert printed["params"]["backbone"] == 96_829_440
