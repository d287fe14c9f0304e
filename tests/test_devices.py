"""Device-correctness on CPU-only machines: what can be checked without a GPU.

* ``devices.to_numpy`` / ``on_device_of`` behave (half precision, grads, bad inputs);
* a static scan: no notebook calls ``.numpy()`` (they use ``to_numpy``), and no package module
  calls ``.numpy()`` on a tensor that may sit on a GPU without ``.cpu()`` in the same expression
  (an allow-list names the few receivers that are CPU tensors by construction, and why);
* the public loaders take a ``device``; the pure tensor functions keep their input's device
  (checked with ``device="meta"``: a tensor there has a shape but no data, so any hidden
  CPU tensor, ``.cpu()`` or ``.numpy()`` on the way raises);
* LoRA adapters on a float16 Stable Diffusion UNet are trained in float32 (``sd.float32_adapters``).
"""
from __future__ import annotations

import ast
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpo_lite import devices, pixelwise, rewards
from pxpo_lite.devices import on_device_of, peak_memory_gb, reset_peak_memory, to_numpy

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


# -- to_numpy / on_device_of ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_to_numpy_gives_float32_for_low_precision_and_detaches(dtype):
    t = torch.linspace(-1, 1, 6, dtype=dtype, requires_grad=True).reshape(2, 3)
    a = to_numpy(t * 2)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_allclose(a, (t.detach().float() * 2).numpy(), atol=1e-2)


def test_to_numpy_keeps_integer_and_bool_dtypes_and_passes_arrays_and_lists():
    assert to_numpy(torch.tensor([1, 2])).dtype == np.int64
    assert to_numpy(torch.tensor([True])).dtype == np.bool_
    arr = np.ones(3)
    assert to_numpy(arr) is arr
    assert to_numpy([[1.0, 2.0]]).shape == (1, 2)


def test_to_numpy_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="meta"):
        to_numpy(torch.zeros(2, device=META))
    for bad in (None, "image", {"a": 1}):
        with pytest.raises(TypeError, match="x must be"):
            to_numpy(bad)


def test_on_device_of_moves_cpu_maps_to_the_log_probs_device():
    logp = torch.zeros(4, 4, device=META)  # stands in for a CUDA tensor: CPU × meta raises like CPU × CUDA
    cpu_map = torch.ones(4, 4)
    with pytest.raises(RuntimeError):
        cpu_map * logp
    assert (on_device_of(cpu_map, logp) * logp).device == META
    assert on_device_of(np.ones((4, 4), np.float32), logp).device == META
    with pytest.raises(TypeError, match="reference"):
        on_device_of(cpu_map, np.zeros(3))


def test_painted_advantages_meet_log_probs_on_their_device():
    """Notebook 06, section 3: the advantage map from a (NumPy) painting times the log-prob map."""
    from pxpo_lite.feedback import heatmap_to_advantages

    logp = torch.zeros(8, 8, device=META)
    A = heatmap_to_advantages(np.ones((64, 64), np.float32), (8, 8))[0]
    assert A.device.type == "cpu"
    assert (on_device_of(A, logp) * logp).device == META


def test_peak_memory_on_cpu_reports_what_it_measures():
    reset_peak_memory("cpu")  # a no-op on the CPU, must not raise
    gib, what = peak_memory_gb("cpu")
    assert gib is None or gib > 0
    assert isinstance(what, str) and what
    assert not hasattr(devices, "default_device")  # dead helper removed (issue 20): notebooks pick the device themselves


# -- static scan: .numpy() only on CPU tensors ------------------------------------------------
# (module, receiver expression) -> why the receiver is a CPU tensor by construction.
ALLOWED = {
    ("advantages.py", "r64"): "r64 = _as_float64(rewards), which returns a float64 CPU tensor",
    ("advantages.py", "tensors[key]"): "tensors read from a safetensors checkpoint are loaded on the CPU",
    ("feedback.py", "image"): "image = FeedbackSession.image, which returns .detach().cpu()",
    ("feedback.py", "self.image"): "FeedbackSession.image returns .detach().cpu()",
    ("feedback.py", "s.image"): "FeedbackSession.image returns .detach().cpu()",
    ("fidelity.py", "labels"): "labels = torch.cat([... .argmax(1).cpu() ...])",
}


