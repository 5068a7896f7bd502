"""BrainMRI-GPT (notebooks 02-03): CLIP patch features + trained decoders localise tumours on 2D slices; an LLM
explains the result.

``config.py`` its profile section · ``model.py`` the CLIP localiser (patch decoders, prompt ensemble, loss) ·
``data.py`` the 2D slice sets from the figshare / Kaggle layouts · ``recipe.py`` the CLIP model (hub or phantom
stand-in), decoder training, prediction, evaluation · ``explain.py`` findings from a map, the three prompt
styles, the LLM's answers and their scores.
"""

from ...faces import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ('model', 'data', 'recipe'), ('explain', 'config'))
