"""The trainers' settings: each bad value is refused by ``check()`` naming the field and a fix, and the module
imports no torch (the command line builds every trainer's flags from these dataclasses)."""

import subprocess
import sys

import pytest

from latentgen.training import configs


def test_the_settings_module_imports_no_torch():
    code = "import sys, latentgen.training.configs; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("make, message", [
    (lambda d: configs.LoopConfig(out=d, steps=10, ema=1.0), r"ema=1.0 is invalid: use a decay in \[0, 1\)"),
    (lambda d: configs.LoopConfig(out=d, steps=0), r"steps=0 is invalid: use a whole number >= 1"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d), r"give exactly one of steps=... or epochs=..."),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, epochs=1.0), r"give exactly one of steps"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, prior_prompts=["a cat"]),
     r"prior_prompts need prior_data=FOLDER \(--prior-data\)"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, mixed_precision="fp8"), r"mixed_precision='fp8'"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validation_prompts=["a cat"]),
     r"sample prompts are given but never drawn: add validate_every=N \(--validate-every N\)"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every=2),
     r"validate_every draws the sample prompts, and none is given"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every=0, validation_prompts=["a"]),
     r"validate_every=0 is invalid"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every=2, validate_every_epochs=1,
                                       validation_prompts=["a"]), r"give validate_every=N steps or .* not both"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every_epochs=2),
     r"validate_every_epochs draws the sample prompts, and none is given"),
    (lambda d: configs.LcmDistillConfig(data=d, out=d, steps=5, validate_every=2, sample_prompts=d / "p.txt"),
     r"sample_prompts='.*p.txt' does not exist"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every=2, validation_prompts=["a --w 9"]),
     r"validation prompt 1: width=9 is invalid: use a multiple of 8"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, validate_every=2, validation_prompts=["a"],
                                       sample_sampler="k_heun_a"), r"sample_sampler='k_heun_a' is unknown"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, caption_extension="txt"),
     r"caption_extension='txt' is invalid: use a file extension with its dot, such as '.txt'"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, keep_tokens=1),
     r"keep_tokens keeps tags in place .* add shuffle_caption=True \(--shuffle-caption\)"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, keep_tokens=-1, shuffle_caption=True),
     r"keep_tokens=-1 is invalid"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, caption_tag_dropout=1.5), r"caption_tag_dropout=1.5"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, unet_lr=0.0), r"unet_lr=0.0 is invalid: use a positive"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, text_encoder_lr=1e-5),
     r"text_encoder_lr is the text encoder adapters' learning rate, and no text encoder is trained"),
    (lambda d: configs.LcmDistillConfig(data=d, out=d, steps=5, text_encoder_lr=1e-5), r"no text encoder is trained"),
    (lambda d: configs.LoraTrainConfig(data=d, out=d, steps=5, network_weights=d / "nope.safetensors"),
     r"network_weights='.*nope.safetensors' does not exist: give a LoRA file to go on training"),
    (lambda d: configs.LcmDistillConfig(data=d, out=d, steps=5, num_ddim_timesteps=48),
     r"num_ddim_timesteps=48 is invalid: it must divide the model's 1000 training timesteps"),
    (lambda d: configs.LcmDistillConfig(data=d, out=d, steps=5, w_min=8.0, w_max=4.0),
     r"w_min=8.0 is above w_max=4.0"),
    (lambda d: configs.LcmDistillConfig(data=d / "none", out=d, steps=5), r"is not a folder"),
    (lambda d: configs.TinyVaeConfig(data=d, out=d, name=".."), r"name='..' is invalid: use a plain folder name"),
    (lambda d: configs.TinyVaeConfig(data=d, out=d, channels=2), r"channels=2 is invalid"),
    (lambda d: configs.ControlNetTrainConfig(data=d, out=d, caption_dropout=1.5), r"caption_dropout=1.5"),
    (lambda d: configs.ControlNetTrainConfig(data=d, out=d, controls=d / "none"),
     r"controls='.*none' is not a folder"),
])
def test_a_bad_setting_is_refused_naming_it(tmp_path, make, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        make(tmp_path).check()


def test_good_settings_pass_and_alphas_default_to_the_ranks(tmp_path):
    cfg = configs.LcmDistillConfig(data=tmp_path, out=tmp_path, steps=5, rank=4, conv_rank=2)
    cfg.check()
    assert cfg.alphas() == (4.0, 2.0) and cfg.guidance_range(3.0) == (3.0, 6.0)
    for c in (configs.TinyVaeConfig(data=tmp_path, out=tmp_path), configs.ControlNetTrainConfig(data=tmp_path, out=tmp_path),
              configs.LoopConfig(out=tmp_path, steps=1, ema=0.999)):
        c.check()


def test_the_sample_images_are_drawn_every_n_steps_or_at_the_step_that_ends_every_nth_epoch():
    steps = configs.LoraTrainConfig(data="d", out="o", steps=9, validate_every=3, validation_prompts=["a"])
    assert [s for s in range(10) if steps.sample_step(s, 4, 10)] == [3, 6, 9]
    # 4 images a step over 10: passes end in steps 3 (12), 5 (20), 8 (32) and 10 (40); every second one: 5 and 10
    epochs = configs.LoraTrainConfig(data="d", out="o", steps=9, validate_every_epochs=2, validation_prompts=["a"],
                                     sample_at_first=True)
    assert [s for s in range(11) if epochs.sample_step(s, 4, 10)] == [0, 5, 10]


def test_learning_rates_per_part_default_to_lr():
    cfg = configs.LoraTrainConfig(data=".", out=".", steps=5, lr=1e-4, text_encoder_lr=5e-5, train_text_encoder=True)
    cfg.check()
    assert cfg.learning_rate("unet.down_blocks.0.lora_A.default.weight") == 1e-4
    assert cfg.learning_rate("text_encoder.text_model.encoder.layers.0.lora_A.default.weight") == 5e-5
    assert cfg.learning_rate("text_encoder_2.encoder.layers.0.lora_A.default.weight") == 5e-5  # SDXL's bigG too
    cfg.unet_lr = 3e-4
    assert cfg.learning_rate("unet.x") == 3e-4
