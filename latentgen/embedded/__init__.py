"""The embedded default model's world: not the library, but how its small model is made and measured.

``shapes``: the procedural flat-shapes data and the evaluator that reads images back;
``quality``: adherence and edit measures over that world; ``recipe``: the three-stage training
recipe on ``latentgen.train``; ``ship``: measuring a trained model or LoRA and copying it with its
manifest. The library (``latentgen.pipeline`` and the modules beside it) never imports this package.
"""
