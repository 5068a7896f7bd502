"""The four methods, one folder each: what notebooks 02-09 call.

- :mod:`brainkit.methods.brainmri_gpt`: CLIP patch features + trained decoders localise tumours on 2D slices; an
  LLM explains the result (notebooks 02-03).
- :mod:`brainkit.methods.braingemma3d`: an inflated 2D SigLIP + compressor + projector + Gemma with LoRA writes
  reports from 3D MRI; 3D LIME explains them (notebooks 04-06).
- :mod:`brainkit.methods.medvisionllama`: a 3D ViT segmenter with a frozen pretrained LLM layer (notebook 07).
- :mod:`brainkit.methods.brat`: multi-view vision-language pretraining with PVA and DPP (notebooks 08-09).

Each folder holds ``config.py`` (its profile section), ``model.py`` (networks; they never train), ``data.py``
(a dataset layout to the method's tensors) and ``recipe.py`` (build, train through :func:`brainkit.train.fit`,
save, load), and its own pieces beside them. A method imports the shared layers (``brainkit.data``,
``brainkit.train``, ``brainkit.generation``, ...), never another method; nothing outside this folder imports a
method, except :mod:`brainkit.profiles`, which composes the methods' ``config.py`` sections.
"""
