"""Models and their files: where the five parts come from and how they load, offline.

``loading`` is the one entry behind ``latentgen.load`` (arguments checked, configs read, device, dtype and
backend decided once, parts built); ``components`` loads and checks diffusers folders and presets (``presets``
reads ``pipelines/``); single-file checkpoints are read safely by ``checkpoints``, their architecture found and
their models built by ``single_file``, with LDM key names in ``ldm`` (and ``ldm_script`` for the names diffusers'
conversion script writes) and the prediction type from ``prediction``; ``export`` writes any model as one file;
``refiner`` hands the end of a drawing to a second model (SDXL's refiner).
"""
