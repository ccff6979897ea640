"""diffusers UNet2DModel -> ronan_jax.models.unet2d, and the "unet-ddim" generator.

Tiny random-weight diffusers models are built and saved locally (no downloads); every
parameter is perturbed so that a swapped scale/bias or a wrong transpose cannot hide behind
default initialisations.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from torch_helpers import CM_LAYOUT, TINY_UNET  # noqa: E402

from converters.diffusers_unet import convert_unet, unet_key_map  # noqa: E402
from converters.errors import (  # noqa: E402
    ArchitectureError,
    KeyMismatchError,
    NonFiniteTensorError,
)
from ronan_jax.models import diffusion, unet2d  # noqa: E402
from ronan_jax.models.checkpoint import load_generator, save_generator  # noqa: E402

TINY = TINY_UNET
VARIANTS = {
    "default": {},
    "cm": CM_LAYOUT,
    # DDPM-CIFAR-like knobs, three levels, two layers per block, one head per attention.
    "ddpm": dict(
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        mid_block_scale_factor=1.41421,
        norm_eps=1e-6,
        act_fn="mish",
    ),
    "fourier": dict(time_embedding_type="fourier", add_attention=False, center_input_sample=True),
}
TIMESTEPS = {"fourier": [0.01, 0.5, 10.0, 80.0]}
DEFAULT_T = [0.0, 10.0, 500.0, 999.0]


def build_unet(seed: int = 0, **overrides) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            spread = p.std() if p.numel() > 1 and p.std() > 0 else torch.tensor(0.1)
            p.add_(0.3 * spread * torch.randn_like(p))
    return model


def nhwc(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (torch model, folder) for every variant, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("unets")
    out = {}
    for name, kw in VARIANTS.items():
        model = build_unet(**kw)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


def _labels(model, n=4):
    return torch.arange(n) % model.config.num_class_embeds if model.config.num_class_embeds else None


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unet_forward_parity(saved, variant):
    model, folder = saved[variant]
    conv = convert_unet(folder, num_inference_steps=2, class_label=0 if variant == "cm" else None)
    cfg = unet2d.UNet2DConfig.from_dict(conv.config["unet"])
    gen_x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = _labels(model)
    jlabels = None if labels is None else jnp.asarray(labels.numpy(), jnp.int32)
    apply = jax.jit(lambda v, x, t, c: unet2d.UNet2D(cfg).apply(v, x, t, c))
    ts = TIMESTEPS.get(variant, DEFAULT_T)
    # A different timestep per image, then one shared (0-d integer, as DDIM passes it).
    cases = [(torch.tensor(ts), jnp.asarray(ts, jnp.float32))]
    if variant != "fourier":
        cases.append((torch.tensor(250), jnp.full((4,), 250.0, jnp.float32)))
    for t_torch, t_jax in cases:
        with torch.no_grad():
            ref = model(gen_x, t_torch, class_labels=labels).sample
        out = apply(conv.variables, nhwc(gen_x), t_jax, jlabels)
        diff = float(np.abs(np.asarray(out) - nhwc(ref)).max())
        assert diff <= 1e-4, (variant, diff)
        assert float(jnp.abs(nhwc(ref)).max()) > 0.1  # not a trivially small output


@pytest.mark.parametrize("variant", ["default", "cm"])
def test_unet_input_gradient_parity(saved, variant):
    model, folder = saved[variant]
    conv = convert_unet(folder, class_label=1 if variant == "cm" else None)
    cfg = unet2d.UNet2DConfig.from_dict(conv.config["unet"])
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([3.0, 40.0, 400.0, 900.0])
    labels = _labels(model)

    xt = x.clone().requires_grad_(True)
    loss = ((model(xt, t, class_labels=labels).sample - target) ** 2).mean()
    loss.backward()
    ref = nhwc(xt.grad)

    def mse(xj):
        jl = None if labels is None else jnp.asarray(labels.numpy(), jnp.int32)
        out = unet2d.UNet2D(cfg).apply(conv.variables, xj, jnp.asarray(t.numpy()), jl)
        return jnp.mean((out - nhwc(target)) ** 2)

    grad = jax.jit(jax.grad(mse))(nhwc(x))
    rel = float(jnp.linalg.norm(grad - ref) / jnp.linalg.norm(ref))
    assert rel <= 1e-3, rel
    assert float(jnp.abs(grad - ref).max() / jnp.abs(ref).max()) <= 1e-3


@pytest.fixture(scope="module")
def ddim_pipeline(saved, tmp_path_factory):
    """A DDIMPipeline folder (default variant) and its scheduler."""
    model, _ = saved["default"]
    scheduler = diffusers.DDIMScheduler()
    folder = tmp_path_factory.mktemp("pipe") / "ddim"
    diffusers.DDIMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
    return model, folder


def _converted_generator(folder, tmp_path, **options):
    conv = convert_unet(folder, **options)
    save_generator(tmp_path / "ckpt", conv.architecture, conv.config, conv.variables, {"name": "tiny"})
    return load_generator(tmp_path / "ckpt")


def _diffusers_ddim(model, scheduler, x_t, k, labels=None):
    scheduler.set_timesteps(k)
    x = x_t
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(x, t, class_labels=labels).sample
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_ddim_parity_with_diffusers_loop(ddim_pipeline, tmp_path, k):
    model, folder = ddim_pipeline
    gen = _converted_generator(folder, tmp_path, num_inference_steps=k)
    assert gen.input_shape == (16, 16, 3) and gen.output_shape == (16, 16, 3)
    x_t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(10 + k))
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    ref = _diffusers_ddim(model, scheduler, x_t, k)
    raw = jax.jit(gen.apply_fn.sample)(gen.params, nhwc(x_t), None)
    assert float(np.abs(np.asarray(raw) - nhwc(ref)).max()) <= 1e-4
    image = diffusion.to_unit_interval(raw)  # what gen(x_t) returns (one compile, not two)
    ref_image = (ref / 2 + 0.5).clamp(0, 1)
    assert float(np.abs(np.asarray(image) - nhwc(ref_image)).max()) <= 1e-4


SCHEDULERS = {
    "v-scaled-offset": dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
    ),
    "sample-cosine-trailing": dict(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        timestep_spacing="trailing",
        clip_sample_range=0.5,
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_ddim_parity_scheduler_options(saved, name):
    model, folder = saved["cm"]
    scheduler = diffusers.DDIMScheduler(**SCHEDULERS[name])
    conv = convert_unet(folder, scheduler=dict(scheduler.config), num_inference_steps=3, class_label=4)
    gen = diffusion.make_ddim_generator(conv.config, conv.variables)
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    ref = _diffusers_ddim(model, scheduler, x_t, 3, labels=torch.tensor([4, 4]))
    cond = gen.batched_condition(2)
    raw = jax.jit(gen.apply_fn.sample)(gen.params, nhwc(x_t), cond)
    assert float(np.abs(np.asarray(raw) - nhwc(ref)).max()) <= 1e-4


def test_pipeline_folder_with_ddpm_scheduler(saved, tmp_path):
    model, _ = saved["default"]
    folder = tmp_path / "ddpm"
    sched = diffusers.DDPMScheduler(beta_end=0.015, variance_type="fixed_small")
    diffusers.DDPMPipeline(unet=model, scheduler=sched).save_pretrained(folder)
    conv = convert_unet(folder, num_inference_steps=4)
    assert conv.architecture == "unet-ddim"
    assert conv.config["scheduler"]["beta_end"] == pytest.approx(0.015)
    assert conv.summary["scheduler_class"] == "DDPMScheduler"
    assert "variance_type" in conv.summary["ignored_scheduler_keys"]
    assert any(p.endswith("scheduler_config.json") for p in conv.sources)
    json.dumps(conv.config)  # the card config is JSON-able


def _rewrite(folder, dst, edit):
    sd = safetensors_torch.load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    dst.mkdir()
    (dst / "config.json").write_text((folder / "config.json").read_text())
    safetensors_torch.save_file(edit(dict(sd)), str(dst / "diffusion_pytorch_model.safetensors"))
    return dst


def test_key_mismatch_lists_missing_and_unused(saved, tmp_path):
    _, folder = saved["default"]

    def edit(sd):
        sd.pop("down_blocks.1.attentions.0.to_k.bias")
        sd["mid_block.extra.weight"] = torch.zeros(3)
        return sd

    bad = _rewrite(folder, tmp_path / "bad", edit)
    with pytest.raises(KeyMismatchError) as err:
        convert_unet(bad)
    assert "down_blocks.1.attentions.0.to_k.bias" in str(err.value)
    assert "mid_block.extra.weight" in str(err.value)


def test_wrong_shape_is_refused(saved, tmp_path):
    _, folder = saved["default"]

    def edit(sd):
        sd["conv_out.bias"] = torch.zeros(4)
        return sd

    with pytest.raises(ArchitectureError, match="conv_out"):
        convert_unet(_rewrite(folder, tmp_path / "bad", edit))


def test_non_finite_tensor_is_refused_naming_it(saved, tmp_path):
    _, folder = saved["default"]
    key = "down_blocks.1.attentions.0.to_v.weight"

    def edit(sd):
        sd[key] = sd[key].clone()
        sd[key][0, 0] = float("-inf")
        return sd

    bad = _rewrite(folder, tmp_path / "bad", edit)
    with pytest.raises(NonFiniteTensorError) as err:
        convert_unet(bad)
    weights = bad / "diffusion_pytorch_model.safetensors"
    assert str(err.value) == f"{weights}: tensor {key} holds NaN or infinite values"
    assert isinstance(err.value, ArchitectureError)  # the type this converter raised before


def test_legacy_attention_names(saved, tmp_path):
    _, folder = saved["default"]
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def edit(sd):
        out = {}
        for k, v in sd.items():
            for new, old in legacy.items():
                k = k.replace(f".{new}.", f".{old}.")
            out[k] = v
        return out

    old = convert_unet(_rewrite(folder, tmp_path / "old", edit))
    new = convert_unet(folder)
    jax.tree_util.tree_map(np.testing.assert_array_equal, old.variables, new.variables)


def test_key_map_covers_the_state_dict_exactly(saved):
    for model, _ in saved.values():
        cfg = unet2d.UNet2DConfig.from_dict(dict(model.config))
        keys = [r.torch_key for r in unet_key_map(cfg)]
        assert len(keys) == len(set(keys))
        assert sorted(keys) == sorted(model.state_dict())


def test_unsupported_block_type_is_refused(tmp_path):
    model = diffusers.UNet2DModel(
        **{**TINY, "down_block_types": ("DownBlock2D", "SkipDownBlock2D"),
           "up_block_types": ("SkipUpBlock2D", "UpBlock2D")}
    )
    model.save_pretrained(tmp_path / "skip")
    with pytest.raises(ArchitectureError, match="SkipDownBlock2D"):
        convert_unet(tmp_path / "skip")


def test_class_conditional_unet_without_a_label_takes_each_images_class(saved):
    """Converted without a fixed class, a class-conditional UNet is a conditional model:
    image i drawn with class k_i equals diffusers' loop with class_labels k, and without
    classes it cannot generate."""
    model, folder = saved["cm"]
    conv = convert_unet(folder, num_inference_steps=2)
    gen = diffusion.make_ddim_generator(conv.config, conv.variables)
    assert gen.num_classes == 10 and gen.condition is None
    labels = np.array([3, 0, 9, 3])
    x_t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    scheduler = diffusers.DDIMScheduler()  # what convert_unet assumes for a bare UNet folder
    ref = _diffusers_ddim(model, scheduler, x_t, 2, labels=torch.from_numpy(labels))
    raw = jax.jit(gen.apply_fn.sample)(gen.params, nhwc(x_t), gen.conditions_for_classes(labels))
    assert float(np.abs(np.asarray(raw) - nhwc(ref)).max()) <= 1e-4
    fixed = diffusion.make_ddim_generator(conv.config, conv.variables, class_label=3)
    assert fixed.num_classes == 0  # its class is part of the model
    with pytest.raises(ValueError, match="class_labels are required"):
        gen(nhwc(x_t))
    with pytest.raises(ValueError, match="outside"):
        convert_unet(folder, class_label=10)


@pytest.mark.slow  # ~30 s on 2 cores, nearly all compiling a 150-step UNet scan
def test_inversion_smoke(saved):
    """Adam (lr 0.1, 150 steps) on x_T of a K=2 DDIM generator: an image it generated is
    matched >= 100x better than a random smooth image, and the optimisation does the work.

    A random-weight UNet is not a trained model: with epsilon prediction its x0 estimates
    ``(x_T - sqrt(1 - a) eps) / sqrt(a)`` saturate the clamps and the gradients vanish, and
    even unclamped it is a badly conditioned map. So this smoke test uses x0 ("sample")
    prediction and shrinks ``conv_out`` 4x: the outputs concentrate around a fixed image, as
    a trained model's concentrate on its data, which is the premise RONAN relies on.
    """
    _, folder = saved["default"]
    conv = convert_unet(folder, scheduler={"prediction_type": "sample"}, num_inference_steps=2)
    variables = jax.tree_util.tree_map(np.asarray, conv.variables)
    variables["params"]["conv_out"]["kernel"] = variables["params"]["conv_out"]["kernel"] * 0.25
    gen = diffusion.make_ddim_generator(conv.config, variables)
    apply = jax.jit(gen.apply_fn)
    target = apply(gen.params, gen.sample_inputs(jax.random.key(1), 1), None)
    target = jnp.round(target * 255.0) / 255.0  # as saved to an 8-bit PNG
    coarse = jax.random.uniform(jax.random.key(2), (1, 4, 4, 3), jnp.float32)
    smooth = jax.image.resize(coarse, (1, 16, 16, 3), "linear")
    images = jnp.concatenate([target, smooth])
    opt = optax.adam(0.1)

    def per_image(z):
        return jnp.mean((gen.apply_fn(gen.params, z, None) - images) ** 2, axis=(1, 2, 3))

    @jax.jit
    def run(z):
        def step(carry, _):
            z, state, best = carry
            (_, losses), grads = jax.value_and_grad(
                lambda z: (per_image(z).sum(), per_image(z)), has_aux=True
            )(z)
            with jax.numpy_dtype_promotion("standard"):  # optax's int32 step count
                updates, state = opt.update(grads, state)
            return (optax.apply_updates(z, updates), state, jnp.minimum(best, losses)), None

        init = (z, opt.init(z), jnp.full((2,), jnp.inf, jnp.float32))
        (z, _, best), _ = jax.lax.scan(step, init, None, length=150)
        return per_image(init[0]), jnp.minimum(best, per_image(z))

    start, best = run(gen.sample_inputs(jax.random.key(3), 2))
    assert float(best[0]) * 100 <= float(best[1]), (start, best)
    assert float(best[0]) * 10 <= float(start[0]), (start, best)


def test_generator_registry_round_trip(ddim_pipeline, tmp_path):
    _, folder = ddim_pipeline
    gen = _converted_generator(folder, tmp_path, num_inference_steps=2)
    assert gen.info["architecture"] == "unet-ddim"
    cfg = diffusion.DDIMConfig.from_dict(gen.info["config"])
    assert cfg.num_inference_steps == 2 and cfg.remat
    assert dataclasses.asdict(cfg.unet)["block_out_channels"] == (16, 32)
    big = gen.for_shape((32, 32, 3))
    assert big.input_shape == (32, 32, 3)
    assert big(jnp.zeros((1, 32, 32, 3))).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="multiples"):
        gen.for_shape((17, 17, 3))


def test_api_dispatches_unet_pipelines(ddim_pipeline, tmp_path):
    from converters.api import convert, detect_format

    _, folder = ddim_pipeline
    assert detect_format(folder) == "diffusers-unet"
    card = convert(folder, tmp_path / "out", num_inference_steps=3)
    assert card["architecture"] == "unet-ddim"
    assert card["summary"]["scheduler_class"] == "DDIMScheduler"
    assert card["source"]["sha256"] == next(iter(card["source"]["files"].values()))
    assert next(iter(card["source"]["files"])).endswith("diffusion_pytorch_model.safetensors")
    gen = load_generator(tmp_path / "out")
    assert gen.input_shape == (16, 16, 3) and gen.info["config"]["num_inference_steps"] == 3

