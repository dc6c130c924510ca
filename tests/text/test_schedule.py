"""latentgen.text.schedule: A1111's prompt editing, alternation and AND, read as A1111's prompt_parser does
("current" scheduling), and drawn through the loop's per-step context: [a:b:0] is b and [a|a] is a bit for bit,
a scheduled prompt equals a reference loop that switches the embeddings at A1111's step, AND equals the summed
guidance of its parts, and the text encoder runs once per distinct text."""

import pytest
import torch
from conftest import max_diff
from diffusers.utils.torch_utils import randn_tensor

from latentgen import schedulers
from latentgen.text import schedule


@pytest.mark.parametrize("text, n, expected", [
    ("a [red:yellow:0.5] circle", 10, [(5, "a red circle"), (10, "a yellow circle")]),
    ("a [red:yellow:0.25] circle", 20, [(5, "a red circle"), (20, "a yellow circle")]),
    ("a [red:yellow:7] circle", 20, [(7, "a red circle"), (20, "a yellow circle")]),  # a step number
    ("a [red:yellow:1] circle", 20, [(1, "a red circle"), (20, "a yellow circle")]),  # '1' is step 1, not 100%
    ("a [red:yellow:1.0] circle", 20, [(20, "a red circle")]),  # '1.0' is all the steps
    ("a [yellow:0.5] circle", 10, [(5, "a  circle"), (10, "a yellow circle")]),  # [to:when]
    ("a [yellow::5] circle", 10, [(5, "a yellow circle"), (10, "a  circle")]),  # [from::when]
    ("a [red : yellow : 3 ] circle", 10, [(3, "a red  circle"), (10, "a  yellow  circle")]),
    ("a [red:yellow:12] circle", 10, [(10, "a red circle")]),  # past the end: never switches
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a|a]", 10, [(10, "a")]),
    ("a [red|blue] b", 3, [(1, "a red b"), (2, "a blue b"), (3, "a red b")]),
    ("[x|y|z]", 4, [(1, "x"), (2, "y"), (3, "z"), (4, "x")]),
    ("[a|]", 2, [(1, "a"), (2, "")]),
    ("a [red:[blue:green:0.3]:0.6] circle", 10, [(6, "a red circle"), (10, "a green circle")]),  # nested
    ("a [[red|blue]:green:2] c", 4, [(1, "a red c"), (2, "a blue c"), (4, "a green c")]),
    ("a ([red|blue]:1.2) c", 2, [(1, "a (red:1.2) c"), (2, "a (blue:1.2) c")]),  # emphasis stays for the encoder
    ("a [(red:1.3):blue:1] c", 3, [(1, "a (red:1.3) c"), (3, "a blue c")]),
])
def test_schedules_are_a1111s(text, n, expected):
    assert schedule.steps(text, n) == expected


@pytest.mark.parametrize("text", [
    "a [red] circle", "a [red:yellow] circle", r"a \[red:0.5\] circle", "a (red:1.2) circle", "a red: 0.5] circle",
    "a [red:5 b] c", "((a)) [b] (c:0.5)", "a | b [c:d:5]",  # '|' outside brackets: A1111 cannot parse; text as is
    "a [b:c:d] e", "",
])
def test_texts_without_editing_are_left_as_they_are(text):
    assert schedule.steps(text, 20) == [(20, text)]


def test_the_loop_step_takes_the_first_entry_at_or_after_it():
    entries = schedule.steps("[a:b:0.5]", 4)  # when = 2: steps 0, 1, 2 draw a (A1111: current_step <= end_at_step)
    assert [schedule.text_at(entries, i) for i in range(5)] == ["a", "a", "a", "b", "b"]
    entries = schedule.steps("[a|b]", 4)  # step 0 and step 1 both draw the entry for step 1, as in A1111
    assert [schedule.text_at(entries, i) for i in range(4)] == ["a", "a", "b", "a"]


def test_a_hires_pass_counts_when_over_both_passes():
    assert schedule.steps("[a:b:1.5]", 10, base_steps=20) == [(5, "a"), (10, "b")]  # the middle of the second pass
    assert schedule.steps("[a:b:0.5]", 10, base_steps=20) == [(10, "b")]  # switched in the first pass
    assert schedule.steps("[a:b:25]", 10, base_steps=20) == [(5, "a"), (10, "b")]  # step 25 of 20 + 10


@pytest.mark.parametrize("text, expected", [
    ("a cat AND a dog", [("a cat ", 1.0), (" a dog", 1.0)]),
    ("a cat :1.5 AND a dog: 0.5", [("a cat", 1.5), (" a dog", 0.5)]),
    ("a cat :0.5", [("a cat", 0.5)]),  # A1111 weighs a lone part too
    ("a cat and a dog", [("a cat and a dog", 1.0)]), ("ANDROID", [("ANDROID", 1.0)]),
    ("(a cat:1.2)", [("(a cat:1.2)", 1.0)]),
])
def test_and_parts_and_weights(text, expected):
    assert schedule.parts(text) == expected


