"""DDIM schedules and the consistency-model generator against diffusers' schedulers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from torch_helpers import CM_LAYOUT, TINY_UNET  # noqa: E402

from converters.consistency import convert_consistency  # noqa: E402
from converters.errors import ArchitectureError  # noqa: E402
from ronan_jax.models import diffusion  # noqa: E402
from ronan_jax.models.checkpoint import load_generator, save_generator  # noqa: E402

# ----------------------------------------------------------------------------- DDIM schedule

DDIM_CONFIGS = [
    {},
    dict(steps_offset=1, set_alpha_to_one=False),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1),
    dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing"),
    dict(timestep_spacing="linspace", num_train_timesteps=500),
    dict(trained_betas=np.linspace(1e-4, 0.03, 200).tolist(), num_train_timesteps=200),
]


@pytest.mark.parametrize("kw", DDIM_CONFIGS)
@pytest.mark.parametrize("k", [1, 2, 3, 7, 50])
def test_ddim_schedule_matches_diffusers(kw, k):
    sched = diffusers.DDIMScheduler(**kw)
    sched.set_timesteps(k)
    cfg, ignored = diffusion.DDIMSchedulerConfig.from_dict(dict(sched.config))
    assert ignored == ["dynamic_thresholding_ratio", "sample_max_value"]
    ours = diffusion.ddim_schedule(cfg, k)
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy())
    ac = sched.alphas_cumprod.numpy()
    np.testing.assert_allclose(diffusion.alphas_cumprod(cfg), ac, rtol=2e-6, atol=1e-7)
    n = sched.config.num_train_timesteps
    for t, a_t, a_prev in zip(ours.timesteps, ours.alpha_prod_t, ours.alpha_prod_t_prev, strict=True):
        prev = t - n // k
        want_prev = ac[prev] if prev >= 0 else float(sched.final_alpha_cumprod)
        np.testing.assert_allclose([a_t, a_prev], [ac[t], want_prev], rtol=2e-6, atol=1e-7)


def test_ddim_step_matches_diffusers():
    rng = np.random.default_rng(0)
    sample, out = rng.standard_normal((2, 2, 3, 4, 4)).astype(np.float32)
    for kw in [{}, dict(prediction_type="v_prediction"), dict(prediction_type="sample", clip_sample_range=0.3)]:
        sched = diffusers.DDIMScheduler(**kw)
        sched.set_timesteps(4)
        cfg, _ = diffusion.DDIMSchedulerConfig.from_dict(dict(sched.config))
        s = diffusion.ddim_schedule(cfg, 4)
        for i, t in enumerate(sched.timesteps):
            ref = sched.step(torch.from_numpy(out), t, torch.from_numpy(sample), eta=0.0).prev_sample
            got = diffusion.ddim_step(
                cfg, jnp.asarray(out), jnp.asarray(sample), s.alpha_prod_t[i], s.alpha_prod_t_prev[i]
            )
            np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_unsupported_ddim_options_are_refused():
    with pytest.raises(ValueError, match="thresholding"):
        diffusion.DDIMSchedulerConfig.from_dict({"thresholding": True})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        diffusion.DDIMSchedulerConfig.from_dict({"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="unknown"):
        diffusion.DDIMSchedulerConfig.from_dict({"bogus": 1})


# ----------------------------------------------------------------------------- CM schedule


@pytest.mark.parametrize(
    "kw", [dict(num_inference_steps=1), dict(num_inference_steps=3), dict(timesteps=[22, 0])]
)
def test_cm_schedule_matches_diffusers(kw):
    sched = diffusers.CMStochasticIterativeScheduler()
    sched.set_timesteps(**kw)
    ours = diffusion.cm_schedule(diffusion.CMSchedulerConfig.from_dict(dict(sched.config)), **kw)
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())
    np.testing.assert_allclose(ours.timesteps, sched.timesteps.numpy(), rtol=1e-12)


def test_cm_schedule_rejects_bad_timesteps():
    cfg = diffusion.CMSchedulerConfig()
    with pytest.raises(ValueError, match="descending"):
        diffusion.cm_schedule(cfg, timesteps=[0, 22])
    with pytest.raises(ValueError, match="before"):
        diffusion.cm_schedule(cfg, timesteps=[40, 0])


# ----------------------------------------------------------------------------- CM generator

CM_UNET = {**TINY_UNET, **CM_LAYOUT}


def nhwc(t):
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def cm_pipeline(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**CM_UNET).eval()
    with torch.no_grad():
        for p in unet.parameters():
            spread = p.std() if p.numel() > 1 and p.std() > 0 else torch.tensor(0.1)
            p.add_(0.3 * spread * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("cm") / "pipe"
    scheduler = diffusers.CMStochasticIterativeScheduler(clip_denoised=False)
    diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return unet, folder


def _cm_reference_by_hand(unet, sched_cfg, z, label):
    """One-step CM sampling written out from the scheduler's formulas (pipeline order)."""
    smin, smax, sd = sched_cfg.sigma_min, sched_cfg.sigma_max, sched_cfg.sigma_data
    ramp = np.array([0.0])
    sigma64 = (smax ** (1 / sched_cfg.rho) + ramp * (smin ** (1 / sched_cfg.rho) - smax ** (1 / sched_cfg.rho))) ** sched_cfg.rho
    t = torch.from_numpy(1000 * 0.25 * np.log(sigma64 + 1e-44))[0]
    sigma = torch.tensor(np.float32(sigma64[0]))
    x = z * smax
    scaled = x / ((sigma**2 + sd**2) ** 0.5)
    with torch.no_grad():
        out = unet(scaled, t, class_labels=label).sample
    c_skip = sd**2 / ((sigma - smin) ** 2 + sd**2)
    c_out = (sigma - smin) * sd / (sigma**2 + sd**2) ** 0.5
    denoised = c_out * out + c_skip * x
    if sched_cfg.clip_denoised:
        denoised = denoised.clamp(-1, 1)
    return denoised


