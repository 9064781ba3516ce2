"""
Exactness of the guided_diffusion package against the reference vectors made with OpenAI's
guided-diffusion and the paper's original code (tests/fixtures, copied from shared/reference).
"""

import json

import numpy as np
import pytest
import torch as th

from guided_diffusion.script_util import (
    create_gaussian_diffusion,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.unet import SuperResModel, set_attention_backend
from sr_var.networks import ADDED_FLAGS, create_mean_model, create_var_model, mean_model_defaults, var_model_defaults
from tests.conftest import fixture_path


def _manifest(model):
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]


def _load(name):
    return th.load(fixture_path(name), weights_only=False)


def test_upsampler_state_dict_matches_openai_checkpoint():
    ref = json.load(open(fixture_path("upsampler_64_256_state_dict.json")))
    args = sr_model_and_diffusion_defaults()
    args.update(ref["flags"])
    with th.device("meta"):  # shapes only: no 1.2 GB of weights
        model, _ = sr_create_model_and_diffusion(**args)
    assert _manifest(model) == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"] == 311_795_910


@pytest.mark.parametrize("name,builder,defaults", [
    ("mean_model_256", create_mean_model, mean_model_defaults),
    ("var_model_256", create_var_model, var_model_defaults),
])
def test_mean_var_state_dicts_match_original_code(name, builder, defaults):
    ref = json.load(open(fixture_path(f"{name}_state_dict.json")))
    # The builders take exactly the keys an original args pickle holds (our additions default to the original's networks).
    assert set(ref["flags"]) == set(defaults()) - set(ADDED_FLAGS)
    with th.device("meta"):
        model = builder(**ref["flags"])
    assert _manifest(model) == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_sr_tiny_vector(backend):
    ref = _load("sr_tiny_vector.pt")
    args = sr_model_and_diffusion_defaults()
    args.update(ref["flags"])
    model, diffusion = sr_create_model_and_diffusion(**args)
    model.load_state_dict(ref["state_dict"], strict=True)
    set_attention_backend(model.eval(), backend)
    with th.no_grad():
        out = model(ref["x"], ref["timesteps"], **ref["model_kwargs"])
        assert (out - ref["output"]).abs().max() < 1e-5
        pmv = diffusion.p_mean_variance(model, ref["x"], ref["timesteps"], clip_denoised=True,
                                        model_kwargs=ref["model_kwargs"])
    for ours, theirs in [("mean", "p_mean"), ("variance", "p_variance"),
                         ("log_variance", "p_log_variance"), ("pred_xstart", "pred_xstart")]:
        assert (pmv[ours] - ref[theirs]).abs().max() < 1e-5, ours
    assert diffusion.timestep_map == ref["timestep_map"].tolist()
    np.testing.assert_allclose(diffusion.betas, ref["betas"].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,builder", [("mean", create_mean_model), ("var", create_var_model)])
@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_mean_var_tiny_vectors(name, builder, backend):
    ref = _load(f"{name}_tiny_vector.pt")
    model = builder(**ref["flags"])
    model.load_state_dict(ref["state_dict"], strict=True)
    set_attention_backend(model.eval(), backend)
    with th.no_grad():
        assert (model(ref["x"]) - ref["output"]).abs().max() < 1e-5


def test_respaced_schedules():
    ref = json.load(open(fixture_path("respaced_schedules.json")))
    assert len(ref) == 4
    for key, want in ref.items():
        schedule, respacing = key.split("|")
        diffusion = create_gaussian_diffusion(steps=1000, noise_schedule=schedule, timestep_respacing=respacing)
        assert diffusion.timestep_map == want["timestep_map"], key
        np.testing.assert_allclose(diffusion.betas, want["betas"], rtol=0, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("new_order", [False, True])
@pytest.mark.parametrize("head_channels", [-1, 16])
def test_sdpa_equals_legacy_einsum(new_order, head_channels):
    th.manual_seed(0)
    model = SuperResModel(
        image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
        attention_resolutions=(2,), channel_mult=(1, 2), num_classes=10, num_heads=4,
        num_head_channels=head_channels, use_scale_shift_norm=True, use_new_attention_order=new_order,
    )
    for m in model.modules():  # a trained-looking model: no zero-initialised layers
        if isinstance(m, (th.nn.Conv1d, th.nn.Conv2d)):
            th.nn.init.normal_(m.weight, std=0.05)
    x, t = th.randn(2, 3, 32, 32), th.tensor([5, 700])
    kwargs = dict(low_res=th.randn(2, 3, 8, 8), y=th.tensor([1, 2]))
    with th.no_grad():
        a = set_attention_backend(model, "sdpa")(x, t, **kwargs)
        b = set_attention_backend(model, "einsum")(x, t, **kwargs)
    assert a.abs().max() > 1e-2
    assert (a - b).abs().max() < 1e-5
