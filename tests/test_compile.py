"""``train_setup.compile_model``: the whole backbone with its adapter compiles into one graph for
training and one for evaluation, every block inside them, no graph break, no recompile-limit hit,
a second model of the same process compiles as well, and the numbers equal the uncompiled
model's. Dynamo runs with its ``eager`` / ``aot_eager`` backends here (no C compiler, fast): they
trace exactly what inductor would receive. A backend that records each graph tells which
modules a graph holds (``nn_module_stack``), so a block left out of the graphs fails the test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapter_helpers import randomize_trainable
from vtab_lily import train_setup as setup
from vtab_lily.adapters import apply_adapter
from vtab_lily.backbones import create_backbone
from vtab_lily.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def recording(graphs: list, backend: str = "eager"):
    """A Dynamo backend that keeps each graph it is given, then runs ``backend`` on it."""
    def compile_graph(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)

    return compile_graph


def blocks_in(gm: torch.fx.GraphModule, attr: str) -> set[int]:
    """The block indices (``blocks.3``, ``layers.3``) whose code is inside the graph."""
    found = set()
    for node in gm.graph.nodes:
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            match = re.search(rf"\b{attr}\W*(\d+)", path)
            if match:
                found.add(int(match.group(1)))
    return found


def model_for(backbone: str, adapter: str, classes: int = 5, img_size: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    # drop path > 0: the blocks differ (each its own rate), which defeated per-block compilation
    model = create_backbone(backbone, classes, img_size=img_size, drop_path=0.1)
    model = apply_adapter(model, adapter)
    randomize_trainable(model, std=0.05)
    return model


def train_steps(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Two seeded training steps: losses and gradients."""
    out = []
    model.train()
    for step in range(2):
        torch.manual_seed(step)  # the same drop-path draws compiled or not
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), torch.arange(len(images)) % 5)
        loss.backward()
        out += [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out


@torch.inference_mode()
def evaluation(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Logits at two batch sizes (an evaluation's smaller last batch), as ``train.evaluate`` runs them."""
    model.eval()
    out = []
    for batch in (images, images[:3]):
        torch._dynamo.maybe_mark_dynamic(batch, 0)
        out.append(model(batch))
    return out


def check_compiled(backbone: str, adapter: str, backend: str = "eager", img_size: int = 16) -> None:
    images = torch.randn(8, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    reference = model_for(backbone, adapter, img_size=img_size)
    want = train_steps(reference, images) + evaluation(reference, images)

    graphs: list = []
    model = model_for(backbone, adapter, img_size=img_size)
    names = list(model.state_dict())
    setup.compile_model(model, backend=recording(graphs, backend))
    got = train_steps(model, images)
    assert len(graphs) == 1  # training: one graph
    got += evaluation(model, images)
    assert len(graphs) == 2  # evaluation: one more, for both batch sizes

    counts = setup.compile_counters()
    assert counts["graph_breaks"] == 0 and counts["recompile_limit_hits"] == 0 and counts["gave_up"] == 0, counts
    assert counts["frames"] == 2 and counts["graphs"] == 2, counts
    attr = "layers" if backbone.startswith("vim") else "blocks"
    for gm in graphs:
        assert blocks_in(gm, attr) == set(range(model.depth))
    assert list(model.state_dict()) == names  # checkpoints and snapshots keep their keys
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


# Lily under aot_eager: it also traces the backward and functionalises Lily's in-place router
# statistics, as inductor's front end does.
@pytest.mark.parametrize("adapter, backend", [("lily", "aot_eager"), ("lora", "eager"), ("adaptformer", "eager")])
def test_vit_with_adapter_compiles_every_block_in_training_and_evaluation(adapter, backend):
    check_compiled("vit-tiny-test", adapter, backend)


def test_vim_lily_on_the_pytorch_scan_compiles_every_layer():
    check_compiled("vim-tiny-test", "lily", img_size=8)  # 5 tokens: the scan's time loop stays short


def test_a_second_model_in_one_process_compiles_as_well():
    """--batch, sweeps and the device check build several models in one process: each compiles
    afresh (Dynamo is reset) instead of inheriting the previous one's recompile budget."""
    images = torch.randn(4, 3, 16, 16)
    for classes in (5, 3):
        graphs: list = []
        torch.manual_seed(0)
        model = apply_adapter(create_backbone("vit-tiny-test", classes, img_size=16, drop_path=0.1), "lora")
        setup.compile_model(model, backend=recording(graphs))
        model.train()
        model(images).sum().backward()
        model.eval()
        with torch.inference_mode():
            model(images)
        counts = setup.compile_counters()
        assert counts["frames"] == 2 and counts["recompile_limit_hits"] == 0 and counts["graph_breaks"] == 0
        assert len(graphs) == 2 and all(blocks_in(gm, "blocks") == set(range(4)) for gm in graphs)


def test_compiling_twice_compiles_the_original_forward_once():
    graphs: list = []
    model = model_for("vit-tiny-test", "lora")
    setup.compile_model(model, backend=recording([]))
    setup.compile_model(model, backend=recording(graphs))
    model(torch.randn(2, 3, 16, 16))
    assert len(graphs) == 1 and setup.compile_counters()["frames"] == 1


def test_cuda_graph_modes_fall_back_on_a_cpu_and_unknown_names_are_refused(monkeypatch):
    model = setup.compile_model(model_for("vit-tiny-test", "lora"), mode="reduce-overhead", backend="eager")
    assert model.compiled_as["mode"] == "default"
    with pytest.raises(UserError, match="compile mode"):
        setup.compile_model(model, mode="fastest", backend="eager")
    monkeypatch.setenv(setup.COMPILE_BACKEND_ENV, "no-such-backend")
    with pytest.raises(UserError, match="VTAB_LILY_COMPILE_BACKEND"):
        setup.compile_model(model)
    monkeypatch.setenv(setup.COMPILE_BACKEND_ENV, "aot_eager")
    assert setup.compile_model(model).compiled_as["backend"] == "aot_eager"
    monkeypatch.delenv(setup.COMPILE_BACKEND_ENV)
    assert setup.compile_backend() == "inductor"


@pytest.mark.parametrize("value, ok", [(True, True), (False, True), ("reduce-overhead", True),
                                       ("max-autotune", True), ("default", False), ("fast", False), (1, False)])
def test_the_compile_option_takes_true_false_or_a_mode(value, ok):
    if ok:
        assert setup.LoopOptions.from_cfg({"compile": value}).compile == value
    else:
        with pytest.raises(UserError, match="compile"):
            setup.LoopOptions.from_cfg({"compile": value})


# The Triton scan under torch.compile: a child process with Triton's interpreter (it must be set
# before triton is imported), the Vim forward forced onto the Triton path.
TRITON_CHILD = r"""
import json, torch
from vtab_lily import train_setup as setup
from vtab_lily.backbones import scan_triton
from vtab_lily.backbones.vim import VimConfig, VisionMamba
scan_triton.BLOCK_D, scan_triton.CHUNK = 4, 4
graphs = []
def backend(gm, inputs):
    graphs.append(gm)
    return gm.forward
torch.manual_seed(0)
model = VisionMamba(VimConfig(img_size=8, patch_size=4, embed_dim=4, depth=2, d_state=2), 3, drop_path=0.1)
setup.compile_model(model, backend=backend)
model(torch.randn(2, 3, 8, 8)).sum().backward()
ops = sorted({str(n.target) for gm in graphs for n in gm.graph.nodes if "triton_scan" in str(n.target)})
# The ops' fake (meta) functions, autograd registration and AOT tracing: what inductor relies on.
g = torch.Generator().manual_seed(0)
def leaf(*shape):
    return torch.randn(*shape, generator=g).requires_grad_()
A = (-torch.rand(8, 3, generator=g) - 0.1).requires_grad_()
args = (leaf(2, 8, 6), leaf(2, 8, 6), A, leaf(2, 2, 3, 6), leaf(2, 2, 3, 6), leaf(8), leaf(2, 8, 6), leaf(8), True)
checks = torch.library.opcheck(scan_triton._scan_fwd, args)
checks.update({"no options " + k: v for k, v in torch.library.opcheck(
    scan_triton._scan_fwd, args[:5] + (None, None, None, False)).items()})
print(json.dumps({"counts": setup.compile_counters(), "ops": ops, "checks": checks,
                  "grads": all(p.grad is not None for p in model.parameters())}))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("triton") is None, reason="triton is not installed")
def test_vim_on_the_triton_scan_compiles_without_graph_breaks():
    env = {**os.environ, "TRITON_INTERPRET": "1", "VTAB_LILY_SCAN": "triton", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHILD], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["counts"]["graph_breaks"] == 0 and out["counts"]["frames"] == 1, out
    assert out["ops"] == ["vtab_lily.triton_scan_fwd.default"], out  # the scan is in the graph, as one op
    assert out["grads"]  # (values: tests/test_scan_triton.py)
    assert set(out["checks"].values()) == {"SUCCESS"}, out["checks"]


def test_vim_with_a_foreign_kernel_compiles_around_its_graph_breaks(monkeypatch):
    """mamba-ssm's scan is a C++ extension, a graph break at each call; the code after it then
    compiles once per layer, which must stay under the recompile limit (a stand-in here: the
    PyTorch scan behind torch.compiler.disable, as scan.py wraps the real kernel)."""
    from vtab_lily.backbones import vim
    from vtab_lily.backbones.vim import VimConfig, VisionMamba

    monkeypatch.setattr(vim, "selective_scan", torch.compiler.disable(vim.selective_scan))
    monkeypatch.setattr(setup, "scan_paths", lambda device: {"scan": "mamba_ssm", "conv": "pytorch"})
    torch.manual_seed(0)
    model = VisionMamba(VimConfig(img_size=8, patch_size=4, embed_dim=4, depth=12, d_state=2), 3, drop_path=0.1)
    setup.compile_model(model, backend="eager")
    images = torch.randn(2, 3, 8, 8)
    model.train()
    model(images).sum().backward()
    evaluation(model, images)
    counts = setup.compile_counters()
    assert counts["recompile_limit_hits"] == 0 and counts["graph_breaks"] > 0, counts
