"""Training: ``loop`` is the one training loop (checkpoints, exact resume, several processes, the diffusion
loss) that the embedded model's recipe, LoRA fine-tuning and LCM distillation share; ``finetune`` trains LoRAs on
captioned folders, which ``captioned`` reads and batches (and draws prior images for); ``consistency`` distills a
model into an LCM-LoRA (latent consistency distillation) on such a folder.
"""
