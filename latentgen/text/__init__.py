"""Text conditioning: ``prompts`` is AUTOMATIC1111's prompt syntax (emphasis, BREAK, chunks, tags, clip skip)
down to CLIP embeddings; ``embeddings`` adds textual-inversion words; ``conditioning`` is the text side of one
call (cond and uncond per image, the LoRAs its tags apply).
"""
