"""MedVisionLlama (notebook 07): a 3D ViT segmenter whose tokens pass through a frozen pretrained LLM layer.

``config.py`` its profile section · ``model.py`` the ViT, the frozen LLM layer, the dimension mappers, the
decoders · ``recipe.py`` the loss, training runs, sliding-window inference, post-processing, evaluation.
"""

from ...faces import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ('model', 'recipe'), ('config',))
