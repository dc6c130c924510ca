"""The embedded default model's world: not the library, but how its small model is made and measured.

``shapes``: the procedural flat-shapes data and the evaluator that reads images back;
``quality``: adherence, off-palette and edit measures over that world; ``recipe``: the four-stage
training recipe on ``latentgen.training.loop`` (VAE stages in ``autoencoder``, the 9-channel inpainting variant in
``inpainting``); ``ship``: measuring a trained model or LoRA and copying it with its manifest. The library (``latentgen.pipeline`` and the modules beside it) never imports this package.
"""