def _numpy_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy"
                and not node.args and not node.keywords):
            yield node.lineno, ast.unparse(node.func.value)


def _package_modules():
    return sorted(p for p in (ROOT / "pxpo_lite").rglob("*.py"))


def _cpu_side(receiver: str) -> bool:
    return ".cpu()" in receiver or "to_numpy(" in receiver


def test_package_never_calls_numpy_on_a_tensor_that_may_be_on_a_gpu():
    bad = []
    for path in _package_modules():
        for line, receiver in _numpy_calls(ast.parse(path.read_text(encoding="utf-8"))):
            if not _cpu_side(receiver) and (path.name, receiver) not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {receiver}.numpy()")
    assert not bad, (
        "these hand a tensor that may be on a GPU to NumPy; use pxpo_lite.devices.to_numpy(t) (or .cpu() in the "
        "same expression), or add the receiver to ALLOWED with the reason it is a CPU tensor:\n" + "\n".join(bad)
    )


def test_the_scan_catches_a_gpu_tensor_handed_to_numpy():
    """The scan itself can fail: a planted ``x.numpy()`` is reported, ``x.cpu().numpy()`` is not."""
    calls = dict((r, line) for line, r in _numpy_calls(ast.parse("a = x.numpy()\nb = y.detach().cpu().numpy()\nc = np.asarray(z)")))
    assert set(calls) == {"x", "y.detach().cpu()"}
    assert not _cpu_side("x") and _cpu_side("y.detach().cpu()")