# -- through the loop --------------------------------------------------------------------------------
def _reference(pipe, texts_at, negative, *, seed=4, steps=4, guidance=6.0, weights=(1.0,)):
    """A loop written from diffusers' parts: DDIM, CFG, the embeddings of ``texts_at(i)`` at step i (one per
    AND part, each guided against ``negative`` and summed with ``weights``)."""
    sched = schedulers.make("ddim", pipe.scheduler.config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    f = pipe.vae_scale_factor
    latents = randn_tensor((1, 4, 64 // f, 64 // f), generator=g) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        u = pipe.encode_prompt(negative(i) if callable(negative) else negative)
        conds = [pipe.encode_prompt(text) for text in texts_at(i)]
        out = pipe.unet(sched.scale_model_input(torch.cat([latents] * (1 + len(conds))), t), t,
                        encoder_hidden_states=torch.cat([u, *conds])).sample
        uo, *cos = out.chunk(1 + len(conds))
        if len(cos) == 1 and weights == (1.0,):
            eps = uo + guidance * (cos[0] - uo)
        else:
            eps = uo + guidance * sum(w * (c - uo) for w, c in zip(weights, cos))
        latents = sched.step(eps, t, latents, return_dict=False)[0]
    return pipe.decode(latents)


def _draw(pipe, prompt, negative="", **kw):
    return pipe.generate(prompt, negative_prompt=negative, seed=4, steps=4, guidance=6.0, scheduler="ddim", **kw)


def test_edits_that_never_change_draw_exactly_the_plain_text(pipe):
    assert max_diff(_draw(pipe, "a [cat:dog:0] sky"), _draw(pipe, "a dog sky")) == 0
    assert max_diff(_draw(pipe, "a [cat|cat] sky"), _draw(pipe, "a cat sky")) == 0
    assert max_diff(_draw(pipe, "a cat :1"), _draw(pipe, "a cat")) == 0
    assert max_diff(_draw(pipe, "a [cat:dog:0] sky"), _draw(pipe, "a cat sky")) > 0


def test_a_scheduled_prompt_equals_a_loop_switching_at_a1111s_step(pipe):
    edited = _draw(pipe, "a [red:blue:0.5] cat", "[ugly:dull:1]")  # 4 steps: when 2 -> steps 0-2 red, 3 blue
    ref = _reference(pipe, lambda i: ["a red cat" if i <= 2 else "a blue cat"], lambda i: "ugly" if i <= 1 else "dull")
    assert max_diff(edited, ref) == 0  # the negative prompt is scheduled too
    both = _draw(pipe, "a [red:blue:0.5] cat")
    assert max_diff(both, _reference(pipe, lambda i: ["a red cat" if i <= 2 else "a blue cat"], "")) == 0
    alternating = _draw(pipe, "a [red|blue] cat")  # A1111's steps 0 and 1 both draw the first option
    assert max_diff(alternating, _reference(pipe, lambda i: [["a red cat", "a blue cat"][(max(i, 1) - 1) % 2]], "")) == 0
    assert max_diff(both, alternating) > 0 and max_diff(both, _draw(pipe, "a red cat")) > 0


def test_and_sums_the_guidance_of_its_parts(pipe):
    composed = _draw(pipe, "a red cat AND a blue sky :0.5")
    ref = _reference(pipe, lambda i: ["a red cat ", " a blue sky"], "", weights=(1.0, 0.5))
    assert max_diff(composed, ref) <= 1
    assert max_diff(composed, _draw(pipe, "a red cat")) > 2
    with_edit = _draw(pipe, "a [red|green] cat AND a blue sky")
    ref = _reference(pipe, lambda i: [["a red cat ", "a green cat "][(max(i, 1) - 1) % 2], " a blue sky"], "",
                     weights=(1.0, 1.0))
    assert max_diff(with_edit, ref) <= 1


def test_the_text_encoder_runs_once_per_distinct_text(pipe, monkeypatch):
    calls = []
    forward = pipe.text_encoder.forward
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda ids, *a, **k: calls.append(1) or forward(ids, *a, **k))
    pipe.generate("a [red|blue] cat", negative_prompt="ugly", steps=12, guidance=6.0)
    assert len(calls) == 4  # 'a red cat', 'a blue cat', 'ugly', and '' (the empty chunk padding is measured by)


def test_batches_and_seeds_hold_with_edits(pipe):
    prompts = ["a [red:blue:0.5] cat", "a dog"]
    together = _draw(pipe, prompts, num_images=2)
    alone = [im for i, p in enumerate(prompts) for seed in (4 + 2 * i, 5 + 2 * i) for im in pipe.generate(
        p, negative_prompt="", seed=seed, steps=4, guidance=6.0, scheduler="ddim")]  # image i: seed + i
    assert max_diff(together, alone) == 0


def test_what_cannot_be_drawn_is_refused_before_any_model_runs(pipe, monkeypatch):
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ValueError, match=r"uses A1111's AND or a part weight.*use guidance > 1"):
        pipe.generate("a cat AND a dog", guidance=1, steps=1)
    with pytest.raises(ValueError, match=r"changes by step or has AND parts.*latentgen.text.schedule.steps"):
        pipe.encode_prompt("a [cat|dog]")
