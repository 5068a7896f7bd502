"""BrainGemma3D (notebooks 04-06): a 2D SigLIP inflated to 3D + token compressor + projector + Gemma with LoRA
writes radiology reports from 3D MRI, trained in three stages, explained with 3D LIME.

``config.py`` its profile section · ``model.py`` the towers (the 2D-slice baseline; the report generator itself
is the shared :mod:`brainkit.generation`) and the slab-wise laterality probe · ``inflate.py`` 2D -> 3D inflation
of a vision tower · ``standin.py`` the tiny SigLIP pretrained on phantom slices where no pretrained weights exist ·
``data.py`` the volume-report cohort · ``recipe.py`` the profile's inflation and the laterality fine-tune of
notebook 04 · ``lime.py`` 3D LIME over SLIC supervoxels.
"""

from ...faces import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ('model', 'inflate', 'standin', 'data', 'recipe', 'lime'), ('config',))