def test_allow_list_has_no_stale_entries():
    found = {(p.name, r) for p in _package_modules() for _, r in _numpy_calls(ast.parse(p.read_text(encoding="utf-8")))}
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"ALLOWED names receivers no module has any more (remove them): {stale}"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# (notebook, receiver) -> why it is a CPU tensor by construction (prefer to_numpy in new code).
NB_ALLOWED = {
    ("01b_rl_from_zero.ipynb", "v"): "v = torch.tensor(<list of Python floats>): made on the CPU, no model involved",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_hand_tensors_to_numpy_only_through_to_numpy(path):
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        src = "\n".join(ln[: len(ln) - len(ln.lstrip())] + "pass" if ln.lstrip().startswith(("%", "!")) else ln
                        for ln in src.splitlines())  # IPython magics -> pass, same indentation
        calls = [(n, r) for n, r in _numpy_calls(ast.parse(src)) if (path.name, r) not in NB_ALLOWED]
        assert not calls, (
            f"{path.name} cell {i}: {[r + '.numpy()' for _, r in calls]} fails on a GPU runtime; "
            "use pxpo_lite.devices.to_numpy(...) instead"
        )


# -- a device argument threaded through the public entry points -------------------------------
def test_public_loaders_take_a_device():
    from pxpo_lite import models, sd

    for fn in (models.load_tiny_pipeline, models.load_segmenter, sd.load_sd_pipeline):
        assert "device" in inspect.signature(fn).parameters, f"{fn.__module__}.{fn.__name__} has no device argument"


@pytest.mark.parametrize("name, fn, args, shape", [
    ("rewards.blueness", rewards.blueness, [(2, 3, 64, 64)], (2, 64, 64)),
    ("pixelwise.to_sample_grid (SD: 8× pooling)", lambda m: pixelwise.to_sample_grid(m, (8, 8)), [(2, 64, 64)], (2, 8, 8)),
    ("pixelwise.per_pixel", pixelwise.per_pixel, [(2, 5, 4, 8, 8)], (2, 5, 8, 8)),
    ("pixelwise.per_sample", pixelwise.per_sample, [(2, 5, 4, 8, 8)], (2, 5)),
    ("pixelwise.pxpo_surrogate", pixelwise.pxpo_surrogate, [(2, 5, 4, 8, 8), (2, 8, 8)], ()),
    ("pixelwise.ddpo_surrogate", pixelwise.ddpo_surrogate, [(2, 5, 4, 8, 8), (2,)], ()),
    ("ddim.gaussian_log_prob", lambda x, m: __import__("pxpo_lite.ddim").ddim.gaussian_log_prob(x, m, 0.5), [(2, 4, 8, 8)] * 2, (2, 4, 8, 8)),
])
def test_tensor_functions_stay_on_their_inputs_device(name, fn, args, shape):
    out = fn(*[torch.zeros(s, device=META) for s in args])
    assert out.device == META, f"{name} moved its result to {out.device}"
    assert tuple(out.shape) == shape


# -- a meta tensor among real inputs is named, not torch's raw error (issue 20) ----------------
def _m(*shape):
    return torch.zeros(*shape, device=META)


@pytest.fixture(scope="module")
def tiny():
    import copy

    from pxpo_lite import build_tiny_pipeline, sampling, world

    pipe = build_tiny_pipeline(seed=0)
    sch = copy.deepcopy(pipe.scheduler)
    sch.set_timesteps(10)
    traj = sampling.sample(pipe, world.all_prompts()[:2], num_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    return pipe, sch, traj


def _meta_cases(pipe, sch, traj):
    from dataclasses import replace

    from pxpo_lite import ddim, keep, sampling

    t0, x = int(sch.timesteps[0]), torch.zeros(1, 3, 4, 4)
    return [
        ("ddim.ddim_step: model_output", lambda: ddim.ddim_step(sch, _m(1, 3, 4, 4), t0, x, eta=1.0), r"model_output .*'meta'.* but sample is on cpu"),
        ("ddim.ddim_step_logprob: prev_sample", lambda: ddim.ddim_step_logprob(sch, x, t0, x, eta=1.0, prev_sample=_m(1, 3, 4, 4)),
         r"prev_sample .*'meta'.* but sample is on cpu"),
        ("ddim.ddim_step_logprob: variance_noise", lambda: ddim.ddim_step_logprob(sch, x, t0, x, eta=1.0, variance_noise=_m(1, 3, 4, 4)),
         r"variance_noise .*'meta'"),
        ("ddim: a meta timestep", lambda: ddim.ddim_step(sch, x, torch.tensor(t0, device=META), x, eta=1.0), r"timestep is a tensor on the 'meta'"),
        ("ddim.gaussian_log_prob: mean", lambda: ddim.gaussian_log_prob(x, _m(1, 3, 4, 4), 1.0), r"mean .*'meta'.* but x is on cpu"),
        ("pixelwise.pxpo_surrogate: reward_map", lambda: pixelwise.pxpo_surrogate(torch.zeros(2, 3, 4, 4), _m(2, 4, 4)),
         r"reward_map .*'meta'.* but log_probs is on cpu"),
        ("pixelwise.ddpo_surrogate: rewards", lambda: pixelwise.ddpo_surrogate(torch.zeros(2, 3, 4, 4), _m(2)), r"rewards .*'meta'"),
        ("pixelwise.check_reward_map", lambda: pixelwise.check_reward_map(_m(2, 8, 8), torch.rand(2, 3, 8, 8)), r"reward_map .*'meta'"),
        ("sampling.sample: latents", lambda: sampling.sample(pipe, traj.prompts, num_steps=2, latents=_m(2, 3, 32, 32), progress=False),
         r"latents is a tensor on the 'meta'"),
        ("sampling.step_log_prob: step_index", lambda: sampling.step_log_prob(pipe, traj, torch.tensor(0, device=META)), r"step_index .*'meta'"),
        ("sampling.step_log_prob: sample_idx", lambda: sampling.step_log_prob(pipe, traj, 0, torch.tensor([0], device=META)), r"sample_idx .*'meta'"),
        ("sampling.rescore: a meta trajectory", lambda: sampling.rescore(pipe, replace(traj, latents=traj.latents.to(META))), r"traj.latents .*'meta'"),
        ("keep.gaussian_kl: sigma", lambda: keep.gaussian_kl(x, x, torch.tensor(1.0, device=META)), r"sigma is a tensor on the 'meta'"),
        ("keep.keep_term: weights", lambda: keep.keep_term(x, x, 1.0, weights=_m(1, 4, 4)), r"weights is a tensor on the 'meta'"),
        ("keep.keep_weights_from_heatmap", lambda: keep.keep_weights_from_heatmap(_m(8, 8), (4, 4)), r"heatmap is a tensor on the 'meta'"),
        ("keep.keep_weights_from_fn", lambda: keep.keep_weights_from_fn(lambda im, p: _m(2, 8, 8), torch.rand(2, 3, 8, 8), None, (4, 4)),
         r"keep_weights function's map .*'meta'"),
        ("keep.step_means: a meta trajectory", lambda: keep.step_means(pipe, replace(traj, prompt_embeds=traj.prompt_embeds.to(META)), 0),
         r"traj.prompt_embeds .*'meta'"),
        ("rewards.colour_reward_map", lambda: rewards.colour_reward_map(_m(2, 3, 8, 8)), r"images is a tensor on the 'meta'"),
        ("rewards.hair_reward_map", lambda: rewards.hair_reward_map(_m(2, 3, 8, 8)), r"images is a tensor on the 'meta'"),
        ("rewards.check_reward", lambda: rewards.check_reward(_m(2), torch.rand(2, 3, 8, 8)), r"reward is a tensor on the 'meta'"),
    ]


def test_a_meta_tensor_input_is_named_with_the_fix(tiny):
    """Each of these failed deep inside torch ("Cannot copy out of meta tensor", "Tensor.item() cannot be
    called on meta tensors", "Tensor on device cpu is not on the expected device meta") naming no argument."""
    failed = []
    for name, call, words in _meta_cases(*tiny):
        try:
            call()
            failed.append(f"{name}: nothing raised")
        except ValueError as e:
            if not __import__("re").search(words, str(e)) or "no values" not in str(e):
                failed.append(f"{name}: {e}")
        except Exception as e:  # noqa: BLE001 - torch's raw error is the failure this test reports
            failed.append(f"{name}: {type(e).__name__}: {e}")
    assert not failed, "\n".join(failed)


def test_all_meta_inputs_still_trace_shapes_through_the_ddim_step(tiny):
    """A pure tensor function keeps its input's device: with every input on 'meta' nothing is refused."""
    from pxpo_lite import ddim

    _, sch, _ = tiny
    prev, lp = ddim.ddim_step_logprob(sch, _m(1, 3, 4, 4), int(sch.timesteps[0]), _m(1, 3, 4, 4), eta=1.0)
    assert prev.device == META and lp.device == META and lp.shape == (1, 3, 4, 4)
    assert ddim.ddim_step(sch, _m(1, 3, 4, 4), int(sch.timesteps[0]), _m(1, 3, 4, 4), eta=1.0).device == META
    assert pixelwise.pxpo_surrogate(_m(2, 3, 4, 4), torch.zeros(2, 4, 4)).device == META  # a CPU map moves to the log-probs


# -- LoRA on a float16 Stable Diffusion UNet --------------------------------------------------
def test_float16_sd_unet_trains_float32_adapters():
    """peft makes adapters in the wrapped layer's dtype (float16 on SD in half precision): AdamW on
    float16 weights loses small updates (ε = 1e-8 is 0 in float16). ``lora.add_lora`` keeps them in
    float32 (``sd.float32_adapters`` does the same for adapters added another way), and the float16
    model still samples and back-propagates into the adapters."""
    from pxpo_lite import lora, sample, step_log_prob
    from pxpo_lite.sd import build_tiny_sd_pipeline, float32_adapters

    pipe = build_tiny_sd_pipeline(0)
    pipe.unet.to(torch.float16)
    lora.add_lora(pipe.unet, rank=2)
    params = lora.lora_parameters(pipe.unet)
    assert {p.dtype for p in params} == {torch.float32}  # add_lora upcast peft's float16 adapters
    assert float32_adapters(params) == 0  # nothing left to do: idempotent
    half = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))]  # adapters added by other means
    ids = [id(p) for p in half]
    assert float32_adapters(half) == 1
    assert half[0].dtype == torch.float32 and [id(p) for p in half] == ids  # same objects
    traj = sample(pipe, ["a portrait with long red hair and a green shirt on a navy background"], num_steps=2,
                  generator=torch.Generator().manual_seed(0), progress=False)
    step_log_prob(pipe, traj, 0).float().mean().backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with pytest.raises(TypeError, match="params"):
        float32_adapters([torch.zeros(2)])


def test_cpu_threads_reads_omp_num_threads(monkeypatch):
    from pxpo_lite.devices import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1  # make test's workers (and a busy machine) ask for one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    for unset in ("", "0", "4,2", "x"):  # not a whole number > 0: the notebooks' default
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert cpu_threads() == max(1, min(2, os.cpu_count() or 1))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(default=1) == 1
