"""brat (notebooks 08-09): multi-view vision-language pretraining of a 3D encoder on reports: Q-Former queries,
Pairwise View Alignment, the DPP diversity loss; evaluated by retrieval and downstream tasks.

``config.py`` its profile section · ``model.py`` the DenseNet tokens, the Q-Former, the text side, the Table 2
ablations · ``losses.py`` PVA, DPP, ITG · ``data.py`` volume-report pairs, sentences, tokenisation, flips,
loaders · ``recipe.py`` pretraining through :func:`brainkit.train.fit`, embedding, retrieval, save and load.
"""

from ...faces import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ('model', 'data', 'recipe'), ('losses', 'config'))
