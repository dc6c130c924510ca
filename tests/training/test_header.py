"""latentgen.training.header: the ss_* keys of a trained LoRA's header, as kohya's sd-scripts (and LyCORIS's kohya
entry, for DoRA) write them."""

import json
from types import SimpleNamespace

from latentgen.training import header
from latentgen.training.configs import LoraTrainConfig


def _cfg(**kw):
    return LoraTrainConfig(data="d", out="o", steps=10, **kw)


def test_kohyas_keys_name_the_network_its_dims_and_options():
    sd, xl = SimpleNamespace(name="sd15", xl=None), SimpleNamespace(name="xl-base", xl=object())
    plain = header.kohya(_cfg(rank=4, unet_lr=1e-3), sd, 10, 512, 7)
    assert (plain["ss_network_module"], plain["ss_network_dim"], plain["ss_network_alpha"]) == ("networks.lora", 4, 4.0)
    assert json.loads(plain["ss_network_args"]) == {} and "ss_base_model_version" not in plain
    assert (plain["ss_unet_lr"], plain["ss_text_encoder_lr"], plain["ss_resolution"]) == (1e-3, 1e-4, "(512, 512)")
    assert (plain["ss_num_train_images"], plain["ss_max_train_steps"], plain["ss_base_model"]) == (7, 10, "sd15")
    assert plain["ss_optimizer"] == "torch.optim.adamw.AdamW"  # as kohya writes it: the class's full name
    sgd = header.kohya(_cfg(optimizer="sgd", optimizer_args=["momentum=0.5"]), sd, 10, 512, 7)["ss_optimizer"]
    assert sgd == "torch.optim.sgd.SGD(momentum=0.5,nesterov=True)"
    locon = header.kohya(_cfg(conv_rank=2, conv_alpha=1.0, dora=True), xl, 10, 1024, 7)
    assert locon["ss_network_module"] == "lycoris.kohya" and locon["ss_base_model_version"] == "sdxl_base_v1-0"
    assert json.loads(locon["ss_network_args"]) == {"algo": "lora", "dora_wd": True, "conv_dim": 2, "conv_alpha": 1.0}


def test_finetunes_own_keys():
    keys = header.finetune(_cfg(clip_skip=2, flip_aug=True, train_text_encoder=True), None, 3)
    assert {k: keys[k] for k in ("ss_enable_bucket", "ss_network_train_text_encoder", "ss_num_reg_images",
                                 "ss_clip_skip", "ss_flip_aug")} == \
        {"ss_enable_bucket": False, "ss_network_train_text_encoder": True, "ss_num_reg_images": 3, "ss_clip_skip": 2,
         "ss_flip_aug": True}
    loss = header.finetune(_cfg(snr_gamma=5.0, multires_noise_iterations=6, ip_noise_gamma=0.1,
                                debiased_estimation=True), None, 0)
    assert (loss["ss_min_snr_gamma"], loss["ss_multires_noise_iterations"], loss["ss_multires_noise_discount"],
            loss["ss_ip_noise_gamma"], loss["ss_debiased_estimation"], loss["ss_noise_offset"]) == \
        (5.0, 6, 0.3, 0.1, True, 0.0)
    bucketed = SimpleNamespace(metadata=lambda: {"ss_enable_bucket": True, "ss_bucket_info": "{}"})
    assert header.finetune(_cfg(), bucketed, 0)["ss_bucket_info"] == "{}"
