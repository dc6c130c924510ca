"""Training: ``loop`` is the one training loop (checkpoints, exact resume, several processes, the diffusion
loss) that the embedded model's recipe and LoRA fine-tuning share; ``finetune`` trains LoRAs on captioned
folders, which ``captioned`` reads (and draws prior images for).
"""