def _cm_reference_scheduler(unet, folder, z, label, **set_kw):
    """The ConsistencyModelPipeline loop with diffusers' own scheduler."""
    sched = diffusers.CMStochasticIterativeScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(**set_kw)
    x = z * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            scaled = sched.scale_model_input(x, t)
            out = unet(scaled, t, class_labels=label).sample
            x = sched.step(out, t, x).prev_sample
    return x


def test_consistency_one_step_parity(cm_pipeline, tmp_path):
    unet, folder = cm_pipeline
    conv = convert_consistency(folder, class_label=3)
    assert conv.architecture == "consistency"
    save_generator(tmp_path / "ckpt", conv.architecture, conv.config, conv.variables)
    gen = load_generator(tmp_path / "ckpt")
    assert gen.input_shape == (16, 16, 3)
    z = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    label = torch.full((4,), 3)
    ref = _cm_reference_scheduler(unet, folder, z, label, num_inference_steps=1)
    by_hand = _cm_reference_by_hand(unet, diffusion.CMSchedulerConfig(clip_denoised=False), z, label)
    assert float((ref - by_hand).abs().max()) <= 1e-5
    assert float(ref.abs().max()) > 0.3  # clip_denoised off: nothing hidden by a clamp
    raw = jax.jit(gen.apply_fn.sample)(gen.params, nhwc(z), gen.batched_condition(4))
    assert float(np.abs(np.asarray(raw) - nhwc(ref)).max()) <= 1e-4
    image = diffusion.to_unit_interval(raw)
    np.testing.assert_allclose(np.asarray(image), nhwc((ref / 2 + 0.5).clamp(0, 1)), atol=1e-4)


def test_consistency_multistep_parity(cm_pipeline, monkeypatch):
    """Two steps (openai's [22, 0]) with the fixed noise fed to diffusers' scheduler."""
    unet, folder = cm_pipeline
    conv = convert_consistency(
        folder, scheduler={"clip_denoised": True}, timesteps=[22, 0], class_label=7, noise_seed=5
    )
    gen = diffusion.make_consistency_generator(conv.config, conv.variables)
    cond = gen.batched_condition(2)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    noises = iter(
        nchw(jax.vmap(lambda k, i=i: diffusion.cm_step_noise(k, i, (16, 16, 3)))(cond["noise_key"]))
        for i in range(2)
    )
    import diffusers.schedulers.scheduling_consistency_models as cm_module

    monkeypatch.setattr(cm_module, "randn_tensor", lambda *a, **k: next(noises))
    ref = _cm_reference_scheduler(unet, folder, z, torch.full((2,), 7), timesteps=[22, 0])
    raw = jax.jit(gen.apply_fn.sample)(gen.params, nhwc(z), cond)
    assert float(np.abs(np.asarray(raw) - nhwc(ref)).max()) <= 1e-4


def test_consistency_generator_contract(cm_pipeline):
    _, folder = cm_pipeline
    conv = convert_consistency(folder, class_label=2)
    cfg = diffusion.ConsistencyConfig.from_dict(conv.config)
    # Without a fixed class the generator takes each image's class (multistep: with the
    # fixed noise key broadcast beside it).
    free = diffusion.make_consistency_generator(
        diffusion.ConsistencyConfig(unet=cfg.unet, num_inference_steps=2), conv.variables
    )
    assert free.num_classes == cfg.unet.num_class_embeds and "class_labels" not in free.condition
    per_image = free.conditions_for_classes(np.array([4, 1, 0]))
    np.testing.assert_array_equal(per_image["class_labels"], [4, 1, 0])
    assert per_image["noise_key"].shape == (3, 2)
    gen = diffusion.make_consistency_generator(cfg, conv.variables)
    assert gen.num_classes == 0  # class 2 is fixed: part of the model
    assert gen.condition["class_labels"].shape == ()
    assert "noise_key" not in gen.condition  # one step: deterministic, no noise
    multi = diffusion.make_consistency_generator(
        diffusion.ConsistencyConfig(unet=cfg.unet, num_inference_steps=2, class_label=2),
        conv.variables,
    )
    assert multi.condition["noise_key"].shape == (2,)
    # The step loop is a scan whose body is rematerialised.
    jaxpr = jax.make_jaxpr(lambda p, z: gen.apply_fn(p, z, gen.batched_condition(1)))(
        gen.params, jnp.zeros((1, 16, 16, 3))
    )
    text = str(jaxpr)
    assert "scan" in text and ("checkpoint" in text or "remat" in text)


def test_consistency_wrong_scheduler_is_refused(cm_pipeline):
    _, folder = cm_pipeline
    with pytest.raises(ArchitectureError, match="CMStochasticIterativeScheduler"):
        convert_consistency(folder, scheduler={"_class_name": "DDIMScheduler"}, class_label=0)


def test_api_dispatches_consistency_pipelines(cm_pipeline, tmp_path):
    from converters.api import convert, detect_format

    _, folder = cm_pipeline
    assert detect_format(folder) == "consistency"
    card = convert(folder, tmp_path / "out", class_label=1, timesteps=[22, 0], noise_seed=3)
    assert card["architecture"] == "consistency"
    assert card["config"]["timesteps"] == [22, 0]
    gen = load_generator(tmp_path / "out")
    assert set(gen.condition) == {"class_labels", "noise_key"}

