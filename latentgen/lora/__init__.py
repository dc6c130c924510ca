"""LoRA: ``formats`` reads and writes LoRA files (diffusers/peft and kohya/A1111 layouts); ``adapters`` puts
them on a loaded model through peft, several at once, scaled, fused and unloaded (``pipe.loras``).
"""
