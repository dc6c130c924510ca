"""latentgen.request: bad sampling arguments get a clear error naming the parameter and the fix, before
any model work; a negative prompt without guidance warns."""

import math

import pytest

from latentgen.models import components
from latentgen.models.presets import load_preset


@pytest.fixture()
def no_model_work(pipe, monkeypatch):
    """Fail the test if the text encoder or U-Net would run."""
    def boom(*a, **k):
        raise AssertionError("model work started before the input was checked")
    monkeypatch.setattr(pipe.text_encoder, "forward", boom)
    monkeypatch.setattr(pipe, "denoise", boom)
    return pipe


@pytest.mark.parametrize("prompt", [3, None, [], ["ok", 5], b"bytes"])
def test_prompt_must_be_text(no_model_work, prompt):
    with pytest.raises(TypeError, match="prompt must be a string"):
        no_model_work.generate(prompt)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, r"steps=0 .*>= 1"),
    ({"steps": 2.5}, r"steps=2.5"),
    ({"guidance": math.nan}, r"guidance=nan .*finite"),
    ({"guidance": math.inf}, r"guidance=inf .*finite"),
    ({"guidance": "7"}, r"guidance='7'"),
    ({"guidance": 1e30}, r"guidance=1e\+30 is invalid: use a finite number from 0 to 100, such as 7.5"),
    ({"guidance": 100.5}, r"guidance=100.5 is invalid: use a finite number from 0 to 100"),
    ({"guidance": -2}, r"guidance=-2 is invalid: use a finite number from 0 to 100"),
    ({"width": 63}, r"width=63 .*multiple of 2"),
    ({"height": 0}, r"height=0 .*positive multiple"),
    ({"width": -8}, r"width=-8"),
    ({"num_images": 0}, r"num_images=0 .*at least one"),
    ({"seed": 1.5}, r"seed=1.5"),
    ({"seed": -1}, r"seed=-1 is invalid: there is no random seed \(A1111's -1\) here: pick one; use a whole number "
                   r"from 0 to 18446744073709551615, such as seed=0\.$"),
    ({"seed": 2**64}, r"seed=18446744073709551616 is invalid: use a whole number from 0 to 18446744073709551615, "),
    ({"seed": 2**64 - 1, "num_images": 2},
     r"seed=18446744073709551615 is invalid: use a whole number from 0 to 18446744073709551614 \(image i "),
    ({"scheduler": "euler_b"}, r"scheduler='euler_b' is unknown; use one of: ddim, pndm"),
    ({"negative_prompt": ["a", "b"]}, r"negative_prompt has 2 entries for 1 prompts"),
    ({"batch_size": 0}, r"batch_size=0"),
    ({"width": 100000, "height": 64}, r"100000x64 has a side above pipe.limits.max_side=8192 pixels"),
    ({"negative_prompt": "ugly \ud800"}, r"negative_prompt 'ugly \\ud800' holds '\\ud800' at character 5, half of a "
                                          r"surrogate pair"),
])
def test_bad_values_raise_value_error(no_model_work, kwargs, match):
    with pytest.raises(ValueError, match=match):
        no_model_work.generate("a cat", **kwargs)


def test_scheduler_of_wrong_type(no_model_work):
    with pytest.raises(TypeError, match="scheduler must be a name"):
        no_model_work.generate("a cat", scheduler=3)


def test_width_must_be_multiple_of_8_for_sd15():
    assert components.vae_scale_factor(load_preset("sd15").vae) == 8


def test_negative_prompt_without_guidance_warns(pipe):
    with pytest.warns(UserWarning, match="no effect"):
        pipe.generate("a cat", steps=1, guidance=1.0, negative_prompt="dog")


def test_seeds_past_2_64_minus_1_are_refused_for_every_prompt(no_model_work):
    """torch.Generator.manual_seed takes 0 to 2**64 - 1: the call's last image may have the largest seed;
    one past it is refused up front, counting every prompt's images."""
    with pytest.raises(ValueError, match=r"seed=18446744073709551614 is invalid: .* to 18446744073709551613 "
                                         r"\(image i of the call uses seed \+ i; 3 images here\)"):
        no_model_work.generate(["a cat", "a dog", "a bird"], seed=2**64 - 2)
    with pytest.raises(ValueError, match=r"seed=18446744073709551616 is invalid: use a whole number from 0 to "
                                         r"18446744073709551615, such as seed=0\.$"):  # one image: no count
        no_model_work.generate("a cat", seed=2**64)


def test_the_largest_seed_draws(pipe):
    images = pipe.generate(["a cat", "a dog"], seed=2**64 - 2, steps=1)
    assert [i.info["parameters"].split("Seed: ")[1].split(",")[0] for i in images] == [str(2**64 - 2), str(2**64 - 1)]


def test_a_callback_takes_the_denoised_latents_when_it_has_a_fourth_argument():
    from latentgen.request import takes_denoised

    def four(done, total, latents, denoised):
        pass

    assert takes_denoised(four) and takes_denoised(lambda *a: None)
    assert not takes_denoised(lambda done, total, latents: None)


def test_watch_passes_the_callbacks_arguments_and_notes_a_stop():
    from latentgen.request import Stop, Watch, takes_denoised

    seen = []

    def three(done, total, latents):
        seen.append(done)
        if done == 2:
            raise Stop()

    w = Watch(three)
    assert not takes_denoised(w.callback)  # the loop calls it with the arguments the given one takes
    w.callback(1, 2, None)
    assert not w.stopped
    with pytest.raises(Stop):
        w.callback(2, 2, None)
    assert w.stopped and seen == [1, 2]
    four = Watch(lambda done, total, latents, denoised: seen.append(denoised))
    assert takes_denoised(four.callback)
    four.callback(1, 1, None, "x0")
    assert seen[-1] == "x0" and not four.stopped and Watch(None).callback is None


def test_overall_counts_a_calls_steps_among_the_calls_like_it():
    from latentgen import request

    seen = []
    request.overall(request.Watch(lambda done, total, latents: seen.append((done, total))), 2, 4)(3, 10, None)
    assert seen == [(23, 40)]  # call 3 of 4, step 3 of 10: 23 of 40 steps
    request.overall(request.Watch(lambda done, total, latents, x0: seen.append(x0)), 0, 2)(1, 5, None, "x0")
    assert seen[-1] == "x0" and request.overall(request.Watch(None), 0, 1) is None
